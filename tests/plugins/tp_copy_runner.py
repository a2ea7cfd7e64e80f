"""Test runner (found through MODULE_PATH): copies its inputs, can fail, sleep or hang."""

import os
import signal
import time

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.pipeline.execute import execute

KEYS = [
    Key("FAIL_ON", "list", default=[], help="job numbers that raise"),
    Key("SLEEP", "float", default=0.0, help="seconds each job sleeps"),
    Key("CHILD_SLEEP", "float", default=0.0, help="seconds of an external `sleep` child"),
    Key("BLOCK_ALARM", "bool", default=False, help="ignore the timeout alarm (stuck job)"),
    Key("EXIT_CODE_ON", "list", default=[], help="job numbers whose external program fails"),
]


@module_runner(version="0.3", file_pattern=["in"], file_ext=[".txt"], numbering_scheme="_0",
               executes=["sleep"], keys=KEYS)
def tp_copy_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                   w_log):
    opts = config.read_keys(module_config_sec, KEYS)
    number = file_number_string
    with open(os.path.join(run_dirs["log"], f"rank{number}.txt"), "w") as handle:
        handle.write(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "-")))
    with open(os.path.join(run_dirs["output"], f"copy{number}.txt"), "w") as out:
        for path in input_file_list:
            with open(path) as handle:
                out.write(handle.read())
        out.write(f"section={module_config_sec}\n")
    if opts["CHILD_SLEEP"]:
        with open(os.path.join(run_dirs["log"], f"child{number}.pid"), "w") as handle:
            handle.write(str(os.getpid()))
        execute(["sh", "-c", f"echo $$ > {run_dirs['log']}/sleep{number}.pid; "
                 f"exec sleep {opts['CHILD_SLEEP']}"])
    if number in opts["EXIT_CODE_ON"]:
        execute(["sh", "-c", "echo broken input >&2; exit 3"])
    if opts["BLOCK_ALARM"]:
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])
        time.sleep(60)
    if opts["SLEEP"]:
        time.sleep(opts["SLEEP"])
    if number in opts["FAIL_ON"]:
        raise ValueError(f"asked to fail on {number}")
    return "copied", None
