"""Build ``final_cat-<tile>.fits`` in memory and write it once (atomically).

Columns (ShapePipe's names, so that analysis scripts written for ShapePipe run):

- the tile SExtractor columns (VIGNET dropped) and TILE_ID (e.g. 270.283);
- SPREAD_MODEL, SPREADERR_MODEL and, when classifying, SPREAD_CLASS:
  ``c = SPREAD_MODEL + k SPREADERR_MODEL`` (k = 5/3 by default, the tutorial's rule);
  0 (star) if ``|c| < star_thresh``, 1 (galaxy) if ``c > gal_thresh``, 2 (other) otherwise
  or when the spread model is undefined (NaN);
- for T in NOSHEAR, 1P, 1M, 2P, 2M: NGMIX_ELL_T (g1, g2), NGMIX_ELL_ERR_T, NGMIX_T_T,
  NGMIX_T_ERR_T, NGMIX_Tpsf_T, NGMIX_SNR_T, NGMIX_FLUX_T, NGMIX_FLUX_ERR_T, NGMIX_MAG_T,
  NGMIX_MAG_ERR_T, NGMIX_FLAGS_T, NGMIX_ELL_PSFo_T, NGMIX_T_PSFo_T, and the round size and
  S/N NGMIX_T_R_T, NGMIX_SNR_R_T (the fitted model made round with its determinant kept,
  convolved with the round PSF: selection quantities independent of the galaxy's
  orientation relative to the PSF, as DES Y3 metacal's T_r and s2n_r; NaN when the ngmix
  catalogue predates them); NGMIX_MCAL_FLAGS, NGMIX_N_EPOCH, NGMIX_MOM_FAIL;
- the PSF at the object: E1_PSF_HSM, E2_PSF_HSM, SIGMA_PSF_HSM (mean over the epochs whose
  HSM fit succeeded), and optionally ShapePipe's per-epoch PSF_ELL_<i>, PSF_FWHM_<i>,
  PSF_FLAG_<i>.

What was not measured is NaN (never 0): objects absent from the ngmix catalogue, objects
without PSF. Integer flags of objects absent from the ngmix catalogue are
:data:`NOT_MEASURED_FLAG` (-1) and their NGMIX_N_EPOCH is 0.
"""

import os
import re

import numpy as np
from astropy.io import fits

from shapepipe.utils.atomic import write_fits

