"""Scaling of CPU-bound jobs: 40 jobs of ~0.2 s of numpy work, SMP 1/2 workers, MPI 1/2 ranks.

The reference is the 1-worker (1-rank) run of the same mode in the same invocation; the
speed-up is its wall time divided by the 2-worker (2-rank) wall time. Target >= 1.8x on a
2-core machine. MPI runs need mpiexec (openmpi-bin) and mpi4py; they are skipped otherwise.

Usage: python bench/bench_scaling.py [--jobs 40] [--seconds 0.2] [--repeats 3]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "runners"))

from bench_cpu_runner import work  # noqa: E402

CONFIG = """
[DEFAULT]
RUN_NAME = scaling
VERBOSE = False
[EXECUTION]
MODULE = bench_cpu_runner
MODULE_PATH = {runners}
MODE = {mode}
[FILE]
INPUT_DIR = {data}
OUTPUT_DIR = {out}
[JOB]
SMP_BATCH_SIZE = {workers}
[BENCH_CPU_RUNNER]
ITERATIONS = {iterations}
"""


def calibrate(seconds):
    """Work units giving about ``seconds`` of work."""
    start = time.perf_counter()
    work(20)
    per_unit = (time.perf_counter() - start) / 20
    return max(1, round(seconds / per_unit))


def timed_run(tmp, data, mode, workers, ranks, iterations, tag):
    out = os.path.join(tmp, f"out_{tag}")
    config = os.path.join(tmp, f"{tag}.ini")
    with open(config, "w") as handle:
        handle.write(CONFIG.format(runners=os.path.join(HERE, "runners"), data=data, out=out,
                                   mode=mode, workers=workers, iterations=iterations))
    cmd = [sys.executable, os.path.join(REPO, "shapepipe_run.py"), "-c", config, "-q"]
    if mode == "MPI":
        cmd = [shutil.which("mpiexec"), "--allow-run-as-root", "--oversubscribe", "-n",
               str(ranks)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    shutil.rmtree(out)
    return wall


def main_bench():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    iterations = calibrate(args.seconds)
    have_mpi = shutil.which("mpiexec") is not None
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        have_mpi = False
    tmp = tempfile.mkdtemp(prefix="sp_bench_scaling_")
    try:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        for i in range(args.jobs):
            with open(os.path.join(data, f"in_{i}.txt"), "w") as handle:
                handle.write("x\n")
        cases = [("SMP", 1, 1), ("SMP", 2, 1)]
        if have_mpi:
            cases += [("MPI", 1, 1), ("MPI", 1, 2)]
        walls = {case: [] for case in cases}
        for repeat in range(args.repeats):
            for case in cases:  # interleaved so that machine noise hits every case alike
                mode, workers, ranks = case
                walls[case].append(timed_run(tmp, data, mode, workers, ranks, iterations,
                                             f"{mode}{workers}{ranks}_{repeat}"))
        median = {case: statistics.median(v) for case, v in walls.items()}
        print(f"{args.jobs} jobs x ~{args.seconds} s of numpy work ({iterations} units), "
              f"medians of {args.repeats} (whole command, interpreter start-up included)")
        ideal = args.jobs * args.seconds
        for case in cases:
            mode, workers, ranks = case
            label = f"{mode} {workers} worker(s)" if mode == "SMP" else f"MPI {ranks} rank(s)"
            best = ideal / max(workers, ranks)
            print(f"  {label:22s} {median[case]:7.2f} s   (ideal {best:.2f} s)")
        print(f"SMP speed-up 2 vs 1 workers: {median[cases[0]] / median[cases[1]]:.2f}x "
              "(target >= 1.8x)")
        if have_mpi:
            print(f"MPI speed-up 2 vs 1 ranks:   {median[cases[2]] / median[cases[3]]:.2f}x "
                  "(target >= 1.8x)")
        else:
            print("MPI: skipped (mpiexec or mpi4py missing)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
