"""Driver: render a whole simulated survey into a directory tree (see FORMATS.md)."""

import dataclasses
import json
import multiprocessing
import os
import shutil

import numpy as np
from astropy.io import fits

from shapepipe import __version__
from shapepipe.sim import geometry as geo
from shapepipe.sim.catalog import make_catalog, select
from shapepipe.sim.des import make_des
from shapepipe.sim.psf import model_rows
from shapepipe.sim.render import exposure_conditions, render_ccd, sky_model
from shapepipe.sim.tables import table_hdulist
from shapepipe.sim.tile import TileStacker
from shapepipe.utils.atomic import atomic_path, write_fits
from shapepipe.utils.lensing import shear_groups, shear_positions
from shapepipe.utils.rng import make_rng

SUBDIRS = ("exposures", "tiles", "star_cat", "truth")

_CATALOG = None  # set in the parent before forking workers (avoids pickling it per task)
_POSITIONS = None  # (RA, Dec) of every object in each field, likewise
SCENE_SHEARS = ("field", "groups", "none")
#: Linking length of scene_shear="groups". E2 (shapes-only shear) found blends responding
#: less than metacal's R by 31% / 11% / 2% for true neighbours within 1" / 1-2" / 2-3":
#: 4" covers them. Longer links percolate at the simulated density (~17 galaxies per
#: arcmin^2: 8" links make groups of 170 spread over ~1', moving members by ~1").
GROUP_LINK_ARCSEC = 4.0


class SimError(Exception):
    """A user error in the simulation inputs (bad directory, bad option)."""


def _dither_seed(seed, exp_num, ccd, kind):
    # FITS quantisation dither seeds must be in 1..10000; derive them from the survey seed so
    # that files are byte-identical for a given seed.
    return int(make_rng(seed, "dither", exp_num, ccd, kind).integers(1, 10001))


def _render_task(args):
    params, seed, i_exp, ccd, shears, hsm, noise_sign = args
    return render_ccd(params, seed, i_exp, ccd, _CATALOG, shears=shears, hsm=hsm,
                      positions=_POSITIONS, noise_sign=noise_sign)


def _sexagesimal(ra, dec):
    h = ra / 15.0
    hh = int(h)
    mm = int((h - hh) * 60)
    ss = ((h - hh) * 60 - mm) * 60
    sign = "-" if dec < 0 else "+"
    d = abs(dec)
    dd = int(d)
    dm = int((d - dd) * 60)
    ds = ((d - dd) * 60 - dm) * 60
    return f"{hh:02d}:{mm:02d}:{ss:05.2f}", f"{sign}{dd:02d}:{dm:02d}:{ds:04.1f}"


def _primary_header(params, seed, i_exp, n_ccd):
    exp_num = params.exposures[i_exp]
    ra, dec = geo.pointing(params, i_exp)
    cond = exposure_conditions(seed, exp_num)
    ra_s, dec_s = _sexagesimal(ra, dec)
    h = fits.Header()
    h["EXPNUM"] = (exp_num, "exposure number")
    h["FILENAME"] = f"{exp_num}p.fits.fz"
    h["OBJECT"] = "SIM_CFIS"
    h["RA_DEG"] = (ra, "pointing RA (deg)")
    h["DEC_DEG"] = (dec, "pointing Dec (deg)")
    h["RA"] = (ra_s, "pointing RA")
    h["DEC"] = (dec_s, "pointing Dec")
    h["EXPTIME"] = (geo.EXPTIME, "exposure time (s)")
    h["FILTER"] = geo.FILTER
    h["MJD-OBS"] = (round(cond["mjd"], 8), "start of exposure (MJD)")
    h["AIRMASS"] = round(cond["airmass"], 4)
    h["NEXTEND"] = n_ccd
    h["MAGZP"] = geo.MAGZP
    h["PHOTZP"] = geo.MAGZP
    h["GAIN"] = (geo.GAIN, "e-/ADU")
    h["RDNOISE"] = (geo.RDNOISE, "read noise (e-)")
    h["SATURATE"] = (geo.SATURATE, "saturation level (ADU)")
    h["SIMSEED"] = (int(seed), "shapepipe.sim seed")
    return h


