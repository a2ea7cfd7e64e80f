#!/usr/bin/env python
"""PSF validation: diagnostics from psfex_interp's VALIDATION outputs.

Reads every ``validation_psf-<exp>-<ccd>.fits`` of a run (star HSM shapes and the PSF
model's at the same positions) and writes, into the output directory:

- ``psf_summary.txt`` / ``psf_summary.json``: mean, median, rms of the star - model
  residuals ``de1``, ``de2`` and the relative size residual ``(sigma_star - sigma_psf) /
  sigma_star``, for all, accepted (used in the fit) and not-used stars; with ``--truth``, the
  model against the true PSF of the simulated survey too;
- ``psf_residual_histograms.png``: histograms of the three residuals;
- ``psf_focal_plane.png``: star, model and residual e1, e2, size maps over the focal plane
  (positions relative to each exposure's centre, all exposures stacked);
- ``psf_rho_stats.png`` and ``psf_rho_stats.txt``: rho statistics 1-5 (treecorr), with
  ``e = e_psf``, ``q = e_star - e_psf``, ``w = e_star (T_star - T_psf) / T_star``:
  rho1 <q q>, rho2 <e q>, rho3 <w w>, rho4 <q w>, rho5 <e w>.

Usage::

    python scripts/psf_validation.py RUN_DIR_OR_OUTPUT_DIR [-o OUT] [--truth $SP_DATA/truth]
"""

import argparse
import glob
import json
import os
import re
import sys

import numpy as np
from astropy.io import fits

NAME_RE = re.compile(r"validation_psf(?P<num>(?:-\d+)+)\.fits$")


def find_validation_files(path):
    """``validation_psf*.fits`` files under a run directory or an output directory."""
    if os.path.isfile(path):
        return [path]
    files = sorted(glob.glob(os.path.join(path, "validation_psf*.fits")))
    if not files:
        files = sorted(glob.glob(os.path.join(path, "**", "validation_psf*.fits"),
                                 recursive=True))
    return files


def load(files):
    """Concatenate the validation catalogues, adding EXP and CCD from the file names."""
    tables = []
    for path in files:
        with fits.open(path, memmap=False) as hdul:
            hdu = hdul["LDAC_OBJECTS"] if "LDAC_OBJECTS" in hdul else hdul[1]
            data = hdu.data
            cols = {name: np.asarray(data[name]) for name in data.columns.names}
        match = NAME_RE.search(os.path.basename(path))
        parts = match.group("num").strip("-").split("-") if match else ["0", "0"]
        n = len(cols["NUMBER"])
        cols["EXP"] = np.full(n, int(parts[0]))
        cols["CCD"] = np.full(n, int(parts[1]) if len(parts) > 1 else 0)
        tables.append(cols)
    if not tables:
        raise SystemExit("no validation_psf*.fits file found")
    keys = set(tables[0])
    for t in tables[1:]:
        keys &= set(t)
    return {k: np.concatenate([t[k] for t in tables]) for k in keys}


def good_rows(cat):
    """Stars whose star and model shapes were both measured."""
    ok = (cat["FLAG_PSF_HSM"] == 0) & (cat["FLAG_STAR_HSM"] == 0)
    if "FLAG_PSF_MODEL" in cat:
        ok &= cat["FLAG_PSF_MODEL"] == 0
    for key in ("E1_PSF_HSM", "E2_PSF_HSM", "SIGMA_PSF_HSM", "E1_STAR_HSM", "E2_STAR_HSM",
                "SIGMA_STAR_HSM"):
        ok &= np.isfinite(cat[key])
    return ok & (cat["SIGMA_STAR_HSM"] > 0) & (cat["SIGMA_PSF_HSM"] > 0)


def residuals(cat):
    """de1, de2, relative size residual (star - model)."""
    de1 = cat["E1_STAR_HSM"] - cat["E1_PSF_HSM"]
    de2 = cat["E2_STAR_HSM"] - cat["E2_PSF_HSM"]
    dsize = (cat["SIGMA_STAR_HSM"] - cat["SIGMA_PSF_HSM"]) / cat["SIGMA_STAR_HSM"]
    return de1, de2, dsize


