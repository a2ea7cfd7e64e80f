"""CFIS tiles and exposures: tile numbering, file names, and the exposures of a tile.

Pipeline-agnostic helpers for preparing CFIS/UNIONS inputs (``scripts/cfis_field_select.py``,
``scripts/cfis_create_image_links.py``) and for the tile post-processing of sextractor.

Tile numbering (CFIS stacks of 0.5 deg spacing): tile ``xxx.yyy`` is centred at
``Dec_c = yyy / 2 - 90`` and ``RA_c = xxx / 2 / cos(Dec_c)``. The tile of a position is the
nearest centre: ``yyy = round((Dec + 90) * 2)``, then ``xxx = round(RA * cos(Dec_c) * 2)``
(``xxx = 720`` is tile 0). The cosine is taken at the centre of the tile row, which makes
the two formulas exact inverses; ShapePipe takes it at the position's own Dec, which near
the edge of a row at high Dec picks a tile that does not contain the position (at Dec 51.74,
RA 216.87: tile 269 instead of 270).

File names::

    CFIS.270.283.r.fits            tile (band r)          -> CFIS_image-270-283.fits
    CFIS.270.283.r.weight.fits.fz  tile weight            -> CFIS_weight-270-283.fits.fz
    2000001p.fits.fz               exposure               -> image-2000001.fits.fz
    2000001p.weight.fits.fz        exposure weight        -> weight-2000001.fits.fz
    2000001p.flag.fits.fz          exposure flag          -> flag-2000001.fits.fz

A tile's header lists the exposures co-added into it in HISTORY cards
(``input exposure 2000001p.fits.fz``); :func:`exposures_from_header` reads them.
"""

import os
import re

import numpy as np

#: Exposure names in HISTORY cards: ``input exposure 2000001p.fits.fz`` (CFIS and simulation).
HISTORY_EXP_RE = re.compile(r"(\d+)p\.")

#: An original CFIS tile file name: CFIS.<xxx>.<yyy>.<band>[.weight|.flag].fits[.fz].
RAW_TILE_RE = re.compile(
    r"^CFIS\.(?P<x>\d{3})\.(?P<y>\d{3})\.(?P<band>[A-Za-z]+)(?P<kind>\.weight|\.flag)?"
    r"(?P<ext>\.fits(?:\.fz)?)$"
)
#: An original CFIS exposure file name: <digits>p[.weight|.flag].fits[.fz].
RAW_EXPOSURE_RE = re.compile(r"^(?P<exp>\d+)p(?P<kind>\.weight|\.flag)?(?P<ext>\.fits(?:\.fz)?)$")
#: A tile number alone, as in the released ID lists: 270.283 (or 270-283).
TILE_ID_RE = re.compile(r"^(?P<x>\d{3})[.\-](?P<y>\d{3})$")
#: A pipeline tile name: <base>-<xxx>-<yyy>.fits[.fz], e.g. CFIS_image-270-283.fits.
PIPELINE_TILE_RE = re.compile(r"^(?P<base>.+)-(?P<x>\d{3})-(?P<y>\d{3})(?P<ext>\.fits(?:\.fz)?)$")

#: Tile file types (``-t``) and the suffix after the band.
TILE_TYPES = {"tile": ".fits", "weight": ".weight.fits", "weight.fz": ".weight.fits.fz"}
#: Exposure file types (``-t``) and the suffix after ``<exp>p``, as ShapePipe names them.
EXPOSURE_TYPES = {
    "exposure": ".fits.fz",
    "exposure_weight": ".weight.fits",
    "exposure_weight.fz": ".weight.fits.fz",
    "exposure_flag": ".flag.fits",
    "exposure_flag.fz": ".flag.fits.fz",
}

#: Names of the exposure links (ShapePipe's split_exp patterns), by raw kind.
EXPOSURE_LINK_BASES = {"": "image", ".weight": "weight", ".flag": "flag"}


class CfisError(ValueError):
    """A CFIS name, coordinate or file that cannot be used."""


