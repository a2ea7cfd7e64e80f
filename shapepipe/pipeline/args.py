"""The command line of ``shapepipe_run``."""

import argparse

from shapepipe import __version__


def build_parser():
    """The argument parser (exit code 2 on usage errors, as argparse does)."""
    parser = argparse.ArgumentParser(
        prog="shapepipe_run",
        description="Run the modules of a ShapePipe config (one run directory per call).",
    )
    parser.add_argument("-c", "--config", help="configuration file (INI)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest run of this RUN_NAME, skipping completed jobs")
    parser.add_argument("--force", action="store_true",
                        help="with --resume: resume even if the config differs from the one "
                             "the run was started with (both are recorded)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved inputs and jobs of each module, run nothing")
    parser.add_argument("--list-modules", action="store_true",
                        help="list the available runners (built-in, MODULE_PATH, entry points)")
    parser.add_argument("--version", action="version", version=f"shapepipe {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="more console output")
    verbosity.add_argument("-q", "--quiet", action="store_true",
                           help="only errors and the final summary on the console")
    return parser


def parse_args(argv=None):
    """Parse the command line; ``-c`` is required except with ``--list-modules``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.config and not args.list_modules:
        parser.error("the following argument is required: -c/--config")
    if args.force and not args.resume:
        parser.error("--force only applies to --resume")
    return args
