#!/usr/bin/env python
"""Shear bias of the metacalibration (issue 7): multiplicative m and additive c.

Exponential galaxies (half-light radius 0.3-0.8", intrinsic ellipticity sigma 0.26) under
Moffat PSFs (FWHM 0.6-0.8", beta 3-4.8, |g_psf| < 0.03 per component), S/N 10-100
log-uniform, 51x51 stamps at 0.187"/pixel; 1 and 3 epochs (each epoch its own PSF and
noise). Each galaxy is drawn as +g/-g stamps sharing noise and intrinsic shape, each with
pixel noise +n and -n (antithetic: the terms odd in the noise cancel, which divides the
variance of m by ~5) (``shapepipe.sim.shear_stamps``).

The applied shear g = (0.00707, -0.00707) has |g| = 0.01, the metacal step. m is the bias of
the linear response: the true response is measured as (e(+g) - e(-g)) / 2g and metacal's as
(e(+s) - e(-s)) / 2s, and their O(g^2) non-linear terms cancel when |g| = s. (Measured on
the same 41,000 galaxies, m at g = (0.01, -0.01) minus m at |g| = s is +0.2e-4 +- 1.9e-4 and
-1.1e-4 +- 2.0e-4: the non-linear term is small at these shears.)

Two designs, each an unbiased estimate of both m and c, differing in their variance:

* design ``m``: the four stamps (+-g, +-n) of each galaxy. Adding 90-degree rotated copies
  lowers the variance of m per galaxy by only 1.36x for twice the cost (measured), so the
  rotated copies go to design c.
* design ``c``: eight stamps, the four above and their copies rotated by 90 degrees whose
  noise (pixel and correction noise) rotates with the galaxy: a rotated stamp is then the
  exact rotation of an unrotated one but for the PSF, shapes cancel to the PSF leakage and
  c is measured ~20 times more precisely per galaxy.

The S/N is importance-sampled (density ~ snr^-1.45 in log S/N, weights restoring the
log-uniform population; see ``draw_group``), which halves the variance for a given number of
galaxies. Prints m, c, their 1-sigma errors and the ratio of |m| + 3 sigma to the target (2e-3;
2e-4 for c): a ratio < 1 meets the target. Reference measured in the same run: the first
galaxies of each design without noise (and without the noise correction), the floor of the
method itself.

Long runs save their per-galaxy sums after every block (``--save DIR``); ``--resume``
continues an interrupted run with the same galaxies, ``--report`` prints the saved results.
``bench/runs/`` holds the saved sums of the 3-epoch runs in ``bench/RESULTS.md``, so that a
long run can continue across machines (galaxy i is the same everywhere).

    python bench/bench_shear_bias.py [--quick] [--processes N] [--n-gal N] [--n-gal-c N]
                                     [--epochs 1,3] [--save DIR [--resume | --overwrite]]
                                     [--report]
"""

import argparse
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shapepipe.modules.ngmix import (  # noqa: E402
    Jacobian,
    Observation,
    make_stamp_obs,
    measure_object,
    rows_to_tables,
    shear_matrix,
)
from shapepipe.sim.shear_stamps import (  # noqa: E402
    bias_from_groups,
    draw_group,
    group_sums,
    paired_bias_difference,
    snr_from_weight,
)

STEP = 0.01  # metacal step (measure_object's default)
SHEAR = (STEP / np.sqrt(2.0), -STEP / np.sqrt(2.0))
SEED = 2024
SCALE = 0.187
SNR_SLOPE = 1.45
SNR_RANGE = (10.0, 100.0)
SNR_BINS = (10, 13, 20, 40, 100)
CHUNK = 10
BLOCK = 1000
GROUP_KEYS = ("D1", "D2", "P1", "P2", "S1", "S2", "R11", "R22", "weight", "flagged")
_ROT = np.deg2rad(20.0)
#: The harder cases of issue 16 (draw_group options); "standard" is the design above.
CASES = {
    "standard": {},
    # T/Tpsf ~ 0.3-0.5 (exponential half-light radius 0.15-0.21" under 0.6-0.8" Moffats).
    "small": {"hlr_range": (0.15, 0.21)},
    # A rotated (20 deg) and sheared (0.03, -0.02) WCS, as ngmix's own accuracy test shears it.
    "wcs": {"jacobian": SCALE * np.array([[np.cos(_ROT), -np.sin(_ROT)],
                                           [np.sin(_ROT), np.cos(_ROT)]])
                        @ shear_matrix(0.03, -0.02)},
    # 1% bad pixels and one bad column per epoch, filled by the model in the measurement.
    "masked": {"mask_fraction": 0.01},
    # The PSF given to metacal is a 3-Gaussian EM fit to one star at S/N 500, not the truth.
    "psf_model": {"psf_star_snr": 500.0},
}


