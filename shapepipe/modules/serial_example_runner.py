"""Example runner for module authors: a serial runner, called once with every file.

Takes the example inputs and the ``pyex_output`` files of ``python_example_runner`` and
writes ``serial_example_output.cat``, the concatenation of every input in number order.
"""

import os

from shapepipe.modules.module_decorator import module_runner


@module_runner(
    version="1.1",
    input_module="python_example_runner",
    file_pattern=["numbers", "letters", "pyex_output"],
    file_ext=[".txt", ".txt", ".cat"],
    run_method="serial",
    keys=[],
)
def serial_example_runner(
    input_file_list, run_dirs, file_number_string, config, module_config_sec, w_log
):
    """Concatenate every input file of every number into one output."""
    chunks = []
    for files in input_file_list:  # one list per number, in number order
        for path in files:
            with open(path, encoding="utf-8") as handle:
                chunks.append(handle.read().rstrip("\n"))
    output = os.path.join(run_dirs["output"], "serial_example_output.cat")
    with open(output, "w", encoding="utf-8") as handle:
        handle.write("\n".join(chunks) + "\n")
    w_log.info("concatenated %d numbers into %s", len(input_file_list), output)
    return None, None
