"""Files of the blended-galaxy sets: input stamps and catalogue, per-blend arrays, npy writing.

Names and layouts are CANDELS-blender's, so that its users' files and scripts carry over:
inputs ``candels_img.npy`` (N, 128, 128), ``candels_seg.npy`` (N, 128, 128) and
``candels_cat.csv`` (columns ID, mag, radius [pixels], z, galtype); per blend
``<prefix>_blend_<6 digits>.npy`` (128, 128, 2) float32 and ``<prefix>_blend_seg_<6 digits>.npy``
(2, 128, 128) uint8, ``prefix`` being ``train`` or ``test``.
"""

import csv
import io
import os

import numpy as np

STAMP_SIZE = 128
IMG_FILE = "candels_img.npy"
SEG_FILE = "candels_seg.npy"
CAT_FILE = "candels_cat.csv"
CAT_COLUMNS = ("ID", "mag", "radius", "z", "galtype")
GALAXY_TYPES = ("irr", "disk", "sph", "sphd")
PREFIXES = ("train", "test")
IMG_DTYPE = np.float32
SEG_DTYPE = np.uint8
BLEND_TMP = "{prefix}_blend_{idx:06d}.npy"
BLEND_SEG_TMP = "{prefix}_blend_seg_{idx:06d}.npy"
CATALOGUE_HEADER = ("id", "distance", "shift_x", "shift_y",
                    "g1_id", "g1_mag", "g1_rad", "g1_z", "g1_type",
                    "g2_id", "g2_mag", "g2_rad", "g2_z", "g2_type")


class BlendError(Exception):
    """A problem with the inputs or options of a blend action (one line a user can act on)."""


def read_input_catalogue(path):
    """Read ``candels_cat.csv``: the columns ID, mag, radius, z, galtype (others ignored).

    Parameters
    ----------
    path : str
        The CSV file (header line, comma separated).

    Returns
    -------
    dict
        ``ID`` (str array, kept as written), ``mag``, ``radius``, ``z`` (float64 arrays) and
        ``galtype`` (str array).
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as err:
        raise BlendError(f"{path}: cannot read the catalogue ({err.strerror})") from None
    if not rows:
        raise BlendError(f"{path}: empty file, expected a header line with "
                         f"{', '.join(CAT_COLUMNS)}")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in CAT_COLUMNS if c not in header]
    if missing:
        raise BlendError(f"{path}: missing column(s) {', '.join(missing)}; expected "
                         f"{', '.join(CAT_COLUMNS)}, found {', '.join(header)}")
    body = rows[1:]
    for line, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise BlendError(f"{path}: line {line} has {len(row)} fields, the header "
                             f"{len(header)}")
    table = np.array(body, dtype=str).reshape(len(body), len(header))
    out = {}
    for name in CAT_COLUMNS:
        column = np.char.strip(table[:, header.index(name)])
        if name in ("mag", "radius", "z"):
            try:
                column = column.astype(np.float64)
            except ValueError:
                bad = next(i for i, v in enumerate(column) if not _is_float(v))
                raise BlendError(f"{path}: line {bad + 2}, column {name}: {column[bad]!r} is "
                                 "not a number") from None
        out[name] = column
    return out


def _is_float(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_inputs(datapath):
    """Open the three input files of one directory and check that they agree.

    The stamps are memory-mapped: only the galaxies a set uses are read.

    Parameters
    ----------
    datapath : str
        Directory holding ``candels_img.npy``, ``candels_seg.npy`` and ``candels_cat.csv``.

    Returns
    -------
    img, seg : numpy.ndarray
        (N, 128, 128) stamps and segmentation maps (memory maps).
    cat : dict
        The catalogue (:func:`read_input_catalogue`).
    """
    paths = [os.path.join(datapath, name) for name in (IMG_FILE, SEG_FILE, CAT_FILE)]
    for path in paths:
        if not os.path.isfile(path):
            raise BlendError(f"{path}: not found (a data directory holds {IMG_FILE}, "
                             f"{SEG_FILE} and {CAT_FILE})")
    arrays = []
    for path in paths[:2]:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise BlendError(f"{path}: not a numeric .npy array ({err})") from None
        if array.ndim != 3 or array.shape[1:] != (STAMP_SIZE, STAMP_SIZE):
            raise BlendError(f"{path}: stamps of shape {array.shape}, expected "
                             f"(N, {STAMP_SIZE}, {STAMP_SIZE})")
        arrays.append(array)
    img, seg = arrays
    if img.shape != seg.shape:
        raise BlendError(f"{paths[1]}: {seg.shape[0]} segmentation maps for {img.shape[0]} "
                         f"stamps in {paths[0]}")
    if seg.dtype.kind not in "iub":
        raise BlendError(f"{paths[1]}: segmentation of dtype {seg.dtype}, expected integers")
    cat = read_input_catalogue(paths[2])
    if len(cat["ID"]) != img.shape[0]:
        raise BlendError(f"{paths[2]}: {len(cat['ID'])} rows for {img.shape[0]} stamps in "
                         f"{paths[0]}")
    return img, seg, cat


def npy_header(shape, dtype):
    """The exact bytes ``numpy.save`` writes before the data of an array of this shape/dtype.

    Per-blend files all have the same shape, so the header is made once and each file is
    ``header + array.tobytes()`` (byte-identical to ``numpy.save``, without its per-call
    header formatting).
    """
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype=dtype))
    data = buffer.getvalue()
    return data[: len(data) - int(np.prod(shape)) * np.dtype(dtype).itemsize]


def save_npy_atomic(array, path):
    """``numpy.save`` under a temporary name in the same directory, then rename."""
    from shapepipe.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)


def read_blend_catalogue(path, columns):
    """Numeric columns of a ``<prefix>_catalogue.csv`` written by ``produce``.

    Parameters
    ----------
    path : str
        The catalogue.
    columns : sequence of str
        Columns to return as float64 arrays.

    Returns
    -------
    dict
        ``{column: array}``.
    """
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as err:
        raise BlendError(f"{path}: cannot read the blend catalogue ({err.strerror})") from None
    header = rows[0] if rows else []
    missing = [c for c in columns if c not in header]
    if missing:
        raise BlendError(f"{path}: missing column(s) {', '.join(missing)}")
    out = {}
    for name in columns:
        col = header.index(name)
        try:
            out[name] = np.array([float(r[col]) for r in rows[1:]], dtype=np.float64)
        except (ValueError, IndexError):
            raise BlendError(f"{path}: column {name} has a missing or non-numeric value") \
                from None
    return out
