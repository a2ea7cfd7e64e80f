"""Job execution reliability (issue 21 items 1, 2, 6, 8; issue 17 item 4).

A plugin runner (tests/plugins/tp_hostile_runner.py) starts children that outlive it,
crashes its worker, prints, returns huge outputs; the framework must keep every job's
processes, faults and output to that job.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from shapepipe.modules.setools.expression import ExpressionError, parse_expression
from shapepipe.modules.sextractor import SexSettings
from shapepipe.modules.sextractor.config_files import SexConfigError
from shapepipe.modules.sextractor.measure import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = "tp_hostile_runner"


def hostile_config(sp, body, workers=2, job=""):
    """A config running the hostile runner; ``job`` adds [JOB] keys (TIMEOUT...)."""
    path = sp.config(f"[TP_HOSTILE_RUNNER]\n{body}", modules=MODULE, workers=workers)
    text = open(path).read()
    text = text.replace(f"SMP_BATCH_SIZE = {workers}\n", f"SMP_BATCH_SIZE = {workers}\n{job}", 1)
    open(path, "w").write(text)
    return path


def alive(pid):
    """Whether a process runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_dead(pids, seconds=3.0):
    """The pids still alive after ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def read_pids(log_dir, prefix):
    pids = []
    for name in sorted(os.listdir(log_dir)):
        if name.startswith(prefix) and name.endswith(".pid"):
            pids.append(int(open(os.path.join(log_dir, name)).read()))
    return pids


def manifest_entry(sp):
    lines = open(sp.out / "shapepipe_runs.jsonl").read().splitlines()
    return json.loads(lines[-1])


def module_dirs(run_dir):
    base = os.path.join(run_dir, MODULE)
    return os.path.join(base, "output"), os.path.join(base, "logs")


def starts(log_dir):
    lines = open(os.path.join(log_dir, "jobs.txt")).read().splitlines()
    return [line.split("\t")[1] for line in lines if line.startswith("start")]


# -- item 1: TIMEOUT kills every descendant, the run is bounded ------------------------------
@pytest.mark.parametrize("action", ["system", "popen", "shell_grandchild"])
def test_timeout_kills_every_descendant_and_bounds_the_run(sp, action):
    sp.make_inputs(["_1", "_2"])
    cfg = hostile_config(sp, f"ACTION = {action}\nON = _1\nSECONDS = 60\n", job="TIMEOUT = 1\n")
    start = time.time()
    assert sp.run(cfg) == 1
    elapsed = time.time() - start
    # TIMEOUT (1 s) + hard-kill grace (2 s at most; these jobs need none) + start-up.
    assert elapsed < 6, f"run took {elapsed:.1f} s with TIMEOUT = 1"
    run_dir = sp.runs()[-1]
    failed = sp.summary(run_dir)["modules"][MODULE]["failed"]
    assert [f["number"] for f in failed] == ["_1"]
    assert failed[0]["error"].startswith("timeout after 1 s")
    out, logs = module_dirs(run_dir)
    assert not wait_dead(read_pids(logs, "child")), f"a child of {action} survived the timeout"
    assert sorted(os.listdir(out)) == ["done_2.txt"]  # no partial file, no staging directory
    entry = manifest_entry(sp)
    assert entry["end"] and entry["status"][MODULE] == "partial"


def test_background_child_of_a_finished_job_dies_with_the_module(sp):
    sp.make_inputs(["_1", "_2"])
    cfg = hostile_config(sp, "ACTION = orphan\nON = _1\nSECONDS = 60\n")
    assert sp.run(cfg) == 0
    _, logs = module_dirs(sp.runs()[-1])
    pids = read_pids(logs, "child")
    assert len(pids) == 1 and not wait_dead(pids), "the job's background child outlived the run"


def test_stuck_job_is_hard_killed_and_the_others_finish(sp, monkeypatch):
    monkeypatch.setenv("SHAPEPIPE_HARD_KILL_GRACE", "1")
    sp.make_inputs(["_1", "_2", "_3", "_4"])
    cfg = sp.config("[TP_COPY_RUNNER]\nBLOCK_ALARM = True\nNUMBER_LIST = _1\n", workers=2)
    text = open(cfg).read().replace("SMP_BATCH_SIZE = 2\n", "SMP_BATCH_SIZE = 2\nTIMEOUT = 1\n")
    # BLOCK_ALARM for _1 only: the other jobs of the same module run normally.
    text = text.replace("NUMBER_LIST = _1\n", "")
    text = text.replace("BLOCK_ALARM = True\n", "BLOCK_ALARM = False\n")
    open(cfg, "w").write(text)
    stuck = sp.tmp / "stuck.ini"
    stuck.write_text(text.replace("[TP_COPY_RUNNER]\nBLOCK_ALARM = False",
                                  "[TP_COPY_RUNNER]\nBLOCK_ALARM = True\nNUMBER_LIST = _1, _2"))
    start = time.time()
    assert sp.run(str(stuck)) == 1
    assert time.time() - start < 8
    failed = sp.summary()["modules"]["tp_copy_runner"]["failed"]
    assert sorted(f["number"] for f in failed) == ["_1", "_2"]
    assert all("hard kill" in f["error"] for f in failed)


# -- item 2: a crash fails only its job, once ------------------------------------------------
@pytest.mark.parametrize("action, how", [("exit", "(exit code 1)"),
                                         ("segv", "(signal 11, SIGSEGV)")])
def test_worker_crash_fails_only_its_job_once(sp, capfd, action, how):
    numbers = [f"_{i}" for i in range(1, 7)]
    sp.make_inputs(numbers)
    cfg = hostile_config(sp, f"ACTION = {action}\nON = _3\n")
    assert sp.run(cfg) == 1
    run_dir = sp.runs()[-1]
    failed = sp.summary(run_dir)["modules"][MODULE]["failed"]
    assert failed == [{"number": "_3",
                       "error": f"worker process died {how} while running this job"}]
    out, logs = module_dirs(run_dir)
    assert sorted(os.listdir(out)) == [f"done{n}.txt" for n in numbers if n != "_3"]
    assert starts(logs).count("_3") == 1, "a crashed job was retried"
    console = capfd.readouterr()
    assert "Fatal Python error" not in console.out + console.err
    job_log = open(os.path.join(logs, "process_3.log")).read()
    assert f"worker process died {how}" in job_log
    if action == "segv":
        assert "Fatal Python error: Segmentation fault" in job_log  # the crash dump


def test_crash_inside_a_batch_of_small_jobs(sp):
    # 300 jobs on 2 workers go out in batches of 4, reported per batch: the jobs of the
    # crashed batch that had finished are settled from the records, the rest rerun.
    numbers = [f"_{i}" for i in range(1, 301)]
    sp.make_inputs(numbers)
    assert sp.run(hostile_config(sp, "ACTION = exit\nON = _150\n")) == 1
    run_dir = sp.runs()[-1]
    summary = sp.summary(run_dir)["modules"][MODULE]
    assert summary["failed"] == [{"number": "_150", "error": "worker process died "
                                  "(exit code 1) while running this job"}]
    assert summary["succeeded"] == 299
    out, logs = module_dirs(run_dir)
    assert len(os.listdir(out)) == 299
    assert sorted(starts(logs)) == sorted(numbers), "a job ran twice or never"


# -- item 6: SIGINT / SIGTERM, and workers never outlive the main process --------------------
def start_run(sp, cfg):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "shapepipe_run.py"), "-c", cfg,
                             "-q"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_children(sp, count, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        runs = sp.runs()
        if runs:
            logs = module_dirs(runs[-1])[1]
            if os.path.isdir(logs) and len(read_pids(logs, "child")) >= count:
                return runs[-1]
        time.sleep(0.05)
    raise AssertionError("the jobs did not start")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_interrupt_kills_jobs_records_run_and_exits(sp, signum, code):
    sp.make_inputs([f"_{i}" for i in range(1, 7)])
    cfg = hostile_config(sp, "ACTION = popen\nSECONDS = 60\n")
    proc = start_run(sp, cfg)
    try:
        run_dir = wait_children(sp, 2)
        logs = module_dirs(run_dir)[1]
        start = time.time()
        os.kill(proc.pid, signum)
        assert proc.wait(timeout=15) == code
        assert time.time() - start < 5
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    pids = read_pids(logs, "child") + read_pids(logs, "worker")
    assert not wait_dead(pids, 2), "a job or worker survived the interrupt"
    assert len(starts(logs)) == 2, "jobs were handed out after the interrupt"
    entry = manifest_entry(sp)
    assert entry["end"] and entry["status"][MODULE] == "interrupted"
    assert entry["interrupted"] == signal.Signals(signum).name
    assert sp.summary(run_dir)["interrupted"] == signal.Signals(signum).name
    assert not [n for n in os.listdir(module_dirs(run_dir)[0]) if n.startswith(".")]


def test_workers_and_their_children_die_with_a_killed_main_process(sp):
    sp.make_inputs(["_1", "_2"])
    proc = start_run(sp, hostile_config(sp, "ACTION = popen\nSECONDS = 60\n"))
    try:
        logs = module_dirs(wait_children(sp, 2))[1]
        os.kill(proc.pid, signal.SIGKILL)  # the main process only
        proc.wait(timeout=10)
        pids = read_pids(logs, "child") + read_pids(logs, "worker")
        assert len(pids) == 4
        assert not wait_dead(pids, 3), "workers or their children outlived the main process"
    finally:
        with_group = proc.poll() is None
        if with_group:
            os.killpg(proc.pid, signal.SIGKILL)


# -- item 8: output and messages -------------------------------------------------------------
@pytest.mark.parametrize("workers, job", [(2, ""), (1, "")])
def test_print_output_goes_to_the_job_log_not_the_console(sp, capfd, workers, job):
    sp.make_inputs(["_1", "_2"])
    assert sp.run(hostile_config(sp, "ACTION = print\nSIZE = 2000\n", workers, job)) == 0
    console = capfd.readouterr()
    assert "print line" not in console.out + console.err
    assert "echo of job" not in console.out + console.err
    logs = module_dirs(sp.runs()[-1])[1]
    text = open(os.path.join(logs, "process_2.log")).read()
    assert "print line 1999 of job _2" in text
    assert "raw fd2 write of job _2" in text and "child echo of job _2" in text


def test_print_in_process_threading_backend_goes_to_the_job_log(sp, capsys):
    sp.make_inputs(["_1"])
    cfg = hostile_config(sp, "ACTION = print\nSIZE = 50\n", 1, "SMP_BACKEND = threading\n")
    assert sp.run(cfg) == 0
    assert "print line" not in capsys.readouterr().out
    logs = module_dirs(sp.runs()[-1])[1]
    assert "print line 49 of job _1" in open(os.path.join(logs, "process_1.log")).read()


def test_huge_returned_stdout_is_capped_keeping_the_tail(sp):
    sp.make_inputs(["_1"])
    assert sp.run(hostile_config(sp, "ACTION = big_stdout\nSIZE = 5000000\n")) == 0
    log = os.path.join(module_dirs(sp.runs()[-1])[1], "process_1.log")
    assert os.path.getsize(log) < 300_000
    text = open(log).read()
    assert "THE TAIL" in text and "first 4800008 of 5000008 characters cut" in text
    from shapepipe.pipeline.worker import cap_output

    assert cap_output("short") == "short"


def test_failure_message_names_the_input_file(sp):
    sp.make_inputs(["_1", "_2"])
    assert sp.run(hostile_config(sp, "ACTION = reshape\nON = _1\n")) == 1
    failed = sp.summary()["modules"][MODULE]["failed"]
    assert failed[0]["error"].startswith("ValueError: cannot reshape array")
    assert failed[0]["error"].endswith(f"(input: {sp.data / 'in_1.txt'})")


def test_all_nan_image_is_not_blamed_on_the_weight(tmp_path):
    path = tmp_path / "w.sex"
    path.write_text("WEIGHT_TYPE MAP_WEIGHT\n")
    settings = SexSettings.from_file(str(path))
    weight = np.ones((64, 64), np.float32)
    with pytest.raises(SexConfigError, match="science image has no finite pixel"):
        Image(np.full((64, 64), np.nan, np.float32), settings, weight=weight)
    with pytest.raises(SexConfigError, match="weight image has no valid pixel"):
        Image(np.ones((64, 64), np.float32), settings, weight=np.zeros((64, 64), np.float32))
    none = tmp_path / "n.sex"
    none.write_text("WEIGHT_TYPE NONE\n")
    with pytest.raises(SexConfigError, match="science image has no finite pixel"):
        Image(np.full((64, 64), np.nan, np.float32), SexSettings.from_file(str(none)))


@pytest.mark.parametrize("text, message", [
    ("(" * 500 + "A" + ")" * 500, "nested more than 64 levels deep at column 65"),
    ("-" * 500 + "A", "nested more than 64 levels deep"),
    ("A" + " + A" * 5000, "expression too long to evaluate"),
])
def test_deep_setools_expression_is_a_clear_error(text, message):
    with pytest.raises(ExpressionError, match=message):
        parse_expression(text)


# -- issue 17 item 4: threads per worker / per MPI rank --------------------------------------
def test_smp_workers_share_the_cores(sp, monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    sp.make_inputs(["_1", "_2"])
    assert sp.run(hostile_config(sp, "ACTION = env\n")) == 0
    logs = module_dirs(sp.runs()[-1])[1]
    share = str(max(1, os.cpu_count() // 2))
    assert open(os.path.join(logs, "env_1.txt")).read() == share
    # numpy's BLAS, loaded before the workers were forked, follows the share too.
    assert open(os.path.join(logs, "blas_1.txt")).read() in (share, "none")


MPIEXEC = shutil.which("mpiexec")


@pytest.mark.mpi
@pytest.mark.skipif(not MPIEXEC, reason="needs mpiexec")
@pytest.mark.parametrize("user_value", [None, "3"])
def test_mpi_ranks_share_the_cores_of_their_node(sp, user_value):
    pytest.importorskip("mpi4py")
    sp.make_inputs(["_1", "_2", "_3", "_4"])
    cfg = hostile_config(sp, "ACTION = env\n")
    text = open(cfg).read().replace("[EXECUTION]\n", "[EXECUTION]\nMODE = MPI\n", 1)
    open(cfg, "w").write(text)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env["OMPI_MCA_rmaps_base_oversubscribe"] = "1"
    if user_value:
        env["OMP_NUM_THREADS"] = user_value
    out = subprocess.run([MPIEXEC, "--allow-run-as-root", "--oversubscribe", "-n", "2",
                          sys.executable, os.path.join(REPO, "shapepipe_run.py"), "-c", cfg, "-q"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    logs = module_dirs(sp.runs()[-1])[1]
    expected = user_value or str(max(1, os.cpu_count() // 2))
    for number in ("_1", "_2", "_3", "_4"):
        assert open(os.path.join(logs, f"env{number}.txt")).read() == expected
        if not user_value:
            assert open(os.path.join(logs, f"blas{number}.txt")).read() in (expected, "none")
