"""spread_model on a tile: catalogue stamps + multi-epoch PSF store + weight stamps.

PSF at a tile object: the tile is an inverse-variance weighted mean of dithered exposures
resampled onto the same pixel scale, so the PSF of the stack at an object is the weighted
mean of the epochs' PSFs with the exposures' stacking weights there. The PSF store holds each
epoch's PSF stamp (unit sum, exposure pixel grid, centred on the central pixel) but not the
stacking weights, so the epochs are averaged with equal weights: exact when the exposures
have the same depth (as in the simulated survey, same exposure time, gain and sky), and a
second-order error otherwise (a mixture of similar PSFs). The FWHM that sets the galaxy
model's scale length is the mean over epochs of 2.3548 x the HSM sigma stored with each PSF
(``SHAPES``), or, without it, the FWHM of a Gaussian with the same peak as the mean PSF.

Stamp alignment: SExtractor's VIGNET is centred on the pixel nearest to X_IMAGE, Y_IMAGE;
the weight stamps of vignetmaker CLASSIC on the pixel nearest to the positions recorded in
their header (VIGPOSX/VIGPOSY, default XWIN_IMAGE/YWIN_IMAGE). Weight stamps are shifted by
the (rare) whole-pixel difference, so that pixels match; the models are centred on
XWIN_IMAGE, YWIN_IMAGE.
"""

import numpy as np
from astropy.io import fits

from shapepipe.modules.spread_model.model import FLAG_NO_PSF, models, spread_model
from shapepipe.utils.atomic import write_fits
from shapepipe.utils.pixels import fits_to_numpy, stamp_corner
from shapepipe.utils.stamp_store import open_store

#: Objects processed together (bounds memory: a few arrays of CHUNK x S x S).
CHUNK = 1000
#: Pixels at or below this value are SExtractor's masked pixels (-1e30).
_MASKED = -1e29
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def _fit_size(stamp, size):
    """Crop or zero-pad a square stamp centred on its central pixel to ``size``."""
    p = stamp.shape[0]
    if p == size:
        return stamp
    out = np.zeros((size, size))
    c, pc = size // 2, p // 2
    lo_src, lo_dst = max(pc - c, 0), max(c - pc, 0)
    w = min(p - lo_src, size - lo_dst)
    out[lo_dst:lo_dst + w, lo_dst:lo_dst + w] = stamp[lo_src:lo_src + w, lo_src:lo_src + w]
    return out


def _epoch_psfs(entry):
    """(stamps, sigmas) of the usable epochs of one store entry; raises on bad content."""
    stamps, sigmas = [], []
    if not isinstance(entry, dict):
        return stamps, sigmas
    for value in entry.values():
        vig = np.asarray(value["VIGNET"], dtype=float)
        if vig.ndim != 2 or vig.shape[0] != vig.shape[1] or not np.all(np.isfinite(vig)):
            continue
        if not vig.sum() > 0:
            continue
        stamps.append(vig / vig.sum())
        shapes = value.get("SHAPES") or {}
        sig = shapes.get("SIGMA_PSF_HSM")
        if sig is not None and int(shapes.get("FLAG_PSF_HSM", 0)) == 0 and np.isfinite(sig) \
                and sig > 0:
            sigmas.append(float(sig))
    return stamps, sigmas


