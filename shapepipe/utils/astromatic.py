"""AstrOmatic configuration files (SExtractor ``.sex``, PSFEx ``.psfex``).

Format: one ``KEY value[,value...]`` per line, ``#`` starts a comment.
"""

import re

_KEY = re.compile(r"[A-Z][A-Z0-9_]*")


def read_astromatic_config(path):
    """Parse an AstrOmatic configuration file.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    dict
        Upper-case key -> list of value strings (comma- or blank-separated; empty for a key
        without value).

    Raises
    ------
    ValueError
        If a line does not start with a key (message: ``path:line: ...``).
    """
    values = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, raw in enumerate(handle, start=1):
            text = raw.split("#", 1)[0].strip()
            if not text:
                continue
            parts = text.split(None, 1)
            key = parts[0].upper()
            if not _KEY.fullmatch(key):
                raise ValueError(f"{path}:{number}: expected 'KEY value', got {raw.strip()!r}")
            rest = parts[1] if len(parts) > 1 else ""
            values[key] = [tok for tok in re.split(r"[,\s]+", rest) if tok]
    return values
