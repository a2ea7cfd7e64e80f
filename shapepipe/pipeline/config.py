"""INI configuration: parsing, environment expansion, typed getters and key declarations.

Values are data, never code: nothing here evaluates user text. Every error names the
file, the section, the key and the value, and says what was expected.
"""

import configparser
import math
import os
import re

from shapepipe.pipeline.errors import ConfigError

_ENV_RE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|(\$))")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}

REQUIRED = object()

#: Keys the framework reads in any module section (never reported as unknown).
GENERIC_MODULE_KEYS = {
    "INPUT_DIR",
    "ADD_INPUT_DIR",
    "INPUT_MODULE",
    "FILE_PATTERN",
    "FILE_EXT",
    "NUMBERING_SCHEME",
    "NUMBER_LIST",
    "TIMEOUT",
    "SEED",
    "N_SPLIT",
}


def expand_env(value, where):
    """Expand ``$VAR`` and ``${VAR}`` in a string; ``$$`` is a literal dollar.

    Parameters
    ----------
    value : str
        Raw value.
    where : str
        Description of the value's location, used in the error message.

    Returns
    -------
    str
        The expanded value.

    Raises
    ------
    ConfigError
        If a variable is not set in the environment.
    """

    def repl(match):
        if match.group(3):
            return "$"
        name = match.group(1) or match.group(2)
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable ${name} is not set")
        return os.environ[name]

    return _ENV_RE.sub(repl, value)


