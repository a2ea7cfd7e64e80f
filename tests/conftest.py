"""Shared helpers for the tests: write a config, run the pipeline in-process."""

import glob
import json
import os
import textwrap

import pytest

from shapepipe.run import main

PLUGIN_DIR = os.path.join(os.path.dirname(__file__), "plugins")


class PipelineHelper:
    """Runs ``shapepipe_run`` on configs written into a temporary directory."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.out = tmp_path / "out"
        self.data = tmp_path / "data"
        self.data.mkdir()

    def make_inputs(self, numbers, pattern="in", ext=".txt", directory=None):
        """Create small text inputs ``<pattern><number><ext>``."""
        directory = directory or self.data
        os.makedirs(directory, exist_ok=True)
        for number in numbers:
            with open(os.path.join(directory, f"{pattern}{number}{ext}"), "w") as handle:
                handle.write(f"{pattern}{number}\n")
        return directory

    def config(self, body, name="config.ini", run_name="test", workers=2, modules=None,
               input_dir=None):
        """Write a config; ``body``'s sections are merged into the default ones.

        A key of ``body`` replaces the default of the same section and name (so tests can
        set ``[JOB] TIMEOUT`` or ``[EXECUTION] MODULE_PATH``); other sections are appended.
        """
        sections = {
            "DEFAULT": {"RUN_NAME": run_name},
            "EXECUTION": {"MODULE": modules or "tp_copy_runner", "MODULE_PATH": PLUGIN_DIR},
            "FILE": {"INPUT_DIR": str(input_dir or self.data), "OUTPUT_DIR": str(self.out)},
            "JOB": {"SMP_BATCH_SIZE": str(workers)},
        }
        current = None
        for line in textwrap.dedent(body).splitlines():
            stripped = line.strip()
            if stripped.startswith("[") and stripped.endswith("]"):
                current = sections.setdefault(stripped[1:-1], {})
            elif stripped and not stripped.startswith(("#", ";")):
                if current is None or "=" not in stripped:
                    raise ValueError(f"test config body: cannot place line {line!r}")
                key, _, value = stripped.partition("=")
                current[key.strip().upper()] = value.strip()
        text = "".join(f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
                       for section, keys in sections.items())
        path = self.tmp / name
        path.write_text(text)
        return str(path)

    def run(self, path, *extra):
        """Run the pipeline; return the exit code."""
        return main(["-c", path, "-q", *extra])

    def runs(self, run_name="test"):
        """Run directories of a run name, oldest first."""
        return sorted(glob.glob(str(self.out / f"{run_name}_*")), key=os.path.getmtime)

    def summary(self, run_dir=None):
        """The summary.json of a run (the newest by default)."""
        run_dir = run_dir or self.runs()[-1]
        with open(os.path.join(run_dir, "summary.json")) as handle:
            return json.load(handle)

    def outputs(self, module="tp_copy_runner", run_dir=None):
        """Names of a module's output files."""
        run_dir = run_dir or self.runs()[-1]
        return sorted(os.listdir(os.path.join(run_dir, module, "output")))


@pytest.fixture
def sp(tmp_path):
    """A :class:`PipelineHelper` in a fresh temporary directory."""
    return PipelineHelper(tmp_path)
