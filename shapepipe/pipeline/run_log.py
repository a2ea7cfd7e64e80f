"""The run manifest ``OUTPUT_DIR/shapepipe_runs.jsonl`` and ``last:``/``all:``/``<run>:`` lookups.

One JSON object per run: run directory (absolute), run name, config path and hash,
modules (output directory names, in order), per-module status (``ok``, ``partial``,
``failed``, ``running``), start and end times. The file is rewritten atomically under a
lock each time a run updates its entry, so concurrent runs in one OUTPUT_DIR are safe.
"""

import contextlib
import fcntl
import json
import logging
import os

from shapepipe.pipeline.errors import ConfigError
from shapepipe.pipeline.file_handler import natural_key
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


def _read_lines(path):
    """``(entries, raw_lines)``: parsed entries, and every line as read, corrupt ones included.

    A corrupt line (a run killed by a full disk, a hand edit) is skipped with one warning
    per line and process; it must not stop every later run in the OUTPUT_DIR.
    """
    if not os.path.isfile(path):
        return [], []
    entries, raw = [], []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            raw.append(line.rstrip("\n"))
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError("not an object")
            except ValueError:
                if (path, number) not in _WARNED:
                    _WARNED.add((path, number))
                    logging.getLogger("shapepipe").warning(
                        "%s: line %d is not a valid run entry; skipped", path, number)
                raw[-1] = (None, raw[-1])
                continue
            entries.append(entry)
            raw[-1] = (entry, raw[-1])
    return entries, raw


_WARNED = set()


def read_manifest(path):
    """Entries of a manifest file, oldest first (empty if the file does not exist)."""
    return _read_lines(path)[0]