def combine_epoch_psfs(store, ids, size, log=None):
    """PSF of each object: equal-weight mean of its epochs' PSF stamps.

    Parameters
    ----------
    store : mapping
        Multi-epoch PSF store (``galaxy_psf-<tile>.sqlite`` opened with ``open_store``).
    ids : sequence of int
        Object ids.
    size : int
        Side of the returned stamps.

    Returns
    -------
    psf : numpy.ndarray
        ``(n, size, size)``, unit sum (zeros without PSF).
    fwhm : numpy.ndarray
        ``(n,)`` pixels (NaN without PSF).
    n_epoch : numpy.ndarray of int
        Epochs averaged.
    """
    n = len(ids)
    psf = np.zeros((n, size, size))
    fwhm = np.full(n, np.nan)
    n_epoch = np.zeros(n, dtype=np.int32)
    for k, obj_id in enumerate(ids):
        try:
            stamps, sigmas = _epoch_psfs(store.get(str(int(obj_id)), "empty"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A corrupt entry costs this object its PSF, not the job.
            if log:
                log.warning("object %s: unreadable PSF store entry (%s: %s)", obj_id,
                            type(exc).__name__, exc)
            continue
        if not stamps:
            continue
        mean = np.mean([_fit_size(s, size) for s in stamps], axis=0)
        psf[k] = mean / mean.sum()
        n_epoch[k] = len(stamps)
        if sigmas:
            fwhm[k] = _FWHM_PER_SIGMA * np.mean(sigmas)
        else:
            fwhm[k] = _FWHM_PER_SIGMA * np.sqrt(1.0 / (2.0 * np.pi * psf[k].max()))
    return psf, fwhm, n_epoch


def _objects(hdul):
    names = [h.name for h in hdul]
    if "LDAC_OBJECTS" in names:
        return hdul["LDAC_OBJECTS"]
    return next(h for h in hdul if isinstance(h, fits.BinTableHDU))


def _shift_stamps(stamps, ox, oy):
    """``out[k, j, i] = stamps[k, j + oy[k], i + ox[k]]`` (0 outside), vectorised."""
    if not (np.any(ox) or np.any(oy)):
        return stamps
    n, s, _ = stamps.shape
    rows = np.arange(s)[None, :] + oy[:, None]
    cols = np.arange(s)[None, :] + ox[:, None]
    valid = ((rows >= 0) & (rows < s))[:, :, None] & ((cols >= 0) & (cols < s))[:, None, :]
    out = stamps[np.arange(n)[:, None, None], np.clip(rows, 0, s - 1)[:, :, None],
                 np.clip(cols, 0, s - 1)[:, None, :]]
    return np.where(valid, out, 0.0)


def _centres(cat_cols, names, default):
    for name in names:
        if name not in cat_cols:
            return default
    return [np.asarray(cat_cols[name], dtype=float) for name in names]


def process(sexcat_path, psf_store_path, weight_vignet_path, output_path, mode="new",
            pixel_scale=None, log=None):
    """Compute SPREAD_MODEL for a tile catalogue and write ``sexcat_sm``.

    Parameters
    ----------
    sexcat_path : str
        Tile catalogue with VIGNET, NUMBER, XWIN_IMAGE, YWIN_IMAGE (X_IMAGE, Y_IMAGE used to
        locate SExtractor's stamp centres when present).
    psf_store_path : str
        Multi-epoch PSF store.
    weight_vignet_path : str
        Weight stamps (vignetmaker CLASSIC), same row order as the catalogue.
    output_path : str
    mode : {"new", "add"}
        ``new``: NUMBER, SPREAD_MODEL, SPREADERR_MODEL, SPREAD_MODEL_FLAGS; ``add``: every
        HDU of the catalogue with these columns added to its object table.
    pixel_scale : float, optional
        Pixel scale (arcsec) of the exposures the PSF stamps are sampled on; compared with
        the tile's (the PSF stamps are used on the tile grid as they are).

    Returns
    -------
    dict
        Counts: ``objects``, ``no_psf``, ``flagged``.
    """
    mode = mode.lower()
    if mode not in ("new", "add"):
        raise ValueError(f"OUTPUT_MODE = {mode!r}: expected new or add")
    with fits.open(sexcat_path, memmap=True) as hdul:
        obj_hdu = _objects(hdul)
        data = obj_hdu.data
        names = data.columns.names
        for col in ("NUMBER", "VIGNET", "XWIN_IMAGE", "YWIN_IMAGE"):
            if col not in names:
                raise KeyError(f"{sexcat_path}: column {col} not found (spread_model needs "
                               "NUMBER, VIGNET, XWIN_IMAGE, YWIN_IMAGE)")
        ids = np.asarray(data["NUMBER"], dtype=np.int64)
        xwin = fits_to_numpy(data["XWIN_IMAGE"])
        ywin = fits_to_numpy(data["YWIN_IMAGE"])
        cols = {c: data[c] for c in ("X_IMAGE", "Y_IMAGE") if c in names}
        xc, yc = _centres(cols, ["X_IMAGE", "Y_IMAGE"], [data["XWIN_IMAGE"],
                                                         data["YWIN_IMAGE"]])
        size = data["VIGNET"].shape[-1]
        if data["VIGNET"].shape[-2] != size:
            raise ValueError(f"{sexcat_path}: VIGNET stamps are not square")
        # SExtractor's stamp corner (nearest pixel to X_IMAGE; see sextractor.measure).
        vx0, vy0, _, _ = stamp_corner(fits_to_numpy(xc), fits_to_numpy(yc), size)
        _check_scale(hdul, pixel_scale, log)

        with fits.open(weight_vignet_path, memmap=True) as whdul:
            whdu = _objects(whdul)
            wids = np.asarray(whdu.data["NUMBER"], dtype=np.int64)
            if len(wids) != len(ids) or np.any(wids != ids):
                raise ValueError(f"{weight_vignet_path}: NUMBER does not match {sexcat_path} "
                                 "row by row (weight vignets of another catalogue?)")
            if whdu.data["VIGNET"].shape[-1] != size:
                raise ValueError(f"{weight_vignet_path}: stamps of {whdu.data['VIGNET'].shape[-1]}"
                                 f" pixels, the catalogue's VIGNET has {size}")
            wpos = (whdu.header.get("VIGPOSX", "XWIN_IMAGE"),
                    whdu.header.get("VIGPOSY", "YWIN_IMAGE"))
            if whdu.header.get("VIGCOORD", "PIX") == "PIX" and all(p in names for p in wpos):
                wx0, wy0, _, _ = stamp_corner(fits_to_numpy(data[wpos[0]]),
                                              fits_to_numpy(data[wpos[1]]), size)
            else:
                wx0, wy0 = vx0, vy0

            sm = np.full(len(ids), np.nan)
            err = np.full(len(ids), np.nan)
            flags = np.zeros(len(ids), dtype=np.int16)
            store = open_store(psf_store_path, flag="r")
            try:
                for lo in range(0, len(ids), CHUNK):
                    hi = min(lo + CHUNK, len(ids))
                    sl = slice(lo, hi)
                    psf, fwhm, n_ep = combine_epoch_psfs(store, ids[sl], size, log)
                    pix = np.asarray(data["VIGNET"][sl], dtype=float)
                    wgt = _shift_stamps(np.asarray(whdu.data["VIGNET"][sl], dtype=float),
                                        vx0[sl] - wx0[sl], vy0[sl] - wy0[sl])
                    bad = (pix <= _MASKED) | ~np.isfinite(pix) | ~np.isfinite(wgt)
                    wgt = np.where(bad, 0.0, np.maximum(wgt, 0.0))
                    pix = np.where(bad, 0.0, pix)
                    has_psf = n_ep > 0
                    phi, gal = models(psf, xwin[sl] - vx0[sl], ywin[sl] - vy0[sl],
                                      np.where(has_psf, fwhm, 1.0), size)
                    s, e, f = spread_model(pix, wgt, phi, gal)
                    f = f | np.where(has_psf, 0, FLAG_NO_PSF).astype(np.int16)
                    s[~has_psf] = np.nan
                    e[~has_psf] = np.nan
                    sm[sl], err[sl], flags[sl] = s, e, f
            finally:
                store.close()
        new_cols = [
            fits.Column(name="SPREAD_MODEL", format="E", array=sm.astype(np.float32)),
            fits.Column(name="SPREADERR_MODEL", format="E", array=err.astype(np.float32)),
            fits.Column(name="SPREAD_MODEL_FLAGS", format="I", array=flags),
        ]
        if mode == "new":
            table = fits.BinTableHDU.from_columns(
                [fits.Column(name="NUMBER", format="J", array=ids.astype(np.int32)), *new_cols],
                name="LDAC_OBJECTS")
            hdus = [fits.PrimaryHDU()]
            if "LDAC_IMHEAD" in [h.name for h in hdul]:
                hdus.append(hdul["LDAC_IMHEAD"].copy())
            hdus.append(table)
        else:
            table = fits.BinTableHDU.from_columns(obj_hdu.columns + fits.ColDefs(new_cols),
                                                  header=obj_hdu.header, name=obj_hdu.name)
            hdus = [table if h is obj_hdu else h.copy() for h in hdul]
        write_fits(fits.HDUList(hdus), output_path)
    n_no_psf = int(np.count_nonzero(flags & FLAG_NO_PSF))
    if log:
        log.info("%d objects, %d without PSF, %d flagged; median SPREAD_MODEL %.4g",
                 len(ids), n_no_psf, int(np.count_nonzero(flags)),
                 float(np.nanmedian(sm)) if np.isfinite(sm).any() else float("nan"))
    return {"objects": len(ids), "no_psf": n_no_psf, "flagged": int(np.count_nonzero(flags))}


def _check_scale(hdul, pixel_scale, log):
    """Warn when the tile's pixel scale differs from the exposures' (PIXEL_SCALE)."""
    if not pixel_scale or "LDAC_IMHEAD" not in [h.name for h in hdul]:
        return
    from shapepipe.utils.ldac import read_imhead

    try:
        import warnings

        from astropy.wcs import WCS, FITSFixedWarning
        from astropy.wcs.utils import proj_plane_pixel_scales

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(read_imhead(hdul["LDAC_IMHEAD"])).celestial
        scale = float(np.sqrt(np.prod(proj_plane_pixel_scales(wcs)))) * 3600.0
    except Exception:  # noqa: BLE001 - no usable WCS: nothing to compare
        return
    if abs(scale / pixel_scale - 1.0) > 0.01 and log:
        log.warning("tile pixel scale %.4f\" differs from PIXEL_SCALE %.4f\": the exposure "
                    "PSF stamps are used on the tile grid without resampling", scale,
                    pixel_scale)