def tile_number_from_coord(ra, dec):
    """CFIS tile number(s) whose centre is nearest to the position(s).

    Parameters
    ----------
    ra, dec : float or array_like
        Position(s) in degrees; RA is taken modulo 360.

    Returns
    -------
    x, y : int or numpy.ndarray of int
        Tile numbers (``xxx``, ``yyy``), scalars for scalar input.

    Raises
    ------
    CfisError
        If a Dec is outside [-90, 90] or a value is not finite.
    """
    ra_arr = np.asarray(ra, dtype=float)
    dec_arr = np.asarray(dec, dtype=float)
    if not (np.all(np.isfinite(ra_arr)) and np.all(np.isfinite(dec_arr))):
        raise CfisError("coordinates must be finite numbers")
    if np.any(np.abs(dec_arr) > 90.0):
        bad = dec_arr[np.abs(dec_arr) > 90.0].ravel()[0]
        raise CfisError(f"Dec = {bad:g} deg is outside [-90, 90]")
    y = np.rint((dec_arr + 90.0) * 2.0).astype(int)
    # cos of the tile row's centre (see the module docstring), never negative: |Dec_c| <= 90.
    cos_c = np.cos(np.deg2rad(y / 2.0 - 90.0))
    x = np.rint(np.mod(ra_arr, 360.0) * cos_c * 2.0).astype(int)
    x = np.where(x == 720, 0, x)
    if x.ndim == 0:
        return int(x), int(y)
    return x, y


def tile_center(x, y):
    """RA, Dec (deg) of the centre of CFIS tile(s) ``x.y``.

    Parameters
    ----------
    x, y : int or array_like of int
        Tile numbers.

    Returns
    -------
    ra, dec : float or numpy.ndarray
        Centre in degrees (RA as given by the numbering, i.e. possibly >= 360 for the last
        tiles of a row; take it modulo 360 for comparisons).
    """
    dec = np.asarray(y, dtype=float) / 2.0 - 90.0
    ra = np.asarray(x, dtype=float) / 2.0 / np.cos(np.deg2rad(dec))
    if ra.ndim == 0:
        return float(ra), float(dec)
    return ra, dec


def tile_id(x, y, sep="."):
    """Tile number string, e.g. ``tile_id(270, 283) == '270.283'``."""
    return f"{int(x):03d}{sep}{int(y):03d}"


def tile_file_name(x, y, kind="tile", band="r"):
    """Original CFIS file name of a tile.

    Parameters
    ----------
    x, y : int
        Tile numbers.
    kind : str
        ``tile``, ``weight`` or ``weight.fz`` (see :data:`TILE_TYPES`).
    band : str
        Filter band.

    Returns
    -------
    str
        E.g. ``CFIS.270.283.r.fits``, ``CFIS.270.283.r.weight.fits.fz``.
    """
    if kind not in TILE_TYPES:
        raise CfisError(f"tile type {kind!r}: expected one of {', '.join(TILE_TYPES)}")
    return f"CFIS.{tile_id(x, y)}.{band}{TILE_TYPES[kind]}"


def exposure_file_name(exp, kind="exposure"):
    """Original CFIS file name of an exposure, e.g. ``2000001p.flag.fits.fz``.

    Parameters
    ----------
    exp : str or int
        Exposure number.
    kind : str
        One of :data:`EXPOSURE_TYPES`.

    Returns
    -------
    str
    """
    if kind not in EXPOSURE_TYPES:
        raise CfisError(f"exposure type {kind!r}: expected one of {', '.join(EXPOSURE_TYPES)}")
    return f"{exp}p{EXPOSURE_TYPES[kind]}"


def tile_number_from_name(name):
    """Tile number of an original CFIS tile name, a pipeline tile name or a bare tile ID.

    Parameters
    ----------
    name : str
        ``CFIS.270.283.r.fits``, ``CFIS_image-270-283.fits``, ``270.283``... (a path is
        reduced to its base name).

    Returns
    -------
    (int, int) or None
        ``(x, y)``, or None if the name is none of these.
    """
    base = os.path.basename(name)
    for regex in (RAW_TILE_RE, PIPELINE_TILE_RE, TILE_ID_RE):
        match = regex.match(base)
        if match:
            return int(match["x"]), int(match["y"])
    return None


