"""Inputs of ``produce`` from a tile: 128x128 stamps of isolated galaxies with their truth.

A detection becomes a training galaxy when

- its nearest truth object (sky distance, at most ``match_radius``) is a galaxy;
- its 128x128 stamp, centred on its pixel (:func:`shapepipe.utils.pixels.stamp_corner`),
  lies inside the tile and every pixel of it has a positive weight;
- its own segment covers the stamp's centre pixel and stays ``margin`` pixels from the
  stamp's edges;
- no other segment comes within ``min_gap`` pixels (city-block) of its segment;
- no other truth object brighter than ``hidden_mag`` falls on its segment (a blend the
  detection did not split);
- its SExtractor FLAGS have none of the bits of ``flag_mask``.

The segmentation stamps are renumbered: 0 background, 1 the central galaxy, 2... its
neighbours, stored as uint8 (a stamp with more than 254 neighbours is left out).
"""

import csv
import os
import shutil
import tempfile

import numpy as np

from shapepipe.modules.blend.io import CAT_COLUMNS, CAT_FILE, IMG_FILE, SEG_FILE, STAMP_SIZE
from shapepipe.modules.blend.segmap import dilate
from shapepipe.utils.pixels import fits_to_numpy, stamp_corner

CHUNK = 256
TRUTH_COLUMNS = ("ID", "RA", "DEC", "IS_STAR", "MAG", "HLR", "GALTYPE", "Z")


def read_truth(path):
    """The truth columns the stamps need (:data:`TRUTH_COLUMNS`), as numpy arrays.

    Parameters
    ----------
    path : str
        A FITS table, e.g. the simulator's ``truth/objects.fits``.

    Returns
    -------
    dict
        ``{column: array}``.
    """
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        table = next((h for h in hdul if isinstance(h, fits.BinTableHDU)), None)
        if table is None:
            raise ValueError(f"{path}: no table HDU (expected the truth objects)")
        names = [n.upper() for n in table.columns.names]
        missing = [c for c in TRUTH_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"{path}: missing truth column(s) {', '.join(missing)}; expected "
                             f"{', '.join(TRUTH_COLUMNS)} (simulated data made before GALTYPE "
                             "and Z existed must be regenerated)")
        return {c: np.asarray(table.data[c]) for c in TRUTH_COLUMNS}


def match_truth(ra, dec, truth_ra, truth_dec, radius_arcsec):
    """Nearest truth object of each position, within ``radius_arcsec`` (-1: none).

    Parameters
    ----------
    ra, dec, truth_ra, truth_dec : numpy.ndarray
        Degrees.
    radius_arcsec : float

    Returns
    -------
    numpy.ndarray
        Index into the truth arrays, or -1.
    """
    from scipy.spatial import cKDTree

    def unit(a, d):
        a, d = np.radians(a), np.radians(d)
        return np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])

    chord = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
    dist, index = cKDTree(unit(truth_ra, truth_dec)).query(unit(ra, dec),
                                                           distance_upper_bound=chord)
    return np.where(np.isfinite(dist), index, -1)


def _windows(array, y0, x0, size):
    """(K, size, size) copies of ``array[y0:y0+size, x0:x0+size]`` for every corner."""
    view = np.lib.stride_tricks.sliding_window_view(array, (size, size))
    return view[y0, x0]


def _relabel(seg, central):
    """Renumber each stamp: 0 background, 1 ``central`` segment, 2... the others by id.

    Only the neighbours' pixels (a small part of a stamp of an isolated galaxy) are sorted:
    their (stamp, id) pairs are ranked once for the whole stack.
    """
    k = seg.shape[0]
    seg = np.asarray(seg, dtype=np.int64)
    label = (seg == central[:, None, None]).astype(np.int64)
    others = (seg != 0) & (label == 0)
    if others.any():
        stamp = np.broadcast_to(np.arange(k)[:, None, None], seg.shape)[others]
        span = int(seg[others].max()) + 1
        key = stamp * span + seg[others]
        uniq, inverse = np.unique(key, return_inverse=True)
        first = np.searchsorted(uniq, np.arange(k) * span)
        label[others] = inverse.ravel() - first[stamp] + 2
    return label