def update_manifest(path, entry):
    """Insert or replace (by ``run_dir``) one run's entry, atomically.

    An entry keeps its place: the manifest lists runs in the order they were started
    (``--resume`` picks the newest run by it). Corrupt lines are kept as they are.

    Parameters
    ----------
    path : str
        Manifest file.
    entry : dict
        The run's entry; must contain ``run_dir``.
    """
    with _locked(path):
        lines, replaced = [], False
        for parsed, raw in _read_lines(path)[1]:
            if parsed is not None and parsed.get("run_dir") == entry["run_dir"]:
                if not replaced:
                    lines.append(json.dumps(entry, sort_keys=True))
                    replaced = True
                continue
            lines.append(raw)
        if not replaced:
            lines.append(json.dumps(entry, sort_keys=True))
        with atomic_path(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as handle:
                for line in lines:
                    handle.write(line + "\n")


def manifest_entry(path, run_dir):
    """The manifest entry of a run directory, or None."""
    run_dir = os.path.abspath(run_dir)
    for entry in reversed(read_manifest(path)):
        if os.path.abspath(entry.get("run_dir", "")) == run_dir:
            return entry
    return None


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
        candidates.append(os.path.abspath(os.path.join(self.output_dir, run)))
        entries = read_manifest(self.path)
        for run_dir in candidates:
            if not os.path.isdir(run_dir):
                continue
            # The run's recorded module order; a directory the manifest does not know
            # (copied from elsewhere) in natural order (x_run_10 after x_run_9).
            recorded = [e for e in entries if os.path.abspath(e.get("run_dir", "")) == run_dir]
            if recorded:
                return _pick_module_dir(recorded[-1], module)
            names = sorted((n for n in os.listdir(run_dir)
                            if os.path.isdir(os.path.join(run_dir, n, "output"))),
                           key=natural_key)
            name = latest_match(names, module)
            if name:
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


def split_subdir(module):
    """``setools_runner/output/mask`` -> (``setools_runner``, ``mask``)."""
    module, _, subdir = module.strip().partition("/")
    subdir = subdir.strip("/")
    if subdir == "output" or subdir.startswith("output/"):
        subdir = subdir[len("output"):].strip("/")
    return module, subdir


def with_subdirs(directory, subdir, expand=True):
    """A module output directory, narrowed to ``subdir`` or followed by its sub-directories.

    ``@<name>`` placeholders (planning: the module has not run yet) are kept as they are.
    """
    if subdir:
        return [directory + "/" + subdir if directory.startswith("@")
                else os.path.join(directory, subdir)]
    if not expand or directory.startswith("@") or not os.path.isdir(directory):
        return [directory]
    subdirs = sorted(e.path for e in os.scandir(directory)
                     if e.is_dir() and not e.name.startswith("."))
    return [directory, *subdirs]


def latest_match(dir_names, module):
    """The last name in ``dir_names`` (run order) that answers to ``module``, or None.

    ``x`` answers to its latest occurrence, ``x_run_<N>`` only to occurrence N (compared
    as numbers: ``x_run_10`` is not ``x_run_1``, and comes after ``x_run_9``).
    """
    for name in reversed(list(dir_names)):
        if _module_matches(name, module):
            return name
    return None


def resolve_reference(spec, run_log, earlier=(), run_dir=None, expand_subdirs=False,
                      module_ref=False):
    """Resolve one directory reference: THE rule, for the pipeline and for runners alike.

    Parameters
    ----------
    spec : str
        A directory path; ``last:<module>`` (an earlier occurrence in this run, else the
        newest run where it succeeded); ``all:<module>`` (every successful earlier run, newest
        first); ``<run>:<module>`` (that run: name, directory name or path); or a bare module
        name (as ``last:``). Module references may name a sub-directory of the output
        (``last:setools_runner/rand_split``).
    run_log : RunLog
        The manifest of the OUTPUT_DIR.
    earlier : sequence of str
        Output directory names of the module occurrences that ran earlier in this run, in
        run order.
    run_dir : str, optional
        This run's directory; None while planning, when an earlier occurrence of this run
        is returned as the placeholder ``@<name>``.
    expand_subdirs : bool
        Follow a module's output directory by its immediate sub-directories (input binding:
        runners such as setools write into some).
    module_ref : bool
        ``spec`` is a module name (INPUT_MODULE, a runner's ``input_module``), never a path.

    Returns
    -------
    list of str
        Directories (several only for ``all:`` or with ``expand_subdirs``).

    Raises
    ------
    ConfigError
        If nothing matches; the message says what was looked for (the caller adds where
        the value came from).
    """
    if module_ref:
        kind, run, module = "last", None, spec.strip()
    else:
        kind, run, module = parse_dir_spec(spec)
        if kind == "path":
            path = os.path.abspath(os.path.expanduser(spec))
            if os.path.isdir(path):
                return [path]
            if spec.strip().startswith(("/", ".", "~")):
                raise ConfigError("directory not found")
            kind, module = "bare", spec.strip()  # a module of this run, else last:
    module, subdir = split_subdir(module)
    found = []
    if kind in ("last", "bare"):
        name = latest_match(earlier, module)
        if name is not None:
            found = [f"@{name}" if run_dir is None else os.path.join(run_dir, name, "output")]
        elif run_log.last(module):
            found = [run_log.last(module)]
    elif kind == "all":
        found = run_log.all(module)
    else:
        directory = run_log.in_run(run, module)
        found = [directory] if directory else []
    if not found:
        if kind == "bare":
            raise ConfigError(f"not a directory, and no module {module!r} ran earlier in this "
                              f"run or has a successful run recorded in {run_log.path}")
        if module_ref:
            raise ConfigError(f"{module} did not run earlier in this run and no successful "
                              f"run of it is recorded in {run_log.path}")
        raise ConfigError(f"no successful run of {module} found in {run_log.path}")
    dirs = []
    for directory in found:
        dirs.extend(with_subdirs(directory, subdir, expand_subdirs))
    return dirs


def resolve_module_dir(spec, run_dirs):
    """Resolve a directory reference from inside a runner (same rules as INPUT_DIR).

    Parameters
    ----------
    spec : str
        ``last:<module>``, ``all:<module>``, ``<run>:<module>``, a bare module name (its
        latest output earlier in this run, else ``last:``), or a directory path.
    run_dirs : dict
        The ``run_dirs`` the runner received (uses ``run``, ``run_log`` and
        ``module_output``).

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
    try:
        return resolve_reference(spec, run_log, earlier_in_run(run_dirs), run_dir)
    except ConfigError as exc:
        raise ConfigError(f"{spec!r}: {exc}") from None


def earlier_in_run(run_dirs):
    """Output directory names of the modules that ran before the calling runner, in order.

    Taken from this run's manifest entry (the module order of the config); a run without
    one (a runner called by hand) falls back to the run directory's listing in natural
    order, so that ``x_run_10`` comes after ``x_run_9``.
    """
    run_dir = os.path.abspath(run_dirs["run"])
    own = run_dirs.get("module_output")
    own = os.path.basename(os.path.dirname(os.path.abspath(own))) if own else None
    names = None
    for entry in reversed(read_manifest(run_dirs["run_log"])):
        if os.path.abspath(entry.get("run_dir", "")) == run_dir:
            names = list(entry.get("modules", []))
            break
    if names is None:
        names = sorted((e.name for e in os.scandir(run_dir)
                        if e.name != own and os.path.isdir(os.path.join(e.path, "output"))),
                       key=natural_key) if os.path.isdir(run_dir) else []
    elif own in names:
        names = names[: names.index(own)]
    return [n for n in names if os.path.isdir(os.path.join(run_dir, n, "output"))]
