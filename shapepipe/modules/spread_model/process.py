"""spread_model on a tile: catalogue stamps + multi-epoch PSF store + weight stamps.

PSF at a tile object: the tile is an inverse-variance weighted mean of dithered exposures
resampled onto the same pixel scale, so the PSF of the stack at an object is the weighted
mean of the epochs' PSFs with the exposures' stacking weights there. The PSF store holds each
epoch's PSF stamp (unit sum, exposure pixel grid, centred on the central pixel) but not the
stacking weights, so the epochs are averaged with equal weights: exact when the exposures
have the same depth (as in the simulated survey, same exposure time, gain and sky), and a
second-order error otherwise (a mixture of similar PSFs). Resampling onto the tile grid
also convolves each epoch with the interpolation kernel: for a tile stacked with bilinear
interpolation on an aligned grid of the same scale (the simulated tiles) that kernel is a
centred two-tap filter of variance u (1 - u) per axis, u the fractional offset between the
CCD and tile grids at the object; it is applied per epoch when the CCD WCSs are given. It
matters: its variance (1/6 pixel^2 on average) equals that of the exponential of scale
FWHM/16 defining the galaxy model, so without it stars come out with SPREAD_MODEL ~ +0.002 to
+0.01 (measured on the default simulated survey). The FWHM that sets the galaxy
model's scale length is the mean over epochs of 2.3548 x the HSM sigma stored with each PSF
(``SHAPES``), or, without it, the FWHM of a Gaussian with the same peak as the mean PSF.

Stamp alignment: SExtractor's VIGNET is centred on the pixel nearest to X_IMAGE, Y_IMAGE;
the weight stamps of vignetmaker CLASSIC on the pixel nearest to the positions recorded in
their header (VIGPOSX/VIGPOSY, default XWIN_IMAGE/YWIN_IMAGE). Weight stamps are shifted by
the (rare) whole-pixel difference, so that pixels match; the models are centred on
XWIN_IMAGE, YWIN_IMAGE.
"""

import warnings

import numpy as np
from astropy.io import fits

from shapepipe.modules.spread_model.model import (
    FLAG_NO_PSF,
    models,
    owned_pixels,
    regularised_moments,
    spread_model,
)
from shapepipe.utils.atomic import write_fits
from shapepipe.utils.pixels import fits_to_numpy, stamp_corner
from shapepipe.utils.stamp_store import get_many

#: Objects processed together (bounds memory: a few arrays of CHUNK x S x S).
CHUNK = 1000
#: Pixels at or below this value are SExtractor's masked pixels (-1e30).
_MASKED = -1e29
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
#: Neighbours considered per object (nearest first, within the stamp).
N_NEIGHBOURS = 12


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
    """[(key, stamp, HSM sigma or NaN)] of the usable epochs of one store entry."""
    out = []
    if not isinstance(entry, dict):
        return out
    for key, value in entry.items():
        vig = np.asarray(value["VIGNET"], dtype=float)
        if vig.ndim != 2 or vig.shape[0] != vig.shape[1] or not np.all(np.isfinite(vig)):
            continue
        if not vig.sum() > 0:
            continue
        shapes = value.get("SHAPES") or {}
        sig = shapes.get("SIGMA_PSF_HSM")
        ok = sig is not None and int(shapes.get("FLAG_PSF_HSM", 0)) == 0
        sig = float(sig) if ok else np.nan
        out.append((key, vig / vig.sum(), sig if np.isfinite(sig) and sig > 0 else np.nan))
    return out