#: ngmix catalogue HDUs / metacal types, and their suffix in column names.
NGMIX_TYPES = ("NOSHEAR", "1P", "1M", "2P", "2M")
#: Integer flag value of an object the ngmix catalogue does not contain.
NOT_MEASURED_FLAG = -1
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def match_ids(ids, other_ids):
    """Row of each ``ids`` in ``other_ids`` (-1 when absent), vectorised.

    Parameters
    ----------
    ids, other_ids : array_like of int

    Returns
    -------
    numpy.ndarray of int64
    """
    ids = np.asarray(ids, dtype=np.int64)
    other_ids = np.asarray(other_ids, dtype=np.int64)
    if len(other_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(other_ids, kind="stable")
    pos = np.clip(np.searchsorted(other_ids[order], ids), 0, len(other_ids) - 1)
    found = other_ids[order][pos] == ids
    return np.where(found, order[pos], -1)


def spread_class(sm, sm_err, star_thresh=0.003, gal_thresh=0.01, err_factor=5.0 / 3.0):
    """ShapePipe's SPREAD_CLASS: 0 star, 1 galaxy, 2 other (also for undefined values)."""
    c = np.asarray(sm, dtype=float) + err_factor * np.asarray(sm_err, dtype=float)
    out = np.full(c.shape, 2, dtype=np.int16)
    with np.errstate(invalid="ignore"):
        out[np.abs(c) < star_thresh] = 0
        out[c > gal_thresh] = 1
    return out


def _take(values, rows, fill):
    """``values[rows]`` with ``fill`` where ``rows == -1``."""
    values = np.asarray(values)
    found = rows >= 0
    shape = (len(rows),) + values.shape[1:]
    out = np.full(shape, fill, dtype=np.result_type(values.dtype, np.asarray(fill).dtype))
    out[found] = values[rows[found]]
    return out


def ngmix_columns(ids, tables):
    """ShapePipe's NGMIX_* columns for the objects ``ids``.

    Parameters
    ----------
    ids : array_like of int
        NUMBER of the final catalogue's rows.
    tables : dict
        ngmix catalogue from ``shapepipe.modules.ngmix.read_catalog`` (keys noshear, 1p...).

    Returns
    -------
    list of astropy.io.fits.Column
    """
    rows = match_ids(ids, tables["noshear"]["id"])
    nan = np.nan
    cols = []
    for t in NGMIX_TYPES:
        tab = tables[t.lower()]
        if not np.array_equal(np.asarray(tab["id"]), np.asarray(tables["noshear"]["id"])):
            # HDUs written by write_catalog share their row order; guard against others.
            rows_t = match_ids(ids, tab["id"])
        else:
            rows_t = rows

        def get(name, fill=nan, tab=tab, rows_t=rows_t):
            if name not in tab.dtype.names:
                # A column that ngmix catalogues of older versions lack (T_r, s2n_r).
                return np.full(len(rows_t), fill, dtype=float)
            return _take(tab[name], rows_t, fill)

        def pair(a, b):
            return np.stack([get(a), get(b)], axis=1)

        cols += [
            fits.Column(name=f"NGMIX_ELL_{t}", format="2D", array=pair("g1", "g2")),
            fits.Column(name=f"NGMIX_ELL_ERR_{t}", format="2D", array=pair("g1_err", "g2_err")),
            fits.Column(name=f"NGMIX_T_{t}", format="D", array=get("T")),
            fits.Column(name=f"NGMIX_T_ERR_{t}", format="D", array=get("T_err")),
            fits.Column(name=f"NGMIX_Tpsf_{t}", format="D", array=get("Tpsf")),
            fits.Column(name=f"NGMIX_SNR_{t}", format="D", array=get("s2n")),
            fits.Column(name=f"NGMIX_T_R_{t}", format="D", array=get("T_r")),
            fits.Column(name=f"NGMIX_SNR_R_{t}", format="D", array=get("s2n_r")),
            fits.Column(name=f"NGMIX_FLUX_{t}", format="D", array=get("flux")),
            fits.Column(name=f"NGMIX_FLUX_ERR_{t}", format="D", array=get("flux_err")),
            fits.Column(name=f"NGMIX_MAG_{t}", format="D", array=get("mag")),
            fits.Column(name=f"NGMIX_MAG_ERR_{t}", format="D", array=get("mag_err")),
            fits.Column(name=f"NGMIX_FLAGS_{t}", format="J",
                        array=get("flags", NOT_MEASURED_FLAG).astype(np.int32)),
            fits.Column(name=f"NGMIX_ELL_PSFo_{t}", format="2D",
                        array=pair("g1_psfo_ngmix", "g2_psfo_ngmix")),
            fits.Column(name=f"NGMIX_T_PSFo_{t}", format="D", array=get("T_psfo_ngmix")),
        ]
    base = tables["noshear"]
    cols += [
        fits.Column(name="NGMIX_MCAL_FLAGS", format="J",
                    array=_take(base["mcal_flags"], rows, NOT_MEASURED_FLAG).astype(np.int32)),
        fits.Column(name="NGMIX_N_EPOCH", format="J",
                    array=_take(base["n_epoch_model"], rows, 0).astype(np.int32)),
        fits.Column(name="NGMIX_MOM_FAIL", format="J",
                    array=_take(base["moments_fail"], rows, NOT_MEASURED_FLAG).astype(np.int32)),
    ]
    return cols


def _epoch_shapes(entry):
    """[(e1, e2, sigma, flag)] of the epochs of one PSF store entry, in store order."""
    out = []
    if not isinstance(entry, dict):
        return out
    for value in entry.values():
        shapes = value.get("SHAPES") if isinstance(value, dict) else None
        if not isinstance(shapes, dict):
            out.append((np.nan, np.nan, np.nan, 1))
            continue
        out.append((float(shapes.get("E1_PSF_HSM", np.nan)),
                    float(shapes.get("E2_PSF_HSM", np.nan)),
                    float(shapes.get("SIGMA_PSF_HSM", np.nan)),
                    int(shapes.get("FLAG_PSF_HSM", 1))))
    return out


def psf_columns(ids, store, per_epoch=False, log=None):
    """PSF shape columns from a multi-epoch PSF store.

    Parameters
    ----------
    ids : array_like of int
    store : str or mapping
        ``galaxy_psf-<tile>.sqlite`` (read in chunks of objects, one SQL query each), or a
        mapping ``{str(id): entry}``.
    per_epoch : bool
        Also ShapePipe's PSF_ELL_<i> (2 values), PSF_FWHM_<i>, PSF_FLAG_<i> (i = 1.. the
        largest number of epochs; epochs in store order; flag 1 when absent or failed).

    Returns
    -------
    list of astropy.io.fits.Column
        E1_PSF_HSM, E2_PSF_HSM, SIGMA_PSF_HSM: means over the epochs with FLAG_PSF_HSM 0
        (NaN without any), then the per-epoch columns.
    """
    from shapepipe.utils.stamp_store import get_many

    def bad(key, exc):
        if log:
            log.warning("object %s: unreadable PSF store entry (%s)", key, exc)

    n = len(ids)
    per_object = []
    for lo in range(0, n, 2000):
        keys = [str(int(i)) for i in ids[lo:lo + 2000]]
        entries = get_many(store, keys, on_error=bad) if isinstance(store, str) else store
        for key in keys:
            try:
                per_object.append(_epoch_shapes(entries.get(key, "empty")))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                bad(key, exc)
                per_object.append([])
    max_ep = max((len(e) for e in per_object), default=0)
    arr = np.full((n, max(max_ep, 1), 4), np.nan)
    arr[:, :, 3] = 1
    for k, epochs in enumerate(per_object):
        if epochs:
            arr[k, : len(epochs)] = epochs
    good = arr[:, :, 3] == 0
    counts = good.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(good[:, :, None], arr[:, :, :3], 0.0).sum(axis=1) / counts[:, None]
    means[counts == 0] = np.nan
    cols = [fits.Column(name="E1_PSF_HSM", format="D", array=means[:, 0]),
            fits.Column(name="E2_PSF_HSM", format="D", array=means[:, 1]),
            fits.Column(name="SIGMA_PSF_HSM", format="D", array=means[:, 2])]
    if per_epoch:
        for i in range(max_ep):
            ok = good[:, i]
            ell = np.where(ok[:, None], arr[:, i, :2], np.nan)
            cols += [
                fits.Column(name=f"PSF_ELL_{i + 1}", format="2D", array=ell),
                fits.Column(name=f"PSF_FWHM_{i + 1}", format="D",
                            array=np.where(ok, arr[:, i, 2] * _FWHM_PER_SIGMA, np.nan)),
                fits.Column(name=f"PSF_FLAG_{i + 1}", format="I",
                            array=np.where(ok, 0, 1).astype(np.int16)),
            ]
    return cols


def _objects(hdul, path):
    names = [h.name for h in hdul]
    if "LDAC_OBJECTS" in names:
        return hdul["LDAC_OBJECTS"]
    if "RESULTS" in names:
        return hdul["RESULTS"]
    for hdu in hdul:
        if isinstance(hdu, fits.BinTableHDU):
            return hdu
    raise ValueError(f"{path}: no table HDU")


def tile_id(number):
    """ShapePipe's TILE_ID of a file number: ``-270-283`` -> 270.283."""
    parts = [p for p in re.split(r"[-_]", number) if p]
    try:
        return float(".".join(parts))
    except ValueError:
        return np.nan


def make_final_catalog(output_path, sexcat_path, sm_path, psf_store, ngmix_tables=None,
                       number="", do_classification=True, star_thresh=0.003, gal_thresh=0.01,
                       err_factor=5.0 / 3.0, per_epoch_psf=False, log=None):
    """Build the final catalogue of one tile and write it once, atomically.

    Parameters
    ----------
    output_path : str
        ``final_cat-<tile>.fits``.
    sexcat_path : str
        Tile SExtractor catalogue (or a ``sexcat_sm`` written in add mode).
    sm_path : str
        ``sexcat_sm-<tile>.fits`` (NUMBER, SPREAD_MODEL, SPREADERR_MODEL).
    psf_store : str, mapping or None
        Multi-epoch PSF store file (or mapping); PSF columns skipped when None.
    ngmix_tables : dict, optional
        ngmix catalogue (``read_catalog``); the NGMIX columns are skipped when None.
    number : str
        File number string (TILE_ID).
    do_classification, star_thresh, gal_thresh, err_factor
        SPREAD_CLASS rule (see :func:`spread_class`).
    per_epoch_psf : bool
        Add ShapePipe's per-epoch PSF columns.

    Returns
    -------
    int
        Number of rows.
    """
    with fits.open(sexcat_path, memmap=False) as hdul:
        hdu = _objects(hdul, sexcat_path)
        if "NUMBER" not in hdu.columns.names:
            raise KeyError(f"{sexcat_path}: no NUMBER column")
        drop = {"VIGNET", "SPREAD_MODEL", "SPREADERR_MODEL", "SPREAD_MODEL_FLAGS"}
        cols = [fits.Column(name=c.name, format=c.format, dim=c.dim, unit=c.unit,
                            array=np.asarray(hdu.data[c.name]))
                for c in hdu.columns if c.name not in drop]
        ids = np.asarray(hdu.data["NUMBER"], dtype=np.int64)
    cols.append(fits.Column(name="TILE_ID", format="D", array=np.full(len(ids), tile_id(number))))

    with fits.open(sm_path, memmap=False) as hdul:
        sm_hdu = _objects(hdul, sm_path)
        for c in ("NUMBER", "SPREAD_MODEL", "SPREADERR_MODEL"):
            if c not in sm_hdu.columns.names:
                raise KeyError(f"{sm_path}: no {c} column (expected a spread_model output)")
        rows = match_ids(ids, sm_hdu.data["NUMBER"])
        sm = _take(np.asarray(sm_hdu.data["SPREAD_MODEL"], dtype=float), rows, np.nan)
        sm_err = _take(np.asarray(sm_hdu.data["SPREADERR_MODEL"], dtype=float), rows, np.nan)
    cols += [fits.Column(name="SPREAD_MODEL", format="E", array=sm.astype(np.float32)),
             fits.Column(name="SPREADERR_MODEL", format="E", array=sm_err.astype(np.float32))]
    if do_classification:
        cols.append(fits.Column(name="SPREAD_CLASS", format="I",
                                array=spread_class(sm, sm_err, star_thresh, gal_thresh,
                                                   err_factor)))
    if ngmix_tables is not None:
        cols += ngmix_columns(ids, ngmix_tables)
    if psf_store is not None:
        cols += psf_columns(ids, psf_store, per_epoch_psf, log)
    table = fits.BinTableHDU.from_columns(cols, name="RESULTS")
    write_fits(fits.HDUList([fits.PrimaryHDU(), table]), output_path)
    if log:
        log.info("%s: %d objects, %d columns", os.path.basename(output_path), len(ids),
                 len(cols))
    return len(ids)
