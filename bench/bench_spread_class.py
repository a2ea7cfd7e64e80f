#!/usr/bin/env python
"""SPREAD_CLASS purity against the simulated truth, from a config_tile.ini run.

    python bench/bench_spread_class.py $SP_RUN/run_sp_tile_<date> $SP_DATA [--recompute]
        [--list] [--true-psf]

Matches the tile catalogue (tile_sexcat) to truth/objects.fits one-to-one, as
``scripts/shear_validation.py`` does for the classification: each detection is the true object
within 1" whose light dominates it (``match_dominant``: a faint star on a galaxy is a galaxy
detection); the figures by the nearest true object within 0.5" (the earlier measure, which
calls such blends stars) are printed too. It classifies with SPREAD_MODEL + 5/3 SPREADERR_MODEL
(thresholds 0.003 / 0.01, ShapePipe's) from sexcat_sm, and prints the galaxy purity at
S/N > 20 and the fraction of S/N > 50 stars classified as stars (S/N = SNR_WIN), for all
detections and for FLAGS = 0 and IMAFLAGS_ISO = 0.

``--recompute`` also recomputes the spread model from the run's inputs twice in this
process, with the current defaults and with the neighbour mask and the depth plateau turned
off (the reference, measured in the same run), and prints both sets of figures and
their CPU times (median of 3 each). ``--true-psf`` recomputes it once more with the
simulation's true PSF (``truth/psf_model.fits``) in place of the PSF model, for the same
epochs of each object: what is left is not the PSF model's doing. ``--list`` prints every
impure object with its likely cause:

- ``PSF model`` (with ``--true-psf``): the true PSF makes it a star or "other";
- ``saturated``: the true star is brighter than the exposures' saturation (mag < 14.8);
- ``unresolved pair``: another true object within 1.2" of the detection has no detection of its
  own (the detection is the blend of both);
- ``neighbour``: another detection within 3" (its light leaks into the star's pixels);
- ``other``: none of these (e.g. a wrong PSF model at the object).
"""

import argparse
import glob
import importlib.util
import os
import sys
import tempfile
import time

import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shapepipe.modules.make_catalog import spread_class  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "shear_validation", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                     "scripts", "shear_validation.py"))
sv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sv)

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


def figures(cat, sm, truth, idx, label, listing=False, cxy=None, txy=None, psf_fixed=()):
    """Print purity and star completeness; optionally list impure objects with causes.

    ``psf_fixed``: NUMBERs of the objects that the true PSF classifies right (cause
    ``PSF model``).
    """
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
            close = [j for j in ttree.query_ball_point(cxy[k], 1.2) if j != t]
            dets = [j for j in ctree.query_ball_point(cxy[k], 3.0) if j != k]
            if cat["NUMBER"][k] in psf_fixed:
                cause = "PSF model"
            elif truth["MAG"][t] < SATURATION_MAG:
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


def _exp_wcs(run):
    from shapepipe.modules.merge_headers import read_exp_wcs

    base = os.path.dirname(os.path.abspath(run))
    exp_runs = sorted(glob.glob(os.path.join(base, "run_sp_exp_2*")))
    if not exp_runs:
        return None
    return read_exp_wcs(_one(os.path.join(exp_runs[-1], "merge_headers_runner", "output",
                                          "log_exp_headers.sqlite")))


def true_psf_store(run, data, path):
    """A copy of the run's PSF store with the true PSF of every epoch of every object.

    Each epoch's stamp is the simulation's PSF at the object's position on that CCD (from
    the CCD WCS), drawn with the pixel response, centred on the central pixel as the PSF
    model's stamps are, with its HSM sigma in SHAPES.
    """
    from shapepipe.sim import true_psf
    from shapepipe.utils.stamp_store import get_many, open_store

    cat = fits.getdata(_one(f"{run}/sextractor_runner/output/tile_sexcat-*.fits"),
                       "LDAC_OBJECTS")
    wcs = _exp_wcs(run)
    src = get_many(_one(f"{run}/psfex_interp_runner/output/galaxy_psf-*.sqlite"),
                   [str(n) for n in cat["NUMBER"]])
    store = open_store(path, "n")
    for k, num in enumerate(cat["NUMBER"]):
        entry = src.get(str(num))
        if not isinstance(entry, dict):
            store[str(num)] = "empty"
            continue
        out = {}
        for key, value in entry.items():
            size = np.asarray(value["VIGNET"]).shape[0]
            exp, _, ccd = key.rpartition("-")
            x, y = wcs[exp][int(ccd)].all_world2pix(cat["XWIN_WORLD"][k],
                                                    cat["YWIN_WORLD"][k], 1)
            img = true_psf(os.path.join(data, "truth"), int(exp), int(ccd), float(x),
                           float(y)).drawImage(nx=size, ny=size, scale=1.0)
            out[key] = {"VIGNET": (img.array / img.array.sum()).astype(np.float32),
                        "SHAPES": {"SIGMA_PSF_HSM": float(img.FindAdaptiveMom().moments_sigma),
                                   "FLAG_PSF_HSM": 0}}
        store[str(num)] = out
    store.commit()
    store.close()


