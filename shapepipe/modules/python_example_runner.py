"""Example runner for module authors: pure Python, one job per number.

ShapePipe's example, with its keys and output: reads ``numbers<num>.txt`` and
``letters<num>.txt`` and writes ``pyex_output<num>.cat``, the MESSAGE key followed by
``<numbers content> and <letters content>`` (each file's line breaks removed, no final line
break), and returns that content as the job's stdout. Copy it to a directory of your own,
name that directory in ``[EXECUTION] MODULE_PATH``, and edit it.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner

KEYS = [Key("MESSAGE", "str", help="text written at the start of each output file")]


def _content(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read().replace("\n", "")


@module_runner(
    version="1.1",
    file_pattern=["numbers", "letters"],
    file_ext=".txt",
    depends=["numpy"],
    run_method="parallel",
    keys=KEYS,
)
def python_example_runner(
    input_file_list, run_dirs, file_number_string, config, module_config_sec, w_log
):
    """Write MESSAGE and the contents of the two input files."""
    message = config.read_keys(module_config_sec, KEYS)["MESSAGE"]
    if len(input_file_list) != 2:
        raise ValueError(f"[{module_config_sec}] expected two input files per job (two "
                         f"FILE_PATTERN items), got {len(input_file_list)}")
    content = " and ".join(_content(path) for path in input_file_list)
    output = os.path.join(run_dirs["output"], f"pyex_output{file_number_string}.cat")
    with open(output, "w", encoding="utf-8") as handle:
        handle.write(message + content)
    w_log.info("wrote %s", output)
    return content, None
