"""Execution of a module's jobs: in SMP worker processes, in threads, or with MPI.

Every executor returns ``{number: (ok, error, seconds)}`` and reports progress as jobs
finish.

SMP worker processes (:class:`_Worker`) are forked by the main process, one process group
each, and hold no state shared with each other. The main process knows which job every
worker is running, which gives the guarantees below at no per-job cost:

- TIMEOUT: when a job passes it, the main process kills every process the job started
  (its worker's process group, and the groups of the worker's descendants), then signals
  the worker so that the job fails in Python with a traceback in its log; a job that does
  not return within ``hard_kill_grace`` seconds is killed with its worker.
- A worker that dies (``os._exit``, a segfault, the OOM killer) fails the one job it was
  running, once, with the exit status; its other jobs go back to the queue and a new worker
  takes over. Its staging directory is removed; the crash dump (faulthandler) is in the
  job's log, as is everything a job prints (file descriptors 1 and 2 point there).
- SIGINT / SIGTERM in the main process (:func:`install_signal_handlers`): no further job
  is handed out, running jobs are killed with their processes and recorded as failed, and
  the exception propagates so that the run is recorded as interrupted. Workers die with
  the main process even after a ``kill -9`` (PR_SET_PDEATHSIG), and a sentinel process in
  each worker's group kills what the job started when its worker dies.
"""

import collections
import contextlib
import ctypes
import faulthandler
import mmap
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Pipe, wait

from shapepipe.pipeline import execute as execute_module
from shapepipe.pipeline import worker as worker_module
from shapepipe.pipeline.worker import (
    append_record,
    cleanup_staging,
    close_records,
    read_records,
    run_job,
    run_jobs_batch,
)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM received by the main process; ``exit_code`` is 128 + signal."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def _on_signal(signum, frame):
    raise Interrupted(signum)


