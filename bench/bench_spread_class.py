#!/usr/bin/env python
"""SPREAD_CLASS purity against the simulated truth, from a config_tile.ini run.

    python bench/bench_spread_class.py $SP_RUN/run_sp_tile_<date> $SP_DATA [--recompute]
        [--list]

Matches the tile catalogue (tile_sexcat) to truth/objects.fits one-to-one within 0.5" (as
``scripts/shear_validation.py``: nearest truth object, a truth object claimed by several
detections keeps the nearest), classifies with SPREAD_MODEL + 5/3 SPREADERR_MODEL
(thresholds 0.003 / 0.01, ShapePipe's) from sexcat_sm, and prints the galaxy purity at
S/N > 20 and the fraction of S/N > 50 stars classified as stars (S/N = SNR_WIN), for all
detections and for FLAGS = 0 and IMAFLAGS_ISO = 0.

``--recompute`` also recomputes the spread model from the run's inputs twice in this
process, with the current defaults and with the neighbour mask and the depth plateau turned
off (the reference, measured in the same run), and prints both sets of figures and
their CPU times. ``--list`` prints every impure object with its likely cause:

- ``saturated``: the true star is brighter than the exposures' saturation (mag < 14.8);
- ``unresolved pair``: another true object within 1" of the star has no detection of its
  own (the detection is the blend of both);
- ``neighbour``: another detection within 3" (its light leaks into the star's pixels);
- ``other``: none of these (e.g. a wrong PSF model at the object).
"""

import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.modules.make_catalog import spread_class  # noqa: E402

MATCH_RADIUS = 0.5  # arcsec
SATURATION_MAG = 14.8  # the simulated exposures saturate at ~14.8 (example/mask/config_tile.mask)


def _one(pattern):
    files = sorted(glob.glob(pattern))
    if not files:
        sys.exit(f"no file matches {pattern}")
    return files[0]


def match_one_to_one(cxy, txy, radius):
    """Nearest truth row of each detection within ``radius`` (or -1), one-to-one."""
    dist, idx = cKDTree(txy).query(cxy, distance_upper_bound=radius)
    idx = np.where(np.isfinite(dist), idx, -1)
    order = np.argsort(dist, kind="stable")
    claimed = np.zeros(len(txy), bool)
    for k in order[np.isfinite(dist[order])]:
        if claimed[idx[k]]:
            idx[k] = -1
        else:
            claimed[idx[k]] = True
    return idx


def figures(cat, sm, truth, idx, label, listing=False, cxy=None, txy=None):
    """Print purity and star completeness; optionally list impure objects with causes."""
    matched = idx >= 0
    star = np.zeros(len(idx), bool)
    star[matched] = truth["IS_STAR"][idx[matched]] == 1
    cls = spread_class(sm["SPREAD_MODEL"], sm["SPREADERR_MODEL"])
    snr = cat["SNR_WIN"]
    clean = (cat["FLAGS"] == 0) & (cat["IMAFLAGS_ISO"] == 0)
    out = {}
    for name, sel in (("all detections", matched), ("FLAGS=0, IMAFLAGS_ISO=0", matched & clean)):
        gal = sel & (snr > 20) & (cls == 1)
        stars = sel & (snr > 50) & star
        purity, compl = np.mean(~star[gal]), np.mean(cls[stars] == 0)
        out[name] = (purity, compl)
        print(f"[{label}] {name}: galaxy purity S/N>20 {purity:.4f} ({gal.sum()} classified "
              f"galaxies, {np.sum(star[gal])} stars); stars S/N>50 classified as stars "
              f"{compl:.4f} ({stars.sum()} stars)")
    if listing:
        bad = matched & (snr > 20) & (cls == 1) & star
        has_det = np.zeros(len(truth), bool)
        has_det[idx[matched]] = True
        ttree, ctree = cKDTree(txy), cKDTree(cxy)
        counts = {}
        print(f"[{label}] impure objects: NUMBER SNR_WIN MAG_true SPREAD_MODEL SPREADERR FLAGS "
              "IMAFLAGS cause")
        for k in np.flatnonzero(bad):
            t = idx[k]
            close = [j for j in ttree.query_ball_point(cxy[k], 1.0) if j != t]
            dets = [j for j in ctree.query_ball_point(cxy[k], 3.0) if j != k]
            if truth["MAG"][t] < SATURATION_MAG:
                cause = "saturated"
            elif any(not has_det[j] for j in close):
                cause = "unresolved pair"
            elif dets:
                cause = "neighbour"
            else:
                cause = "other"
            counts[cause] = counts.get(cause, 0) + 1
            print(f"  {cat['NUMBER'][k]:6d} {snr[k]:7.1f} {truth['MAG'][t]:6.2f} "
                  f"{sm['SPREAD_MODEL'][k]:+.4f} {sm['SPREADERR_MODEL'][k]:.4f} "
                  f"{cat['FLAGS'][k]:3d} {cat['IMAFLAGS_ISO'][k]:4d} {cause}")
        print(f"[{label}] causes: {counts}")
    return out