def _observation(st, k, e, jacobian):
    if jacobian is None:
        return make_stamp_obs(st["image"][k, e], st["weight"][k, e], st["psf"][k, e], SCALE,
                              mask=st["mask"][k, e])
    size = st["image"].shape[-1]
    centre = (size - 1) / 2.0
    return Observation(st["image"][k, e], st["weight"][k, e],
                       Jacobian(centre, centre, jacobian), psf=st["psf"][k, e],
                       mask=st["mask"][k, e])


def run_chunk(first, count, n_epoch, design="m", noiseless=False, seed=SEED, case="standard",
              psf_g_mean=(0.0, 0.0), fill="symmetric"):
    """Draw and measure groups ``first .. first + count - 1``: their :func:`group_sums`.

    ``noiseless``: the same galaxies (same random draws) with negligible noise, measured
    without the noise correction; only the ``+n`` stamps of each group. ``seed`` fixes
    every draw (galaxies, noise, correction noise); ``case`` is a key of :data:`CASES`.
    """
    rotate_noise = design == "c"
    draw_seed = seed + n_epoch + (100 if rotate_noise else 0)
    options = dict(CASES[case], psf_g_mean=psf_g_mean)
    rows, sign, group, weight = [], [], [], []
    for gi in range(first, first + count):
        snr = ({"snr_range": (1e7, 1e7)} if noiseless
               else {"snr_slope": SNR_SLOPE, "snr_range": SNR_RANGE})
        st = draw_group(gi, draw_seed, SHEAR, n_epoch=n_epoch, rotate_noise=rotate_noise,
                        rotations=(0, 90) if rotate_noise else (0,), **snr, **options)
        n_stamp = len(st["sign"])
        for k in range(n_stamp // 2 if noiseless else n_stamp):
            oid = gi * 2 + (st["rot"][k] == 90 and not rotate_noise)
            obs = [_observation(st, k, e, options.get("jacobian")) for e in range(n_epoch)]
            rows.append(measure_object(obs, oid, seed=seed, noise_sign=st["nsign"][k],
                                       noise_rotation=st["nrot"][k], fixnoise=not noiseless,
                                       bad_pixel_fill=fill))
            sign.append(st["sign"][k])
            group.append(gi - first)
            weight.append(st["snr_weight"])
    stamps = {"sign": np.array(sign), "group": np.array(group), "snr_weight": np.array(weight)}
    return group_sums(rows_to_tables(rows), stamps, SHEAR)


def _concat(parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in GROUP_KEYS}


def _save(path, groups, next_index):
    tmp = path + ".tmp.npz"
    np.savez(tmp, next_index=next_index, **groups)
    os.replace(tmp, path)


def run(n_gal, n_epoch, processes, design="m", noiseless=False, save=None, resume=False,
        progress=True, seed=SEED, case="standard", psf_g_mean=(0.0, 0.0), fill="symmetric"):
    """Per-galaxy sums of ``n_gal`` groups, measured in blocks (saved after each block)."""
    done, start = [], 0
    if save and resume and os.path.exists(save):
        with np.load(save) as old:
            start = int(old["next_index"])
            done.append({k: old[k] for k in GROUP_KEYS})
    if processes > 1:
        from joblib import Parallel, delayed

        pool = Parallel(n_jobs=processes, backend="loky")
    t0 = time.perf_counter()
    for block in range(start, n_gal, BLOCK):
        stop = min(block + BLOCK, n_gal)
        tasks = [(s, min(CHUNK, stop - s), n_epoch, design, noiseless, seed, case, psf_g_mean,
                  fill) for s in range(block, stop, CHUNK)]
        if processes > 1:
            parts = pool(delayed(run_chunk)(*t) for t in tasks)
        else:
            parts = [run_chunk(*t) for t in tasks]
        done.extend(parts)
        if save:
            _save(save, _concat(done), stop)
        if progress and n_gal > BLOCK:
            b = bias_from_groups(_concat(done), SHEAR)
            print(f"      ... {stop}/{n_gal} galaxies, {time.perf_counter() - t0:.0f} s: "
                  f"m1 {b['m1']:+.4f}+-{b['m1_err']:.4f} m2 {b['m2']:+.4f}+-{b['m2_err']:.4f} "
                  f"c1 {b['c1']:+.1e}+-{b['c1_err']:.1e} c2 {b['c2']:+.1e}+-{b['c2_err']:.1e}",
                  flush=True)
    return _concat(done)


def populations(groups):
    """Biases for the two S/N populations: number counts and log-uniform.

    The S/N is drawn with density ~ snr^-1.45 in log S/N, the slope of the simulated survey's
    galaxy number counts: unit weights give that population (most galaxies near the faint
    limit, as in a real catalogue); the importance weights give the log-uniform one.
    """
    counts = dict(groups, weight=np.ones_like(groups["weight"]))
    return {"number counts": bias_from_groups(counts, SHEAR),
            "log-uniform": bias_from_groups(groups, SHEAR)}


def report(b, label, what=("m", "c"), psf_g_mean=(0.0, 0.0)):
    """Print the biases of one design; the target ratios for the quantities in ``what``."""
    print(f"    {label}: {b['n_used']} galaxies without flags "
          f"(Kish effective number of the weights {b['n_eff']:.0f})")
    for i, comp in enumerate(("1", "2")):
        m, me = b["m" + comp], b["m" + comp + "_err"]
        c, ce = b["c" + comp], b["c" + comp + "_err"]
        rm = f"(|m|+3sigma)/2e-3 = {(abs(m) + 3 * me) / 2e-3:5.2f}" if "m" in what else ""
        rc = f"(|c|+3sigma)/2e-4 = {(abs(c) + 3 * ce) / 2e-4:5.2f}" if "c" in what else ""
        line = (f"      m{comp} = {m:+.5f} +- {me:.5f} {rm:>27} | "
                f"c{comp} = {c:+.2e} +- {ce:.2e} {rc}")
        if "c" in what and psf_g_mean[i]:
            a, ae = c / psf_g_mean[i], ce / abs(psf_g_mean[i])
            line += (f" | alpha{comp} = c{comp}/{psf_g_mean[i]:g} = {a:+.4f} +- {ae:.4f} "
                     f"(|alpha|+3sigma)/5e-3 = {(abs(a) + 3 * ae) / 5e-3:5.2f}")
        print(line)
    if "m" in what:
        m, me = b["m"], b["m_err"]
        rm = f"(|m|+3sigma)/2e-3 = {(abs(m) + 3 * me) / 2e-3:5.2f}"
        print(f"      m  = {m:+.5f} +- {me:.5f} {rm:>27}   (along the applied shear: m1 and m2 "
              "weighed together)")


def report_by_snr(groups):
    """Print m along the applied shear in bins of S/N (recovered from the weights)."""
    snr = snr_from_weight(groups["weight"], SNR_RANGE, SNR_SLOPE)
    parts = []
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
        sel = (snr >= lo) & ((snr < hi) if hi < SNR_BINS[-1] else (snr <= hi))
        if sel.sum() > 1:
            b = bias_from_groups({k: v[sel] for k, v in groups.items()}, SHEAR)
            parts.append(f"{lo}-{hi}: {b['m']:+.4f} +- {b['m_err']:.4f}")
    print("      m by S/N  " + ";  ".join(parts))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sample (~1 minute)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument("--seed", type=int, default=SEED,
                        help="seed of every draw (a figure of record uses a fresh one)")
    parser.add_argument("--case", default="standard", choices=sorted(CASES),
                        help="galaxies and observing conditions (see CASES)")
    parser.add_argument("--designs", default="c,m", help="designs to run: c, m or c,m")
    parser.add_argument("--fill", default="symmetric", choices=("model", "symmetric"),
                        help="how metacal fills masked pixels (measure_object bad_pixel_fill)")
    parser.add_argument("--psf-g-mean", default="0,0",
                        help="mean PSF shear g1,g2 added to every PSF: design c then measures "
                             "the leakage alpha = c / g (e.g. 0.03,0.03)")
    parser.add_argument("--n-gal", type=int, default=None,
                        help="galaxies of design m per epoch count (4 stamps each)")
    parser.add_argument("--n-gal-c", type=int, default=None,
                        help="galaxies of design c per epoch count (default n-gal / 8)")
    parser.add_argument("--epochs", default="1,3", help="comma-separated epoch counts")
    parser.add_argument("--save", metavar="DIR", help="save per-galaxy sums after each block")
    parser.add_argument("--resume", action="store_true", help="continue the runs in --save")
    parser.add_argument("--overwrite", action="store_true",
                        help="start the runs in --save again from the first galaxy")
    parser.add_argument("--report", action="store_true",
                        help="only print the results saved in --save")
    parser.add_argument("--compare", metavar="DIR",
                        help="with --report: m of --save minus m of the run saved in DIR, "
                             "galaxy by galaxy (both runs must have the same seed and case)")
    args = parser.parse_args(argv)
    if (args.resume or args.report) and not args.save:
        parser.error("--resume and --report need --save DIR")
    if args.compare and not args.report:
        parser.error("--compare needs --report")
    epochs = [int(x) for x in args.epochs.split(",")]
    designs = [d.strip() for d in args.designs.split(",")]
    if set(designs) - {"c", "m"}:
        parser.error(f"--designs {args.designs}: expected c, m or c,m")
    psf_g_mean = tuple(float(x) for x in args.psf_g_mean.split(","))
    if "c" in designs and args.case in ("wcs", "masked"):
        parser.error(f"--case {args.case} runs design m only (design c rotates stamps, which "
                     "needs square pixels and no masks): pass --designs m")
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        existing = [f for f in os.listdir(args.save) if f.startswith("groups_")]
        if existing and not (args.resume or args.report or args.overwrite):
            parser.error(f"{args.save} holds saved runs ({', '.join(sorted(existing))}): "
                         "pass --resume to continue them, --report to print them or "
                         "--overwrite to start again")
    print(f"metacal shear bias, shear ({SHEAR[0]:.5f}, {SHEAR[1]:.5f}), S/N 10-100, "
          f"exp galaxies, Moffat PSFs; case {args.case}, seed {args.seed}, mean PSF shear "
          f"{psf_g_mean}, masked-pixel fill {args.fill}; {args.processes} process(es)")
    common = dict(seed=args.seed, case=args.case, psf_g_mean=psf_g_mean, fill=args.fill)
    for n_epoch in epochs:
        n_gal = args.n_gal or ((64 if args.quick else 2000) // n_epoch)
        n_gal_c = args.n_gal_c or max(n_gal // 8, 16)
        print(f"  {n_epoch} epoch(s):")
        results = {}
        # Design c first: it is short, design m runs as long as its precision needs.
        for design, n in (("c", n_gal_c), ("m", n_gal)):
            if design not in designs:
                continue
            tag = "" if args.case == "standard" else f"{args.case}_"
            path = (os.path.join(args.save, f"groups_{tag}{design}_{n_epoch}ep.npz")
                    if args.save else None)
            t0 = time.perf_counter()
            if args.report:
                if not os.path.exists(path):
                    print(f"    design {design}: no saved run ({path})")
                    continue
                with np.load(path) as saved:
                    groups = {k: saved[k] for k in GROUP_KEYS}
            else:
                groups = run(n, n_epoch, args.processes, design, save=path,
                             resume=args.resume, **common)
            results[design] = groups
            if not args.report:
                print(f"    design {design}: {n} galaxies x {4 if design == 'm' else 8} stamps, "
                      f"{time.perf_counter() - t0:.0f} s")
        if not args.report:
            parts = []
            for design, n in (("m", n_gal), ("c", n_gal_c)):
                if design in designs:
                    n_ref = min(n, 100)
                    ref = bias_from_groups(run(n_ref, n_epoch, args.processes, design=design,
                                               noiseless=True, progress=False, **common),
                                           SHEAR)
                    parts.append(f"first {n_ref} galaxies of design {design}: "
                                 f"m1 = {ref['m1']:+.5f} +- {ref['m1_err']:.5f}, "
                                 f"m2 = {ref['m2']:+.5f} +- {ref['m2_err']:.5f}, "
                                 f"c1 = {ref['c1']:+.1e}, c2 = {ref['c2']:+.1e}")
            print("    reference without noise, " + "; ".join(parts))
        for design in sorted(results, key=lambda d: d != "m"):
            for population, b in populations(results[design]).items():
                report(b, f"design {design}, {population} S/N population", what=(design,),
                       psf_g_mean=psf_g_mean)
            if design == "m":
                report_by_snr(results[design])
            if args.compare:
                other = os.path.join(args.compare, os.path.basename(path))
                if not os.path.exists(other):
                    print(f"    --compare: no saved run {other}")
                    continue
                with np.load(other) as saved:
                    base = {k: saved[k] for k in GROUP_KEYS}
                for population, weighted in (("number counts", False), ("log-uniform", True)):
                    d = paired_bias_difference(results[design], base, SHEAR, weighted)
                    print(f"    design {design}, {population}: m({args.save}) - "
                          f"m({args.compare}) = {d['dm']:+.5f} +- {d['dm_err']:.5f} "
                          f"(same galaxies, {d['n_used']} unflagged in both)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
