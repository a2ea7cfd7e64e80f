"""Mask templates (ds9 region files) and ds9 region output.

A template describes the mask of one star at the pivot magnitude, in pixels relative to the
star centre. Two formats are read:

- ds9 region files: every ``polygon(x1, y1, x2, y2, ...)`` shape (optionally prefixed by a
  coordinate system such as ``image;``; comments, ``global`` and coordinate-system lines are
  skipped). Several polygons make one template (e.g. the four arms of the spikes).
- ShapePipe's model files: two whitespace-separated columns ``x y``, one vertex per line,
  forming a single polygon.

Anything else (circles, boxes, sky coordinates) is refused with a message naming the line.
"""

import re

import numpy as np

from shapepipe.utils.atomic import write_text

_POLYGON_RE = re.compile(r"^\s*(?:[a-z]+\s*;\s*)?polygon\s*\(([^)]*)\)", re.IGNORECASE)
_SKIP_RE = re.compile(
    r"^\s*(#.*|global\b.*|image\s*|physical\s*|fk5\s*|icrs\s*|)$", re.IGNORECASE
)
_NUMBER_LINE_RE = re.compile(r"^\s*[-+0-9.eE]+\s+[-+0-9.eE]+\s*$")


def read_template(path):
    """Read a mask template.

    Parameters
    ----------
    path : str
        ds9 region file of polygons, or ShapePipe two-column vertex list.

    Returns
    -------
    list of numpy.ndarray
        Polygons, each of shape (n_vertices, 2), in pixels relative to the star.

    Raises
    ------
    ValueError
        If the file holds no polygon or an unsupported shape.
    """
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    polygons, columns = [], []
    for number, line in enumerate(lines, start=1):
        match = _POLYGON_RE.match(line)
        if match:
            values = [v for v in re.split(r"[,\s]+", match.group(1).strip()) if v]
            try:
                coords = np.array([float(v) for v in values])
            except ValueError:
                raise ValueError(
                    f"{path}:{number}: polygon with non-numeric coordinates "
                    "(templates are in pixels relative to the star)"
                ) from None
            if coords.size < 6 or coords.size % 2:
                raise ValueError(
                    f"{path}:{number}: polygon needs at least 3 (x, y) pairs, got "
                    f"{coords.size} numbers"
                )
            polygons.append(coords.reshape(-1, 2))
        elif _NUMBER_LINE_RE.match(line):
            columns.append([float(v) for v in line.split()])
        elif not _SKIP_RE.match(line):
            raise ValueError(
                f"{path}:{number}: unsupported region {line.strip()[:40]!r}; templates hold "
                "ds9 polygon(...) shapes in image pixels relative to the star, or two "
                "columns x y"
            )
    if columns:
        if polygons:
            raise ValueError(f"{path}: mixes ds9 polygons and x y columns")
        if len(columns) < 3:
            raise ValueError(f"{path}: a polygon needs at least 3 vertices")
        polygons.append(np.array(columns))
    if not polygons:
        raise ValueError(f"{path}: no polygon found in the mask template")
    return polygons


def place_template(template, x, y, scale):
    """Polygons of a template scaled and centred on each star.

    Parameters
    ----------
    template : list of numpy.ndarray
        Polygons relative to the star (pixels).
    x, y : numpy.ndarray
        Star centres, 0-based pixel coordinates.
    scale : numpy.ndarray
        Size factor of each star (``1 - SCALE_FACTOR * (mag - MAG_PIVOT)``).

    Returns
    -------
    list of numpy.ndarray
        For each template polygon, an array (n_star, n_vertices, 2) of placed vertices.
    """
    x = np.asarray(x, dtype=float)[:, None]
    y = np.asarray(y, dtype=float)[:, None]
    scale = np.asarray(scale, dtype=float)[:, None]
    placed = []
    for poly in template:
        px = x + scale * poly[None, :, 0]
        py = y + scale * poly[None, :, 1]
        placed.append(np.stack([px, py], axis=-1))
    return placed


def template_radius(template):
    """Largest distance (pixels) of a template vertex from the star centre."""
    return max(float(np.max(np.hypot(p[:, 0], p[:, 1]))) for p in template)


def region_text(placed_groups, color="green", label=None):
    """ds9 region file text (image coordinates, 1-based) for placed polygons.

    Parameters
    ----------
    placed_groups : list of numpy.ndarray
        Arrays (n_star, n_vertices, 2) in 0-based pixel coordinates.
    color : str
        ds9 colour of the shapes.
    label : str, optional
        Text tag added to every shape.

    Returns
    -------
    str
    """
    lines = ["# Region file format: DS9 version 4.1",
             f"global color={color} dashlist=8 3 width=1 select=1", "image"]
    tag = f" # tag={{{label}}}" if label else ""
    for group in placed_groups:
        # ds9 image coordinates are 1-based: the centre of the first pixel is (1, 1).
        for poly in group + 1.0:
            coords = ",".join(f"{v:.3f}" for v in poly.ravel())
            lines.append(f"polygon({coords}){tag}")
    return "\n".join(lines) + "\n"


def write_regions(path, placed_groups, color="green", label=None):
    """Write placed polygons as a ds9 region file, atomically (see :func:`region_text`)."""
    write_text(region_text(placed_groups, color=color, label=label), path)
