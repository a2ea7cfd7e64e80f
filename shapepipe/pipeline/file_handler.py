"""Input binding (directories x patterns x numbering -> jobs) and run directories."""

import datetime
import os
import re
from dataclasses import dataclass, field

from shapepipe.pipeline.errors import ConfigError

DEFAULT_NUMBERING = r"RE:\d+"


def numbering_regex(scheme):
    """Compile a NUMBERING_SCHEME into a regex matching the whole number part.

    ``RE:<regex>`` is taken verbatim. Otherwise each run of ``n > 1`` digits means exactly
    ``n`` digits, a single digit means one or more digits, and every other character is
    literal: ``-0000000-0`` -> ``-\\d{7}-\\d+``, ``_0`` -> ``_\\d+``.

    Parameters
    ----------
    scheme : str
        The scheme.

    Returns
    -------
    re.Pattern
    """
    if scheme is None or scheme == "":
        scheme = DEFAULT_NUMBERING
    if scheme.startswith("RE:"):
        try:
            return re.compile(scheme[3:])
        except re.error as exc:
            raise ValueError(f"invalid regular expression {scheme[3:]!r}: {exc}") from None
    parts = []
    for token in re.findall(r"\d+|\D", scheme):
        if token.isdigit():
            parts.append(r"\d+" if len(token) == 1 else rf"\d{{{len(token)}}}")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def natural_key(text):
    """Sort key putting ``-2`` before ``-10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


@dataclass
class Binding:
    """The jobs of one module: numbers and the input file of each (pattern, ext)."""

    patterns: list
    exts: list
    dirs: list
    jobs: dict = field(default_factory=dict)  # number -> [path per pattern]
    missing: dict = field(default_factory=dict)  # number -> [patterns lacking it]
    excluded: list = field(default_factory=list)  # NUMBER_LIST entries with no files

    @property
    def numbers(self):
        """Job numbers in natural order."""
        return sorted(self.jobs, key=natural_key)


def _list_dir(directory, cache):
    if directory not in cache:
        try:
            cache[directory] = sorted(
                e.name for e in os.scandir(directory) if e.is_file() or e.is_symlink()
            )
        except FileNotFoundError:
            cache[directory] = None
    return cache[directory]


def bind_files(dirs, patterns, exts, scheme, number_list=None, where="<config>"):
    """Match the files of input directories to job numbers.

    Parameters
    ----------
    dirs : list of str
        Input directories, searched in order (the first directory with a number wins).
    patterns, exts : list of str
        File name prefixes and extensions, one extension per pattern (compound extensions
        such as ``.fits.fz`` work).
    scheme : str
        NUMBERING_SCHEME.
    number_list : list of str, optional
        Restrict the jobs to these numbers.
    where : str
        Location for error messages.

    Returns
    -------
    Binding

    Raises
    ------
    ConfigError
        If no directory exists, or patterns and extensions do not pair up.
    """
    if not patterns:
        raise ConfigError(f"{where}: FILE_PATTERN is empty (the runner declares none either)")
    if len(exts) == 1 and len(patterns) > 1:
        exts = exts * len(patterns)
    if len(exts) != len(patterns):
        raise ConfigError(
            f"{where}: FILE_PATTERN has {len(patterns)} items and FILE_EXT {len(exts)}; "
            "expected one extension per pattern"
        )
    exts = [e if not e or e.startswith(".") else "." + e for e in exts]
    try:
        regex = numbering_regex(scheme)
    except ValueError as exc:
        raise ConfigError(f"{where} NUMBERING_SCHEME = {scheme!r}: {exc}") from None
    cache = {}
    listings = [(d, _list_dir(d, cache)) for d in dirs]
    if all(listing is None for _, listing in listings):
        raise ConfigError(f"{where}: input directory not found: {', '.join(dirs)}")

    found = []  # per pattern: {number: path}
    for pattern, ext in zip(patterns, exts):
        numbers = {}
        for directory, listing in listings:
            if not listing:
                continue
            for name in listing:
                if not (name.startswith(pattern) and name.endswith(ext)):
                    continue
                middle = name[len(pattern) : len(name) - len(ext)]
                if regex.fullmatch(middle) and middle not in numbers:
                    numbers[middle] = os.path.join(directory, name)
        found.append(numbers)

    all_numbers = set().union(*found)
    binding = Binding(patterns=list(patterns), exts=exts, dirs=list(dirs))
    for number in all_numbers:
        lacking = [p for p, numbers in zip(patterns, found) if number not in numbers]
        if lacking:
            binding.missing[number] = lacking
        else:
            binding.jobs[number] = [numbers[number] for numbers in found]
    if number_list:
        wanted = list(dict.fromkeys(number_list))
        binding.excluded = [n for n in wanted if n not in binding.jobs]
        binding.jobs = {n: binding.jobs[n] for n in wanted if n in binding.jobs}
        binding.missing = {n: v for n, v in binding.missing.items() if n in wanted}
    return binding


def read_number_list(value, where):
    """NUMBER_LIST: a comma-separated list of numbers, or a file with one per line."""
    items = [v.strip() for v in value.split(",") if v.strip()]
    if len(items) == 1 and os.path.isfile(os.path.expanduser(items[0])):
        try:
            with open(os.path.expanduser(items[0]), encoding="utf-8") as handle:
                return [line.strip() for line in handle
                        if line.strip() and not line.startswith("#")]
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where} = {value.strip()!r}: not a UTF-8 text file of numbers "
                              f"(byte {exc.start}: {exc.reason})") from None
        except OSError as exc:
            raise ConfigError(f"{where} = {value.strip()!r}: cannot read it "
                              f"({exc.strerror})") from None
    if not items:
        raise ConfigError(f"{where}: NUMBER_LIST is empty")
    return items


def create_run_dir(output_dir, run_name, with_datetime=True):
    """Create a new run directory that never collides with an existing one.

    Parameters
    ----------
    output_dir : str
        Parent directory (created if absent).
    run_name : str
        RUN_NAME.
    with_datetime : bool
        Append the date and time (RUN_DATETIME).

    Returns
    -------
    str
        Absolute path of the new, empty directory.
    """
    os.makedirs(output_dir, exist_ok=True)
    base = run_name
    if with_datetime:
        base += datetime.datetime.now().strftime("_%Y-%m-%d_%H-%M-%S")
    counter = 0
    while True:
        name = base if counter == 0 else f"{base}_{counter}"
        path = os.path.abspath(os.path.join(output_dir, name))
        try:
            os.mkdir(path)  # atomic: exactly one of two concurrent runs gets a name
            return path
        except FileExistsError:
            counter += 1


def newest_run_dir(output_dir, run_name):
    """The newest existing run directory of ``run_name`` (for --resume), or None."""
    if not os.path.isdir(output_dir):
        return None
    pattern = re.compile(re.escape(run_name) + r"(_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d)?(_\d+)?$")
    candidates = [
        os.path.join(output_dir, d)
        for d in os.listdir(output_dir)
        if pattern.fullmatch(d) and os.path.isdir(os.path.join(output_dir, d))
    ]
    if not candidates:
        return None
    return os.path.abspath(max(candidates, key=lambda d: (os.path.getctime(d), natural_key(d))))
