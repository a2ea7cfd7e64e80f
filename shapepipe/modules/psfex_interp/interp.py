"""PSF models at object positions: CLASSIC, VALIDATION and MULTI-EPOCH.

Reads ``.psf`` files of PSFEx or of the built-in ``psf_model`` (same layout), evaluates the
polynomial in PSFEx's term order, resamples ``PSF_SAMP != 1`` models to the image pixel grid
and normalises every stamp to unit sum. A model that cannot be used (file missing,
``ACCEPTED < STAR_THRESH``, ``CHI2 > CHI2_THRESH``) flags the objects instead of failing.
"""

import os

import galsim
import numpy as np
from astropy.io import fits

from shapepipe.modules.psfex.dotpsf import (
    BAD_CHI2,
    FILE_NOT_FOUND,
    NOT_ENOUGH_STARS,
    check_model,
    read_psf,
)
from shapepipe.utils.atomic import atomic_path, write_fits
from shapepipe.utils.ldac import imhead_hdu, read_ldac
from shapepipe.utils.pixels import numpy_to_fits
from shapepipe.utils.stamp_store import open_store

#: Bits of FLAG_PSF_MODEL: why the model was not evaluated for an object.
MODEL_FLAGS = {NOT_ENOUGH_STARS: 1, BAD_CHI2: 2, FILE_NOT_FOUND: 4}
MASKED = -1e30


def interpolate_psf(psf_path, positions, star_thresh=0, chi2_thresh=np.inf, size=None):
    """PSF stamps (unit sum, image pixel grid) at context positions.

    Parameters
    ----------
    psf_path : str
        The ``.psf`` file.
    positions : array_like
        ``(n, ndim)`` context values, in the order of the model's ``POLNAME`` keys.
    star_thresh : int
        Minimum ``ACCEPTED`` of a usable model.
    chi2_thresh : float
        Maximum ``CHI2`` of a usable model.
    size : int, optional
        Stamp side in image pixels (default: the model's extent).

    Returns
    -------
    numpy.ndarray or str
        ``(n, size, size)`` stamps, or one of the failure codes ``Fail_stars``,
        ``Fail_chi2``, ``File_not_found``.
    """
    if not os.path.isfile(psf_path):
        return FILE_NOT_FOUND
    model = read_psf(psf_path)
    failure = check_model(model, star_thresh, chi2_thresh)
    if failure:
        return failure
    return model.pixel_stamps(np.asarray(positions, dtype=float), size=size)


