"""sextractor_runner: source detection and measurement with ``sep``, configured like SExtractor.

Keeps ShapePipe's interface: the same section keys, the same inputs per job and the same
output names, but runs in-process with ``sep`` (no ``sex``/``source-extractor`` binary).

Inputs per job, in this order (ShapePipe's rule): the image, then the weight image if
WEIGHT_IMAGE, the flag image if FLAG_IMAGE, the PSF file if PSF_FILE, the detection image if
DETECTION_IMAGE, and the detection weight if DETECTION_WEIGHT. Outputs:
``[<SUFFIX>_]sexcat<number>.fits`` (FITS_LDAC) and one ``[<SUFFIX>_]<type lower><number>.fits``
per CHECKIMAGE type.

Keys: see ``KEYS`` below. ``DEBLEND_RANDOM`` chooses the random numbers that hand out the
pixels shared by deblended objects: ``SEXTRACTOR`` (default) glibc's ``rand()`` sequence
from ``srand(1)`` for each image, as one source-extractor run per file, so blends get
SExtractor's footprints (sep's ``rand_r`` is redirected in the worker process, see
``sextractor/deblend_random.py``); ``SEP`` sep's own generator (the behaviour before). Where
``SEXTRACTOR`` is impossible (not Linux/glibc on x86-64/AArch64, sep built differently) the
job uses sep's generator and its log says so in one warning.
"""

import os
import warnings

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.pipeline.errors import ConfigError

# The science package (astropy, sep, numba) is imported by the job, in the worker process:
# the main process that plans the run does not need it, and a process that never loaded
# astropy also exits faster (~0.2 s of interpreter teardown per run).

#: Heap made resident before a worker's first image, per pixel of the image (see the job).
HEAP_BYTES_PER_PIXEL = 24

KEYS = [
    Key("EXEC_PATH", "str", default=None,
        help="ignored (ShapePipe's SExtractor executable): detection runs in-process with sep"),
    Key("DOT_SEX_FILE", "file", help="SExtractor configuration file (.sex)"),
    Key("DOT_PARAM_FILE", "file", default=None,
        help="output parameter file (.param); default: PARAMETERS_NAME of the .sex file"),
    Key("DOT_CONV_FILE", "file", default=None,
        help="filter kernel (.conv); default: FILTER_NAME of the .sex file"),
    Key("WEIGHT_IMAGE", "bool", default=True, help="the job's inputs include a weight image"),
    Key("FLAG_IMAGE", "bool", default=True, help="the job's inputs include a flag image"),
    Key("PSF_FILE", "bool", default=False,
        help="the job's inputs include a PSF file (accepted; no supported parameter uses it)"),
    Key("DETECTION_IMAGE", "bool", default=False,
        help="the job's inputs include a separate detection image (dual-image mode)"),
    Key("DETECTION_WEIGHT", "bool", default=False,
        help="the job's inputs include a weight image for the detection image"),
    Key("ZP_FROM_HEADER", "bool", default=False, help="MAG_ZEROPOINT from the image header"),
    Key("ZP_KEY", "str", default=None, help="header key of the zero-point"),
    Key("BKG_FROM_HEADER", "bool", default=False,
        help="constant background (BACK_TYPE MANUAL) from the image header"),
    Key("BKG_KEY", "str", default=None, help="header key of the background value"),
    Key("CHECKIMAGE", "list", default=[],
        help="check-image types: BACKGROUND, BACKGROUND_RMS, -BACKGROUND, FILTERED, "
             "OBJECTS, -OBJECTS, SEGMENTATION, APERTURES"),
    Key("DEBLEND_RANDOM", "str", default="SEXTRACTOR", choices=["SEXTRACTOR", "SEP"],
        help="random numbers sharing blended pixels out: SEXTRACTOR = glibc rand() from "
             "srand(1) per image, as source-extractor; SEP = sep's own generator"),
    Key("SUFFIX", "str", default=None, help="output name prefix: <SUFFIX>_sexcat<number>.fits"),
    Key("PREFIX", "str", default=None, help="same as SUFFIX (newer ShapePipe name)"),
    Key("MAKE_POST_PROCESS", "bool", default=False,
        help="tiles: add EPOCH_<i> HDUs and N_EPOCH from the single-exposure CCD WCSs"),
    Key("LOG_WCS", "str", default=None,
        help="log_exp_headers.sqlite of merge_headers: a file path, or a module reference "
             "(last:merge_headers_runner, merge_headers_runner, <run>:<module>)"),
    Key("WORLD_POSITION", "list", default=["XWIN_WORLD", "YWIN_WORLD"],
        help="world-coordinate columns used by the post-processing"),
    Key("CCD_SIZE", "float_list", default=None,
        help="xmin, xmax, ymin, ymax of the usable CCD area (0-based pixels); default: each "
             "CCD's whole image, from its header (e.g. 33, 2080, 1, 4612 excludes MegaCam's "
             "overscan)"),
]


