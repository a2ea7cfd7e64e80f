"""``shapepipe-blender`` / ``python scripts/blend.py``: CANDELS-blender's command line.

    shapepipe-blender produce -n 20000 --exclude irr --mag_high 23.5 --seed 42 --use_clean_galaxies
    shapepipe-blender concatenate -d output-s_42-n_20000 --method ogg_masks --delete
    shapepipe-blender convert -d output-s_42-n_20000 --zeropoint=25.5
    shapepipe-blender plot -d output-s_42-n_20000 -o blends.png

The same actions, options and files as ``candels-blender``; ``produce -d`` may be given
several times (the galaxies of every directory are pooled) and ``-o/--outdir`` places the
output directory (default: the current directory). Errors are one line on stderr, exit 2.
"""

import argparse
import sys

from shapepipe.modules.blend.io import GALAXY_TYPES, BlendError

METHODS = ("bogg_masks", "ogg_masks", "gg_masks", "single_images")


def build_parser():
    """The argument parser of the four actions."""
    parser = argparse.ArgumentParser(
        prog="shapepipe-blender",
        description="Blended-galaxy training sets (CANDELS-blender's actions): produce, "
                    "then concatenate, then convert; plot shows a few blends.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("produce", help="create the blends, masks and catalogues")
    p.add_argument("-n", "--n_blends", type=int, default=100, help="number of blends (100)")
    p.add_argument("--mag_low", type=float, default=0.0, help="lowest galaxy magnitude (0)")
    p.add_argument("--mag_high", type=float, default=100.0,
                   help="highest galaxy magnitude (100)")
    p.add_argument("--mag_diff", type=float, default=2.0,
                   help="largest magnitude difference between the galaxies of a pair (2)")
    p.add_argument("--rad_diff", type=float, default=4.0,
                   help="largest separation as a multiple of the smaller radius (4)")
    p.add_argument("-t", "--test_ratio", type=float, default=0.2,
                   help="fraction of the galaxies, and of the blends, for the test set (0.2)")
    p.add_argument("-e", "--exclude", "--excluded_type", dest="excluded_type",
                   action="append", choices=GALAXY_TYPES, default=[],
                   help="galaxy type to leave out (repeatable)")
    p.add_argument("-d", "--datapath", action="append", default=None,
                   help="directory with candels_img.npy, candels_seg.npy, candels_cat.csv "
                        "(repeatable; default ./data)")
    p.add_argument("-s", "--seed", type=int, default=42, help="random seed (42)")
    p.add_argument("--use_clean_galaxies", action="store_true",
                   help="replace the neighbours in each stamp by background noise")
    p.add_argument("-o", "--outdir", default=".",
                   help="where output-s_<seed>-n_<n>/ is created (current directory)")

    c = sub.add_parser("concatenate", help="stack the blends and their target masks")
    c.add_argument("-d", "--image_dir", required=True, help="a produce output directory")
    c.add_argument("-m", "--method", required=True, choices=METHODS, help="target encoding")
    c.add_argument("--delete", action="store_true",
                   help="delete the individual files once the stacks are written")

    v = sub.add_parser("convert", help="flux table of the blended galaxies")
    v.add_argument("-d", "--image_dir", required=True, help="a produce output directory")
    v.add_argument("--zeropoint", type=float, default=25.96,
                   help="magnitude zero point (25.96)")

    g = sub.add_parser("plot", help="a figure of a few blends with their masks")
    g.add_argument("-d", "--image_dir", required=True, help="a produce output directory")
    g.add_argument("-o", "--output", required=True, help="image file to write (.png)")
    g.add_argument("-n", "--n_show", type=int, default=4, help="blends shown (4)")
    g.add_argument("--prefix", default="train", choices=("train", "test"))
    return parser


def main(argv=None):
    """Run one action; returns the exit code (0 ok, 2 bad input or usage)."""
    args = build_parser().parse_args(argv)
    try:
        if args.action == "produce":
            from shapepipe.modules.blend.produce import produce

            produce(args.datapath or ["./data"], n_blends=args.n_blends, mag_low=args.mag_low,
                    mag_high=args.mag_high, mag_diff=args.mag_diff, rad_diff=args.rad_diff,
                    test_ratio=args.test_ratio, excluded_types=args.excluded_type,
                    seed=args.seed, use_clean_galaxies=args.use_clean_galaxies,
                    outdir=args.outdir)
        elif args.action == "concatenate":
            from shapepipe.modules.blend.concatenate import concatenate

            concatenate(args.image_dir, args.method, delete=args.delete)
        elif args.action == "convert":
            from shapepipe.modules.blend.concatenate import convert

            convert(args.image_dir, zeropoint=args.zeropoint)
        else:
            from shapepipe.modules.blend.plot import plot_blends

            plot_blends(args.image_dir, args.output, n_show=args.n_show, prefix=args.prefix)
    except BlendError as err:
        print(f"shapepipe-blender {args.action}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
