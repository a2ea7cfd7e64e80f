#!/usr/bin/env python
"""Shear validation of the tile chain's final catalogues against the simulated truth.

Reads every ``final_cat-<tile>.fits`` (HDU ``RESULTS``, make_catalog_runner) of a run,
matches the objects to ``truth/objects.fits`` by position, and writes into the output
directory:

- ``size_magnitude.png``: FLUX_RADIUS against MAG_AUTO, coloured by SPREAD_CLASS;
- ``classification.png``: purity and completeness of SPREAD_CLASS (galaxies = 1, stars = 0)
  against the true class, by magnitude;
- ``detection_completeness.png``: fraction of the true stars and galaxies inside the
  catalogue's footprint that were detected, by true magnitude;
- ``shear.png``: the galaxy sample's mean shear ``<R>^-1 <g>`` (R = shear response + selection
  response) against the applied shear, with bootstrap errors, for all and by S/N;
- ``response.png``: distribution of the per-object responses R11, R22, R12, R21;
- ``ell_vs_psf.png``: galaxy ellipticity against the PSF ellipticity (binned means), with the
  fitted leakage slope;
- ``shear_summary.txt`` / ``shear_summary.json``: the numbers.

When the run also holds metadetection catalogues (``metadetect_cat-<tile>.fits``,
metadetect_runner), their mean shear ``<e>_noshear / R`` (R from the sheared steps, selection
included) is reported beside the metacal one, with a bootstrap over cells.

Standard cuts (each configurable, see ``--help``): FLAGS == 0, NGMIX_FLAGS == 0 and
NGMIX_MCAL_FLAGS == 0, NGMIX_SNR > 10, NGMIX_T / NGMIX_Tpsf > 0.5, SPREAD_CLASS == 1. The
selection response redoes the cuts on the metacal quantities of the 1P/1M/2P/2M images
(FLAGS and SPREAD_CLASS, measured on the unsheared tile, are not sheared). ``--round-cuts``
applies the S/N and size thresholds to the round quantities NGMIX_SNR_R and
NGMIX_T_R / NGMIX_Tpsf instead (the fitted model made round, convolved with the round PSF:
they do not depend on the galaxy's orientation relative to the PSF, as DES Y3's s2n_r, T_r).

Usage::

    python scripts/shear_validation.py RUN_DIR --truth $SP_DATA/truth -o OUT_DIR
"""

import argparse
import glob
import json
import os
import sys

import numpy as np
from astropy.io import fits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shapepipe.modules.ngmix.measure import selection_response, shear_response  # noqa: E402
from shapepipe.utils.atomic import atomic_path, write_text  # noqa: E402
from shapepipe.utils.lensing import gnomonic  # noqa: E402
from shapepipe.utils.rng import make_rng  # noqa: E402

TYPES = ("NOSHEAR", "1P", "1M", "2P", "2M")
_KEY = {"NOSHEAR": "noshear", "1P": "1p", "1M": "1m", "2P": "2p", "2M": "2m"}
STEP = 0.01


def find_final_catalogues(path):
    """``final_cat*.fits`` under a run directory, an output directory, or one file."""
    if os.path.isfile(path):
        return [path]
    files = sorted(glob.glob(os.path.join(path, "final_cat*.fits")))
    if not files:
        files = sorted(glob.glob(os.path.join(path, "**", "final_cat*.fits"), recursive=True))
    return files


def _needed_columns():
    cols = ["XWIN_WORLD", "YWIN_WORLD", "MAG_AUTO", "FLUX_RADIUS", "FLAGS", "SPREAD_CLASS",
            "SPREAD_MODEL", "NGMIX_MCAL_FLAGS", "NGMIX_ELL_PSFo_NOSHEAR"]
    for t in TYPES:
        cols += [f"NGMIX_ELL_{t}", f"NGMIX_FLAGS_{t}", f"NGMIX_SNR_{t}", f"NGMIX_T_{t}",
                 f"NGMIX_Tpsf_{t}"]
    return cols


#: Columns read when present: the round quantities are absent from older catalogues.
OPTIONAL_COLUMNS = (("SNR_WIN", "NUMBER", "NGMIX_ELL_ERR_NOSHEAR")
                    + tuple(f"NGMIX_{q}_{t}" for t in TYPES for q in ("T_R", "SNR_R")))


