"""Benchmark runner: a fixed amount of single-threaded numpy work per job."""

import os

import numpy as np

from shapepipe.modules.module_decorator import Key, module_runner

KEYS = [Key("ITERATIONS", "int", help="number of work units per job")]


def work(iterations):
    """Elementwise numpy work (no BLAS threads), deterministic."""
    values = np.linspace(0.0, 1.0, 200_000)
    total = 0.0
    for _ in range(iterations):
        total += float(np.sin(values * 3.1).sum() + np.sqrt(values + 1.0).sum())
    return total


@module_runner(version="1.0", file_pattern=["in"], file_ext=[".txt"], numbering_scheme="_0",
               keys=KEYS)
def bench_cpu_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                     w_log):
    total = work(config.read_keys(module_config_sec, KEYS)["ITERATIONS"])
    with open(os.path.join(run_dirs["output"], f"out{file_number_string}.txt"), "w") as handle:
        handle.write(f"{total!r}\n")
    return None, None
