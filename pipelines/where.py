"""Row filters: `--where EXPR`, a boolean expression over a table's columns, parsed and never run as Python.

The syntax is pandas `DataFrame.query`'s, restricted to what a filter needs:

- column names: `matching_score`, or in backticks when not a plain identifier: `` `motion score` ``;
- literals: numbers, strings (`'x'` or `"x"`), `True`, `False`, `None`;
- comparisons `==  !=  <  <=  >  >=`, chained as in `1 < x <= 3`;
- `x in [1, 2, 'a']` and `x not in (...)`: a list or tuple of literals;
- `and`, `or`, `not`, and pandas' `&`, `|`, `~` (`&` and `|` bind like `and` and `or`, as in pandas);
- arithmetic on numbers `+ - * / // % **`, unary `-` and `+`, parentheses.

E.g. ``--where '`motion score` > 1.0 and `aesthetic score` >= 4.5'`` or `--where "matching_score > 0.43"`.
Anything else (a call, an attribute, a subscript, a lambda, a name that is not a column, ...) is a one-line
ConfigError naming it. A missing value (NaN, None) fails every comparison but `!=`, as in pandas, so
`x > 1` drops rows where `x` is missing. `parse_where` checks the syntax (and the column names, when
given); `Where.mask` evaluates the tree over a DataFrame's columns, vectorized, with pandas Series ops.
"""

from __future__ import annotations

import ast
import functools
import keyword
import numbers
import operator
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from animatediff_core.configs import need, short
from animatediff_core.errors import ConfigError

MAX_CHARS = 4_000
MAX_DEPTH = 64  # tree depth: the evaluator recurses, so a hostile nesting must not reach Python's limit
MAX_INT_BITS = 1_024  # literal-only arithmetic runs on Python ints: `9**9**9` must not run for hours
ALLOWED = "use column names, literals, comparisons, and/or/not, arithmetic and in [...]"
LISTED_COLUMNS = 40

COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
           ast.Gt: operator.gt, ast.GtE: operator.ge}
ARITH = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
         ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
LITERALS = (bool, int, float, str, type(None))
EVAL_ERRORS = (TypeError, ValueError, ArithmeticError)
KINDS = {ast.Call: "a call", ast.Attribute: "an attribute", ast.Subscript: "a subscript", ast.Lambda: "a lambda",
         ast.ListComp: "a comprehension", ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
         ast.GeneratorExp: "a comprehension", ast.JoinedStr: "an f-string", ast.FormattedValue: "an f-string",
         ast.NamedExpr: "an assignment (:=)", ast.Starred: "a starred expression", ast.IfExp: "a conditional",
         ast.Dict: "a dict", ast.Set: "a set", ast.Slice: "a slice", ast.Await: "an await",
         ast.Yield: "a yield", ast.YieldFrom: "a yield"}