def load_catalogues(files, optional=OPTIONAL_COLUMNS):
    """Concatenate the needed columns of the final catalogues (HDU RESULTS).

    An optional column is kept only if every catalogue has it.
    """
    need = _needed_columns()
    parts = []
    for path in files:
        with fits.open(path, memmap=True) as hdul:
            if "RESULTS" not in hdul:
                raise SystemExit(f"{path}: no HDU RESULTS (expected make_catalog_runner's "
                                 "final_cat-<tile>.fits)")
            data = hdul["RESULTS"].data
            names = data.columns.names if data is not None else []
            missing = [c for c in need if c not in names]
            if missing:
                raise SystemExit(f"{path}: missing column(s) {', '.join(missing)} in HDU "
                                 "RESULTS")
            parts.append({c: np.array(data[c]) for c in need + [c for c in optional
                                                                 if c in names]})
    if not parts:
        return {}
    keys = set.intersection(*(set(p) for p in parts))
    return {k: np.concatenate([p[k] for p in parts]) for k in sorted(keys)}


def load_truth(truth_dir):
    """True objects (ID, RA, DEC, IS_STAR, MAG) and the applied shear ``(g1, g2)``."""
    path = os.path.join(truth_dir, "objects.fits")
    if not os.path.isfile(path):
        raise SystemExit(f"--truth {truth_dir}: no objects.fits (expected $SP_DATA/truth)")
    with fits.open(path, memmap=False) as hdul:
        data = hdul[1].data
        truth = {c: np.array(data[c]) for c in ("ID", "RA", "DEC", "IS_STAR", "MAG", "G1",
                                                 "G2")}
        if "HLR" in data.columns.names:  # for the classification's flux-dominant matching
            truth["HLR"] = np.array(data["HLR"])
    survey = os.path.join(truth_dir, "survey.json")
    if os.path.isfile(survey):
        with open(survey, encoding="utf-8") as handle:
            shear = json.load(handle)["shear"]
    else:
        gal = truth["IS_STAR"] == 0
        shear = [float(np.median(truth["G1"][gal])), float(np.median(truth["G2"][gal]))]
    return truth, (float(shear[0]), float(shear[1]))


def _tangent(ra, dec, ra0, dec0):
    """Gnomonic projection (arcsec, +x east) about (ra0, dec0)."""
    u, v = gnomonic(ra, dec, ra0, dec0)  # u points west
    return -np.rad2deg(u) * 3600.0, np.rad2deg(v) * 3600.0


def match(cat_ra, cat_dec, truth_ra, truth_dec, radius=0.6):
    """One-to-one nearest matches within ``radius`` arcsec.

    Returns
    -------
    idx : numpy.ndarray
        For each catalogue object, the matched truth row or -1. A truth object claimed by
        several detections keeps the nearest one.
    """
    from scipy.spatial import cKDTree

    ra0, dec0 = np.median(cat_ra), np.median(cat_dec)
    cx, cy = _tangent(cat_ra, cat_dec, ra0, dec0)
    tx, ty = _tangent(truth_ra, truth_dec, ra0, dec0)
    dist, idx = cKDTree(np.column_stack([tx, ty])).query(np.column_stack([cx, cy]),
                                                         distance_upper_bound=radius)
    idx = np.where(np.isfinite(dist), idx, -1)
    # Keep the nearest detection of each truth object.
    order = np.argsort(dist, kind="stable")
    seen = np.zeros(len(truth_ra), bool)
    for k in order:
        if idx[k] < 0:
            continue
        if seen[idx[k]]:
            idx[k] = -1
        else:
            seen[idx[k]] = True
    return idx


