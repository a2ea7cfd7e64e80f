"""MULTI-EPOCH mode: every tile object's stamps on every exposure-CCD it falls on.

For each type (flag, image, weight, background...) one stamp store
``<type>_vignet<num>.sqlite`` (see :mod:`shapepipe.utils.stamp_store`)::

    {str(NUMBER): {"<exp>-<ccd>": {"VIGNET": float32 (S, S)}}}   or   "empty"

Memory does not grow with the number of objects beyond the catalogue: the CCDs are visited
one at a time (one image in memory), their stamps go straight into a temporary sqlite table
keyed by (object, epoch), and each store is then assembled object by object in id order and
renamed into place only when every store is complete.

Positions: world (e.g. XWIN_WORLD, YWIN_WORLD of the tile catalogue) -> CCD pixel with the CCD
WCS of ``log_exp_headers.sqlite`` (``all_world2pix(ra, dec, 0)``) -> ``stamp_corner``.
Pixels off the CCD: 0 for image/weight/background (weight 0 = unusable), 1 for flag.
A CCD whose header or files are missing or unreadable is skipped with a warning: its objects
lose that epoch, the job goes on.
"""

import contextlib
import os
import sqlite3
import tempfile

import numpy as np
from astropy.io import fits

from shapepipe.modules.vignetmaker.classic import objects_hdu, read_image
from shapepipe.modules.vignetmaker.cutting import cut_stamps, fill_value
from shapepipe.utils.atomic import atomic_path
from shapepipe.utils.pixels import stamp_corner
from shapepipe.utils.stamp_store import write_entries

#: Objects written per SQL statement into an output store (bounds memory to one batch).
_COMMIT_EVERY = 2000


def read_tile_epochs(cat_path, pos_params=("XWIN_WORLD", "YWIN_WORLD")):
    """Object ids, world positions and the ``EPOCH_<i>`` tables of a tile catalogue.

    Returns
    -------
    ids : numpy.ndarray of int64
    ra, dec : numpy.ndarray
        Degrees.
    epochs : list of (str, numpy.ndarray)
        ``(exposure name, CCD index per object row, -1 = not on that exposure)`` in HDU order.
    """
    with fits.open(cat_path, memmap=False) as hdul:
        data = objects_hdu(hdul, cat_path).data
        for name in ("NUMBER", *pos_params):
            if name not in data.columns.names:
                raise KeyError(f"{cat_path}: column {name} not found (POSITION_PARAMS / NUMBER)")
        ids = np.asarray(data["NUMBER"], dtype=np.int64)
        ra = np.asarray(data[pos_params[0]], dtype=float)
        dec = np.asarray(data[pos_params[1]], dtype=float)
        raw = [(h.name, h.data) for h in hdul if h.name.startswith("EPOCH_")]
        if not raw:
            raise ValueError(f"{cat_path}: no EPOCH_<i> HDU (run the tile sextractor with "
                             "MAKE_POST_PROCESS = True)")
        order = np.argsort(ids, kind="stable")
        epochs = []
        for _hdu_name, ep in raw:
            if ep is None or len(ep) == 0:
                continue
            exp_name = str(ep["EXP_NAME"][0]).strip()
            # EPOCH rows are matched to object rows by NUMBER (vectorised), not by position.
            num = np.asarray(ep["NUMBER"], dtype=np.int64)
            pos = np.searchsorted(ids[order], num)
            pos = np.clip(pos, 0, len(ids) - 1)
            found = ids[order][pos] == num
            ccd = np.full(len(ids), -1, dtype=np.int64)
            ccd[order[pos[found]]] = np.asarray(ep["CCD_N"], dtype=np.int64)[found]
            epochs.append((exp_name, ccd))
    return ids, ra, dec, epochs


def _find(dirs, name):
    for directory in dirs:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _exposure_wcs(exp_wcs, name):
    """CCD WCS list of one exposure, or None when its header is missing."""
    if callable(exp_wcs):
        try:
            return exp_wcs([name]).get(name)
        except KeyError:
            return None
    return exp_wcs.get(name)