def recompute(run, psf_store=None, **options):
    """The spread model from the run's inputs (defaults + ``options``), and its CPU time."""
    from shapepipe.modules.spread_model import process

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sexcat_sm.fits")
        t0 = time.process_time()
        process(_one(f"{run}/sextractor_runner/output/tile_sexcat-*.fits"),
                psf_store or _one(f"{run}/psfex_interp_runner/output/galaxy_psf-*.sqlite"),
                _one(f"{run}/vignetmaker_runner*/output/weight_vignet-*.fits"), out,
                exp_wcs=_exp_wcs(run), **options)
        cpu = time.process_time() - t0
        return fits.getdata(out, "LDAC_OBJECTS"), cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run_sp_tile_<date> directory")
    parser.add_argument("data", help="SP_DATA (with truth/objects.fits)")
    parser.add_argument("--recompute", action="store_true",
                        help="recompute the spread model with and without the fixes")
    parser.add_argument("--list", action="store_true", help="list impure objects and causes")
    parser.add_argument("--true-psf", action="store_true",
                        help="also recompute with the true PSF in place of the PSF model")
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
    idx_near = match_one_to_one(cxy, txy, MATCH_RADIUS)
    idx = sv.match_dominant(cat["XWIN_WORLD"], cat["YWIN_WORLD"],
                            {c: np.asarray(truth[c]) for c in ("RA", "DEC", "MAG", "HLR")})
    print(f"{np.sum(idx >= 0)} of {len(cat)} detections matched to the flux-dominant true "
          f"object within 1\" ({np.sum(idx_near >= 0)} to the nearest within "
          f"{MATCH_RADIUS}\"; {np.sum((idx != idx_near) & (idx >= 0) & (idx_near >= 0))} "
          "matched to another object)")
    sm = fits.getdata(_one(f"{run}/spread_model_runner/output/sexcat_sm-*.fits"),
                      "LDAC_OBJECTS")
    figures(cat, sm, truth, idx_near, "run, nearest match", False)
    figures(cat, sm, truth, idx, "run", args.list and not args.recompute, cxy, txy)
    off = dict(mask_neighbours=False, weight_tolerance=0.0)
    fixed = {"defaults": set(), "reference": set()}
    if args.true_psf:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "galaxy_psf_true.sqlite")
            true_psf_store(run, args.data, path)
            for name, opts in (("defaults", {}), ("reference", off)):
                if name == "reference" and not args.recompute:
                    continue
                true, _ = recompute(run, psf_store=path, **opts)
                figures(cat, true, truth, idx_near, f"{name}, true PSF, nearest match", False)
                figures(cat, true, truth, idx, f"{name}, true PSF", args.list, cxy, txy)
                with np.errstate(invalid="ignore"):
                    ok = spread_class(true["SPREAD_MODEL"], true["SPREADERR_MODEL"]) != 1
                # objects the true PSF does not call galaxies: the PSF model's doing
                fixed[name] = set(cat["NUMBER"][ok].tolist())
    if args.recompute:
        # alternate the two, median CPU time of 3 each (the machine may be shared)
        cpus = {"ref": [], "ours": []}
        for _ in range(3):
            ref, t = recompute(run, **off)
            cpus["ref"].append(t)
            ours, t = recompute(run)
            cpus["ours"].append(t)
        cpu_ref, cpu = float(np.median(cpus["ref"])), float(np.median(cpus["ours"]))
        figures(cat, ref, truth, idx_near, "reference, nearest match", False)
        figures(cat, ours, truth, idx_near, "defaults, nearest match", False)
        r = figures(cat, ref, truth, idx, "reference: no neighbour mask, no depth plateau",
                    args.list, cxy, txy, fixed["reference"])
        o = figures(cat, ours, truth, idx, "defaults", args.list, cxy, txy, fixed["defaults"])
        for name in r:
            print(f"{name}: impurity {1 - r[name][0]:.4f} -> {1 - o[name][0]:.4f} "
                  f"(ratio {(1 - o[name][0]) / max(1 - r[name][0], 1e-9):.2f}); star "
                  f"completeness {r[name][1]:.4f} -> {o[name][1]:.4f}")
        print(f"CPU per tile (median of 3): defaults {cpu:.2f} s, reference {cpu_ref:.2f} s, "
              f"ratio {cpu / cpu_ref:.2f}")

if __name__ == "__main__":
    main()
