"""Discovery of runners: built-in, ``[EXECUTION] MODULE_PATH`` directories, entry points.

A runner is found by name. Built-in runners are the ``*_runner.py`` files of
:mod:`shapepipe.modules`; a directory of ``MODULE_PATH`` may hold ``<name>.py`` files (or
packages ``<name>/__init__.py``) defining a function ``<name>``; installed packages can
register runners in the ``shapepipe.modules`` entry-point group (``name = pkg.mod:func``
or ``name = pkg.mod``, the function then being ``pkg.mod.<name>``).
Precedence: MODULE_PATH, then entry points, then built-in, so users can override.
"""

import importlib
import importlib.metadata
import importlib.util
import os
import re
import stat
import sys

from shapepipe.pipeline.errors import ConfigError

ENTRY_POINT_GROUP = "shapepipe.modules"

#: Old names accepted for compatibility with existing ShapePipe configs.
ALIASES = {
    "psfexinterp_runner": "psfex_interp_runner",
    "make_cat_runner": "make_catalog_runner",
    "vignetmaker_runner2": "vignetmaker_runner",
}

_BUILTIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "modules")
_RUN_SUFFIX = re.compile(r"^(?P<base>.+)_run_(?P<n>\d+)$")


def canonical_name(name):
    """Map an old module name to its current one (lower-case)."""
    name = name.strip().lower()
    return ALIASES.get(name, name)


def split_run_suffix(name):
    """Split ``name_run_N`` into ``(name, N)``; ``(name, None)`` without suffix."""
    match = _RUN_SUFFIX.match(name)
    if match:
        return match.group("base"), int(match.group("n"))
    return name, None


class ModuleRegistry:
    """Finds and loads runner functions by name.

    Parameters
    ----------
    module_paths : list of str
        Extra directories (``[EXECUTION] MODULE_PATH``).
    config_path : str
        Config file name, for error messages.
    """

    def __init__(self, module_paths=(), config_path="<config>", warn=None):
        self.module_paths = [os.path.abspath(os.path.expanduser(p)) for p in module_paths]
        self.config_path = config_path
        self.warn = warn  # called with a message; None (worker processes): no warnings
        self._warned = set()
        self._cache = {}
        for path in self.module_paths:
            if not os.path.isdir(path):
                raise ConfigError(
                    f"{config_path} [EXECUTION] MODULE_PATH = {path!r}: directory not found"
                )

    # -- listing ------------------------------------------------------------------------
    def builtin_names(self):
        """Names of the built-in runners."""
        return sorted(
            name[:-3]
            for name in os.listdir(_BUILTIN_DIR)
            if name.endswith("_runner.py") and not name.startswith("_")
        )

    def path_names(self):
        """Runner names found in MODULE_PATH directories, with their directory."""
        found = {}
        for path in self.module_paths:
            for entry in sorted(os.listdir(path)):
                full = os.path.join(path, entry)
                if entry.endswith(".py") and not entry.startswith("_"):
                    found.setdefault(entry[:-3], path)
                elif os.path.isfile(os.path.join(full, "__init__.py")):
                    found.setdefault(entry, path)
        return found

    @staticmethod
    def entry_points():
        """Entry points of the ``shapepipe.modules`` group, by name."""
        try:
            eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        except TypeError:  # Python < 3.10 API
            eps = importlib.metadata.entry_points().get(ENTRY_POINT_GROUP, [])
        return {ep.name.lower(): ep for ep in eps}

    def all_names(self):
        """Every runner name available, with its origin, as ``{name: origin}``."""
        names = {name: "built-in" for name in self.builtin_names()}
        for name, ep in self.entry_points().items():
            names[name] = f"entry point {ep.value}"
        for name, path in self.path_names().items():
            names[name] = f"MODULE_PATH {path}"
        return dict(sorted(names.items()))

    # -- loading ------------------------------------------------------------------------
    def load(self, name):
        """Return the runner function called ``name`` (aliases resolved).

        Raises
        ------
        ConfigError
            If no runner has that name or its file cannot be imported.
        """
        name = canonical_name(name)
        if name in self._cache:
            return self._cache[name]
        where = f"{self.config_path} [EXECUTION] MODULE = {name!r}"
        runner = None
        paths = self.path_names()
        if name in paths:
            runner = self._load_from_path(name, paths[name], where)
        elif name in self.entry_points():
            runner = self._load_entry_point(name, self.entry_points()[name], where)
        elif name in self.builtin_names():
            runner = self._import_attr(f"shapepipe.modules.{name}", name, where)
        else:
            raise ConfigError(
                f"{where}: unknown module (see shapepipe_run --list-modules"
                + (", or add its directory to MODULE_PATH)" if not self.module_paths else ")")
            )
        decorated = getattr(runner, "is_shapepipe_runner", False) or hasattr(runner, "file_pattern")
        if not decorated:
            raise ConfigError(f"{where}: {name} is not decorated with @module_runner")
        _normalise(runner)
        runner.module_name = name
        self._cache[name] = runner
        return runner

    @staticmethod
    def _import_attr(module_name, attr, where):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"{where}: cannot import {module_name}: {exc}") from None
        if not hasattr(module, attr):
            raise ConfigError(f"{where}: {module_name} defines no function {attr}")
        return getattr(module, attr)

    def _load_from_path(self, name, path, where):
        """Load ``<path>/<name>.py`` (or the package ``<path>/<name>/``) by its file.

        The directory is never put ahead of the installed packages on ``sys.path``: a
        ``numpy.py`` or ``sqlitedict.py`` lying next to a runner must not replace the real
        package (and run). It is appended at the end, so that a runner can still import a
        science package of its own that lives next to it.
        """
        if self.warn and path not in self._warned:
            self._warned.add(path)
            _warn_if_writable_by_others(path, where, self.warn)
        if path not in sys.path:
            sys.path.append(path)
        package = os.path.join(path, name, "__init__.py")
        is_package = os.path.isfile(package)
        location = package if is_package else os.path.join(path, name + ".py")
        if self.warn:
            _warn_if_writable_by_others(location, where, self.warn)
        module_name = f"shapepipe_module_path_{name}"  # never the name of an installed module
        if module_name in sys.modules:
            module = sys.modules[module_name]
        else:
            spec = importlib.util.spec_from_file_location(
                module_name, location,
                submodule_search_locations=[os.path.dirname(location)] if is_package else None)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # a broken runner file: report, do not crash
                del sys.modules[module_name]
                raise ConfigError(f"{where}: cannot import {location}: "
                                  f"{type(exc).__name__}: {exc}") from None
        if not hasattr(module, name):
            raise ConfigError(f"{where}: {location} defines no function {name}")
        return getattr(module, name)

    def _load_entry_point(self, name, ep, where):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not look like a missing one
            raise ConfigError(f"{where}: cannot load entry point {ep.value}: {exc}") from None
        if callable(obj):
            return obj
        if hasattr(obj, name):
            return getattr(obj, name)
        raise ConfigError(f"{where}: entry point {ep.value} has no function {name}")


