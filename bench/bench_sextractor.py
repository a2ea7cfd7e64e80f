"""Benchmark: sextractor_runner against the real SExtractor, timed the way a user runs them.

Makes ``--ccds`` (default 4) full-size simulated CCDs (2048 x 4612, ~3000 objects each, with
weight and flag maps), then, alternately and ``--repeat`` times each:

- ``source-extractor`` (Debian SExtractor 2.25), one subprocess per CCD, one after the
  other (what ShapePipe's original runner does);
- ``shapepipe_run.py -c config.ini`` in a fresh Python process, one worker
  (SMP_BATCH_SIZE = 1), running ``sextractor_runner`` on the same CCDs: Python start-up,
  imports, the pipeline's planning, logs and run directory included.

Both use the same images, ``.sex``, ``.param`` (example/sextractor/default_exp.*, with
VIGNET(51,51)) and ``.conv``. Prints median wall times, the ratio ours/SExtractor and the
match statistics of the catalogues of the first CCD. The machine may be shared: quote
medians and the ratio, both measured in the same run.

    python bench/bench_sextractor.py            # 3 repeats
    python bench/bench_sextractor.py --quick    # 1 repeat
"""

import argparse
import glob
import os
import re
import resource
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
    parser.add_argument("--ccds", type=int, default=4, help="number of CCDs per run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--deblend-random", default="SEXTRACTOR", choices=["SEXTRACTOR", "SEP"],
                        help="sextractor_runner's DEBLEND_RANDOM (default: the runner's)")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    if shutil.which("source-extractor") is None:
        print("source-extractor not found: cannot measure the reference")
        return 1
    work = tempfile.mkdtemp(prefix="bench_sextractor_")
    try:
        t0 = time.perf_counter()
        data = os.path.join(work, "data")
        os.makedirs(data)
        ccds = []
        for i in range(args.ccds):
            ccd = make_ccd(work, nx=2048, ny=4612, n_stars=700, n_galaxies=2600, seed=3 + i,
                           name=f"ccd{i}")
            number = f"-{2000000 + i:07d}-0"
            for role, prefix in (("image", "image"), ("weight", "weight"),
                                 ("flag", "pipeline_flag")):
                dest = os.path.join(data, f"{prefix}{number}.fits")
                os.replace(ccd[role], dest)
                ccd[role] = dest
            ccds.append(ccd)
        print(f"simulated {args.ccds} 2048x4612 CCDs in {time.perf_counter() - t0:.1f} s")
        sex, param, conv = (os.path.join(EX, f) for f in
                            ("default_exp.sex", "default_exp.param", "default.conv"))
        config = os.path.join(work, "config.ini")
        out_dir = os.path.join(work, "out")
        with open(config, "w") as handle:
            handle.write(f"""[DEFAULT]
RUN_NAME = bench_sex
[EXECUTION]
MODULE = sextractor_runner
MODE = SMP
[FILE]
INPUT_DIR = {data}
OUTPUT_DIR = {out_dir}
FILE_PATTERN = image, weight, pipeline_flag
FILE_EXT = .fits, .fits, .fits
NUMBERING_SCHEME = -0000000-0
[JOB]
SMP_BATCH_SIZE = 1
[SEXTRACTOR_RUNNER]
DOT_SEX_FILE = {sex}
DOT_PARAM_FILE = {param}
DOT_CONV_FILE = {conv}
DEBLEND_RANDOM = {args.deblend_random}
""")
        ref_cats = [os.path.join(work, f"ref{i}.cat") for i in range(args.ccds)]
        ref_cmds = [["source-extractor", ccd["image"], "-c", sex, "-PARAMETERS_NAME", param,
                     "-FILTER_NAME", conv, "-CATALOG_NAME", cat, "-WEIGHT_IMAGE",
                     ccd["weight"], "-FLAG_IMAGE", ccd["flag"], "-VERBOSE_TYPE", "QUIET"]
                    for ccd, cat in zip(ccds, ref_cats)]
        our_cmd = [sys.executable, os.path.join(ROOT, "shapepipe_run.py"), "-c", config, "-q"]
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # One untimed run of ours first: numba compiles the measurement loops once per
        # installation (cached on disk), as on a user's first run.
        subprocess.run(our_cmd, check=True, cwd=work, env=env)
        times = {"sextractor": [], "ours": []}
        cpu = {"sextractor": [], "ours": []}

        per_ccd = []  # SExtractor, each run

        def timed(key, cmds, **kwargs):
            # Wall time, and the CPU time (user + system) of the processes it ran: less
            # sensitive than the wall time to the other jobs of a shared machine.
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            for cmd in cmds:
                t1 = time.perf_counter()
                subprocess.run(cmd, check=True, cwd=work, **kwargs)
                if key == "sextractor":
                    per_ccd.append(time.perf_counter() - t1)
            times[key].append(time.perf_counter() - t)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[key].append(c1.ru_utime - c0.ru_utime + c1.ru_stime - c0.ru_stime)

        load0 = os.getloadavg()[0]
        for _ in range(repeat):
            timed("sextractor", ref_cmds)
            timed("ours", [our_cmd], env=env)
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"repeats: {repeat} (machine shared with other jobs: expect noise); "
              f"load average at start {load0:.1f}, at end {os.getloadavg()[0]:.1f}")
        print("all times:", {k: [round(x, 2) for x in v] for k, v in times.items()})
        print("CPU times (user+sys):", {k: [round(x, 2) for x in v] for k, v in cpu.items()})
        cpu_pairs = np.array(cpu["ours"]) / np.array(cpu["sextractor"])
        print(f"CPU ratio ours/SExtractor per pair: {', '.join(f'{r:.2f}' for r in cpu_pairs)}; "
              f"median {np.median(cpu_pairs):.2f}x")
        print(f"SExtractor (source-extractor 2.25), {args.ccds} runs : {med['sextractor']:.3f} s")
        # The load of a shared machine changes between runs: the ratio of each
        # back-to-back pair is the robust figure.
        pairs = np.array(times["ours"]) / np.array(times["sextractor"])
        print(f"shapepipe_run.py, 1 worker, fresh process : {med['ours']:.3f} s "
              f"(DEBLEND_RANDOM {args.deblend_random})")
        print(f"ratio ours/SExtractor per back-to-back pair: "
              f"{', '.join(f'{r:.2f}' for r in pairs)}; median {np.median(pairs):.2f}x "
              "(target <= 0.8x)")
        runs = sorted(d for d in os.listdir(out_dir) if d.startswith("bench_sex"))
        # Per CCD: each job's own time from its log (the timed runs; the first run is the
        # untimed one), against each source-extractor run. The difference with the totals
        # is what a run pays once: Python start-up, imports, numba's loading, the pipeline.
        jobs = []
        for run in runs[1:]:
            for log in glob.glob(os.path.join(out_dir, run, "sextractor_runner", "logs",
                                              "process-*.log")):
                with open(log) as handle:
                    jobs += [float(x) for x in re.findall(r"done in ([0-9.]+) s", handle.read())]
        if jobs:
            print(f"per CCD (median): source-extractor {np.median(per_ccd):.3f} s, "
                  f"sextractor_runner job {np.median(jobs):.3f} s "
                  f"(ratio {np.median(jobs) / np.median(per_ccd):.2f}; first job of each run "
                  "included)")
        our_cat = os.path.join(out_dir, runs[-1], "sextractor_runner", "output",
                               f"sexcat-{2000000:07d}-0.fits")
        stats = match_stats(ref_cats[0], our_cat)
        print(f"CCD 0 objects: SExtractor {stats['n_ref']}, ours {stats['n_our']}")
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
