"""des_stamp_runner: multi-band postage stamps of DES-like tiles into HDF5 stores.

One job per target catalogue file (default ``targets.csv``, or chunks ``targets-001.csv`` ...
with the default numbering ``RE:(-\\d+)?``). A job groups the catalogue's pending tiles,
TILES_PER_OUTPUT per file, into ``<OUTPUT_PREFIX><number>_001.hdf5`` ... (tiles largest
first), cutting the tiles with PROCESSES worker processes.

STATUS bookkeeping is parallel-safe because each catalogue file belongs to exactly one job
(one writer): the job writes the catalogue with its STATUS column (``done`` /
``error: <reason>`` / ``no_tile``) as ``<OUTPUT_PREFIX><number>_catalog.csv`` in its output
and, with UPDATE_CATALOG, replaces the input catalogue atomically at the end of the job, so a
later run skips what is done. (For per-tile marking during a long run, use
``scripts/catalog_to_stamps.py``; in the pipeline a job's outputs only exist once it succeeds,
so marking earlier would record stamps that may never be committed.) With TILE_GEOMETRY the
tiles are assigned first (as ``scripts/des_tilemaker.py`` does).
"""

import os
import shutil

from shapepipe.modules.des_stamp.catalog import read_catalog, write_catalog
from shapepipe.modules.des_stamp.driver import make_stamps
from shapepipe.modules.des_stamp.tiles import read_geometry, tile_catalog
from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.utils.atomic import atomic_path

KEYS = [
    Key("TILE_DIR", "dir", help="directory of the tile files"),
    Key("TILE_TEMPLATE", "str", default="{tile}_{band}.fits",
        help="tile file name with {tile} and {band}; <name>.fz is also found"),
    Key("BANDS", "str", default="grizY", help="bands, e.g. grizY or g,r,i,z,Y"),
    Key("DIMENSION", "int", default=100, help="stamp size in pixels"),
    Key("IMAGE_HDU", "int", default=1, help="HDU number of the image in a tile file"),
    Key("MASK_HDU", "int", default=2, help="HDU number of the mask (-1: no mask)"),
    Key("TILES_PER_OUTPUT", "int", default=10, help="tiles per HDF5 file"),
    Key("N_OUTPUTS", "int", default=0, help="at most this many HDF5 files per job (0: all)"),
    Key("PROCESSES", "int", default=1, help="worker processes per job (tiles in parallel)"),
    Key("COMPRESSION", "str", default="gzip", choices=["gzip", "lzf", "none"],
        help="HDF5 filter of the stamp pixels (gzip: portable; lzf: faster, h5py only)"),
    Key("OUTPUT_PREFIX", "str", default="des_stamps", help="output file name prefix"),
    Key("TILE_GEOMETRY", "str", default="",
        help="tile geometry table (FITS or CSV); if set, TILENAME is (re)assigned first"),
    Key("UPDATE_CATALOG", "bool", default=True,
        help="write the STATUS updates back into the input catalogue (atomically)"),
]


def validate(config, section):
    """Check the section before any job runs: sizes, bands and the geometry table."""
    from shapepipe.modules.des_stamp.driver import parse_bands

    opts = config.read_keys(section, KEYS)
    where = f"[{section}]"
    for key in ("DIMENSION", "TILES_PER_OUTPUT", "PROCESSES"):
        if opts[key] < 1:
            raise ValueError(f"{where} {key} = {opts[key]}: expected a positive integer")
    if opts["N_OUTPUTS"] < 0:
        raise ValueError(f"{where} N_OUTPUTS = {opts['N_OUTPUTS']}: expected >= 0 (0: all)")
    if "{tile}" not in opts["TILE_TEMPLATE"] or "{band}" not in opts["TILE_TEMPLATE"]:
        raise ValueError(f"{where} TILE_TEMPLATE = {opts['TILE_TEMPLATE']}: expected a file "
                         "name containing {tile} and {band}")
    try:
        parse_bands(opts["BANDS"])
        if opts["TILE_GEOMETRY"]:
            read_geometry(opts["TILE_GEOMETRY"])
    except ValueError as exc:
        raise ValueError(f"{where} {exc}") from None


@module_runner(
    version="1.0",
    file_pattern=["targets"],
    file_ext=[".csv"],
    depends=["numpy", "astropy", "h5py"],
    executes=[],
    numbering_scheme=r"RE:(-\d+)?",
    run_method="parallel",
    keys=KEYS,
    validate=validate,
)
def des_stamp_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                     w_log):
    """Cut the stamps of one target catalogue's objects into HDF5 stores."""
    opts = config.read_keys(module_config_sec, KEYS)
    where = f"[{module_config_sec}]"
    validate(config, module_config_sec)  # also when called outside shapepipe_run
    (catalog_path,) = input_file_list
    out_dir = run_dirs["output"]
    prefix = f"{opts['OUTPUT_PREFIX']}{file_number_string}"
    work_cat = os.path.join(out_dir, f"{prefix}_catalog.csv")

    cat = read_catalog(catalog_path)
    if opts["TILE_GEOMETRY"]:
        if not os.path.isfile(opts["TILE_GEOMETRY"]):
            raise ValueError(f"{where} TILE_GEOMETRY = {opts['TILE_GEOMETRY']}: file not found")
        n_none = tile_catalog(cat, read_geometry(opts["TILE_GEOMETRY"]))
        w_log.info("assigned tiles: %d of %d objects on no tile", n_none, len(cat))
    write_catalog(cat, work_cat)

    summary = make_stamps(
        work_cat, opts["TILE_DIR"], out_dir, prefix,
        tiles_per_output=opts["TILES_PER_OUTPUT"], n_outputs=opts["N_OUTPUTS"] or None,
        dimension=opts["DIMENSION"], bands=opts["BANDS"], template=opts["TILE_TEMPLATE"],
        image_hdu=opts["IMAGE_HDU"], mask_hdu=opts["MASK_HDU"], processes=opts["PROCESSES"],
        mark_each_tile=False, compression=opts["COMPRESSION"].lower(), log=w_log,
    )
    if opts["UPDATE_CATALOG"]:
        with atomic_path(catalog_path) as tmp:
            shutil.copyfile(work_cat, tmp)
        w_log.info("updated STATUS in %s", catalog_path)
    msg = (f"{len(summary['tiles'])} tile(s), {summary['done']} stamp(s), "
           f"{summary['error']} object error(s); {len(summary['outputs'])} file(s)")
    w_log.info(msg)
    errors = "".join(f"tile {t}: {m}\n" for t, m in summary["tile_errors"].items())
    return msg + "\n", errors or None
