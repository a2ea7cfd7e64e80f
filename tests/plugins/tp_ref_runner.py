"""Test runner: resolves a module reference from inside a job, as science runners do."""

import os

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.pipeline.run_log import resolve_module_dir

KEYS = [Key("REF", "str", help="module reference resolved by the job")]


@module_runner(version="0.1", file_pattern=["in"], file_ext=[".txt"], numbering_scheme="_0",
               keys=KEYS)
def tp_ref_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                  w_log):
    ref = config.get(module_config_sec, "REF")
    dirs = resolve_module_dir(ref, run_dirs)
    with open(os.path.join(run_dirs["output"], f"ref{file_number_string}.txt"), "w") as out:
        out.write("\n".join(dirs) + "\n")
    return None, None
