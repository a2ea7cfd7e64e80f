"""Example runner for module authors: a serial runner, called once with every file.

ShapePipe's example: takes the example inputs and the ``pyex_output`` files of
``python_example_runner`` and writes the contents of every input, in number order, line
breaks removed, into one file. The file keeps ShapePipe 1.0.2's name,
``serial_outputfile_number_string.cat`` (the name is literal there), so that what its
example config produces is found under the same name here.
"""

import os

from shapepipe.modules.module_decorator import module_runner

OUTPUT_NAME = "serial_outputfile_number_string.cat"


@module_runner(
    version="1.1",
    input_module="python_example_runner",
    file_pattern=["numbers", "letters", "pyex_output"],
    file_ext=[".txt", ".txt", ".cat"],
    depends="numpy",
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
                chunks.append(handle.read().replace("\n", ""))
    content = "".join(chunks)
    output = os.path.join(run_dirs["output"], OUTPUT_NAME)
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(content)
    w_log.info("concatenated %d numbers into %s", len(input_file_list), output)
    return content, None
