"""Test runner (found through MODULE_PATH) that misbehaves on request: it starts children
that outlive it, crashes its process, prints to the console, returns huge outputs."""

import ctypes
import os
import subprocess
import time

from shapepipe.modules.module_decorator import Key, module_runner

ACTIONS = ("none", "system", "popen", "shell_grandchild", "orphan", "exit", "segv", "print",
           "big_stdout", "reshape", "sleep", "env")

KEYS = [
    Key("ACTION", "str", default="none", choices=ACTIONS, help="what the chosen jobs do"),
    Key("ON", "list", default=[], help="job numbers that act (empty: every job)"),
    Key("SECONDS", "float", default=30.0, help="duration of sleeps"),
    Key("SIZE", "int", default=1000, help="lines printed / characters returned"),
]


def _note(run_dirs, name, value):
    """Leave a pid (or value) where the test finds it, atomically."""
    path = os.path.join(run_dirs["log"], name)
    with open(path + ".tmp", "w") as handle:
        handle.write(str(value))
    os.replace(path + ".tmp", path)


@module_runner(version="0.1", file_pattern=["in"], file_ext=[".txt"], numbering_scheme="_0",
               keys=KEYS)
def tp_hostile_runner(input_file_list, run_dirs, file_number_string, config,
                      module_config_sec, w_log):
    opts = config.read_keys(module_config_sec, KEYS)
    number = file_number_string
    action = opts["ACTION"].lower() if (not opts["ON"] or number in opts["ON"]) else "none"
    seconds = opts["SECONDS"]
    log_dir = run_dirs["log"]
    _note(run_dirs, f"worker{number}.pid", os.getpid())
    with open(os.path.join(run_dirs["output"], f"partial{number}.txt"), "w") as out:
        out.write("written before acting\n")
    if action == "system":
        # sh -c; `exec` makes the pid written the sleep's own.
        os.system(f"echo $$ > {log_dir}/child{number}.pid; exec sleep {seconds}")
    elif action == "popen":
        child = subprocess.Popen(["sleep", str(seconds)])
        _note(run_dirs, f"child{number}.pid", child.pid)
        child.wait()
    elif action == "shell_grandchild":
        subprocess.run(["sh", "-c", f"sleep {seconds} & echo $! > {log_dir}/child{number}.pid;"
                        " wait"])
    elif action == "orphan":
        # A background child the job does not wait for: it outlives the job.
        subprocess.run(["sh", "-c", f"sleep {seconds} > /dev/null 2>&1 & "
                        f"echo $! > {log_dir}/child{number}.pid"])
    elif action == "exit":
        os._exit(1)
    elif action == "segv":
        ctypes.string_at(0)
    elif action == "print":
        for i in range(opts["SIZE"]):
            print(f"print line {i} of job {number}")
        os.write(2, f"raw fd2 write of job {number}\n".encode())
        os.system(f"echo child echo of job {number}")
    elif action == "big_stdout":
        return "x" * opts["SIZE"] + "THE TAIL", None
    elif action == "reshape":
        raise ValueError("cannot reshape array of size 654840 into shape (1280,1024)")
    elif action == "sleep":
        time.sleep(seconds)
    elif action == "env":
        import numpy  # noqa: F401 - BLAS loaded, so that its thread count is known
        from threadpoolctl import threadpool_info

        blas = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
        _note(run_dirs, f"env{number}.txt", os.environ.get("OMP_NUM_THREADS", "unset"))
        _note(run_dirs, f"blas{number}.txt", max(blas) if blas else "none")
    os.rename(os.path.join(run_dirs["output"], f"partial{number}.txt"),
              os.path.join(run_dirs["output"], f"done{number}.txt"))
    return None, None
