"""Test runner supporting N_SPLIT: each part processes a contiguous slice of the input lines.

Input ``in<num>.txt`` (one object per line). Part ``i`` of ``k`` (``run_dirs["split"]``)
writes its slice, upper-cased, each line followed by a per-object random number, to
``lines<num>.txt`` and its bounds to ``meta<num>.json``;
``combine`` checks that the parts cover every line once, in order, and concatenates them.
Faults for the tests: while the file named by CONTROL exists, each of its lines
``<num>:<part>`` or ``<num>:combine`` makes that part (or that combine, after it wrote half
of its output) raise.
"""

import json
import os

from shapepipe.modules.module_decorator import Key, module_runner
from shapepipe.utils.rng import make_rng

KEYS = [Key("CONTROL", "str", default="", help="fault-injection file (see the docstring)"),
        Key("SEED", "int", default=7, help="seed of the per-object random draw")]


def _faults(path):
    if not path or not os.path.isfile(path):
        return set()
    with open(path) as handle:
        return {line.strip() for line in handle if line.strip()}


def combine(part_dirs, output_dir, file_number_string, w_log):
    """Concatenate the parts of one number, after checking that they tile the input."""
    lines, expected_start, meta = [], 0, None
    for i, directory in enumerate(part_dirs, 1):
        with open(os.path.join(directory, f"meta{file_number_string}.json")) as handle:
            meta = json.load(handle)
        if (meta["part"], meta["k"], meta["start"]) != (i, len(part_dirs), expected_start):
            raise ValueError(f"part {i}: unexpected bounds {meta}")
        expected_start = meta["stop"]
        with open(os.path.join(directory, f"lines{file_number_string}.txt")) as handle:
            lines.extend(handle.read().splitlines())
    if expected_start != meta["n_total"]:
        raise ValueError(f"the parts cover {expected_start} of {meta['n_total']} lines")
    out = os.path.join(output_dir, f"lines{file_number_string}.txt")
    with open(out, "w") as handle:
        handle.write("".join(line + "\n" for line in lines[: len(lines) // 2]))
        if f"{file_number_string}:combine" in _faults(meta["control"]):
            raise RuntimeError(f"asked to fail the combine of {file_number_string}")
        handle.write("".join(line + "\n" for line in lines[len(lines) // 2:]))
    w_log.info("combined %d lines from %d parts", len(lines), len(part_dirs))


@module_runner(version="0.1", file_pattern=["in"], file_ext=[".txt"], numbering_scheme="_0",
               keys=KEYS, combine=combine)
def tp_split_runner(input_file_list, run_dirs, file_number_string, config, module_config_sec,
                    w_log):
    opts = config.read_keys(module_config_sec, KEYS)
    control = opts["CONTROL"]
    part, k = run_dirs.get("split", (1, 1))
    w_log.info("split %s", (part, k))
    if f"{file_number_string}:{part}" in _faults(control):
        raise RuntimeError(f"asked to fail part {part} of {file_number_string}")
    with open(input_file_list[0]) as handle:
        objects = handle.read().splitlines()
    # Part i of k: the i-th contiguous slice (as ngmix_runner splits its objects).
    start, stop = (len(objects) * (part - 1)) // k, (len(objects) * part) // k
    with open(os.path.join(run_dirs["output"], f"lines{file_number_string}.txt"), "w") as out:
        # A per-object draw (seeded by the object, not the job): the same for any split.
        out.write("".join(f"{objects[i].upper()} {make_rng(opts['SEED'], i).random():.17g}\n"
                          for i in range(start, stop)))
    if k > 1:
        with open(os.path.join(run_dirs["output"], f"meta{file_number_string}.json"), "w") as out:
            json.dump({"part": part, "k": k, "start": start, "stop": stop,
                       "n_total": len(objects), "control": control}, out)
    return None, None