def recompute(run, **options):
    """The spread model from the run's inputs (defaults + ``options``), and its CPU time."""
    from shapepipe.modules.merge_headers import read_exp_wcs
    from shapepipe.modules.spread_model import process

    base = os.path.dirname(os.path.abspath(run))
    exp_runs = sorted(glob.glob(os.path.join(base, "run_sp_exp_2*")))
    log_wcs = _one(os.path.join(exp_runs[-1], "merge_headers_runner", "output",
                                "log_exp_headers.sqlite")) if exp_runs else None
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sexcat_sm.fits")
        t0 = time.process_time()
        process(_one(f"{run}/sextractor_runner/output/tile_sexcat-*.fits"),
                _one(f"{run}/psfex_interp_runner/output/galaxy_psf-*.sqlite"),
                _one(f"{run}/vignetmaker_runner*/output/weight_vignet-*.fits"), out,
                exp_wcs=read_exp_wcs(log_wcs) if log_wcs else None, **options)
        cpu = time.process_time() - t0
        return fits.getdata(out, "LDAC_OBJECTS"), cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run_sp_tile_<date> directory")
    parser.add_argument("data", help="SP_DATA (with truth/objects.fits)")
    parser.add_argument("--recompute", action="store_true",
                        help="recompute the spread model with and without the fixes")
    parser.add_argument("--list", action="store_true", help="list impure objects and causes")
    args = parser.parse_args(argv)
    run = args.run.rstrip("/")
    cat = fits.getdata(_one(f"{run}/sextractor_runner/output/tile_sexcat-*.fits"),
                       "LDAC_OBJECTS")
    truth = fits.getdata(os.path.join(args.data, "truth", "objects.fits"))
    cosd = np.cos(np.deg2rad(np.median(truth["DEC"])))

    def xy(ra, dec):
        return np.c_[ra * cosd, dec] * 3600.0

    cxy = xy(cat["XWIN_WORLD"], cat["YWIN_WORLD"])
    txy = xy(truth["RA"], truth["DEC"])
    idx = match_one_to_one(cxy, txy, MATCH_RADIUS)
    print(f"{np.sum(idx >= 0)} of {len(cat)} detections matched one-to-one within "
          f"{MATCH_RADIUS}\"")
    sm = fits.getdata(_one(f"{run}/spread_model_runner/output/sexcat_sm-*.fits"),
                      "LDAC_OBJECTS")
    figures(cat, sm, truth, idx, "run", args.list, cxy, txy)
    if args.recompute:
        off = dict(mask_neighbours=False, weight_tolerance=0.0)
        ref, cpu_ref = recompute(run, **off)
        ours, cpu = recompute(run)
        r = figures(cat, ref, truth, idx, "reference: no neighbour mask, no depth plateau",
                    args.list, cxy, txy)
        o = figures(cat, ours, truth, idx, "defaults", args.list, cxy, txy)
        for name in r:
            print(f"{name}: impurity {1 - r[name][0]:.4f} -> {1 - o[name][0]:.4f} "
                  f"(ratio {(1 - o[name][0]) / max(1 - r[name][0], 1e-9):.2f}); star "
                  f"completeness {r[name][1]:.4f} -> {o[name][1]:.4f}")
        print(f"CPU: defaults {cpu:.2f} s, reference {cpu_ref:.2f} s, ratio "
              f"{cpu / cpu_ref:.2f}")


if __name__ == "__main__":
    main()
