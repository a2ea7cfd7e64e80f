"""Atomic file output: write under a temporary name in the same directory, then rename.

A reader (or a resumed run) never sees a half-written file under its final name.
"""

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path, overwrite=True):
    """Yield a temporary path next to ``path``; rename it to ``path`` on success.

    Parameters
    ----------
    path : str
        Final file name.
    overwrite : bool
        If False, refuse to replace an existing file (``FileExistsError``).

    Yields
    ------
    str
        Temporary path to write to. It is removed if the block raises.
    """
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path}: exists, not overwriting")
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    # Keep the real extension last: some writers (astropy, h5py) look at it.
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp" + _ext(base), dir=directory)
    os.close(fd)
    os.unlink(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _ext(name):
    for ext in (".fits.fz", ".fits.gz", ".fitsfz", ".fits", ".hdf5", ".h5", ".sqlite", ".npy",
                ".npz", ".txt", ".cat", ".psf", ".json", ".png", ".csv"):
        if name.endswith(ext):
            return ext
    return ""


def write_fits(hdul, path, overwrite=True):
    """Write an astropy ``HDUList`` atomically.

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList
        What to write.
    path : str
        Final file name.
    overwrite : bool
        Whether an existing file may be replaced.
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        hdul.writeto(tmp)


def write_text(text, path, overwrite=True):
    """Write a text file atomically."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