def install_signal_handlers():
    """Turn SIGINT and SIGTERM (what batch schedulers send) into :class:`Interrupted`.

    Call in the main thread of the main process, before the run starts: the run then stops
    handing out jobs, kills running ones and records itself as interrupted.

    Returns
    -------
    callable
        Restores the previous handlers (for callers of ``main()`` in-process).
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.signal(signum, _on_signal)
                for signum in (signal.SIGINT, signal.SIGTERM)}

    def restore():
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    return restore


class Progress:
    """Jobs done / failed / total and rate, as a bar on a terminal or lines otherwise.

    On a non-terminal stream, one line is printed per finished job; when many jobs finish
    quickly the lines are coalesced to at most ``max_rate`` per second.
    """

    def __init__(self, label, total, stream=None, quiet=False, max_rate=4.0):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.failed = 0
        self.start = time.perf_counter()
        self.min_interval = 1.0 / max_rate
        self._last = 0.0

    def update(self, ok, number=None, error=None):
        """Count one finished job."""
        self.done += 1
        self.failed += 0 if ok else 1
        if self.quiet:
            return
        if not ok and not self.tty:
            self._line(f"job {number} FAILED: {error}")
        now = time.perf_counter()
        if self.done == self.total or now - self._last >= self.min_interval:
            self._last = now
            self._show()

    def _status(self):
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return (f"{self.done}/{self.total} done, {self.failed} failed, "
                f"{self.done / elapsed:.1f} jobs/s")

    def _line(self, text):
        self.stream.write(f"[{self.label}] {text}\n")
        self.stream.flush()

    def _show(self):
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            end = "\n" if self.done == self.total else ""
            self.stream.write(f"\r[{self.label}] [{bar}] {self._status()}{end}")
            self.stream.flush()
        else:
            self._line(self._status())


def run_serial(ctx, jobs, progress):
    """Run jobs one after the other in this process (threading backend, MPI rank 0)."""
    results = {}
    for number, files in jobs:
        number, ok, error, seconds = run_job(ctx, number, files)
        results[number] = (ok, error, seconds)
        progress.update(ok, number, error)
    return results


def _batches(jobs, size):
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]


def run_smp(ctx, jobs, progress, workers, backend="loky", log=None):
    """Run jobs in ``workers`` worker processes (or threads with ``backend='threading'``).

    ``loky`` and ``multiprocessing`` (accepted for ShapePipe configs) both mean the
    framework's own worker processes, see the module docstring.

    Parameters
    ----------
    ctx : ModuleContext
        The module occurrence.
    jobs : list of (number, files)
        The jobs.
    progress : Progress
        Progress reporter.
    workers : int
        SMP_BATCH_SIZE.
    backend : str
        ``loky`` (default), ``multiprocessing`` or ``threading``.
    log : logging.Logger, optional
        Run log, for worker crash messages.

    Returns
    -------
    dict
        ``{number: (ok, error, seconds)}``.
    """
    try:
        if backend == "threading":
            if workers <= 1 or len(jobs) <= 1:
                return run_serial(ctx, jobs, progress)
            return _run_threads(ctx, jobs, progress, workers)
        return _run_pool(ctx, jobs, progress, workers, log)
    finally:
        close_records()
        cleanup_staging(ctx)


def _task_size(n_jobs, workers):
    # Several small jobs per message: inter-process cost is paid per message, not per
    # job, while there are still enough messages to balance the load.
    return max(1, min(64, n_jobs // (workers * 32)))


def _run_threads(ctx, jobs, progress, workers):
    from joblib import Parallel, delayed

    results = {}
    size = _task_size(len(jobs), workers)
    with Parallel(n_jobs=workers, backend="threading", return_as="generator_unordered") as par:
        tasks = (delayed(run_jobs_batch)(ctx, batch) for batch in _batches(jobs, size))
        for batch_result in par(tasks):
            for number, ok, error, seconds in batch_result:
                results[number] = (ok, error, seconds)
                progress.update(ok, number, error)
    return results


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def thread_env(workers, cores=None):
    """Thread limits for worker processes: the cores shared out between the workers.

    Multi-threaded BLAS in every worker of a full pool oversubscribes the cores (metacal's
    small matrix products ran 5x slower). Variables the user set are left alone.
    """
    share = str(max(1, (cores or os.cpu_count() or 1) // max(1, workers)))
    return {name: os.environ.get(name, share) for name in _THREAD_VARS}


def apply_thread_limits(env):
    """Apply thread limits in this process: environment (programs it starts, libraries not
    yet loaded) and, through threadpoolctl, BLAS/OpenMP libraries already loaded.

    Parameters
    ----------
    env : dict
        ``{variable: value}`` from :func:`thread_env`.
    """
    os.environ.update(env)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: then only libraries loaded later follow the variables
        return
    with contextlib.suppress(Exception):
        threadpool_limits(limits={"openmp": int(env["OMP_NUM_THREADS"]),
                                  "blas": int(env["OPENBLAS_NUM_THREADS"])})


# -- the worker processes -------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1
_HELLO = "__worker__"
# Slots of the memory a worker shares with the main process: jobs started, job the timeout
# signal is for, start of the running job (monotonic ns), jobs finished.
_STARTED, _TARGET, _START_NS, _FINISHED = range(4)
_REPORT_NS = 250_000_000


def _die_with_parent(signum, parent):
    """Have the kernel send ``signum`` to this process when its parent dies (Linux)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(70)


def _start_sentinel(worker_pid, close_fds):
    """Fork a process that kills this worker's process group when the worker dies.

    A job's child processes would otherwise outlive a worker that was killed (kill -9 of
    the main process, the OOM killer): orphans keep the worker's process group.
    """
    pid = os.fork()
    if pid:
        return pid
    try:
        for fd in close_fds:  # the worker's connection: its end must close when it dies
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda *_: os.killpg(worker_pid, signal.SIGKILL))
        _die_with_parent(signal.SIGTERM, worker_pid)
        while True:
            signal.pause()
    finally:
        os._exit(0)