def parse_bool(text):
    """Parse a config boolean (True/False/yes/no/1/0/on/off, any case)."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(text)


def parse_list(text):
    """Split a comma-separated value into stripped, non-empty items."""
    return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]


def parse_duration(text):
    """Parse ``HH:MM:SS``, ``MM:SS`` or a number of seconds into seconds (float)."""
    text = text.strip()
    if ":" in text:
        parts = [float(p) for p in text.split(":")]
        if len(parts) > 3 or any(not math.isfinite(p) or p < 0 for p in parts):
            raise ValueError(text)
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + part
        return seconds
    value = float(text)
    if not math.isfinite(value) or value < 0:  # nan/inf would disable or break a timeout
        raise ValueError(text)
    return value


_CONVERTERS = {
    "str": lambda s: s,
    "int": int,
    "float": float,
    "bool": parse_bool,
    "list": parse_list,
    "int_list": lambda s: [int(v) for v in parse_list(s)],
    "float_list": lambda s: [float(v) for v in parse_list(s)],
    "duration": parse_duration,
    "file": lambda s: s,
    "dir": lambda s: s,
}

_EXPECTED = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (True/False/yes/no/1/0)",
    "list": "a comma-separated list",
    "int_list": "a comma-separated list of integers",
    "float_list": "a comma-separated list of numbers",
    "duration": "a duration (HH:MM:SS or seconds)",
    "file": "an existing file",
    "dir": "an existing directory",
}


class Key:
    """Declaration of one key of a runner's config section.

    Parameters
    ----------
    name : str
        Key name (case-insensitive).
    type : str
        One of ``str``, ``int``, ``float``, ``bool``, ``list``, ``int_list``,
        ``float_list``, ``duration``, ``file`` (must exist), ``dir`` (must exist).
    default : object, optional
        Default value; omitted means the key is required.
    help : str
        One-line description, shown in error messages and documentation.
    choices : sequence of str, optional
        Allowed values (compared case-insensitively) for ``str`` keys.
    """

    def __init__(self, name, type="str", default=REQUIRED, help="", choices=None):
        if type not in _CONVERTERS:
            raise ValueError(f"Key {name}: unknown type {type!r}")
        self.name = name.upper()
        self.type = type
        self.default = default
        self.help = help
        self.choices = None if choices is None else [c.upper() for c in choices]

    @property
    def required(self):
        """Whether the key must be present."""
        return self.default is REQUIRED

    def __repr__(self):
        return f"Key({self.name!r}, {self.type!r})"


class ShapePipeConfig(configparser.ConfigParser):
    """ConfigParser with environment expansion and typed getters with clear errors.

    Keys are case-insensitive; sections are matched case-insensitively as well.
    ``$VAR`` / ``${VAR}`` are expanded in every value when the file is read.
    """

    def __init__(self, path=None):
        super().__init__(interpolation=None, strict=True, empty_lines_in_values=False)
        self.path = path or "<config>"

    # Sections are case-insensitive, as keys are.
    def _section_name(self, section):
        if section in self._sections or section == self.default_section:
            return section
        up = section.upper()
        for name in self._sections:
            if name.upper() == up:
                return name
        return section

    def has_section(self, section):
        return self._section_name(section) in self._sections

    def has_option(self, section, option):
        return super().has_option(self._section_name(section), option)

    def items(self, section=configparser._UNSET, raw=False, vars=None):
        if section is configparser._UNSET:
            return super().items()
        return super().items(self._section_name(section), raw=raw, vars=vars)

    def options(self, section):
        return super().options(self._section_name(section))

    def own_options(self, section):
        """Options set in the section itself (not inherited from ``[DEFAULT]``)."""
        name = self._section_name(section)
        return list(self._sections.get(name, {}).keys())

    def where(self, section, option=None, value=None):
        """Location string ``file [SECTION] KEY = 'value'`` for messages."""
        text = f"{self.path} [{section}]"
        if option is not None:
            text += f" {option.upper()}"
        if value is not None:
            text += f" = {value!r}"
        return text

    def get(self, section, option, *, raw=False, vars=None, fallback=configparser._UNSET):
        name = self._section_name(section)
        if name not in self._sections and name != self.default_section:
            if fallback is not configparser._UNSET:
                return fallback
            raise ConfigError(f"{self.path}: section [{section}] is missing")
        try:
            return super().get(name, option, raw=True, vars=vars)
        except configparser.NoOptionError:
            if fallback is not configparser._UNSET:
                return fallback
            raise ConfigError(
                f"{self.where(section, option)}: required key is missing"
            ) from None

    def _typed(self, section, option, kind, fallback):
        value = self.get(section, option, fallback=fallback)
        if value is fallback and fallback is not configparser._UNSET:
            return fallback
        try:
            return _CONVERTERS[kind](value)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{self.where(section, option, value)}: expected {_EXPECTED[kind]}"
            ) from None

    def getint(self, section, option, *, fallback=configparser._UNSET, **kwargs):
        return self._typed(section, option, "int", fallback)

    def getfloat(self, section, option, *, fallback=configparser._UNSET, **kwargs):
        return self._typed(section, option, "float", fallback)

    def getboolean(self, section, option, *, fallback=configparser._UNSET, **kwargs):
        return self._typed(section, option, "bool", fallback)

    def getlist(self, section, option, fallback=configparser._UNSET):
        """Comma-separated list of strings."""
        return self._typed(section, option, "list", fallback)

    def getexpanded(self, section, option, fallback=configparser._UNSET):
        """A path value with ``~`` expanded (environment variables are expanded at read time)."""
        value = self.get(section, option, fallback=fallback)
        if isinstance(value, str):
            return os.path.expanduser(value)
        return value

    def getduration(self, section, option, fallback=configparser._UNSET):
        """Duration in seconds from ``HH:MM:SS`` or a number."""
        return self._typed(section, option, "duration", fallback)

    def get_key(self, section, key):
        """Typed value of a declared :class:`Key` in a section (default if absent)."""
        if not self.has_option(section, key.name):
            if key.required:
                raise ConfigError(f"{self.where(section, key.name)}: required key is missing"
                                  + (f" ({key.help})" if key.help else ""))
            return key.default
        value = self._typed(section, key.name, key.type, configparser._UNSET)
        raw = self.get(section, key.name)
        if key.type == "file" and not os.path.isfile(os.path.expanduser(value)):
            raise ConfigError(f"{self.where(section, key.name, raw)}: file not found")
        if key.type == "dir" and not os.path.isdir(os.path.expanduser(value)):
            raise ConfigError(f"{self.where(section, key.name, raw)}: directory not found")
        if key.choices is not None and str(value).upper() not in key.choices:
            raise ConfigError(
                f"{self.where(section, key.name, raw)}: expected one of {', '.join(key.choices)}"
            )
        return value

    def read_keys(self, section, keys):
        """Typed values of declared keys, as a dict ``{NAME: value}`` (defaults filled in).

        Parameters
        ----------
        section : str
            The module's config section.
        keys : list of Key
            The keys declared by the runner.

        Returns
        -------
        dict
        """
        return {key.name: self.get_key(section, key) for key in keys}


def read_config(path):
    """Read an INI file, expanding environment variables in every value.

    Parameters
    ----------
    path : str
        Path of the configuration file.

    Returns
    -------
    ShapePipeConfig
        The parsed configuration.

    Raises
    ------
    ConfigError
        If the file is missing, malformed, or references an unset variable.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: configuration file not found")
    config = ShapePipeConfig(path)
    try:
        with open(path, encoding="utf-8") as handle:
            config.read_file(handle, source=path)
    except configparser.Error as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"{path}: cannot parse INI file: {message}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    seen = {}
    for section in config.sections():
        # Sections are matched case-insensitively: two spellings of one name would be
        # merged silently (the second one's keys ignored).
        if section.upper() in seen:
            raise ConfigError(f"{path} [{section}]: section defined twice (also as "
                              f"[{seen[section.upper()]}]; section names ignore case)")
        seen[section.upper()] = section
    for section in [config.default_section, *config.sections()]:
        store = config._defaults if section == config.default_section else config._sections[section]
        for option, value in list(store.items()):
            if value is not None:
                store[option] = expand_env(value, config.where(section, option, value))
    return config


