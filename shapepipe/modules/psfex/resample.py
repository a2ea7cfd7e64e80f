"""Separable Lanczos resampling of stacks of small images, as matrices.

Resampling an image ``I`` (ny, nx) at positions ``y_src`` (rows) and ``x_src`` (columns) is
``My @ I @ Mx.T`` with interpolation matrices built here. Building the matrices per object
and applying them with batched ``matmul`` resamples thousands of stamps with a few array
operations (sub-pixel shifts, change of sampling step), and the same matrices carry the
pixel masks.
"""

import numpy as np

LANCZOS_ORDER = 3


def lanczos_kernel(x, order=LANCZOS_ORDER):
    """Lanczos kernel ``sinc(x) sinc(x / order)`` for ``|x| < order``, 0 outside."""
    x = np.asarray(x, dtype=float)
    out = np.sinc(x) * np.sinc(x / order)
    return np.where(np.abs(x) < order, out, 0.0)


def lanczos_matrix(src, n_in, order=LANCZOS_ORDER):
    """Interpolation weights from an input grid of ``n_in`` samples to positions ``src``.

    Parameters
    ----------
    src : array_like
        ``(..., m)`` positions to interpolate at, in input pixel units (0-based).
    n_in : int
        Number of input samples (positions 0 .. n_in - 1).
    order : int
        Lanczos order.

    Returns
    -------
    numpy.ndarray
        ``(..., m, n_in)`` weights; each row sums to 1 (a constant is preserved) unless the
        position is outside the input grid, in which case the row is 0.
    """
    src = np.asarray(src, dtype=float)
    dist = src[..., None] - np.arange(n_in)
    weights = lanczos_kernel(dist, order)
    total = weights.sum(axis=-1, keepdims=True)
    inside = (src >= -0.5) & (src <= n_in - 0.5)
    norm = np.where(np.abs(total) > 1e-12, total, 1.0)
    return np.where(inside[..., None], weights / norm, 0.0)


def resample_stack(images, x_src, y_src, order=LANCZOS_ORDER):
    """Resample a stack of images at per-image separable positions.

    Parameters
    ----------
    images : numpy.ndarray
        ``(n, ny, nx)``.
    x_src : numpy.ndarray
        ``(n, mx)`` column positions (input pixel units) of the output columns.
    y_src : numpy.ndarray
        ``(n, my)`` row positions of the output rows.

    Returns
    -------
    numpy.ndarray
        ``(n, my, mx)``.
    """
    n, ny, nx = images.shape
    mx = lanczos_matrix(x_src, nx, order)
    my = lanczos_matrix(y_src, ny, order)
    return np.matmul(np.matmul(my, images), mx.transpose(0, 2, 1))


def resample_mask(bad, x_src, y_src, order=LANCZOS_ORDER):
    """Which output pixels of :func:`resample_stack` touch a bad input pixel.

    Parameters
    ----------
    bad : numpy.ndarray
        ``(n, ny, nx)`` boolean, True where the input is unusable.
    x_src, y_src : numpy.ndarray
        As for :func:`resample_stack`.

    Returns
    -------
    numpy.ndarray
        ``(n, my, mx)`` boolean, True where the output depends on a bad input pixel (or lies
        outside the input).
    """
    n, ny, nx = bad.shape
    mx = np.abs(lanczos_matrix(x_src, nx, order)) > 1e-3
    my = np.abs(lanczos_matrix(y_src, ny, order)) > 1e-3
    touched = np.matmul(np.matmul(my.astype(float), bad.astype(float)),
                        mx.transpose(0, 2, 1).astype(float))
    outside = (~my.any(axis=2))[:, :, None] | (~mx.any(axis=2))[:, None, :]
    return (touched > 0) | outside
