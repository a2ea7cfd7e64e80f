"""One job: per-job log, staged outputs, timeout, exception capture, completion record.

A job writes into a private staging directory (``run_dirs["output"]``); only when the
runner returns without error are its files moved into the module's output directory and
the job recorded as complete in ``<module>/logs/jobs.txt``. That record, not the presence
of output files, is what ``--resume`` trusts.

The staging directory belongs to the process (or thread) running the job,
``<module>/output/.stage<pid>[_<thread>]``, and is empty between jobs: it is created once,
not per job (removing a directory costs ~3 ms on a journalled file system, more than
everything else the framework does per job). It is removed when the module ends
(:func:`cleanup_staging`); the main process removes the one of a worker that died.
"""

import contextlib
import functools
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
#: alarm) before its worker process is killed with every process it started.
HARD_KILL_GRACE = 2.0

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

    @functools.cached_property
    def output_dir(self):
        """Final output directory of the module."""
        return os.path.join(self.module_dir, "output")

    @functools.cached_property
    def log_dir(self):
        """Per-job log directory."""
        return os.path.join(self.module_dir, "logs")

    @functools.cached_property
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


_RECORD_FDS = {}


def append_record(path, *fields):
    """Append one tab-separated line; a single O_APPEND write is atomic between processes.

    The file stays open in this process (two lines per job); :func:`close_records` closes it.
    """
    line = "\t".join(str(f).replace("\t", " ").replace("\n", " ") for f in fields) + "\n"
    fd = _RECORD_FDS.get(path)
    if fd is None:
        fd = _RECORD_FDS[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, line.encode())


def close_records():
    """Close the job record files this process holds open."""
    while _RECORD_FDS:
        with contextlib.suppress(OSError):
            os.close(_RECORD_FDS.popitem()[1])


STAGING_PREFIX = ".stage"


# Staging directories this process created and has not removed.
_STAGING_READY = set()


def staging_dir(ctx):
    """This process's (thread's) staging directory for the module, empty between jobs."""
    name = f"{STAGING_PREFIX}{os.getpid()}"
    if threading.current_thread() is not threading.main_thread():
        name += f"_{threading.get_native_id()}"
    return os.path.join(ctx.output_dir, name)


def cleanup_staging(ctx, pid=None):
    """Remove staging directories of the module (all, or those of process ``pid``).

    Called when no job of the module runs any more (or when worker ``pid`` died): whatever
    is left there is a partial output.
    """
    prefix = STAGING_PREFIX + ("" if pid is None else str(pid))
    try:
        entries = list(os.scandir(ctx.output_dir))
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if name.startswith(prefix) and (pid is None or name[len(prefix):len(prefix) + 1]
                                        in ("", "_")):
            shutil.rmtree(entry.path, ignore_errors=True)
            _STAGING_READY.discard(entry.path)


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
    """Kills a job stuck past its TIMEOUT where the alarm cannot reach it (in-process jobs:
    MPI ranks; SMP worker processes are watched by the main process instead)."""

    def __init__(self, ctx, number, log):
        self.ctx, self.number, self.log = ctx, number, log
        self.timer = threading.Timer(ctx.timeout + ctx.hard_kill_grace, self.fire)
        self.timer.daemon = True

    def fire(self):
        reason = f"timeout after {self.ctx.timeout:g} s (hard kill: the job ignored the alarm)"
        self.log.error(reason)
        execute_module.kill_running_children()
        execute_module.kill_job_processes(os.getpid())
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


#: Characters of a runner's returned stdout/stderr kept in the job log (the tail).
MAX_LOGGED_OUTPUT = 200_000

#: Input files named in a job's one-line failure when the exception names none of them.
MAX_NAMED_INPUTS = 3


def cap_output(text, limit=MAX_LOGGED_OUTPUT):
    """The tail of ``text``, at most ``limit`` characters, saying how much was cut."""
    text = str(text)
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    return f"[... first {cut} of {len(text)} characters cut ...]\n" + text[cut:]


def _flat_inputs(files):
    out = []
    for item in files if isinstance(files, (list, tuple)) else [files]:
        if isinstance(item, (list, tuple)):
            out.extend(_flat_inputs(item))
        else:
            out.append(str(item))
    return out


def name_inputs(error, files):
    """Add the job's input files to a one-line error that names none of them.

    ``cannot reshape array of size 654840 into shape (1280,1024)`` from a truncated FITS
    file does not say which file; the job's inputs do.
    """
    paths = _flat_inputs(files)
    if not paths or any(os.path.basename(p) in error for p in paths):
        return error
    shown = ", ".join(paths[:MAX_NAMED_INPUTS])
    more = len(paths) - MAX_NAMED_INPUTS
    return f"{error} (input: {shown}{f' and {more} more' if more > 0 else ''})"


