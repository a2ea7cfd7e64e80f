"""Example runner for module authors: wraps an external program.

ShapePipe's example: runs ``head`` on each ``pyex_output<num>.cat`` of
``python_example_runner`` and writes its output to ``head_output<num>.txt``. A non-zero
exit code of the program fails the job (with the program's message); a job TIMEOUT kills
the program and its children.
"""

import os

from shapepipe.modules.module_decorator import module_runner
from shapepipe.pipeline.execute import execute


@module_runner(
    version="1.0",
    input_module="python_example_runner",
    file_pattern="pyex_output",
    file_ext=".cat",
    executes=["head"],
    run_method="parallel",
    keys=[],
)
def execute_example_runner(
    input_file_list, run_dirs, file_number_string, config, module_config_sec, w_log
):
    """Write the first lines of the input file, as printed by ``head``."""
    stdout, stderr = execute(["head", input_file_list[0]])
    output = os.path.join(run_dirs["output"], f"head_output{file_number_string}.txt")
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(stdout)
    return stdout, stderr
