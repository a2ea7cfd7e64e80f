#!/usr/bin/env python
"""E7/E8 report: metadetection catalogues of a shear_bias run's halves, as PLAN.md registered.

Reads, for every field of ``BASE/fields`` and both halves, the newest
``<RUN>_<date>/metadetect_runner/output/metadetect_cat-*.fits``, keeps per step the rows with
MDET_FLAGS == 0, MASK_FLAGS == 0, MDET_S2N > 10, MDET_T_RATIO > 0.5 (``--no-true-stars``:
also without the rows within 1" of a true star, a truth-based diagnostic; ``--class-cut``:
by the SPREAD_CLASS of the unsheared tile's detection at the position), and gives each half
its metadetection response R (1p/1m, 2p/2m means). m, c, alpha and the paired differences to
the metacal run on the same skies (and to ``--compare-run``) use scripts/shear_bias.py's
estimator and jackknife over skies.

    python bench/runs/issue16/mdet_report.py BASE RUN OUT.json [--compare-run RUN2]
        [--no-true-stars] [--class-cut nostar|galaxy]
"""

import argparse
import glob
import json
import os
import sys

import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

import shear_bias as sb  # noqa: E402
import shear_validation as sv  # noqa: E402

STEPS = sb.MDET_STEPS


def _class_rows(field, half, d, spread_class):
    """Rows whose unsheared position is within 0.5" of a tile detection of that SPREAD_CLASS."""
    with open(f"{field}/{half}.done", encoding="utf-8") as done:
        files = done.read().split()
    cat = sv.load_catalogues(files)
    star = np.asarray(cat["SPREAD_CLASS"]) == spread_class
    cosd = np.cos(np.radians(np.median(d["DEC"])))
    tree = cKDTree(np.c_[np.asarray(cat["XWIN_WORLD"])[star] * cosd,
                         np.asarray(cat["YWIN_WORLD"])[star]] * 3600)
    dist, _ = tree.query(np.c_[d["RA"] * cosd, d["DEC"]] * 3600)
    return dist < 0.5


def mdet_half(field, half, run, no_true_stars=False, class_cut=False):
    """half_sums-like dict of one half: every object carries the half's response."""
    pattern = f"{field}/runs/{half}/{run}_2*/metadetect_runner/output/metadetect_cat-*.fits"
    path = sorted(glob.glob(pattern))[-1]
    d = fits.getdata(path, "METADETECT")
    step = float(fits.getheader(path, "METADETECT")["MDETSTEP"])
    with np.errstate(invalid="ignore"):
        sel = ((d["MDET_FLAGS"] == 0) & (d["MASK_FLAGS"] == 0) & (d["MDET_S2N"] > 10)
               & (d["MDET_T_RATIO"] > 0.5))
    if no_true_stars:
        t = fits.getdata(f"{field}/data/{half}/truth/objects.fits")
        cosd = np.cos(np.radians(np.median(t["DEC"])))
        tree = cKDTree(np.c_[t["RA"] * cosd, t["DEC"]] * 3600)
        dist, k = tree.query(np.c_[d["RA"] * cosd, d["DEC"]] * 3600)
        sel &= ~((dist < 1.0) & (t["IS_STAR"][k] == 1))
    if class_cut == "nostar":
        sel &= ~_class_rows(field, half, d, 0)
    elif class_cut == "galaxy":
        sel &= _class_rows(field, half, d, 1)
    mean = {}
    for s in STEPS:
        r = d[sel & (d["MDET_STEP"] == s)]
        mean[s] = np.array([r["MDET_G1"].mean(), r["MDET_G2"].mean()])
    resp = np.column_stack([(mean["1p"] - mean["1m"]) / (2 * step),
                            (mean["2p"] - mean["2m"]) / (2 * step)])
    ns = d[sel & (d["MDET_STEP"] == "noshear")]
    n = len(ns)
    return {"g": np.column_stack([ns["MDET_G1"], ns["MDET_G2"]]),
            "R": np.repeat(resp[None], n, 0), "R_S": np.zeros((2, 2)),
            "psf": np.column_stack([ns["PSF_G1"], ns["PSF_G2"]]),
            "snr": np.asarray(ns["MDET_S2N"], float),
            "t_ratio": np.asarray(ns["MDET_T_RATIO"], float)}