class _MEFWriter:
    """Write a multi-extension compressed FITS file one CCD at a time (bounded memory)."""

    def __init__(self, path, primary_header):
        self.path = path
        self._ctx = atomic_path(path)
        self.tmp = self._ctx.__enter__()
        fits.PrimaryHDU(header=primary_header).writeto(self.tmp)

    def append(self, data, header, compression, dither_seed=0):
        if compression is None:
            hdu = fits.ImageHDU(data, header=header)
        elif compression == "lossless":
            # GZIP streams carry a time stamp (not reproducible), and a noiseless weight map
            # makes cfitsio fall back to GZIP; so quantise with an absolute step of 1e-5 of the
            # median weight (RICE, zeros kept exactly).
            good = data[data > 0]
            step = 1e-5 * float(np.median(good)) if good.size else 1e-10
            hdu = fits.CompImageHDU(data, header=header, compression_type="RICE_1",
                                    quantize_level=-step, quantize_method=2,
                                    dither_seed=dither_seed)
        elif compression == "int":
            hdu = fits.CompImageHDU(data, header=header, compression_type="RICE_1")
        else:
            hdu = fits.CompImageHDU(data, header=header, compression_type="RICE_1",
                                    quantize_level=16.0, quantize_method=2,
                                    dither_seed=dither_seed)
        with fits.open(self.tmp, mode="append") as hdul:
            hdul.append(hdu)

    def close(self, ok=True):
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