def hsm_shapes(stamps, masked_value=None):
    """HSM adaptive moments of each stamp.

    Parameters
    ----------
    stamps : numpy.ndarray
        ``(n, ny, nx)``.
    masked_value : float, optional
        Pixels at or below this value are given to HSM as bad pixels (SExtractor's -1e30).

    Returns
    -------
    numpy.ndarray
        ``(n, 4)``: g1, g2 (``observed_shape``), sigma (pixels), flag (1 = HSM failed).
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    out = np.zeros((len(stamps), 4))
    for i, stamp in enumerate(stamps):
        badpix = None
        if masked_value is not None:
            bad = stamp <= masked_value
            if bad.any():
                badpix = galsim.ImageI(bad.astype(np.int32))
                stamp = np.where(bad, 0.0, stamp)
        res = galsim.hsm.FindAdaptiveMom(galsim.ImageD(stamp), badpix=badpix, strict=False)
        if res.error_message:
            out[i] = (np.nan, np.nan, np.nan, 1)
        else:
            out[i] = (res.observed_shape.g1, res.observed_shape.g2, res.moments_sigma, 0)
    return out


def _positions(data, pos_params, psf_path, source):
    if not pos_params:
        with fits.open(psf_path, memmap=False) as hdul:
            hdr = hdul[1].header
            pos_params = [hdr[f"POLNAME{i + 1}"] for i in range(int(hdr.get("POLNAXIS", 0)))]
    if len(pos_params) != 2:
        raise ValueError(f"POSITION_PARAMS: expected two column names, got {pos_params}")
    for name in pos_params:
        if name not in data.dtype.names:
            raise KeyError(f"{source}: position column {name} (POSITION_PARAMS) not found")
    return np.stack([np.asarray(data[p], dtype=float) for p in pos_params], axis=1)


def _write_table(path, columns, header):
    hdu = fits.BinTableHDU.from_columns(columns)
    hdu.header["EXTNAME"] = "LDAC_OBJECTS"
    write_fits(fits.HDUList([fits.PrimaryHDU(), imhead_hdu(header), hdu]), path)


def process_classic(psf_path, galcat_path, output_path, pos_params=None, get_shapes=True,
                    star_thresh=20, chi2_thresh=2.0, log=None):
    """CLASSIC mode: PSF stamps at every object of a catalogue.

    Writes ``output_path`` (FITS_LDAC) with ``NUMBER``, ``VIGNET``, ``FLAG_PSF_MODEL`` and, if
    ``get_shapes``, ``E1_PSF_HSM``, ``E2_PSF_HSM``, ``SIGMA_PSF_HSM``, ``FLAG_PSF_HSM``. If the
    model is unusable every VIGNET is -1e30, shapes are NaN and ``FLAG_PSF_MODEL`` says why
    (1 not enough stars, 2 bad chi2, 4 no model file).

    Returns
    -------
    str or None
        The failure code, or None if the model was used.
    """
    data, header = read_ldac(galcat_path)
    pos = _positions(data, pos_params, psf_path, galcat_path) if os.path.isfile(psf_path) \
        else np.zeros((len(data), 2))
    psfs = interpolate_psf(psf_path, pos, star_thresh, chi2_thresh)
    n = len(data)
    number = data["NUMBER"] if "NUMBER" in data.dtype.names else np.arange(1, n + 1)
    failure = psfs if isinstance(psfs, str) else None
    if failure:
        size = _model_size(psf_path)
        psfs = np.full((n, size, size), MASKED)
        shapes = np.tile([np.nan, np.nan, np.nan, 1.0], (n, 1))
        if log:
            log.warning("%s: PSF model unusable (%s); %d objects flagged", psf_path, failure, n)
    else:
        shapes = hsm_shapes(psfs) if get_shapes else None
    size = psfs.shape[1]
    cols = [
        fits.Column(name="NUMBER", format="J", array=np.asarray(number, dtype=np.int32)),
        fits.Column(name="VIGNET", format=f"{size * size}E", dim=f"({size}, {size})",
                    array=psfs.astype(np.float32)),
        fits.Column(name="FLAG_PSF_MODEL", format="I",
                    array=np.full(n, MODEL_FLAGS.get(failure, 0), dtype=np.int16)),
    ]
    if get_shapes:
        cols += _shape_columns(shapes, "PSF")
    _write_table(output_path, cols, header)
    return failure


def _model_size(psf_path):
    try:
        model = read_psf(psf_path)
        size = int(round(model.shape[1] * model.samp))
        return size if model.samp == 1.0 else size + 1 - size % 2
    except (OSError, ValueError, KeyError):
        return 51


def _shape_columns(shapes, kind):
    return [
        fits.Column(name=f"E1_{kind}_HSM", format="D", array=shapes[:, 0]),
        fits.Column(name=f"E2_{kind}_HSM", format="D", array=shapes[:, 1]),
        fits.Column(name=f"SIGMA_{kind}_HSM", format="D", array=shapes[:, 2]),
        fits.Column(name=f"FLAG_{kind}_HSM", format="I", array=shapes[:, 3].astype(np.int16)),
    ]


def accepted_from_psfex_cat(psfex_cat_path, n_stars, x=None, y=None, tol=0.01):
    """Which stars of a catalogue PSFEx or psf_model used in the model.

    Stars are matched to the model's output catalogue by position (``X_IMAGE``,
    ``Y_IMAGE`` there are the CENTER_KEYS values, e.g. XWIN_IMAGE): a star is accepted when
    a source within ``tol`` pixels has ``FLAGS_PSF == 0``. So a star catalogue that is not
    the one the model was fitted on (the 20% held out by a random split) gets ACCEPTED = 0,
    as it should. Without positions, the 1-based row number is matched to ``SOURCE_NUMBER``
    (ShapePipe's rule, right only for the fitted catalogue itself).
    """
    cat, _ = read_ldac(psfex_cat_path)
    ok = np.ones(len(cat), bool)
    if "FLAGS_PSF" in cat.dtype.names:
        ok = np.asarray(cat["FLAGS_PSF"]) == 0
    if x is not None and y is not None and {"X_IMAGE", "Y_IMAGE"} <= set(cat.dtype.names):
        cx = np.asarray(cat["X_IMAGE"], dtype=float)[ok]
        cy = np.asarray(cat["Y_IMAGE"], dtype=float)[ok]
        if len(cx) == 0:
            return np.zeros(n_stars, bool)
        order = np.argsort(cx)
        cx, cy = cx[order], cy[order]
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        accepted = np.zeros(n_stars, bool)
        # Sorted x: each star only looks at the sources with |dx| <= tol.
        lo = np.searchsorted(cx, x - tol, side="left")
        hi = np.searchsorted(cx, x + tol, side="right")
        for i in np.flatnonzero(hi > lo):
            accepted[i] = np.any(np.abs(cy[lo[i]:hi[i]] - y[i]) <= tol)
        return accepted
    used = np.asarray(cat["SOURCE_NUMBER"])[ok]
    return np.isin(np.arange(1, n_stars + 1), used)


def process_validation(psf_path, starcat_path, psfex_cat_path, output_path, pos_params=None,
                       star_thresh=20, chi2_thresh=2.0, log=None):
    """VALIDATION mode: stars with their PSF model and both HSM shapes.

    Writes ``output_path`` with NUMBER, X, Y, RA, DEC, MAG, SNR, ACCEPTED,
    E1/E2/SIGMA/FLAG_PSF_HSM, E1/E2/SIGMA/FLAG_STAR_HSM and FLAG_PSF_MODEL.

    Returns
    -------
    str or None
        The failure code, or None if the model was used.
    """
    data, header = read_ldac(starcat_path)
    n = len(data)
    for col in ("VIGNET", "XWIN_IMAGE", "YWIN_IMAGE"):
        if col not in data.dtype.names:
            raise KeyError(f"{starcat_path}: column {col} needed by VALIDATION not found")
    pos = _positions(data, pos_params, psf_path, starcat_path) if os.path.isfile(psf_path) \
        else np.zeros((n, 2))
    psfs = interpolate_psf(psf_path, pos, star_thresh, chi2_thresh)
    failure = psfs if isinstance(psfs, str) else None
    if failure:
        psf_shapes = np.tile([np.nan, np.nan, np.nan, 1.0], (n, 1))
        if log:
            log.warning("%s: PSF model unusable (%s); %d stars flagged", psf_path, failure, n)
    else:
        psf_shapes = hsm_shapes(psfs)
    star_shapes = hsm_shapes(data["VIGNET"], masked_value=-1e29)
    if psfex_cat_path and os.path.isfile(psfex_cat_path):
        accepted = accepted_from_psfex_cat(psfex_cat_path, n, data["XWIN_IMAGE"],
                                           data["YWIN_IMAGE"])
    else:
        accepted = np.zeros(n, bool)

    def col(name, fallback=np.nan):
        return np.asarray(data[name], dtype=float) if name in data.dtype.names \
            else np.full(n, fallback)

    number = data["NUMBER"] if "NUMBER" in data.dtype.names else np.arange(1, n + 1)
    cols = [
        fits.Column(name="NUMBER", format="J", array=np.asarray(number, dtype=np.int32)),
        fits.Column(name="X", format="D", array=col("XWIN_IMAGE")),
        fits.Column(name="Y", format="D", array=col("YWIN_IMAGE")),
        fits.Column(name="RA", format="D", array=col("XWIN_WORLD")),
        fits.Column(name="DEC", format="D", array=col("YWIN_WORLD")),
        fits.Column(name="MAG", format="E", array=col("MAG_AUTO")),
        fits.Column(name="SNR", format="E", array=col("SNR_WIN")),
        fits.Column(name="ACCEPTED", format="I", array=accepted.astype(np.int16)),
        fits.Column(name="FLAG_PSF_MODEL", format="I",
                    array=np.full(n, MODEL_FLAGS.get(failure, 0), dtype=np.int16)),
    ]
    cols += _shape_columns(psf_shapes, "PSF") + _shape_columns(star_shapes, "STAR")
    _write_table(output_path, cols, header)
    return failure


def process_multi_epoch(galcat_path, output_path, dot_psf_dirs, dot_psf_pattern, exp_wcs,
                        pos_params=("XWIN_WORLD", "YWIN_WORLD"), get_shapes=True,
                        star_thresh=20, chi2_thresh=2.0, log=None):
    """MULTI-EPOCH mode: PSF of every tile object on every exposure-CCD it falls on.

    Parameters
    ----------
    galcat_path : str
        Tile catalogue with ``EPOCH_<i>`` HDUs (``NUMBER``, ``EXP_NAME``, ``CCD_N``).
    output_path : str
        Output sqlite store (see :mod:`shapepipe.utils.stamp_store`).
    dot_psf_dirs : list of str
        Directories searched, in order, for ``<pattern>-<exp>-<ccd>.psf``.
    dot_psf_pattern : str
        Prefix of the ``.psf`` file names.
    exp_wcs : dict or callable
        ``{exp_name: [astropy.wcs.WCS or None per CCD]}`` (merge_headers'
        ``read_exp_wcs``), or a function of the list of exposure names returning it.
    pos_params : sequence of str
        World-coordinate columns (degrees) of the tile catalogue.

    Returns
    -------
    dict
        Counts: ``objects``, ``empty``, ``epochs`` written, ``failed_ccds``.
    """
    with fits.open(galcat_path, memmap=False) as hdul:
        objects = hdul["LDAC_OBJECTS"].data
        epochs = [(h.name, h.data.copy()) for h in hdul if h.name.startswith("EPOCH_")]
        for name in pos_params:
            if name not in objects.columns.names:
                raise KeyError(f"{galcat_path}: position column {name} (POSITION_PARAMS) "
                               "not found")
        ra = np.asarray(objects[pos_params[0]], dtype=float)
        dec = np.asarray(objects[pos_params[1]], dtype=float)
        ids = np.asarray(objects["NUMBER"])
    if not epochs:
        raise ValueError(f"{galcat_path}: no EPOCH_<i> HDU (run the sextractor tile "
                         "post-process, MAKE_POST_PROCESS = True)")
    if callable(exp_wcs):
        names = sorted({str(ep["EXP_NAME"][0]).strip() for _, ep in epochs if len(ep)})
        exp_wcs = exp_wcs(names)
    row_of = {int(i): k for k, i in enumerate(ids)}
    result = {str(int(i)): {} for i in ids}
    failed = []
    n_epochs = 0
    for _hdu_name, ep in epochs:
        if len(ep) == 0:
            continue
        exp_name = str(ep["EXP_NAME"][0]).strip()
        ccd_n = np.asarray(ep["CCD_N"])
        rows = np.array([row_of.get(int(i), -1) for i in ep["NUMBER"]])
        for ccd in np.unique(ccd_n[ccd_n >= 0]):
            sel = np.flatnonzero((ccd_n == ccd) & (rows >= 0))
            key = f"{exp_name}-{int(ccd)}"
            psf_path = _find_psf(dot_psf_dirs, f"{dot_psf_pattern}-{key}.psf")
            wcs_list = exp_wcs.get(exp_name)
            if wcs_list is None or int(ccd) >= len(wcs_list) or wcs_list[int(ccd)] is None:
                failed.append((key, "no WCS"))
                continue
            r = rows[sel]
            x0, y0 = wcs_list[int(ccd)].all_world2pix(ra[r], dec[r], 0)
            pos = np.stack([numpy_to_fits(x0), numpy_to_fits(y0)], axis=1)
            psfs = interpolate_psf(psf_path, pos, star_thresh, chi2_thresh)
            if isinstance(psfs, str):
                failed.append((key, psfs))
                if log:
                    log.info("%s: %s, objects on it lose this epoch", key, psfs)
                continue
            shapes = hsm_shapes(psfs) if get_shapes else None
            for j, row in enumerate(r):
                entry = {"VIGNET": psfs[j].astype(np.float32)}
                if get_shapes:
                    entry["SHAPES"] = {"E1_PSF_HSM": shapes[j, 0], "E2_PSF_HSM": shapes[j, 1],
                                       "SIGMA_PSF_HSM": shapes[j, 2],
                                       "FLAG_PSF_HSM": int(shapes[j, 3])}
                result[str(int(ids[row]))][key] = entry
                n_epochs += 1
    n_empty = 0
    with atomic_path(output_path) as tmp:
        store = open_store(tmp, flag="n")
        try:
            for obj_id, value in result.items():
                if not value:
                    value = "empty"
                    n_empty += 1
                store[obj_id] = value
            store.commit()
        finally:
            store.close()
    if log:
        log.info("%d/%d objects without any PSF epoch; %d CCDs unusable", n_empty, len(ids),
                 len(failed))
    return {"objects": len(ids), "empty": n_empty, "epochs": n_epochs, "failed_ccds": failed}


def _find_psf(dirs, name):
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return os.path.join(dirs[0], name) if dirs else name