#: Set in SMP worker processes (job_handler): jobs there write print() output, programs'
#: output and crash dumps to the job log through file descriptors 1 and 2.
IN_WORKER = False
#: Whether a job's own code runs in this worker (the timeout signal is for it, not for the
#: framework's bookkeeping around it).
_IN_JOB = [False]
#: Set by job_handler in worker processes: whether the main process's timeout signal is
#: meant for the job running now (and not the previous one, that just finished).
TIMEOUT_IS_FOR_CURRENT_JOB = None


def _on_worker_alarm(signum, frame):
    # Sent by the main process when the running job passed its TIMEOUT.
    if _IN_JOB[0] and (TIMEOUT_IS_FOR_CURRENT_JOB is None or TIMEOUT_IS_FOR_CURRENT_JOB()):
        raise JobTimeout("job exceeded TIMEOUT")


def _redirect_fds(stream):
    # Everything written to fds 1 and 2 during the job (print, C libraries, child
    # programs, faulthandler's crash dump) goes to the job log.
    sys.stdout.flush()
    sys.stderr.flush()
    stream.flush()
    fd = stream.fileno()
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def run_job(ctx, number, files):
    """Run one job and record its outcome.

    In an SMP worker process the main process enforces TIMEOUT (it signals, then kills the
    worker's process group); elsewhere (MPI ranks, in-process runs) an alarm in this
    process does, with a watchdog thread for jobs that ignore the alarm.

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
    staging = staging_dir(ctx)
    if staging not in _STAGING_READY:
        with contextlib.suppress(FileExistsError):
            os.mkdir(staging)
        _STAGING_READY.add(staging)
    log = job_logger(os.path.join(ctx.log_dir, f"process{number}.log"),
                     f"{ctx.runner_name}{number}", ctx.verbose)
    stream = log.handlers[0].stream
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
    alarm = bool(ctx.timeout) and not IN_WORKER
    ok, error = False, ""
    if IN_WORKER:
        _redirect_fds(stream)
        redirect = contextlib.nullcontext()
    elif threading.current_thread() is threading.main_thread():
        redirect = _redirect_python_streams(stream)
    else:  # sys.stdout is shared by the threads of the threading backend: left alone
        redirect = contextlib.nullcontext()
    try:
        with redirect:
            _IN_JOB[0] = IN_WORKER
            runner = _runner(ctx)
            # Written directly: a logging call costs ~0.1 ms, as much as a no-op job.
            stream.write(f"{_stamp()} INFO {ctx.runner_name} {runner.version}, job {number}\n")
            stream.flush()
            if alarm:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGALRM, _on_alarm)
                    signal.setitimer(signal.ITIMER_REAL, ctx.timeout)
                watchdog = _Watchdog(ctx, number, log)
                watchdog.timer.start()
            try:
                result = runner(files, run_dirs, file_number, ctx.config, ctx.section, log)
            finally:
                _IN_JOB[0] = False
                if alarm and threading.current_thread() is threading.main_thread():
                    signal.setitimer(signal.ITIMER_REAL, 0)
                if watchdog:
                    watchdog.timer.cancel()
        pair = isinstance(result, tuple) and len(result) == 2
        stdout, stderr = result if pair else (result, None)
        if stdout:
            log.info("stdout:\n%s", cap_output(stdout))
        if stderr:
            log.warning("stderr:\n%s", cap_output(stderr))
        _move_tree(staging, target)
        ok = True
    except JobTimeout:
        error = f"timeout after {ctx.timeout:g} s"
        log.error("%s\n%s", error, traceback.format_exc())
        if alarm:  # children the job started outside execute() die with it
            execute_module.kill_job_processes(os.getpid())
    except BaseException as exc:  # noqa: BLE001 - a job must never take the others down
        if isinstance(exc, KeyboardInterrupt) and os.getpid() == ctx.parent_pid:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        error = name_inputs(error, files)
        log.error("job failed: %s\n%s", error, traceback.format_exc())
    finally:
        if not ok:  # partial outputs: the staging directory must be empty for the next job
            shutil.rmtree(staging, ignore_errors=True)
            _STAGING_READY.discard(staging)
        elapsed = time.perf_counter() - start
        if IN_WORKER:
            sys.stdout.flush()
            sys.stderr.flush()
        stream.write(f"{_stamp()} INFO {'done' if ok else 'FAILED'} in {elapsed:.3f} s\n")
        for handler in log.handlers:
            handler.close()
    append_record(ctx.record_path, "done" if ok else "fail", number, error)
    return number, ok, error, elapsed


def _stamp():
    # The logging module's asctime format, without milliseconds.
    return time.strftime("%Y-%m-%d %H:%M:%S")


@contextlib.contextmanager
def _redirect_python_streams(stream):
    # In-process jobs: print() goes to the job log, not the console.
    with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
        yield


def run_jobs_batch(ctx, jobs):
    """Run several jobs in one task (amortises inter-process overhead for tiny jobs)."""
    return [run_job(ctx, number, files) for number, files in jobs]