def _check_output(path, overwrite):
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise SimError(f"{path}: exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:
            raise SimError(f"{path}: directory is not empty; pass overwrite=True (--overwrite) "
                           "to replace the dataset")
        for name in list(SUBDIRS) + ["des", "plus", "minus", "raw"]:
            sub = os.path.join(path, name)
            if os.path.isdir(sub):
                shutil.rmtree(sub)


def make_survey(output_dir, seed=1234, full=False, shear=(0.02, 0.0), paired=False, des=False,
                n_processes=1, params=None, overwrite=False, compress=True, log=None,
                psf_g_offset=None, cfis_names=False, rotated_shapes=False, scene_shear="field",
                negate_noise=False):
    """Render a simulated CFIS-like survey (and optionally DES-like tiles) into ``output_dir``.

    Parameters
    ----------
    output_dir : str
        Dataset directory (``$SP_DATA``); created if absent.
    seed : int
        Survey seed: same seed, same bytes.
    full : bool
        MegaCam-size data (40 CCDs of 2048 x 4612 per exposure, 10k x 10k tile) instead of the
        small default.
    shear : tuple of float
        Constant shear (g1, g2) applied to every galaxy.
    scene_shear : {"field", "groups", "none"}
        How the galaxies' positions are sheared (:mod:`shapepipe.utils.lensing`): about the
        tile centre, as a lens does ("field", the default); each friends-of-friends group of
        galaxies closer than 4" (GROUP_LINK_ARCSEC) about its own centre ("groups": the
        separations that matter for blending shear as in the lensed scene, but isolated
        galaxies do not move, so paired +g / -g fields keep them on the same pixel noise);
        or not at all ("none":
        shapes only, as before issue 16; blends then respond less to the shear than metacal
        measures). The truth catalogue has the sheared positions.
    paired : bool
        Write two fields, ``plus`` (+shear) and ``minus`` (-shear), with identical noise.
    des : bool
        Also write the DES-like 5-band tiles under ``des/``.
    n_processes : int
        Worker processes (one CCD per task).
    params : shapepipe.sim.geometry.SurveyParams, optional
        Custom layout (overrides ``full``), e.g. :func:`shapepipe.sim.tiny_params` for tests.
    overwrite : bool
        Replace an existing non-empty dataset.
    compress : bool
        Tile-compress the exposures (``.fits.fz``, the default) or write plain multi-extension
        ``.fits`` files (which Debian's SExtractor 2.25 can read directly; it cannot read
        tile-compressed images).
    log : callable, optional
        Called with progress messages (e.g. ``print``).
    psf_g_offset : (float, float), optional
        Mean PSF shear added over the whole focal plane of every exposure (fields that
        measure PSF leakage); recorded in ``truth/survey.json``.
    cfis_names : bool
        Also write ``raw/`` with the original CFIS names (see :func:`write_cfis_names`).
    rotated_shapes : bool
        Turn every galaxy's intrinsic shape by 90 degrees (``E1_INT, E2_INT -> -E1_INT,
        -E2_INT``). Objects, positions, sizes, fluxes, PSF and cosmic rays are those of the
        same seed without it, and with ``paired`` so is the noise array (a single field's
        Poisson draws follow its expected counts, which differ). The intrinsic shapes of a
        survey and its rotated twin cancel in a mean over both: shear-calibration runs use
        such pairs to measure c without the shape noise (``scripts/shear_bias.py``).
    negate_noise : bool
        With ``paired``: flip the sign of the noise array (used with ``rotated_shapes``, so
        that the first-order noise terms of a sky and its twin cancel too).

    Returns
    -------
    dict
        The contents of ``truth/survey.json`` (of the plus field when paired).
    """
    global _CATALOG, _POSITIONS
    log = log or (lambda msg: None)
    g1, g2 = (float(shear[0]), float(shear[1]))
    if np.hypot(g1, g2) >= 0.5:
        raise SimError(f"shear {shear}: |g| must be < 0.5")
    if params is None:
        params = geo.full_params() if full else geo.small_params()
    if psf_g_offset is not None:
        params = dataclasses.replace(params, psf_g_offset=tuple(float(g) for g in psf_g_offset))
    output_dir = os.fspath(output_dir)
    _check_output(output_dir, overwrite)

    if paired:
        fields = [("plus", (g1, g2), os.path.join(output_dir, "plus")),
                  ("minus", (-g1, -g2), os.path.join(output_dir, "minus"))]
    else:
        fields = [(None, (g1, g2), output_dir)]
    for _, _, root in fields:
        for sub in SUBDIRS:
            os.makedirs(os.path.join(root, sub), exist_ok=True)

    if scene_shear not in SCENE_SHEARS:
        raise SimError(f"scene_shear {scene_shear!r}: expected one of {', '.join(SCENE_SHEARS)}")
    if negate_noise and not paired:
        raise SimError("negate_noise needs paired fields (one field has Poisson noise)")
    cat = make_catalog(params, seed)
    if rotated_shapes:
        # A spin-2 quantity turned by 90 degrees changes sign.
        for key in ("E1_INT", "E2_INT"):
            cat[key] = -cat[key]
    log(f"catalogue: {int(cat['IS_STAR'].sum())} stars, {int((cat['IS_STAR'] == 0).sum())} "
        "galaxies")
    dx, _, _, _ = geo.ccd_layout(params)
    n_ccd = dx.size
    shears = [f[1] for f in fields]
    centre = geo.tile_center(*params.tile_number)
    positions = [scene_positions(cat, s, centre, scene_shear) for s in shears]
    sign = -1.0 if negate_noise else 1.0
    tasks = [(params, seed, i, c, shears, True, sign) for i in range(params.n_exp)
             for c in range(n_ccd)]
    stackers = [TileStacker(geo.tile_header(params)) for _ in fields]
    psf_star_parts = []

    ext = ".fits.fz" if compress else ".fits"
    kinds = {"image": "lossy", "weight": "lossless", "flag": "int"}
    if not compress:
        kinds = dict.fromkeys(kinds)
    _CATALOG = cat
    _POSITIONS = positions
    pool = None
    writers = None
    try:
        if n_processes > 1:
            ctx = multiprocessing.get_context("fork")
            pool = ctx.Pool(n_processes)
            results = pool.imap(_render_task, tasks)
        else:
            results = map(_render_task, tasks)
        for (_, _, i_exp, ccd, _, _, _), res in zip(tasks, results):
            exp_num = params.exposures[i_exp]
            if ccd == 0:
                primary = _primary_header(params, seed, i_exp, n_ccd)
                writers = [{kind: _MEFWriter(
                    os.path.join(root, "exposures", f"{kind}-{exp_num}{ext}"), primary)
                    for kind in ("image", "weight", "flag")} for _, _, root in fields]
            ccd_wcs = geo.make_wcs(res["header"])
            for k, w in enumerate(writers):
                w["image"].append(res["images"][k], res["header"], kinds["image"],
                                  _dither_seed(seed, exp_num, ccd, "image"))
                w["weight"].append(res["weight"], res["header"], kinds["weight"],
                                   _dither_seed(seed, exp_num, ccd, "weight"))
                w["flag"].append(res["flag"], res["header"], kinds["flag"])
                stackers[k].add(res["images"][k] - res["sky"], res["weight"], ccd_wcs)
            psf_star_parts.append(res["psf_stars"])
            log(f"exposure {exp_num} CCD {ccd} done")
            del res
            if ccd == n_ccd - 1:
                for w in writers:
                    for writer in w.values():
                        writer.close()
                writers = None
    except BaseException:
        for w in writers or []:
            for writer in w.values():
                writer.close(ok=False)
        raise
    finally:
        _CATALOG = None
        _POSITIONS = None
        if pool is not None:
            pool.terminate()
            pool.join()

    psf_stars = {k: np.concatenate([p[k] for p in psf_star_parts]) for k in psf_star_parts[0]}
    info = None
    for k, (name, (fg1, fg2), root) in enumerate(fields):
        _write_tile(params, stackers[k], root)
        stackers[k] = None
        field_cat = dict(cat, RA=positions[k][0], DEC=positions[k][1])
        _write_truth(params, seed, field_cat, (fg1, fg2), psf_stars, root)
        meta = {
            "seed": int(seed),
            "shear": [fg1, fg2],
            "scene_shear": scene_shear,
            "shear_centre": list(centre),
            "negate_noise": bool(negate_noise),
            "psf_g_offset": list(params.psf_g_offset),
            "rotated_shapes": bool(rotated_shapes),
            "full": bool(full),
            "compressed": bool(compress),
            "paired": name if name else False,
            "pixel_scale": geo.PIXEL_SCALE,
            "magzp": geo.MAGZP,
            "exposures": params.exposures,
            "n_ccd": int(n_ccd),
            "ccd_size": [params.ccd_nx, params.ccd_ny],
            "tile": geo.tile_name(params.tile_number),
            "tile_size": [params.tile_nx, params.tile_ny],
            "n_stars": int(cat["IS_STAR"].sum()),
            "star_density": params.star_density,
            "faint_star_density": params.faint_star_density,
            "n_galaxies": int((cat["IS_STAR"] == 0).sum()),
            "version": __version__,
        }
        with atomic_path(os.path.join(root, "truth", "survey.json")) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(meta, handle, indent=1, sort_keys=True)
                handle.write("\n")
        info = info or meta
        if cfis_names:
            write_cfis_names(params, seed, root, ext)
        log(f"wrote {root}")
    if des:
        make_des(os.path.join(output_dir, "des"), seed=seed, log=log)
    return info


def scene_positions(cat, shear, centre, mode="field"):
    """(RA, Dec) of the catalogue's objects in a field whose scene is sheared by ``shear``.

    Galaxies move about ``centre`` (``mode="field"``,
    :func:`shapepipe.utils.lensing.shear_positions`), about the centres of their groups
    (``"groups"``, :func:`~shapepipe.utils.lensing.shear_groups`), or not (``"none"``);
    stars, in front of the lens, do not.
    """
    if mode == "none":
        return cat["RA"], cat["DEC"]
    gal = cat["IS_STAR"] == 0
    ra = np.array(cat["RA"], dtype=np.float64)
    dec = np.array(cat["DEC"], dtype=np.float64)
    if mode == "field":
        ra[gal], dec[gal] = shear_positions(ra[gal], dec[gal], shear[0], shear[1], *centre)
    else:
        ra[gal], dec[gal], _ = shear_groups(ra[gal], dec[gal], shear[0], shear[1], *centre,
                                            link_arcsec=GROUP_LINK_ARCSEC)
    return ra.astype(cat["RA"].dtype), dec.astype(cat["DEC"].dtype)


def _write_tile(params, stacker, root):
    image, weight = stacker.result()
    header = geo.tile_header(params)
    number = geo.tile_name(params.tile_number)
    header["OBJECT"] = f"CFIS {params.tile_number[0]:03d}.{params.tile_number[1]:03d}"
    header["TILEID"] = f"{params.tile_number[0]:03d}.{params.tile_number[1]:03d}"
    header["MAGZP"] = (geo.MAGZP, "mag of 1 ADU (weighted mean of the exposures)")
    header["PHOTZP"] = (geo.MAGZP, "mag of 1 ADU (weighted mean of the exposures)")
    header["EXPTIME"] = (geo.EXPTIME, "exposure time of one input exposure (s)")
    header["GAIN"] = (geo.GAIN * params.n_exp, "effective gain of the mean stack (e-/ADU)")
    header["SATURATE"] = (geo.SATURATE, "ADU")
    header["FILTER"] = geo.FILTER
    header["NCOMBINE"] = params.n_exp
    header["COMMENT"] = "shapepipe.sim: bilinear resampling, inverse-variance weighted mean"
    for exp in params.exposures:
        header["HISTORY"] = f"input exposure {exp}p.fits.fz"
    write_fits(fits.HDUList([fits.PrimaryHDU(image, header=header)]),
               os.path.join(root, "tiles", f"CFIS_image-{number}.fits"))
    header_w = header.copy()
    header_w["COMMENT"] = "inverse variance (ADU^-2) of the tile"
    write_fits(fits.HDUList([fits.PrimaryHDU(weight, header=header_w)]),
               os.path.join(root, "tiles", f"CFIS_weight-{number}.fits"))


def _link_or_copy(source, target):
    # A hard link costs no space (a --full exposure is ~1 GB); copy where links fail.
    try:
        os.link(source, target)
    except OSError:
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)


