"""``MODE = MPI``: jobs handed out dynamically to the ranks of ``mpiexec``.

Rank 0 parses the configuration, resolves inputs, owns the run directory, the logs, the
manifest and the summary. It also runs jobs itself: a dispatcher thread on rank 0 answers
the other ranks (each asks for its next job when it finishes one, sending back the result
of the previous one) while rank 0's main thread takes jobs from the same queue. Jobs run in
the main thread of every rank, where TIMEOUT is an alarm (external programs and the other
processes the job started are killed, a job stuck in compiled code kills its rank after
the grace period). BLAS/OpenMP threads: the node's cores shared between its ranks.

If a rank dies, OpenMPI's ``mpiexec`` aborts the whole job with a message naming the rank
and a non-zero exit code; outputs of finished jobs are complete (staged then renamed) and
recorded, so ``--resume`` finishes the rest.
"""

import collections
import threading
import time
from dataclasses import dataclass

from shapepipe.pipeline.errors import ConfigError
from shapepipe.pipeline.job_handler import apply_thread_limits, thread_env
from shapepipe.pipeline.worker import cleanup_staging, run_job

TAG_REQUEST = 11
TAG_TASK = 12
_POLL = 0.0005


@dataclass
class MPIState:
    """The communicator and this process's place in it."""

    comm: object
    rank: int
    size: int
    idle: list  # worker ranks waiting for a task (rank 0 only)
    started: set  # worker ranks that have contacted rank 0 (rank 0 only)


_STATE = None


def start(where):
    """Initialise MPI (``mpi4py``); raises a ConfigError naming what is missing.

    Parameters
    ----------
    where : str
        Location of the ``MODE = MPI`` setting, for the error message.

    Returns
    -------
    MPIState
    """
    global _STATE
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ConfigError(
            f"{where}: MPI mode needs the mpi4py package and an MPI library "
            f"(pip install '.[mpi]'; Debian: apt-get install openmpi-bin libopenmpi-dev): {exc}"
        ) from None
    comm = MPI.COMM_WORLD
    share_cores(comm, MPI)
    _STATE = MPIState(comm=comm, rank=comm.Get_rank(), size=comm.Get_size(), idle=[],
                      started=set())
    return _STATE


def share_cores(comm, mpi):
    """Limit BLAS/OpenMP threads of this rank to (cores on the node) / (ranks on the node).

    As SMP workers do: multi-threaded BLAS in every rank oversubscribes the node. The ranks
    of one node are those of the shared-memory communicator. Variables the user set are
    left alone.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The world communicator.
    mpi : module
        ``mpi4py.MPI``.

    Returns
    -------
    dict
        The thread variables now in force.
    """
    node = comm.Split_type(mpi.COMM_TYPE_SHARED)
    try:
        env = thread_env(node.Get_size())
    finally:
        node.Free()
    apply_thread_limits(env)
    return env


def worker_loop(state):
    """Run on ranks other than 0: ask for a job, run it, send the result, until stopped.

    Returns
    -------
    int
        Exit code of the rank (0).
    """
    comm = state.comm
    result = None
    while True:
        comm.send(result, dest=0, tag=TAG_REQUEST)
        task = comm.recv(source=0, tag=TAG_TASK)
        if task is None:
            return 0
        ctx, number, files = task
        result = (ctx.module_dir, run_job(ctx, number, files))


def run_mpi(ctx, jobs, progress):
    """Run a module's jobs over all ranks (called on rank 0).

    Parameters
    ----------
    ctx : ModuleContext
        The module occurrence.
    jobs : list of (number, files)
        The jobs.
    progress : Progress
        Progress reporter.

    Returns
    -------
    dict
        ``{number: (ok, error, seconds)}``.
    """
    from mpi4py import MPI

    state = _STATE
    comm = state.comm
    queue = collections.deque(jobs)
    results = {}
    lock = threading.Lock()
    total = len(jobs)

    def record(number, ok, error, seconds):
        with lock:
            results[number] = (ok, error, seconds)
            progress.update(ok, number, error)

    def next_job():
        with lock:
            return queue.popleft() if queue else None

    def dispatch():
        status = MPI.Status()
        while True:
            with lock:
                if len(results) >= total:
                    return
            # Hand queued jobs to ranks already waiting.
            while state.idle:
                job = next_job()
                if job is None:
                    break
                rank = state.idle.pop(0)
                comm.send((ctx, job[0], job[1]), dest=rank, tag=TAG_TASK)
            if comm.Iprobe(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status):
                rank = status.Get_source()
                message = comm.recv(source=rank, tag=TAG_REQUEST)
                state.started.add(rank)
                if message is not None:
                    module_dir, (number, ok, error, seconds) = message
                    if module_dir == ctx.module_dir:
                        record(number, ok, error, seconds)
                state.idle.append(rank)
                continue
            time.sleep(_POLL)

    dispatcher = None
    if state.size > 1:
        dispatcher = threading.Thread(target=dispatch, name="mpi-dispatch", daemon=True)
        dispatcher.start()
    # Rank 0 works too, in its main thread (where the timeout alarm can fire).
    while True:
        job = next_job()
        if job is None:
            break
        number, ok, error, seconds = run_job(ctx, job[0], job[1])
        record(number, ok, error, seconds)
    if dispatcher is not None:
        dispatcher.join()
    cleanup_staging(ctx)  # every rank has finished the module's jobs
    return results


def stop_workers(state):
    """Tell every other rank to exit (called once on rank 0, also after errors)."""
    if state is None or state.size <= 1:
        return
    from mpi4py import MPI

    comm = state.comm
    # Ranks already waiting get their stop at once; the others are waiting for the answer
    # to their first request, which we receive and answer with a stop.
    for rank in state.idle:
        comm.send(None, dest=rank, tag=TAG_TASK)
    stopped = set(state.idle)
    state.idle.clear()
    status = MPI.Status()
    while len(stopped) < state.size - 1:
        comm.recv(source=MPI.ANY_SOURCE, tag=TAG_REQUEST, status=status)
        rank = status.Get_source()
        comm.send(None, dest=rank, tag=TAG_TASK)
        stopped.add(rank)
