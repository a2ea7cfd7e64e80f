"""One job: per-job log, staged outputs, timeout, exception capture, completion record.

A job writes into a private staging directory (``run_dirs["output"]``); only when the
runner returns without error are its files moved into the module's output directory and
the job recorded as complete in ``<module>/logs/jobs.txt``. That record, not the presence
of output files, is what ``--resume`` trusts.
"""

import importlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

from shapepipe.pipeline import execute as execute_module
from shapepipe.pipeline import split
from shapepipe.pipeline.errors import JobTimeout
from shapepipe.pipeline.module_registry import ModuleRegistry

#: Seconds a job may run past its TIMEOUT (stuck in compiled code that ignores the
#: alarm) before its worker process is killed.
HARD_KILL_GRACE = 10.0

RECORD_FILE = "jobs.txt"
_LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


@dataclass
class ModuleContext:
    """Everything a worker needs to run the jobs of one module occurrence (picklable)."""

    runner_name: str
    module_paths: list
    module_dir: str
    run_dir: str
    run_log: str
    section: str
    config: object
    timeout: float = None
    parent_pid: int = field(default_factory=os.getpid)
    verbose: bool = True
    # The parent's import path: worker processes of a reused pool may predate a plugin.
    sys_path: list = field(default_factory=lambda: list(sys.path))
    hard_kill_grace: float = field(default_factory=lambda: float(
        os.environ.get("SHAPEPIPE_HARD_KILL_GRACE", HARD_KILL_GRACE)))
    split: int = 1  # N_SPLIT: job numbers are part keys when > 1 (shapepipe.pipeline.split)

    @property
    def output_dir(self):
        """Final output directory of the module."""
        return os.path.join(self.module_dir, "output")

    @property
    def log_dir(self):
        """Per-job log directory."""
        return os.path.join(self.module_dir, "logs")

    @property
    def record_path(self):
        """The job record file (start/done/fail lines)."""
        return os.path.join(self.log_dir, RECORD_FILE)


_RUNNERS = {}


def _runner(ctx):
    key = (ctx.runner_name, tuple(ctx.module_paths))
    if key not in _RUNNERS:
        missing = [p for p in ctx.sys_path if p not in sys.path]
        if missing:
            sys.path.extend(missing)
            importlib.invalidate_caches()
        _RUNNERS[key] = ModuleRegistry(ctx.module_paths).load(ctx.runner_name)
    return _RUNNERS[key]


def append_record(path, *fields):
    """Append one tab-separated line; a single O_APPEND write is atomic between processes."""
    line = "\t".join(str(f).replace("\t", " ").replace("\n", " ") for f in fields) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_records(path):
    """Job records of a module: ``{number: ("start"|"done"|"fail", reason)}`` (last wins)."""
    state = {}
    if not os.path.isfile(path):
        return state
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2:
                state[parts[1]] = (parts[0], parts[2] if len(parts) > 2 else "")
    return state


def _move_tree(src, dst):
    """Move every file of ``src`` into ``dst`` (merging sub-directories)."""
    for entry in os.scandir(src):
        target = os.path.join(dst, entry.name)
        if entry.is_dir(follow_symlinks=False):
            os.makedirs(target, exist_ok=True)
            _move_tree(entry.path, target)
            os.rmdir(entry.path)
        else:
            os.replace(entry.path, target)


def _on_alarm(signum, frame):
    raise JobTimeout("job exceeded TIMEOUT")


class _Watchdog:
    """Kills a job stuck past its TIMEOUT where the alarm cannot reach it."""

    def __init__(self, ctx, number, log):
        self.ctx, self.number, self.log = ctx, number, log
        self.timer = threading.Timer(ctx.timeout + ctx.hard_kill_grace, self.fire)
        self.timer.daemon = True

    def fire(self):
        reason = f"timeout after {self.ctx.timeout:g} s (hard kill: the job ignored the alarm)"
        self.log.error(reason)
        execute_module.kill_running_children()
        if os.getpid() != self.ctx.parent_pid:
            append_record(self.ctx.record_path, "fail", self.number, reason)
            for handler in self.log.handlers:
                handler.flush()
            os._exit(70)


def job_logger(path, name, verbose=True):
    """A logger writing to one job's log file (not registered globally: no leak)."""
    logger = logging.Logger(name, level=logging.DEBUG if verbose else logging.INFO)
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    logger.addHandler(handler)
    return logger


def run_job(ctx, number, files):
    """Run one job and record its outcome.

    Parameters
    ----------
    ctx : ModuleContext
        The module occurrence.
    number : str
        Job number string (``_serial`` for serial runners).
    files : list
        Input files (one per pattern; for serial runners, a list of such lists).

    Returns
    -------
    tuple
        ``(number, ok, error_message, seconds)``.
    """
    start = time.perf_counter()
    staging = os.path.join(ctx.output_dir, f".job{number}")
    if os.path.exists(staging):  # left by a killed attempt
        shutil.rmtree(staging, ignore_errors=True)
    os.mkdir(staging)
    log = job_logger(os.path.join(ctx.log_dir, f"process{number}.log"),
                     f"{ctx.runner_name}{number}", ctx.verbose)
    append_record(ctx.record_path, "start", number)
    run_dirs = {
        "run": ctx.run_dir,
        "log": ctx.log_dir,
        "tmp": os.path.join(ctx.run_dir, "tmp"),
        "output": staging,
        "module_output": ctx.output_dir,
        "run_log": ctx.run_log,
    }
    file_number, run_dirs["split"], target = split.job_target(ctx, number)
    watchdog = None
    ok, error = False, ""
    try:
        runner = _runner(ctx)
        log.info("%s %s, job %s", ctx.runner_name, runner.version, number)
        if ctx.timeout:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGALRM, _on_alarm)
                signal.setitimer(signal.ITIMER_REAL, ctx.timeout)
            watchdog = _Watchdog(ctx, number, log)
            watchdog.timer.start()
        try:
            result = runner(files, run_dirs, file_number, ctx.config, ctx.section, log)
        finally:
            if ctx.timeout and threading.current_thread() is threading.main_thread():
                signal.setitimer(signal.ITIMER_REAL, 0)
            if watchdog:
                watchdog.timer.cancel()
        pair = isinstance(result, tuple) and len(result) == 2
        stdout, stderr = result if pair else (result, None)
        if stdout:
            log.info("stdout:\n%s", stdout)
        if stderr:
            log.warning("stderr:\n%s", stderr)
        _move_tree(staging, target)
        ok = True
    except JobTimeout:
        error = f"timeout after {ctx.timeout:g} s"
        log.error("%s", error)
    except BaseException as exc:  # noqa: BLE001 - a job must never take the others down
        if isinstance(exc, KeyboardInterrupt) and os.getpid() == ctx.parent_pid:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        log.error("job failed: %s\n%s", error, traceback.format_exc())
    finally:
        try:
            os.rmdir(staging)  # empty after a successful move: the cheap common case
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
        elapsed = time.perf_counter() - start
        log.info("%s in %.3f s", "done" if ok else "FAILED", elapsed)
        for handler in log.handlers:
            handler.close()
    append_record(ctx.record_path, "done" if ok else "fail", number, error)
    return number, ok, error, elapsed


def run_jobs_batch(ctx, jobs):
    """Run several jobs in one task (amortises inter-process overhead for tiny jobs)."""
    return [run_job(ctx, number, files) for number, files in jobs]

