"""Reading PSFEx ``.psfex`` configuration files (``KEY value[,value...]  # comment``)."""

import re

from shapepipe.utils.astromatic import read_astromatic_config

_COLUMN_RE = re.compile(r"^([A-Za-z0-9_]+)(?:\((\d+)\))?$")


def read_psfex_config(path):
    """Parse a PSFEx configuration file.

    Parameters
    ----------
    path : str
        The ``.psfex`` file.

    Returns
    -------
    dict
        Upper-case key -> list of string values (comma- or blank-separated).

    Raises
    ------
    ValueError
        If a line has no key.
    """
    return read_astromatic_config(path)


def parse_column(spec):
    """Split a PSFEx column spec such as ``FLUX_APER(1)`` into (name, 0-based index or None).

    Raises
    ------
    ValueError
        If the spec is not ``NAME`` or ``NAME(i)`` with i >= 1.
    """
    match = _COLUMN_RE.match(spec.strip())
    if not match or (match.group(2) is not None and int(match.group(2)) < 1):
        raise ValueError(f"column {spec!r}: expected NAME or NAME(i) with i >= 1")
    index = None if match.group(2) is None else int(match.group(2)) - 1
    return match.group(1), index


def get_column(data, spec, source="catalogue"):
    """Values of a column spec (``NAME`` or ``NAME(i)``) from a FITS table.

    Raises
    ------
    KeyError
        With a message naming the column and the catalogue.
    """
    name, index = parse_column(spec)
    if name not in data.dtype.names:
        raise KeyError(f"{source}: no column {name} (needed for {spec})")
    values = data[name]
    if values.ndim > 1:
        values = values.reshape(len(values), -1)[:, 0 if index is None else index]
    elif index not in (None, 0):
        raise KeyError(f"{source}: column {name} is a scalar, cannot take {spec}")
    return values
