"""The true PSF: a Moffat whose FWHM and ellipticity vary smoothly over the focal plane.

Per exposure, FWHM (arcsec), g1 and g2 are quadratic polynomials of the normalised focal-plane
coordinates (u, v) (see FORMATS.md, ``truth/psf_model.fits``).
"""

import functools
import os

import numpy as np
from astropy.io import fits

from shapepipe.sim.geometry import PIXEL_SCALE, ccd_layout, r_norm
from shapepipe.utils.rng import make_rng

FWHM_MIN = 0.6
FWHM_MAX = 0.8


def psf_coefficients(seed, exp_num, g_offset=(0.0, 0.0)):
    """Random but smooth PSF model of one exposure.

    Parameters
    ----------
    seed : int
        Survey seed.
    exp_num : int
        Exposure number.
    g_offset : (float, float)
        Added to the constant terms of g1 and g2: a mean PSF ellipticity over the focal
        plane, for fields that measure the PSF leakage of the shear estimates.

    Returns
    -------
    dict
        ``BETA`` (float), ``FWHM_COEF``, ``G1_COEF``, ``G2_COEF`` (arrays of 6 coefficients of
        1, u, v, u^2, uv, v^2).
    """
    rng = make_rng(seed, "psf", int(exp_num))
    # Half-integer betas have a closed-form Fourier transform in GalSim (5-10x faster to draw
    # than a generic beta, whose transform needs Bessel-K evaluations at every k).
    beta = float(rng.choice([3.5, 3.5, 4.5]))
    fwhm = np.zeros(6)
    fwhm[0] = rng.uniform(0.64, 0.71)
    fwhm[1:3] = rng.normal(0.0, 0.01, 2)
    radial = rng.uniform(0.02, 0.05)
    fwhm[3] = radial
    fwhm[5] = radial
    fwhm[4] = rng.normal(0.0, 0.005)
    # Astigmatism-like pattern: g1 ~ a (u^2 - v^2), g2 ~ 2 a u v, plus a small constant and tilt.
    astig = rng.uniform(0.01, 0.02)
    g1 = np.zeros(6)
    g2 = np.zeros(6)
    g1[0], g2[0] = rng.normal(0.0, 0.01, 2)
    g1[1:3] = rng.normal(0.0, 0.005, 2)
    g2[1:3] = rng.normal(0.0, 0.005, 2)
    g1[3], g1[5] = astig, -astig
    g2[4] = 2.0 * astig
    g1[0] += g_offset[0]
    g2[0] += g_offset[1]
    return {"BETA": float(beta), "FWHM_COEF": fwhm, "G1_COEF": g1, "G2_COEF": g2}


def _poly(c, u, v):
    return c[0] + c[1] * u + c[2] * v + c[3] * u * u + c[4] * u * v + c[5] * v * v


