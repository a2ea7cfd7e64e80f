#!/usr/bin/env python
"""Make multi-band postage stamps of a tiled catalogue into HDF5 files.

    python scripts/catalog_to_stamps.py --tile-dir DIR --processes N --dimension D \
        [--bands grizY] CATALOG TILES_PER_OUTPUT N_OUTPUTS PREFIX

Tiles with pending objects (STATUS not done/no_tile) are sorted by object count and grouped
TILES_PER_OUTPUT at a time into PREFIX_001.hdf5, PREFIX_002.hdf5, ... (at most N_OUTPUTS
files; 0 = all; numbering continues after existing files). The catalogue's STATUS column is
updated (done / error: <reason>) as each tile is written; a rerun skips what is done.
"""

import argparse
import logging
import os
import sys

try:
    import shapepipe  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.modules.des_stamp.driver import make_stamps  # noqa: E402
from shapepipe.modules.des_stamp.errors import DesStampError  # noqa: E402


def main(argv=None):
    """Command-line entry point; returns the exit code (1 if some objects failed)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tile-dir", required=True, help="directory of the tile files")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (tiles)")
    parser.add_argument("--dimension", type=int, default=100, help="stamp size in pixels")
    parser.add_argument("--bands", default="grizY", help="bands, e.g. grizY or g,r,i")
    parser.add_argument("--template", default="{tile}_{band}.fits",
                        help="tile file name with {tile} and {band} (.fz also found)")
    parser.add_argument("--image-hdu", type=int, default=1, help="HDU of the image")
    parser.add_argument("--mask-hdu", type=int, default=2, help="HDU of the mask (-1: none)")
    parser.add_argument("--commit-interval", type=float, default=0.0,
                        help="minimum seconds between catalogue rewrites (default 0: after "
                             "every tile unless rewriting takes >10%% of the time; statuses "
                             "are journalled after every tile in between)")
    parser.add_argument("--compression", default="gzip", choices=["gzip", "lzf", "none"],
                        help="HDF5 filter of the stamp pixels (gzip: portable; lzf: faster)")
    parser.add_argument("-q", "--quiet", action="store_true")
    parser.add_argument("catalog", help="CSV catalogue with RA, DEC, COADD_OBJECT_ID, TILENAME, "
                                        "STATUS (updated in place)")
    parser.add_argument("tiles_per_output", type=int)
    parser.add_argument("n_outputs", type=int, help="maximum number of output files (0: all)")
    parser.add_argument("prefix", help="output prefix, may include a directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(message)s")
    out_dir = os.path.dirname(os.path.abspath(args.prefix))
    try:
        summary = make_stamps(
            args.catalog, args.tile_dir, out_dir, os.path.basename(args.prefix),
            tiles_per_output=args.tiles_per_output, n_outputs=args.n_outputs or None,
            dimension=args.dimension, bands=args.bands, template=args.template,
            image_hdu=args.image_hdu, mask_hdu=args.mask_hdu, processes=args.processes,
            commit_interval=args.commit_interval, compression=args.compression,
        )
    except DesStampError as exc:
        print(f"catalog_to_stamps: error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(summary['tiles'])} tile(s), {summary['done']} object(s) done, "
          f"{summary['error']} error(s); outputs: {', '.join(summary['outputs']) or 'none'}")
    return 1 if summary["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
