"""The expression language of ``.setools`` files: tokenizer, parser, AST, numpy evaluation.

Grammar (one line of a section)::

    line       := expr [CMP expr]            CMP: < > <= >= == !=
    expr       := term (("+" | "-") term)*
    term       := unary (("*" | "/") unary)*
    unary      := ("-" | "+") unary | primary
    primary    := NUMBER | NAME ["{" NAME "}"] | FUNC "(" expr ("," expr)* ")" | "(" expr ")"

``NAME`` is a catalogue column, ``NAME{mask}`` that column on the objects a mask selects.
Numbers accept ``3``, ``-3``, ``18.``, ``.5``, ``1e-3``. User text is only ever tokenized
and walked as a tree; nothing is passed to ``eval``.
"""

import re

import numpy as np

from shapepipe.modules.setools.stats import (
    nan_max,
    nan_mean,
    nan_median,
    nan_min,
    nan_std,
    nan_var,
    robust_mode,
    sigma_mad,
)

__all__ = [
    "ExpressionError",
    "parse_expression",
    "Number",
    "Column",
    "Call",
    "BinaryOp",
    "Negate",
    "Compare",
    "FUNCTIONS",
]


class ExpressionError(ValueError):
    """A syntax or evaluation error in one expression (the caller adds file/section/line)."""


def _length(x):
    return int(np.size(x)) if np.ndim(x) == 0 else int(np.shape(x)[0])


def _elementwise_min(*args):
    if len(args) == 1:
        return nan_min(args[0])
    return _reduce_pairwise(np.minimum, args)


def _elementwise_max(*args):
    if len(args) == 1:
        return nan_max(args[0])
    return _reduce_pairwise(np.maximum, args)


def _reduce_pairwise(func, args):
    result = np.asarray(args[0])
    for arg in args[1:]:
        result = func(result, arg)
    return result


#: name -> (callable, minimum number of arguments, maximum number or None for any)
FUNCTIONS = {
    "mean": (nan_mean, 1, 1),
    "median": (nan_median, 1, 1),
    "mode": (robust_mode, 1, 1),
    "sqrt": (np.sqrt, 1, 1),
    "pow": (np.power, 2, 2),
    "log": (np.log, 1, 1),
    "log10": (np.log10, 1, 1),
    "exp": (np.exp, 1, 1),
    "std": (nan_std, 1, 1),
    "var": (nan_var, 1, 1),
    "sigma_mad": (sigma_mad, 1, 1),
    "len": (_length, 1, 1),
    "min": (_elementwise_min, 1, None),
    "max": (_elementwise_max, 1, None),
}

#: Functions returning one number for an array.
REDUCTIONS = {"mean", "median", "mode", "std", "var", "sigma_mad", "len"}

_COMPARATORS = {
    "<": np.less,
    ">": np.greater,
    "<=": np.less_equal,
    ">=": np.greater_equal,
    "==": np.equal,
    "!=": np.not_equal,
}

_ARITHMETIC = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.true_divide,
}


# ---------------------------------------------------------------------------- AST


class Node:
    """Base class of the expression tree."""

    def mask_names(self):
        """Names of the masks the expression refers to (``COL{mask}``)."""
        return set()

    def domain(self):
        """Which objects the value is per-object over.

        ``None`` for a single number, ``""`` for the objects plain column names refer
        to, ``"<mask>"`` for the objects selected by that mask.

        Raises
        ------
        ExpressionError
            If an element-by-element operation mixes values of different objects.
        """
        return None


class Number(Node):
    """A numeric literal."""

    def __init__(self, value):
        self.value = value

    def evaluate(self, env):
        return self.value

    def __repr__(self):
        return f"Number({self.value!r})"


class Column(Node):
    """A catalogue column, optionally restricted to a mask's selection."""

    def __init__(self, name, mask=None):
        self.name = name
        self.mask = mask

    def evaluate(self, env):
        return env.column(self.name, self.mask)

    def mask_names(self):
        return {self.mask} if self.mask is not None else set()

    def domain(self):
        return self.mask or ""

    def __repr__(self):
        return f"Column({self.name!r}, mask={self.mask!r})"


class Call(Node):
    """A call of one of :data:`FUNCTIONS`."""

    def __init__(self, name, args):
        self.name = name
        self.args = args

    def evaluate(self, env):
        func = FUNCTIONS[self.name][0]
        return func(*[arg.evaluate(env) for arg in self.args])

    def mask_names(self):
        return set().union(*(arg.mask_names() for arg in self.args))

    def domain(self):
        domains = [arg.domain() for arg in self.args]
        if self.name in REDUCTIONS or (self.name in ("min", "max") and len(self.args) == 1):
            return None
        return _combine(domains, f"{self.name}()")

    def __repr__(self):
        return f"Call({self.name!r}, {self.args!r})"


