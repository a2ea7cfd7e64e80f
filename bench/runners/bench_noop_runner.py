"""Benchmark runner: reads its small input file and writes one output (no science)."""

import os

from shapepipe.modules.module_decorator import module_runner


@module_runner(version="1.0", file_pattern=["in"], file_ext=[".txt"], numbering_scheme="_0",
               keys=[])
def bench_noop_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                      w_log):
    with open(input_file_list[0], "rb") as handle:
        data = handle.read()
    with open(os.path.join(run_dirs["output"], f"out{file_number_string}.txt"), "wb") as handle:
        handle.write(data)
    return None, None