def write_cfis_names(params, seed, root, ext=".fits.fz"):
    """Write ``<root>/raw/``: the survey's files under their original CFIS names.

    ``CFIS.270.283.r.fits`` (the tile, same bytes as ``tiles/CFIS_image-270-283.fits``),
    ``CFIS.270.283.r.weight.fits.fz`` (the tile weight, tile-compressed in HDU 1 as CFIS
    releases it), ``2000001p.fits.fz``, ``2000001p.weight.fits.fz``, ``2000001p.flag.fits.fz``
    (same bytes as ``exposures/{image,weight,flag}-2000001.fits.fz``; hard links where the
    file system allows) and ``tiles_r.txt`` (the tile and weight names, one per line, like
    CFIS's released tile lists). Nothing outside ``raw/`` is touched.

    Parameters
    ----------
    params : shapepipe.sim.geometry.SurveyParams
    seed : int
        Survey seed (the weight's quantisation dither).
    root : str
        Dataset directory holding ``exposures/`` and ``tiles/``.
    ext : str
        Extension of the exposure files (``.fits.fz``, or ``.fits`` when not compressed).
    """
    raw = os.path.join(root, "raw")
    os.makedirs(raw, exist_ok=True)
    band = geo.FILTER.split(".")[0]
    number = geo.tile_name(params.tile_number)
    tile_id = number.replace("-", ".")
    tile = f"CFIS.{tile_id}.{band}.fits"
    weight = f"CFIS.{tile_id}.{band}.weight.fits.fz"
    _link_or_copy(os.path.join(root, "tiles", f"CFIS_image-{number}.fits"),
                  os.path.join(raw, tile))
    with fits.open(os.path.join(root, "tiles", f"CFIS_weight-{number}.fits")) as hdul:
        writer = _MEFWriter(os.path.join(raw, weight), fits.Header())
        try:
            writer.append(hdul[0].data, hdul[0].header, "lossless",
                          _dither_seed(seed, 0, 0, "tile_weight"))
        except BaseException:
            writer.close(ok=False)
            raise
        writer.close()
    for exp in params.exposures:
        for kind, suffix in (("image", ""), ("weight", ".weight"), ("flag", ".flag")):
            _link_or_copy(os.path.join(root, "exposures", f"{kind}-{exp}{ext}"),
                          os.path.join(raw, f"{exp}p{suffix}{ext}"))
    with atomic_path(os.path.join(raw, f"tiles_{band}.txt")) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(f"{tile}\n{weight}\n")