def eval_model(row, x, y):
    """Evaluate one exposure-CCD PSF model at 1-based CCD pixel positions.

    Parameters
    ----------
    row : dict-like
        ``DX``, ``DY``, ``R_NORM``, ``BETA``, ``FWHM_COEF``, ``G1_COEF``, ``G2_COEF``.
    x, y : array_like
        1-based pixel coordinates on the CCD.

    Returns
    -------
    fwhm, beta, g1, g2 : numpy.ndarray
        FWHM in arcsec, Moffat beta, shear components in the pixel frame.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    u = (x - 1.0 + row["DX"]) / row["R_NORM"]
    v = (y - 1.0 + row["DY"]) / row["R_NORM"]
    fwhm = np.clip(_poly(row["FWHM_COEF"], u, v), FWHM_MIN, FWHM_MAX)
    g1 = _poly(row["G1_COEF"], u, v)
    g2 = _poly(row["G2_COEF"], u, v)
    beta = np.full_like(fwhm, row["BETA"])
    return fwhm, beta, g1, g2


def model_rows(params, seed):
    """Rows of ``truth/psf_model.fits``: one per exposure and CCD, as a dict of columns."""
    dx, dy, _, _ = ccd_layout(params)
    rn = r_norm(params)
    cols = {k: [] for k in ("EXP_NUM", "CCD", "DX", "DY", "R_NORM", "BETA", "FWHM_COEF",
                            "G1_COEF", "G2_COEF")}
    for exp in params.exposures:
        coef = psf_coefficients(seed, exp, params.psf_g_offset)
        for ccd in range(dx.size):
            cols["EXP_NUM"].append(exp)
            cols["CCD"].append(ccd)
            cols["DX"].append(dx[ccd])
            cols["DY"].append(dy[ccd])
            cols["R_NORM"].append(rn)
            for k in ("BETA", "FWHM_COEF", "G1_COEF", "G2_COEF"):
                cols[k].append(coef[k])
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["EXP_NUM"] = out["EXP_NUM"].astype(np.int32)
    out["CCD"] = out["CCD"].astype(np.int16)
    return out


def model_row(params, seed, exp_num, ccd):
    """The psf_model row (dict) of one exposure-CCD, computed from the parameters."""
    dx, dy, _, _ = ccd_layout(params)
    row = psf_coefficients(seed, exp_num, params.psf_g_offset)
    row.update(DX=float(dx[ccd]), DY=float(dy[ccd]), R_NORM=r_norm(params))
    return row


@functools.lru_cache(maxsize=8)
def _read_model(path, mtime):
    del mtime  # part of the cache key only
    with fits.open(path) as hdul:
        data = hdul["PSF_MODEL"].data
        table = {name: np.array(data[name]) for name in data.names}
    index = {(int(e), int(c)): i for i, (e, c) in enumerate(zip(table["EXP_NUM"], table["CCD"]))}
    return table, index


def _lookup(truth, exp, ccd):
    if isinstance(truth, dict):
        return truth
    path = os.fspath(truth)
    if os.path.isdir(path):
        path = os.path.join(path, "psf_model.fits")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: PSF truth file not found (expected truth/psf_model.fits)")
    table, index = _read_model(path, os.path.getmtime(path))
    key = (int(exp), int(ccd))
    if key not in index:
        raise KeyError(f"{path}: no PSF model for exposure {exp}, CCD {ccd}")
    i = index[key]
    return {name: table[name][i] for name in table}


def true_psf_params(truth, exp, ccd, x, y):
    """True PSF parameters at 1-based pixel positions (x, y) of a CCD.

    Parameters
    ----------
    truth : str or dict
        The truth directory, the ``psf_model.fits`` path, or one model row (dict).
    exp : int
        Exposure number (e.g. 2000001).
    ccd : int
        CCD index (0-based).
    x, y : float or array_like
        1-based pixel coordinates.

    Returns
    -------
    fwhm, beta, g1, g2 : numpy.ndarray
        FWHM (arcsec), Moffat beta, shear (pixel frame).
    """
    return eval_model(_lookup(truth, exp, ccd), x, y)


def true_psf(truth, exp, ccd, x, y):
    """The true PSF at one position, as a GalSim object in pixel units (no pixel response).

    Draw it with ``psf.drawImage(scale=1.0)`` (default method adds the pixel response) to get the
    PSF as seen in the image.

    Parameters
    ----------
    truth : str or dict
        The truth directory, the ``psf_model.fits`` path, or one model row (dict).
    exp, ccd : int
        Exposure number and CCD index.
    x, y : float
        1-based pixel position on the CCD.

    Returns
    -------
    galsim.GSObject
    """

    fwhm, beta, g1, g2 = eval_model(_lookup(truth, exp, ccd), x, y)
    return moffat(float(fwhm), float(beta), float(g1), float(g2))


def moffat(fwhm_arcsec, beta, g1, g2, gsparams=None):
    """A sheared Moffat in pixel units."""
    import galsim

    return galsim.Moffat(beta=beta, fwhm=fwhm_arcsec / PIXEL_SCALE,
                         gsparams=gsparams).shear(g1=g1, g2=g2)
