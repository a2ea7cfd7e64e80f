"""Framework overhead per job: 10,000 no-op jobs (read a small file, write one) with 2 workers.

Reference measured in the same run: the same reads and writes in a plain Python loop, no
framework. Prints medians over repeats of

- wall time of the pipeline run (``shapepipe.run.main`` in-process, module start-up included),
- wall time per job,
- framework overhead per job = (wall - plain_loop / workers) / jobs, i.e. the wall time the
  framework adds per job on top of the work itself spread over the workers.

Usage: python bench/bench_overhead.py [--jobs N] [--workers W] [--repeats R]
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from shapepipe.run import main  # noqa: E402

CONFIG = """
[DEFAULT]
RUN_NAME = bench
VERBOSE = False
[EXECUTION]
MODULE = bench_noop_runner
MODULE_PATH = {runners}
[FILE]
INPUT_DIR = {data}
OUTPUT_DIR = {out}
[JOB]
SMP_BATCH_SIZE = {workers}
"""


def plain_loop(data, out, names):
    """The jobs' own work, without any framework."""
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    for name in names:
        with open(os.path.join(data, name), "rb") as handle:
            payload = handle.read()
        with open(os.path.join(out, "out" + name[2:]), "wb") as handle:
            handle.write(payload)
    return time.perf_counter() - start


def main_bench():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="sp_bench_overhead_")
    try:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        names = []
        for i in range(args.jobs):
            name = f"in_{i}.txt"
            with open(os.path.join(data, name), "w") as handle:
                handle.write(f"payload {i}\n" * 4)
            names.append(name)
        walls, plains = [], []
        for repeat in range(args.repeats):
            out = os.path.join(tmp, f"out{repeat}")
            config = os.path.join(tmp, f"config{repeat}.ini")
            with open(config, "w") as handle:
                handle.write(CONFIG.format(runners=os.path.join(HERE, "runners"), data=data,
                                           out=out, workers=args.workers))
            start = time.perf_counter()
            code = main(["-c", config, "-q"])
            walls.append(time.perf_counter() - start)
            if code != 0:
                raise SystemExit(f"pipeline run failed with exit code {code}")
            plains.append(plain_loop(data, os.path.join(tmp, f"plain{repeat}"), names))
            shutil.rmtree(out)
        wall, plain = statistics.median(walls), statistics.median(plains)
        per_job = wall / args.jobs
        overhead = (wall - plain / args.workers) / args.jobs
        print(f"jobs={args.jobs} workers={args.workers} repeats={args.repeats} (medians)")
        each = ", ".join(f"{w:.2f}" for w in walls)
        print(f"pipeline wall time          {wall:8.3f} s   ({each})")
        print(f"plain loop (reference)      {plain:8.3f} s")
        print(f"wall per job                {per_job * 1e3:8.3f} ms")
        print(f"framework overhead per job  {overhead * 1e3:8.3f} ms   (target < 0.3 ms)")
        print(f"ratio pipeline / plain loop {wall / plain:8.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
