"""Small CANDELS-like input sets for tests and benchmarks (not for science).

Each stamp holds a central exponential galaxy and 0-2 neighbours with Gaussian noise of
known rms; the segmentation marks where each noiseless profile is above the threshold (central
galaxy 1, neighbours 2, 3). Everything comes from one seeded generator.
"""

import csv
import os

import numpy as np

from shapepipe.modules.blend.io import CAT_FILE, GALAXY_TYPES, IMG_FILE, SEG_FILE, STAMP_SIZE


def _exponential(flux, hlr, e1, e2, x0, y0, size):
    """(K, N, N) sheared exponential profiles (flux per pixel, sampled at pixel centres)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = x[None] - x0[:, None, None]
    dy = y[None] - y0[:, None, None]
    # Shape by a symmetric matrix with eigenvalues (1 + e), (1 - e) along the position angle.
    e = np.hypot(e1, e2)
    theta = 0.5 * np.arctan2(e2, e1)
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    u = (c * dx + s * dy) / np.sqrt(1 + e)[:, None, None]
    v = (-s * dx + c * dy) / np.sqrt(1 - e)[:, None, None]
    h = (hlr / 1.678)[:, None, None]
    r = np.sqrt(u * u + v * v) / h
    return (flux[:, None, None] / (2 * np.pi * h**2) * np.exp(-r)).astype(np.float32)


def make_inputs(path, n_gal, seed=0, noise=1.0, zeropoint=30.0, neighbours=True,
                size=STAMP_SIZE):
    """Write ``candels_img.npy``, ``candels_seg.npy`` (int32) and ``candels_cat.csv``.

    Parameters
    ----------
    path : str
        Directory (created).
    n_gal : int
        Stamps.
    seed : int
        Seed of the generator.
    noise : float
        Gaussian noise rms per pixel.
    zeropoint : float
        Magnitude of a flux of 1.
    neighbours : bool
        Add 0-2 neighbours per stamp.
    size : int
        Stamp side (128 for real sets; other sizes make bad inputs for tests).

    Returns
    -------
    dict
        The catalogue columns written.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(path, exist_ok=True)
    mag = rng.uniform(19.0, 24.0, n_gal)
    hlr = np.clip(6.0 * 10 ** (-0.1 * (mag - 20.0)) * rng.lognormal(0, 0.2, n_gal), 1.5, 12)
    flux = 10 ** (-0.4 * (mag - zeropoint))
    e = rng.normal(0, 0.2, (n_gal, 2)).clip(-0.6, 0.6)
    half = size // 2
    x0 = half + rng.uniform(-0.5, 0.5, n_gal)
    y0 = half + rng.uniform(-0.5, 0.5, n_gal)
    img = np.empty((n_gal, size, size), np.float32)
    seg = np.zeros((n_gal, size, size), np.int32)
    threshold = 1.5 * noise
    for start in range(0, n_gal, 256):
        sl = slice(start, min(start + 256, n_gal))
        k = sl.stop - sl.start
        model = _exponential(flux[sl], hlr[sl], e[sl, 0], e[sl, 1], x0[sl], y0[sl], size)
        seg[sl][model > threshold] = 1
        total = model
        if neighbours:
            n_nb = rng.integers(0, 3, k)
            for j in range(2):
                angle = rng.uniform(0, 2 * np.pi, k)
                dist = rng.uniform(0.3, 0.45) * size
                nb_mag = rng.uniform(19.0, 24.0, k)
                nb = _exponential(10 ** (-0.4 * (nb_mag - zeropoint)), np.full(k, 3.0),
                                  np.zeros(k), np.zeros(k), half + dist * np.cos(angle),
                                  half + dist * np.sin(angle), size)
                nb *= (n_nb > j)[:, None, None]
                mine = (nb > threshold) & (seg[sl] == 0)
                seg[sl] = np.where(mine, j + 2, seg[sl])
                total = total + nb
        img[sl] = total + rng.normal(0.0, noise, (k, size, size)).astype(np.float32)
    seg[:, half, half] = np.where(seg[:, half, half] == 0, 1, seg[:, half, half])
    galtype = np.asarray(GALAXY_TYPES)[rng.integers(0, len(GALAXY_TYPES), n_gal)]
    z = rng.uniform(0.1, 2.0, n_gal)
    ids = np.arange(1, n_gal + 1)
    np.save(os.path.join(path, IMG_FILE), img)
    np.save(os.path.join(path, SEG_FILE), seg)
    with open(os.path.join(path, CAT_FILE), "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ID", "mag", "radius", "z", "galtype"])
        for row in zip(ids, mag, hlr, z, galtype):
            writer.writerow([row[0], f"{row[1]:.4f}", f"{row[2]:.4f}", f"{row[3]:.4f}", row[4]])
    return {"ID": ids, "mag": mag, "radius": hlr, "z": z, "galtype": galtype}
