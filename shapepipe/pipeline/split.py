"""N_SPLIT: one number's job split into k part jobs, then combined.

A parallel runner that declares ``combine=<callable>`` in ``@module_runner`` may be given
``N_SPLIT = k`` in its section. Each number then becomes k jobs; part ``i`` (1..k) receives
``run_dirs["split"] = (i, k)`` (every job of an unsplit module receives ``(1, 1)``). A part's
outputs go to ``<module>/parts/<number>/<i>_of_<k>/``, outside ``output/``, so that later
modules never see them. Once all k parts of a number have succeeded, the framework calls
``combine(part_dirs, output_dir, file_number_string, w_log)`` in the main process (rank 0
under MPI); ``output_dir`` is a staging directory whose files are moved into the module's
output when combine returns, so a failed combine leaves nothing behind.

Job keys (the job's name in ``jobs.txt``, its log ``process<key>.log`` and the summary):
``<number>_part<i>of<k>`` for a part, ``<number>_combine<k>`` for the combine step. With
``--resume`` completed parts are skipped and a missing combine is redone.
"""

import os
import re
import shutil
import time

_PART_KEY = re.compile(r"^(?P<number>.*)_part(?P<part>\d+)of(?P<k>\d+)$")


def part_key(number, part, k):
    """The job key of part ``part`` of ``k`` of a number."""
    return f"{number}_part{part}of{k}"


def combine_key(number, k):
    """The record key of a number's combine step."""
    return f"{number}_combine{k}"


def parse_part_key(key):
    """``(number, part, k)`` of a part job key."""
    match = _PART_KEY.match(key)
    if match is None:
        raise ValueError(f"{key!r} is not a split job key")
    return match.group("number"), int(match.group("part")), int(match.group("k"))


def part_dir(module_dir, number, part, k):
    """Where the outputs of one part are kept (never seen by later modules)."""
    return os.path.join(module_dir, "parts", number if number.strip(".") else "_",
                        f"{part}_of_{k}")


def part_jobs(numbers, jobs, k):
    """Expand ``{number: files}`` into the part jobs ``[(key, files), ...]``, number-major."""
    return [(part_key(n, i, k), jobs[n]) for n in numbers for i in range(1, k + 1)]


def job_target(ctx, key):
    """For a worker: ``(file number, run_dirs["split"], final directory)`` of a job.

    An unsplit job writes into the module's output; a part into its (emptied) part dir.
    """
    if ctx.split <= 1:
        return key, (1, 1), ctx.output_dir
    number, part, k = parse_part_key(key)
    target = part_dir(ctx.module_dir, number, part, k)
    if os.path.isdir(target):  # left by an attempt that died while moving its files
        shutil.rmtree(target)
    os.makedirs(target)
    return number, (part, k), target


def pending_combines(records, numbers, k):
    """Numbers whose k parts are all recorded done and whose combine is not."""
    ready = []
    for number in numbers:
        parts_done = all(records.get(part_key(number, i, k), ("",))[0] == "done"
                         for i in range(1, k + 1))
        if parts_done and records.get(combine_key(number, k), ("",))[0] != "done":
            ready.append(number)
    return ready


def run_combine(ctx, combine, number, k):
    """Combine the parts of one number into the module's output (atomically).

    Parameters
    ----------
    ctx : shapepipe.pipeline.worker.ModuleContext
        The module occurrence.
    combine : callable
        The runner's ``combine(part_dirs, output_dir, file_number_string, w_log)``.
    number : str
        The file number.
    k : int
        N_SPLIT.

    Returns
    -------
    tuple
        ``(ok, error message, seconds)``; the outcome is also recorded in ``jobs.txt``.
    """
    from shapepipe.pipeline.worker import _move_tree, append_record, job_logger

    start = time.perf_counter()
    key = combine_key(number, k)
    staging = os.path.join(ctx.output_dir, f".job{key}")
    if os.path.exists(staging):
        shutil.rmtree(staging)
    os.mkdir(staging)
    log = job_logger(os.path.join(ctx.log_dir, f"process{key}.log"),
                     f"{ctx.runner_name}{key}", ctx.verbose)
    part_dirs = [part_dir(ctx.module_dir, number, i, k) for i in range(1, k + 1)]
    append_record(ctx.record_path, "start", key)
    ok, error = False, ""
    try:
        log.info("combine %d parts of %s: %s", k, number, ", ".join(part_dirs))
        combine(part_dirs, staging, number, log)
        _move_tree(staging, ctx.output_dir)
        ok = True
    except Exception as exc:  # noqa: BLE001 - one number's combine must not stop the others
        import traceback

        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"combine: {type(exc).__name__}" + (f": {message}" if message else "")
        log.error("%s\n%s", error, traceback.format_exc())
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        log.info("%s in %.3f s", "done" if ok else "FAILED", time.perf_counter() - start)
        for handler in log.handlers:
            handler.close()
    append_record(ctx.record_path, "done" if ok else "fail", key, error)
    return ok, error, time.perf_counter() - start