def _write_truth(params, seed, cat, shear, psf_stars, root):
    truth = os.path.join(root, "truth")
    cols = dict(cat)
    gal = cat["IS_STAR"] == 0
    cols["G1"] = np.where(gal, shear[0], 0.0).astype(np.float32)
    cols["G2"] = np.where(gal, shear[1], 0.0).astype(np.float32)
    write_fits(table_hdulist(cols, "OBJECTS"), os.path.join(truth, "objects.fits"))

    stars = select(cat, cat["IS_STAR"] == 1)
    write_fits(table_hdulist({"ID": stars["ID"], "RA": stars["RA"], "DEC": stars["DEC"],
                       "MAG": stars["MAG"]}, "REF_STARS"),
               os.path.join(root, "star_cat", "ref_stars.fits"))
    write_fits(table_hdulist(model_rows(params, seed), "PSF_MODEL"),
               os.path.join(truth, "psf_model.fits"))
    write_fits(table_hdulist(psf_stars, "PSF_STARS"), os.path.join(truth, "psf_stars.fits"))

    dx, dy, _, _ = geo.ccd_layout(params)
    rows = {k: [] for k in ("EXP_NUM", "CCD", "RA_PNT", "DEC_PNT", "NX", "NY", "CRPIX1",
                            "CRPIX2", "DX", "DY", "SKYLEVEL", "SKYSIGMA", "MJD_OBS", "AIRMASS")}
    for i_exp, exp in enumerate(params.exposures):
        cond = exposure_conditions(seed, exp)
        ra, dec = geo.pointing(params, i_exp)
        for ccd in range(dx.size):
            h = geo.ccd_header(params, i_exp, ccd)
            sky = sky_model(params, cond, ccd, (params.ccd_ny, params.ccd_nx))
            var = np.mean(sky * geo.GAIN + geo.RDNOISE**2)
            vals = (exp, ccd, ra, dec, params.ccd_nx, params.ccd_ny, h["CRPIX1"], h["CRPIX2"],
                    dx[ccd], dy[ccd], float(np.mean(sky)), np.sqrt(var) / geo.GAIN, cond["mjd"],
                    cond["airmass"])
            for key, val in zip(rows, vals):
                rows[key].append(val)
    table = {k: np.asarray(v) for k, v in rows.items()}
    table["EXP_NUM"] = table["EXP_NUM"].astype(np.int32)
    table["CCD"] = table["CCD"].astype(np.int16)
    table["NX"] = table["NX"].astype(np.int32)
    table["NY"] = table["NY"].astype(np.int32)
    write_fits(table_hdulist(table, "EXPOSURES"), os.path.join(truth, "exposures.fits"))
