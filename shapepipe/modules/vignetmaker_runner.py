"""vignetmaker_runner: postage stamps of catalogue objects (ShapePipe's keys and file names).

Inputs per job: the object catalogue first (e.g. ``tile_sexcat-<tile>.fits``), then, in
CLASSIC mode, one image per PREFIX (e.g. the tile weight ``CFIS_weight-<tile>.fits``).

Outputs:
- MASKING = True: ``cat_vignet<num>.fits``, the catalogue's own VIGNET column with
  SExtractor's masked pixels (-1e30) set to MASK_VALUE (ShapePipe's behaviour);
- MODE = CLASSIC: ``<PREFIX>_vignet<num>.fits`` per image (NUMBER + VIGNET (N, S, S) float32,
  catalogue row order); positions from POSITION_PARAMS, COORD = PIX (1-based pixel columns,
  e.g. XWIN_IMAGE, YWIN_IMAGE) or SPHE (world columns, through the image WCS);
- MODE = MULTI-EPOCH: ``<type>_vignet<num>.sqlite`` per type of ME_IMAGE_PATTERN (e.g. flag,
  image, weight, background): ``{str(NUMBER): {"<exp>-<ccd>": {"VIGNET": (S, S)}}}`` or
  "empty", stamps cut from ``<type>-<exp>-<ccd>.fits`` in ME_IMAGE_DIR for every CCD listed in
  the catalogue's EPOCH_<i> HDUs, positions (world, COORD = SPHE) through the CCD WCSs of
  ME_LOG_WCS. A missing CCD file or header: its objects lose that epoch (warning).

Keys: MODE, COORD, POSITION_PARAMS, STAMP_SIZE (odd), MASKING, MASK_VALUE, PREFIX (SUFFIX:
old name), ME_IMAGE_DIR (one entry for all types, or one per type: a directory or a module
reference such as split_exp_runner, last:sextractor_runner), ME_IMAGE_PATTERN, ME_LOG_WCS.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.modules.vignetmaker import (
    make_classic,
    make_multi_epoch,
    masked_catalog_vignets,
    write_vignet_file,
)

KEYS = [
    Key("MODE", "str", default="CLASSIC", choices=["CLASSIC", "MULTI-EPOCH"],
        help="CLASSIC: stamps of the job's images; MULTI-EPOCH: of every exposure-CCD"),
    Key("COORD", "str", default="PIX", choices=["PIX", "SPHE"],
        help="POSITION_PARAMS are pixel (1-based) or world (deg) coordinates"),
    Key("POSITION_PARAMS", "list", default=["XWIN_IMAGE", "YWIN_IMAGE"],
        help="the two catalogue columns of the positions"),
    Key("STAMP_SIZE", "int", default=51, help="stamp side in pixels (odd)"),
    Key("MASKING", "bool", default=False,
        help="only rewrite the catalogue's VIGNET with masked pixels set to MASK_VALUE"),
    Key("MASK_VALUE", "float", default=0.0, help="value of masked pixels (MASKING = True)"),
    Key("PREFIX", "list", default=None,
        help="CLASSIC: output prefix per image: <PREFIX>_vignet<num>.fits"),
    Key("SUFFIX", "list", default=None, help="old ShapePipe name of PREFIX"),
    Key("ME_IMAGE_DIR", "list", default=[],
        help="MULTI-EPOCH: where the <type>-<exp>-<ccd>.fits are: one entry, or one per type "
             "(directory or module reference)"),
    Key("ME_IMAGE_PATTERN", "list", default=["flag", "image", "weight", "background"],
        help="MULTI-EPOCH: image types (file name patterns); output <type>_vignet<num>.sqlite"),
    Key("ME_LOG_WCS", "str", default="",
        help="MULTI-EPOCH: log_exp_headers.sqlite (file or module reference)"),
]


def _check(config, section):
    """Check the keys once before any job."""
    opts = config.read_keys(section, KEYS)
    if opts["STAMP_SIZE"] < 1 or opts["STAMP_SIZE"] % 2 == 0:
        raise ValueError(f"[{section}] STAMP_SIZE = {opts['STAMP_SIZE']}: expected a positive "
                         "odd number")
    if len(opts["POSITION_PARAMS"]) != 2:
        raise ValueError(f"[{section}] POSITION_PARAMS = {opts['POSITION_PARAMS']}: expected "
                         "two column names")
    if opts["MASKING"]:
        return
    if opts["MODE"].upper() == "MULTI-EPOCH":
        if opts["COORD"].upper() != "SPHE":
            raise ValueError(f"[{section}] MODE = MULTI-EPOCH needs COORD = SPHE (world "
                             "positions mapped through each CCD's WCS)")
        n_dir, n_pat = len(opts["ME_IMAGE_DIR"]), len(opts["ME_IMAGE_PATTERN"])
        if n_pat == 0 or n_dir not in (1, n_pat):
            raise ValueError(f"[{section}] ME_IMAGE_DIR has {n_dir} entries for {n_pat} "
                             "ME_IMAGE_PATTERN types: give one, or one per type")
        if not opts["ME_LOG_WCS"]:
            raise ValueError(f"[{section}] ME_LOG_WCS: required in MULTI-EPOCH mode")


@module_runner(
    version="2.0",
    input_module="sextractor_runner",
    file_pattern=["galaxy_selection", "image"],
    file_ext=[".fits", ".fits"],
    depends=["numpy", "astropy", "sqlitedict"],
    executes=[],
    numbering_scheme=None,
    run_method="parallel",
    keys=KEYS,
    validate=_check,
)
def vignetmaker_runner(input_file_list, run_dirs, file_number_string, config,
                       module_config_sec, w_log):
    """Cut the stamps of one catalogue."""
    _check(config, module_config_sec)
    opts = config.read_keys(module_config_sec, KEYS)
    cat_path = input_file_list[0]
    out_dir = run_dirs["output"]
    size = opts["STAMP_SIZE"]

    if opts["MASKING"]:
        numbers, vign = masked_catalog_vignets(cat_path, opts["MASK_VALUE"])
        out = os.path.join(out_dir, f"cat_vignet{file_number_string}.fits")
        write_vignet_file(out, numbers, vign)
        w_log.info("wrote %s (%d vignets)", out, len(numbers))
        return None, None

    pos = opts["POSITION_PARAMS"]
    if opts["MODE"].upper() == "CLASSIC":
        prefixes = opts["PREFIX"] if opts["PREFIX"] is not None else opts["SUFFIX"]
        if not prefixes:
            raise ValueError(f"[{module_config_sec}] PREFIX: required in CLASSIC mode (one "
                             "output prefix per image)")
        make_classic(cat_path, input_file_list[1:], prefixes, out_dir, file_number_string, pos,
                     opts["COORD"].upper(), size, log=w_log)
        return None, None

    from shapepipe.modules.merge_headers import find_log_wcs, read_exp_wcs
    from shapepipe.pipeline.run_log import resolve_module_dir

    types = opts["ME_IMAGE_PATTERN"]
    specs = opts["ME_IMAGE_DIR"]
    if len(specs) == 1:
        specs = specs * len(types)
    image_dirs = {t: resolve_module_dir(spec, run_dirs) for t, spec in zip(types, specs)}
    log_wcs = find_log_wcs(opts["ME_LOG_WCS"], lambda ref: resolve_module_dir(ref, run_dirs),
                           key=f"[{module_config_sec}] ME_LOG_WCS")
    counts = make_multi_epoch(cat_path, image_dirs, types,
                              lambda names: read_exp_wcs(log_wcs, names), out_dir,
                              file_number_string, pos, size, log=w_log)
    w_log.info("wrote %s", ", ".join(os.path.basename(p) for p in counts["outputs"]))
    return None, None
