"""metadetect_runner: metadetection shear catalogue of a stacked tile.

Inputs per job, in this order: the tile image and weight (``CFIS_image-<tile>.fits``,
``CFIS_weight-<tile>.fits``), the pipeline flag image of mask_runner
(``pipeline_flag-<tile>.fits``), the tile catalogue (``tile_sexcat-<tile>.fits``) and its
multi-epoch PSF store (``galaxy_psf-<tile>.sqlite`` of psfex_interp_runner MULTI-EPOCH), which
give each cell its PSF.

Output: ``[<PREFIX>_]metadetect_cat<num>.fits``, HDU METADETECT: one row per detection per
metacal step (MDET_STEP = noshear, 1p, 1m, 2p, 2m) with X_IMAGE, Y_IMAGE, RA, DEC (unsheared
frame), MDET_FLAGS, MASK_FLAGS, MDET_S2N, MDET_FLUX(_ERR), MDET_T, MDET_T_RATIO(_ERR),
MDET_G1, MDET_G2 and the cell PSF's PSF_G1, PSF_G2, PSF_T. The shear of a selection is
``<G>_noshear / R`` with ``R11 = (<G1>_1p - <G1>_1m) / (2 MDETSTEP)`` (and R22), each mean
taken over the rows of its own step that pass the cuts: detection, deblending and selection
responses are all inside R. See :mod:`shapepipe.modules.metadetect.cell`.

Keys: CELL_SIZE, CELL_MARGIN (pixels), STEP, WEIGHT_FWHM (arcsec), DETECT_THRESH,
DETECT_MINAREA, DEBLEND_NTHRESH, DEBLEND_MINCONT, PSF_SIZE, SEED, TILE_RESAMPLING (NONE |
BILINEAR, with LOG_WCS: the stacking kernel in the PSF and in the noise texture),
STAR_CAT_PATH (+ STAR_CAT_RA_COL/DEC_COL/MAG_COL), STAR_MASK_MAG, STAR_MASK_RADIUS,
STAR_MASK_RADIUS_MAX (detections near bright reference stars get MDET_FLAGS 16), N_THREADS,
PREFIX.

MDET_FLAGS bits: 1 the moments stamp leaves the cell, 2 a pixel without data under the
weight, 4 no shape (non-positive flux or moments), 16 near a bright reference star.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner

KEYS = [
    Key("CELL_SIZE", "int", default=200, help="side (pixels) of the cells the tile is cut into"),
    Key("CELL_MARGIN", "int", default=50,
        help="pixels read around each cell (objects at its edge whole, transforms' copies "
             "outside)"),
    Key("STEP", "float", default=0.05,
        help="metacal shear step (larger than metacal's 0.01: the noise that detection and "
             "selection flips put into R falls as 1 / STEP)"),
    Key("WEIGHT_FWHM", "float", default=1.2, help="FWHM (arcsec) of the moments' weight"),
    Key("DETECT_THRESH", "float", default=0.8,
        help="sep threshold on the sheared images, in units of their pixel noise"),
    Key("DETECT_MINAREA", "int", default=4, help="sep minimum area (pixels)"),
    Key("DEBLEND_NTHRESH", "int", default=32, help="sep deblending thresholds"),
    Key("DEBLEND_MINCONT", "float", default=1e-5, help="sep deblending minimum contrast"),
    Key("PSF_SIZE", "int", default=41, help="odd side (pixels) of the cell PSF stamps"),
    Key("SEED", "int", default=1, help="seed of the noise correction (with the cell index)"),
    Key("TILE_RESAMPLING", "str", default="NONE", choices=["NONE", "BILINEAR"],
        help="BILINEAR: the tile was stacked with bilinear interpolation; its kernel enters "
             "the PSF and the noise texture (needs LOG_WCS)"),
    Key("LOG_WCS", "str", default="",
        help="log_exp_headers.sqlite (file or module reference) for TILE_RESAMPLING"),
    Key("STAR_CAT_PATH", "file", default=None,
        help="reference star catalogue (RA, DEC in deg, a magnitude): detections near its "
             "bright stars get MDET_FLAGS 16"),
    Key("STAR_CAT_RA_COL", "str", default="RA", help="right ascension column"),
    Key("STAR_CAT_DEC_COL", "str", default="DEC", help="declination column"),
    Key("STAR_CAT_MAG_COL", "str", default="MAG", help="magnitude column"),
    Key("STAR_MASK_MAG", "float", default=18.0, help="stars brighter than this are masked"),
    Key("STAR_MASK_RADIUS", "float", default=2.5,
        help="mask radius (arcsec) of a star at STAR_MASK_MAG, x 10**(0.2 (STAR_MASK_MAG - mag)) "
             "for brighter ones"),
    Key("STAR_MASK_RADIUS_MAX", "float", default=30.0, help="largest mask radius (arcsec)"),
    Key("N_THREADS", "int", default=1,
        help="cells measured at once in threads (e.g. the cores of a one-tile run; the "
             "catalogue does not depend on it)"),
    Key("PREFIX", "str", default=None, help="output prefix: <PREFIX>_metadetect_cat<num>.fits"),
]


def output_name(prefix, number):
    """``[<prefix>_]metadetect_cat<number>.fits``."""
    if prefix and prefix.lower() != "none":
        return f"{prefix}_metadetect_cat{number}.fits"
    return f"metadetect_cat{number}.fits"


def _check(config, section):
    """Values checked before any job starts."""
    opts = config.read_keys(section, KEYS)
    if opts["CELL_SIZE"] < 16:
        raise ValueError(f"[{section}] CELL_SIZE = {opts['CELL_SIZE']}: expected >= 16 pixels")
    if opts["CELL_MARGIN"] < 0:
        raise ValueError(f"[{section}] CELL_MARGIN = {opts['CELL_MARGIN']}: expected >= 0")
    if opts["PSF_SIZE"] < 5 or opts["PSF_SIZE"] % 2 == 0:
        raise ValueError(f"[{section}] PSF_SIZE = {opts['PSF_SIZE']}: expected an odd number "
                         ">= 5")
    if opts["N_THREADS"] < 1:
        raise ValueError(f"[{section}] N_THREADS = {opts['N_THREADS']}: expected >= 1")
    if not 0 < opts["STEP"] < 0.1:
        raise ValueError(f"[{section}] STEP = {opts['STEP']}: expected 0 < STEP < 0.1")
    if not opts["WEIGHT_FWHM"] > 0:
        raise ValueError(f"[{section}] WEIGHT_FWHM = {opts['WEIGHT_FWHM']}: expected > 0")
    if not opts["DETECT_THRESH"] > 0:
        raise ValueError(f"[{section}] DETECT_THRESH = {opts['DETECT_THRESH']}: expected > 0")
    if not opts["STAR_MASK_RADIUS"] > 0 or opts["STAR_MASK_RADIUS_MAX"] < opts["STAR_MASK_RADIUS"]:
        raise ValueError(f"[{section}] STAR_MASK_RADIUS = {opts['STAR_MASK_RADIUS']}, "
                         f"STAR_MASK_RADIUS_MAX = {opts['STAR_MASK_RADIUS_MAX']}: expected "
                         "0 < STAR_MASK_RADIUS <= STAR_MASK_RADIUS_MAX")
    if opts["TILE_RESAMPLING"].upper() == "BILINEAR" and not opts["LOG_WCS"]:
        raise ValueError(f"[{section}] TILE_RESAMPLING = BILINEAR needs LOG_WCS (the "
                         "log_exp_headers.sqlite of merge_headers_runner)")


@module_runner(
    version="1.0",
    input_module=["mask_runner", "sextractor_runner", "psfex_interp_runner"],
    file_pattern=["CFIS_image", "CFIS_weight", "pipeline_flag", "tile_sexcat", "galaxy_psf"],
    file_ext=[".fits", ".fits", ".fits", ".fits", ".sqlite"],
    depends=["numpy", "astropy", "sep", "sqlitedict"],
    executes=[],
    numbering_scheme="-000-000",
    run_method="parallel",
    keys=KEYS,
    validate=_check,
)
def metadetect_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                      w_log):
    """Run metadetection on one tile."""
    from shapepipe.modules.metadetect import DetectConfig, process_tile

    opts = config.read_keys(module_config_sec, KEYS)
    if len(input_file_list) != 5:
        raise ValueError(
            f"[{module_config_sec}] expected 5 input files (tile image, weight, flag image, "
            f"tile catalogue, PSF store); got {len(input_file_list)}: "
            f"{', '.join(os.path.basename(p) for p in input_file_list)}")
    image, weight, flag, sexcat, psf_store = input_file_list
    out = os.path.join(run_dirs["output"], output_name(opts["PREFIX"], file_number_string))
    exp_wcs = None
    if opts["TILE_RESAMPLING"].upper() == "BILINEAR":
        from shapepipe.modules.merge_headers import find_log_wcs, read_exp_wcs
        from shapepipe.pipeline.run_log import resolve_module_dir

        log_wcs = find_log_wcs(opts["LOG_WCS"], lambda ref: resolve_module_dir(ref, run_dirs),
                               key=f"[{module_config_sec}] LOG_WCS")
        exp_wcs = read_exp_wcs(log_wcs)
    detect = DetectConfig(thresh=opts["DETECT_THRESH"], minarea=opts["DETECT_MINAREA"],
                          deblend_nthresh=opts["DEBLEND_NTHRESH"],
                          deblend_cont=opts["DEBLEND_MINCONT"])
    stars = None
    if opts["STAR_CAT_PATH"]:
        from shapepipe.modules.mask.catalogs import read_star_catalogue

        stars = read_star_catalogue(os.path.expanduser(opts["STAR_CAT_PATH"]),
                                    opts["STAR_CAT_RA_COL"], opts["STAR_CAT_DEC_COL"],
                                    opts["STAR_CAT_MAG_COL"])
    counts = process_tile(image, weight, flag, sexcat, psf_store, out, exp_wcs=exp_wcs,
                          seed=opts["SEED"], cell_size=opts["CELL_SIZE"],
                          cell_margin=opts["CELL_MARGIN"], step=opts["STEP"],
                          weight_fwhm=opts["WEIGHT_FWHM"], psf_size=opts["PSF_SIZE"],
                          detect=detect, stars=stars, star_mask_mag=opts["STAR_MASK_MAG"],
                          star_mask_radius=opts["STAR_MASK_RADIUS"],
                          star_mask_radius_max=opts["STAR_MASK_RADIUS_MAX"],
                          n_threads=opts["N_THREADS"], log=w_log)
    w_log.info("wrote %s: %s", out, counts)
    return None, None
