"""Example runner for module authors: pure Python, one job per number.

Reads ``numbers<num>.txt`` and ``letters<num>.txt`` and writes ``pyex_output<num>.cat``
holding the MESSAGE key followed by the two inputs' contents. Copy it to a directory of
your own, name that directory in ``[EXECUTION] MODULE_PATH``, and edit it.
"""

import os

from shapepipe.modules.module_decorator import Key, module_runner

KEYS = [Key("MESSAGE", "str", help="text written at the top of each output file")]


@module_runner(
    version="1.1",
    file_pattern=["numbers", "letters"],
    file_ext=[".txt", ".txt"],
    depends=["numpy"],
    run_method="parallel",
    keys=KEYS,
)
def python_example_runner(
    input_file_list, run_dirs, file_number_string, config, module_config_sec, w_log
):
    """Concatenate MESSAGE and the two input files."""
    message = config.read_keys(module_config_sec, KEYS)["MESSAGE"]
    parts = [message]
    for path in input_file_list:
        with open(path, encoding="utf-8") as handle:
            parts.append(handle.read().rstrip("\n"))
    output = os.path.join(run_dirs["output"], f"pyex_output{file_number_string}.cat")
    with open(output, "w", encoding="utf-8") as handle:
        handle.write("\n".join(parts) + "\n")
    w_log.info("wrote %s", output)
    return None, None
