"""From a tiled catalogue to HDF5 stamp stores: grouping, parallel tiles, STATUS bookkeeping.

Tiles with pending objects (STATUS neither ``done`` nor ``no_tile``) are sorted by their
number of pending objects (largest first, then by name) and grouped ``tiles_per_output`` at a
time into outputs ``<prefix>_<NNN>.hdf5``; numbering continues after the outputs already in
the directory, so a rerun never overwrites earlier stores. A tile with any pending object is
processed whole (its group then holds all its objects).

Tiles are processed by ``processes`` worker processes; only the calling process touches the
catalogue (one writer). With ``mark_each_tile`` the objects of a tile are marked ``done`` or
``error: <reason>`` in a durable journal as soon as the tile's part file is written, and the
catalogue itself is rewritten atomically after the tile too -- unless rewriting is slow (a
huge catalogue): rewrites are then spaced so that they cost at most ~10% of the run time (and
at least ``commit_interval`` seconds apart); the journal covers the gap and is replayed by the
next read.
"""

import logging
import multiprocessing
import os
import re
import time

import numpy as np

from shapepipe.modules.des_stamp import catalog as catmod
from shapepipe.modules.des_stamp.errors import DesStampError
from shapepipe.modules.des_stamp.extract import extract_tile
from shapepipe.modules.des_stamp.store import COMPRESSIONS, assemble, parts_dir, write_part

_LOG = logging.getLogger(__name__)


def parse_bands(bands):
    """``"grizY"`` or ``"g,r,i,z,Y"`` or a list -> list of band names."""
    if isinstance(bands, str):
        bands = bands.split(",") if "," in bands else list(bands.strip())
    bands = [b.strip() for b in bands if b.strip()]
    if not bands:
        raise DesStampError("no bands given (expected e.g. grizY)")
    if len(set(bands)) != len(bands):
        raise DesStampError(f"bands {bands}: a band is repeated")
    return bands


def existing_numbers(out_dir, prefix):
    """Output numbers already used in ``out_dir`` by ``<prefix>_<NNN>.hdf5`` or ``.parts``."""
    pat = re.compile(re.escape(prefix) + r"_(\d{3,})\.(?:hdf5|parts)$")
    found = []
    if os.path.isdir(out_dir):
        for name in os.listdir(out_dir):
            m = pat.match(name)
            if m:
                found.append(int(m.group(1)))
    return found


def plan_groups(tilenames, pending, tiles_per_output, n_outputs=None):
    """Group pending tiles into outputs.

    Parameters
    ----------
    tilenames : array of str
        TILENAME per catalogue row.
    pending : array of bool
        Rows still to do.
    tiles_per_output : int
        Tiles per output file.
    n_outputs : int, optional
        At most this many outputs (the rest stays pending for a later run).

    Returns
    -------
    list of list of (tile, rows)
        One list per output, tiles largest first; ``rows`` are all catalogue rows of the tile.
    """
    if tiles_per_output < 1:
        raise DesStampError(f"tiles per output must be >= 1, got {tiles_per_output}")
    names = np.asarray(tilenames).astype(str)
    tiles, inverse = np.unique(names, return_inverse=True)
    n_pending = np.bincount(inverse, weights=pending, minlength=tiles.size)
    todo = np.nonzero(n_pending > 0)[0]
    # Largest first; ties by name for a deterministic plan.
    todo = todo[np.lexsort((tiles[todo], -n_pending[todo]))]
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(tiles.size))
    ends = np.searchsorted(inverse[order], np.arange(tiles.size), side="right")
    groups = []
    for g in range(0, todo.size, tiles_per_output):
        if n_outputs is not None and len(groups) >= n_outputs:
            break
        chunk = todo[g:g + tiles_per_output]
        groups.append([(str(tiles[t]), order[starts[t]:ends[t]]) for t in chunk])
    return groups


def _work(task):
    """Process one tile in a worker: cut, write the part; returns statuses (never raises)."""
    tile, output, rows, ra, dec, ids, opts, compression = task
    try:
        res = extract_tile(tile, ra, dec, ids, **opts)
        write_part(output, tile, res, opts["bands"], opts["dim"], compression)
        status = np.where(res["ok"], catmod.ST_DONE,
                          np.char.add("error: ", res["reason"].astype(str))).astype(object)
        return tile, output, rows, status, int(res["ok"].sum()), ""
    except DesStampError as exc:
        msg = str(exc)
    except Exception as exc:  # a tile must not take its neighbours down; keep the reason
        msg = f"{type(exc).__name__}: {exc}"
    status = np.full(len(rows), "error: " + msg.replace("\n", " "), dtype=object)
    return tile, output, rows, status, 0, msg


