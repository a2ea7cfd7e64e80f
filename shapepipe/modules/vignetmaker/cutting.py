"""Vectorised stamp cutting (the project's stamp convention, ``utils.pixels.stamp_corner``)."""

import numpy as np

#: SExtractor's value of masked pixels in its VIGNET column.
SEX_MASKED = -1e30


def fill_value(image_type):
    """Value of stamp pixels off the image: 1 (flagged) for flag images, else 0.

    A zero weight marks a pixel unusable; a zero image/background is harmless there.
    """
    return 1.0 if "flag" in str(image_type).lower() else 0.0


def cut_stamps(image, x0, y0, size, fill=0.0, dtype=np.float32):
    """Cut ``size`` x ``size`` stamps with first pixels ``(x0, y0)`` out of an image.

    ``stamp[k, j, i] = image[y0[k] + j, x0[k] + i]``; pixels off the image get ``fill``.
    Stamps fully inside are one fancy-indexing of a strided window view (no copy of the
    image); the few at the edges are gathered with clipped indices and masked.

    Parameters
    ----------
    image : numpy.ndarray
        2-d image.
    x0, y0 : array_like of int
        0-based column and row of each stamp's first pixel (from ``stamp_corner``).
    size : int
        Stamp side.
    fill : float
        Value of pixels outside the image.
    dtype : numpy dtype
        Output type.

    Returns
    -------
    numpy.ndarray
        ``(N, size, size)``.
    """
    image = np.asarray(image)
    x0 = np.asarray(x0, dtype=np.int64).ravel()
    y0 = np.asarray(y0, dtype=np.int64).ravel()
    size = int(size)
    ny, nx = image.shape
    out = np.empty((len(x0), size, size), dtype=dtype)
    if len(x0) == 0:
        return out
    full = (x0 >= 0) & (y0 >= 0) & (x0 + size <= nx) & (y0 + size <= ny)
    if full.any():
        windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))
        out[full] = windows[y0[full], x0[full]]
    edge = np.flatnonzero(~full)
    if edge.size:
        rows = y0[edge, None] + np.arange(size)[None, :]
        cols = x0[edge, None] + np.arange(size)[None, :]
        valid = (((rows >= 0) & (rows < ny))[:, :, None]
                 & ((cols >= 0) & (cols < nx))[:, None, :])
        part = image[np.clip(rows, 0, ny - 1)[:, :, None], np.clip(cols, 0, nx - 1)[:, None, :]]
        out[edge] = np.where(valid, part, fill)
    return out