def _warn_if_writable_by_others(path, where, warn):
    """Warn when other users could change the code a run would execute."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & stat.S_IWOTH:
        warn(f"{where}: MODULE_PATH {path} is writable by other users: anyone on this "
             "machine could change the code this run executes")


def _normalise(runner):
    """Give runners written for ShapePipe's decorator the attributes the framework reads."""
    for attr, default in (
        ("input_module", []),
        ("version", "0.0"),
        ("file_pattern", []),
        ("file_ext", []),
        ("depends", []),
        ("executes", []),
        ("numbering_scheme", None),
        ("run_method", "parallel"),
        ("keys", None),
        ("validate_config", None),
        ("combine", None),
    ):
        if not hasattr(runner, attr):
            setattr(runner, attr, default)
    for attr in ("input_module", "file_pattern", "file_ext", "depends", "executes"):
        value = getattr(runner, attr)
        if value is None:
            setattr(runner, attr, [])
        elif isinstance(value, str):
            setattr(runner, attr, [value] if value else [])


def check_requirements(runner, where):
    """Check that the packages a runner depends on and the programs it executes exist.

    Raises
    ------
    ConfigError
        Naming the first missing package or program.
    """
    import shutil

    for package in runner.depends:
        top = package.split(".")[0]
        if importlib.util.find_spec(top) is None:
            raise ConfigError(
                f"{where}: {runner.module_name} needs the Python package {package!r}, "
                "which is not installed"
            )
    for program in runner.executes:
        exe = program.split()[0]
        if shutil.which(exe) is None:
            raise ConfigError(
                f"{where}: {runner.module_name} executes {exe!r}, which is not found on PATH"
            )