def make_multi_epoch(cat_path, image_dirs, image_types, exp_wcs, output_dir, number,
                     pos_params=("XWIN_WORLD", "YWIN_WORLD"), stamp_size=51, log=None):
    """Write one multi-epoch stamp store per image type.

    Parameters
    ----------
    cat_path : str
        Tile catalogue with ``EPOCH_<i>`` HDUs.
    image_dirs : dict
        ``{type: [directories searched in order for <type>-<exp>-<ccd>.fits]}``.
    image_types : list of str
        Types (file name patterns), e.g. ``["flag", "image", "weight", "background"]``.
    exp_wcs : dict or callable
        ``{exp: [WCS or None per CCD]}``, or ``f(list of exp names) -> that dict`` (raising
        KeyError for an exposure missing from the headers file).
    output_dir : str
    number : str
        File number string of the tile.
    pos_params : sequence of 2 str
        World-position columns.
    stamp_size : int

    Returns
    -------
    dict
        ``objects``, ``empty`` (objects on no usable CCD), ``epochs`` (object-epochs written),
        ``skipped`` (list of ``(exp-ccd, reason)``), ``outputs`` (paths).
    """
    ids, ra, dec, epochs = read_tile_epochs(cat_path, pos_params)
    # rank[row] = position of the object in id order: stores are assembled in that order.
    order = np.argsort(ids, kind="stable")
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids))
    skipped = []
    n_epochs = 0
    fd, tmp_db = tempfile.mkstemp(prefix=f".vignets{number}.", suffix=".tmp.sqlite",
                                  dir=output_dir)
    os.close(fd)
    conn = sqlite3.connect(tmp_db)
    try:
        # A scratch file, deleted at the end: rollback journal in memory (the per-CCD
        # savepoints need one), no fsync.
        conn.execute("PRAGMA journal_mode = MEMORY")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("CREATE TABLE stamps (type INTEGER, rank INTEGER, seq INTEGER, "
                     "key TEXT, data BLOB)")
        seq = 0
        for exp_name, ccd_n in epochs:
            wcs_list = _exposure_wcs(exp_wcs, exp_name)
            for ccd in np.unique(ccd_n[ccd_n >= 0]):
                key = f"{exp_name}-{int(ccd)}"
                sel = np.flatnonzero(ccd_n == ccd)
                reason = _write_ccd(conn, wcs_list, int(ccd), key, sel, ra, dec, rank, seq,
                                    image_dirs, image_types, stamp_size)
                if reason:
                    skipped.append((key, reason))
                    if log:
                        log.warning("%s: %s; its %d objects lose this epoch", key, reason,
                                    len(sel))
                    continue
                n_epochs += len(sel)
                seq += 1
        conn.commit()
        conn.execute("CREATE INDEX by_object ON stamps (type, rank, seq)")
        outputs = [os.path.join(output_dir, f"{t}_vignet{number}.sqlite") for t in image_types]
        with contextlib.ExitStack() as stack:
            tmps = [stack.enter_context(atomic_path(out)) for out in outputs]
            for t_index, tmp in enumerate(tmps):
                n_empty = _assemble(conn, t_index, ids[order], tmp)
        conn.close()
    finally:
        with contextlib.suppress(Exception):
            conn.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_db)
    if log:
        log.info("%d objects, %d without any epoch, %d object-epochs; %d CCDs skipped",
                 len(ids), n_empty, n_epochs, len(skipped))
    return {"objects": len(ids), "empty": n_empty, "epochs": n_epochs, "skipped": skipped,
            "outputs": outputs}


def _write_ccd(conn, wcs_list, ccd, key, sel, ra, dec, rank, seq, image_dirs, image_types,
               stamp_size):
    """Stamps of the objects ``sel`` on one CCD, every type; returns a reason if skipped."""
    if wcs_list is None:
        return "exposure not in the headers file (LOG_WCS)"
    if ccd >= len(wcs_list) or wcs_list[ccd] is None:
        return "no WCS header for this CCD"
    paths = {t: _find(image_dirs[t], f"{t}-{key}.fits") for t in image_types}
    missing = [f"{t}-{key}.fits" for t, p in paths.items() if p is None]
    if missing:
        return f"file(s) not found: {', '.join(missing)}"
    x, y = wcs_list[ccd].all_world2pix(ra[sel], dec[sel], 0)
    x0, y0, _, _ = stamp_corner(np.asarray(x), np.asarray(y), stamp_size)
    # One savepoint per CCD: an unreadable file of any type drops the whole epoch, so the
    # stores of the different types always hold the same epochs.
    conn.execute("SAVEPOINT ccd")
    try:
        for t_index, t in enumerate(image_types):
            image, _ = read_image(paths[t])
            stamps = cut_stamps(image, x0, y0, stamp_size, fill=fill_value(t))
            del image
            conn.executemany(
                "INSERT INTO stamps VALUES (?, ?, ?, ?, ?)",
                ((t_index, int(rank[r]), seq, key, stamps[k].tobytes())
                 for k, r in enumerate(sel)))
    except (OSError, ValueError, TypeError) as exc:
        conn.execute("ROLLBACK TO ccd")
        conn.execute("RELEASE ccd")
        return f"unreadable file ({type(exc).__name__}: {exc})"
    conn.execute("RELEASE ccd")
    return None


def _assemble(conn, t_index, sorted_ids, path):
    """Write one store from the temporary table, objects in id order; returns #empty."""
    counts = {"empty": 0}

    def entries():
        cursor = conn.execute("SELECT rank, key, data FROM stamps WHERE type = ? "
                              "ORDER BY rank, seq", (t_index,))
        row = cursor.fetchone()
        for k, obj_id in enumerate(sorted_ids):
            entry = {}
            while row is not None and row[0] == k:
                stamp = np.frombuffer(row[2], dtype=np.float32)
                side = int(round(np.sqrt(stamp.size)))
                entry[row[1]] = {"VIGNET": stamp.reshape(side, side)}
                row = cursor.fetchone()
            if not entry:
                counts["empty"] += 1
            yield str(int(obj_id)), entry or "empty"

    write_entries(path, entries(), batch=_COMMIT_EVERY)
    return counts["empty"]
