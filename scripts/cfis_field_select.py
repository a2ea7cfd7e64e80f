#!/usr/bin/env python
"""Select CFIS tiles covering a sky position or area, or the exposures co-added into tiles.

    python scripts/cfis_field_select.py -i INPUT --coord RA_DEC -t tile|weight|weight.fz
    python scripts/cfis_field_select.py -i INPUT --coord RA1_DEC1_RA2_DEC2 -t tile
    python scripts/cfis_field_select.py -i TILE_DIR --tile -t exposure|exposure_weight.fz|
                                        exposure_flag.fz|exposure_weight|exposure_flag
    options: [-b BAND] [-o FILE] [-v] [--out_ID_only]

``-i`` is a tile list (one file name or tile ID ``270.283`` per line, like CFIS's released
lists; ``#`` starts a comment) or a directory. Angles are astropy angle strings
(``216.87deg``, ``14h27m29s``; a bare number is in degrees), separated by ``_``. A position
selects the tile numbered for it (``y = round((Dec + 90) * 2)``, ``x = round(RA cos(Dec_y) * 2)``,
``x = 720`` is 0); an area the tiles whose centre is inside it (``RA1 > RA2``: across RA = 0).
``--tile`` reads each tile's HISTORY cards. The names are printed one per line (``-o FILE``:
written to FILE instead). Exit code 0, 1 when nothing is found (e.g. a position outside the
tiles of INPUT), 2 for bad input; errors are one line on stderr.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.utils import cfis  # noqa: E402
from shapepipe.utils.atomic import atomic_path  # noqa: E402

PROG = "cfis_field_select"


class NothingFound(Exception):
    """The selection is empty (exit code 1)."""


def read_input_names(path):
    """Names listed in a tile list file, or the file names of a directory (sorted).

    Parameters
    ----------
    path : str
        List file or directory.

    Returns
    -------
    list of str
        Base names (a list's first column; blank and ``#`` lines skipped).
    """
    if os.path.isdir(path):
        try:
            return sorted(os.listdir(path))
        except OSError as exc:
            raise cfis.CfisError(f"-i {path}: cannot list the directory ({exc.strerror})") from None
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not a text file"
        raise cfis.CfisError(f"-i {path}: cannot read the tile list ({reason})") from None
    names = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(os.path.basename(line.split()[0]))
    return names


def candidate_tiles(names, kind, band):
    """The names of type ``kind`` and their tile numbers.

    A bare tile ID (``270.283``) stands for the tile of that number: its file name of type
    ``kind`` is built.

    Returns
    -------
    list of str, list of (int, int)
    """
    out_names, numbers = [], []
    for name in names:
        match = cfis.TILE_ID_RE.match(name)
        if match:
            x, y = int(match["x"]), int(match["y"])
            name = cfis.tile_file_name(x, y, kind, band)
        elif not cfis.tile_matches_type(name, kind, band):
            continue
        number = cfis.tile_number_from_name(name)
        if name not in out_names:
            out_names.append(name)
            numbers.append(number)
    return out_names, numbers


def select_by_coord(args, log):
    """Tile names covering ``--coord`` (a position or an area)."""
    if args.type not in cfis.TILE_TYPES:
        raise cfis.CfisError(f"-t {args.type}: with --coord expected one of "
                             f"{', '.join(cfis.TILE_TYPES)}")
    values = cfis.parse_coords(args.coord)
    names, numbers = candidate_tiles(read_input_names(args.input), args.type, args.band)
    log(f"{len(names)} {args.type} file(s) of band {args.band} in {args.input}")
    if not names:
        raise NothingFound(f"-i {args.input}: no {args.type} file of band {args.band}")
    if len(values) == 2:
        ra, dec = values
        x, y = cfis.tile_number_from_coord(ra, dec)
        log(f"RA = {ra:.5f} deg, Dec = {dec:.5f} deg: tile {cfis.tile_id(x, y)}")
        index = cfis.select_tiles_at(numbers, ra, dec)
        if index.size == 0:
            raise NothingFound(
                f"RA = {ra:.5f} deg, Dec = {dec:.5f} deg is outside the tiles of {args.input}: "
                f"its tile {cfis.tile_id(x, y)} is not listed ({len(names)} {args.type} files)"
            )
    else:
        index = cfis.select_tiles_in_area(numbers, *values)
        if index.size == 0:
            raise NothingFound(
                f"no {args.type} file of {args.input} has its centre in the area RA "
                f"{values[0]:.5f} to {values[2]:.5f} deg, Dec {values[1]:.5f} to "
                f"{values[3]:.5f} deg ({len(names)} {args.type} files)"
            )
    if args.out_ID_only:
        return list(dict.fromkeys(cfis.tile_id(*numbers[i]) for i in index))
    return [names[i] for i in index]


def is_tile_image(name, band):
    """A tile image: ``CFIS.xxx.yyy.<band>.fits`` or a pipeline ``CFIS_image-xxx-yyy.fits``."""
    if cfis.tile_matches_type(name, "tile", band):
        return True
    match = cfis.PIPELINE_TILE_RE.match(name)
    return bool(match) and "image" in match["base"].lower()


def select_exposures(args, log):
    """Exposure names co-added into the tiles of ``-i``, from their HISTORY cards."""
    if args.type not in cfis.EXPOSURE_TYPES:
        raise cfis.CfisError(f"-t {args.type}: with --tile expected one of "
                             f"{', '.join(cfis.EXPOSURE_TYPES)}")
    if os.path.isdir(args.input):
        names = [n for n in read_input_names(args.input) if is_tile_image(n, args.band)]
        paths = [os.path.join(args.input, n) for n in names]
    elif os.path.isfile(args.input):
        paths = [args.input]
    else:
        raise cfis.CfisError(f"-i {args.input}: no such file or directory")
    if not paths:
        raise NothingFound(f"-i {args.input}: no tile image (CFIS.xxx.yyy.{args.band}.fits) found")
    exposures = []
    for path in paths:
        found = cfis.exposures_of_tile(path)
        log(f"{path}: {len(found)} exposure(s) in HISTORY")
        exposures.extend(e for e in found if e not in exposures)
    if not exposures:
        raise NothingFound(f"-i {args.input}: no exposure named in the HISTORY of "
                           f"{len(paths)} tile(s)")
    return [cfis.exposure_file_name(exp, args.type) for exp in exposures]


def write_list(names, path):
    """Write one name per line, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("".join(f"{n}\n" for n in names))


def main(argv=None):
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", required=True,
                        help="tile list file or directory (with --tile: tile directory or file)")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--coord", help="RA_DEC or RA1_DEC1_RA2_DEC2 (astropy angles)")
    mode.add_argument("--area", help="RA1_DEC1_RA2_DEC2, the same as --coord with four values")
    mode.add_argument("--tile", action="store_true",
                      help="print the exposures co-added into the tiles of -i")
    parser.add_argument("-t", "--type", default="tile",
                        help="tile, weight, weight.fz (--coord); exposure, exposure_weight.fz, "
                             "exposure_flag.fz, exposure_weight, exposure_flag (--tile)")
    parser.add_argument("-b", "--band", default="r", help="band (default r)")
    parser.add_argument("-o", "--output", help="write the list to this file instead of stdout")
    parser.add_argument("--out_ID_only", action="store_true",
                        help="print tile IDs (270.283) instead of file names (--coord)")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = parser.parse_args(argv)
    log = (lambda msg: print(f"{PROG}: {msg}", file=sys.stderr)) if args.verbose else (
        lambda msg: None)
    try:
        if args.area is not None:
            if len(cfis.parse_coords(args.area)) != 4:
                raise cfis.CfisError(f"--area {args.area!r}: expected RA1_DEC1_RA2_DEC2")
            args.coord = args.area
        if args.output and os.path.abspath(args.output) == os.path.abspath(args.input):
            raise cfis.CfisError(f"-o {args.output}: the same file as -i; it would be replaced")
        if not args.tile and not os.path.exists(args.input):
            raise cfis.CfisError(f"-i {args.input}: no such file or directory")
        names = select_exposures(args, log) if args.tile else select_by_coord(args, log)
        if args.output:
            write_list(names, args.output)
            log(f"wrote {len(names)} name(s) to {args.output}")
        else:
            print("\n".join(names))
    except NothingFound as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except cfis.CfisError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
