"""Framework cost per job: 10,000 no-op jobs (read a small file, write one) with 2 workers.

What a user sees: a fresh ``shapepipe_run.py -c config`` subprocess, default verbosity,
TIMEOUT set, stdout and stderr to a file. Beside it, measured in the same run:

- the in-process figure (``shapepipe.run.main`` called here, ``-q``, no TIMEOUT);
- a bare joblib loop doing the same file work with the same number of workers (a fresh
  subprocess too, so that interpreter and joblib start-up are counted as for the pipeline);
- a plain Python loop doing the same file work in one process.

Also printed: the ratio against ShapePipe 1.0.2's recorded 4.9-6.1 s for the same user
run on this machine class (ShapePipe is not installable here). Figures are medians over
``--repeats`` runs; on a machine shared with other work, compare ratios, not seconds.

``--tmpdir /dev/shm`` takes the disk out of the figure (file creation on a busy journalled
disk costs 0.1-3 ms, more than the framework's own work per job).

Usage: python bench/bench_overhead.py [--jobs N] [--workers W] [--repeats R] [--tmpdir DIR]
"""

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from shapepipe.run import main  # noqa: E402

#: ShapePipe 1.0.2, same run (10,000 jobs, 2 workers, TIMEOUT, stdout to a file), issue 17.
SHAPEPIPE_RECORDED = (4.9, 6.1)

CONFIG = """
[DEFAULT]
RUN_NAME = bench
{verbose}
[EXECUTION]
MODULE = bench_noop_runner
MODULE_PATH = {runners}
[FILE]
INPUT_DIR = {data}
OUTPUT_DIR = {out}
[JOB]
SMP_BATCH_SIZE = {workers}
{timeout}
"""

JOBLIB_LOOP = """
import os, sys
from joblib import Parallel, delayed
data, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(out)
def job(name):
    with open(os.path.join(data, name), "rb") as handle:
        payload = handle.read()
    with open(os.path.join(out, "out" + name[2:]), "wb") as handle:
        handle.write(payload)
names = sorted(os.listdir(data))
Parallel(n_jobs=workers, batch_size="auto")(delayed(job)(n) for n in names)
"""


def plain_loop(data, out, names):
    """The jobs' own work, without any framework, in this process."""
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    for name in names:
        with open(os.path.join(data, name), "rb") as handle:
            payload = handle.read()
        with open(os.path.join(out, "out" + name[2:]), "wb") as handle:
            handle.write(payload)
    return time.perf_counter() - start


def _children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_subprocess(cmd, log_path):
    """Wall time and CPU time (user + system, the process and its reaped descendants) of a
    command run with stdout and stderr to a file."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cpu = _children_cpu()
    start = time.perf_counter()
    with open(log_path, "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {code} (see {log_path})")
    return wall, _children_cpu() - cpu


def write_config(path, data, out, workers, timeout, verbose):
    with open(path, "w") as handle:
        handle.write(CONFIG.format(runners=os.path.join(HERE, "runners"), data=data, out=out,
                                   workers=workers,
                                   timeout="TIMEOUT = 00:10:00" if timeout else "",
                                   verbose="" if verbose else "VERBOSE = False"))


def main_bench():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tmpdir", default=None, help="where the files go (default: $TMPDIR)")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="sp_bench_overhead_", dir=args.tmpdir)
    try:
        data = os.path.join(tmp, "data")
        os.makedirs(data)
        names = []
        for i in range(args.jobs):
            name = f"in_{i}.txt"
            with open(os.path.join(data, name), "w") as handle:
                handle.write(f"payload {i}\n" * 4)
            names.append(name)
        user, inproc, joblib_loop, plains = [], [], [], []
        user_cpu, joblib_cpu = [], []
        for repeat in range(args.repeats):
            # What a user sees: subprocess, default verbosity, TIMEOUT, output to a file.
            out = os.path.join(tmp, f"user{repeat}")
            config = os.path.join(tmp, f"user{repeat}.ini")
            write_config(config, data, out, args.workers, timeout=True, verbose=True)
            wall, cpu = timed_subprocess(
                [sys.executable, os.path.join(REPO, "shapepipe_run.py"), "-c", config],
                os.path.join(tmp, f"user{repeat}.log"))
            user.append(wall)
            user_cpu.append(cpu)
            shutil.rmtree(out)
            # In-process, quiet, no TIMEOUT.
            out = os.path.join(tmp, f"inproc{repeat}")
            config = os.path.join(tmp, f"inproc{repeat}.ini")
            write_config(config, data, out, args.workers, timeout=False, verbose=False)
            start = time.perf_counter()
            code = main(["-c", config, "-q"])
            inproc.append(time.perf_counter() - start)
            if code != 0:
                raise SystemExit(f"in-process pipeline run failed with exit code {code}")
            shutil.rmtree(out)
            # References, same file work.
            out = os.path.join(tmp, f"joblib{repeat}")
            wall, cpu = timed_subprocess(
                [sys.executable, "-c", JOBLIB_LOOP, data, out, str(args.workers)],
                os.path.join(tmp, f"joblib{repeat}.log"))
            joblib_loop.append(wall)
            joblib_cpu.append(cpu)
            shutil.rmtree(out)
            out = os.path.join(tmp, f"plain{repeat}")
            plains.append(plain_loop(data, out, names))
            shutil.rmtree(out)
        med = statistics.median
        wall, wall_in, ref, plain = med(user), med(inproc), med(joblib_loop), med(plains)
        low, high = SHAPEPIPE_RECORDED

        def each(values):
            return ", ".join(f"{v:.2f}" for v in values)

        print(f"jobs={args.jobs} workers={args.workers} repeats={args.repeats} (medians; "
              f"machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; files in "
              f"{os.path.dirname(tmp)})")
        print(f"user run (subprocess, TIMEOUT, stdout to file) {wall:8.3f} s   ({each(user)})")
        print(f"in-process run (-q, no TIMEOUT)               {wall_in:8.3f} s   "
              f"({each(inproc)})")
        print(f"reference: bare joblib loop, same file work   {ref:8.3f} s   ({each(joblib_loop)})")
        print(f"reference: plain loop, one process            {plain:8.3f} s   ({each(plains)})")
        print(f"user run per job                              {wall / args.jobs * 1e3:8.3f} ms")
        print(f"CPU time (user+sys, all processes): user run  {med(user_cpu):8.3f} s   "
              f"({each(user_cpu)})")
        print(f"CPU time (user+sys, all processes): joblib    {med(joblib_cpu):8.3f} s   "
              f"({each(joblib_cpu)})")
        print(f"ratio user run / joblib loop: wall            {wall / ref:8.2f}")
        print(f"ratio user run / joblib loop: CPU time        "
              f"{med(user_cpu) / med(joblib_cpu):8.2f}")
        print(f"ratio user run / ShapePipe 1.0.2 recorded     {wall / high:.2f}-{wall / low:.2f}"
              f"   (target <= 0.5; recorded {low}-{high} s, not measured here)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main_bench()
