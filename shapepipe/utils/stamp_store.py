"""Multi-epoch stamp stores (PSF and vignets): ShapePipe's sqlite layout without pickle.

Layout (as ShapePipe's ``galaxy_psf-<tile>.sqlite``)::

    {str(object_id): {"<exp>-<ccd>": {"VIGNET": ndarray, "SHAPES": {"E1_PSF_HSM": ...}}}}

or the string ``"empty"`` for an object with no usable epoch. Values are encoded as JSON in
which every numpy array is ``{"__ndarray__": <base64 of the array's .npy bytes>}``; decoding
uses ``numpy.load(..., allow_pickle=False)``, so a data file can never run code.
"""

import base64
import io
import json

import numpy as np
from sqlitedict import SqliteDict


def _default(obj):
    if isinstance(obj, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, obj, allow_pickle=False)
        return {"__ndarray__": base64.b64encode(buf.getvalue()).decode("ascii")}
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a stamp store")


def _hook(obj):
    if len(obj) == 1 and "__ndarray__" in obj:
        raw = base64.b64decode(obj["__ndarray__"])
        return np.load(io.BytesIO(raw), allow_pickle=False)
    return obj


def encode(value):
    """Encode a value (dicts, lists, numbers, strings, numpy arrays) as JSON text."""
    return json.dumps(value, default=_default)


def decode(text):
    """Inverse of :func:`encode`."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8")
    return json.loads(text, object_hook=_hook)


def open_store(path, flag="c"):
    """Open a stamp store (``flag``: ``"r"`` read-only, ``"c"`` create/update, ``"n"`` new).

    Returns
    -------
    sqlitedict.SqliteDict
        Keys are object ids as strings.
    """
    return SqliteDict(path, flag=flag, encode=encode, decode=decode, autocommit=False)


def get_many(path, keys, on_error=None):
    """Decoded values of several keys of a store, in one SQL query.

    ``sqlitedict`` answers each lookup through its worker thread (milliseconds per key);
    reading a chunk of objects at once is what a per-object loop over a tile needs.

    Parameters
    ----------
    path : str
        Store file (sqlitedict's default table).
    keys : iterable of str
        Keys wanted; absent keys are absent from the result.
    on_error : callable, optional
        ``on_error(key, exception)`` for a value that cannot be decoded (the key is then left
        out); by default the exception propagates.

    Returns
    -------
    dict
    """
    import sqlite3

    keys = [str(k) for k in keys]
    out = {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for lo in range(0, len(keys), 500):
            part = keys[lo:lo + 500]
            rows = conn.execute(
                f'SELECT key, value FROM "unnamed" WHERE key IN ({",".join("?" * len(part))})',
                part)
            for key, raw in rows:
                try:
                    out[key] = decode(raw)
                except (ValueError, TypeError) as exc:
                    if on_error is None:
                        raise
                    on_error(key, exc)
    finally:
        conn.close()
    return out


def write_entries(path, items, batch=1000):
    """Write ``(key, value)`` pairs into a store file, many rows per SQL statement.

    Same file layout as :func:`open_store` writes (sqlitedict's table ``unnamed``, key TEXT
    PRIMARY KEY, value the JSON text of :func:`encode`), without ``sqlitedict``'s per-item
    round trip through its worker thread. ``items`` may be a generator: memory holds one
    batch. The caller makes the file atomic (write to a temporary name, rename).

    Parameters
    ----------
    path : str
        Store file (created; an existing key is replaced).
    items : iterable of (str, object)
    batch : int
        Rows per ``executemany``.

    Returns
    -------
    int
        Number of entries written.
    """
    import sqlite3

    conn = sqlite3.connect(path)
    n = 0
    try:
        conn.execute('CREATE TABLE IF NOT EXISTS "unnamed" (key TEXT PRIMARY KEY, value BLOB)')
        sql = 'REPLACE INTO "unnamed" (key, value) VALUES (?, ?)'
        rows = []
        for key, value in items:
            rows.append((str(key), encode(value)))
            if len(rows) >= batch:
                conn.executemany(sql, rows)
                n += len(rows)
                rows = []
        if rows:
            conn.executemany(sql, rows)
            n += len(rows)
        conn.commit()
    finally:
        conn.close()
    return n
