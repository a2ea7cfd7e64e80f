"""FITS binary tables of the simulated survey's truth and geometry files.

Shared by ``survey`` and ``des`` (it lived in ``survey``, which made ``des`` import
``survey`` back while ``survey`` imports ``des``: an import cycle).
"""

import numpy as np
from astropy.io import fits


def table_hdulist(columns, name):
    """A FITS file with one binary table HDU built from columns.

    Parameters
    ----------
    columns : dict
        Column name -> array. Strings become ``nA`` columns (n = longest string), 2-d arrays
        vector columns, and 1-d numbers keep their dtype (float64/32, int64/32/16).
    name : str
        EXTNAME of the table HDU.

    Returns
    -------
    astropy.io.fits.HDUList
        An empty primary HDU followed by the table.
    """
    cols = []
    for key, val in columns.items():
        val = np.asarray(val)
        if val.dtype.kind in "US":
            width = max(1, max((len(s) for s in val), default=1))
            cols.append(fits.Column(name=key, format=f"{width}A", array=val))
        elif val.ndim == 2:
            fmt = {"f": "D", "i": "K"}[val.dtype.kind] if val.dtype.itemsize == 8 else "E"
            cols.append(fits.Column(name=key, format=f"{val.shape[1]}{fmt}", array=val))
        else:
            fmt = {np.dtype("float64"): "D", np.dtype("float32"): "E",
                   np.dtype("int64"): "K", np.dtype("int32"): "J",
                   np.dtype("int16"): "I"}[val.dtype]
            cols.append(fits.Column(name=key, format=fmt, array=val))
    hdu = fits.BinTableHDU.from_columns(cols, name=name)
    return fits.HDUList([fits.PrimaryHDU(), hdu])
