"""The run manifest ``OUTPUT_DIR/shapepipe_runs.jsonl`` and ``last:``/``all:``/``<run>:`` lookups.

One JSON object per run: run directory (absolute), run name, config path and hash,
modules (output directory names, in order), per-module status (``ok``, ``partial``,
``failed``, ``running``), start and end times. The file is rewritten atomically under a
lock each time a run updates its entry, so concurrent runs in one OUTPUT_DIR are safe.
"""

import contextlib
import fcntl
import json
import os

from shapepipe.pipeline.errors import ConfigError
from shapepipe.pipeline.module_registry import canonical_name, split_run_suffix
from shapepipe.utils.atomic import atomic_path

OK_STATUSES = ("ok", "partial")


@contextlib.contextmanager
def _locked(path):
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_manifest(path):
    """Entries of a manifest file, oldest first (empty if the file does not exist)."""
    if not os.path.isfile(path):
        return []
    entries = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                raise ConfigError(f"{path}: line {number} is not valid JSON") from None
    return entries


def update_manifest(path, entry):
    """Insert or replace (by ``run_dir``) one run's entry, atomically.

    Parameters
    ----------
    path : str
        Manifest file.
    entry : dict
        The run's entry; must contain ``run_dir``.
    """
    with _locked(path):
        entries = [e for e in read_manifest(path) if e.get("run_dir") != entry["run_dir"]]
        entries.append(entry)
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                for item in entries:
                    handle.write(json.dumps(item, sort_keys=True) + "\n")


def _module_matches(dir_name, wanted):
    """Whether a module output directory name answers to a module reference.

    ``sextractor_runner`` matches ``sextractor_runner`` and ``sextractor_runner_run_N``;
    ``sextractor_runner_run_2`` matches only itself.
    """
    base, n = split_run_suffix(dir_name)
    wanted_base, wanted_n = split_run_suffix(wanted)
    if canonical_name(base) != canonical_name(wanted_base):
        return False
    return wanted_n is None or (n or 1) == wanted_n


def _pick_module_dir(entry, module):
    """The output dir of ``module`` in a manifest entry (its last matching occurrence)."""
    status = entry.get("status", {})
    for dir_name in reversed(entry.get("modules", [])):
        if _module_matches(dir_name, module) and status.get(dir_name) in OK_STATUSES:
            return os.path.join(entry["run_dir"], dir_name, "output")
    return None


class RunLog:
    """Resolves module references against the manifest of an OUTPUT_DIR.

    Parameters
    ----------
    manifest_path : str
        ``OUTPUT_DIR/<RUN_LOG_NAME>.jsonl``.
    current_run_dir : str, optional
        The run being executed (ignored by ``last:``/``all:``: earlier occurrences in the
        current run are resolved by the pipeline itself).
    """

    def __init__(self, manifest_path, current_run_dir=None):
        self.path = manifest_path
        self.output_dir = os.path.dirname(os.path.abspath(manifest_path))
        self.current_run_dir = current_run_dir

    def _entries(self):
        return [
            e for e in read_manifest(self.path)
            if os.path.abspath(e.get("run_dir", "")) != os.path.abspath(self.current_run_dir or "")
        ]

    def last(self, module):
        """Output dir of ``module`` in the newest run where it succeeded (fully or partly)."""
        for entry in reversed(self._entries()):
            found = _pick_module_dir(entry, module)
            if found:
                return found
        return None

    def all(self, module):
        """Output dirs of every successful run of ``module``, newest first."""
        found = []
        for entry in reversed(self._entries()):
            directory = _pick_module_dir(entry, module)
            if directory:
                found.append(directory)
        return found

    def in_run(self, run, module):
        """Output dir of ``module`` in a given run (name, directory name or path)."""
        candidates = []
        if os.path.isdir(run):
            candidates.append(os.path.abspath(run))
        candidates.append(os.path.join(self.output_dir, run))
        for run_dir in candidates:
            if os.path.isdir(run_dir):
                for name in sorted(os.listdir(run_dir), reverse=True):
                    if os.path.isdir(os.path.join(run_dir, name, "output")) and _module_matches(
                        name, module
                    ):
                        return os.path.join(run_dir, name, "output")
        # A RUN_NAME: the newest run of that name.
        for entry in reversed(self._entries()):
            if entry.get("run_name") == run:
                found = _pick_module_dir(entry, module)
                if found:
                    return found
        return None


def parse_dir_spec(spec):
    """Split an INPUT_DIR item into ``(kind, run, module)``.

    ``kind`` is ``path``, ``last``, ``all``, ``run`` or ``module``; parsed by prefix, never
    by substring (a path containing ``last`` is a path).
    """
    spec = spec.strip()
    low = spec.lower()
    if low.startswith("last:"):
        return "last", None, spec[5:].strip()
    if low.startswith("all:"):
        return "all", None, spec[4:].strip()
    if ":" in spec and not os.path.exists(spec):
        run, module = spec.rsplit(":", 1)
        return "run", run.strip(), module.strip()
    return "path", None, spec


def resolve_module_dir(spec, run_dirs):
    """Resolve a directory reference from inside a runner.

    Parameters
    ----------
    spec : str
        ``last:<module>``, ``all:<module>``, ``<run>:<module>``, a bare module name (its
        output earlier in this run, else ``last:``), or a directory path.
    run_dirs : dict
        The ``run_dirs`` the runner received (uses ``run`` and ``run_log``).

    Returns
    -------
    list of str
        Output directories (one, except for ``all:``).

    Raises
    ------
    ConfigError
        If the reference cannot be resolved.
    """
    run_dir = run_dirs["run"]
    run_log = RunLog(run_dirs["run_log"], current_run_dir=run_dir)
    kind, run, module = parse_dir_spec(spec)
    if kind == "path":
        if os.path.isdir(spec):
            return [os.path.abspath(spec)]
        # A bare module name: this run first (latest occurrence), then last:.
        if os.path.isdir(run_dir):
            for name in sorted(os.listdir(run_dir), reverse=True):
                out = os.path.join(run_dir, name, "output")
                if os.path.isdir(out) and _module_matches(name, spec):
                    return [out]
        found = run_log.last(spec)
        if found:
            return [found]
        raise ConfigError(f"{spec!r}: neither a directory nor a module with a successful run")
    found = {"last": lambda: run_log.last(module),
             "all": lambda: run_log.all(module),
             "run": lambda: run_log.in_run(run, module)}[kind]()
    if not found:
        raise ConfigError(f"{spec!r}: no successful run of {module} found in {run_log.path}")
    return found if isinstance(found, list) else [found]
