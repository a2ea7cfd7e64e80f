"""Reading ``.setools`` files into checked, parsed sections.

A file is a list of sections ``[KIND:name]`` with KIND one of MASK, PLOT, STAT,
RAND_SPLIT; ``#`` starts a comment (outside double quotes). Everything is parsed and
cross-checked when the file is read (syntax, function names, references to masks,
reference cycles), so a mistake is reported with file, section and line before any
catalogue is touched.
"""

import os
import re

from shapepipe.modules.setools.expression import Compare, ExpressionError, parse_expression

__all__ = [
    "SetoolsError",
    "SetoolsFile",
    "MaskSection",
    "StatSection",
    "PlotSection",
    "RandSplitSection",
    "read_setools",
    "parse_setools",
]

SECTION_KINDS = ("MASK", "PLOT", "STAT", "RAND_SPLIT")
PLOT_TYPES = ("plot", "scatter", "hist")
_PLOT_TYPE_ALIASES = {"plot": "plot", "scatter": "scatter", "hist": "hist", "histogram": "hist"}
#: Plot keys whose values are expressions over the catalogue.
PLOT_EXPRESSION_KEYS = ("X", "Y", "SCATTER")
#: Plot keys whose values are text, with optional ``@expression@`` substitutions.
PLOT_TEXT_KEYS = ("TITLE", "LABEL")
PLOT_OTHER_KEYS = (
    "TYPE", "FORMAT", "XLABEL", "YLABEL", "XLIM", "YLIM", "COLOR", "MARKER", "MARKERSIZE",
    "LINE", "ALPHA", "BIN", "HTYPE", "LOG",
)

_SECTION_RE = re.compile(r"^\[\s*([A-Za-z_]+)\s*(?::\s*([^\]]*?)\s*)?\]$")
_MASK_REF_RE = re.compile(r"^\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}$")
_PLOT_KEY_RE = re.compile(r"^([A-Za-z]+)(?:_([A-Za-z0-9]+))?$")


class SetoolsError(ValueError):
    """An error in a ``.setools`` file or in applying it; the message names file,
    section and line."""


class Location:
    """Where a line comes from: file, section header, line number, text."""

    def __init__(self, path, section, lineno, text):
        self.path = path
        self.section = section
        self.lineno = lineno
        self.text = text

    def error(self, message):
        """A :class:`SetoolsError` naming this location."""
        return SetoolsError(
            f"{self.path}: [{self.section}] line {self.lineno}: {message} in '{self.text}'"
        )

    def __str__(self):
        return f"{self.path}: [{self.section}] line {self.lineno}"


class MaskSection:
    """``[MASK:name]``: conditions ANDed together, on the objects of referenced masks.

    Attributes
    ----------
    name : str
    refs : list of (str, Location)
        Masks named on ``{name}`` lines: their AND is the sample the conditions apply to.
    conditions : list of (Node, Location)
        Parsed comparisons.
    save : bool
        False when the section has a ``NO_SAVE`` line.
    """

    kind = "MASK"

    def __init__(self, name, location):
        self.name = name
        self.location = location
        self.refs = []
        self.conditions = []
        self.save = True

    def dependencies(self):
        """Masks this one needs, with the location of the first use."""
        deps = {}
        for ref, loc in self.refs:
            deps.setdefault(ref, loc)
        for node, loc in self.conditions:
            for ref in sorted(node.mask_names()):
                deps.setdefault(ref, loc)
        return deps


class StatSection:
    """``[STAT:name]``: ``"statistic name" = expression`` lines (kept in file order)."""

    kind = "STAT"

    def __init__(self, name, location):
        self.name = name
        self.location = location
        self.entries = []  # (stat name, Node, Location)