def run_sums(fields, leaks, run, no_true_stars, class_cut=False):
    def halves(f):
        return {h: mdet_half(f, h, run, no_true_stars, class_cut) for h in sb.HALVES}
    return {"normal": [halves(f) for f in fields], "leaky": [halves(f) for f in leaks]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the shear_bias output directory (plan.json, fields/)")
    parser.add_argument("run", help="run name of the metadetect runs (e.g. run_sp_mdet2)")
    parser.add_argument("output", help="summary JSON")
    parser.add_argument("--compare-run", help="another metadetect run name on the same halves")
    parser.add_argument("--no-true-stars", action="store_true")
    parser.add_argument("--class-cut", choices=["nostar", "galaxy"],
                        help="nostar: without the rows at a SPREAD_CLASS = 0 detection of the "
                             "unsheared tile; galaxy: only the rows at a SPREAD_CLASS = 1 one "
                             "(final_cat; the position, not the shear, decides)")
    args = parser.parse_args(argv)
    with open(os.path.join(args.base, "plan.json"), encoding="utf-8") as handle:
        shear = json.load(handle)["shear"]
    fields = sorted(glob.glob(os.path.join(args.base, "fields", "field_*")))
    leaks = sorted(glob.glob(os.path.join(args.base, "fields", "leak_*")))
    groups = [[2 * i, 2 * i + 1] for i in range(len(fields) // 2)]
    mdet = run_sums(fields, leaks, args.run, args.no_true_stars, args.class_cut)
    out = {"run": args.run, "no_true_stars": args.no_true_stars, "class_cut": args.class_cut,
           "all": sb.biases(mdet["normal"], shear, groups=groups),
           "leakage": sb.leakage(mdet["normal"], mdet["leaky"], paired=True),
           "R_per_half": [[f[h]["R"][0].tolist() for h in sb.HALVES] for f in mdet["normal"]]}
    with open(os.path.join(args.base, "shear_bias.json"), encoding="utf-8") as handle:
        select = sv.make_selector(json.load(handle)["cuts"])

    def metacal(f, h):
        with open(f"{f}/{h}.done", encoding="utf-8") as done:
            return sb.half_sums(done.read().split(), f"{f}/data/{h}/truth", select)

    e4 = {"normal": [{h: metacal(f, h) for h in sb.HALVES} for f in fields],
          "leaky": [{h: metacal(f, h) for h in sb.HALVES} for f in leaks]}
    out["compare_minus_metacal"] = sb.compare(e4, mdet, shear, groups)
    if args.compare_run:
        other = run_sums(fields, leaks, args.compare_run, args.no_true_stars)
        out["compare_minus_" + args.compare_run] = sb.compare(other, mdet, shear, groups)
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(out, handle, indent=1)
    a, lk = out["all"], out["leakage"]
    print(f"{args.run}: m = {a['m']:+.4f} +- {a['m_err']:.4f}, c1 = {a['c1']:+.5f} +- "
          f"{a['c1_err']:.5f}, c2 = {a['c2']:+.5f} +- {a['c2_err']:.5f}, n = {a['n_objects']}")
    print(f"alpha = ({lk['alpha1']:+.3f} +- {lk['alpha1_err']:.3f}, {lk['alpha2']:+.3f} +- "
          f"{lk['alpha2_err']:.3f})")
    for key in [k for k in out if k.startswith("compare_minus")]:
        c = out[key]
        print(f"{key}: d_m = {c['d_m']:+.4f} +- {c['d_m_err']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
