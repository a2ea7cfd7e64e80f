"""Metadetection of a stacked tile, cell by cell: ``metadetect_cat-<tile>.fits``.

The tile is cut into square cells (CELL_SIZE pixels) read with a margin (CELL_MARGIN
pixels on each side, so that objects near a cell edge are whole and the sheared transforms'
periodic copies stay outside the kept area). Each cell gets one PSF, the tile PSF at the
catalogue object nearest its centre among those seen by the most epochs: the equal-weight
mean of the epochs' PSF stamps with each epoch's bilinear resampling kernel (as
spread_model_runner; :func:`shapepipe.modules.spread_model.process.combine_epoch_psfs`).
A detection is kept by the cell whose inner square holds its position mapped back to the
unsheared frame, so every object belongs to exactly one cell in every metacal type.

The noise correction is drawn from a white field seeded by SEED and the cell index only (the
two halves of a paired simulation, on the same tile grid, get the same one), with the
stack's noise texture, the same realisation under an object in every step
(:meth:`~shapepipe.modules.ngmix.metacal.MetacalImager.make_corrected`).
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from shapepipe.modules.metadetect.cell import DetectConfig, metadetect_cell
from shapepipe.modules.ngmix.metacal import METACAL_TYPES
from shapepipe.modules.ngmix.observation import Jacobian
from shapepipe.modules.spread_model.process import combine_epoch_psfs, make_grid_offsets
from shapepipe.utils.atomic import write_fits
from shapepipe.utils.rng import make_rng
from shapepipe.utils.stamp_store import open_store

#: Catalogue objects tried per cell for its PSF (nearest to the centre first).
PSF_CANDIDATES = 8
#: MDET_FLAGS bit: within the mask radius of a reference-catalogue star (:func:`star_mask`).
FLAG_BRIGHT_STAR = 16
COLUMNS = ["MDET_STEP", "NUMBER", "CELL", "X_IMAGE", "Y_IMAGE", "RA", "DEC", "MDET_FLAGS",
           "MASK_FLAGS", "MDET_S2N", "MDET_FLUX", "MDET_FLUX_ERR", "MDET_T", "MDET_T_RATIO",
           "MDET_T_RATIO_ERR", "MDET_G1", "MDET_G2", "PSF_G1", "PSF_G2", "PSF_T"]


def cell_grid(nx, ny, cell_size):
    """Inner boxes ``(x0, x1, y0, y1)`` (0-based, end exclusive) tiling an ``nx`` x ``ny`` image."""
    boxes = []
    for y0 in range(0, ny, cell_size):
        for x0 in range(0, nx, cell_size):
            boxes.append((x0, min(x0 + cell_size, nx), y0, min(y0 + cell_size, ny)))
    return boxes


def read_section(hdu, x0, x1, y0, y1, fill=0.0):
    """``hdu.data[y0:y1, x0:x1]`` read through ``section``, padded with ``fill`` off the image."""
    ny, nx = hdu.shape
    out = np.full((y1 - y0, x1 - x0), fill, dtype=float)
    sx0, sx1 = max(x0, 0), min(x1, nx)
    sy0, sy1 = max(y0, 0), min(y1, ny)
    if sx0 < sx1 and sy0 < sy1:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = hdu.section[sy0:sy1, sx0:sx1]
    return out


def _image_hdu(hdul, path):
    for hdu in hdul:
        if hdu.is_image and hdu.data is not None and hdu.header.get("NAXIS", 0) == 2:
            return hdu
    raise ValueError(f"{path}: no 2-d image HDU")


def _catalogue(path):
    with fits.open(path, memmap=True) as hdul:
        names = [h.name for h in hdul]
        hdu = hdul["LDAC_OBJECTS"] if "LDAC_OBJECTS" in names else next(
            h for h in hdul if isinstance(h, fits.BinTableHDU))
        cols = hdu.data.columns.names
        need = ("NUMBER", "XWIN_IMAGE", "YWIN_IMAGE", "XWIN_WORLD", "YWIN_WORLD")
        missing = [c for c in need if c not in cols]
        if missing:
            raise KeyError(f"{path}: column(s) {', '.join(missing)} not found (metadetect "
                           f"needs {', '.join(need)} to place each cell's PSF)")
        return {c: np.asarray(hdu.data[c]).astype(np.int64 if c == "NUMBER" else float)
                for c in need}


def star_mask(ra, dec, stars, mag_lim=18.0, radius_at_lim=2.5, radius_max=30.0):
    """Detections within the mask radius of a bright reference star (as DES masks Gaia stars).

    The wings of stars a few magnitudes above the PSF-star range break into fragments on
    metadetection's 0.8-sigma, 1e-5-contrast detection, and the fragments (S/N > 10 from the
    star's light under the weight) change from one sheared image to the next: on a simulated
    tile 19% of the selected detections were such fragments, 2-5" from stars of r = 15-18.
    Stars do not shear, so the mask stays at the stars' positions in every step.

    Parameters
    ----------
    ra, dec : numpy.ndarray
        Detections (deg).
    stars : (ra, dec, mag) of numpy.ndarray, or None
    mag_lim : float
        Stars fainter than this are not masked.
    radius_at_lim : float
        Mask radius (arcsec) of a star at ``mag_lim``; it grows as ``10**(0.2 (mag_lim - mag))``
        (the radius at which a Moffat's wings reach a fixed surface brightness) up to
        ``radius_max``.

    Returns
    -------
    numpy.ndarray of bool
    """
    from scipy.spatial import cKDTree

    out = np.zeros(len(ra), dtype=bool)
    if stars is None or len(ra) == 0:
        return out
    sra, sdec, smag = (np.asarray(v, dtype=float) for v in stars)
    bright = smag < mag_lim
    if not bright.any():
        return out
    sra, sdec, smag = sra[bright], sdec[bright], smag[bright]
    radius = np.minimum(radius_at_lim * 10.0 ** (0.2 * (mag_lim - smag)), radius_max)
    cosd = np.cos(np.radians(np.median(dec)))
    sxy = np.column_stack([sra * cosd, sdec]) * 3600.0
    dxy = np.column_stack([np.asarray(ra) * cosd, np.asarray(dec)]) * 3600.0
    for hits in cKDTree(dxy).query_ball_point(sxy, radius):
        out[hits] = True
    return out


def cell_psf(store, cat, box, psf_size, exp_wcs=None, log=None):
    """The PSF of one cell and its epochs' grid offsets, from the object nearest its centre.

    Returns
    -------
    psf : numpy.ndarray or None
    offsets : list of (ux, uy)
        One per epoch (empty without ``exp_wcs``).
    """
    x0, x1, y0, y1 = box
    xc, yc = 0.5 * (x0 + x1 - 1), 0.5 * (y0 + y1 - 1)
    # Catalogue positions are 1-based.
    d2 = (cat["XWIN_IMAGE"] - 1.0 - xc) ** 2 + (cat["YWIN_IMAGE"] - 1.0 - yc) ** 2
    order = np.argsort(d2)[:PSF_CANDIDATES]
    best, best_n = None, 0
    for i in order:
        entry = store.get(str(int(cat["NUMBER"][i])), None)
        n = len(entry) if isinstance(entry, dict) else 0
        if n > best_n:
            best, best_n = i, n
    if best is None:
        return None, []
    sel = np.array([best])
    captured = {}
    grid = None
    if exp_wcs is not None:
        inner = make_grid_offsets(exp_wcs, cat["XWIN_WORLD"][sel], cat["YWIN_WORLD"][sel],
                                  cat["XWIN_IMAGE"][sel] - 1.0, cat["YWIN_IMAGE"][sel] - 1.0,
                                  log=log)

        def grid(owner, keys):
            ux, uy = inner(owner, keys)
            captured["offsets"] = list(zip(ux.tolist(), uy.tolist()))
            return ux, uy

    psf, _, n_epoch = combine_epoch_psfs(store, cat["NUMBER"][sel], psf_size, log=log,
                                         grid_offsets=grid)
    if n_epoch[0] == 0:
        return None, []
    return psf[0], captured.get("offsets", [])


def process_tile(image_path, weight_path, flag_path, sexcat_path, psf_store_path, output_path,
                 exp_wcs=None, seed=1, cell_size=200, cell_margin=50, step=0.05,
                 weight_fwhm=1.2, psf_size=41, detect=None, stars=None, star_mask_mag=18.0,
                 star_mask_radius=2.5, star_mask_radius_max=30.0, n_threads=1, log=None):
    """Run metadetection on a tile and write its catalogue.

    Parameters
    ----------
    image_path, weight_path : str
        Tile image (background subtracted) and inverse-variance weight.
    flag_path : str or None
        Pipeline flag image of the tile (MASK_FLAGS is its value at each detection).
    sexcat_path : str
        Tile catalogue (NUMBER, XWIN_IMAGE/YWIN_IMAGE, XWIN_WORLD/YWIN_WORLD), whose objects
        carry the PSFs.
    psf_store_path : str
        Multi-epoch PSF store of those objects (psfex_interp_runner MULTI-EPOCH).
    output_path : str
    exp_wcs : dict, optional
        ``{exp: [CCD WCS]}``: the tile was stacked with bilinear resampling (the PSF and the
        noise texture then include its kernel).
    seed : int
    cell_size, cell_margin : int
        Pixels.
    step : float
    weight_fwhm : float
        Arcsec.
    psf_size : int
        Odd side of the PSF stamps.
    detect : DetectConfig, optional
    stars : (ra, dec, mag), optional
        Reference star catalogue: detections within the mask radius of a star brighter than
        ``star_mask_mag`` get MDET_FLAGS bit :data:`FLAG_BRIGHT_STAR` (:func:`star_mask`).
    star_mask_mag, star_mask_radius, star_mask_radius_max : float
        Magnitude limit, radius (arcsec) at the limit, largest radius.
    n_threads : int
        Cells measured at once (threads: the transforms and sep release the GIL; the
        output does not depend on it).
    log : logging.Logger, optional

    Returns
    -------
    dict
        Counts: ``cells``, ``cells_without_psf``, ``near_bright_star`` and the rows of each
        step.
    """
    if cell_size < 16 or cell_margin < 0:
        raise ValueError(f"CELL_SIZE = {cell_size}, CELL_MARGIN = {cell_margin}: expected a "
                         "cell of at least 16 pixels and a margin >= 0")
    if psf_size % 2 == 0:
        raise ValueError(f"PSF_SIZE = {psf_size}: expected an odd number of pixels")
    detect = detect or DetectConfig()
    cat = _catalogue(sexcat_path)
    counts = {"cells": 0, "cells_without_psf": 0}
    rows = {t: [] for t in METACAL_TYPES}
    with fits.open(image_path, memmap=True) as ihdul, \
            fits.open(weight_path, memmap=True) as whdul:
        ihdu = _image_hdu(ihdul, image_path)
        whdu = _image_hdu(whdul, weight_path)
        if ihdu.shape != whdu.shape:
            raise ValueError(f"{weight_path}: shape {whdu.shape} differs from the image's "
                             f"{ihdu.shape} ({image_path})")
        wcs = WCS(ihdu.header).celestial
        ny, nx = ihdu.shape
        fhdul = fits.open(flag_path, memmap=True) if flag_path else None
        fhdu = _image_hdu(fhdul, flag_path) if fhdul else None
        store = open_store(psf_store_path, flag="r")
        try:
            def measure(prep):
                return metadetect_cell(prep["image"], prep["weight"], prep["psf"],
                                       prep["jacobian"], prep["white"], step=step,
                                       weight_fwhm=weight_fwhm, detect=detect,
                                       offsets=prep["offsets"])

            boxes = list(enumerate(cell_grid(nx, ny, cell_size)))
            chunk = max(1, 4 * n_threads)
            pool = ThreadPoolExecutor(n_threads) if n_threads > 1 else None
            try:
                for start in range(0, len(boxes), chunk):
                    preps = [_prepare_cell(k, box, ihdu, whdu, wcs, store, cat, exp_wcs, seed,
                                           cell_margin, psf_size, log)
                             for k, box in boxes[start:start + chunk]]
                    counts["cells"] += len(preps)
                    todo = [p for p in preps if p is not None]
                    counts["cells_without_psf"] += len(preps) - len(todo)

                    done = pool.map(measure, todo) if pool else map(measure, todo)
                    for prep, (results, psf_info) in zip(todo, done):
                        cell_rows = _finish_cell(prep, results, psf_info, fhdu, log)
                        if cell_rows is None:
                            counts["cells_without_psf"] += 1
                            continue
                        for t in METACAL_TYPES:
                            rows[t].append(cell_rows[t])
            finally:
                if pool is not None:
                    pool.shutdown()
        finally:
            store.close()
            if fhdul is not None:
                fhdul.close()
    table = _table(rows, wcs)
    near = star_mask(table["RA"], table["DEC"], stars, star_mask_mag, star_mask_radius,
                     star_mask_radius_max)
    table["MDET_FLAGS"][near] |= FLAG_BRIGHT_STAR
    counts["near_bright_star"] = int(np.sum(near & (table["MDET_STEP"] == "noshear")))
    for t in METACAL_TYPES:
        counts[t] = int(np.sum(table["MDET_STEP"] == t))
    hdu = fits.BinTableHDU(table, name="METADETECT")
    hdu.header["MDETSTEP"] = (float(step), "metacal shear step")
    hdu.header["MDETWFWH"] = (float(weight_fwhm), "[arcsec] FWHM of the moments weight")
    hdu.header["MDETCELL"] = (int(cell_size), "[pix] cell size")
    hdu.header["MDETMARG"] = (int(cell_margin), "[pix] cell margin")
    hdu.header["MDETSEED"] = (int(seed), "seed of the noise correction")
    if stars is not None:
        hdu.header["MDETSMAG"] = (float(star_mask_mag), "stars brighter are masked")
        hdu.header["MDETSRAD"] = (float(star_mask_radius), "[arcsec] mask radius at MDETSMAG")
    write_fits(fits.HDUList([fits.PrimaryHDU(), hdu]), output_path)
    return counts


def _prepare_cell(k, box, ihdu, whdu, wcs, store, cat, exp_wcs, seed, margin, psf_size, log):
    """What cell ``k`` needs (image, weight, PSF, Jacobian, white noise); None without PSF.

    Reads and PSF lookups stay in the calling thread (FITS sections and the sqlite store);
    only :func:`metadetect_cell` runs in the worker threads.
    """
    x0, x1, y0, y1 = box
    size = max(x1 - x0, y1 - y0) + 2 * margin
    ox, oy = x0 - margin, y0 - margin
    psf, offsets = cell_psf(store, cat, box, psf_size, exp_wcs, log)
    if psf is None:
        if log:
            log.warning("cell %d (x %d-%d, y %d-%d): no catalogue object with a PSF near it; "
                        "skipped", k, x0, x1, y0, y1)
        return None
    image = read_section(ihdu, ox, ox + size, oy, oy + size)
    weight = read_section(whdu, ox, ox + size, oy, oy + size)
    weight[~np.isfinite(weight) | ~np.isfinite(image)] = 0.0
    cx = 0.5 * (x0 + x1 - 1) - ox
    cy = 0.5 * (y0 + y1 - 1) - oy
    jac = Jacobian.from_wcs(wcs, cx + ox, cy + oy)
    rng = make_rng(seed, "metadetect", k)
    return {"k": k, "box": box, "ox": ox, "oy": oy, "image": image, "weight": weight,
            "psf": psf, "offsets": offsets, "jacobian": Jacobian(cx, cy, jac.matrix),
            "white": rng.standard_normal(image.shape)}


def _finish_cell(prep, results, psf_info, fhdu, log):
    """Rows (dict of arrays per type) of the detections kept by the cell; None if it failed."""
    k, (x0, x1, y0, y1), ox, oy = prep["k"], prep["box"], prep["ox"], prep["oy"]
    if results is None:
        if log:
            log.warning("cell %d: the PSF fit failed; skipped", k)
        return None
    out = {}
    for t, r in results.items():
        # Tile 0-based positions in the unsheared frame; keep the cell's own.
        tx = r["x"] + ox
        ty = r["y"] + oy
        keep = (tx >= x0 - 0.5) & (tx < x1 - 0.5) & (ty >= y0 - 0.5) & (ty < y1 - 0.5)
        sel = {key: np.asarray(v)[keep] for key, v in r.items()}
        n = int(keep.sum())
        mask_flags = np.zeros(n, dtype=np.int32)
        if fhdu is not None and n:
            fy, fx = fhdu.shape
            ix = np.clip(np.rint(tx[keep]).astype(int), 0, fx - 1)
            iy = np.clip(np.rint(ty[keep]).astype(int), 0, fy - 1)
            flag_box = read_section(fhdu, ix.min(), ix.max() + 1, iy.min(), iy.max() + 1)
            mask_flags = flag_box[iy - iy.min(), ix - ix.min()].astype(np.int32)
        out[t] = {"CELL": np.full(n, k, dtype=np.int32), "X_IMAGE": tx[keep] + 1.0,
                  "Y_IMAGE": ty[keep] + 1.0, "MDET_FLAGS": sel["flags"].astype(np.int32),
                  "MASK_FLAGS": mask_flags, "MDET_S2N": sel["s2n"], "MDET_FLUX": sel["flux"],
                  "MDET_FLUX_ERR": sel["flux_err"], "MDET_T": sel["T"],
                  "MDET_T_RATIO": sel["T_ratio"], "MDET_T_RATIO_ERR": sel["T_ratio_err"],
                  "MDET_G1": sel["e1"], "MDET_G2": sel["e2"],
                  "PSF_G1": np.full(n, psf_info["g1"]), "PSF_G2": np.full(n, psf_info["g2"]),
                  "PSF_T": np.full(n, psf_info["T"])}
    return out


def _table(rows, wcs):
    parts = []
    for t in METACAL_TYPES:
        if not rows[t]:
            continue
        cols = {key: np.concatenate([r[key] for r in rows[t]]) for key in rows[t][0]}
        cols["MDET_STEP"] = np.full(len(cols["CELL"]), t)
        parts.append(cols)
    table = Table()
    if not parts:
        for name in COLUMNS:
            table[name] = np.zeros(0, dtype="U7" if name == "MDET_STEP" else float)
        return table
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    n = len(merged["CELL"])
    ra, dec = wcs.all_pix2world(merged["X_IMAGE"], merged["Y_IMAGE"], 1) if n else ([], [])
    merged["RA"] = np.asarray(ra, dtype=float)
    merged["DEC"] = np.asarray(dec, dtype=float)
    merged["NUMBER"] = np.arange(1, n + 1, dtype=np.int64)
    for name in COLUMNS:
        table[name] = merged[name]
    return table
