#!/usr/bin/env python
"""Write FITS files from an HDF5 stamp store.

    python scripts/fits_extract.py HDF5_FILE OUTPUT_DIR [IDS]

IDS is a comma-separated list of object ids or a file with one id per line (all objects if
omitted). Writes OUTPUT_DIR/<id>_<band>.fits with the stamp's header and WCS.
"""

import argparse
import os
import sys

try:
    import shapepipe  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.modules.des_stamp.store import extract_fits  # noqa: E402


def parse_ids(text):
    """Ids from a file (one per line) if ``text`` names a file, else a comma list."""
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    return [t.strip() for t in text.split(",") if t.strip()]


def main(argv=None):
    """Command-line entry point; returns the exit code (1 if a requested id is absent)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="HDF5 file written by catalog_to_stamps / des_stamp_runner")
    parser.add_argument("out_dir", help="output directory")
    parser.add_argument("ids", nargs="?", help="comma-separated ids or a file of ids")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.store):
        print(f"fits_extract: error: {args.store}: no such file", file=sys.stderr)
        return 2
    ids = parse_ids(args.ids) if args.ids else None
    written = extract_fits(args.store, args.out_dir, ids)
    print(f"wrote {len(written)} FITS file(s) to {args.out_dir}")
    if written.missing:
        print(f"fits_extract: {len(written.missing)} id(s) not in {args.store}: "
              f"{', '.join(written.missing[:10])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