def _worker_main(ctx, conn, env, parent, seq):
    os.setpgid(0, 0)
    _die_with_parent(signal.SIGKILL, parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, worker_module._on_worker_alarm)
    # Nothing a worker writes reaches the console: fds 1 and 2 point to the running job's
    # log (run_job), /dev/null between jobs.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.close(devnull)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                      closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace",
                      closefd=False)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    sentinel = _start_sentinel(os.getpid(), [conn.fileno()])
    apply_thread_limits(env)
    worker_module.IN_WORKER = True
    worker_module.TIMEOUT_IS_FOR_CURRENT_JOB = lambda: seq[_STARTED] == seq[_TARGET]
    execute_module.NEW_SESSION = False
    conn.send((_HELLO, sentinel))
    while True:
        try:
            batch = conn.recv()
        except EOFError:
            batch = None
        if batch is None:
            # Reap the sentinel (no zombie left behind), then end this worker's process
            # group, itself included: background processes a job left die with it.
            with contextlib.suppress(OSError):
                os.kill(sentinel, signal.SIGKILL)
                os.waitpid(sentinel, 0)
            os.killpg(os.getpid(), signal.SIGKILL)
            return 0
        results = []
        sent = time.monotonic_ns()
        for number, files in batch:
            # The main process reads these to know which job runs since when (no message
            # per job: one per batch, or per quarter second for progress).
            seq[_START_NS] = time.monotonic_ns()
            seq[_STARTED] += 1
            results.append(run_job(ctx, number, files))
            seq[_FINISHED] = seq[_STARTED]
            if time.monotonic_ns() - sent > _REPORT_NS:
                conn.send(results)
                results, sent = [], time.monotonic_ns()
        if results:
            conn.send(results)


class _Worker:
    """The main process's view of one worker: its pid, connection and queue of jobs."""

    def __init__(self, ctx, env, others):
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        conn, child = Pipe()
        # Shared with the worker (see _STARTED...): which job runs since when, and which
        # job the timeout signal is meant for.
        self.seq = memoryview(mmap.mmap(-1, 8 * 4)).cast("q")
        self.done = 0  # results received
        self.alarm_seq = None  # the job the timeout signal was sent to
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                conn.close()
                for other in others:
                    with contextlib.suppress(OSError):
                        other.conn.close()
                        os.close(other.pidfd)
                code = _worker_main(ctx, child, env, parent, self.seq)
            finally:
                os._exit(code)
        child.close()
        with contextlib.suppress(OSError):  # also done by the child: no race either way
            os.setpgid(pid, pid)
        self.pid, self.conn = pid, conn
        self.pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
        self.sentinel = None
        self.queue = collections.deque()  # jobs sent and not reported, in order
        self.alarm_at = None
        self.status = None

    def send(self, batch):
        self.queue.extend(batch)
        self.conn.send(batch)

    def running(self):
        """``(position in queue, start time)`` of the job running now, or None."""
        started = self.seq[_STARTED]
        position = started - self.done - 1
        if started == self.seq[_FINISHED] or not 0 <= position < len(self.queue):
            return None
        return position, self.seq[_START_NS] / 1e9

    def kill(self):
        """Kill the worker and every process its jobs started; reap it."""
        exclude = () if self.sentinel is None else (self.sentinel,)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGSTOP)  # no new children meanwhile
        execute_module.kill_job_processes(self.pid, exclude)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.reap()

    def reap(self, timeout=None):
        """Wait for the worker to exit; returns its wait status (None if still running)."""
        if self.status is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                pid, status = os.waitpid(self.pid, 0 if timeout is None else os.WNOHANG)
                if pid:
                    self.status = status
                    break
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.005)
            self.close()
        return self.status

    def close(self):
        self.conn.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


def _death_reason(status):
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = "unknown"
        how = f"signal {signum}, {name}"
    else:
        how = f"exit code {os.waitstatus_to_exitcode(status)}"
    return f"worker process died ({how}) while running this job"


