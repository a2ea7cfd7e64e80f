"""Mean shear of a metadetection catalogue: ``<e>_noshear / R``, R from the sheared steps.

Each metacal step's rows are selected with the same cuts on their own measurements, so the
response ``R_ij = (<e_i>_jp - <e_i>_jm) / (2 step)`` includes the selection (and detection)
response. Errors come from a bootstrap over cells: the rows of one cell in every step move
together, which keeps the correlation between the steps' means that makes R precise.
"""

import numpy as np

STEPS = ("noshear", "1p", "1m", "2p", "2m")


def default_cuts(table, snr_min=10.0, t_ratio_min=0.5, mask_flags=True, size_sigma=None):
    """The standard selection: MDET_FLAGS == 0, MASK_FLAGS == 0, S/N and size cuts.

    Parameters
    ----------
    table : numpy record array, astropy Table or dict of arrays
        Rows of ``metadetect_cat`` (any steps).
    snr_min, t_ratio_min : float
        ``MDET_S2N > snr_min`` and ``MDET_T_RATIO > t_ratio_min`` (None: no cut).
    mask_flags : bool
        Require ``MASK_FLAGS == 0``.
    size_sigma : float, optional
        Also require ``MDET_T_RATIO > size_sigma * MDET_T_RATIO_ERR`` (or an infinite
        MDET_T_RATIO: an object larger than the moment weight): a size that is significantly
        non-zero, which unresolved objects (stars) rarely reach by noise.

    Returns
    -------
    numpy.ndarray of bool
        Also False where MDET_G1 or MDET_G2 is not finite.
    """
    ok = ((np.asarray(table["MDET_FLAGS"]) == 0) & np.isfinite(np.asarray(table["MDET_G1"]))
          & np.isfinite(np.asarray(table["MDET_G2"])))
    if mask_flags:
        ok &= np.asarray(table["MASK_FLAGS"]) == 0
    with np.errstate(invalid="ignore"):
        t_ratio = np.asarray(table["MDET_T_RATIO"], float)
        if snr_min is not None:
            ok &= np.asarray(table["MDET_S2N"], float) > snr_min
        if t_ratio_min is not None:
            ok &= t_ratio > t_ratio_min
        if size_sigma is not None:
            # inf: larger than the weight, resolved beyond doubt (its error is NaN).
            ok &= ((t_ratio > size_sigma * np.asarray(table["MDET_T_RATIO_ERR"], float))
                   | np.isposinf(t_ratio))
    return ok


def cell_sums(table, select):
    """Per-cell, per-step count and sums of ``MDET_G1``, ``MDET_G2`` of the selected rows.

    Returns
    -------
    cells : numpy.ndarray
        Cell ids (sorted).
    sums : numpy.ndarray
        ``(n_cell, 5, 3)``: ``[n, sum e1, sum e2]`` per step in :data:`STEPS` order.
    """
    step = np.asarray(table["MDET_STEP"]).astype(str)
    cell = np.asarray(table["CELL"], dtype=np.int64)
    e1 = np.asarray(table["MDET_G1"], float)
    e2 = np.asarray(table["MDET_G2"], float)
    cells, inv = np.unique(cell, return_inverse=True)
    sums = np.zeros((len(cells), len(STEPS), 3))
    for k, s in enumerate(STEPS):
        rows = select & (step == s)
        idx = inv[rows]
        sums[:, k, 0] = np.bincount(idx, minlength=len(cells))
        sums[:, k, 1] = np.bincount(idx, weights=e1[rows], minlength=len(cells))
        sums[:, k, 2] = np.bincount(idx, weights=e2[rows], minlength=len(cells))
    return cells, sums


def shear_from_sums(sums, step=0.01):
    """``g``, ``R`` and the noshear count from summed ``(5, 3)`` step sums.

    Returns
    -------
    g : numpy.ndarray
        ``R^-1 <e>_noshear`` (NaN without objects).
    R : numpy.ndarray
        ``(2, 2)``, ``R[i, j] = d<e_i>/dg_j``.
    n : int
    """
    sums = np.asarray(sums, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums[:, 1:] / sums[:, :1]
    r = np.column_stack([(mean[1] - mean[2]) / (2 * step), (mean[3] - mean[4]) / (2 * step)])
    n = int(sums[0, 0])
    if n < 1 or not np.all(np.isfinite(r)) or abs(np.linalg.det(r)) == 0:
        return np.full(2, np.nan), r, n
    return np.linalg.solve(r, mean[0]), r, n


def mean_shear(table, select, step=0.01, n_boot=200, seed=0):
    """Mean shear of the selected objects with a bootstrap over cells.

    Parameters
    ----------
    table : record array
        ``metadetect_cat`` rows (all steps).
    select : numpy.ndarray of bool
        Rows kept (each step's on its own measurements).
    step : float
    n_boot : int
    seed : int

    Returns
    -------
    dict
        ``g``, ``g_err``, ``R``, ``n`` (noshear objects), ``n_cells``.
    """
    cells, sums = cell_sums(table, select)
    g, r, n = shear_from_sums(sums.sum(axis=0), step)
    err = np.full(2, np.nan)
    if len(cells) > 1 and n_boot > 1:
        rng = np.random.default_rng(seed)
        draws = np.array([shear_from_sums(sums[rng.integers(0, len(cells), len(cells))]
                                          .sum(axis=0), step)[0] for _ in range(n_boot)])
        err = np.nanstd(draws, axis=0, ddof=1)
    return {"g": g.tolist(), "g_err": err.tolist(), "R": r.tolist(), "n": n,
            "n_cells": int(len(cells))}
