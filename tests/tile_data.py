"""Small generated data for the tile-chain tests (vignetmaker, spread_model, make_catalog)."""

import json

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from sqlitedict import SqliteDict

from shapepipe.utils.ldac import imhead_hdu

SCALE = 0.187 / 3600.0


def make_wcs(crval=(150.0, 2.0), crpix=(50.0, 50.0)):
    """A TAN WCS with the simulated survey's orientation and pixel scale."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(crval)
    w.wcs.crpix = list(crpix)
    w.wcs.cd = np.array([[-SCALE, 0.0], [0.0, SCALE]])
    return w


def write_image(path, data, wcs=None):
    """One image HDU (primary) with an optional WCS."""
    header = wcs.to_header() if wcs is not None else fits.Header()
    fits.PrimaryHDU(np.asarray(data), header=header).writeto(path, overwrite=True)


def write_log_wcs(path, exposures):
    """``log_exp_headers.sqlite``: ``{exp: [WCS or None per CCD]}`` in merge_headers' layout."""
    store = SqliteDict(path, flag="n", encode=json.dumps, decode=json.loads)
    for exp, ccds in exposures.items():
        store[exp] = [None if w is None else w.to_header().tostring() for w in ccds]
    store.commit()
    store.close()


def write_tile_catalog(path, columns, epochs=(), imhead=None):
    """A FITS_LDAC-like tile catalogue with ``EPOCH_<i>`` HDUs.

    Parameters
    ----------
    columns : dict
        ``{name: array}`` of LDAC_OBJECTS (a 3-d array becomes a VIGNET-like column).
    epochs : list of (str, numpy.ndarray)
        ``(exposure name, CCD index per object or -1)``.
    imhead : astropy.io.fits.Header, optional
        Image header stored in LDAC_IMHEAD.
    """
    cols = []
    for name, arr in columns.items():
        arr = np.asarray(arr)
        if arr.ndim == 3:
            n, ny, nx = arr.shape
            cols.append(fits.Column(name=name, format=f"{ny * nx}E", dim=f"({nx}, {ny})",
                                    array=arr.astype(np.float32)))
        elif arr.dtype.kind in "iu":
            cols.append(fits.Column(name=name, format="J", array=arr.astype(np.int32)))
        else:
            cols.append(fits.Column(name=name, format="D", array=arr.astype(float)))
    hdus = [fits.PrimaryHDU()]
    hdus.append(imhead_hdu(imhead if imhead is not None else fits.Header()))
    hdus.append(fits.BinTableHDU.from_columns(cols, name="LDAC_OBJECTS"))
    numbers = np.asarray(columns["NUMBER"])
    for i, (exp, ccd) in enumerate(epochs):
        hdus.append(fits.BinTableHDU.from_columns([
            fits.Column(name="NUMBER", format="J", array=numbers),
            fits.Column(name="EXP_NAME", format=f"{len(exp)}A", array=np.full(len(numbers), exp)),
            fits.Column(name="CCD_N", format="J", array=np.asarray(ccd)),
        ], name=f"EPOCH_{i}"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