def check_section_keys(config, section, keys, warn):
    """Validate the keys a runner declares against its config section.

    Parameters
    ----------
    config : ShapePipeConfig
        The configuration.
    section : str
        Section of the module occurrence (``[NAME]`` or ``[NAME_RUN_N]``).
    keys : list of Key or None
        Declared keys; ``None`` skips the checks.
    warn : callable
        Called with a message for each unknown key.

    Raises
    ------
    ConfigError
        On the first missing or ill-typed key.
    """
    if keys is None:
        return
    for key in keys:
        config.get_key(section, key)
    declared = {k.name for k in keys}
    if not config.has_section(section):
        return
    for option in config.own_options(section):
        name = option.upper()
        if name in declared or name in GENERIC_MODULE_KEYS or name.startswith("ADD_"):
            continue
        warn(f"{config.where(section, name)}: unknown key (ignored)")


def config_settings(config):
    """Every setting of a config as ``{(SECTION, KEY): value}`` (names upper-case).

    ``[DEFAULT]`` keys are listed once under ``DEFAULT``, not repeated in every section.
    Works on a :class:`ShapePipeConfig` and on a plain :class:`configparser.ConfigParser`
    (a run's saved ``config.ini``, whose values are already expanded).
    """
    settings = {("DEFAULT", k.upper()): v for k, v in config.defaults().items()}
    for section in config.sections():
        for key, value in config._sections[section].items():
            settings[(section.upper(), key.upper())] = value
    return settings


def config_changes(old, new):
    """What differs between two configs, section by section and key by key.

    Parameters
    ----------
    old, new : configparser.ConfigParser
        The two configurations (values as read, environment variables expanded).

    Returns
    -------
    list of str
        One item per setting added, removed or changed, e.g.
        ``[JOB] SMP_BATCH_SIZE: '2' -> '4'``, in section/key order; empty if none.
    """
    a, b = config_settings(old), config_settings(new)
    changes = []
    for section, key in sorted(set(a) | set(b)):
        if (section, key) not in a:
            changes.append(f"[{section}] {key}: added ({b[(section, key)]!r})")
        elif (section, key) not in b:
            changes.append(f"[{section}] {key}: removed (was {a[(section, key)]!r})")
        elif a[(section, key)] != b[(section, key)]:
            changes.append(f"[{section}] {key}: {a[(section, key)]!r} -> {b[(section, key)]!r}")
    return changes


def read_saved_config(path):
    """Read a run's saved ``config.ini`` as it was written (no expansion: it is expanded)."""
    saved = configparser.ConfigParser(interpolation=None, strict=False)
    saved.optionxform = str.lower
    with open(path, encoding="utf-8") as handle:
        saved.read_file(handle, source=path)
    return saved