class _Binary(Node):
    """``left op right``; subclasses give the table of operations."""

    operations = {}

    def __init__(self, op, left, right):
        self.op = op
        self.left = left
        self.right = right

    def evaluate(self, env):
        left = self.left.evaluate(env)
        right = self.right.evaluate(env)
        _check_shapes(left, right, self.op)
        return self.operations[self.op](left, right)

    def mask_names(self):
        return self.left.mask_names() | self.right.mask_names()

    def domain(self):
        return _combine([self.left.domain(), self.right.domain()], f"'{self.op}'")

    def __repr__(self):
        return f"{type(self).__name__}({self.op!r}, {self.left!r}, {self.right!r})"


class BinaryOp(_Binary):
    """``left op right`` with op in ``+ - * /``."""

    operations = _ARITHMETIC


class Negate(Node):
    """Unary minus."""

    def __init__(self, operand):
        self.operand = operand

    def evaluate(self, env):
        return np.negative(self.operand.evaluate(env))

    def mask_names(self):
        return self.operand.mask_names()

    def domain(self):
        return self.operand.domain()

    def __repr__(self):
        return f"Negate({self.operand!r})"


class Compare(_Binary):
    """``left cmp right``; the result is a boolean scalar or array."""

    operations = _COMPARATORS


def describe_domain(domain):
    """Words for a :meth:`Node.domain` value."""
    if domain is None:
        return "a single number"
    if domain == "":
        return "values per object of the sample (plain column names)"
    return f"values per object of mask '{domain}' (COL{{{domain}}})"


def _combine(domains, what):
    arrays = {d for d in domains if d is not None}
    if len(arrays) > 1:
        names = sorted("COL" if d == "" else f"COL{{{d}}}" for d in arrays)
        raise ExpressionError(
            f"{what} combines {' and '.join(names)} element by element, but they hold "
            "different objects (reduce one with mean(), median(), mode(), ...)"
        )
    return arrays.pop() if arrays else None


def _check_shapes(left, right, op):
    # numpy would broadcast (N,) against (M,) only to fail with a cryptic message, or
    # silently broadcast (N,1)-like shapes; say which lengths disagree instead.
    if np.ndim(left) and np.ndim(right) and np.shape(left)[0] != np.shape(right)[0]:
        raise ExpressionError(
            f"'{op}' between arrays of different lengths ({np.shape(left)[0]} and "
            f"{np.shape(right)[0]} objects): columns selected by different masks cannot "
            "be combined element by element"
        )