def _header_value(path, key, what):
    from astropy.io import fits

    header = fits.getheader(path)
    if key not in header:
        raise ValueError(f"{path}: header key {key} ({what}) not found")
    try:
        return float(header[key])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: header key {key} = {header[key]!r} ({what}) is not a "
                         "number") from None


def _prefix(opts):
    value = opts["PREFIX"] if opts["PREFIX"] is not None else opts["SUFFIX"]
    if value and value.lower() != "none":
        return f"{value}_"
    return ""


def _check_keys(config, section):
    """Key combinations, checked once before any job (a mistake would fail every job)."""
    opts = config.read_keys(section, KEYS)
    needs = [("DETECTION_WEIGHT", "DETECTION_IMAGE"), ("DETECTION_WEIGHT", "WEIGHT_IMAGE"),
             ("ZP_FROM_HEADER", "ZP_KEY"), ("BKG_FROM_HEADER", "BKG_KEY"),
             ("MAKE_POST_PROCESS", "LOG_WCS")]
    for key, needed in needs:
        if opts[key] and not opts[needed]:
            raise ConfigError(f"{config.where(section, key, 'True')}: needs {needed}"
                              + (" = True" if isinstance(opts[needed], bool) else " to be set"))


@module_runner(
    version="2.0",
    input_module=["split_exp_runner", "mask_runner"],
    file_pattern=["image", "weight", "pipeline_flag"],
    file_ext=[".fits", ".fits", ".fits"],
    depends=["numpy", "astropy", "sep", "numba"],
    executes=[],
    numbering_scheme="-0000000-0",
    run_method="parallel",
    keys=KEYS,
    validate=_check_keys,
)
def sextractor_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                      w_log):
    """Detect and measure the sources of one image into ``sexcat<number>.fits``."""
    from shapepipe.pipeline import worker
    from shapepipe.utils.startup import startup_phase

    # Once per worker process: the science package's imports and numba's set-up (~1 s),
    # without the garbage collector scanning the ~245,000 objects they create, now and in
    # every later job (see shapepipe/utils/startup.py).
    with startup_phase(freeze=worker.IN_WORKER):
        from shapepipe.modules.sextractor import run_sextractor
        from shapepipe.modules.sextractor.deblend_random import DeblendRandomWarning
        from shapepipe.modules.sextractor.extraction import image_pixels
        from shapepipe.modules.sextractor.measure import load_compiled_loops
        from shapepipe.modules.sextractor.memory import populate_heap, reuse_freed_memory
        from shapepipe.modules.sextractor.postprocess import make_post_process

        load_compiled_loops()

    opts = config.read_keys(module_config_sec, KEYS)
    roles = ["image"]
    for key, role in (("WEIGHT_IMAGE", "weight"), ("FLAG_IMAGE", "flag"), ("PSF_FILE", "psf"),
                      ("DETECTION_IMAGE", "detection image"),
                      ("DETECTION_WEIGHT", "detection weight")):
        if opts[key]:
            roles.append(role)
    if len(input_file_list) != len(roles):
        raise ValueError(
            f"[{module_config_sec}] expected {len(roles)} input files ({', '.join(roles)}) "
            f"from WEIGHT_IMAGE/FLAG_IMAGE/PSF_FILE/DETECTION_IMAGE/DETECTION_WEIGHT; got "
            f"{len(input_file_list)}: {', '.join(os.path.basename(p) for p in input_file_list)}"
        )
    files = dict(zip(roles, input_file_list))
    image = files["image"]

    overrides = {}
    if not opts["WEIGHT_IMAGE"]:
        overrides["WEIGHT_TYPE"] = "NONE"
    if opts["ZP_FROM_HEADER"]:
        overrides["MAG_ZEROPOINT"] = _header_value(image, opts["ZP_KEY"], "zero-point")
    if opts["BKG_FROM_HEADER"]:
        overrides["BACK_TYPE"] = "MANUAL"
        overrides["BACK_VALUE"] = _header_value(image, opts["BKG_KEY"], "background")
    if "psf" in files:
        w_log.info("PSF file %s given; no supported output parameter uses a PSF model",
                   files["psf"])

    prefix = _prefix(opts)
    out_dir = run_dirs["output"]
    output = os.path.join(out_dir, f"{prefix}sexcat{file_number_string}.fits")
    checks = [c.strip() for c in opts["CHECKIMAGE"] if c.strip()]
    checkimages = [
        (c.upper(), os.path.join(out_dir, f"{prefix}{c.lower()}{file_number_string}.fits"))
        for c in checks if c.upper() != "NONE"
    ]
    overrides["CHECKIMAGE_TYPE"] = "NONE"
    # Freed full-image arrays serve the next ones instead of going back to the kernel
    # (page faults were a quarter of a CCD's time; see sextractor/memory.py).
    reuse_freed_memory()
    # The first image of the worker: its arrays' pages made resident in one system call
    # rather than faulted in one by one (see sextractor/memory.py). 24 bytes per pixel is
    # less than any parameter set allocates (29 with only NUMBER, X/Y_IMAGE, FLUX_AUTO,
    # FLAGS and no weight; 36 for example/sextractor/default_exp.*).
    populate_heap(HEAP_BYTES_PER_PIXEL * image_pixels(image))
    with warnings.catch_warnings():
        # The fallback is told once in this job's log (below), not on the worker's stderr.
        warnings.simplefilter("ignore", DeblendRandomWarning)
        info = run_sextractor(
            image,
            output,
            os.path.expanduser(opts["DOT_SEX_FILE"]),
            param_file=opts["DOT_PARAM_FILE"] and os.path.expanduser(opts["DOT_PARAM_FILE"]),
            conv_file=opts["DOT_CONV_FILE"] and os.path.expanduser(opts["DOT_CONV_FILE"]),
            weight_path=files.get("weight"),
            flag_path=files.get("flag"),
            detection_path=files.get("detection image"),
            detection_weight_path=files.get("detection weight"),
            overrides=overrides,
            checkimages=checkimages,
            deblend_random_mode=opts["DEBLEND_RANDOM"].upper(),
        )
    if info["deblend_random_note"]:
        w_log.warning("%s", info["deblend_random_note"])
    w_log.info("%s: %d objects (background %.4g, rms %.4g, deblending random numbers %s) -> %s",
               os.path.basename(image), info["n_objects"], info["background"], info["rms"],
               info["deblend_random"], output)

    if opts["MAKE_POST_PROCESS"]:
        from shapepipe.modules.merge_headers import find_log_wcs
        from shapepipe.pipeline.run_log import resolve_module_dir

        log_wcs = find_log_wcs(opts["LOG_WCS"], lambda ref: resolve_module_dir(ref, run_dirs),
                               key=f"[{module_config_sec}] LOG_WCS")
        exposures = make_post_process(output, log_wcs, opts["WORLD_POSITION"],
                                      opts["CCD_SIZE"])
        w_log.info("post-process: %d epochs from %s", len(exposures), log_wcs)
    return None, None
