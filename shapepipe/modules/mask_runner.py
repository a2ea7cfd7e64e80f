"""mask_runner: flag images with border, bright-star halo/spike, Messier/NGC and external masks.

Inputs per job, in this order (ShapePipe's rule): image, weight (not used, kept for
ShapePipe's default patterns), the external flag image if USE_EXT_FLAG, and a star
catalogue if USE_EXT_STAR and no STAR_CAT_PATH. Output: ``<PREFIX>_flag<number>.fits``
(``pipeline_flag-2000001-0.fits`` by default) with the image header and WCS.

Star catalogue (needed for halo/spike masks; never queried online):
- STAR_CAT_PATH: one catalogue file for every job (e.g. ``$SP_DATA/star_cat/ref_stars.fits``);
- otherwise, with USE_EXT_STAR = True, the last input file of each job (add its directory
  and pattern with ADD_INPUT_DIR / FILE_PATTERN / FILE_EXT, as in ShapePipe).
Columns STAR_CAT_RA_COL, STAR_CAT_DEC_COL (deg) and STAR_CAT_MAG_COL.
"""

import os

from shapepipe.modules.mask import MaskConfig, make_mask, read_star_catalogue
from shapepipe.modules.module_decorator import Key, module_runner

KEYS = [
    Key("MASK_CONFIG_PATH", "file", help="mask configuration file (config.mask)"),
    Key("USE_EXT_FLAG", "bool", default=True,
        help="the job's third input is a flag image OR-ed into the output"),
    Key("USE_EXT_STAR", "bool", default=False,
        help="the job's last input is its star catalogue (unless STAR_CAT_PATH is set)"),
    Key("STAR_CAT_PATH", "file", default=None,
        help="star catalogue file used for every job (RA, DEC in deg and a magnitude)"),
    Key("STAR_CAT_RA_COL", "str", default="RA", help="right ascension column"),
    Key("STAR_CAT_DEC_COL", "str", default="DEC", help="declination column"),
    Key("STAR_CAT_MAG_COL", "str", default="MAG", help="magnitude column"),
    Key("PREFIX", "str", default=None,
        help="output name prefix: <PREFIX>_flag<number>.fits; 'none' for flag<number>.fits"),
    Key("SUFFIX", "str", default=None, help="old ShapePipe name of PREFIX"),
]


def output_name(prefix, number):
    """Output file name ``<prefix>_flag<number>.fits`` (no prefix for '' or 'none')."""
    if prefix and prefix.lower() != "none":
        return f"{prefix}_flag{number}.fits"
    return f"flag{number}.fits"


def _check_mask_config(config, section):
    """Parse config.mask once before any job runs, so a mistake is one error, not N."""
    opts = config.read_keys(section, KEYS)
    MaskConfig(os.path.expanduser(opts["MASK_CONFIG_PATH"]))


@module_runner(
    version="1.1",
    input_module="split_exp_runner",
    file_pattern=["image", "weight", "flag"],
    file_ext=[".fits", ".fits", ".fits"],
    depends=["numpy", "astropy"],
    executes=[],
    numbering_scheme="-0000000-0",
    run_method="parallel",
    keys=KEYS,
    validate=_check_mask_config,
)
def mask_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec, w_log):
    """Write the flag image of one CCD or tile."""
    opts = config.read_keys(module_config_sec, KEYS)
    use_flag = opts["USE_EXT_FLAG"]
    star_input = opts["USE_EXT_STAR"] and not opts["STAR_CAT_PATH"]
    expected = 2 + int(use_flag) + int(star_input)
    roles = ["image", "weight"] + (["flag"] if use_flag else []) + (
        ["star catalogue"] if star_input else [])
    if len(input_file_list) != expected:
        raise ValueError(
            f"[{module_config_sec}] expected {expected} input files ({', '.join(roles)}) with "
            f"USE_EXT_FLAG = {use_flag}, USE_EXT_STAR = {opts['USE_EXT_STAR']}, "
            f"STAR_CAT_PATH {'set' if opts['STAR_CAT_PATH'] else 'unset'}; got "
            f"{len(input_file_list)}: {', '.join(os.path.basename(p) for p in input_file_list)}"
        )
    image_path = input_file_list[0]
    ext_flag = input_file_list[2] if use_flag else None
    mask_config = MaskConfig(os.path.expanduser(opts["MASK_CONFIG_PATH"]))

    stars = None
    star_path = opts["STAR_CAT_PATH"] or (input_file_list[-1] if star_input else None)
    if mask_config.needs_stars and star_path:
        stars = read_star_catalogue(os.path.expanduser(star_path), opts["STAR_CAT_RA_COL"],
                                    opts["STAR_CAT_DEC_COL"], opts["STAR_CAT_MAG_COL"])
        w_log.info("star catalogue %s: %d stars", star_path, len(stars[0]))

    prefix = opts["PREFIX"] if opts["PREFIX"] is not None else opts["SUFFIX"]
    if prefix is None:
        prefix = "pipeline"
    output = os.path.join(run_dirs["output"], output_name(prefix, file_number_string))
    summary = make_mask(image_path, mask_config, output, ext_flag_path=ext_flag, stars=stars,
                        number=file_number_string, region_dir=run_dirs["output"], log=w_log)
    w_log.info("wrote %s: %d of %d pixels flagged; %s", output, summary["n_flagged"],
               summary["shape"][0] * summary["shape"][1],
               ", ".join(f"{k}={v}" for k, v in summary.items()
                         if k.startswith(("n_", "md_")) and k != "n_flagged"))
    return None, None