@dataclass(frozen=True)
class Where:
    """A parsed `--where` expression: `text` as given, `columns` the column names it reads."""

    text: str
    columns: tuple[str, ...]
    tree: ast.Expression = field(repr=False, compare=False)  # checked, with the real column names
    flag: str = field(default="--where", repr=False, compare=False)

    def mask(self, frame: pd.DataFrame) -> np.ndarray:
        """Which rows of `frame` pass: a bool array of len(frame). ConfigError on a column or type mismatch."""
        _check_columns(self, frame.columns)
        try:
            with np.errstate(all="ignore"):
                result = _Evaluator(self, frame).eval(self.tree)
        except EVAL_ERRORS as e:
            types = ", ".join(f"{_quote(c)} ({frame[c].dtype})" for c in self.columns) or "none"
            raise ConfigError(f"{_show(self)}: cannot evaluate it: {_one_line(e)} (columns read: {types})") from None
        return _as_mask(self, result, len(frame))

    def apply(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(kept, dropped): the rows of `frame` that pass, and those that do not."""
        keep = self.mask(frame)
        return frame[keep], frame[~keep]


def parse_where(text: str, columns: Iterable[str] | None = None, flag: str = "--where") -> Where:
    """Parse and check `text`; with `columns`, also check every name it reads is one of them."""
    need(isinstance(text, str), f"{flag}: expected an expression (text), got {type(text).__name__}")
    shown = f'{flag} "{_shorten(text)}"'
    need(text.strip() != "", f"{shown}: the expression is empty")
    columns = None if columns is None else list(columns)  # read twice: the syntax hint and the check
    need(len(text) <= MAX_CHARS,
         f"{shown}: the expression is {len(text):,} characters; at most {MAX_CHARS:,} are allowed")
    source, origin, names = _scan(text, shown)
    try:
        tree = _parse(source, origin, shown)
    except ConfigError as e:
        raise ConfigError(f"{e}{_backtick_hint(text, columns)}") from None
    need(_depth(tree) <= MAX_DEPTH, f"{shown}: the expression nests deeper than {MAX_DEPTH} levels")
    read: dict[str, None] = {}
    _Checker(shown, names, read).check(tree)
    where = Where(text, tuple(read), tree, flag)
    if columns is not None:
        _check_columns(where, columns)
    return where


def column_names_in(text: str, flag: str = "--where") -> tuple[str, ...]:
    """The column names `text` reads, in order of first use (ConfigError when it is not a valid expression)."""
    return parse_where(text, flag=flag).columns


def _scan(text: str, shown: str) -> tuple[str, list[int], dict[str, str]]:
    """(Python source, where each of its characters came from in `text`, placeholder -> backticked name).

    Backticked names become placeholder identifiers, and `&`, `|` become `and`, `or` (pandas' precedence);
    strings and comments are copied as they are, so a backtick or `&` inside a string stays text.
    """
    prefix = "_bq"
    while prefix in text:  # then no name the user wrote can be a placeholder
        prefix += "_"
    names: dict[str, str] = {}  # backticked name -> placeholder
    pieces: list[tuple[str, int, int]] = []  # (source, start in text, length in text)
    i = 0
    while i < len(text):
        c = text[i]
        if c == "`":
            end = text.find("`", i + 1)
            need(end > 0, f"{shown}: the backtick at character {i + 1} is never closed")
            need(end > i + 1, f"{shown}: empty backticks at character {i + 1}")
            pieces.append((names.setdefault(text[i + 1:end], f"{prefix}{len(names)}"), i, end + 1 - i))
            i = end + 1
            continue
        if c in "&|" and text[i + 1:i + 2] != "=":
            pieces.append((" and " if c == "&" else " or ", i, 1))
            i += 1
            continue
        end = _string_end(text, i) if c in "'\"" else _line_end(text, i) if c == "#" else i + 1
        pieces.append((text[i:end], i, end - i))
        i = end
    origin = [start + min(k, span - 1) for piece, start, span in pieces for k in range(len(piece))]
    return "".join(p for p, _, _ in pieces), origin, {v: k for k, v in names.items()}


def _backtick_hint(text: str, columns: list | None) -> str:
    """A hint when a syntax error may come from a column name written without its backticks."""
    bare = re.sub(r"`[^`]*`", " ", text)
    spaced = [str(c) for c in columns or [] if not _quote(str(c)).isidentifier() and str(c) in bare]
    return f" (a column name like {_quote(spaced[0])} goes in backticks)" if spaced else ""


def _string_end(text: str, i: int) -> int:
    """Index just past the string literal starting at `i` (the end of `text` when it is never closed)."""
    quote = text[i] * 3 if text.startswith(text[i] * 3, i) else text[i]
    j = i + len(quote)
    while j < len(text) and not text.startswith(quote, j):
        j += 2 if text[j] == "\\" else 1
    return min(j + len(quote), len(text))


def _line_end(text: str, i: int) -> int:
    end = text.find("\n", i)
    return len(text) if end < 0 else end


def _parse(source: str, origin: list[int], shown: str) -> ast.Expression:
    """ast.parse in eval mode; a syntax error is one line naming the character (in the text as given)."""
    end = origin[-1] + 1 if origin else 0
    source, origin = f"({source}\n)", [0, *origin, end, end]  # parentheses: newlines may then split a long filter
    try:
        with warnings.catch_warnings():  # '\d' in a string literal: Python warns, and a filter may make it an error
            warnings.simplefilter("ignore")
            return ast.parse(source, mode="eval")
    except SyntaxError as e:
        lines = source.split("\n")
        at = sum(len(line) + 1 for line in lines[:max((e.lineno or 1) - 1, 0)]) + max((e.offset or 1) - 1, 0)
        at = origin[min(at, len(origin) - 1)]
        place = f"at character {at + 1}" if at < end else "at the end"
        why = re.sub(r" \(detected at line \d+\)|\. Perhaps you forgot a comma\?", "", _one_line(e.msg))
        raise ConfigError(f"{shown}: {place}: {why}") from None
    except (RecursionError, MemoryError):
        raise ConfigError(f"{shown}: the expression nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # e.g. an integer literal of more than 4,300 digits
        raise ConfigError(f"{shown}: cannot parse it ({_one_line(e)})") from None


def _depth(tree: ast.AST) -> int:
    """How deep `tree` nests (counted without recursion, so any tree can be measured)."""
    deepest, stack = 0, [(tree, 0)]
    while stack and deepest <= MAX_DEPTH:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node)
                     if not isinstance(child, (ast.expr_context, ast.operator, ast.cmpop, ast.boolop, ast.unaryop)))
    return deepest


class _Checker:
    """Walks a parsed tree: refuses every node but the allowed ones, renames placeholders, records names."""

    def __init__(self, shown: str, names: dict[str, str], read: dict[str, None]):
        self.shown, self.names, self.read = shown, names, read

    def check(self, node: ast.AST) -> None:
        getattr(self, "_" + type(node).__name__, self._refuse)(node)

    def _refuse(self, node: ast.AST) -> None:
        raise ConfigError(f"{self.shown}: {_describe(node)} is not allowed; {ALLOWED}")

    def _Expression(self, node: ast.Expression) -> None:
        self.check(node.body)

    def _Name(self, node: ast.Name) -> None:
        node.id = self.names.get(node.id, node.id)
        self.read.setdefault(node.id)

    def _Constant(self, node: ast.Constant) -> None:
        if type(node.value) not in LITERALS:
            self._refuse(node)

    def _BinOp(self, node: ast.BinOp) -> None:
        need(type(node.op) in ARITH, f"{self.shown}: the operator {_operator(node.op)} is not allowed; {ALLOWED}")
        self.check(node.left)
        self.check(node.right)

    def _UnaryOp(self, node: ast.UnaryOp) -> None:
        self.check(node.operand)

    def _BoolOp(self, node: ast.BoolOp) -> None:
        for value in node.values:
            self.check(value)

    def _Compare(self, node: ast.Compare) -> None:
        self.check(node.left)
        for k, (op, right) in enumerate(zip(node.ops, node.comparators)):
            if isinstance(op, (ast.In, ast.NotIn)):
                need(k == len(node.ops) - 1, f"{self.shown}: a list after `in` must end its comparison; "
                                             "use parentheses and `and` to combine comparisons")
                self._literal_list(right)
            else:
                need(type(op) in COMPARE, f"{self.shown}: the operator {_operator(op)} is not allowed; "
                                          "compare with == != < <= > >=")
                self.check(right)

    def _literal_list(self, node: ast.expr) -> None:
        need(isinstance(node, (ast.List, ast.Tuple)), f"{self.shown}: `in` needs a list of literals on its "
                                                      f"right, as in x in [1, 'a'], not {_describe(node)}")
        for item in node.elts:
            need(_literal(item) is not _NOT_LITERAL, f"{self.shown}: the list after `in` may hold only literals "
                                                     f"(numbers, strings, True, False, None), not {_describe(item)}")


_NOT_LITERAL = object()


def _literal(node: ast.expr):
    """The value of a literal (a signed number included), or _NOT_LITERAL."""
    sign = 1
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign, node = (-1 if isinstance(node.op, ast.USub) else 1), node.operand
        if not (isinstance(node, ast.Constant) and type(node.value) in (int, float)):
            return _NOT_LITERAL
    if not (isinstance(node, ast.Constant) and type(node.value) in LITERALS):
        return _NOT_LITERAL
    return node.value if sign == 1 else -node.value


class _Evaluator:
    """Evaluates a checked tree over a frame's columns: Series ops, so the work is vectorized."""

    def __init__(self, where: Where, frame: pd.DataFrame):
        self.shown, self.frame = _show(where), frame

    def eval(self, node: ast.AST):
        return getattr(self, "_" + type(node).__name__)(node)

    def _Expression(self, node: ast.Expression):
        return self.eval(node.body)

    def _Name(self, node: ast.Name) -> pd.Series:
        column = self.frame[node.id]
        need(isinstance(column, pd.Series), f"{self.shown}: the table has more than one column {node.id!r}")
        return column

    def _Constant(self, node: ast.Constant):
        return node.value

    def _BinOp(self, node: ast.BinOp):
        left, right = self.eval(node.left), self.eval(node.right)
        self._need_number(left, right)
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            need(right * left.bit_length() <= MAX_INT_BITS, f"{self.shown}: a power too large to compute")
        result = ARITH[type(node.op)](left, right)
        need(not isinstance(result, int) or result.bit_length() <= MAX_INT_BITS, f"{self.shown}: a number too large")
        return result

    def _UnaryOp(self, node: ast.UnaryOp):
        value = self.eval(node.operand)
        if isinstance(node.op, (ast.Not, ast.Invert)):
            self._need_bool("`not` and `~`", value)
            return (not value) if isinstance(value, (bool, np.bool_)) else ~value
        self._need_number(value)
        return UNARY[type(node.op)](value)

    def _BoolOp(self, node: ast.BoolOp):
        values = [self.eval(v) for v in node.values]
        self._need_bool("`and`, `or`, `&` and `|`", *values)
        combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
        return functools.reduce(combine, values)

    def _Compare(self, node: ast.Compare):
        left, results = self.eval(node.left), []
        for op, right_node in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                values = [_literal(item) for item in right_node.elts]
                found = left.isin(values) if isinstance(left, pd.Series) else left in values
                if isinstance(op, ast.NotIn):
                    found = ~found if isinstance(found, pd.Series) else not found
                results.append(found)
                continue
            right = self.eval(right_node)
            results.append(COMPARE[type(op)](left, right))
            left = right
        return functools.reduce(operator.and_, results)

    def _need_number(self, *values) -> None:
        for v in values:
            need(_is_number(v), f"{self.shown}: arithmetic needs numbers, not {_kind_of(v)}")

    def _need_bool(self, what: str, *values) -> None:
        for v in values:
            need(_is_bool(v), f"{self.shown}: {what} need comparisons or boolean columns, not {_kind_of(v)}")


def _is_number(v) -> bool:
    if isinstance(v, pd.Series):
        return pd.api.types.is_numeric_dtype(v.dtype)
    return isinstance(v, numbers.Number)


def _is_bool(v) -> bool:
    if isinstance(v, pd.Series):
        return pd.api.types.is_bool_dtype(v.dtype)
    return isinstance(v, (bool, np.bool_))


def _as_mask(where: Where, result, rows: int) -> np.ndarray:
    """`result` as a bool array of `rows`; a missing value (nullable booleans) fails the row."""
    if isinstance(result, (bool, np.bool_)):
        return np.full(rows, bool(result))
    need(_is_bool(result), f"{_show(where)}: the expression must be a comparison or a boolean, "
                           f"as in x > 1 and y == 'a'; it gives {_kind_of(result)}")
    return result.to_numpy(dtype=bool, na_value=False)


def _check_columns(where: Where, available: Iterable) -> None:
    available = list(available)
    known = set(available)
    for name in where.columns:
        need(name in known, f"{_show(where)}: unknown column {name!r}; the table's columns: {_listing(available)}")


def _listing(columns: list) -> str:
    shown = ", ".join(_quote(str(c)) for c in columns[:LISTED_COLUMNS]) or "(none)"
    return shown + (f", ... ({len(columns) - LISTED_COLUMNS} more)" if len(columns) > LISTED_COLUMNS else "")


def _quote(name: str) -> str:
    """A column name as the expression would spell it: backticked unless it is a plain identifier."""
    return name if name.isidentifier() and not keyword.iskeyword(name) else f"`{name}`"


def _describe(node: ast.AST) -> str:
    """What a refused node is, in words, with its source: 'a call (foo(...))'."""
    if isinstance(node, ast.Call):
        func = _source(node.func)
        return f"a call ({func if isinstance(node.func, (ast.Name, ast.Attribute, ast.Call)) else f'({func})'}(...))"
    if isinstance(node, ast.Name):
        return f"the column {_quote(node.id)}"
    if isinstance(node, (ast.List, ast.Tuple)):
        return f"a {type(node).__name__.lower()} outside `in [...]` ({_source(node)})"
    if isinstance(node, ast.Constant):
        kind = {bytes: "a bytes literal", complex: "a complex number"}.get(type(node.value), "a literal")
        return f"{kind} ({_source(node)})"
    return f"{KINDS.get(type(node), 'a ' + type(node).__name__ + ' expression')} ({_source(node)})"


def _source(node: ast.AST) -> str:
    text = ast.unparse(node)  # the tree's depth is already bounded
    return text if len(text) <= 60 else text[:57] + "..."


def _operator(op: ast.AST) -> str:
    text = {ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>", ast.MatMult: "@", ast.BitAnd: "&", ast.BitOr: "|",
            ast.Is: "is", ast.IsNot: "is not"}.get(type(op), type(op).__name__)
    return f"`{text}`"


def _kind_of(value) -> str:
    if isinstance(value, pd.Series):
        return f"a column of {value.dtype} values"
    return f"{type(value).__name__} {short(value)}"


def _show(where: Where) -> str:
    return f'{where.flag} "{_shorten(where.text)}"'


def _shorten(text: str, limit: int = 100) -> str:
    """The expression for a one-line message: control characters escaped, cut to `limit`."""
    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(error) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."
