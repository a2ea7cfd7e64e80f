#!/usr/bin/env python
"""Merge the final catalogues of many tiles into one FITS table, streaming.

    python scripts/merge_final_cat.py DIR OUTPUT.fits [--columns NUMBER,XWIN_WORLD,...]
                                      [--pattern 'final_cat-*.fits'] [--hdu RESULTS]

Every ``final_cat-*.fits`` found under DIR (recursively, sorted by name) is appended, in that
order, to one table (HDU RESULTS) in OUTPUT.fits. Memory does not depend on the number of
tiles or rows: a first pass reads only the headers (columns, row counts) and checks that the
files agree; the second writes the output header with the total row count, then copies the
rows file by file in blocks of memory-mapped raw bytes. The output is written under a
temporary name and renamed when complete. Files whose (selected) columns differ in name,
format or shape are refused with one error naming the file and the differences.
"""

import argparse
import glob
import os
import sys

import numpy as np
from astropy.io import fits

try:
    import shapepipe  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.utils.atomic import atomic_path  # noqa: E402

#: Rows copied per block (bounds memory to BLOCK x row size).
BLOCK = 50_000


class MergeError(Exception):
    """A problem with the inputs (message names the file)."""


def find_catalogs(directory, pattern="final_cat-*.fits"):
    """Final catalogues under ``directory`` (recursive), sorted by file name then path."""
    paths = glob.glob(os.path.join(directory, "**", pattern), recursive=True)
    return sorted(paths, key=lambda p: (os.path.basename(p), p))


def _layout(path, hdu_name, columns=None):
    """[(name, format, dim, unit)] of the (selected) columns and the row count of one file."""
    try:
        with fits.open(path, memmap=True) as hdul:
            if hdu_name not in hdul:
                raise MergeError(f"{path}: no HDU {hdu_name}")
            hdu = hdul[hdu_name]
            cols = {c.name: (c.name, str(c.format), c.dim, c.unit) for c in hdu.columns}
            nrows = int(hdu.header["NAXIS2"])
            if int(hdu.header.get("PCOUNT", 0)):
                raise MergeError(f"{path}: variable-length columns are not supported")
    except OSError as exc:
        raise MergeError(f"{path}: not a readable FITS file ({exc})") from None
    if columns is None:
        return list(cols.values()), nrows
    missing = [c for c in columns if c not in cols]
    if missing:
        raise MergeError(f"{path}: column(s) {', '.join(missing)} not found")
    return [cols[c] for c in columns], nrows


def check_layouts(paths, hdu_name="RESULTS", columns=None):
    """First pass: the common column layout and the total row count.

    Raises
    ------
    MergeError
        When a file's columns differ from the first file's.
    """
    if not paths:
        raise MergeError("no input catalogue")
    ref, total = _layout(paths[0], hdu_name, columns)
    for path in paths[1:]:
        layout, nrows = _layout(path, hdu_name, columns)
        if layout != ref:
            ref_names, names = [c[0] for c in ref], [c[0] for c in layout]
            missing = [n for n in ref_names if n not in names]
            extra = [n for n in names if n not in ref_names]
            changed = [a[0] for a in ref if a[0] in names and a != layout[names.index(a[0])]]
            parts = [f"missing {', '.join(missing)}" if missing else "",
                     f"extra {', '.join(extra)}" if extra else "",
                     f"different format/shape of {', '.join(changed)}" if changed else "",
                     "different column order" if not (missing or extra or changed) else ""]
            raise MergeError(f"{path}: columns differ from {paths[0]}: "
                             + "; ".join(p for p in parts if p))
        total += nrows
    return ref, total


def merge(paths, output, hdu_name="RESULTS", columns=None, block=BLOCK):
    """Write the rows of every input, in order, into one table (atomically).

    Returns
    -------
    int
        Rows written.
    """
    layout, total = check_layouts(paths, hdu_name, columns)
    names = [c[0] for c in layout]
    with fits.open(paths[0], memmap=True) as hdul:
        src = hdul[hdu_name]
        defs = [fits.Column(name=c.name, format=c.format, dim=c.dim, unit=c.unit,
                            null=c.null, bscale=c.bscale, bzero=c.bzero)
                for c in src.columns if c.name in names]
        defs.sort(key=lambda c: names.index(c.name))
        raw = src.data.view(np.ndarray)
        row_dtype = np.dtype([(n, raw.dtype[n]) for n in names])
    header = fits.BinTableHDU.from_columns(defs, nrows=0, name=hdu_name).header
    header["NAXIS2"] = total
    if header["NAXIS1"] != row_dtype.itemsize:
        raise MergeError(f"{paths[0]}: row size {row_dtype.itemsize} does not match the "
                         f"table header ({header['NAXIS1']})")
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as out:
            out.write(fits.PrimaryHDU().header.tostring().encode("ascii"))
            out.write(header.tostring().encode("ascii"))
            written = 0
            for path in paths:
                with fits.open(path, memmap=True) as hdul:
                    raw = hdul[hdu_name].data
                    if raw is None:
                        continue
                    raw = raw.view(np.ndarray)
                    for lo in range(0, len(raw), block):
                        part = raw[lo:lo + block]
                        buf = np.empty(len(part), dtype=row_dtype)
                        for name in names:
                            buf[name] = part[name]
                        out.write(buf.tobytes())
                        written += len(part)
                    del raw
            pad = (-written * row_dtype.itemsize) % 2880
            out.write(b"\0" * pad)
        if written != total:
            raise MergeError(f"rows written {written} != {total} counted (inputs changed?)")
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="directory searched (recursively) for catalogues")
    parser.add_argument("output", help="output FITS file")
    parser.add_argument("--columns", default=None,
                        help="comma-separated columns to keep (default: all)")
    parser.add_argument("--pattern", default="final_cat-*.fits", help="file name pattern")
    parser.add_argument("--hdu", default="RESULTS", help="table HDU name")
    args = parser.parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    paths = find_catalogs(args.directory, args.pattern)
    try:
        if not paths:
            raise MergeError(f"{args.directory}: no {args.pattern} found")
        n = merge(paths, args.output, args.hdu, columns)
    except MergeError as exc:
        print(f"merge_final_cat: {exc}", file=sys.stderr)
        return 2
    print(f"{args.output}: {n} rows from {len(paths)} catalogues")
    return 0


if __name__ == "__main__":
    sys.exit(main())