class PlotSection:
    """``[PLOT:name]``: ``KEY = value`` or ``KEY_i = value`` lines.

    Attributes
    ----------
    options : dict
        ``{KEY: {index: (value, Location)}}``; the index is ``"0"`` for a key without
        suffix. Expression keys (X, Y, SCATTER) hold parsed nodes, text keys (TITLE,
        LABEL) hold lists alternating text and parsed ``@expression@`` nodes.
    """

    kind = "PLOT"

    def __init__(self, name, location):
        self.name = name
        self.location = location
        self.options = {}

    def get(self, key, index="0", default=None, share_single=False):
        """Value of ``KEY_index``.

        A key given without index (``COLOR = r``) applies to every data set. With
        ``share_single`` (data keys X, Y, as in ShapePipe), a key given once with an
        index also applies to every data set.
        """
        values = self.options.get(key)
        if not values:
            return default
        for candidate in (index, "0"):
            if candidate in values:
                return values[candidate][0]
        if share_single and len(values) == 1:
            return next(iter(values.values()))[0]
        return default

    def location_of(self, key, index="0"):
        """Location of ``KEY_index`` (or of the section when absent)."""
        values = self.options.get(key, {})
        for candidate in (index, "0"):
            if candidate in values:
                return values[candidate][1]
        if len(values) == 1:
            return next(iter(values.values()))[1]
        return self.location

    @property
    def plot_type(self):
        return self.get("TYPE")


class RandSplitSection:
    """``[RAND_SPLIT:name]``: RATIO (fraction, or percent when >= 1) and MASK list."""

    kind = "RAND_SPLIT"

    def __init__(self, name, location):
        self.name = name
        self.location = location
        self.ratio = None
        self.masks = []
        self.mask_location = location

    @property
    def percent(self):
        """The sample percentages used in the output names (ShapePipe: int(100 ratio))."""
        first = int(self.ratio * 100 + 1e-9)
        return first, 100 - first


class SetoolsFile:
    """A parsed ``.setools`` file.

    Attributes
    ----------
    path : str
    masks, plots, stats, rand_splits : dict
        Sections by name, in file order.
    """

    def __init__(self, path):
        self.path = path
        self.masks = {}
        self.plots = {}
        self.stats = {}
        self.rand_splits = {}

    def referenced_masks(self):
        """Every mask name referenced by the file, with one location using it."""
        refs = {}
        for section in self.masks.values():
            for name, loc in section.dependencies().items():
                refs.setdefault(name, loc)
        for section in self.stats.values():
            for _, node, loc in section.entries:
                for name in sorted(node.mask_names()):
                    refs.setdefault(name, loc)
        for section in self.plots.values():
            for key, values in section.options.items():
                for value, loc in values.values():
                    for node in _nodes_of(key, value):
                        for name in sorted(node.mask_names()):
                            refs.setdefault(name, loc)
        for section in self.rand_splits.values():
            for name in section.masks:
                refs.setdefault(name, section.mask_location)
        return refs


def _nodes_of(key, value):
    if key in PLOT_EXPRESSION_KEYS:
        return [value]
    if key in PLOT_TEXT_KEYS:
        return [part for part in value if not isinstance(part, str)]
    return []


# ------------------------------------------------------------------------ reading


def _strip_comment(line):
    """Remove a ``#`` comment that is not inside double quotes."""
    in_quotes = False
    for i, char in enumerate(line):
        if char == '"':
            in_quotes = not in_quotes
        elif char == "#" and not in_quotes:
            return line[:i]
    return line


def _unquote(text):
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return text[1:-1]
    return text


def _split_assignment(text, loc):
    """Split ``key = value`` at the first ``=`` outside quotes (``"a = b" = ...`` works)."""
    in_quotes = False
    for i, char in enumerate(text):
        if char == '"':
            in_quotes = not in_quotes
        elif char == "=" and not in_quotes:
            key, value = text[:i].strip(), text[i + 1 :].strip()
            if value.startswith("="):
                break
            if not key:
                raise loc.error("missing name before '='")
            if not value:
                raise loc.error("missing value after '='")
            return _unquote(key), value
    raise loc.error("expected 'name = value'")


def _parse(text, loc, allow_compare=False, domains=None):
    try:
        return parse_expression(text, allow_compare=allow_compare, domains=domains)
    except ExpressionError as exc:
        raise loc.error(str(exc)) from None