def read_epoch_psfs(store, ids, size, log=None):
    """Every usable epoch PSF of the objects ``ids``, flattened.

    Returns
    -------
    owner : numpy.ndarray of int
        Index in ``ids`` of each epoch (non-decreasing).
    keys : list of str
        ``<exp>-<ccd>`` of each epoch.
    stamps : numpy.ndarray
        ``(m, size, size)`` unit-sum stamps centred on pixel ``size // 2``.
    sigmas : numpy.ndarray
        HSM sigma (pixels) of each epoch, NaN when unknown.
    """
    owner, keys, stamps, sigmas = [], [], [], []
    for k, obj_id in enumerate(ids):
        try:
            records = _epoch_psfs(store.get(str(int(obj_id)), "empty"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # A corrupt entry costs this object its PSF, not the job.
            if log:
                log.warning("object %s: unreadable PSF store entry (%s: %s)", obj_id,
                            type(exc).__name__, exc)
            continue
        for key, stamp, sig in records:
            owner.append(k)
            keys.append(key)
            stamps.append(_fit_size(stamp, size))
            sigmas.append(sig)
    stamps = np.array(stamps, dtype=float).reshape(-1, size, size)
    return np.array(owner, dtype=np.int64), keys, stamps, np.array(sigmas, dtype=float)


def bilinear_transfer(u, freqs):
    """Transfer function of bilinear resampling at fractional grid offset ``u``.

    Resampling an image onto a grid shifted by ``D`` pixels (same scale, aligned axes) with
    linear interpolation gives, around an object at tile position ``x_t``,
    ``T(t) = (1 - u) psi(t - u) + u psi(t + 1 - u)`` with ``u = frac(D)`` and ``psi`` the
    exposure's pixel-integrated PSF: a centred two-tap kernel of variance ``u (1 - u)``.

    Parameters
    ----------
    u : numpy.ndarray
        ``(m,)`` offsets in [0, 1).
    freqs : numpy.ndarray
        Frequencies (cycles/pixel), broadcastable against ``u[:, None]``.
    """
    u = np.asarray(u, dtype=float)[:, None]
    return (1.0 - u) * np.exp(-2j * np.pi * freqs * u) + u * np.exp(2j * np.pi * freqs * (1 - u))


def combine_epoch_psfs(store, ids, size, log=None, grid_offsets=None):
    """PSF of each tile object: equal-weight mean of its epochs' PSF stamps.

    Parameters
    ----------
    store : mapping
        Multi-epoch PSF store (``galaxy_psf-<tile>.sqlite`` opened with ``open_store``).
    ids : sequence of int
        Object ids.
    size : int
        Side of the returned stamps.
    grid_offsets : callable, optional
        ``f(owner, keys) -> (ux, uy)``: fractional offsets in [0, 1) between each epoch's
        CCD pixel grid and the tile grid at the object. When given, each epoch PSF is
        convolved with the bilinear resampling kernel of those offsets
        (:func:`bilinear_transfer`) before averaging: the PSF of a tile stacked with bilinear
        resampling.

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
    owner, keys, stamps, sigmas = read_epoch_psfs(store, ids, size, log)
    psf = np.zeros((n, size, size))
    fwhm = np.full(n, np.nan)
    n_epoch = np.bincount(owner, minlength=n).astype(np.int32)
    if len(owner) == 0:
        return psf, fwhm, n_epoch
    if grid_offsets is not None:
        ux, uy = grid_offsets(owner, keys)
        ky = np.fft.fftfreq(size)[None, :]
        kx = np.fft.rfftfreq(size)[None, :]
        f = np.fft.rfft2(stamps)
        f *= bilinear_transfer(uy, ky)[:, :, None] * bilinear_transfer(ux, kx)[:, None, :]
        stamps = np.fft.irfft2(f, s=(size, size))
    # owner is sorted: sum each object's epochs with one reduceat.
    has = np.flatnonzero(n_epoch)
    starts = np.searchsorted(owner, has)
    psf[has] = np.add.reduceat(stamps, starts, axis=0) / n_epoch[has, None, None]
    psf[has] /= psf[has].sum(axis=(1, 2), keepdims=True)
    good = np.isfinite(sigmas)
    sig_sum = np.bincount(owner[good], weights=sigmas[good], minlength=n)
    sig_n = np.bincount(owner[good], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        fwhm = np.where(sig_n > 0, _FWHM_PER_SIGMA * sig_sum / sig_n, np.nan)
    # Without HSM sizes: the FWHM of a Gaussian with the same peak.
    fallback = (n_epoch > 0) & ~np.isfinite(fwhm)
    if fallback.any():
        peak = psf[fallback].max(axis=(1, 2))
        fwhm[fallback] = _FWHM_PER_SIGMA * np.sqrt(1.0 / (2.0 * np.pi * peak))
    return psf, fwhm, n_epoch


def make_grid_offsets(exp_wcs, ra, dec, x_tile, y_tile, log=None):
    """A ``grid_offsets`` function for :func:`combine_epoch_psfs` from the CCD WCSs.

    Parameters
    ----------
    exp_wcs : dict
        ``{exp: [WCS or None per CCD]}`` (merge_headers ``read_exp_wcs``).
    ra, dec : numpy.ndarray
        World positions of the objects of the current chunk (deg).
    x_tile, y_tile : numpy.ndarray
        Their 0-based tile pixel positions.

    Returns
    -------
    callable
        ``f(owner, keys) -> (ux, uy)``; an epoch without WCS gets offset 0 (no kernel).
    """
    def offsets(owner, keys):
        keys = np.asarray(keys)
        ux = np.zeros(len(keys))
        uy = np.zeros(len(keys))
        for key in np.unique(keys):
            sel = np.flatnonzero(keys == key)
            exp, _, ccd = str(key).rpartition("-")
            wcs_list = exp_wcs.get(exp)
            if not wcs_list or not ccd.isdigit() or int(ccd) >= len(wcs_list) \
                    or wcs_list[int(ccd)] is None:
                if log:
                    log.warning("%s: no CCD WCS, its PSF is used without the resampling "
                                "kernel", key)
                continue
            o = owner[sel]
            xe, ye = wcs_list[int(ccd)].all_world2pix(ra[o], dec[o], 0)
            ux[sel] = np.mod(np.asarray(xe) - x_tile[o], 1.0)
            uy[sel] = np.mod(np.asarray(ye) - y_tile[o], 1.0)
        return ux, uy

    return offsets


def _bad_entry(log):
    def report(key, exc):
        if log:
            log.warning("object %s: unreadable PSF store entry (%s: %s)", key,
                        type(exc).__name__, exc)
    return report


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


def neighbour_table(data, names, x, y):
    """Positions, regularised second moments and fluxes of every catalogue object.

    The moments are X2_IMAGE, Y2_IMAGE, XY_IMAGE and the flux FLUX_AUTO; without these
    columns every object gets the same circular profile (the pixels then go to the nearest
    object, a Voronoi partition).
    """
    n = len(x)
    if all(c in names for c in ("X2_IMAGE", "Y2_IMAGE", "XY_IMAGE", "FLUX_AUTO")):
        cov = regularised_moments(*(np.asarray(data[c], dtype=float)
                                    for c in ("X2_IMAGE", "Y2_IMAGE", "XY_IMAGE")))
        flux = np.asarray(data["FLUX_AUTO"], dtype=float)
    else:
        cov = regularised_moments(np.ones(n), np.ones(n), np.zeros(n))
        flux = np.ones(n)
    return {"x": x, "y": y, "cov": cov, "flux": flux}


def neighbour_ownership(table, rows, x0, y0, dx, dy, size, k=N_NEIGHBOURS,
                        max_fraction=1.0):
    """Stamp pixels each object of ``rows`` owns against its catalogue neighbours.

    Parameters
    ----------
    table : dict
        :func:`neighbour_table` of the whole catalogue (with a ``tree`` entry added here).
    rows : numpy.ndarray
        Catalogue rows of the objects.
    x0, y0 : numpy.ndarray
        Their stamps' corners (0-based tile pixels).
    dx, dy : numpy.ndarray
        Their positions in the stamps.

    Returns
    -------
    numpy.ndarray of bool
        ``(len(rows), size, size)``, see :func:`~shapepipe.modules.spread_model.model.owned_pixels`.
    """
    from scipy.spatial import cKDTree

    if "tree" not in table:
        # an object without a position is nobody's neighbour
        pos = np.column_stack([table["x"], table["y"]])
        table["tree"] = cKDTree(np.where(np.isfinite(pos), pos, -1e12))
    n_all = len(table["x"])
    k = min(k + 1, n_all)
    # Neighbours whose centre lies within the stamp's circumscribed circle.
    own = np.column_stack([table["x"][rows], table["y"][rows]])
    dist, idx = table["tree"].query(np.where(np.isfinite(own), own, 1e12), k=k,
                                    distance_upper_bound=size / np.sqrt(2.0))
    dist, idx = dist.reshape(len(rows), k), idx.reshape(len(rows), k)
    valid = np.isfinite(dist) & (idx != np.asarray(rows)[:, None])
    safe = np.where(valid, idx, 0)

    def nb(a):
        return np.where(valid, np.asarray(a)[safe], np.nan)

    own_cov = tuple(c[rows] for c in table["cov"])
    return owned_pixels(size, dx, dy, own_cov, table["flux"][rows],
                        nb(table["x"]) - np.asarray(x0, dtype=float)[:, None],
                        nb(table["y"]) - np.asarray(y0, dtype=float)[:, None],
                        tuple(nb(c) for c in table["cov"]), nb(table["flux"]),
                        max_fraction=max_fraction)


def depth_plateau(weights, inside, tolerance):
    """Pixels whose weight is within ``tolerance`` (relative) of the aperture's median.

    The tile is a weighted mean of resampled exposures: a tile pixel next to a pixel flagged
    in one exposure (saturation, cosmic ray, bad column) or at an exposure's edge keeps only
    part of that exposure's interpolation kernel, so its value is not the stack of the PSF
    model there, and its weight is lower than its neighbours'. Such pixels, and pixels
    covered by another set of exposures than most of the object's, are excluded: on them the
    PSF (the mean of the object's epochs, resampled) does not describe the data.

    Parameters
    ----------
    weights : numpy.ndarray
        ``(n, S, S)`` weights (0 = unusable).
    inside : numpy.ndarray of bool
        ``(n, S, S)`` pixels of the object's aperture.
    tolerance : float
        Relative tolerance; <= 0 keeps every pixel.

    Returns
    -------
    numpy.ndarray of bool
        ``(n, S, S)``.
    """
    if tolerance <= 0:
        return np.ones(weights.shape, dtype=bool)
    use = inside & (weights > 0)
    with warnings.catch_warnings():
        # objects without a usable pixel: NaN reference, nothing kept (flagged later)
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmedian(np.where(use, weights, np.nan).reshape(len(weights), -1), axis=1)
    ref = ref[:, None, None]
    with np.errstate(invalid="ignore"):
        return np.abs(weights - ref) <= tolerance * ref


def process(sexcat_path, psf_store_path, weight_vignet_path, output_path, mode="new",
            pixel_scale=None, exp_wcs=None, aperture_fwhm=1.6, mask_neighbours=True,
            neighbour_fraction=0.1, weight_tolerance=0.01, log=None):
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
    exp_wcs : dict, optional
        ``{exp: [CCD WCS]}``: the tile was stacked with bilinear resampling; each epoch's PSF
        is convolved with its resampling kernel (offsets from these WCSs and
        XWIN_WORLD/YWIN_WORLD vs XWIN_IMAGE/YWIN_IMAGE). None: PSFs used as they are.
    aperture_fwhm : float
        Only pixels within this many PSF FWHMs of the object enter the sums (0: the whole
        stamp). SExtractor fits its models on the object's own pixels; on a 51x51 stamp the
        neighbours' light otherwise biases the ratios (on the default simulated survey the
        fraction of S/N > 50 stars classified as stars goes from 80% with the whole stamp to
        95% within 1.6 FWHM).
    mask_neighbours : bool
        Exclude the pixels where a catalogue neighbour's light is sizeable
        (:func:`neighbour_ownership`: SExtractor's deblending allocation, elliptical Gaussians
        from X2/Y2/XY_IMAGE and FLUX_AUTO).
    neighbour_fraction : float
        With ``mask_neighbours``, a pixel is kept where no neighbour's model exceeds this
        fraction of the object's (1: SExtractor's allocation, each pixel to the brightest
        model; 0.1: a neighbour adds at most ~10% to a kept pixel).
    weight_tolerance : float
        Exclude aperture pixels whose weight differs from the aperture's median weight by
        more than this fraction (:func:`depth_plateau`); <= 0: keep them.

    Returns
    -------
    dict
        Counts: ``objects``, ``no_psf``, ``flagged``.
    """
    mode = mode.lower()
    if mode not in ("new", "add"):
        raise ValueError(f"OUTPUT_MODE = {mode!r}: expected new or add")
    if not neighbour_fraction > 0:
        raise ValueError(f"NEIGHBOUR_FRACTION = {neighbour_fraction!r}: expected > 0")
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
        if exp_wcs is not None:
            for col in ("XWIN_WORLD", "YWIN_WORLD"):
                if col not in names:
                    raise KeyError(f"{sexcat_path}: column {col} not found (needed for the "
                                   "resampling kernel)")
            ra = np.asarray(data["XWIN_WORLD"], dtype=float)
            dec = np.asarray(data["YWIN_WORLD"], dtype=float)
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

            if mask_neighbours:
                nb_table = neighbour_table(data, names, xwin, ywin)
            sm = np.full(len(ids), np.nan)
            err = np.full(len(ids), np.nan)
            flags = np.zeros(len(ids), dtype=np.int16)
            for lo in range(0, len(ids), CHUNK):
                hi = min(lo + CHUNK, len(ids))
                sl = slice(lo, hi)
                offsets = None
                if exp_wcs is not None:
                    offsets = make_grid_offsets(exp_wcs, ra[sl], dec[sl], xwin[sl],
                                                ywin[sl], log)
                # one SQL query per chunk; a corrupt entry costs its object the PSF
                store = get_many(psf_store_path, [str(i) for i in ids[sl]],
                                 on_error=_bad_entry(log))
                psf, fwhm, n_ep = combine_epoch_psfs(store, ids[sl], size, log, offsets)
                pix = np.asarray(data["VIGNET"][sl], dtype=float)
                wgt = _shift_stamps(np.asarray(whdu.data["VIGNET"][sl], dtype=float),
                                    vx0[sl] - wx0[sl], vy0[sl] - wy0[sl])
                bad = (pix <= _MASKED) | ~np.isfinite(pix) | ~np.isfinite(wgt)
                wgt = np.where(bad, 0.0, np.maximum(wgt, 0.0))
                pix = np.where(bad, 0.0, pix)
                has_psf = n_ep > 0
                fw = np.where(has_psf, fwhm, 1.0)
                dx, dy = xwin[sl] - vx0[sl], ywin[sl] - vy0[sl]
                if aperture_fwhm > 0:
                    grid = np.arange(size, dtype=float)
                    r2 = ((grid[None, None, :] - dx[:, None, None]) ** 2
                          + (grid[None, :, None] - dy[:, None, None]) ** 2)
                    inside = r2 <= (aperture_fwhm * fw[:, None, None]) ** 2
                else:
                    inside = np.ones(wgt.shape, dtype=bool)
                keep = inside & depth_plateau(wgt, inside, weight_tolerance)
                if mask_neighbours:
                    keep &= neighbour_ownership(nb_table, np.arange(lo, hi), vx0[sl], vy0[sl],
                                                dx, dy, size,
                                                max_fraction=neighbour_fraction)
                wgt = np.where(keep, wgt, 0.0)
                phi, gal = models(psf, dx, dy, fw, size)
                s, e, f = spread_model(pix, wgt, phi, gal)
                f = f | np.where(has_psf, 0, FLAG_NO_PSF).astype(np.int16)
                s[f != 0] = np.nan
                e[f != 0] = np.nan
                sm[sl], err[sl], flags[sl] = s, e, f
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
