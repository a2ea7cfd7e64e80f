"""The one place where FITS/SExtractor 1-based pixel coordinates meet numpy 0-based ones.

In catalogues (``X_IMAGE``, ``XWIN_IMAGE``...) the centre of the first pixel is 1.0; in
numpy arrays (and in ``astropy.wcs`` with ``origin=0``) it is 0.0.
"""

import numpy as np


def fits_to_numpy(x):
    """Convert 1-based FITS/SExtractor pixel coordinates to 0-based numpy ones."""
    return np.asarray(x, dtype=float) - 1.0


def numpy_to_fits(x):
    """Convert 0-based numpy pixel coordinates to 1-based FITS/SExtractor ones."""
    return np.asarray(x, dtype=float) + 1.0


def stamp_corner(x, y, size):
    """First pixel of a ``size`` x ``size`` stamp centred on an object, and the object in it.

    The project's one stamp convention (vignets, PSF stamps, shape measurement): the stamp is
    centred on the pixel nearest to the object, so ``stamp[j, i] = image[y0 + j, x0 + i]``
    with ``x0 = round(x) - size // 2`` (likewise for y), and the object sits at
    ``(x - x0, y - y0)`` inside the stamp. The nearest pixel is ``floor(x + 0.5)`` (halves go
    up), the same for scalars and arrays.

    Parameters
    ----------
    x, y : float or numpy.ndarray
        Object positions, 0-based numpy pixel coordinates.
    size : int
        Stamp side in pixels.

    Returns
    -------
    x0, y0 : int or numpy.ndarray of int
        0-based column and row of the stamp's first pixel in the image.
    dx, dy : float or numpy.ndarray
        The object's 0-based position inside the stamp.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    half = int(size) // 2
    x0 = np.floor(x + 0.5).astype(np.int64) - half
    y0 = np.floor(y + 0.5).astype(np.int64) - half
    dx, dy = x - x0, y - y0
    if x.ndim == 0:
        return int(x0), int(y0), float(dx), float(dy)
    return x0, y0, dx, dy
