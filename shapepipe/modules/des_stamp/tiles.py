"""Tile geometry tables and vectorised tile assignment.

A geometry table has one row per tile with ``TILENAME`` and the bounds of the tile's unique
area ``URAMIN, URAMAX, UDECMIN, UDECMAX`` (degrees); it may be a FITS table or a CSV file.

Ownership rule (so that every point belongs to at most one tile): a tile owns the points with
``URAMIN <= RA < URAMAX`` and ``UDECMIN <= DEC < UDECMAX`` -- lower bounds inclusive, upper
bounds exclusive. A tile whose ``URAMIN > URAMAX`` crosses RA = 0/360 and owns
``RA >= URAMIN or RA < URAMAX``. Object RAs are first reduced to [0, 360). The only exception
to "upper exclusive" is the north pole: a tile with ``UDECMAX >= 90`` also owns DEC = 90. If a
table's unique areas overlap, the first matching row of the table wins.

The search uses a sparse grid of cells about one tile wide: each tile is registered in the
cells its bounds touch, each object looks up the few candidate tiles of its cell, and the
exact test above is applied to an (objects x candidates) array -- no loop over objects.
"""

import os

import numpy as np

from shapepipe.modules.des_stamp.errors import DesStampError

GEOMETRY_COLUMNS = ("TILENAME", "URAMIN", "URAMAX", "UDECMIN", "UDECMAX")


def read_geometry(path):
    """Read a tile geometry table (FITS table or CSV).

    Parameters
    ----------
    path : str
        ``.fits``/``.fit``/``.fits.gz`` table (first table HDU) or comma-separated file with a
        header line.

    Returns
    -------
    dict
        ``TILENAME`` (array of str) and ``URAMIN``, ``URAMAX``, ``UDECMIN``, ``UDECMAX`` (float
        arrays); other columns of the table are ignored.
    """
    if not os.path.exists(path):
        raise DesStampError(f"{path}: tile geometry table not found")
    low = path.lower()
    if low.endswith((".fits", ".fit", ".fits.gz", ".fts")):
        from astropy.io import fits

        with fits.open(path) as hdul:
            hdu = next((h for h in hdul if isinstance(h, (fits.BinTableHDU, fits.TableHDU))), None)
            if hdu is None:
                raise DesStampError(f"{path}: no table HDU in the geometry file")
            data = hdu.data
            names = {n.upper(): n for n in data.columns.names}
            raw = {}
            for key in GEOMETRY_COLUMNS:
                if key not in names:
                    raise DesStampError(
                        f"{path}: geometry table has no column {key} "
                        f"(needs {', '.join(GEOMETRY_COLUMNS)})"
                    )
                raw[key] = np.asarray(data[names[key]])
    else:
        from shapepipe.modules.des_stamp.catalog import read_catalog

        cat = read_catalog(path, require=GEOMETRY_COLUMNS, replay_journal=False)
        raw = {key: cat.col(key) for key in GEOMETRY_COLUMNS}
    out = {"TILENAME": np.array([_as_str(t).strip() for t in raw["TILENAME"]], dtype=object)}
    for key in GEOMETRY_COLUMNS[1:]:
        try:
            out[key] = np.asarray(raw[key], dtype=float)
        except ValueError:
            raise DesStampError(f"{path}: column {key} has non-numeric values") from None
        if not np.all(np.isfinite(out[key])):
            raise DesStampError(f"{path}: column {key} has non-finite values")
    if np.any(out["UDECMIN"] >= out["UDECMAX"]):
        i = int(np.argmax(out["UDECMIN"] >= out["UDECMAX"]))
        raise DesStampError(
            f"{path}: tile {out['TILENAME'][i]}: UDECMIN {out['UDECMIN'][i]} >= UDECMAX "
            f"{out['UDECMAX'][i]}"
        )
    return out