def tile_matches_type(name, kind, band="r"):
    """Whether an original tile file name is of type ``kind`` in ``band``.

    ``weight`` matches both ``.weight.fits`` and ``.weight.fits.fz`` (the released weights
    are compressed); ``weight.fz`` only the latter; ``tile`` the image ``.fits``.
    """
    match = RAW_TILE_RE.match(os.path.basename(name))
    if not match or match["band"] != band:
        return False
    if kind == "tile":
        return match["kind"] is None and match["ext"] == ".fits"
    if kind == "weight":
        return match["kind"] == ".weight"
    if kind == "weight.fz":
        return match["kind"] == ".weight" and match["ext"] == ".fits.fz"
    raise CfisError(f"tile type {kind!r}: expected one of {', '.join(TILE_TYPES)}")


def select_tiles_at(numbers, ra, dec):
    """Indices of the tiles (given by number) that contain a position.

    Parameters
    ----------
    numbers : array_like, shape (N, 2)
        Tile numbers ``(x, y)`` of the candidate tiles.
    ra, dec : float
        Position (deg).

    Returns
    -------
    numpy.ndarray of int
        Indices into ``numbers`` of the tile numbered for this position (several if the
        list repeats it, e.g. a tile and its weight).
    """
    x, y = tile_number_from_coord(ra, dec)
    numbers = np.asarray(numbers, dtype=int).reshape(-1, 2)
    return np.flatnonzero((numbers[:, 0] == x) & (numbers[:, 1] == y))


def select_tiles_in_area(numbers, ra1, dec1, ra2, dec2):
    """Indices of the tiles whose centre lies in an RA-Dec rectangle (ShapePipe's rule).

    Parameters
    ----------
    numbers : array_like, shape (N, 2)
        Tile numbers ``(x, y)``.
    ra1, dec1, ra2, dec2 : float
        Corners (deg). RA runs from ``ra1`` to ``ra2`` eastwards: ``ra1 > ra2`` (after
        reduction modulo 360) is an area across RA = 0, e.g. 350 to 10; a span of 360 deg
        or more is the whole circle. The Dec bounds may be given in any order. Bounds are
        inclusive.

    Returns
    -------
    numpy.ndarray of int
        Indices into ``numbers``, in input order.
    """
    numbers = np.asarray(numbers, dtype=int).reshape(-1, 2)
    for value in (dec1, dec2):
        if abs(value) > 90.0:
            raise CfisError(f"Dec = {value:g} deg is outside [-90, 90]")
    ra_c, dec_c = tile_center(numbers[:, 0], numbers[:, 1])
    ra_c = np.mod(ra_c, 360.0)
    low, high = sorted((dec1, dec2))
    in_dec = (dec_c >= low) & (dec_c <= high)
    if abs(ra2 - ra1) >= 360.0:
        in_ra = np.ones(len(numbers), bool)
    else:
        a, b = np.mod(ra1, 360.0), np.mod(ra2, 360.0)
        in_ra = (ra_c >= a) & (ra_c <= b) if a <= b else (ra_c >= a) | (ra_c <= b)
    return np.flatnonzero(in_dec & in_ra)


def parse_coords(text):
    """Parse ``--coord``: two angles (a position) or four (an area), astropy angle strings.

    Parameters
    ----------
    text : str
        Values separated by ``_`` or blanks, e.g. ``216.87deg_51.50deg``,
        ``14h27m29s_+51d30m``, ``210_50_220_53`` (a bare number is in degrees).

    Returns
    -------
    list of float
        Two or four values in degrees.

    Raises
    ------
    CfisError
        If a value is not an angle or their number is neither 2 nor 4.
    """
    from astropy import units
    from astropy.coordinates import Angle

    parts = [p for p in re.split(r"[_\s]+", text.strip()) if p]
    if len(parts) not in (2, 4):
        raise CfisError(f"--coord {text!r}: expected RA_DEC or RA1_DEC1_RA2_DEC2, "
                        f"found {len(parts)} value(s)")
    values = []
    for part in parts:
        try:
            values.append(float(Angle(part, unit=units.deg).deg))
        except (ValueError, units.UnitsError) as exc:
            raise CfisError(f"--coord {text!r}: {part!r} is not an angle ({exc})") from None
    for dec in values[1::2]:
        if abs(dec) > 90.0:
            raise CfisError(f"--coord {text!r}: Dec = {dec:g} deg is outside [-90, 90]")
    return values