def select_and_cut(image, weight, seg, sexcat, truth, wcs, size=STAMP_SIZE,
                   match_radius=0.6, min_gap=10, margin=2, hidden_mag=24.5, flag_mask=3,
                   mag_source="truth", radius_source="truth"):
    """Stamps and catalogue of the isolated galaxies of one tile.

    Parameters
    ----------
    image, weight : numpy.ndarray
        Tile image and inverse variance (ny, nx).
    seg : numpy.ndarray
        SEGMENTATION check image of the tile (ids = the catalogue's NUMBER).
    sexcat : numpy record array
        Detections: NUMBER, XWIN_IMAGE, YWIN_IMAGE (1-based), XWIN_WORLD, YWIN_WORLD, FLAGS,
        and MAG_AUTO / FLUX_RADIUS if measured magnitudes / radii are asked for.
    truth : dict of numpy.ndarray
        RA, DEC, IS_STAR, MAG, HLR (arcsec), GALTYPE, Z, ID.
    wcs : astropy.wcs.WCS
        The tile's WCS (truth positions on the segmentation; pixel scale for the radii).
    size, match_radius, min_gap, margin, hidden_mag, flag_mask
        See the module docstring (pixels, arcsec, mag).
    mag_source, radius_source : {"truth", "measured"}
        Magnitude: truth MAG or MAG_AUTO; radius [pixels]: truth HLR or FLUX_RADIUS.

    Returns
    -------
    img : numpy.ndarray
        (K, size, size) float32.
    segs : numpy.ndarray
        (K, size, size) uint8.
    cat : dict
        ID, mag, radius, z, galtype (K rows).
    counts : dict
        Detections left after each criterion (for the log).
    """
    ny, nx = image.shape
    counts = {"detections": len(sexcat)}
    match = match_truth(np.asarray(sexcat["XWIN_WORLD"], float),
                        np.asarray(sexcat["YWIN_WORLD"], float),
                        truth["RA"], truth["DEC"], match_radius)
    keep = match >= 0
    counts["matched"] = int(keep.sum())
    keep &= truth["IS_STAR"][np.maximum(match, 0)] == 0
    counts["galaxies"] = int(keep.sum())
    keep &= (np.asarray(sexcat["FLAGS"]).astype(np.int64) & int(flag_mask)) == 0
    counts["flags ok"] = int(keep.sum())
    x = fits_to_numpy(sexcat["XWIN_IMAGE"])
    y = fits_to_numpy(sexcat["YWIN_IMAGE"])
    x0, y0, _, _ = stamp_corner(x, y, size)
    keep &= (x0 >= 0) & (y0 >= 0) & (x0 + size <= nx) & (y0 + size <= ny)
    counts["inside"] = int(keep.sum())

    # Truth objects brighter than hidden_mag per segment: a segment holding two is a blend.
    tx, ty = wcs.all_world2pix(truth["RA"], truth["DEC"], 0)
    ix, iy = np.floor(tx + 0.5).astype(np.int64), np.floor(ty + 0.5).astype(np.int64)
    on = (ix >= 0) & (iy >= 0) & (ix < nx) & (iy < ny) & (truth["MAG"] < hidden_mag)
    seg_of_truth = np.asarray(seg[iy[on], ix[on]]).astype(np.int64)
    truth_per_seg = np.bincount(seg_of_truth, minlength=int(np.max(sexcat["NUMBER"], initial=0))
                                + 1)
    number = np.asarray(sexcat["NUMBER"]).astype(np.int64)
    keep &= truth_per_seg[np.clip(number, 0, truth_per_seg.size - 1)] <= 1
    counts["not hidden blends"] = int(keep.sum())

    cand = np.flatnonzero(keep)
    out_img, out_seg, rows = [], [], []
    half = size // 2
    isolated_total = 0
    for start in range(0, cand.size, CHUNK):
        part = cand[start:start + CHUNK]
        s = _windows(seg, y0[part], x0[part], size)
        central = number[part]
        ok = s[:, half, half] == central
        mine = s == central[:, None, None]
        others = (s != 0) & ~mine
        ok &= ~(dilate(mine, min_gap) & others).any(axis=(1, 2))
        if margin > 0:
            edge = np.zeros((size, size), bool)
            edge[:margin] = edge[-margin:] = True
            edge[:, :margin] = edge[:, -margin:] = True
            ok &= ~(mine & edge).any(axis=(1, 2))
        w = _windows(weight, y0[part], x0[part], size)
        ok &= (w > 0).all(axis=(1, 2))
        if not ok.any():
            continue
        labels = _relabel(s[ok], central[ok])
        crowded = labels.max(axis=(1, 2)) > 255
        good = part[ok][~crowded]
        isolated_total += good.size
        out_seg.append(labels[~crowded].astype(np.uint8))
        out_img.append(_windows(image, y0[good], x0[good], size).astype(np.float32))
        rows.append(good)
    counts["isolated"] = isolated_total
    good = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    img = np.concatenate(out_img) if out_img else np.zeros((0, size, size), np.float32)
    segs = np.concatenate(out_seg) if out_seg else np.zeros((0, size, size), np.uint8)
    t = match[good]
    if mag_source == "truth":
        mag = np.asarray(truth["MAG"], float)[t]
    else:
        mag = np.asarray(sexcat["MAG_AUTO"], float)[good]
    if radius_source == "truth":
        scale = np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
        radius = np.asarray(truth["HLR"], float)[t] / scale
    else:
        radius = np.asarray(sexcat["FLUX_RADIUS"], float)[good]
    cat = {"ID": np.asarray(truth["ID"])[t], "mag": mag, "radius": radius,
           "z": np.asarray(truth["Z"], float)[t],
           "galtype": np.char.strip(np.asarray(truth["GALTYPE"]).astype(str))[t]}
    return img, segs, cat, counts


def write_inputs(directory, img, seg, cat):
    """Write ``candels_img.npy``, ``candels_seg.npy``, ``candels_cat.csv`` into a new directory.

    The three files are written into a temporary directory next to ``directory``, which is
    renamed when complete (an existing ``directory`` is replaced).
    """
    parent = os.path.dirname(os.path.abspath(directory))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
    try:
        np.save(os.path.join(tmp, IMG_FILE), img, allow_pickle=False)
        np.save(os.path.join(tmp, SEG_FILE), seg, allow_pickle=False)
        with open(os.path.join(tmp, CAT_FILE), "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(CAT_COLUMNS)
            for row in zip(cat["ID"], cat["mag"], cat["radius"], cat["z"], cat["galtype"]):
                writer.writerow([int(row[0]), f"{row[1]:.6f}", f"{row[2]:.6f}", f"{row[3]:.6f}",
                                 row[4]])
        os.chmod(tmp, 0o755)
        if os.path.isdir(directory):
            shutil.rmtree(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
