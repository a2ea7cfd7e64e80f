"""Segmentation maps: the central galaxy's mask, neighbour replacement, training-mask encodings.

Everything works on stacks (K, 128, 128) at once.
"""

import numpy as np

#: Pixels around each segment that count as the source (CANDELS-blender dilates by 5).
DILATION_ITERATIONS = 5
#: Fewest background pixels to estimate the noise of a stamp from.
MIN_BACKGROUND_PIXELS = 64


def central_values(seg):
    """Segment id at the centre pixel (64, 64) of each stamp (the galaxy the stamp is cut on)."""
    half = seg.shape[-1] // 2
    return seg[..., half, half]


def central_masks(seg):
    """uint8 masks (K, N, N) of the central galaxy's segment only."""
    return (seg == central_values(seg)[:, None, None]).astype(np.uint8)


def dilate(mask, iterations):
    """Binary dilation of each (N, N) plane of a stack by a cross, ``iterations`` times.

    The same as ``scipy.ndimage.binary_dilation`` with its default (cross) structure in the
    plane and ``iterations`` (pixels outside the stamp count as off), in plain numpy: four
    shifted ORs per iteration over the whole stack, and no scipy import (which costs more
    than a small ``produce`` run).

    Parameters
    ----------
    mask : numpy.ndarray
        (K, N, N) bool.
    iterations : int

    Returns
    -------
    numpy.ndarray
        (K, N, N) bool.
    """
    out = np.array(mask, dtype=bool, copy=True)
    for _ in range(iterations):
        prev = out.copy()
        out[:, 1:, :] |= prev[:, :-1, :]
        out[:, :-1, :] |= prev[:, 1:, :]
        out[:, :, 1:] |= prev[:, :, :-1]
        out[:, :, :-1] |= prev[:, :, 1:]
    return out


def neighbour_regions(img, seg, iterations=DILATION_ITERATIONS):
    """Where neighbours are, and the background noise, of each stamp.

    The pixels to replace are those of every dilated segment except the dilated central one
    (CANDELS-blender's ``mask_out_pixels``). The noise rms is estimated from the background
    pixels alone (outside every dilated segment), with one 3-sigma clipping pass against
    undetected sources: CANDELS-blender took the standard deviation of the whole stamp with
    the sources set to zero, which the zeros bias low. Stamps with fewer than
    :data:`MIN_BACKGROUND_PIXELS` such pixels fall back to the pixels outside the undilated
    segments.

    Parameters
    ----------
    img : numpy.ndarray
        (K, N, N) stamps.
    seg : numpy.ndarray
        (K, N, N) integer segmentation maps (0 = background).
    iterations : int
        Dilation of the segments, in pixels.

    Returns
    -------
    neighbours : numpy.ndarray
        (K, N, N) bool, the pixels to replace with noise.
    sigma : numpy.ndarray
        (K,) float64 background rms (NaN for a stamp without background).
    n_background : numpy.ndarray
        (K,) int, pixels the rms was estimated from.
    """
    seg = np.asarray(seg)
    sources = seg != 0
    central = seg == central_values(seg)[:, None, None]
    grown = dilate(sources, iterations)
    grown_central = dilate(central, iterations)
    neighbours = grown & ~grown_central
    background = ~grown
    few = background.sum(axis=(1, 2)) < MIN_BACKGROUND_PIXELS
    if few.any():
        background[few] = ~sources[few]
    sigma, n_back = clipped_sigma(img, background)
    return neighbours, sigma, n_back


def _masked_moments(values, mask):
    """Count, mean and rms of the masked pixels of each stamp (float64 sums, one pass)."""
    x = np.where(mask, values, values.dtype.type(0))
    n = mask.sum(axis=(1, 2))
    s1 = x.sum(axis=(1, 2), dtype=np.float64)
    s2 = np.einsum("kij,kij->k", x, x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = s1 / n
        var = (s2 - s1 * mean) / (n - 1)
    return n, mean, np.sqrt(np.maximum(var, 0.0))


def clipped_sigma(img, mask, clip=3.0):
    """Per-stamp rms of the pixels where ``mask`` is true, after one ``clip``-sigma pass.

    Sums over the stack (no per-stamp loop, no sort): the mean and rms of the masked
    pixels, then again without the pixels beyond ``clip`` sigma of that mean.

    Returns
    -------
    sigma : numpy.ndarray
        (K,) rms; NaN where fewer than two pixels remain.
    n : numpy.ndarray
        (K,) pixels used.
    """
    values = np.asarray(img)
    if values.dtype != np.float64:
        values = values.astype(np.float32, copy=False)
    _, mean, sigma = _masked_moments(values, mask)
    with np.errstate(invalid="ignore"):
        keep = mask & (np.abs(values - mean[:, None, None].astype(values.dtype))
                       <= (clip * sigma)[:, None, None].astype(values.dtype))
    n, _, sigma = _masked_moments(values, keep)
    return sigma, n


def gg_masks(segmap):
    """(K, 2, N, N) uint8: the two galaxies' masks as stored (galaxy 1 first)."""
    return np.asarray(segmap).astype(np.uint8)


def ogg_masks(segmap):
    """(K, N, N, 3) uint8: overlap, galaxy 1, galaxy 2."""
    s = np.asarray(segmap).astype(bool)
    s1, s2 = s[:, 0], s[:, 1]
    return np.stack([s1 & s2, s1, s2], axis=-1).astype(np.uint8)


def bogg_masks(segmap):
    """(K, N, N, 4) uint8 one-hot: background, overlap, galaxy 1 only, galaxy 2 only."""
    s = np.asarray(segmap).astype(bool)
    s1, s2 = s[:, 0], s[:, 1]
    return np.stack([~s1 & ~s2, s1 & s2, s1 & ~s2, s2 & ~s1], axis=-1).astype(np.uint8)


#: The mask encodings of ``concatenate --method`` (``single_images`` stacks the images).
MASK_METHODS = {"gg_masks": gg_masks, "ogg_masks": ogg_masks, "bogg_masks": bogg_masks}
