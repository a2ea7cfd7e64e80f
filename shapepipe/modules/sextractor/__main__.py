"""Command line: ``python -m shapepipe.modules.sextractor IMAGE CATALOG -c file.sex [...]``.

A SExtractor-like entry point without the pipeline (used by the benchmark).
"""

import argparse
import sys

from shapepipe.modules.sextractor.config_files import SexConfigError
from shapepipe.modules.sextractor.extraction import run_sextractor


def main(argv=None):
    """Run one extraction; returns the exit code (2 for a configuration error)."""
    parser = argparse.ArgumentParser(prog="python -m shapepipe.modules.sextractor",
                                     description="sep-based SExtractor-compatible extraction")
    parser.add_argument("image")
    parser.add_argument("catalog")
    parser.add_argument("-c", "--config", required=True, help=".sex file")
    parser.add_argument("-p", "--param", help=".param file")
    parser.add_argument("-f", "--filter", help=".conv file")
    parser.add_argument("-w", "--weight", help="weight image")
    parser.add_argument("--flag", help="flag image")
    parser.add_argument("--deblend-random", default="SEXTRACTOR", type=str.upper,
                        choices=["SEXTRACTOR", "SEP"],
                        help="random numbers sharing blended pixels out: SEXTRACTOR (default) "
                             "glibc rand() from srand(1), as source-extractor; SEP: sep's own")
    args = parser.parse_args(argv)
    try:
        info = run_sextractor(args.image, args.catalog, args.config, param_file=args.param,
                              conv_file=args.filter, weight_path=args.weight,
                              flag_path=args.flag, deblend_random_mode=args.deblend_random)
    except SexConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{info['n_objects']} objects -> {args.catalog}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
