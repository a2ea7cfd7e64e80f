"""Execution of a module's jobs: in this process, in SMP with joblib, or with MPI.

Every executor returns ``{number: (ok, error, seconds)}`` and reports progress as jobs
finish. Job outcomes are also recorded on disk by the worker (``jobs.txt``), which lets
the SMP executor recover from a worker process that died (segfault, hard timeout kill):
jobs that never started are resubmitted, a job in flight during two crashes fails.
"""

import sys
import time

from shapepipe.pipeline.worker import read_records, run_job, run_jobs_batch

MAX_ATTEMPTS = 2


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
    """Run jobs one after the other in this process."""
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
    """Run jobs in ``workers`` processes (joblib's loky executor, or a joblib backend).

    With one worker and no TIMEOUT the jobs run in this process (no pool start-up). With a
    TIMEOUT, jobs always run in worker processes, so that a job stuck in compiled code can
    be killed without taking the run down.

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
        Run log, for crash recovery messages.

    Returns
    -------
    dict
        ``{number: (ok, error, seconds)}``.
    """
    if backend == "threading" or (not ctx.timeout and (workers <= 1 or len(jobs) <= 1)):
        if workers <= 1 or len(jobs) <= 1:
            return run_serial(ctx, jobs, progress)
        return _run_joblib(ctx, jobs, progress, workers, backend)
    if backend == "multiprocessing":
        return _run_joblib(ctx, jobs, progress, workers, backend)
    return _run_loky(ctx, jobs, progress, workers, log)


def _task_size(n_jobs, workers):
    # Several small jobs per task: inter-process cost is paid per task, not per job,
    # while there are still enough tasks to balance the load.
    return max(1, min(64, n_jobs // (workers * 32)))


def _run_joblib(ctx, jobs, progress, workers, backend):
    from joblib import Parallel, delayed

    results = {}
    size = _task_size(len(jobs), workers)
    # joblib's multiprocessing backend can only return a list, at the end (progress is then
    # reported when the module finishes).
    order = "list" if backend == "multiprocessing" else "generator_unordered"
    with Parallel(n_jobs=workers, backend=backend, return_as=order) as parallel:
        tasks = (delayed(run_jobs_batch)(ctx, batch) for batch in _batches(jobs, size))
        for batch_result in parallel(tasks):
            for number, ok, error, seconds in batch_result:
                results[number] = (ok, error, seconds)
                progress.update(ok, number, error)
    return results


def _run_loky(ctx, jobs, progress, workers, log):
    from concurrent.futures import as_completed

    from joblib.externals.loky import get_reusable_executor

    results = {}
    attempts = {}
    pending = list(jobs)
    while pending:
        executor = get_reusable_executor(max_workers=workers, env=_thread_env(workers))
        size = _task_size(len(pending), workers)
        futures = [executor.submit(run_jobs_batch, ctx, batch) for batch in _batches(pending, size)]
        try:
            for future in as_completed(futures):
                for number, ok, error, seconds in future.result():
                    results[number] = (ok, error, seconds)
                    progress.update(ok, number, error)
            pending = []
        except Exception as exc:  # a worker process died: recover from the records
            if not _is_worker_death(exc):
                raise
            for future in futures:
                future.cancel()
            pending = _recover(ctx, pending, results, attempts, progress)
            if log:
                log.warning("%s: a worker process died (%s); resubmitting %d job(s)",
                            ctx.runner_name, type(exc).__name__, len(pending))
    return results


def _ready():
    return True


def warm_pool(workers):
    """Start the SMP worker processes in the background (returns at once).

    Called before the configuration is validated, so that the ~0.3 s the workers take to
    start and import the framework overlaps with the main process's own work.
    """
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor(max_workers=workers, env=_thread_env(workers)).submit(_ready)


_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _thread_env(workers):
    """Thread limits for worker processes: the cores shared out between the workers.

    Multi-threaded BLAS in every worker of a full pool oversubscribes the cores (metacal's
    small matrix products ran 5x slower). Variables the user set are left alone.
    """
    import os

    share = str(max(1, (os.cpu_count() or 1) // workers))
    return {name: os.environ.get(name, share) for name in _THREAD_VARS}


def _recover(ctx, pending, results, attempts, progress):
    """After a worker died: settle finished jobs from the records, return those to retry."""
    records = read_records(ctx.record_path)
    retry = []
    for number, files in pending:
        if number in results:
            continue
        state, reason = records.get(number, (None, ""))
        if state == "done":
            results[number] = (True, "", 0.0)
            progress.update(True, number)
        elif state == "fail":
            results[number] = (False, reason, 0.0)
            progress.update(False, number, reason)
        elif state == "start":
            attempts[number] = attempts.get(number, 0) + 1
            if attempts[number] >= MAX_ATTEMPTS:
                reason = "worker process died while running this job"
                results[number] = (False, reason, 0.0)
                progress.update(False, number, reason)
            else:
                retry.append((number, files))
        else:
            retry.append((number, files))
    return retry


def _is_worker_death(exc):
    name = type(exc).__name__
    return name in ("TerminatedWorkerError", "BrokenProcessPool", "BrokenExecutor")