def _parse_text_template(text, loc):
    """``"mean: @mean(X)@ pix"`` -> ["mean: ", Node, " pix"]."""
    parts = text.split("@")
    if len(parts) % 2 == 0:
        raise loc.error("unbalanced '@' (an expression is written @expression@)")
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            if part:
                out.append(part)
        else:
            out.append(_parse(part, loc, domains=(None,)))
    return out


def _add_mask_line(section, text, loc):
    if text.upper() == "NO_SAVE":
        section.save = False
        return
    ref = _MASK_REF_RE.match(text)
    if ref:
        section.refs.append((ref.group(1), loc))
        return
    node = _parse(text, loc, allow_compare=True, domains=(None, ""))
    if not isinstance(node, Compare):
        raise loc.error("a mask line must be a comparison (<, >, <=, >=, ==, !=), "
                        "a {mask} reference or NO_SAVE")
    section.conditions.append((node, loc))


def _add_stat_line(section, text, loc):
    name, value = _split_assignment(text, loc)
    if any(existing == name for existing, _, _ in section.entries):
        raise loc.error(f"statistic '{name}' defined twice")
    section.entries.append((name, _parse(value, loc, domains=(None,)), loc))


def _add_plot_line(section, text, loc):
    key, value = _split_assignment(text, loc)
    match = _PLOT_KEY_RE.match(key)
    if not match:
        raise loc.error(f"plot key '{key}' is not KEY or KEY_<index>")
    name = match.group(1).upper()
    index = match.group(2) or "0"
    known = PLOT_EXPRESSION_KEYS + PLOT_TEXT_KEYS + PLOT_OTHER_KEYS
    if name not in known:
        raise loc.error(f"unknown plot key '{name}' (known: {', '.join(known)})")
    if name in PLOT_EXPRESSION_KEYS:
        parsed = _parse(_unquote(value), loc)
    elif name in PLOT_TEXT_KEYS:
        parsed = _parse_text_template(_unquote(value), loc)
    else:
        parsed = _unquote(value)
    values = section.options.setdefault(name, {})
    if index in values:
        raise loc.error(f"plot key '{key}' given twice")
    values[index] = (parsed, loc)


def _add_rand_split_line(section, text, loc):
    key, value = _split_assignment(text, loc)
    key = key.upper()
    if key == "RATIO":
        try:
            ratio = float(_unquote(value))
        except ValueError:
            raise loc.error(f"RATIO must be a number, got '{value}'") from None
        if ratio >= 1:
            ratio /= 100.0
        if not 0 < ratio < 1:
            raise loc.error(
                "RATIO must be a fraction in (0, 1) or a percentage in [1, 100), got "
                f"'{value}'"
            )
        section.ratio = ratio
    elif key == "MASK":
        names = [name.strip() for name in _unquote(value).split(",") if name.strip()]
        if not names:
            raise loc.error("MASK needs at least one mask name")
        section.masks = names
        section.mask_location = loc
    else:
        raise loc.error(f"unknown RAND_SPLIT key '{key}' (expected RATIO, MASK)")


_ADDERS = {
    "MASK": _add_mask_line,
    "STAT": _add_stat_line,
    "PLOT": _add_plot_line,
    "RAND_SPLIT": _add_rand_split_line,
}
_CLASSES = {
    "MASK": MaskSection,
    "STAT": StatSection,
    "PLOT": PlotSection,
    "RAND_SPLIT": RandSplitSection,
}


