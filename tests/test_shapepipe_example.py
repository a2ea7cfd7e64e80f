"""ShapePipe 1.0.2's own example (config, data layout, runners) runs unchanged.

The config below has the keys and values of ShapePipe's ``example/config.ini``: runners
listed twice, ``[PYTHON_EXAMPLE_RUNNER_RUN_1]`` / ``_RUN_2`` sections, INPUT_MODULE naming
``python_example_runner_run_1``, extensions without dots, a ``[WORKER]`` section, paths
relative to the current directory. The data are ShapePipe's example data: numbers 1, 2, 4,
5 (``hold_3.txt`` stands where ``numbers_3.txt`` would be) and letters 1-5.
"""

import os

from shapepipe.run import main

CONFIG = """\
[DEFAULT]
[EXECUTION]
MODULE = python_example_runner, serial_example_runner, execute_example_runner,
         python_example_runner, execute_example_runner
[FILE]
INPUT_DIR = ./example/data/numbers, ./example/data/letters
OUTPUT_DIR = ./example/output
NUMBERING_SCHEME = _0
[JOB]
SMP_BATCH_SIZE = 2
TIMEOUT = 00:01:35
[WORKER]
[PYTHON_EXAMPLE_RUNNER_RUN_1]
MESSAGE = The obtained value is:
[SERIAL_EXAMPLE_RUNNER]
ADD_INPUT_DIR = ./example/data/numbers, ./example/data/letters
[PYTHON_EXAMPLE_RUNNER_RUN_2]
INPUT_MODULE = python_example_runner_run_1, execute_example_runner
FILE_PATTERN = pyex_output, head_output
FILE_EXT = cat, txt

MESSAGE = The new obtained value is:
[EXECUTE_EXAMPLE_RUNNER_RUN_2]
INPUT_MODULE = python_example_runner_run_2
"""

DATA = {"numbers/numbers_1.txt": "1", "numbers/numbers_2.txt": "2",
        "numbers/hold_3.txt": "4", "numbers/numbers_4.txt": "8",
        "numbers/numbers_5.txt": "16", "number_list.txt": "_1\n_2"}
DATA.update({f"letters/letters_{i}.txt": letter for i, letter in enumerate("abcde", 1)})


def test_shapepipe_example_config_gives_shapepipe_directories_and_files(tmp_path,
                                                                          monkeypatch):
    for name, text in DATA.items():
        path = tmp_path / "example" / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    (tmp_path / "example" / "output").mkdir()
    (tmp_path / "example" / "config.ini").write_text(CONFIG)
    monkeypatch.chdir(tmp_path)
    assert main(["-c", "./example/config.ini", "-q"]) == 0
    runs = [d for d in os.listdir("example/output") if d.startswith("shapepipe_run_")]
    assert len(runs) == 1  # default RUN_NAME, with date and time
    run = os.path.join("example", "output", runs[0])
    modules = ["python_example_runner_run_1", "serial_example_runner",
               "execute_example_runner_run_1", "python_example_runner_run_2",
               "execute_example_runner_run_2"]
    assert sorted(d for d in os.listdir(run) if d.endswith(("runner", "_1", "_2"))) == sorted(
        modules)

    def outputs(module):
        out = os.path.join(run, module, "output")
        return {name: open(os.path.join(out, name)).read() for name in os.listdir(out)}

    values = {"_1": ("1", "a"), "_2": ("2", "b"), "_4": ("8", "d"), "_5": ("16", "e")}
    first = {n: f"The obtained value is:{v} and {c}" for n, (v, c) in values.items()}
    assert outputs("python_example_runner_run_1") == {
        f"pyex_output{n}.cat": text for n, text in first.items()}
    assert outputs("execute_example_runner_run_1") == {
        f"head_output{n}.txt": text for n, text in first.items()}
    assert outputs("serial_example_runner") == {"serial_outputfile_number_string.cat": "".join(
        v + c + first[n] for n, (v, c) in values.items())}
    # Run 2 reads run 1's pyex_output and the head_output of execute_example_runner (its
    # latest occurrence before it: run_1).
    second = {n: f"The new obtained value is:{text} and {text}" for n, text in first.items()}
    assert outputs("python_example_runner_run_2") == {
        f"pyex_output{n}.cat": text for n, text in second.items()}
    assert outputs("execute_example_runner_run_2") == {
        f"head_output{n}.txt": text for n, text in second.items()}
    # Number _3 has no numbers file: reported, not run.
    log = open(os.path.join(run, "logs", "shapepipe.log")).read()
    assert "missing input: _3: no numbers" in log
