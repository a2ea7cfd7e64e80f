#!/usr/bin/env python
"""Generate the simulated CFIS-like survey used by the examples and the tests.

    python scripts/make_example_data.py --output DIR [--seed N] [--full] [--shear G1,G2]
                                        [--psf-g-offset G1,G2] [--paired] [--des]
                                        [--processes N] [--no-compress] [--cfis-names]
                                        [--overwrite]

Writes DIR/exposures, DIR/tiles, DIR/star_cat, DIR/truth (and DIR/des with --des; DIR/plus and
DIR/minus with --paired; DIR/raw, the original CFIS names, with --cfis-names). Formats:
shapepipe/sim/FORMATS.md.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.sim import SimError, make_survey  # noqa: E402


def _shear(text):
    try:
        g1, g2 = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected two numbers G1,G2") from exc
    return g1, g2


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="dataset directory (SP_DATA)")
    parser.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    parser.add_argument("--full", action="store_true", help="MegaCam-size data (slow)")
    parser.add_argument("--shear", type=_shear, default=(0.02, 0.0),
                        help="constant shear G1,G2 (default 0.02,0.0)")
    parser.add_argument("--psf-g-offset", type=_shear, default=None, metavar="G1,G2",
                        help="mean PSF shear added over every focal plane (leakage fields)")
    parser.add_argument("--paired", action="store_true",
                        help="write DIR/plus (+g) and DIR/minus (-g) with identical noise")
    parser.add_argument("--rotated-shapes", action="store_true",
                        help="turn every galaxy's intrinsic shape by 90 degrees (the rest as "
                             "for the same seed without it): pairs for shape-noise cancellation")
    parser.add_argument("--negate-noise", action="store_true",
                        help="with --paired: the same noise array with its sign flipped (the "
                             "rotated twin of a calibration sky)")
    parser.add_argument("--scene-shear", choices=("field", "groups", "none"), default="field",
                        help="how galaxy positions shear: about the tile centre as a lens "
                             "does (field, default), each group of galaxies closer than 4\" "
                             "about its own centre (groups: isolated galaxies stay on their "
                             "pixels, for paired calibration fields), or not (none: shapes "
                             "only)")
    parser.add_argument("--des", action="store_true", help="also write DES-like tiles in DIR/des")
    parser.add_argument("--processes", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--no-compress", action="store_true",
                        help="write plain .fits exposures instead of tile-compressed .fits.fz")
    parser.add_argument("--cfis-names", action="store_true",
                        help="also write DIR/raw with the original CFIS file names")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing non-empty dataset")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes {args.processes}: expected >= 1")
    start = time.time()
    log = None if args.quiet else (lambda msg: print(f"[{time.time() - start:7.1f}s] {msg}",
                                                     flush=True))
    try:
        make_survey(args.output, seed=args.seed, full=args.full, shear=args.shear,
                    paired=args.paired, des=args.des, n_processes=args.processes,
                    overwrite=args.overwrite, compress=not args.no_compress, log=log,
                    psf_g_offset=args.psf_g_offset, cfis_names=args.cfis_names,
                    rotated_shapes=args.rotated_shapes, negate_noise=args.negate_noise,
                    scene_shear=args.scene_shear)
    except SimError as exc:
        print(f"make_example_data: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"done in {time.time() - start:.1f} s: {os.path.abspath(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
