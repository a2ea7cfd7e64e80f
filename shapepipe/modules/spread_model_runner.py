"""spread_model_runner: SPREAD_MODEL and SPREADERR_MODEL of tile objects (star/galaxy).

Inputs per job, in this order (ShapePipe's): the tile catalogue with VIGNET
(``tile_sexcat-<tile>.fits``), the multi-epoch PSF store (``galaxy_psf-<tile>.sqlite`` of
psfex_interp_runner MULTI-EPOCH) and the tile weight stamps (``weight_vignet-<tile>.fits`` of
vignetmaker_runner CLASSIC).

Output: ``[<PREFIX>_]sexcat_sm<num>.fits``; OUTPUT_MODE = new: NUMBER, SPREAD_MODEL,
SPREADERR_MODEL, SPREAD_MODEL_FLAGS (1 no PSF, 2 no usable pixel, 4 no flux under the PSF;
the values are NaN then); add: the input catalogue with these columns added.

Keys: PIXEL_SCALE (arcsec, of the exposures the PSF stamps are sampled on; a tile of another
scale is warned about), OUTPUT_MODE (new | add), PREFIX (SUFFIX: old name),
TILE_RESAMPLING (NONE | BILINEAR: the stacking kernel added to each epoch's PSF, from the
CCD WCSs of LOG_WCS; the simulated tiles are stacked with bilinear interpolation),
APERTURE_FWHM (sums restricted to pixels within this many PSF FWHMs of the object),
MASK_NEIGHBOURS (pixels where a catalogue neighbour's light is sizeable are left out, as
SExtractor's deblending allocates pixels), NEIGHBOUR_FRACTION (a pixel is kept where no
neighbour's model exceeds this fraction of the object's; 1 = SExtractor's allocation),
WEIGHT_TOLERANCE (aperture pixels whose weight differs from the aperture's
median by more than this fraction are left out: pixels next to one exposure's flagged pixels
or edge, whose value the PSF model does not describe).
The PSF of a tile object is the equal-weight mean of its epochs' PSF stamps; see
:mod:`shapepipe.modules.spread_model.process` for why.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.modules.spread_model import process

KEYS = [
    Key("PIXEL_SCALE", "float", default=0.187,
        help="pixel scale (arcsec) of the exposures the PSF stamps are sampled on"),
    Key("OUTPUT_MODE", "str", default="new", choices=["new", "add"],
        help="new: a catalogue of NUMBER and the spread model; add: the input plus these"),
    Key("TILE_RESAMPLING", "str", default="NONE", choices=["NONE", "BILINEAR"],
        help="how the tile was resampled from the exposures: BILINEAR convolves each epoch's "
             "PSF with its bilinear interpolation kernel (needs LOG_WCS)"),
    Key("LOG_WCS", "str", default="",
        help="log_exp_headers.sqlite (file or module reference) for TILE_RESAMPLING"),
    Key("APERTURE_FWHM", "float", default=1.6,
        help="sums over pixels within this many PSF FWHMs of the object (0: whole stamp), "
             "so that neighbours do not bias them"),
    Key("MASK_NEIGHBOURS", "bool", default=True,
        help="leave out the pixels where a catalogue neighbour's Gaussian model (FLUX_AUTO, "
             "X2/Y2/XY_IMAGE) is brighter than the object's"),
    Key("NEIGHBOUR_FRACTION", "float", default=0.1,
        help="with MASK_NEIGHBOURS, keep the pixels where no neighbour's model exceeds this "
             "fraction of the object's (1: each pixel to the brightest model)"),
    Key("WEIGHT_TOLERANCE", "float", default=0.01,
        help="leave out aperture pixels whose weight differs from the aperture's median by "
             "more than this fraction (0: keep them)"),
    Key("PREFIX", "str", default=None, help="output prefix: <PREFIX>_sexcat_sm<num>.fits"),
    Key("SUFFIX", "str", default=None, help="old ShapePipe name of PREFIX"),
]


def output_name(prefix, number):
    """``<prefix>_sexcat_sm<number>.fits`` (no prefix for None, '' or 'none')."""
    if prefix and prefix.lower() != "none":
        return f"{prefix}_sexcat_sm{number}.fits"
    return f"sexcat_sm{number}.fits"


@module_runner(
    version="2.0",
    input_module=["sextractor_runner", "psfex_interp_runner", "vignetmaker_runner"],
    file_pattern=["tile_sexcat", "galaxy_psf", "weight_vignet"],
    file_ext=[".fits", ".sqlite", ".fits"],
    depends=["numpy", "astropy", "sqlitedict"],
    executes=[],
    numbering_scheme="-000-000",
    run_method="parallel",
    keys=KEYS,
)
def spread_model_runner(input_file_list, run_dirs, file_number_string, config,
                        module_config_sec, w_log):
    """Compute the spread model of one tile catalogue."""
    opts = config.read_keys(module_config_sec, KEYS)
    if len(input_file_list) != 3:
        raise ValueError(
            f"[{module_config_sec}] expected 3 input files (tile catalogue, PSF store, weight "
            f"vignets); got {len(input_file_list)}: "
            f"{', '.join(os.path.basename(p) for p in input_file_list)}")
    sexcat, psf_store, weight_vignet = input_file_list
    prefix = opts["PREFIX"] if opts["PREFIX"] is not None else opts["SUFFIX"]
    out = os.path.join(run_dirs["output"], output_name(prefix, file_number_string))
    exp_wcs = None
    if opts["TILE_RESAMPLING"].upper() == "BILINEAR":
        from shapepipe.modules.merge_headers import find_log_wcs, read_exp_wcs
        from shapepipe.pipeline.run_log import resolve_module_dir

        if not opts["LOG_WCS"]:
            raise ValueError(f"[{module_config_sec}] TILE_RESAMPLING = BILINEAR needs LOG_WCS "
                             "(the log_exp_headers.sqlite of merge_headers_runner)")
        log_wcs = find_log_wcs(opts["LOG_WCS"], lambda ref: resolve_module_dir(ref, run_dirs),
                               key=f"[{module_config_sec}] LOG_WCS")
        exp_wcs = read_exp_wcs(log_wcs)
    counts = process(sexcat, psf_store, weight_vignet, out, mode=opts["OUTPUT_MODE"],
                     pixel_scale=opts["PIXEL_SCALE"], exp_wcs=exp_wcs,
                     aperture_fwhm=opts["APERTURE_FWHM"],
                     mask_neighbours=opts["MASK_NEIGHBOURS"],
                     neighbour_fraction=opts["NEIGHBOUR_FRACTION"],
                     weight_tolerance=opts["WEIGHT_TOLERANCE"], log=w_log)
    w_log.info("wrote %s: %s", out, counts)
    return None, None
