"""ngmix_runner: multi-epoch metacalibration shapes of the objects of a tile.

Inputs per job (tile number ``-xxx-yyy``), in this order (ShapePipe's patterns):
``tile_sexcat`` (.fits, tile catalogue with NUMBER, XWIN_WORLD, YWIN_WORLD), then the stamp
stores (.sqlite) ``image_vignet``, ``background_vignet``, ``galaxy_psf``, ``weight_vignet``,
``flag_vignet`` of vignetmaker_runner (MULTI-EPOCH) and psfex_interp_runner (MULTI-EPOCH).
Output: ``ngmix-<tile>.fits``, HDUs NOSHEAR, 1P, 1M, 2P, 2M, one row per selected tile object
(objects without a usable epoch included, flagged ``FLAG_NO_EPOCHS`` with NaN measurements).

Per epoch: image minus background, weight, flagged pixels masked, the PSF vignet, and the
local Jacobian of the CCD's WCS (from LOG_WCS) at the object. A bad epoch is dropped from
that object only; counts are in the job log.

Keys: LOG_WCS (log_exp_headers.sqlite: the file, its directory or a module reference),
MAG_ZP, PIXEL_SCALE, ID_OBJ_MIN, ID_OBJ_MAX (-1 = no limit), SEED, MODEL,
MAX_MASKED_FRACTION (epochs more masked than this are dropped; ShapePipe's 1/3), SEED_BY
(ID or POSITION), SEED_CELL and SEED_SCENE_SHEAR (simulations whose scene is sheared).

N_SPLIT: the runner supports splitting a tile into k jobs (``run_dirs["split"] = (part, k)``);
part i measures the i-th contiguous slice of the selected objects and :func:`combine`
concatenates the parts. An object's random numbers depend only on SEED and its id, so the
result does not depend on the split.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.modules.ngmix.gmix import MODELS
from shapepipe.modules.ngmix.tile import (
    MAX_MASKED_FRACTION,
    STORE_ROLES,
    combine_parts,
    process_tile,
)

KEYS = [
    Key("LOG_WCS", "str", default="last:merge_headers_runner",
        help="log_exp_headers.sqlite of merge_headers_runner: the file, its directory, or a "
             "module reference (merge_headers_runner, last:merge_headers_runner, <run>:<module>)"),
    Key("MAG_ZP", "float", default=30.0, help="magnitude zero point of the exposures"),
    Key("PIXEL_SCALE", "float", default=0.187,
        help="pixel scale (arcsec): width of the centre prior of the fits"),
    Key("ID_OBJ_MIN", "int", default=-1, help="smallest NUMBER measured (<= 0: no limit)"),
    Key("ID_OBJ_MAX", "int", default=-1, help="largest NUMBER measured (<= 0: no limit)"),
    Key("SEED", "int", default=0,
        help="random seed; with the object id it fixes the object's random numbers"),
    Key("SEED_BY", "str", default="ID", choices=["ID", "POSITION"],
        help="what fixes an object's random numbers with SEED: its NUMBER (ID), or its sky "
             "position on a SEED_CELL grid (POSITION: the same numbers in every simulation of "
             "the same sky, for paired shear-bias tests)"),
    Key("SEED_CELL", "float", default=1.0, help="grid cell (arcsec) of SEED_BY = POSITION"),
    Key("SEED_SCENE_SHEAR", "float_list", default=[],
        help="g1, g2, RA, Dec (deg): with SEED_BY = POSITION, positions are first mapped back "
             "through this scene shear about (RA, Dec), so that the +g and -g halves of a "
             "simulation with a sheared scene seed an object alike (empty: not used)"),
    Key("MODEL", "str", default="gauss", choices=sorted(MODELS), help="galaxy model"),
    Key("MASK_NEIGHBOURS", "bool", default=True,
        help="mask the pixels nearer to another catalogue object than to the object (its "
             "Voronoi cell, as DES's uberseg); metacal fills them (BAD_PIXEL_FILL)"),
    Key("BAD_PIXEL_FILL", "str", default="symmetric", choices=["model", "symmetric"],
        help="how metacal fills masked pixels: the galaxy's point-symmetric mirror where it "
             "is good, the model elsewhere (symmetric), or a Gaussian model fit everywhere "
             "(model: m -0.4% on noiseless stamps with 1% bad pixels; bench/RESULTS.md)"),
    Key("MAX_MASKED_FRACTION", "float", default=MAX_MASKED_FRACTION,
        help="epochs with a larger fraction of masked vignet pixels are dropped (ShapePipe: 1/3)"),
]

#: Input files of a job, in FILE_PATTERN order, by store role.
_INPUT_ROLES = ("catalogue", "image", "background", "psf", "weight", "flag")


def output_name(number):
    """``ngmix<number>.fits`` (``ngmix-270-283.fits``)."""
    return f"ngmix{number}.fits"


def combine(part_dirs, output_dir, file_number_string, w_log):
    """Concatenate the N_SPLIT parts' ``ngmix-<tile>.fits`` into ``output_dir`` (atomically).

    Parameters
    ----------
    part_dirs : list of str
        Output directories of parts 1..k, in part order.
    output_dir : str
        The module's output directory.
    file_number_string : str
        The tile number (``-270-283``).
    w_log : logging.Logger
    """
    name = output_name(file_number_string)
    paths = [os.path.join(d, name) for d in part_dirs]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"ngmix_runner combine: part output(s) missing: "
                                f"{', '.join(missing)}")
    n_rows = combine_parts(paths, os.path.join(output_dir, name))
    w_log.info("combined %d parts into %s: %d objects", len(paths), name, n_rows)


def validate(config, section):
    """Check SEED_SCENE_SHEAR before any job runs (one line naming the key)."""
    opts = config.read_keys(section, KEYS)
    value = opts["SEED_SCENE_SHEAR"]
    if value and (len(value) != 4 or not abs(complex(value[0], value[1])) < 1.0):
        raise ValueError(f"[{section}] SEED_SCENE_SHEAR = {', '.join(map(str, value))}: "
                         "expected g1, g2, RA, Dec (deg) with |g| < 1, or nothing")
    if value and opts["SEED_BY"].upper() != "POSITION":
        raise ValueError(f"[{section}] SEED_SCENE_SHEAR needs SEED_BY = POSITION, got "
                         f"SEED_BY = {opts['SEED_BY']}")


def _decorator_props():
    # ``combine=`` is the framework's N_SPLIT hook; older decorators (without it) still load
    # this runner, the function is then attached as an attribute below.
    import inspect

    if "combine" in inspect.signature(module_runner).parameters:
        return {"combine": combine}
    return {}


@module_runner(
    version="1.0",
    input_module=["sextractor_runner", "vignetmaker_runner", "psfex_interp_runner"],
    file_pattern=["tile_sexcat", "image_vignet", "background_vignet", "galaxy_psf",
                  "weight_vignet", "flag_vignet"],
    file_ext=[".fits", ".sqlite", ".sqlite", ".sqlite", ".sqlite", ".sqlite"],
    depends=["numpy", "astropy", "galsim", "sqlitedict"],
    executes=[],
    numbering_scheme="-000-000",
    run_method="parallel",
    keys=KEYS,
    validate=validate,
    **_decorator_props(),
)
def ngmix_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                 w_log):
    """Measure the shapes of one tile (or one N_SPLIT part of it)."""
    from shapepipe.modules.merge_headers import find_log_wcs, read_exp_wcs

    opts = config.read_keys(module_config_sec, KEYS)
    if len(input_file_list) != len(_INPUT_ROLES):
        raise ValueError(
            f"[{module_config_sec}] expected {len(_INPUT_ROLES)} input files "
            f"({', '.join(_INPUT_ROLES)}; FILE_PATTERN tile_sexcat, image_vignet, "
            f"background_vignet, galaxy_psf, weight_vignet, flag_vignet), got "
            f"{len(input_file_list)}: {', '.join(os.path.basename(p) for p in input_file_list)}")
    files = dict(zip(_INPUT_ROLES, input_file_list))

    def resolve(ref):
        from shapepipe.pipeline.run_log import resolve_module_dir

        return resolve_module_dir(ref, run_dirs)

    log_wcs = find_log_wcs(opts["LOG_WCS"], resolve, key=f"[{module_config_sec}] LOG_WCS")
    part, n_part = run_dirs.get("split", (1, 1))
    output = os.path.join(run_dirs["output"], output_name(file_number_string))
    w_log.info("LOG_WCS %s; SEED %d, MODEL %s; part %d of %d", log_wcs, opts["SEED"],
               opts["MODEL"], part, n_part)
    counts = process_tile(
        files["catalogue"], {role: files[role] for role in STORE_ROLES},
        lambda names: read_exp_wcs(log_wcs, names), output, seed=opts["SEED"],
        model=opts["MODEL"].lower(), zero_point=opts["MAG_ZP"],
        pixel_scale=opts["PIXEL_SCALE"], id_min=opts["ID_OBJ_MIN"], id_max=opts["ID_OBJ_MAX"],
        part=part, n_part=n_part, max_masked_fraction=opts["MAX_MASKED_FRACTION"], log=w_log,
        mask_neighbours=opts["MASK_NEIGHBOURS"], bad_pixel_fill=opts["BAD_PIXEL_FILL"],
        seed_by=opts["SEED_BY"].lower(), seed_cell=opts["SEED_CELL"],
        seed_scene_shear=tuple(opts["SEED_SCENE_SHEAR"]) or None)
    w_log.info("wrote %s: %d objects, %d measured, %d flagged, %d epochs", output,
               counts["objects"], counts["measured"], counts["flagged"], counts["epochs"])
    return None, None


if not hasattr(ngmix_runner, "combine"):
    ngmix_runner.combine = combine
