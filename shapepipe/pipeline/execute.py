"""Running external programs from runners, and finding the processes a job started.

In an SMP worker process (its own process group, see job_handler), a program stays in the
worker's group: killing the group on a timeout, a crash or an interrupt takes the program
and everything it started down with the job. Elsewhere (MPI ranks, the threading backend)
each program runs in a process group of its own, killed as a group when the job's timeout
(or any exception while waiting) interrupts it.
"""

import contextlib
import os
import shlex
import signal
import subprocess

from shapepipe.pipeline.errors import ExecutionError

# Programs started by execute() in this process and not yet finished, so that a job's
# watchdog can kill them when the job is stuck past its timeout.
_RUNNING = set()

#: False in SMP worker processes: their programs stay in the worker's process group.
NEW_SESSION = True


def kill_running_children():
    """Kill the process groups of every program this process is running."""
    for process in list(_RUNNING):
        _kill_group(process)


def _kill_group(process):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if NEW_SESSION:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    with contextlib.suppress(Exception):
        process.wait(timeout=5)


def execute(command, cwd=None, env=None):
    """Run an external command and return its output.

    Parameters
    ----------
    command : str or list of str
        The command; a string is split with shell rules (no shell is started).
    cwd : str, optional
        Working directory.
    env : dict, optional
        Environment (default: inherited).

    Returns
    -------
    stdout, stderr : str
        What the program printed.

    Raises
    ------
    ExecutionError
        If the program is not found or returns a non-zero exit code; the message holds the
        command, the return code and the last lines of its stderr.
    """
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    if not args:
        raise ExecutionError("execute: empty command")
    try:
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=NEW_SESSION,
        )
    except FileNotFoundError:
        raise ExecutionError(f"{args[0]}: program not found (not installed or not on PATH)") \
            from None
    except PermissionError:
        raise ExecutionError(f"{args[0]}: not executable") from None
    _RUNNING.add(process)
    try:
        stdout, stderr = process.communicate()
    except BaseException:
        # Timeout (raised by the job's alarm) or interrupt: take the whole group down.
        _kill_group(process)
        raise
    finally:
        _RUNNING.discard(process)
    if process.returncode != 0:
        tail = " | ".join(line.strip() for line in stderr.strip().splitlines()[-3:] if line.strip())
        how = (
            f"killed by signal {-process.returncode}"
            if process.returncode < 0
            else f"exit code {process.returncode}"
        )
        raise ExecutionError(f"{shlex.join(args)}: {how}" + (f": {tail}" if tail else ""))
    return stdout, stderr


def _process_table():
    """``{pid: (ppid, pgrp)}`` of every process visible in /proc (Linux)."""
    table = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # exited meanwhile
            continue
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and fields[0] != b"Z":
            table[int(entry)] = (int(fields[1]), int(fields[2]))
    return table


def job_processes(root, exclude=()):
    """Processes started, directly or not, by process ``root``.

    Every descendant of ``root`` and every member of their process groups and of ``root``'s
    own group (children that were orphaned stay in the group of the job that started them),
    except ``root`` itself, the members of ``exclude`` and the caller's process group.

    Parameters
    ----------
    root : int
        Process id of the worker (or rank) that ran the job.
    exclude : iterable of int
        Process ids never to return (e.g. the worker's own sentinel).

    Returns
    -------
    set of int
    """
    table = _process_table()
    children = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    descendants, stack = set(), [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in descendants:
                descendants.add(child)
                stack.append(child)
    groups = {table[pid][1] for pid in descendants} | {table.get(root, (0, root))[1]}
    groups.discard(os.getpgrp())
    found = descendants | {pid for pid, (_, pgrp) in table.items() if pgrp in groups}
    return found - {root, os.getpid(), *exclude}


def kill_job_processes(root, exclude=(), rounds=3):
    """SIGKILL every process :func:`job_processes` finds (repeated: a dying shell may fork).

    Returns
    -------
    int
        Number of processes signalled.
    """
    killed = 0
    for _ in range(rounds):
        pids = job_processes(root, exclude)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed
