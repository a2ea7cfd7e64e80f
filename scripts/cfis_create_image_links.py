#!/usr/bin/env python
"""Give original CFIS files the pipeline's names, as symbolic links.

    python scripts/cfis_create_image_links.py -i INPUT_DIR -o OUTPUT_DIR -t tile|exposure [-v]
        [--image_base_new CFIS_image] [--weight_base_new CFIS_weight]

Tiles: ``CFIS.270.283.r.fits`` -> ``CFIS_image-270-283.fits``,
``CFIS.270.283.r.weight.fits.fz`` -> ``CFIS_weight-270-283.fits.fz``. Exposures:
``2000001p.fits.fz`` -> ``image-2000001.fits.fz``, ``2000001p.weight.fits.fz`` ->
``weight-2000001.fits.fz``, ``2000001p.flag.fits.fz`` -> ``flag-2000001.fits.fz``. The
extension is kept; the dots inside the name are not (a pipeline number is ``-270-283`` or
``-2000001``). Links point to absolute paths. Other files in INPUT_DIR are ignored. If a
link name already exists in OUTPUT_DIR (or two inputs would share one), nothing is linked and
the error names it. ``--weight_base_nw`` (the tutorial's spelling) is ``--weight_base_new``.
Exit code 0, 1 when INPUT_DIR holds no file of the type, 2 for any other error (one line on
stderr).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.utils import cfis  # noqa: E402

PROG = "cfis_create_image_links"


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", required=True, help="directory of original CFIS files")
    parser.add_argument("-o", "--output", required=True,
                        help="directory of the links (created if absent)")
    parser.add_argument("-t", "--type", required=True, choices=["tile", "exposure"],
                        help="tile or exposure")
    parser.add_argument("--image_base_new", default="CFIS_image",
                        help="name prefix of tile image links (default CFIS_image)")
    parser.add_argument("--weight_base_new", "--weight_base_nw", dest="weight_base_new",
                        default="CFIS_weight",
                        help="name prefix of tile weight links (default CFIS_weight)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each link made")
    args = parser.parse_args(argv)
    try:
        for option, base in (("--image_base_new", args.image_base_new),
                             ("--weight_base_new", args.weight_base_new)):
            if not base or os.sep in base:
                raise cfis.CfisError(f"{option} {base!r}: expected a file name prefix")
        if not os.path.isdir(args.input):
            raise cfis.CfisError(f"-i {args.input}: not a directory")
        try:
            names = sorted(os.listdir(args.input))
        except OSError as exc:
            raise cfis.CfisError(f"-i {args.input}: cannot list the directory "
                                 f"({exc.strerror})") from None
        if os.path.exists(args.output) and not os.path.isdir(args.output):
            raise cfis.CfisError(f"-o {args.output}: exists and is not a directory")
        pairs = cfis.plan_links(names, args.type, args.output, args.image_base_new,
                                args.weight_base_new)
        if not pairs:
            what = "CFIS.xxx.yyy.<band>[.weight].fits[.fz]" if args.type == "tile" else (
                "<number>p[.weight|.flag].fits[.fz]")
            print(f"{PROG}: -i {args.input}: no {args.type} file ({what}) found", file=sys.stderr)
            return 1
        os.makedirs(args.output, exist_ok=True)
        source_dir = os.path.abspath(args.input)
        for name, link in pairs:
            # Not ln -f: plan_links checked every name, and a name that appeared since is an
            # error (FileExistsError) rather than a silent replacement.
            os.symlink(os.path.join(source_dir, name), os.path.join(args.output, link))
            if args.verbose:
                print(f"{link} -> {os.path.join(source_dir, name)}")
    except cfis.CfisError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG}: {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if args.verbose:
        print(f"{len(pairs)} link(s) in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
