"""Readers for SExtractor's own configuration files: ``.sex``, ``.param`` and ``.conv``.

The formats are SExtractor's:

- ``.sex``: one ``KEY value[, value...]  # comment`` per line; keys are case-insensitive here,
  values may be separated by commas and/or blanks; a key with nothing after it is empty.
- ``.param``: one output parameter per line, optionally with a vector size in parentheses
  (``FLUX_APER(3)``, ``VIGNET(51,51)``); ``#`` starts a comment.
- ``.conv``: a first line ``CONV NORM`` or ``CONV NONORM``, comment lines starting with ``#``,
  then the kernel rows.

Nothing here evaluates user text: values are parsed as numbers or kept as strings.
"""

import os
import re

import numpy as np

from shapepipe.utils.astromatic import read_astromatic_config


class SexConfigError(ValueError):
    """A SExtractor configuration file or value that cannot be used (message names it)."""


_PARAM_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\s*(?:\(\s*([0-9\s,]*)\s*\))?$")


def _strip_comment(line):
    return line.split("#", 1)[0].strip()


def parse_sex(path):
    """Read a ``.sex`` configuration file.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    dict
        Upper-case key -> list of value strings (empty list for a key without value).
    """
    if not os.path.isfile(path):
        raise SexConfigError(f"{path}: SExtractor configuration file not found")
    try:
        return read_astromatic_config(path)
    except ValueError as exc:
        raise SexConfigError(str(exc)) from None


def parse_param(path):
    """Read a ``.param`` file.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    list of (str, tuple of int)
        Parameter name (upper case) and its vector shape (``()`` for a scalar), in file order.
        For ``VIGNET(51,51)`` the shape is ``(51, 51)``; for ``FLUX_APER(3)`` it is ``(3,)``.
    """
    if not os.path.isfile(path):
        raise SexConfigError(f"{path}: SExtractor parameter file not found")
    params = []
    seen = set()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            line = _strip_comment(raw)
            if not line:
                continue
            match = _PARAM_RE.match(line)
            if match is None:
                raise SexConfigError(
                    f"{path}:{number}: cannot read parameter {line!r} "
                    "(expected NAME or NAME(n) or NAME(n,m))"
                )
            name = match.group(1).upper()
            shape = ()
            if match.group(2) is not None:
                dims = [d for d in re.split(r"[\s,]+", match.group(2)) if d]
                shape = tuple(int(d) for d in dims)
                if not shape or min(shape) < 1:
                    raise SexConfigError(f"{path}:{number}: bad vector size in {line!r}")
            if name in seen:
                raise SexConfigError(f"{path}:{number}: parameter {name} given twice")
            seen.add(name)
            params.append((name, shape))
    if not params:
        raise SexConfigError(f"{path}: no output parameter in the parameter file")
    return params


def parse_conv(path, allow_nonorm=True):
    """Read a ``.conv`` filter kernel.

    Parameters
    ----------
    path : str
        The file.
    allow_nonorm : bool
        Whether a ``CONV NONORM`` kernel is accepted. The extraction refuses them: ``sep``
        normalises every detection filter, so an unnormalised (e.g. zero-sum Mexican hat)
        kernel would not act as it does in SExtractor.

    Returns
    -------
    numpy.ndarray
        The 2-d kernel (float32), divided by its sum when the file says ``CONV NORM``
        (as SExtractor does; a ``NORM`` kernel summing to zero is an error).
    """
    if not os.path.isfile(path):
        raise SexConfigError(f"{path}: filter (.conv) file not found")
    norm = None
    rows = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if norm is None:
                words = line.split()
                if words[0].upper() != "CONV" or len(words) < 2 or words[1].upper() not in (
                    "NORM",
                    "NONORM",
                ):
                    raise SexConfigError(
                        f"{path}:{number}: expected 'CONV NORM' or 'CONV NONORM', got {line!r}"
                    )
                norm = words[1].upper() == "NORM"
                continue
            try:
                rows.append([float(v) for v in _strip_comment(line).split()])
            except ValueError:
                raise SexConfigError(f"{path}:{number}: non-numeric kernel row {line!r}") from None
    if norm is None or not rows:
        raise SexConfigError(f"{path}: no 'CONV' header or no kernel rows")
    if not norm and not allow_nonorm:
        raise SexConfigError(f"{path}: CONV NONORM kernels are not supported (sep normalises "
                             "detection filters); use a CONV NORM kernel")
    if len({len(r) for r in rows}) != 1:
        raise SexConfigError(f"{path}: kernel rows have different lengths")
    kernel = np.array(rows, dtype=np.float32)
    if norm:
        total = float(kernel.sum())
        if total == 0.0:
            raise SexConfigError(f"{path}: CONV NORM kernel sums to zero")
        kernel = kernel / total
    return kernel
