"""Benchmark: sextractor (sep) against the real SExtractor on a full-size simulated CCD.

Makes a 2048 x 4612 CCD with ~3000 objects (stars + galaxies, weight and flag maps), then
runs, alternately and ``--repeat`` times each:

- ``source-extractor`` (Debian SExtractor 2.25) as a subprocess;
- our extraction as a subprocess (``python -m shapepipe.modules.sextractor``: Python start-up
  and imports included, like the binary's start-up);
- our extraction in-process (``run_sextractor``: what a pipeline job costs once the worker
  has imported the package).

Both use the same image, weight, flag, ``.sex``, ``.param`` (example/sextractor/default_exp.*,
with VIGNET(51,51)) and ``.conv``. Prints median wall times, the ratios ours/SExtractor and
the match statistics of the two catalogues.

    python bench/bench_sextractor.py            # 3 repeats
    python bench/bench_sextractor.py --quick    # 1 repeat
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from shapepipe.modules.sextractor import run_sextractor  # noqa: E402
from shapepipe.sim.small_ccd import make_ccd  # noqa: E402

EX = os.path.join(ROOT, "example", "sextractor")


def match_stats(ref_path, our_path):
    """Match fraction both ways (S/N > 10, 1 px) and median ratios on unflagged pairs."""
    ref = fits.getdata(ref_path, "LDAC_OBJECTS")
    our = fits.getdata(our_path, "LDAC_OBJECTS")
    rpos = np.c_[ref["X_IMAGE"], ref["Y_IMAGE"]]
    opos = np.c_[our["X_IMAGE"], our["Y_IMAGE"]]
    snr_r = ref["FLUX_AUTO"] / ref["FLUXERR_AUTO"]
    snr_o = our["FLUX_AUTO"] / our["FLUXERR_AUTO"]
    d_ro, i_ro = cKDTree(opos).query(rpos)
    d_or, _ = cKDTree(rpos).query(opos)
    ref_matched = float(np.mean(d_ro[snr_r > 10] < 1.0))
    our_matched = float(np.mean(d_or[snr_o > 10] < 1.0))
    ok = (d_ro < 1.0) & (snr_r > 10)
    pairs_r = ref[ok]
    pairs_o = our[i_ro[ok]]
    clean = (pairs_r["FLAGS"] == 0) & (pairs_o["FLAGS"] == 0)
    flux = float(np.median(pairs_o["FLUX_AUTO"][clean] / pairs_r["FLUX_AUTO"][clean]))
    rad = float(np.median(pairs_o["FLUX_RADIUS"][clean] / pairs_r["FLUX_RADIUS"][clean]))
    return {"n_ref": len(ref), "n_our": len(our), "ref_matched": ref_matched,
            "our_matched": our_matched, "flux_auto_ratio": flux, "flux_radius_ratio": rad,
            "n_clean": int(clean.sum())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    if shutil.which("source-extractor") is None:
        print("source-extractor not found: cannot measure the reference")
        return 1
    work = tempfile.mkdtemp(prefix="bench_sextractor_")
    try:
        t0 = time.perf_counter()
        ccd = make_ccd(work, nx=2048, ny=4612, n_stars=700, n_galaxies=2600, seed=3,
                       name="ccd")
        print(f"simulated 2048x4612 CCD in {time.perf_counter() - t0:.1f} s")
        sex, param, conv = (os.path.join(EX, f) for f in
                            ("default_exp.sex", "default_exp.param", "default.conv"))
        ref_cat = os.path.join(work, "ref.cat")
        our_cat = os.path.join(work, "our.cat")
        ref_cmd = ["source-extractor", ccd["image"], "-c", sex, "-PARAMETERS_NAME", param,
                   "-FILTER_NAME", conv, "-CATALOG_NAME", ref_cat, "-WEIGHT_IMAGE",
                   ccd["weight"], "-FLAG_IMAGE", ccd["flag"], "-VERBOSE_TYPE", "QUIET"]
        our_cmd = [sys.executable, "-m", "shapepipe.modules.sextractor", ccd["image"], our_cat,
                   "-c", sex, "-p", param, "-f", conv, "-w", ccd["weight"], "--flag",
                   ccd["flag"]]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        times = {"sextractor": [], "ours_process": [], "ours_inprocess": []}
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run(ref_cmd, check=True, cwd=work)
            times["sextractor"].append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(our_cmd, check=True, cwd=work, env=env)
            times["ours_process"].append(time.perf_counter() - t)
            t = time.perf_counter()
            run_sextractor(ccd["image"], our_cat, sex, param_file=param, conv_file=conv,
                           weight_path=ccd["weight"], flag_path=ccd["flag"])
            times["ours_inprocess"].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"repeats: {repeat} (machine shared with other jobs: expect noise)")
        print(f"SExtractor (source-extractor 2.25)  : {med['sextractor']:.3f} s")
        print(f"ours, subprocess (incl. start-up)    : {med['ours_process']:.3f} s  "
              f"ratio {med['ours_process'] / med['sextractor']:.2f}x")
        print(f"ours, in-process (pipeline job)      : {med['ours_inprocess']:.3f} s  "
              f"ratio {med['ours_inprocess'] / med['sextractor']:.2f}x  (target <= 0.8x)")
        stats = match_stats(ref_cat, our_cat)
        print(f"objects: SExtractor {stats['n_ref']}, ours {stats['n_our']}")
        print(f"S/N>10 matched within 1 px: SExtractor->ours {stats['ref_matched']:.4f}, "
              f"ours->SExtractor {stats['our_matched']:.4f}")
        print(f"unflagged pairs {stats['n_clean']}: median FLUX_AUTO ratio "
              f"{stats['flux_auto_ratio']:.4f}, median FLUX_RADIUS ratio "
              f"{stats['flux_radius_ratio']:.4f}")
    finally:
        if args.keep:
            print("kept", work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
