#!/usr/bin/env python
"""Shear bias of the metacalibration (issue 7): multiplicative m and additive c.

Exponential galaxies (half-light radius 0.3-0.8", intrinsic ellipticity sigma 0.26) under
Moffat PSFs (FWHM 0.6-0.8", beta 3-4.8, |g_psf| < 0.03 per component), S/N 10-100
log-uniform, 51x51 stamps at 0.187"/pixel, shear (0.01, -0.01). Each galaxy is drawn eight
times: +g/-g sharing noise and intrinsic shape, 0/90-degree rotated, pixel noise +n/-n
(see ``shapepipe.modules.ngmix.simulate``). Runs with 1 epoch and with 3 epochs (each
epoch its own PSF and noise). Prints m, c and their 1-sigma errors, the run time, and the
ratio of |m| + 3 sigma to the target (2e-3; 2e-4 for c): a ratio < 1 meets the target.
Reference measured in the same run: the same galaxies without noise (and without the noise
correction), i.e. the floor of the method itself. Noiseless, m grows as ~0.9 |shear|^2
(non-linear response: 7e-4 at shear (0.02, -0.02), 2e-4 at (0.01, -0.01)), hence the
small applied shear; the statistical error of m does not depend on it.

    python bench/bench_shear_bias.py [--quick] [--processes N] [--n-gal N] [--epochs 1,3]
"""

import argparse
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shapepipe.modules.ngmix import make_stamp_obs, measure_object, rows_to_tables  # noqa: E402
from shapepipe.modules.ngmix.simulate import draw_group, shear_bias  # noqa: E402

SHEAR = (0.01, -0.01)
SEED = 2024
SCALE = 0.187


def run_chunk(first, count, n_epoch, noiseless=False):
    """Draw and measure groups ``first .. first + count - 1``; returns rows and metadata.

    ``noiseless``: the same galaxies (same random draws) with negligible noise, measured
    without the noise correction; only the four ``+n`` stamps of each group.
    """
    rows, sign, rot, nsign, group, ids = [], [], [], [], [], []
    for gi in range(first, first + count):
        snr = {"snr_range": (1e7, 1e7)} if noiseless else {}
        st = draw_group(gi, SEED + n_epoch, SHEAR, n_epoch=n_epoch, **snr)
        for k in range(4 if noiseless else 8):
            oid = gi * 2 + (st["rot"][k] == 90)
            obs = [make_stamp_obs(st["image"][k, e], st["weight"][k, e], st["psf"][k, e],
                                  SCALE) for e in range(n_epoch)]
            rows.append(measure_object(obs, oid, seed=SEED, noise_sign=st["nsign"][k],
                                       fixnoise=not noiseless))
            sign.append(st["sign"][k])
            rot.append(st["rot"][k])
            nsign.append(st["nsign"][k])
            group.append(gi)
            ids.append(oid)
    return rows, np.array(sign), np.array(rot), np.array(nsign), np.array(group)


def run(n_gal, n_epoch, processes, chunk=10, noiseless=False):
    starts = list(range(0, n_gal, chunk))
    tasks = [(s, min(chunk, n_gal - s), n_epoch, noiseless) for s in starts]
    if processes > 1:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=processes, backend="loky")(
            delayed(run_chunk)(*t) for t in tasks)
    else:
        parts = [run_chunk(*t) for t in tasks]
    rows = [r for p in parts for r in p[0]]
    stamps = {"sign": np.concatenate([p[1] for p in parts]),
              "rot": np.concatenate([p[2] for p in parts]),
              "nsign": np.concatenate([p[3] for p in parts]),
              "group": np.concatenate([p[4] for p in parts])}
    return shear_bias(rows_to_tables(rows), stamps, SHEAR)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sample (~1 minute)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument("--n-gal", type=int, default=None,
                        help="galaxies per configuration (8 stamps each)")
    parser.add_argument("--epochs", default="1,3", help="comma-separated epoch counts")
    args = parser.parse_args(argv)
    epochs = [int(x) for x in args.epochs.split(",")]
    print(f"metacal shear bias, shear {SHEAR}, S/N 10-100, exp galaxies, Moffat PSFs; "
          f"{args.processes} process(es) on a machine shared with other engineers")
    for n_epoch in epochs:
        n_gal = args.n_gal or ((60 if args.quick else 2000) // n_epoch)
        t0 = time.perf_counter()
        b = run(n_gal, n_epoch, args.processes)
        dt = time.perf_counter() - t0
        print(f"  {n_epoch} epoch(s), {n_gal} galaxies x 8 stamps ({b['n_used']} galaxies "
              f"without flags), {dt:.0f} s:")
        n_ref = min(n_gal, 100)
        ref = run(n_ref, n_epoch, args.processes, noiseless=True)
        print(f"    reference, same first {n_ref} galaxies without noise: "
              f"m1 = {ref['m1']:+.5f} +- {ref['m1_err']:.5f}, "
              f"m2 = {ref['m2']:+.5f} +- {ref['m2_err']:.5f}, "
              f"c1 = {ref['c1']:+.1e}, c2 = {ref['c2']:+.1e}")
        for comp in ("1", "2"):
            m, me = b["m" + comp], b["m" + comp + "_err"]
            c, ce = b["c" + comp], b["c" + comp + "_err"]
            print(f"    m{comp} = {m:+.5f} +- {me:.5f}   (|m|+3sigma)/2e-3 = "
                  f"{(abs(m) + 3 * me) / 2e-3:6.2f}   |   c{comp} = {c:+.6f} +- {ce:.6f}   "
                  f"(|c|+3sigma)/2e-4 = {(abs(c) + 3 * ce) / 2e-4:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
