"""Test serial runner: lists every input it received."""

import os

from shapepipe.modules.module_decorator import module_runner


@module_runner(version="0.1", input_module="tp_copy_runner", file_pattern=["copy"],
               file_ext=[".txt"], numbering_scheme="_0", run_method="serial")
def tp_serial_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                     w_log):
    with open(os.path.join(run_dirs["log"], "rank_serial.txt"), "w") as handle:
        handle.write(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMI_RANK", "-")))
    with open(os.path.join(run_dirs["output"], "all.txt"), "w") as out:
        for files in input_file_list:
            out.write(",".join(os.path.basename(f) for f in files) + "\n")
    return None, None