def stats(values):
    """Mean, error of the mean, median, rms of an array."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": np.nan, "err": np.nan, "median": np.nan, "rms": np.nan}
    return {"n": n, "mean": float(values.mean()), "err": float(values.std() / np.sqrt(n)),
            "median": float(np.median(values)), "rms": float(values.std())}


def truth_residuals(cat, truth_dir):
    """Model minus truth (HSM of the noiseless true PSF) for stars matched in psf_stars."""
    path = os.path.join(truth_dir, "psf_stars.fits")
    with fits.open(path, memmap=False) as hdul:
        t = hdul[1].data
        exp, ccd = np.asarray(t["EXP_NUM"]), np.asarray(t["CCD"])
        tx, ty = np.asarray(t["X"]), np.asarray(t["Y"])
        tg1, tg2, ts = (np.asarray(t["HSM_G1"]), np.asarray(t["HSM_G2"]),
                        np.asarray(t["HSM_SIGMA"]))
    out = np.full((len(cat["X"]), 3), np.nan)
    for e, c in set(zip(cat["EXP"].tolist(), cat["CCD"].tolist())):
        rows = np.flatnonzero((cat["EXP"] == e) & (cat["CCD"] == c))
        cand = np.flatnonzero((exp == e) & (ccd == c))
        if len(cand) == 0:
            continue
        d2 = (cat["X"][rows, None] - tx[cand]) ** 2 + (cat["Y"][rows, None] - ty[cand]) ** 2
        best = np.argmin(d2, axis=1)
        close = d2[np.arange(len(rows)), best] < 1.0
        r, m = rows[close], cand[best[close]]
        out[r, 0] = cat["E1_PSF_HSM"][r] - tg1[m]
        out[r, 1] = cat["E2_PSF_HSM"][r] - tg2[m]
        out[r, 2] = (cat["SIGMA_PSF_HSM"][r] - ts[m]) / ts[m]
    return out


def focal_plane_coords(cat):
    """Positions (arcmin) relative to each exposure's mean RA/Dec."""
    u = np.zeros(len(cat["RA"]))
    v = np.zeros(len(cat["RA"]))
    for e in np.unique(cat["EXP"]):
        sel = cat["EXP"] == e
        ra0, dec0 = np.mean(cat["RA"][sel]), np.mean(cat["DEC"][sel])
        dra = (cat["RA"][sel] - ra0 + 180.0) % 360.0 - 180.0
        u[sel] = dra * np.cos(np.radians(dec0)) * 60.0
        v[sel] = (cat["DEC"][sel] - dec0) * 60.0
    return u, v


def binned_map(u, v, values, bins):
    """Mean of ``values`` in 2-d bins (NaN where empty)."""
    total, xe, ye = np.histogram2d(u, v, bins=bins, weights=values)
    count, _, _ = np.histogram2d(u, v, bins=[xe, ye])
    with np.errstate(invalid="ignore", divide="ignore"):
        return (total / count).T, xe, ye


def rho_stats(cat, min_sep=0.5, max_sep=100.0, nbins=12):
    """Rho statistics 1-5 with treecorr (separations in arcmin)."""
    import treecorr

    e1p, e2p = cat["E1_PSF_HSM"], cat["E2_PSF_HSM"]
    q1, q2 = cat["E1_STAR_HSM"] - e1p, cat["E2_STAR_HSM"] - e2p
    t_star, t_psf = 2 * cat["SIGMA_STAR_HSM"] ** 2, 2 * cat["SIGMA_PSF_HSM"] ** 2
    dt = (t_star - t_psf) / t_star
    w1, w2 = cat["E1_STAR_HSM"] * dt, cat["E2_STAR_HSM"] * dt
    kw = dict(ra=cat["RA"], dec=cat["DEC"], ra_units="deg", dec_units="deg")
    cats = {
        "e": treecorr.Catalog(g1=e1p, g2=e2p, **kw),
        "q": treecorr.Catalog(g1=q1, g2=q2, **kw),
        "w": treecorr.Catalog(g1=w1, g2=w2, **kw),
    }
    pairs = {"rho1": ("q", "q"), "rho2": ("e", "q"), "rho3": ("w", "w"), "rho4": ("q", "w"),
             "rho5": ("e", "w")}
    out = {}
    for name, (a, b) in pairs.items():
        gg = treecorr.GGCorrelation(min_sep=min_sep, max_sep=max_sep, nbins=nbins,
                                    sep_units="arcmin")
        if a == b:
            gg.process(cats[a])
        else:
            gg.process(cats[a], cats[b])
        out[name] = {"r": np.exp(gg.meanlogr), "xip": gg.xip, "sigma": np.sqrt(gg.varxip),
                     "npairs": gg.npairs}
    return out


