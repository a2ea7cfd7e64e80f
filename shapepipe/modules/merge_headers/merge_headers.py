"""Build and read ``log_exp_headers.sqlite`` (JSON values, never pickle)."""

import json
import os
import re
import sqlite3

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning
from sqlitedict import SqliteDict

from shapepipe.utils.atomic import atomic_path

#: File name written by :func:`merge_headers` in the output directory (ShapePipe's name).
OUTPUT_NAME = "log_exp_headers.sqlite"

_HEADERS_RE = re.compile(r"^headers-?(.+?)\.npy$")


def exposure_name(headers_file):
    """Exposure name of a ``headers-<exp>.npy`` file (``"2000001"``), the sqlite key.

    Parameters
    ----------
    headers_file : str
        Path of the headers file.

    Returns
    -------
    str

    Raises
    ------
    ValueError
        If the file name does not look like ``headers-<exp>.npy``.
    """
    base = os.path.basename(headers_file)
    match = _HEADERS_RE.match(base)
    if not match:
        raise ValueError(f"{headers_file}: expected a file named headers-<exposure>.npy")
    return match.group(1).lstrip("-")


def find_log_wcs(spec, resolve_module_dir, key="LOG_WCS"):
    """Locate ``log_exp_headers.sqlite`` from a config value.

    Parameters
    ----------
    spec : str
        The file itself, a directory holding it, or a module reference
        (``merge_headers_runner``, ``last:merge_headers_runner``, ``<run>:<module>``...).
    resolve_module_dir : callable
        ``resolve_module_dir(spec) -> list of directories``: how the caller resolves a module
        reference (a runner passes the framework's resolver bound to its ``run_dirs``), so
        that this package never imports the pipeline.
    key : str
        The config key, named in error messages.

    Returns
    -------
    str
        Path of the sqlite file.

    Raises
    ------
    FileNotFoundError
        If no such file is found; the message names the key and the value.
    """
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        return path
    if os.path.isdir(path):
        candidate = os.path.join(path, OUTPUT_NAME)
        if os.path.isfile(candidate):
            return candidate
    try:
        dirs = resolve_module_dir(spec)
    except Exception as err:  # the framework's ConfigError, a missing run log...
        raise FileNotFoundError(f"{key} = {spec}: not a file, and not a module reference "
                                f"({err})") from None
    for directory in dirs:
        candidate = os.path.join(directory, OUTPUT_NAME)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{key} = {spec}: no {OUTPUT_NAME} in {', '.join(dirs) or 'it'}")


def load_headers_file(headers_file):
    """Read a ``headers-<exp>.npy`` file written by ``split_exp`` (no pickle).

    Parameters
    ----------
    headers_file : str
        Path of the file: a 1-d numpy array of FITS header strings (``S`` or ``U``
        dtype), one per CCD.

    Returns
    -------
    list of str
        One header string per CCD.

    Raises
    ------
    ValueError
        If the file is not a 1-d string array (for example an old pickled ShapePipe file).
    """
    try:
        array = np.load(headers_file, allow_pickle=False)
    except ValueError as exc:
        raise ValueError(
            f"{headers_file}: not a headers file of strings ({exc}); pickled ShapePipe "
            "headers files are refused, rerun split_exp_runner"
        ) from None
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise ValueError(
            f"{headers_file}: expected a 1-d array of header strings, got dtype "
            f"{array.dtype} and shape {array.shape}"
        )
    # split_exp stores ASCII bytes ("S" dtype, 4x smaller than unicode); accept both.
    return [item.decode("ascii") if isinstance(item, bytes) else str(item) for item in array]


def merge_headers(header_files, output_path):
    """Collect ``headers-<exp>.npy`` files into one sqlite file, atomically.

    Parameters
    ----------
    header_files : iterable of str
        The headers files, one per exposure.
    output_path : str
        The sqlite file to write (``.../log_exp_headers.sqlite``); replaced if it exists.

    Returns
    -------
    int
        Number of exposures written.

    Raises
    ------
    ValueError
        On a badly named or unreadable headers file, or two files of the same exposure.
    """
    entries = {}
    sources = {}
    for path in header_files:
        name = exposure_name(path)
        if name in entries:
            raise ValueError(
                f"{path}: exposure {name} already read from {sources[name]} (duplicate input)"
            )
        entries[name] = load_headers_file(path)
        sources[name] = path
    with atomic_path(output_path) as tmp:
        # One transaction for all rows: sqlitedict commits once at the end.
        with SqliteDict(tmp, flag="n", encode=json.dumps, decode=json.loads) as store:
            for name in sorted(entries):
                store[name] = entries[name]
            store.commit()
    return len(entries)


def _open_readonly(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: exposure headers file not found")
    return SqliteDict(path, flag="r", encode=json.dumps, decode=json.loads)


def read_exp_header_strings(path, exposures=None):
    """Read ``log_exp_headers.sqlite`` as header strings.

    Parameters
    ----------
    path : str
        The sqlite file.
    exposures : iterable of str, optional
        Exposure names to read; all when omitted.

    Returns
    -------
    dict
        ``{exp_name: [header string or None per CCD]}``.

    Raises
    ------
    FileNotFoundError, KeyError, ValueError
        Missing file, missing exposure, or a value that is not JSON (e.g. a pickled
        ShapePipe file).
    """
    try:
        with _open_readonly(path) as store:
            names = list(store.keys()) if exposures is None else [str(e) for e in exposures]
            out = {}
            for name in names:
                if name not in store:
                    raise KeyError(f"{path}: exposure {name!r} not in the headers file")
                out[name] = store[name]
    except (json.JSONDecodeError, UnicodeDecodeError, sqlite3.DatabaseError) as exc:
        raise ValueError(
            f"{path}: not a JSON exposure headers file ({type(exc).__name__}); pickled "
            "ShapePipe files are refused, rerun merge_headers_runner"
        ) from None
    for name, value in out.items():
        if not isinstance(value, list):
            raise ValueError(f"{path}: exposure {name}: expected a list of CCD headers")
    return out


def read_exp_headers(path, exposures=None):
    """Read ``log_exp_headers.sqlite`` into astropy headers.

    Parameters
    ----------
    path : str
        The sqlite file.
    exposures : iterable of str, optional
        Exposure names to read (``"2000001"``); all when omitted.

    Returns
    -------
    dict
        ``{exp_name: [astropy.io.fits.Header or None per CCD]}``, CCDs in file order.
    """
    strings = read_exp_header_strings(path, exposures)
    return {
        name: [None if text is None else fits.Header.fromstring(text) for text in ccds]
        for name, ccds in strings.items()
    }


def read_exp_wcs(path, exposures=None):
    """Read ``log_exp_headers.sqlite`` into celestial WCS objects.

    Parameters
    ----------
    path : str
        The sqlite file.
    exposures : iterable of str, optional
        Exposure names to read; all when omitted.

    Returns
    -------
    dict
        ``{exp_name: [astropy.wcs.WCS or None per CCD]}``.
    """
    import warnings

    headers = read_exp_headers(path, exposures)
    out = {}
    with warnings.catch_warnings():
        # Header cards like DATE-OBS fixes are noise here: only the celestial part is used.
        warnings.simplefilter("ignore", FITSFixedWarning)
        for name, ccds in headers.items():
            out[name] = [None if h is None else WCS(h).celestial for h in ccds]
    return out
