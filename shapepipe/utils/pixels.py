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
