"""make_catalog_runner (alias make_cat_runner): the final catalogue of a tile.

Inputs per job, in this order (ShapePipe's): the tile catalogue (``tile_sexcat-<tile>.fits``),
the spread model (``sexcat_sm-<tile>.fits``), the multi-epoch PSF store
(``galaxy_psf-<tile>.sqlite``) and the ngmix catalogue (``ngmix-<tile>.fits``). With three
inputs, the first is a ``sexcat_sm`` written with OUTPUT_MODE = add (it holds the SExtractor
columns too).

Output: ``final_cat<num>.fits``, HDU RESULTS, built in memory and written once: the tile
SExtractor columns (VIGNET dropped), TILE_ID, SPREAD_MODEL, SPREADERR_MODEL, SPREAD_CLASS,
ShapePipe's NGMIX_* columns, E1/E2/SIGMA_PSF_HSM (see
:mod:`shapepipe.modules.make_catalog.catalog`). Not measured = NaN.

Keys: SM_DO_CLASSIFICATION, SM_STAR_THRESH (ShapePipe's misspelt SM_STAR_STRESH accepted),
SM_GAL_THRESH, SM_ERR_FACTOR (k in SPREAD_MODEL + k SPREADERR_MODEL, 5/3 as in the
tutorial), SHAPE_MEASUREMENT_TYPE (ngmix), SAVE_PSF_DATA (ShapePipe's per-epoch PSF columns).
"""

import os

from shapepipe.modules.make_catalog import make_final_catalog
from shapepipe.modules.module_decorator import Key, module_runner

KEYS = [
    Key("SM_DO_CLASSIFICATION", "bool", default=True, help="add SPREAD_CLASS"),
    Key("SM_STAR_THRESH", "float", default=None,
        help="star if |SPREAD_MODEL + k SPREADERR_MODEL| < this (default 0.003)"),
    Key("SM_STAR_STRESH", "float", default=None, help="ShapePipe's spelling of SM_STAR_THRESH"),
    Key("SM_GAL_THRESH", "float", default=0.01,
        help="galaxy if SPREAD_MODEL + k SPREADERR_MODEL > this"),
    Key("SM_ERR_FACTOR", "float", default=5.0 / 3.0,
        help="k of the classifier SPREAD_MODEL + k SPREADERR_MODEL"),
    Key("SHAPE_MEASUREMENT_TYPE", "list", default=["ngmix"],
        help="shape catalogues to add (ngmix; empty: none)"),
    Key("SAVE_PSF_DATA", "bool", default=False,
        help="also ShapePipe's per-epoch PSF_ELL_<i>, PSF_FWHM_<i>, PSF_FLAG_<i>"),
]


def _check(config, section):
    opts = config.read_keys(section, KEYS)
    for kind in opts["SHAPE_MEASUREMENT_TYPE"]:
        if kind.lower() != "ngmix":
            raise ValueError(f"[{section}] SHAPE_MEASUREMENT_TYPE = {kind}: only ngmix is "
                             "supported")


@module_runner(
    version="2.0",
    input_module=["sextractor_runner", "spread_model_runner", "psfex_interp_runner",
                  "ngmix_runner"],
    file_pattern=["tile_sexcat", "sexcat_sm", "galaxy_psf", "ngmix"],
    file_ext=[".fits", ".fits", ".sqlite", ".fits"],
    depends=["numpy", "astropy", "sqlitedict"],
    executes=[],
    numbering_scheme="-000-000",
    run_method="parallel",
    keys=KEYS,
    validate=_check,
)
def make_catalog_runner(input_file_list, run_dirs, file_number_string, config,
                        module_config_sec, w_log):
    """Write ``final_cat<num>.fits`` of one tile."""
    from shapepipe.modules.ngmix import read_catalog

    opts = config.read_keys(module_config_sec, KEYS)
    with_ngmix = bool(opts["SHAPE_MEASUREMENT_TYPE"])
    n_in = len(input_file_list)
    expected = (3, 4) if with_ngmix else (2, 3)
    if n_in not in expected:
        raise ValueError(
            f"[{module_config_sec}] expected {' or '.join(map(str, expected))} input files "
            "(tile_sexcat, sexcat_sm, galaxy_psf" + (", ngmix" if with_ngmix else "") +
            f"; tile_sexcat may be left out with a sexcat_sm in add mode); got {n_in}: "
            f"{', '.join(os.path.basename(p) for p in input_file_list)}")
    files = list(input_file_list)
    ngmix_path = files.pop() if with_ngmix else None
    psf_path = files.pop()
    sm_path = files[-1]
    sexcat_path = files[0]
    star = opts["SM_STAR_THRESH"]
    if star is None:
        star = opts["SM_STAR_STRESH"] if opts["SM_STAR_STRESH"] is not None else 0.003
    tables = read_catalog(ngmix_path) if ngmix_path else None
    out = os.path.join(run_dirs["output"], f"final_cat{file_number_string}.fits")
    n = make_final_catalog(out, sexcat_path, sm_path, psf_path, tables, file_number_string,
                           opts["SM_DO_CLASSIFICATION"], star, opts["SM_GAL_THRESH"],
                           opts["SM_ERR_FACTOR"], opts["SAVE_PSF_DATA"], log=w_log)
    w_log.info("wrote %s (%d objects)", out, n)
    return None, None