def make_stamps(catalog_path, tile_dir, out_dir, prefix, tiles_per_output=1, n_outputs=None,
                dimension=100, bands="grizY", template="{tile}_{band}.fits", image_hdu=1,
                mask_hdu=2, processes=1, status_path=None, mark_each_tile=True,
                commit_interval=0.0, compression="gzip", log=None):
    """Make HDF5 stamp stores for the pending objects of a tiled catalogue.

    Parameters
    ----------
    catalog_path : str
        CSV catalogue with RA, DEC, COADD_OBJECT_ID, TILENAME, STATUS.
    tile_dir : str
        Directory of the tile files.
    out_dir : str
        Where ``<prefix>_<NNN>.hdf5`` are written (created if needed).
    prefix : str
        Output name prefix.
    tiles_per_output : int
        Tiles per HDF5 file.
    n_outputs : int, optional
        Make at most this many files (None: as many as needed).
    dimension : int
        Stamp size (pixels).
    bands : str or list
        Bands, e.g. ``grizY``.
    template : str
        Tile file-name template with ``{tile}`` and ``{band}``.
    image_hdu, mask_hdu : int
        HDU numbers of the image and mask (mask < 0: none).
    processes : int
        Worker processes (tiles in parallel).
    status_path : str, optional
        Catalogue file that receives the STATUS updates (default: ``catalog_path`` itself).
    mark_each_tile : bool
        Journal statuses as each tile finishes (True) or only write them at the end.
    commit_interval : float
        Minimum seconds between atomic rewrites of the catalogue while running (0: after
        every tile, as long as rewriting costs under ~10% of the time).
    compression : {"gzip", "lzf", "none"}
        Filter of the stamp pixels (gzip level 1 + shuffle is readable everywhere; lzf is
        about 3x faster to write but needs h5py or the lzf plugin to read).
    log : logging.Logger, optional

    Returns
    -------
    dict
        ``outputs`` (paths written), ``tiles`` (processed), ``done`` and ``error`` (object
        counts), ``tile_errors`` (tile -> reason).
    """
    log = log or _LOG
    bands = parse_bands(bands)
    dimension = int(dimension)
    if dimension < 1:
        raise DesStampError(f"stamp dimension must be >= 1, got {dimension}")
    if not os.path.isdir(tile_dir):
        raise DesStampError(f"tile directory not found: {tile_dir}")
    status_path = status_path or catalog_path
    if compression not in COMPRESSIONS:
        raise DesStampError(f"compression {compression!r}: expected one of "
                            f"{', '.join(COMPRESSIONS)}")
    os.makedirs(out_dir, exist_ok=True)

    cat = catmod.read_catalog(catalog_path, require=catmod.REQUIRED + ("TILENAME",))
    if status_path != catalog_path and os.path.exists(catmod.journal_path(status_path)):
        catmod.apply_journal(cat, catmod.journal_path(status_path))
    status = cat.ensure("STATUS", catmod.ST_NEW)
    tilenames = cat.col("TILENAME")
    ids = cat.col("COADD_OBJECT_ID")

    # Parts left by an interrupted run are complete tiles: store them first.
    for num in sorted(existing_numbers(out_dir, prefix)):
        out = os.path.join(out_dir, f"{prefix}_{num:03d}.hdf5")
        if os.path.isdir(parts_dir(out)):
            got = assemble(out, bands, dimension)
            log.info("recovered %d tile(s) of an interrupted run into %s", len(got), out)

    st = status.astype(str)
    on_tile = (tilenames != catmod.NO_TILE) & (tilenames != "")
    n_unassigned = int((tilenames == "").sum())
    if n_unassigned:
        log.warning("%s: %d object(s) have an empty TILENAME and are skipped; assign tiles "
                    "first (scripts/des_tilemaker.py or TILE_GEOMETRY)", catalog_path, n_unassigned)
    pending = on_tile & (st != catmod.ST_DONE) & (st != catmod.ST_NO_TILE)
    groups = plan_groups(tilenames, pending, tiles_per_output, n_outputs)
    ra, dec = cat.radec()
    first = max(existing_numbers(out_dir, prefix) + [0]) + 1
    opts = {"tile_dir": tile_dir, "bands": bands, "dim": dimension, "template": template,
            "image_hdu": image_hdu, "mask_hdu": mask_hdu}
    tasks, outputs, left = [], [], {}
    for g, group in enumerate(groups):
        out = os.path.join(out_dir, f"{prefix}_{first + g:03d}.hdf5")
        outputs.append((out, [t for t, _ in group]))
        left[out] = len(group)
        for tile, rows in group:
            tasks.append((tile, out, rows, ra[rows], dec[rows], ids[rows], opts, compression))
    log.info("%d pending object(s) on %d tile(s) -> %d output(s)",
             int(pending.sum()), len(tasks), len(outputs))

    summary = {"outputs": [], "tiles": [], "done": 0, "error": 0, "tile_errors": {}}
    last_commit = time.monotonic()
    commit_cost = 0.0
    tile_order = {out: tiles for out, tiles in outputs}

    def handle(result):
        nonlocal last_commit, commit_cost
        tile, out, rows, new_status, n_ok, msg = result
        status[rows] = new_status
        summary["tiles"].append(tile)
        summary["done"] += n_ok
        summary["error"] += len(rows) - n_ok
        if msg:
            summary["tile_errors"][tile] = msg
            log.warning("tile %s failed: %s", tile, msg)
        else:
            log.info("tile %s: %d stamp(s), %d object error(s)", tile, n_ok, len(rows) - n_ok)
        if mark_each_tile:
            catmod.append_journal(status_path, rows, ids[rows], new_status)
        left[out] -= 1
        if left[out] == 0:
            if assemble(out, bands, dimension, tile_order[out]):
                summary["outputs"].append(out)
                log.info("wrote %s", out)
            elif os.path.isdir(parts_dir(out)):
                os.rmdir(parts_dir(out))
        now = time.monotonic()
        if mark_each_tile and now - last_commit >= max(commit_interval, 10 * commit_cost):
            catmod.commit_statuses(cat, status_path)
            last_commit = time.monotonic()
            commit_cost = last_commit - now
    commit_cost = 0.0

    if processes > 1 and len(tasks) > 1:
        with multiprocessing.get_context().Pool(min(processes, len(tasks))) as pool:
            for result in pool.imap_unordered(_work, tasks):
                handle(result)
    else:
        for task in tasks:
            handle(_work(task))
    catmod.commit_statuses(cat, status_path)
    summary["outputs"].sort()
    return summary