def match_dominant(cat_ra, cat_dec, truth, radius=1.0, psf_fwhm=0.7, zero_point=30.0):
    """One-to-one match of each detection to the true object whose light dominates it.

    A detection of a blend (a faint star on a galaxy, two stars 0.5" apart) is the sum of
    its true objects; the nearest one is not necessarily the one whose light it is. Each
    true object within ``radius`` is modelled by a circular Gaussian of its flux
    (``MAG``) with the variance of the PSF (FWHM ``psf_fwhm``) plus that of its half-light
    radius (``HLR``, 0 for stars), and the detection is matched to the object that puts the
    most light at the detection's position. A true object claimed by several detections
    keeps the one it contributes most to.

    Parameters
    ----------
    cat_ra, cat_dec : numpy.ndarray
        Detections (deg).
    truth : dict
        ``RA``, ``DEC``, ``MAG`` and optionally ``HLR`` (arcsec) of the true objects.
    radius : float
        Search radius (arcsec).

    Returns
    -------
    numpy.ndarray
        Truth row of each detection or -1.
    """
    from scipy.spatial import cKDTree

    ra0, dec0 = np.median(cat_ra), np.median(cat_dec)
    cx, cy = _tangent(cat_ra, cat_dec, ra0, dec0)
    tx, ty = _tangent(truth["RA"], truth["DEC"], ra0, dec0)
    n_truth = len(tx)
    k = min(8, n_truth)
    dist, cand = cKDTree(np.column_stack([tx, ty])).query(np.column_stack([cx, cy]), k=k,
                                                          distance_upper_bound=radius)
    dist, cand = dist.reshape(len(cx), k), cand.reshape(len(cx), k)
    valid = np.isfinite(dist)
    safe = np.where(valid, cand, 0)
    hlr = np.asarray(truth["HLR"], dtype=float) if "HLR" in truth else np.zeros(n_truth)
    # Gaussian of half-light radius h has sigma h / 1.1774
    var = (psf_fwhm / 2.3548) ** 2 + (np.nan_to_num(hlr) / 1.1774) ** 2
    flux = 10.0 ** (-0.4 * (np.asarray(truth["MAG"], dtype=float) - zero_point))
    light = flux[safe] / (2 * np.pi * var[safe]) * np.exp(-0.5 * np.where(valid, dist, 0) ** 2
                                                          / var[safe])
    light = np.where(valid, light, -np.inf)
    best = np.argmax(light, axis=1)
    rows = np.arange(len(cx))
    idx = np.where(valid[rows, best], cand[rows, best], -1)
    value = light[rows, best]
    # one-to-one: for each true object keep the detection it contributes most to
    order = np.lexsort((-value, idx))
    first = np.ones(len(order), bool)
    first[1:] = idx[order][1:] != idx[order][:-1]
    keep = np.zeros(len(idx), bool)
    keep[order[first]] = True
    return np.where(keep & (idx >= 0), idx, -1)


def metacal_tables(cat):
    """``{type: structured array}`` with g1, g2, snr, T, Tpsf, snr_r, T_r, flags of that
    metacal type and the unsheared sex_flags, mcal_flags, spread_class (the layout
    ``shear_response`` reads). ``snr_r`` and ``T_r`` (round S/N and size) are NaN when the
    catalogue has no NGMIX_SNR_R / NGMIX_T_R columns."""
    n = len(cat["FLAGS"])
    dtype = [("g1", "f8"), ("g2", "f8"), ("snr", "f8"), ("T", "f8"), ("Tpsf", "f8"),
             ("snr_r", "f8"), ("T_r", "f8"),
             ("flags", "i8"), ("sex_flags", "i8"), ("mcal_flags", "i8"), ("spread_class", "i8")]
    tables = {}
    for t in TYPES:
        tab = np.zeros(n, dtype=dtype)
        ell = np.asarray(cat[f"NGMIX_ELL_{t}"], dtype=float).reshape(-1, 2)
        tab["g1"], tab["g2"] = ell[:, 0], ell[:, 1]
        tab["snr"] = cat[f"NGMIX_SNR_{t}"]
        tab["T"] = cat[f"NGMIX_T_{t}"]
        tab["snr_r"] = cat.get(f"NGMIX_SNR_R_{t}", np.nan)
        tab["T_r"] = cat.get(f"NGMIX_T_R_{t}", np.nan)
        tab["Tpsf"] = cat[f"NGMIX_Tpsf_{t}"]
        tab["flags"] = cat[f"NGMIX_FLAGS_{t}"]
        tab["sex_flags"] = cat["FLAGS"]
        tab["mcal_flags"] = cat["NGMIX_MCAL_FLAGS"]
        tab["spread_class"] = cat["SPREAD_CLASS"]
        tables[_KEY[t]] = tab
    return tables


