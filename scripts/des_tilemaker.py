#!/usr/bin/env python
"""Assign each object of a DES target catalogue to the tile owning its position.

    python scripts/des_tilemaker.py --tiles GEOMETRY_TABLE INPUT_CATALOG OUTPUT_CATALOG

GEOMETRY_TABLE is a FITS table or CSV file with TILENAME, URAMIN, URAMAX, UDECMIN, UDECMAX.
A tile owns URAMIN <= RA < URAMAX and UDECMIN <= DEC < UDECMAX (lower bounds inclusive, upper
exclusive); URAMIN > URAMAX means the tile crosses RA = 0/360. Objects on no tile get
TILENAME NONE and STATUS no_tile and are kept. The output is written atomically.
"""

import argparse
import os
import sys
import time

try:
    import shapepipe  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.modules.des_stamp.catalog import read_catalog, write_catalog  # noqa: E402
from shapepipe.modules.des_stamp.errors import DesStampError  # noqa: E402
from shapepipe.modules.des_stamp.tiles import read_geometry, tile_catalog  # noqa: E402


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", required=True, help="tile geometry table (FITS or CSV)")
    parser.add_argument("input", help="input CSV catalogue with RA, DEC, COADD_OBJECT_ID")
    parser.add_argument("output", help="output CSV catalogue (may be the input)")
    args = parser.parse_args(argv)
    try:
        t0 = time.perf_counter()
        geometry = read_geometry(args.tiles)
        cat = read_catalog(args.input)
        n_none = tile_catalog(cat, geometry)
        write_catalog(cat, args.output)
    except DesStampError as exc:
        print(f"des_tilemaker: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(cat)} objects, {len(cat) - n_none} on {len(geometry['TILENAME'])} tiles, "
          f"{n_none} on no tile -> {args.output} ({time.perf_counter() - t0:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