def parse_setools(text, path="<setools>"):
    """Parse the text of a ``.setools`` file.

    Parameters
    ----------
    text : str
        File contents.
    path : str
        Name used in error messages.

    Returns
    -------
    SetoolsFile

    Raises
    ------
    SetoolsError
        On the first problem, naming file, section and line.
    """
    result = SetoolsFile(path)
    stores = {
        "MASK": result.masks,
        "STAT": result.stats,
        "PLOT": result.plots,
        "RAND_SPLIT": result.rand_splits,
    }
    section = None
    header = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if line.startswith("["):
            match = _SECTION_RE.match(line)
            if not match:
                raise SetoolsError(f"{path}: line {lineno}: malformed section header '{line}' "
                                   "(expected [KIND:name])")
            kind = match.group(1).upper()
            if kind not in SECTION_KINDS:
                raise SetoolsError(
                    f"{path}: line {lineno}: unknown section type '{match.group(1)}' in "
                    f"'{line}' (expected one of {', '.join(SECTION_KINDS)})"
                )
            store = stores[kind]
            name = match.group(2) or f"{kind.lower()}_{len(store) + 1}"
            if "/" in name or "\\" in name or ".." in name or "\0" in name:
                # Output files are named after the section: a name must not be a path.
                raise SetoolsError(f"{path}: line {lineno}: section name '{name}' in '{line}' "
                                   "is used as a file name: no '/', '\\' or '..'")
            if name in store:
                raise SetoolsError(f"{path}: line {lineno}: section [{kind}:{name}] "
                                   "defined twice")
            header = f"{kind}:{name}"
            section = _CLASSES[kind](name, Location(path, header, lineno, line))
            store[name] = section
            continue
        loc = Location(path, header, lineno, line)
        if section is None:
            raise SetoolsError(f"{path}: line {lineno}: '{line}' is outside any section "
                               "(a file starts with [MASK:name], [PLOT:name], [STAT:name] "
                               "or [RAND_SPLIT:name])")
        _ADDERS[section.kind](section, line, loc)
    _check(result)
    return result


def _check(setools):
    for section in setools.rand_splits.values():
        if section.ratio is None:
            raise SetoolsError(f"{section.location}: RATIO is missing")
        first, second = section.percent
        if first == second:
            raise SetoolsError(
                f"{section.location}: RATIO gives two samples named "
                f"'{section.name}_ratio_{first}'; use a ratio other than 50%"
            )
    for section in setools.plots.values():
        plot_type = section.plot_type
        if plot_type is None:
            raise SetoolsError(f"{section.location}: TYPE is missing "
                               f"(expected one of {', '.join(PLOT_TYPES)})")
        canonical = _PLOT_TYPE_ALIASES.get(plot_type.lower())
        if canonical is None:
            raise section.location_of("TYPE").error(
                f"unknown plot TYPE '{plot_type}' (expected one of {', '.join(PLOT_TYPES)})"
            )
        section.options["TYPE"]["0"] = (canonical, section.location_of("TYPE"))
        needed = {"plot": ("X", "Y"), "scatter": ("X", "Y", "SCATTER"), "hist": ("Y",)}
        for key in needed[canonical]:
            if key not in section.options:
                raise SetoolsError(f"{section.location}: key {key} is required for TYPE = "
                                   f"{canonical}")
    for name, loc in setools.referenced_masks().items():
        if name not in setools.masks:
            known = ", ".join(setools.masks) or "none"
            raise loc.error(f"unknown mask '{name}' (masks defined: {known})")
    _check_cycles(setools)


def _check_cycles(setools):
    state = {}
    for name in setools.masks:
        _visit_chain(setools, name, [], state)


def _visit_chain(setools, name, chain, state):
    if state.get(name) == "done":
        return
    if state.get(name) == "active":
        cycle = chain[chain.index(name):] + [name]
        loc = setools.masks[chain[-1]].dependencies()[name]
        raise loc.error(f"masks refer to each other in a cycle: {' -> '.join(cycle)}")
    state[name] = "active"
    for dep in setools.masks[name].dependencies():
        _visit_chain(setools, dep, chain + [name], state)
    state[name] = "done"


def read_setools(path):
    """Read and parse a ``.setools`` file.

    Parameters
    ----------
    path : str
        The file.

    Returns
    -------
    SetoolsFile

    Raises
    ------
    SetoolsError
        If the file is missing or has an error (file, section and line named).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SetoolsError(f"{path}: setools file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise SetoolsError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    return parse_setools(text, path)
