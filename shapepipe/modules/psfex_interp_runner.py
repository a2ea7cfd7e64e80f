"""psfex_interp_runner (alias psfexinterp_runner): PSF at object positions.

MODE = CLASSIC: inputs ``.psf`` + object catalogue -> ``galaxy_psf<num>.fits``.
MODE = VALIDATION: inputs ``.psf`` + star catalogue + ``psfex_cat`` -> ``validation_psf<num>.fits``.
MODE = MULTI-EPOCH: input tile catalogue (with ``EPOCH_<i>`` HDUs) -> ``galaxy_psf<num>.sqlite``,
the ``.psf`` files found in ME_DOT_PSF_DIR and the CCD WCSs in ME_LOG_WCS.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.modules.psfex_interp import process_classic, process_multi_epoch, process_validation

KEYS = [
    Key("MODE", "str", default="CLASSIC", choices=["CLASSIC", "VALIDATION", "MULTI-EPOCH"],
        help="what to compute"),
    Key("POSITION_PARAMS", "list", default=[],
        help="two catalogue columns of the positions (default: the .psf POLNAMEs; "
             "world coordinates in MULTI-EPOCH)"),
    Key("GET_SHAPES", "bool", default=True, help="measure HSM shapes of the PSF stamps"),
    Key("STAR_THRESH", "int", default=20, help="minimum ACCEPTED stars of a usable model"),
    Key("CHI2_THRESH", "float", default=2.0, help="maximum CHI2 of a usable model"),
    Key("ME_DOT_PSF_DIR", "str", default="psfex_runner",
        help="MULTI-EPOCH: where the .psf files are (module name, last:/all:/<run>:<module>, "
             "or a directory)"),
    Key("ME_DOT_PSF_PATTERN", "str", default="star_selection",
        help="MULTI-EPOCH: .psf names are <pattern>-<exp>-<ccd>.psf"),
    Key("ME_LOG_WCS", "str", default="",
        help="MULTI-EPOCH: log_exp_headers.sqlite of merge_headers_runner (the file, or a "
             "module reference: merge_headers_runner, last:merge_headers_runner...)"),
]

_N_INPUTS = {"CLASSIC": 2, "VALIDATION": 3, "MULTI-EPOCH": 1}
@module_runner(version="1.1", input_module=["psfex_runner", "setools_runner"],
               file_pattern=["star_selection", "galaxy_selection"], file_ext=[".psf", ".fits"],
               depends=["numpy", "astropy", "galsim", "sqlitedict"], executes=[],
               numbering_scheme="-0000000-0", run_method="parallel", keys=KEYS)
def psfex_interp_runner(input_file_list, run_dirs, file_number_string, config,
                        module_config_sec, w_log):
    """Evaluate PSF models at catalogue positions."""
    opts = config.read_keys(module_config_sec, KEYS)
    mode = opts["MODE"].upper()
    expected = _N_INPUTS[mode]
    if len(input_file_list) != expected:
        raise ValueError(
            f"[{module_config_sec}] MODE = {mode} needs {expected} input files per job "
            f"(FILE_PATTERN/FILE_EXT), got {len(input_file_list)}: {input_file_list}"
        )
    pos = opts["POSITION_PARAMS"] or None
    common = dict(star_thresh=opts["STAR_THRESH"], chi2_thresh=opts["CHI2_THRESH"], log=w_log)
    out_dir = run_dirs["output"]
    if mode == "CLASSIC":
        psf_path, cat_path = input_file_list
        out = os.path.join(out_dir, f"galaxy_psf{file_number_string}.fits")
        failure = process_classic(psf_path, cat_path, out, pos, opts["GET_SHAPES"], **common)
    elif mode == "VALIDATION":
        psf_path, cat_path, psfex_cat = input_file_list
        out = os.path.join(out_dir, f"validation_psf{file_number_string}.fits")
        failure = process_validation(psf_path, cat_path, psfex_cat, out, pos, **common)
    else:
        from shapepipe.modules.merge_headers import find_log_wcs, read_exp_wcs
        from shapepipe.pipeline.run_log import resolve_module_dir

        if not opts["ME_LOG_WCS"]:
            raise ValueError(f"[{module_config_sec}] ME_LOG_WCS: required in MULTI-EPOCH mode "
                             "(the log_exp_headers.sqlite of merge_headers_runner)")
        log_wcs = find_log_wcs(opts["ME_LOG_WCS"], lambda ref: resolve_module_dir(ref, run_dirs),
                               key=f"[{module_config_sec}] ME_LOG_WCS")
        dirs = resolve_module_dir(opts["ME_DOT_PSF_DIR"], run_dirs)
        cat_path = input_file_list[0]
        out = os.path.join(out_dir, f"galaxy_psf{file_number_string}.sqlite")
        counts = process_multi_epoch(cat_path, out, dirs, opts["ME_DOT_PSF_PATTERN"],
                                     lambda names: read_exp_wcs(log_wcs, names),
                                     pos or ("XWIN_WORLD", "YWIN_WORLD"), opts["GET_SHAPES"],
                                     **common)
        failure = None
        w_log.info("multi-epoch: %s", counts)
    w_log.info("wrote %s%s", out, f" (model unusable: {failure})" if failure else "")
    return None, None