def exposures_from_header(header):
    """Exposure names listed in the HISTORY cards of a tile header, in order, without repeats.

    Parameters
    ----------
    header : astropy.io.fits.Header

    Returns
    -------
    list of str
        E.g. ``['2000001', '2000002']`` for cards ``input exposure 2000001p.fits.fz`` ...
    """
    names = []
    for card in header.get("HISTORY", []):
        match = HISTORY_EXP_RE.search(str(card))
        if match and match.group(1) not in names:
            names.append(match.group(1))
    return names


def exposures_of_tile(path):
    """Exposures co-added into a tile file, from its HISTORY cards.

    The cards are read from the primary header, or from the first extension when the
    primary has none (a tile-compressed ``.fits.fz`` keeps the image header there).

    Parameters
    ----------
    path : str
        Tile FITS file.

    Returns
    -------
    list of str
        Exposure numbers.

    Raises
    ------
    CfisError
        If the file cannot be read as FITS.
    """
    from astropy.io import fits

    try:
        with fits.open(path) as hdul:
            for hdu in hdul[:2]:
                names = exposures_from_header(hdu.header)
                if names:
                    return names
    except (OSError, ValueError, IndexError) as exc:
        raise CfisError(f"{path}: cannot read the tile header ({exc})") from None
    return []


def pipeline_link_name(name, kind, image_base="CFIS_image", weight_base="CFIS_weight"):
    """The pipeline's name for an original CFIS file name (the extension is kept).

    Parameters
    ----------
    name : str
        Base name of an original file (``CFIS.270.283.r.fits``, ``2000001p.flag.fits.fz``).
    kind : str
        ``tile`` or ``exposure``.
    image_base, weight_base : str
        Name prefixes of tile images and weights.

    Returns
    -------
    str or None
        ``CFIS_image-270-283.fits``, ``flag-2000001.fits.fz``...; None if ``name`` is not a
        file of that kind (tile flags have no pipeline name and give None too).
    """
    base = os.path.basename(name)
    if kind == "tile":
        match = RAW_TILE_RE.match(base)
        if not match or match["kind"] == ".flag":
            return None
        prefix = weight_base if match["kind"] == ".weight" else image_base
        return f"{prefix}-{match['x']}-{match['y']}{match['ext']}"
    if kind == "exposure":
        match = RAW_EXPOSURE_RE.match(base)
        if not match:
            return None
        return f"{EXPOSURE_LINK_BASES[match['kind'] or '']}-{match['exp']}{match['ext']}"
    raise CfisError(f"type {kind!r}: expected tile or exposure")


def plan_links(names, kind, output_dir, image_base="CFIS_image", weight_base="CFIS_weight"):
    """Link names for the original files, checked before any link is made.

    Parameters
    ----------
    names : list of str
        Base names of the input files (files of another kind are skipped).
    kind : str
        ``tile`` or ``exposure``.
    output_dir : str
        Where the links will be.
    image_base, weight_base : str
        Tile name prefixes.

    Returns
    -------
    list of (str, str)
        ``(input name, link name)`` pairs, in input order.

    Raises
    ------
    CfisError
        If two inputs would get the same link name, or a link name already exists in
        ``output_dir`` (the message names it).
    """
    pairs, seen = [], {}
    for name in names:
        link = pipeline_link_name(name, kind, image_base, weight_base)
        if link is None:
            continue
        if link in seen:
            raise CfisError(f"{seen[link]} and {name} would both be linked as {link}")
        seen[link] = name
        pairs.append((name, link))
    for name, link in pairs:
        path = os.path.join(output_dir, link)
        if os.path.lexists(path):
            raise CfisError(f"{path} already exists (for {name}); no link was made")
    return pairs
