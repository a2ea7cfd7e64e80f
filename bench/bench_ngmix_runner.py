#!/usr/bin/env python
"""Cost of ngmix_runner per object-epoch against the stamp-level metacal (issue 15).

Generated tile inputs (``shapepipe.modules.ngmix.tile_sim``: 3 epochs per object on three
fake CCD WCSs, 51 x 51 vignets, 31 x 31 PSF stamps, S/N 50) are measured twice per repeat,
alternating, on one core (one process, one BLAS thread):

- runner path: ``shapepipe.modules.ngmix.tile.process_tile``, i.e. what ngmix_runner does
  (open the five sqlite stores, decode each object's vignets, read the CCD WCSs from
  log_exp_headers.sqlite, recompute the stamp position and the local Jacobian, build the
  observations, measure, write ngmix-<tile>.fits);
- reference: ``measure_object`` on the same stamps already in memory as Observations.

Both are warmed up first (one object, untimed); the per-tile fixed cost (open the stores,
write an empty catalogue) is printed separately.

Prints milliseconds per object-epoch (median of the repeats) and the ratio runner /
reference; target <= 1.3. The two paths must give identical catalogues (checked).

    python bench/bench_ngmix_runner.py [--n-obj 10] [--repeats 3] [--quick]
"""

import argparse
import os
import sys
import tempfile
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from shapepipe.modules.merge_headers import read_exp_wcs  # noqa: E402
from shapepipe.modules.ngmix import Observation, Priors, measure_object  # noqa: E402
from shapepipe.modules.ngmix.measure import read_catalog, rows_to_tables  # noqa: E402
from shapepipe.modules.ngmix.tile import process_tile  # noqa: E402
from shapepipe.modules.ngmix.tile_sim import make_tile_inputs  # noqa: E402

SEED = 5


def run_runner_path(data, out_path, id_min=-1, id_max=-1):
    files = data["files"]
    t0 = time.perf_counter()
    process_tile(files["catalogue"], files, lambda names: read_exp_wcs(files["log_wcs"], names),
                 out_path, seed=SEED, id_min=id_min, id_max=id_max)
    return time.perf_counter() - t0


def run_reference(obs_lists):
    priors = Priors(cen_sigma=0.187)
    t0 = time.perf_counter()
    rows = [measure_object(obs, obj_id, seed=SEED, priors=priors)
            for obj_id, obs in obs_lists.items()]
    return time.perf_counter() - t0, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-obj", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="8 objects, 2 repeats")
    args = parser.parse_args(argv)
    n_obj, repeats = (8, 2) if args.quick else (args.n_obj, args.repeats)
    with tempfile.TemporaryDirectory(prefix="bench_ngmix_runner_") as tmp:
        data = make_tile_inputs(tmp, n_obj=n_obj, seed=3, snr=50.0, stamp_size=51,
                                psf_size=31, keep_stamps=True)
        n_epochs = sum(len(v) for v in data["stamps"].values())
        obs_lists = {i: [Observation(im, w, jac, psf=psf) for im, w, psf, jac in st]
                     for i, st in data["stamps"].items()}
        out = os.path.join(tmp, "ngmix-270-283.fits")
        # Warm-up (first use of astropy.wcs, sqlite, FITS writing): one object, untimed.
        run_runner_path(data, out, id_max=1)
        run_reference({1: obs_lists[1]})
        # Per-tile fixed cost: open the stores and write an empty catalogue.
        t_fixed = np.median([run_runner_path(data, out, id_min=10 ** 9) for _ in range(3)])
        t_run, t_ref = [], []
        for _ in range(repeats):
            t_run.append(run_runner_path(data, out))
            dt, rows = run_reference(obs_lists)
            t_ref.append(dt)
        cat = read_catalog(out)
        ref = rows_to_tables(rows)
        for t in cat:
            for name in ("g1", "g2", "T", "flux", "s2n"):
                np.testing.assert_array_equal(cat[t][name], ref[t][name], err_msg=f"{t} {name}")
    run_ms = 1e3 * np.median(t_run) / n_epochs
    ref_ms = 1e3 * np.median(t_ref) / n_epochs
    print(f"{n_obj} objects x 3 epochs (S/N 50), 51x51 vignets, {repeats} repeats (median), 1 core")
    print(f"ngmix_runner path     : {run_ms:8.1f} ms per object-epoch")
    print(f"stamp-level metacal   : {ref_ms:8.1f} ms per object-epoch (reference, same run)")
    print(f"ratio runner/reference: {run_ms / ref_ms:8.3f}  (target <= 1.3); catalogues identical")
    marginal = (np.median(t_run) - t_fixed) / n_epochs * 1e3
    print(f"of which per tile     : {t_fixed:8.2f} s (open the stores, write the catalogue); "
          f"without it {marginal:.1f} ms per object-epoch, ratio {marginal / ref_ms:.3f}")
    print("all runs: runner " + ", ".join(f"{1e3 * t / n_epochs:.1f}" for t in t_run)
          + " ms; reference " + ", ".join(f"{1e3 * t / n_epochs:.1f}" for t in t_ref) + " ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