def _as_str(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _ra_intervals(uramin, uramax):
    """Split tiles into non-wrapping RA intervals in [0, 360]: (tile index, lo, hi)."""
    lo = np.mod(uramin, 360.0)
    hi = np.mod(uramax, 360.0)
    # URAMAX = 360 (or 0 on a wrapping tile) must stay the end of the circle, not 0.
    hi = np.where((hi == 0.0) & (uramax != uramin), 360.0, hi)
    wrap = lo > hi
    idx = np.arange(len(lo))
    return (
        np.concatenate([idx[~wrap], idx[wrap], idx[wrap]]),
        np.concatenate([lo[~wrap], lo[wrap], np.zeros(wrap.sum())]),
        np.concatenate([hi[~wrap], np.full(wrap.sum(), 360.0), hi[wrap]]),
    )


def assign_tiles(ra, dec, geometry):
    """Find the tile owning each position.

    Parameters
    ----------
    ra, dec : array_like
        Positions in degrees.
    geometry : dict
        As returned by :func:`read_geometry`.

    Returns
    -------
    numpy.ndarray of int
        Row of the owning tile in ``geometry``, -1 for positions on no tile (and for
        non-finite positions).
    """
    ra = np.mod(np.asarray(ra, dtype=float), 360.0)
    dec = np.asarray(dec, dtype=float)
    nobj = ra.size
    result = np.full(nobj, -1, dtype=np.int64)
    ntile = len(geometry["TILENAME"])
    if nobj == 0 or ntile == 0:
        return result

    uramin = np.mod(geometry["URAMIN"], 360.0)
    uramax = np.mod(geometry["URAMAX"], 360.0)
    udecmin = geometry["UDECMIN"]
    udecmax = geometry["UDECMAX"]

    tidx, lo, hi = _ra_intervals(geometry["URAMIN"], geometry["URAMAX"])
    # Cell size ~ the median tile extent: a handful of candidates per cell.
    cell_dec = float(np.median(udecmax - udecmin))
    cell_ra = float(np.median(np.maximum(hi - lo, 1e-9)))
    dec0 = float(udecmin.min())
    n_ra = max(1, int(np.ceil(360.0 / cell_ra)))
    # Tiles much larger than the median (polar caps) must not register in millions of cells.
    cell_ra = max(cell_ra, 360.0 / 100000)
    n_ra = max(1, int(np.ceil(360.0 / cell_ra)))

    r0 = np.floor(lo / cell_ra).astype(np.int64)
    r1 = np.minimum(np.floor(hi / cell_ra).astype(np.int64), n_ra - 1)
    d0 = np.floor((udecmin[tidx] - dec0) / cell_dec).astype(np.int64)
    d1 = np.floor((udecmax[tidx] - dec0) / cell_dec).astype(np.int64)
    nr = r1 - r0 + 1
    nd = d1 - d0 + 1
    ncell = nr * nd
    # Enumerate (cell, tile) pairs without a Python loop over tiles.
    owner = np.repeat(np.arange(len(tidx)), ncell)
    k = np.arange(ncell.sum()) - np.repeat(np.cumsum(ncell) - ncell, ncell)
    cell_r = r0[owner] + k % nr[owner]
    cell_d = d0[owner] + k // nr[owner]
    cell_id = cell_d * n_ra + cell_r
    pair_tile = tidx[owner]
    order = np.lexsort((pair_tile, cell_id))  # candidates in table order within a cell
    cell_id = cell_id[order]
    pair_tile = pair_tile[order]
    # Drop duplicate (cell, tile) pairs from wrapping tiles' two intervals.
    keep = np.ones(cell_id.size, bool)
    keep[1:] = (cell_id[1:] != cell_id[:-1]) | (pair_tile[1:] != pair_tile[:-1])
    cell_id = cell_id[keep]
    pair_tile = pair_tile[keep]
    ucell, start, count = np.unique(cell_id, return_index=True, return_counts=True)
    kmax = int(count.max())
    cand = np.full((ucell.size, kmax), -1, dtype=np.int64)
    slot = np.arange(cell_id.size) - np.repeat(start, count)
    cand[np.repeat(np.arange(ucell.size), count), slot] = pair_tile

    good = np.isfinite(ra) & np.isfinite(dec)
    obj_r = np.minimum(np.floor(np.where(good, ra, 0.0) / cell_ra).astype(np.int64), n_ra - 1)
    obj_d = np.floor((np.where(good, dec, dec0) - dec0) / cell_dec).astype(np.int64)
    obj_cell = obj_d * n_ra + obj_r
    pos = np.searchsorted(ucell, obj_cell)
    pos_c = np.minimum(pos, ucell.size - 1)
    found = good & (ucell[pos_c] == obj_cell)
    sel = np.nonzero(found)[0]
    if sel.size == 0:
        return result
    c = cand[pos_c[sel]]  # (n, kmax), -1 padded
    valid = c >= 0
    t = np.where(valid, c, 0)
    r = ra[sel, None]
    d = dec[sel, None]
    tmin, tmax = uramin[t], uramax[t]
    wrap = tmin > tmax
    in_ra = np.where(wrap, (r >= tmin) | (r < tmax), (r >= tmin) & (r < tmax))
    # A tile spanning the full circle (URAMIN == URAMAX mod 360, e.g. 0..360) owns every RA.
    in_ra |= (tmin == tmax) & (geometry["URAMAX"][t] != geometry["URAMIN"][t])
    in_dec = (d >= udecmin[t]) & ((d < udecmax[t]) | ((udecmax[t] >= 90.0) & (d >= 90.0)))
    hit = valid & in_ra & in_dec
    first = np.argmax(hit, axis=1)
    any_hit = hit[np.arange(sel.size), first]
    result[sel[any_hit]] = c[np.arange(sel.size), first][any_hit]
    return result


def tile_catalog(cat, geometry):
    """Fill TILENAME and STATUS of a catalogue in place.

    Objects on no tile get ``TILENAME = NONE`` and ``STATUS = no_tile`` and are kept. An
    object whose tile is unchanged keeps its status (so a rerun does not forget ``done``);
    other objects get ``new``.

    Returns
    -------
    int
        Number of objects on no tile.
    """
    from shapepipe.modules.des_stamp.catalog import NO_TILE, ST_NEW, ST_NO_TILE

    ra, dec = cat.radec()
    idx = assign_tiles(ra, dec, geometry)
    names = np.where(idx >= 0, geometry["TILENAME"][np.maximum(idx, 0)], NO_TILE).astype(object)
    old_tile = cat.ensure("TILENAME", NO_TILE)
    old_status = cat.ensure("STATUS", ST_NEW)
    status = np.where(
        (names == old_tile) & (old_status != "") & (old_status != ST_NO_TILE), old_status, ST_NEW
    ).astype(object)
    status[idx < 0] = ST_NO_TILE
    old_tile[:] = names
    old_status[:] = status
    return int((idx < 0).sum())