def write_summary(out_dir, summary):
    lines = ["PSF validation summary (star - model; size = (sigma_star - sigma_psf) / sigma_star)",
             f"{'sample':<22}{'quantity':<10}{'n':>7}{'mean':>12}{'+-':>10}{'median':>12}"
             f"{'rms':>11}"]
    for sample, block in summary["samples"].items():
        for quantity, s in block.items():
            lines.append(f"{sample:<22}{quantity:<10}{s['n']:>7d}{s['mean']:>12.2e}"
                         f"{s['err']:>10.1e}{s['median']:>12.2e}{s['rms']:>11.2e}")
    lines.append(f"files: {summary['n_files']}, stars: {summary['n_stars']}, usable: "
                 f"{summary['n_good']}, accepted: {summary['n_accepted']}")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "psf_summary.txt"), "w") as handle:
        handle.write(text)
    with open(os.path.join(out_dir, "psf_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=1)
    return text


def plot_all(out_dir, cat, res, rho):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r"$e_1^\star - e_1^{\rm PSF}$", r"$e_2^\star - e_2^{\rm PSF}$",
              r"$(\sigma^\star - \sigma^{\rm PSF}) / \sigma^\star$"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, values, label in zip(axes, res, labels):
        lim = np.percentile(np.abs(values), 99) if len(values) else 1
        ax.hist(values, bins=50, range=(-lim, lim), color="C0", alpha=0.8)
        ax.axvline(np.mean(values), color="k", ls="--", label=f"mean {np.mean(values):.1e}")
        ax.set_xlabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "psf_residual_histograms.png"), dpi=90)
    plt.close(fig)

    u, v = focal_plane_coords(cat)
    star = [cat["E1_STAR_HSM"], cat["E2_STAR_HSM"], cat["SIGMA_STAR_HSM"]]
    model = [cat["E1_PSF_HSM"], cat["E2_PSF_HSM"], cat["SIGMA_PSF_HSM"]]
    names = ["e1", "e2", "sigma [pix]"]
    bins = 12
    fig, axes = plt.subplots(3, 3, figsize=(12, 10))
    for j in range(3):
        maps = [binned_map(u, v, star[j], bins), binned_map(u, v, model[j], bins),
                binned_map(u, v, res[j], bins)]
        vmin = np.nanpercentile(maps[0][0], 2)
        vmax = np.nanpercentile(maps[0][0], 98)
        rlim = np.nanmax(np.abs(maps[2][0])) if np.isfinite(maps[2][0]).any() else 1
        for i, (m, xe, ye) in enumerate(maps):
            ax = axes[j, i]
            kw = dict(vmin=vmin, vmax=vmax, cmap="viridis") if i < 2 else \
                dict(vmin=-rlim, vmax=rlim, cmap="RdBu_r")
            im = ax.pcolormesh(xe, ye, m, **kw)
            fig.colorbar(im, ax=ax)
            ax.set_title(f"{['star', 'model', 'star - model'][i]} {names[j]}"
                         + (" (rel.)" if i == 2 and j == 2 else ""))
            ax.set_aspect("equal")
            if j == 2:
                ax.set_xlabel("focal plane x [arcmin]")
            if i == 0:
                ax.set_ylabel("focal plane y [arcmin]")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "psf_focal_plane.png"), dpi=80)
    plt.close(fig)

    if rho:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for name, r in rho.items():
            ax = axes[0] if name in ("rho1", "rho3", "rho4") else axes[1]
            ax.errorbar(r["r"], np.abs(r["xip"]), yerr=r["sigma"], fmt="o-", ms=3,
                        label=rf"$|\{name[:3]}_{name[3]}|$")
        for ax in axes:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(r"$\theta$ [arcmin]")
            ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "psf_rho_stats.png"), dpi=90)
        plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="run directory, psfex_interp output directory or a file")
    parser.add_argument("-o", "--output", default=None,
                        help="output directory (default: <path>/psf_validation)")
    parser.add_argument("--truth", default=None,
                        help="truth directory of the simulated survey (psf_stars.fits)")
    parser.add_argument("--no-rho", action="store_true", help="skip the rho statistics")
    args = parser.parse_args(argv)

    files = find_validation_files(args.path)
    if not files:
        print(f"{args.path}: no validation_psf*.fits (run psfex_interp_runner with "
              "MODE = VALIDATION)", file=sys.stderr)
        return 2
    out_dir = args.output or os.path.join(
        args.path if os.path.isdir(args.path) else os.path.dirname(args.path), "psf_validation")
    os.makedirs(out_dir, exist_ok=True)
    cat_all = load(files)
    good = good_rows(cat_all)
    cat = {k: v[good] for k, v in cat_all.items()}
    res = residuals(cat)
    accepted = cat["ACCEPTED"] == 1
    samples = {}
    for label, sel in (("all", np.ones(len(accepted), bool)), ("accepted", accepted),
                       ("not-used", ~accepted)):
        samples[f"star-model {label}"] = {q: stats(r[sel]) for q, r in
                                          zip(("e1", "e2", "size"), res)}
    if args.truth:
        tr = truth_residuals(cat, args.truth)
        ok = np.all(np.isfinite(tr), axis=1)
        samples["model-truth"] = {q: stats(tr[ok, i]) for i, q in
                                  enumerate(("e1", "e2", "size"))}
    rho = None
    if not args.no_rho and len(cat["RA"]) > 10:
        rho = rho_stats(cat)
        with open(os.path.join(out_dir, "psf_rho_stats.txt"), "w") as handle:
            handle.write("# name theta_arcmin xip sigma npairs\n")
            for name, r in rho.items():
                for row in zip(r["r"], r["xip"], r["sigma"], r["npairs"]):
                    handle.write(f"{name} {row[0]:.4g} {row[1]:.4e} {row[2]:.3e} "
                                 f"{int(row[3])}\n")
    summary = {"n_files": len(files), "n_stars": int(len(good)), "n_good": int(good.sum()),
               "n_accepted": int(accepted.sum()), "samples": samples}
    print(write_summary(out_dir, summary), end="")
    plot_all(out_dir, cat, res, rho)
    print(f"plots and tables in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