def _fail_in_main(ctx, number, reason, pid):
    """Record a job the main process failed (its worker ``pid`` died or was killed)."""
    cleanup_staging(ctx, pid)
    with contextlib.suppress(OSError):
        with open(os.path.join(ctx.log_dir, f"process{number}.log"), "a",
                  encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR {reason}\n")
    append_record(ctx.record_path, "fail", number, reason)


def _run_pool(ctx, jobs, progress, workers, log):
    results = {}
    pending = collections.deque(jobs)
    size = _task_size(len(jobs), workers)
    # Tiny jobs: a second batch queued hides the round trip. Long jobs (few per worker):
    # one at a time, so that no job waits behind another while a worker is idle.
    depth = 2 * size if size > 1 else 1
    env = thread_env(workers)
    timeout, grace = ctx.timeout, ctx.hard_kill_grace
    pool = []

    def settle(number, ok, error, seconds=0.0):
        results[number] = (ok, error, seconds)
        progress.update(ok, number, error)

    def receive(w):
        """Read every message waiting from ``w``; False if the worker is gone."""
        try:
            while w.conn.poll():
                message = w.conn.recv()
                if message[0] == _HELLO:
                    w.sentinel = message[1]
                    continue
                for number, ok, error, seconds in message:
                    w.queue.popleft()
                    settle(number, ok, error, seconds)
                w.done += len(message)
        except (EOFError, OSError):
            return False
        return True

    def retire(w, reason):
        """``w`` is dead or was killed: settle the jobs it finished (from the records: they
        were not reported yet), fail the one it was running, requeue the others."""
        pool.remove(w)
        finished = min(w.seq[_FINISHED] - w.done, len(w.queue))
        running = w.running()
        if finished > 0:
            records = read_records(ctx.record_path)
            for _ in range(finished):
                number = w.queue.popleft()[0]
                state, why = records.get(number, ("fail", reason))
                settle(number, state == "done", "" if state == "done" else why)
        if running is not None:
            number = w.queue.popleft()[0]
            _fail_in_main(ctx, number, reason, w.pid)
            settle(number, False, reason)
            if log and not reason.startswith("timeout"):
                log.warning("%s: job %s: %s", ctx.runner_name, number, reason)
        cleanup_staging(ctx, w.pid)
        pending.extendleft(reversed(w.queue))
        w.queue.clear()

    try:
        for _ in range(min(workers, len(jobs))):
            pool.append(_Worker(ctx, env, pool))
        while len(results) < len(jobs):
            # Replace workers lost to crashes or kills, then keep two batches queued each.
            while pending and len(pool) < min(workers, len(pending) + sum(
                    1 for w in pool if w.queue)):
                pool.append(_Worker(ctx, env, pool))
            for w in pool:
                while pending and len(w.queue) < depth:
                    w.send([pending.popleft() for _ in range(min(size, len(pending)))])
            wait_for = None
            if timeout:
                now = time.monotonic()
                deadlines = []
                for w in pool:
                    if not w.queue:
                        continue
                    running = w.running()
                    if running is None:  # between two jobs: look again soon
                        deadlines.append(now + min(timeout, 0.2))
                    elif w.alarm_seq == w.seq[_STARTED]:
                        deadlines.append(w.alarm_at + grace)
                    else:
                        deadlines.append(running[1] + timeout)
                wait_for = max(0.0, min(deadlines) - now) if deadlines else None
            handles = [w.conn for w in pool] + [w.pidfd for w in pool if w.pidfd is not None]
            wait(handles, wait_for)
            for w in list(pool):
                alive = receive(w)
                if alive and w.pidfd is not None:
                    alive = not wait([w.pidfd], 0)
                if not alive:
                    receive(w)
                    status = w.reap(timeout=5.0)
                    if status is None:
                        w.kill()
                        status = w.status
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(w.pid, signal.SIGKILL)  # what the dead job left running
                    retire(w, _death_reason(status))
            if not timeout:
                continue
            now = time.monotonic()
            for w in list(pool):
                running = w.running()
                if running is None:
                    continue
                started = w.seq[_STARTED]
                if w.alarm_seq != started and now - running[1] >= timeout:
                    # Signal the job (it fails in Python, with a traceback in its log),
                    # then kill what it started: os.system() or a shell blocked in waitpid
                    # sees the signal only when its children are gone.
                    w.alarm_seq, w.alarm_at = started, now
                    w.seq[_TARGET] = started
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGALRM)
                    exclude = () if w.sentinel is None else (w.sentinel,)
                    execute_module.kill_job_processes(w.pid, exclude)
                elif w.alarm_seq == started and now - w.alarm_at >= grace:
                    w.kill()
                    retire(w, f"timeout after {timeout:g} s (hard kill: the job ignored "
                              "the alarm)")
    except BaseException as exc:
        # Interrupt (or a bug here): hand out nothing more, kill what runs, record it.
        reason = f"interrupted ({exc})" if isinstance(exc, KeyboardInterrupt) else \
            f"run stopped: {type(exc).__name__}"
        for w in list(pool):
            w.kill()
            running = w.running()
            if running is not None:
                _fail_in_main(ctx, w.queue[running[0]][0], reason, w.pid)
        pool.clear()
        raise
    finally:
        for w in pool:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in pool:
            if w.reap(timeout=5.0) is None:
                w.kill()
    return results
