"""The comma-separated target catalogue and its STATUS bookkeeping.

Columns: ``RA``, ``DEC`` (degrees), ``COADD_OBJECT_ID`` (any label), ``TILENAME``, ``STATUS``
(matched case-insensitively; other columns are kept verbatim). STATUS values: ``new``,
``done``, ``no_tile`` and ``error: <reason>``.

Rewrites are atomic (temporary file then rename), so a reader never sees a truncated
catalogue and no row is ever lost. Between two rewrites, per-tile status changes are appended
to a journal ``<catalogue>.journal`` (one ``write`` + ``fsync`` per tile); the journal is
replayed by :func:`read_catalog` so an interrupted run loses no status.
"""

import csv
import os

import numpy as np

from shapepipe.modules.des_stamp.errors import DesStampError
from shapepipe.utils.atomic import atomic_path

REQUIRED = ("RA", "DEC", "COADD_OBJECT_ID")
NO_TILE = "NONE"
ST_NEW = "new"
ST_DONE = "done"
ST_NO_TILE = "no_tile"


class Catalog:
    """A catalogue held as one string array per column (values round-trip exactly).

    Parameters
    ----------
    fieldnames : list of str
        Column names as written in the file header.
    columns : dict
        Column name -> ``numpy`` array of ``str`` (object dtype).
    path : str, optional
        Where it was read from.
    """

    def __init__(self, fieldnames, columns, path=None):
        self.fieldnames = list(fieldnames)
        self.columns = columns
        self.path = path

    def __len__(self):
        return len(self.columns[self.fieldnames[0]]) if self.fieldnames else 0

    def name(self, key):
        """Actual column name of ``key`` (case-insensitive), or None."""
        up = key.upper()
        for name in self.fieldnames:
            if name.strip().upper() == up:
                return name
        return None

    def col(self, key):
        """The string array of column ``key`` (case-insensitive); raises if absent."""
        name = self.name(key)
        if name is None:
            raise DesStampError(
                f"{self.path or '<catalogue>'}: no column {key} "
                f"(columns: {', '.join(self.fieldnames)})"
            )
        return self.columns[name]

    def ensure(self, key, fill):
        """Return column ``key``, creating it filled with ``fill`` if absent."""
        name = self.name(key)
        if name is None:
            self.fieldnames.append(key)
            self.columns[key] = np.full(len(self), fill, dtype=object)
            name = key
        return self.columns[name]

    def radec(self):
        """RA and DEC as float arrays; a non-numeric value is an error naming its row."""
        out = []
        for key in ("RA", "DEC"):
            text = self.col(key)
            try:
                out.append(np.asarray(text, dtype=float) if len(text) else np.zeros(0))
            except ValueError:
                bad = next(i for i, v in enumerate(text) if not _is_float(v))
                raise DesStampError(
                    f"{self.path or '<catalogue>'}: row {bad + 2}: {key} = {text[bad]!r} "
                    "is not a number"
                ) from None
        return out[0], out[1]


def _is_float(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def journal_path(path):
    """Name of the status journal of catalogue ``path``."""
    return f"{path}.journal"


def read_catalog(path, require=REQUIRED, replay_journal=True):
    """Read a comma-separated catalogue.

    Parameters
    ----------
    path : str
        The CSV file (header line then one row per object).
    require : sequence of str
        Columns that must be present (case-insensitive).
    replay_journal : bool
        Apply status changes left in ``<path>.journal`` by an interrupted run.

    Returns
    -------
    Catalog
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            try:
                fieldnames = [f.strip() for f in next(reader)]
            except StopIteration:
                raise DesStampError(f"{path}: empty file, expected a CSV header line") from None
            rows = list(reader)
    except OSError as exc:
        raise DesStampError(f"{path}: cannot read catalogue ({exc.strerror})") from None
    rows = [r for r in rows if r]  # tolerate blank lines (a trailing newline, hand edits)
    nfield = len(fieldnames)
    bad = [i for i, r in enumerate(rows) if len(r) != nfield]
    if bad:
        raise DesStampError(
            f"{path}: row {bad[0] + 2} has {len(rows[bad[0]])} fields, expected {nfield} "
            f"({', '.join(fieldnames)})"
        )
    if rows:
        table = np.array(rows, dtype=object)
        columns = {name: table[:, i] for i, name in enumerate(fieldnames)}
    else:
        columns = {name: np.zeros(0, dtype=object) for name in fieldnames}
    cat = Catalog(fieldnames, columns, path)
    for key in require:
        cat.col(key)
    if replay_journal and os.path.exists(journal_path(path)):
        apply_journal(cat, journal_path(path))
    return cat


def write_catalog(cat, path):
    """Write ``cat`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(cat.fieldnames)
            if len(cat):
                writer.writerows(zip(*(cat.columns[n] for n in cat.fieldnames)))


def append_journal(path, rows, ids, statuses):
    """Append status changes to the journal of catalogue ``path``, durably.

    One ``write`` and one ``fsync`` per call, so a tile's statuses are recorded together.

    Parameters
    ----------
    path : str
        The catalogue (the journal is ``<path>.journal``).
    rows : array of int
        Row numbers (0-based, header excluded).
    ids : array of str
        COADD_OBJECT_ID of those rows, checked when replaying.
    statuses : array of str
        New STATUS values.
    """
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(zip(rows, ids, statuses))
    fd = os.open(journal_path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, buf.getvalue().encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def apply_journal(cat, jpath):
    """Apply a status journal to ``cat`` in memory; returns the number of rows updated.

    A journal line whose row number or object id does not match the catalogue (it was
    edited in between) is ignored rather than applied to the wrong object.
    """
    status = cat.ensure("STATUS", ST_NEW)
    ids = cat.col("COADD_OBJECT_ID")
    n = 0
    with open(jpath, newline="", encoding="utf-8") as handle:
        for rec in csv.reader(handle):
            # A torn last line (crash during write) has fewer fields: skip it.
            if len(rec) != 3 or not rec[0].isdigit():
                continue
            row = int(rec[0])
            if row < len(cat) and ids[row] == rec[1]:
                status[row] = rec[2]
                n += 1
    return n


def commit_statuses(cat, path):
    """Rewrite the catalogue with its in-memory statuses, then drop the journal."""
    write_catalog(cat, path)
    try:
        os.unlink(journal_path(path))
    except FileNotFoundError:
        pass
