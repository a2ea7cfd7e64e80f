"""Vectorised rasterisation of polygons and circles onto a pixel grid.

A pixel belongs to a shape when its centre does. Pixel ``[i, j]`` of a numpy array has its
centre at 0-based coordinates ``(x, y) = (j, i)``.

Polygons are filled with a scanline algorithm evaluated for all polygons at once: for every
(polygon, image row) pair the crossings of the row centre with the polygon edges are computed
in one array, sorted, and paired with the even-odd rule into column spans; overlapping spans
of different polygons are merged (sorted intervals of the flattened image with a running
maximum) and the covered pixels are set once. The cost is proportional to the rows times the
edges of each polygon plus the number of covered pixels (never the full image), and there is
no Python loop over polygons or pixels.
"""

import numpy as np


def fill_polygons(polygons, shape):
    """Boolean mask of the pixels whose centre lies inside any of the polygons.

    Parameters
    ----------
    polygons : array_like (n_poly, n_vert, 2), or list of (n_vert_k, 2) or (n, n_vert_k, 2)
        Vertices ``(x, y)`` in 0-based pixel coordinates: one batch of polygons with the
        same vertex count, or a list of single polygons and/or batches. Polygons may be
        concave; the even-odd rule decides insideness within one polygon, and the result
        is the union of all polygons.
    shape : tuple of int
        ``(ny, nx)`` of the image.

    Returns
    -------
    numpy.ndarray of bool, shape ``shape``
    """
    ny, nx = shape
    mask = np.zeros(shape, dtype=bool)
    spans = [_spans(group, ny, nx) for group in _groups(polygons)]
    spans = [s for s in spans if s is not None]
    if not spans:
        return mask
    rows, lo, hi = (np.concatenate(parts) for parts in zip(*spans))
    if not rows.size:
        return mask
    # Spans as half-open intervals of the flattened image; merging the overlapping ones
    # (the union of all polygons) leaves disjoint intervals whose pixels are set once.
    start = rows * nx + lo
    stop = rows * nx + hi
    order = np.argsort(start, kind="stable")
    start, stop = start[order], stop[order]
    reach = np.maximum.accumulate(stop)
    first = np.r_[True, start[1:] > reach[:-1]]
    starts = start[first]
    stops = reach[np.r_[np.flatnonzero(first)[1:] - 1, len(start) - 1]]
    _set_intervals(mask.reshape(-1), starts, stops)
    return mask


# Intervals longer than this are set by slicing, shorter ones by one fancy-index assignment.
_LONG_INTERVAL = 4096


def _set_intervals(flat, starts, stops):
    """Set ``flat[starts[k]:stops[k]] = True`` for disjoint intervals, vectorised."""
    lengths = stops - starts
    long = lengths > _LONG_INTERVAL
    # Few long intervals (at most covered pixels / 4096): plain slices.
    for a, b in zip(starts[long], stops[long]):
        flat[a:b] = True
    starts, lengths = starts[~long], lengths[~long]
    if not lengths.size:
        return
    # Pixel indices of many short intervals at once (arange shifted per interval), by
    # chunks of about _CHUNK pixels so that the index arrays stay small on large tiles.
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(ends, np.arange(_CHUNK, int(ends[-1]), _CHUNK), side="right")
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(lengths)]):
        if a == b:
            continue
        part_start, part_len = starts[a:b], lengths[a:b]
        offsets = np.repeat(part_start - (np.cumsum(part_len) - part_len), part_len)
        flat[offsets + np.arange(int(part_len.sum()))] = True


# Number of pixels set per fancy-index assignment (index arrays of ~32 MB).
_CHUNK = 1 << 22


def _groups(polygons):
    """Split polygons into arrays of equal vertex counts (n_poly, n_vert, 2)."""
    if isinstance(polygons, np.ndarray) and polygons.ndim == 3:
        if len(polygons):
            yield polygons.astype(float, copy=False)
        return
    by_size = {}
    for poly in polygons:
        poly = np.asarray(poly, dtype=float)
        if poly.ndim == 3 and poly.shape[2] == 2 and poly.shape[1] >= 3:
            if len(poly):
                by_size.setdefault(poly.shape[1], []).extend(poly)
            continue
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
            raise ValueError(f"polygon with shape {poly.shape}: expected (n >= 3, 2) vertices")
        by_size.setdefault(len(poly), []).append(poly)
    for polys in by_size.values():
        yield np.stack(polys)


