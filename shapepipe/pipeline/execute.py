"""Running external programs from runners.

Each program runs in its own process group, so that a job timeout (or any exception
while waiting) kills the program and every process it started.
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


def kill_running_children():
    """Kill the process groups of every program this process is running."""
    for process in list(_RUNNING):
        _kill_group(process)


def _kill_group(process):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
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
            start_new_session=True,
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