def make_selector(cuts):
    """``select(table) -> bool array`` applying the standard cuts (``None`` disables one).

    ``cuts`` keys: ``flags`` (bool), ``snr_min``, ``t_ratio_min``, ``spread_class`` and the
    optional ``round`` (default False): when true the S/N cut reads ``snr_r`` and the size
    cut ``T_r / Tpsf`` (round quantities; NaN, hence rejected, where not measured).
    """
    snr_name, t_name = ("snr_r", "T_r") if cuts.get("round", False) else ("snr", "T")

    def select(tab):
        ok = np.isfinite(tab["g1"]) & np.isfinite(tab["g2"])
        if cuts["flags"]:
            ok &= (tab["sex_flags"] == 0) & (tab["flags"] == 0) & (tab["mcal_flags"] == 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            if cuts["snr_min"] is not None:
                ok &= tab[snr_name] > cuts["snr_min"]
            if cuts["t_ratio_min"] is not None:
                ok &= tab[t_name] / tab["Tpsf"] > cuts["t_ratio_min"]
        if cuts["spread_class"] is not None:
            ok &= tab["spread_class"] == cuts["spread_class"]
        return ok
    return select


def mean_shear(tables, select, n_boot=200, seed=0, rows=None):
    """Mean shear ``(<R_gamma> + R_S)^-1 <g>`` of the selected objects, bootstrap errors.

    Parameters
    ----------
    tables : dict
        Output of :func:`metacal_tables`.
    select : callable
        The cuts.
    n_boot : int
        Bootstrap resamples of the selected objects (the selection response is kept fixed:
        it is a small correction, ~1e-3, measured from all objects).
    rows : numpy.ndarray of bool, optional
        Restrict to these rows (for S/N bins); the cuts still apply.

    Returns
    -------
    dict
        ``g`` (2,), ``g_err`` (2,), ``R`` (2, 2 shear response), ``R_S`` (2, 2), ``n``.
    """
    if rows is not None:
        tables = {t: tab[rows] for t, tab in tables.items()}
    sel = select(tables["noshear"])
    n = int(sel.sum())
    if n < 2:
        return {"g": [np.nan, np.nan], "g_err": [np.nan, np.nan], "R": np.full((2, 2), np.nan),
                "R_S": np.full((2, 2), np.nan), "n": n}
    resp = shear_response(tables, step=STEP)[sel]
    g = np.column_stack([tables["noshear"]["g1"][sel], tables["noshear"]["g2"][sel]])
    r_s = selection_response(tables, select, step=STEP)
    r_mean = resp.mean(axis=0)
    est = np.linalg.solve(r_mean + r_s, g.mean(axis=0))
    rng = make_rng(seed, "bootstrap")
    boot = np.empty((n_boot, 2))
    for b in range(n_boot):
        k = rng.integers(0, n, n)
        boot[b] = np.linalg.solve(resp[k].mean(axis=0) + r_s, g[k].mean(axis=0))
    return {"g": est, "g_err": boot.std(axis=0, ddof=1), "R": r_mean, "R_S": r_s, "n": n}


def binned_fraction(values, hit, bins):
    """Fraction of ``hit`` per bin of ``values``, its binomial error, and counts."""
    idx = np.digitize(values, bins) - 1
    nb = len(bins) - 1
    ok = (idx >= 0) & (idx < nb)
    total = np.bincount(idx[ok], minlength=nb)
    good = np.bincount(idx[ok], weights=hit[ok].astype(float), minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = good / total
        err = np.sqrt(frac * (1 - frac) / total)
    return frac, err, total


def _purity_summary(cls, truth, idx, snr):
    m = idx >= 0
    true_star = np.zeros(len(idx), bool)
    true_star[m] = truth["IS_STAR"][idx[m]] == 1
    with np.errstate(invalid="ignore"):
        gal_cls = m & (cls == 1) & (snr > 20)
        star_true = m & true_star & (snr > 50)
    return {
        "galaxy_purity_snr_gt_20": float(np.mean(~true_star[gal_cls])) if gal_cls.any()
        else None,
        "n_galaxy_class_snr_gt_20": int(gal_cls.sum()),
        "star_completeness_snr_gt_50": float(np.mean(cls[star_true] == 0)) if star_true.any()
        else None,
        "n_true_stars_snr_gt_50": int(star_true.sum()),
    }


def classification(cat, truth, idx, snr, mag_bins, idx_nearest=None):
    """Purity and completeness of SPREAD_CLASS against the true class.

    ``idx`` is the flux-dominant match (:func:`match_dominant`); with ``idx_nearest`` (the
    nearest-object match, :func:`match`) the summary also gives the figures by that match.
    """
    m = idx >= 0
    true_star = np.zeros(len(idx), bool)
    true_star[m] = truth["IS_STAR"][idx[m]] == 1
    cls = cat["SPREAD_CLASS"]
    mag = cat["MAG_AUTO"]
    out = {}
    for name, label, is_true in (("galaxy", 1, m & ~true_star), ("star", 0, m & true_star)):
        as_cls = m & (cls == label)
        out[name] = {
            "purity": binned_fraction(mag[as_cls], is_true[as_cls], mag_bins),
            "completeness": binned_fraction(mag[is_true], cls[is_true] == label, mag_bins),
        }
    summary = _purity_summary(cls, truth, idx, snr)
    summary["match"] = "flux-dominant true object within 1\", one-to-one"
    if idx_nearest is not None:
        summary["nearest_match"] = _purity_summary(cls, truth, idx_nearest, snr)
    return out, summary


def detection_completeness(cat, truth, idx, mag_bins):
    """Detected fraction of true objects inside the catalogue's footprint, by true magnitude."""
    ra0, dec0 = np.median(cat["XWIN_WORLD"]), np.median(cat["YWIN_WORLD"])
    cx, cy = _tangent(cat["XWIN_WORLD"], cat["YWIN_WORLD"], ra0, dec0)
    tx, ty = _tangent(truth["RA"], truth["DEC"], ra0, dec0)
    # Footprint: the box of the detections shrunk by 5": objects near the edge of the tile
    # may be cut by it.
    inside = ((tx > cx.min() + 5) & (tx < cx.max() - 5) & (ty > cy.min() + 5)
              & (ty < cy.max() - 5))
    detected = np.zeros(len(truth["RA"]), bool)
    detected[idx[idx >= 0]] = True
    out = {}
    for name, sel in (("galaxy", truth["IS_STAR"] == 0), ("star", truth["IS_STAR"] == 1)):
        s = sel & inside
        out[name] = binned_fraction(truth["MAG"][s], detected[s], mag_bins)
    return out


def psf_leakage(tables, select, cat):
    """Slope of the galaxy ellipticity against the PSF ellipticity, per component."""
    sel = select(tables["noshear"])
    psf = np.asarray(cat["NGMIX_ELL_PSFo_NOSHEAR"], float).reshape(-1, 2)[sel]
    g = np.column_stack([tables["noshear"]["g1"][sel], tables["noshear"]["g2"][sel]])
    out = []
    for i in range(2):
        x, y = psf[:, i], g[:, i]
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3 or np.ptp(x[ok]) == 0:
            out.append({"slope": None, "slope_err": None})
            continue
        xm = x[ok] - x[ok].mean()
        slope = float(np.sum(xm * y[ok]) / np.sum(xm ** 2))
        resid = y[ok] - y[ok].mean() - slope * xm
        err = float(np.sqrt(np.sum(resid ** 2) / (ok.sum() - 2) / np.sum(xm ** 2)))
        out.append({"slope": slope, "slope_err": err})
    return psf, g, out


def _savefig(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)


def plot_all(out_dir, cat, tables, select, cls, det, shear_res, applied, leak, mag_bins):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = 0.5 * (mag_bins[1:] + mag_bins[:-1])
    fig, ax = plt.subplots(figsize=(6, 5))
    for label, name, colour in ((0, "star", "tab:red"), (1, "galaxy", "tab:blue"),
                                (2, "other", "tab:gray")):
        s = cat["SPREAD_CLASS"] == label
        ax.scatter(cat["MAG_AUTO"][s], cat["FLUX_RADIUS"][s], s=3, c=colour,
                   label=f"SPREAD_CLASS {label} ({name}, {int(s.sum())})")
    ax.set_xlabel("MAG_AUTO")
    ax.set_ylabel("FLUX_RADIUS (px)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("size-magnitude")
    _savefig(fig, os.path.join(out_dir, "size_magnitude.png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, name, label, plural in zip(axes, ("galaxy", "star"), (1, 0), ("galaxies", "stars")):
        for kind, marker in (("purity", "o"), ("completeness", "s")):
            frac, err, _ = cls[name][kind]
            ax.errorbar(centres, frac, err, marker=marker, label=kind, capsize=2)
        ax.set_title(f"SPREAD_CLASS {label}: {plural}")
        ax.set_xlabel("MAG_AUTO")
        ax.set_ylim(0, 1.05)
        ax.legend()
    _savefig(fig, os.path.join(out_dir, "classification.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, label in (("galaxy", "true galaxies"), ("star", "true stars")):
        frac, err, _ = det[name]
        ax.errorbar(centres, frac, err, marker="o", label=label, capsize=2)
    ax.set_xlabel("true magnitude")
    ax.set_ylabel("detected fraction")
    ax.set_ylim(0, 1.05)
    ax.legend()
    _savefig(fig, os.path.join(out_dir, "detection_completeness.png"))
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    labels = list(shear_res)
    for i, ax in enumerate(axes):
        val = [shear_res[k]["g"][i] for k in labels]
        err = [shear_res[k]["g_err"][i] for k in labels]
        ax.errorbar(range(len(labels)), val, err, fmt="o", capsize=3)
        ax.axhline(applied[i], color="k", ls="--", label=f"applied g{i + 1} = {applied[i]:g}")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, fontsize=8)
        ax.set_ylabel(f"<g{i + 1}> / <R>")
        ax.legend()
    fig.suptitle("mean shear of the galaxy sample")
    _savefig(fig, os.path.join(out_dir, "shear.png"))
    plt.close(fig)

    sel = select(tables["noshear"])
    resp = shear_response(tables, step=STEP)[sel]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for (i, j), name in (((0, 0), "R11"), ((1, 1), "R22"), ((0, 1), "R12"), ((1, 0), "R21")):
        r = resp[:, i, j]
        r = r[np.isfinite(r)]
        ax.hist(r, bins=np.linspace(-1.0, 2.0, 61), histtype="step",
                label=f"{name}: mean {r.mean():.3f}" if r.size else name)
    ax.set_xlabel("shear response")
    ax.legend()
    _savefig(fig, os.path.join(out_dir, "response.png"))
    plt.close(fig)

    psf, g, fit = leak
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, ax in enumerate(axes):
        x, y = psf[:, i], g[:, i]
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=2, alpha=0.3)
        if ok.sum() > 10:
            edges = np.quantile(x[ok], np.linspace(0, 1, 9))
            idx = np.clip(np.digitize(x[ok], edges) - 1, 0, 7)
            cnt = np.bincount(idx, minlength=8)
            mean = np.bincount(idx, y[ok], minlength=8) / np.maximum(cnt, 1)
            sq = np.bincount(idx, y[ok] ** 2, minlength=8) / np.maximum(cnt, 1)
            err = np.sqrt(np.maximum(sq - mean ** 2, 0) / np.maximum(cnt, 1))
            xc = np.bincount(idx, x[ok], minlength=8) / np.maximum(cnt, 1)
            ax.errorbar(xc, mean, err, fmt="o-", color="k", capsize=2, label="binned mean")
        s = fit[i]["slope"]
        ax.set_title(f"slope {s:.3f} +- {fit[i]['slope_err']:.3f}" if s is not None else "")
        ax.set_xlabel(f"PSF g{i + 1} (NGMIX_ELL_PSFo_NOSHEAR)")
        ax.set_ylabel(f"galaxy g{i + 1}")
        ax.set_ylim(-1, 1)
        ax.legend()
    _savefig(fig, os.path.join(out_dir, "ell_vs_psf.png"))
    plt.close(fig)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def validate(run_dir, truth_dir, out_dir, cuts, snr_bins=(10, 20, 40, 1e9), n_boot=200,
             match_radius=0.6, mag_bins=None, seed=0, plots=True):
    """Run the validation; returns the summary dict (also written to ``out_dir``)."""
    files = find_final_catalogues(run_dir)
    if not files:
        raise SystemExit(f"{run_dir}: no final_cat*.fits found (run config_tile.ini first)")
    cat = load_catalogues(files)
    truth, applied = load_truth(truth_dir)
    os.makedirs(out_dir, exist_ok=True)
    idx = match(cat["XWIN_WORLD"], cat["YWIN_WORLD"], truth["RA"], truth["DEC"], match_radius)
    if mag_bins is None:
        mag_bins = np.arange(16.0, 26.01, 0.5)
    snr = cat["SNR_WIN"] if "SNR_WIN" in cat else cat["NGMIX_SNR_NOSHEAR"]
    round_cuts = bool(cuts.get("round", False))
    if round_cuts and not all(f"NGMIX_{q}_{t}" in cat for t in TYPES for q in ("T_R", "SNR_R")):
        raise SystemExit(f"{run_dir}: --round-cuts needs NGMIX_T_R_<T> and NGMIX_SNR_R_<T> in "
                         "every final_cat (catalogues made before the round columns lack them)")
    tables = metacal_tables(cat)
    select = make_selector(cuts)
    shear_res = {"all": mean_shear(tables, select, n_boot, seed)}
    # S/N bins on the quantity the S/N cut uses.
    snr_ns = tables["noshear"]["snr_r" if round_cuts else "snr"]
    for lo, hi in zip(snr_bins[:-1], snr_bins[1:]):
        with np.errstate(invalid="ignore"):
            rows = (snr_ns > lo) & (snr_ns <= hi)
        label = f"S/N {lo:g}-{hi:g}" if hi < 1e8 else f"S/N > {lo:g}"
        shear_res[label] = mean_shear(tables, select, n_boot, seed, rows=rows)
    # Classification: each detection is the true object whose light dominates it (a faint
    # star on a galaxy is a galaxy detection); the other figures keep the nearest match.
    idx_cls = match_dominant(cat["XWIN_WORLD"], cat["YWIN_WORLD"], truth)
    cls, cls_summary = classification(cat, truth, idx_cls, snr, mag_bins, idx_nearest=idx)
    det = detection_completeness(cat, truth, idx, mag_bins)
    leak = psf_leakage(tables, select, cat)
    res = shear_res["all"]
    with np.errstate(invalid="ignore", divide="ignore"):
        nsigma = (np.asarray(res["g"]) - applied) / np.asarray(res["g_err"])
    mdet = metadetect_shear(run_dir, applied, cuts, n_boot, seed)
    m = idx >= 0
    sel = select(tables["noshear"])
    summary = {
        "catalogues": files,
        "n_objects": int(len(idx)),
        "n_matched": int(m.sum()),
        "n_selected": int(sel.sum()),
        "n_selected_true_stars": int((sel & m & (truth["IS_STAR"][np.maximum(idx, 0)] == 1))
                                     .sum()),
        "cuts": cuts,
        "applied_shear": list(applied),
        "mean_shear": {k: {"g": v["g"], "g_err": v["g_err"], "n": v["n"], "R": v["R"],
                           "R_S": v["R_S"]} for k, v in shear_res.items()},
        "shear_nsigma": nsigma,
        "shear_within_3sigma": bool(np.all(np.abs(nsigma) < 3)),
        "classification": cls_summary,
        "psf_leakage": leak[2],
        "detection_completeness": {
            name: {"mag_bins": mag_bins, "fraction": det[name][0], "n_true": det[name][2]}
            for name in det},
        "n_bootstrap": n_boot,
        "seed": seed,
    }
    if mdet is not None:
        summary["metadetect"] = mdet
    summary = _jsonable(summary)
    write_text(json.dumps(summary, indent=1) + "\n", os.path.join(out_dir,
                                                                  "shear_summary.json"))
    write_text(format_summary(summary), os.path.join(out_dir, "shear_summary.txt"))
    if plots:
        plot_all(out_dir, cat, tables, select, cls, det, shear_res, applied, leak, mag_bins)
    return summary


def find_metadetect_catalogues(path):
    """``metadetect_cat*.fits`` under a run directory (or one file), sorted."""
    if os.path.isfile(path):
        return [path] if os.path.basename(path).startswith("metadetect_cat") else []
    return sorted(glob.glob(os.path.join(path, "**", "metadetect_cat*.fits"), recursive=True))


def metadetect_shear(run_dir, applied, cuts, n_boot=200, seed=0):
    """Mean shear of the run's metadetection catalogues (None when it has none).

    The S/N and size thresholds are the ngmix cuts' (``MDET_S2N``, ``MDET_T_RATIO``: the
    weighted-moment S/N and the PSF-deconvolved size over the PSF's); the flag cut is
    MDET_FLAGS == 0 and MASK_FLAGS == 0. There is no class cut: the size cut removes stars.
    """
    from shapepipe.modules.metadetect.shear import default_cuts
    from shapepipe.modules.metadetect.shear import mean_shear as mdet_mean

    files = find_metadetect_catalogues(run_dir)
    if not files:
        return None
    parts, step = [], None
    for k, path in enumerate(files):
        with fits.open(path) as hdul:
            data = hdul["METADETECT"].data
            file_step = float(hdul["METADETECT"].header.get("MDETSTEP", STEP))
        if step is not None and file_step != step:
            raise SystemExit(f"{path}: MDETSTEP = {file_step}, the other catalogues have {step}")
        step = file_step
        # Cells are numbered per tile: make them distinct across tiles for the bootstrap.
        cell = np.asarray(data["CELL"], dtype=np.int64) + k * 10 ** 9
        parts.append({"MDET_STEP": np.asarray(data["MDET_STEP"]).astype(str), "CELL": cell,
                      **{c: np.asarray(data[c]) for c in ("MDET_FLAGS", "MASK_FLAGS",
                                                          "MDET_S2N", "MDET_T_RATIO",
                                                          "MDET_T_RATIO_ERR", "MDET_G1",
                                                          "MDET_G2")}})
    table = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    snr_min = cuts["snr_min"] if cuts["snr_min"] is not None else 10.0
    t_min = cuts["t_ratio_min"] if cuts["t_ratio_min"] is not None else 0.5
    select = default_cuts(table, snr_min, t_min, mask_flags=cuts["flags"],
                          size_sigma=cuts.get("size_sigma"))
    res = mdet_mean(table, select, step=step, n_boot=n_boot, seed=seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        res["nsigma"] = ((np.asarray(res["g"]) - applied) / np.asarray(res["g_err"])).tolist()
    res.update(catalogues=files, snr_min=snr_min, t_ratio_min=t_min, step=step)
    return res


def format_summary(s):
    """The summary as a text table."""
    lines = [
        "Shear validation",
        f"catalogues: {len(s['catalogues'])}; objects {s['n_objects']}, matched to truth "
        f"{s['n_matched']}, selected galaxies {s['n_selected']} "
        f"({s['n_selected_true_stars']} true stars among them)",
        "cuts: " + ", ".join(f"{k}={v}" for k, v in s["cuts"].items()),
        f"applied shear: g1 = {s['applied_shear'][0]:+.5f}, g2 = {s['applied_shear'][1]:+.5f}",
        "",
        f"{'sample':<14} {'n':>7} {'g1':>10} {'err':>8} {'g2':>10} {'err':>8} {'R11':>7} "
        f"{'R22':>7} {'RS11':>8} {'RS22':>8}",
    ]

    def f(v, fmt):
        return format(v, fmt) if v is not None else "nan"

    for name, r in s["mean_shear"].items():
        lines.append(
            f"{name:<14} {r['n']:>7d} {f(r['g'][0], '+10.5f')} {f(r['g_err'][0], '8.5f')} "
            f"{f(r['g'][1], '+10.5f')} {f(r['g_err'][1], '8.5f')} "
            f"{f(r['R'][0][0], '7.3f')} {f(r['R'][1][1], '7.3f')} "
            f"{f(r['R_S'][0][0], '+8.4f')} {f(r['R_S'][1][1], '+8.4f')}")
    ns = s["shear_nsigma"]
    lines += [
        f"(mean - applied) / error: g1 {f(ns[0], '+.2f')}, g2 {f(ns[1], '+.2f')} -> "
        f"{'within' if s['shear_within_3sigma'] else 'NOT within'} 3 sigma",
        "",
    ]
    if "metadetect" in s:
        md = s["metadetect"]
        lines += [
            f"metadetection ({len(md['catalogues'])} catalogue(s), cuts MDET_FLAGS = 0, "
            f"MASK_FLAGS = 0, MDET_S2N > {md['snr_min']:g}, MDET_T_RATIO > "
            f"{md['t_ratio_min']:g}; errors: bootstrap over {md['n_cells']} cells)",
            f"{'metadetect':<14} {md['n']:>7d} {f(md['g'][0], '+10.5f')} "
            f"{f(md['g_err'][0], '8.5f')} {f(md['g'][1], '+10.5f')} {f(md['g_err'][1], '8.5f')} "
            f"{f(md['R'][0][0], '7.3f')} {f(md['R'][1][1], '7.3f')}",
            f"(mean - applied) / error: g1 {f(md['nsigma'][0], '+.2f')}, g2 "
            f"{f(md['nsigma'][1], '+.2f')}",
            "",
        ]
    c = s["classification"]
    lines += [
        f"galaxy purity (SPREAD_CLASS 1, S/N > 20): {f(c['galaxy_purity_snr_gt_20'], '.4f')} "
        f"of {c['n_galaxy_class_snr_gt_20']}",
        f"stars classified as stars (true stars, S/N > 50): "
        f"{f(c['star_completeness_snr_gt_50'], '.4f')} of {c['n_true_stars_snr_gt_50']}",
    ]
    if "nearest_match" in c:
        n = c["nearest_match"]
        lines.append(f"(matched to the flux-dominant true object; to the nearest one: purity "
                     f"{f(n['galaxy_purity_snr_gt_20'], '.4f')} of "
                     f"{n['n_galaxy_class_snr_gt_20']}, stars "
                     f"{f(n['star_completeness_snr_gt_50'], '.4f')} of "
                     f"{n['n_true_stars_snr_gt_50']})")
    for i, leak in enumerate(s["psf_leakage"]):
        lines.append(f"PSF leakage g{i + 1}: slope {f(leak['slope'], '+.4f')} +- "
                     f"{f(leak['slope_err'], '.4f')}")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="run directory (or make_catalog_runner output, or a file)")
    parser.add_argument("--truth", required=True, help="truth directory ($SP_DATA/truth)")
    parser.add_argument("-o", "--output", default="shear_validation", help="output directory")
    parser.add_argument("--snr-min", type=float, default=10.0, help="NGMIX_SNR > this")
    parser.add_argument("--t-ratio-min", type=float, default=0.5, help="NGMIX_T/NGMIX_Tpsf > this")
    parser.add_argument("--spread-class", type=int, default=1,
                        help="SPREAD_CLASS kept (-1: no class cut)")
    parser.add_argument("--no-flag-cut", action="store_true",
                        help="keep flagged objects (FLAGS, NGMIX_FLAGS, NGMIX_MCAL_FLAGS)")
    parser.add_argument("--match-radius", type=float, default=0.6, help="arcsec")
    parser.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--round-cuts", action="store_true",
                        help="cut on the round S/N and size (NGMIX_SNR_R, NGMIX_T_R / "
                             "NGMIX_Tpsf) instead of NGMIX_SNR and NGMIX_T / NGMIX_Tpsf")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    cuts = {"flags": not args.no_flag_cut, "snr_min": args.snr_min,
            "t_ratio_min": args.t_ratio_min,
            "spread_class": None if args.spread_class < 0 else args.spread_class,
            "round": args.round_cuts}
    summary = validate(args.run_dir, args.truth, args.output, cuts, n_boot=args.n_boot,
                       match_radius=args.match_radius, seed=args.seed,
                       plots=not args.no_plots)
    sys.stdout.write(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