def _spans(polys, ny, nx):
    """Column spans ``(rows, col_lo, col_hi)`` (half-open) covered by ``polys`` (n, n_vert, 2).

    Returns None when the polygons cover no pixel centre of the image.
    """
    ys = polys[:, :, 1]
    row_lo = np.clip(np.ceil(ys.min(axis=1)), 0, ny).astype(np.int64)
    row_hi = np.clip(np.floor(ys.max(axis=1)), -1, ny - 1).astype(np.int64)
    x_lo = polys[:, :, 0].min(axis=1)
    x_hi = polys[:, :, 0].max(axis=1)
    n_rows = np.maximum(row_hi - row_lo + 1, 0)
    # Polygons entirely left/right of the image or between row centres cover nothing.
    n_rows[(x_hi < 0) | (x_lo > nx - 1)] = 0
    if n_rows.sum() == 0:
        return None
    poly_index = np.repeat(np.arange(len(polys)), n_rows)
    offsets = np.arange(n_rows.sum()) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows)
    rows = row_lo[poly_index] + offsets
    # Edges k: vertex k -> vertex k+1 (closing edge included).
    x0 = polys[:, :, 0]
    y0 = polys[:, :, 1]
    x1 = np.roll(x0, -1, axis=1)
    y1 = np.roll(y0, -1, axis=1)
    ya, yb = y0[poly_index], y1[poly_index]
    xa, xb = x0[poly_index], x1[poly_index]
    yc = rows[:, None].astype(float)
    # Half-open rule (lower end included, upper excluded) counts a vertex on the row once
    # and ignores horizontal edges.
    crosses = (np.minimum(ya, yb) <= yc) & (yc < np.maximum(ya, yb))
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = xa + (yc - ya) * (xb - xa) / (yb - ya)
    xs = np.where(crosses, xs, np.inf)
    xs.sort(axis=1)
    starts = xs[:, 0::2]
    ends = xs[:, 1::2]
    n_pairs = min(starts.shape[1], ends.shape[1])
    starts, ends = starts[:, :n_pairs], ends[:, :n_pairs]
    valid = np.isfinite(starts) & np.isfinite(ends)
    # Pixel centres j with start <= j <= end.
    col_lo = np.clip(np.ceil(starts), 0, nx)
    col_hi = np.clip(np.floor(ends) + 1, 0, nx)
    valid &= col_lo < col_hi
    span_rows = np.broadcast_to(rows[:, None], starts.shape)[valid]
    return span_rows, col_lo[valid].astype(np.int64), col_hi[valid].astype(np.int64)


def fill_circles(centres, radii, shape):
    """Boolean mask of the pixels whose centre is within ``radius`` of a circle centre.

    Parameters
    ----------
    centres : array_like, shape (n, 2)
        Centres ``(x, y)`` in 0-based pixel coordinates (may lie outside the image).
    radii : array_like, shape (n,)
        Radii in pixels.
    shape : tuple of int
        ``(ny, nx)`` of the image.

    Returns
    -------
    numpy.ndarray of bool, shape ``shape``
    """
    ny, nx = shape
    mask = np.zeros(shape, dtype=bool)
    centres = np.atleast_2d(np.asarray(centres, dtype=float))
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    # Few large objects (Messier/NGC): each is evaluated on its bounding box only.
    for (xc, yc), r in zip(centres, radii):
        x_lo, x_hi = max(int(np.ceil(xc - r)), 0), min(int(np.floor(xc + r)), nx - 1)
        y_lo, y_hi = max(int(np.ceil(yc - r)), 0), min(int(np.floor(yc + r)), ny - 1)
        if x_lo > x_hi or y_lo > y_hi:
            continue
        yy, xx = np.ogrid[y_lo : y_hi + 1, x_lo : x_hi + 1]
        mask[y_lo : y_hi + 1, x_lo : x_hi + 1] |= (xx - xc) ** 2 + (yy - yc) ** 2 <= r * r
    return mask
