"""MODE = MPI under mpiexec: distribution, failures, timeouts, serial runners, resume."""

import filecmp
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from shapepipe.run import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec")

try:
    import mpi4py  # noqa: F401

    HAVE_MPI4PY = True
except ImportError:
    HAVE_MPI4PY = False

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not (MPIEXEC and HAVE_MPI4PY),
                       reason="needs mpiexec (openmpi-bin) and mpi4py (pip install '.[mpi]')"),
]


def mpirun(n, config, *extra, timeout=120, wait=True):
    """Run shapepipe_run.py under mpiexec with ``n`` ranks."""
    cmd = [MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", str(n), sys.executable,
           os.path.join(REPO, "shapepipe_run.py"), "-c", config, "-q", *extra]
    env = dict(os.environ, OMPI_MCA_rmaps_base_oversubscribe="1")
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def mpi_config(sp, body="", modules=None, **kwargs):
    return sp.config("[EXECUTION]\nMODE = MPI\n" + body, modules=modules, **kwargs)


def job_records(run_dir, module="tp_copy_runner"):
    lines = open(os.path.join(run_dir, module, "logs", "jobs.txt")).read().splitlines()
    return [line.split("\t") for line in lines]


@pytest.mark.parametrize("ranks", [2, 3])
def test_every_job_runs_exactly_once_on_several_ranks(sp, ranks):
    numbers = [f"_{i}" for i in range(1, 13)]
    sp.make_inputs(numbers)
    cfg = mpi_config(sp, "[TP_COPY_RUNNER]\nSLEEP = 0.1\n",
                     modules="tp_copy_runner, tp_serial_runner")
    result = mpirun(ranks, cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    run_dir = sp.runs()[-1]
    starts = [r[1] for r in job_records(run_dir) if r[0] == "start"]
    assert sorted(starts) == sorted(numbers)  # each job exactly once
    log_dir = os.path.join(run_dir, "tp_copy_runner", "logs")
    ranks_used = {open(os.path.join(log_dir, f"rank{n}.txt")).read() for n in numbers}
    assert ranks_used == {str(r) for r in range(ranks)}  # dynamic queue: every rank worked
    serial_rank = open(os.path.join(run_dir, "tp_serial_runner", "logs", "rank_serial.txt")).read()
    assert serial_rank == "0"  # serial runners run once, on rank 0
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["mode"] == "MPI" and summary["modules"]["tp_copy_runner"]["succeeded"] == 12
    # One manifest entry, one run directory: other ranks write nothing of their own.
    assert len(sp.runs()) == 1
    assert len(open(sp.out / "shapepipe_runs.jsonl").read().splitlines()) == 1


def test_failures_and_timeouts_are_isolated(sp):
    sp.make_inputs([f"_{i}" for i in range(1, 7)])
    cfg = mpi_config(sp, "[TP_COPY_RUNNER]\nFAIL_ON = _2\n[TP_COPY_RUNNER_RUN_2]\n"
                     "CHILD_SLEEP = 30\nNUMBER_LIST = _1, _2, _3\nINPUT_DIR = " + str(sp.data)
                     + "\nTIMEOUT = 1\n", modules="tp_copy_runner, tp_copy_runner")
    start = time.time()
    result = mpirun(2, cfg)
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.time() - start < 60
    summary = sp.summary()["modules"]
    assert [f["number"] for f in summary["tp_copy_runner_run_1"]["failed"]] == ["_2"]
    assert summary["tp_copy_runner_run_1"]["succeeded"] == 5
    errors = [f["error"] for f in summary["tp_copy_runner_run_2"]["failed"]]
    assert errors == ["timeout after 1 s"] * 3
    assert sp.outputs("tp_copy_runner_run_1") == [f"copy_{i}.txt" for i in (1, 3, 4, 5, 6)]


def test_mpi_split_outputs_equal_smp_outputs(sp):
    """N_SPLIT parts spread over ranks, combined on rank 0, give what one SMP job per number
    gives: wrong parts, lost or doubled parts, or a combine before all parts fail this."""
    for i in range(1, 6):
        (sp.data / f"in_{i}.txt").write_text("".join(f"o{i}-{j}\n" for j in range(3 * i)))
    smp = sp.config("", run_name="smp", modules="tp_split_runner")
    assert main(["-c", smp, "-q"]) == 0
    mpi = mpi_config(sp, "[TP_SPLIT_RUNNER]\nN_SPLIT = 3\n", run_name="mpi", name="mpi.ini",
                     modules="tp_split_runner")
    result = mpirun(3, mpi)
    assert result.returncode == 0, result.stdout + result.stderr
    smp_out = os.path.join(sp.runs("smp")[-1], "tp_split_runner", "output")
    mpi_dir = os.path.join(sp.runs("mpi")[-1], "tp_split_runner")
    names = sorted(os.listdir(smp_out))
    assert names == sorted(os.listdir(os.path.join(mpi_dir, "output"))) and len(names) == 5
    match, mismatch, errors = filecmp.cmpfiles(smp_out, os.path.join(mpi_dir, "output"), names,
                                               shallow=False)
    assert not mismatch and not errors
    assert len(glob.glob(os.path.join(mpi_dir, "parts", "*", "*_of_3"))) == 15
    starts = [r[1] for r in job_records(sp.runs("mpi")[-1], "tp_split_runner")
              if r[0] == "start"]
    assert sorted(starts) == sorted([f"_{i}_part{p}of3" for i in range(1, 6) for p in (1, 2, 3)]
                                    + [f"_{i}_combine3" for i in range(1, 6)])
    summary = json.load(open(os.path.join(sp.runs("mpi")[-1], "summary.json")))
    assert summary["modules"]["tp_split_runner"]["combined"] == 5


def test_single_rank_runs_all_jobs(sp):
    sp.make_inputs(["_1", "_2", "_3"])
    result = mpirun(1, mpi_config(sp, ""))
    assert result.returncode == 0, result.stderr
    assert sp.outputs() == ["copy_1.txt", "copy_2.txt", "copy_3.txt"]


def test_killed_rank_ends_run_then_resume_completes(sp):
    numbers = [f"_{i}" for i in range(1, 13)]
    sp.make_inputs(numbers)
    cfg = mpi_config(sp, "[TP_COPY_RUNNER]\nSLEEP = 0.5\nCHILD_SLEEP = 0.01\n")
    proc = mpirun(3, cfg, wait=False)
    run_dir, victim = None, None
    deadline = time.time() + 60
    while time.time() < deadline and victim is None:
        runs = sp.runs()
        if runs:
            logs = os.path.join(runs[-1], "tp_copy_runner", "logs")
            for path in glob.glob(os.path.join(logs, "rank*.txt")):
                if open(path).read() == "2":
                    number = os.path.basename(path)[4:-4]
                    pid_file = os.path.join(logs, f"child{number}.pid")
                    # The file may exist before its pid is written: wait for the digits.
                    text = open(pid_file).read().strip() if os.path.isfile(pid_file) else ""
                    if text.isdigit():
                        run_dir, victim = runs[-1], int(text)
                        break
        time.sleep(0.02)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)  # the rank's own process dies
    try:
        proc.wait(timeout=60)  # the run ends within a bounded time
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    out = os.path.join(run_dir, "tp_copy_runner", "output")
    done_before = [f for f in os.listdir(out) if f.endswith(".txt")]
    assert len(done_before) < len(numbers)
    result = mpirun(2, cfg, "--resume")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(f for f in os.listdir(out) if f.endswith(".txt")) == sorted(
        f"copy{n}.txt" for n in numbers)
    assert sp.runs()[-1] == run_dir
