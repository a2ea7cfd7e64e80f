#!/usr/bin/env python
"""Cost of the round size and S/N (T_r, s2n_r) per object against the whole metacal measurement.

Generated tile inputs (``shapepipe.modules.ngmix.tile_sim``: 3 epochs per object on three
fake CCD WCSs, 51 x 51 vignets, 31 x 31 PSF stamps, S/N 50) are measured with
``measure_object`` on one core (one process, one BLAS thread), alternating per repeat:

- after: ``measure_object`` as it is (five fits, then ``round_measures`` for each type);
- before: the same with ``round_measures`` replaced by a function returning NaN (the
  measurement as it was before the round columns).

The time spent inside the five ``round_measures`` calls is also accumulated directly (a
timing wrapper around the real function). Prints milliseconds per object (median of the
repeats), the ratio after / before, and the direct round cost per object with its fraction
of the measurement. The two runs must agree on every other column (checked).

    python bench/bench_round_cost.py [--n-obj 20] [--repeats 3] [--model gauss|exp] [--quick]
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

from shapepipe.modules.ngmix import Observation, Priors  # noqa: E402
from shapepipe.modules.ngmix import measure as measure_mod  # noqa: E402
from shapepipe.modules.ngmix.tile_sim import make_tile_inputs  # noqa: E402

SEED = 5


def _measure_all(obs_lists, round_fn, model="gauss"):
    """Seconds to measure every object with ``round_fn`` in place of round_measures."""
    real = measure_mod.round_measures
    measure_mod.round_measures = round_fn
    try:
        priors = Priors(cen_sigma=0.187)
        t0 = time.perf_counter()
        rows = [measure_mod.measure_object(obs, obj_id, seed=SEED, priors=priors,
                                           model=model)
                for obj_id, obs in obs_lists.items()]
        return time.perf_counter() - t0, rows
    finally:
        measure_mod.round_measures = real


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-obj", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="6 objects, 2 repeats")
    parser.add_argument("--model", default="gauss", help="galaxy model (the pipeline: gauss)")
    args = parser.parse_args(argv)
    n_obj, repeats = (6, 2) if args.quick else (args.n_obj, args.repeats)
    real = measure_mod.round_measures
    spent = [0.0]

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = real(*a, **k)
        spent[0] += time.perf_counter() - t0
        return out

    def skipped(*a, **k):
        return np.nan, np.nan

    with tempfile.TemporaryDirectory(prefix="bench_round_cost_") as tmp:
        data = make_tile_inputs(tmp, n_obj=n_obj, seed=3, snr=50.0, stamp_size=51,
                                psf_size=31, keep_stamps=True)
        obs_lists = {i: [Observation(im, w, jac, psf=psf) for im, w, psf, jac in st]
                     for i, st in data["stamps"].items()}
        n_epochs = sum(len(v) for v in obs_lists.values())
        _measure_all({1: obs_lists[1]}, real, args.model)  # warm-up (numba compilation), untimed
        t_before, t_after, t_round = [], [], []
        for _ in range(repeats):
            tb, rows_b = _measure_all(obs_lists, skipped, args.model)
            spent[0] = 0.0
            ta, rows_a = _measure_all(obs_lists, timed, args.model)
            t_before.append(tb)
            t_after.append(ta)
            t_round.append(spent[0])
        for rb, ra in zip(rows_b, rows_a):
            for t in rb:
                for name, value in rb[t].items():
                    if name in ("T_r", "s2n_r"):
                        assert np.isfinite(ra[t][name]) or ra[t]["flags"], (t, name)
                        continue
                    same = value == ra[t][name] or (value != value and ra[t][name] != ra[t][name])
                    assert same, (t, name)
    before = 1e3 * np.median(t_before) / n_obj
    after = 1e3 * np.median(t_after) / n_obj
    rnd = 1e3 * np.median(t_round) / n_obj
    print(f"model {args.model}: {n_obj} objects, {n_epochs / n_obj:.0f} epochs each (51x51), "
          f"{repeats} repeats, "
          "one core (machine shared: medians)")
    print(f"before (no round columns): {before:8.2f} ms per object")
    print(f"after  (T_r, s2n_r):       {after:8.2f} ms per object   ratio after/before "
          f"{after / before:.3f}")
    print(f"inside round_measures (5 types): {rnd:.3f} ms per object = "
          f"{100 * rnd / after:.2f}% of the measurement")
    return 0


if __name__ == "__main__":
    sys.exit(main())