# ----------------------------------------------------------------------- tokenizer

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
   |(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
   |(?P<name>[A-Za-z_][A-Za-z0-9_]*)
   |(?P<cmp><=|>=|==|!=|<|>)
   |(?P<op>[-+*/])
   |(?P<punct>[(){},])
    """,
    re.VERBOSE,
)


class Token:
    """One token: kind (number, name, cmp, op, punct, end), text, column (1-based)."""

    __slots__ = ("kind", "text", "col")

    def __init__(self, kind, text, col):
        self.kind = kind
        self.text = text
        self.col = col

    def describe(self):
        return "end of line" if self.kind == "end" else f"'{self.text}'"


def tokenize(text):
    """Split an expression into tokens.

    Parameters
    ----------
    text : str
        The expression.

    Returns
    -------
    list of Token
        Ending with an ``end`` token.

    Raises
    ------
    ExpressionError
        On a character that cannot start a token.
    """
    tokens = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            char = text[pos]
            hint = ""
            if char == "=":
                hint = " (use '==' to test equality)"
            elif char == "!":
                hint = " (use '!=' to test inequality)"
            raise ExpressionError(f"unexpected character '{char}' at column {pos + 1}{hint}")
        kind = match.lastgroup
        if kind != "ws":
            tokens.append(Token(kind, match.group(), pos + 1))
        pos = match.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


# -------------------------------------------------------------------------- parser


#: Deepest nesting of parentheses, calls and unary signs an expression may have: far
#: beyond any selection, far below Python's recursion limit.
MAX_NESTING = 64


class _Parser:
    def __init__(self, text):
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0

    @property
    def tok(self):
        return self.tokens[self.pos]

    def advance(self):
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def error(self, message, tok=None):
        tok = tok or self.tok
        return ExpressionError(f"{message} at column {tok.col}")

    def expect(self, kind, text):
        tok = self.tok
        if tok.kind != kind or tok.text != text:
            raise self.error(f"expected '{text}', found {tok.describe()}")
        return self.advance()

    def parse_line(self, allow_compare):
        node = self.parse_expr()
        if self.tok.kind == "cmp":
            op_tok = self.advance()
            if not allow_compare:
                raise self.error(f"comparison '{op_tok.text}' not allowed here", op_tok)
            right = self.parse_expr()
            node = Compare(op_tok.text, node, right)
            if self.tok.kind == "cmp":
                raise self.error(
                    f"only one comparison per line, found a second '{self.tok.text}'"
                )
        if self.tok.kind != "end":
            raise self.error(f"unexpected {self.tok.describe()}")
        return node

    def parse_expr(self):
        node = self.parse_term()
        while self.tok.kind == "op" and self.tok.text in "+-":
            op = self.advance().text
            node = BinaryOp(op, node, self.parse_term())
        return node

    def parse_term(self):
        node = self.parse_unary()
        while self.tok.kind == "op" and self.tok.text in "*/":
            op = self.advance().text
            node = BinaryOp(op, node, self.parse_unary())
        return node

    def parse_unary(self):
        # Every level of nesting passes here: the parser's recursion is bounded.
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise self.error(f"expression nested more than {MAX_NESTING} levels deep")
            return self._parse_unary()
        finally:
            self.depth -= 1

    def _parse_unary(self):
        if self.tok.kind == "op" and self.tok.text in "+-":
            op = self.advance().text
            operand = self.parse_unary()
            if op == "+":
                return operand
            if isinstance(operand, Number):
                return Number(-operand.value)
            return Negate(operand)
        return self.parse_primary()

    def parse_primary(self):
        tok = self.tok
        if tok.kind == "number":
            self.advance()
            return Number(float(tok.text))
        if tok.kind == "name":
            self.advance()
            if self.tok.kind == "punct" and self.tok.text == "(":
                return self.parse_call(tok)
            if self.tok.kind == "punct" and self.tok.text == "{":
                self.advance()
                if self.tok.kind != "name":
                    raise self.error(f"expected a mask name after '{{', found "
                                     f"{self.tok.describe()}")
                mask = self.advance().text
                self.expect("punct", "}")
                return Column(tok.text, mask)
            return Column(tok.text)
        if tok.kind == "punct" and tok.text == "(":
            self.advance()
            node = self.parse_expr()
            self.expect("punct", ")")
            return node
        if tok.kind == "end":
            raise self.error("expression ends too early")
        raise self.error(f"unexpected {tok.describe()}")

    def parse_call(self, name_tok):
        name = name_tok.text
        if name not in FUNCTIONS:
            raise self.error(
                f"unknown function '{name}' (known: {', '.join(sorted(FUNCTIONS))})", name_tok
            )
        self.expect("punct", "(")
        args = [self.parse_expr()]
        while self.tok.kind == "punct" and self.tok.text == ",":
            self.advance()
            args.append(self.parse_expr())
        self.expect("punct", ")")
        _, n_min, n_max = FUNCTIONS[name]
        if len(args) < n_min or (n_max is not None and len(args) > n_max):
            wanted = str(n_min) if n_min == n_max else f"at least {n_min}"
            raise self.error(f"{name}() takes {wanted} argument(s), got {len(args)}", name_tok)
        return Call(name, args)


def parse_expression(text, allow_compare=False, domains=None):
    """Parse one expression into an AST.

    Parameters
    ----------
    text : str
        The expression, e.g. ``FWHM_IMAGE <= mode(FWHM_IMAGE{preselect}) + 0.2``.
    allow_compare : bool
        Whether one top-level comparison is allowed (mask lines).
    domains : collection, optional
        Allowed :meth:`Node.domain` values of the result (e.g. ``{None}`` for a number);
        ``None`` allows any.

    Returns
    -------
    Node
        The root of the tree; ``evaluate(env)`` computes it with numpy.

    Raises
    ------
    ExpressionError
        With the column of the offending token.
    """
    try:
        node = _Parser(text).parse_line(allow_compare)
        domain = node.domain()
    except RecursionError:  # a chain of thousands of operators: too deep a tree to evaluate
        raise ExpressionError("expression too long to evaluate (split it into several "
                              "lines or masks)") from None
    if domains is not None and domain not in domains:
        wanted = " or ".join(describe_domain(d) for d in domains)
        raise ExpressionError(f"expected {wanted}, this gives {describe_domain(domain)}")
    return node
