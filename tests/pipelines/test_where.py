"""`--where` expressions: pandas `DataFrame.query` is the reference for what passes; everything else is refused."""

import time
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from animatediff_core.errors import ConfigError
from pipelines.where import MAX_CHARS, Where, column_names_in, parse_where

NAN = float("nan")
FRAME = pd.DataFrame({
    "motion score": [0.5, 1.5, NAN, 2.0, 1.0, 3.5],
    "aesthetic score": [4.0, 4.5, 5.0, NAN, 6.0, 4.5],
    "matching_score": [0.40, 0.44, 0.50, 0.43, NAN, 0.90],
    "a": [0, 1, 2, 3, 4, 5],
    "s": ["x", "y", None, "x", "zz", "y"],
    "flag": [True, False, True, True, False, False],
})


def kept(where: Where, frame: pd.DataFrame = FRAME) -> list[int]:
    return np.flatnonzero(where.mask(frame)).tolist()


def reference(text: str, frame: pd.DataFrame = FRAME) -> list[int]:
    return frame.query(text).index.tolist()  # RangeIndex: labels are positions


@pytest.mark.parametrize("text", [
    "matching_score > 0.43",
    "`motion score` > 1.0 and `aesthetic score` >= 4.5",
    "`motion score` > 1.0 & `aesthetic score` >= 4.5",
    "1 < a <= 3",
    "0.4 <= matching_score < 0.5 != a",
    "a in [1, 3, -2] or s == 'zz'",
    "a not in (1, 3)",
    "s in ['x', None]",
    "s not in ['x']",
    "s != 'x'",
    "s < 'y'",
    "s == 1",
    "not flag",
    "~flag | a > 4",
    "~(a > 1) & flag",
    "not (a > 1 or flag) or s == 'y'",
    "a > 1 & a < 4 | flag",
    "(a + 1) * 2 - `motion score` ** 2 >= -a // 2 % 3",
    "a / 2 > 1 and -`aesthetic score` < -4.5",
    "+a >= 3",
    "(a + 1) in [2, 4]",
    "`motion score` != 1.5",
    "matching_score == matching_score",
    "flag == True and a != None",
    "flag",
    "flag and True",
    "a > 1 # a comment may follow",
    '"a`b & c" != s',
])
def test_mask_matches_pandas_query(text):
    assert kept(parse_where(text, FRAME.columns)) == reference(text)


def test_a_long_filter_may_span_lines_and_end_with_a_comment():
    assert kept(parse_where("a > 1\n and s == 'y'  # not in pandas: it reads one line")) == [5]


def test_parsing_never_warns_even_on_an_invalid_escape_in_a_string():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kept(parse_where("s != '\\d'")) == list(range(6))


def test_missing_values_fail_comparisons_but_not_inequality_as_in_pandas():
    frame = pd.DataFrame({"x": [1.0, NAN, None, 3.0], "n": pd.array([1, None, 2, 3], dtype="Int64")})
    assert kept(parse_where("x > 0"), frame) == [0, 3] == reference("x > 0", frame)
    assert kept(parse_where("x != 1"), frame) == [1, 2, 3] == reference("x != 1", frame)
    assert kept(parse_where("n > 0"), frame) == [0, 2, 3]
    assert kept(parse_where("not (n > 1)"), frame) == [0]  # a missing nullable boolean stays missing: dropped


def test_apply_splits_kept_and_dropped_rows():
    kept_rows, dropped = parse_where("a >= 4 or s == 'y'").apply(FRAME)
    assert kept_rows.index.tolist() == [1, 4, 5] and dropped.index.tolist() == [0, 2, 3]
    assert list(kept_rows.columns) == list(FRAME.columns)


def test_columns_are_the_names_read_in_order_of_first_use():
    where = parse_where("`motion score` > a and (a < 3 or `c d` == 1)", flag="--filter")
    assert where.columns == ("motion score", "a", "c d")
    assert where.text == "`motion score` > a and (a < 3 or `c d` == 1)"
    assert column_names_in("x in [1] and `y z` > x") == ("x", "y z")
    assert parse_where("a > 1") == parse_where("a > 1")


def test_an_expression_without_columns_is_the_same_for_every_row():
    assert kept(parse_where("1 < 2")) == list(range(6))
    assert kept(parse_where("not True")) == []


def test_unknown_column_lists_the_table_columns_backticked_where_needed():
    with pytest.raises(ConfigError) as e:
        parse_where("x > 1", ["a", "b", "c d"])
    assert str(e.value) == """--where "x > 1": unknown column 'x'; the table's columns: a, b, `c d`"""
    with pytest.raises(ConfigError, match="at character 1: invalid syntax .a column name like `motion score` goes in"):
        parse_where("motion score > 1", FRAME.columns)
    with pytest.raises(ConfigError) as e:
        parse_where("`motion score` > > 1", FRAME.columns)
    assert "backticks" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown column 'gone'.*the table's columns: `motion score`"):
        parse_where("gone > 1").mask(FRAME)  # checked at mask time when not given to parse_where


BAD = [
    ("foo(x) > 1", "a call (foo(...)) is not allowed; use column names, literals, comparisons"),
    ("__import__('os')", "a call (__import__(...))"),
    ("__import__('os').system('true') == 0", "a call (__import__('os').system(...))"),
    ("a.str.len() > 1", "a call (a.str.len(...))"),
    ("a.str == 'x'", "an attribute (a.str)"),
    ("a.__class__ == 1", "an attribute (a.__class__)"),
    ("().__class__.__bases__[0] == 1", "a subscript (().__class__.__bases__[0])"),
    ("a[0] > 1", "a subscript (a[0])"),
    ("(lambda: 1)() == 1", "a call ((lambda: 1)(...))"),
    ("(lambda: 1) == 1", "a lambda (lambda: 1)"),
    ("[x for x in a] == 1", "a comprehension ([x for x in a])"),
    ("f'{a}' == s", "an f-string"),
    ("(y := 1) == a", "an assignment (:=)"),
    ("a if flag else 1", "a conditional"),
    ("{'a': 1} == a", "a dict"),
    ("{1} == a", "a set"),
    ("[1, 2] == a", "a list outside `in [...]`"),
    ("a in b", "`in` needs a list of literals on its right"),
    ("a in [1, a]", "may hold only literals (numbers, strings, True, False, None), not the column a"),
    ("a in [1, len(s)]", "not a call (len(...))"),
    ("a in [1] == 1", "a list after `in` must end its comparison"),
    ("a is None", "the operator `is` is not allowed"),
    ("a << 1 > 0", "the operator `<<` is not allowed"),
    ("a ^ 1 > 0", "the operator `^` is not allowed"),
    ("b'x' == s", "a bytes literal (b'x')"),
    ("1j == a", "a complex number (1j)"),
    ("a > 1 &= 2", "at character 7: invalid syntax"),
    ("a >", "at the end: invalid syntax"),
    ("a > > 1", "at character 5: invalid syntax"),
    ("'x == s", "at character 1: unterminated string literal"),
    ("`motion score > 1", "the backtick at character 1 is never closed"),
    ("`` > 1", "empty backticks at character 1"),
    ("@x > 1", "at character 1"),
    ("", "the expression is empty"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_refused_expressions_name_the_offending_piece_in_one_line(text, message):
    with pytest.raises(ConfigError) as e:
        parse_where(text, FRAME.columns)
    assert message in str(e.value)
    assert str(e.value).startswith(f'--where "{text}"') and "\n" not in str(e.value)


@pytest.mark.parametrize("text,message", [
    ("(" * 5000, f"the expression is 5,000 characters; at most {MAX_CHARS:,} are allowed"),
    ("a" * (MAX_CHARS + 1), "at most 4,000 are allowed"),
    ("(" * 1000 + "a" + ")" * 1000 + " > 1", "nested"),
    ("-" * 3000 + "a > 1", "nests deeper than 64 levels"),
    ("not " * 900 + "flag", "nests deeper than 64 levels"),
    ("a + " * 100 + "a > 1", "nests deeper than 64 levels"),
    ("~" * 3900 + "flag", "nests deeper than 64 levels"),
])
def test_hostile_sizes_and_nesting_are_one_line_config_errors(text, message):
    with pytest.raises(ConfigError) as e:
        parse_where(text)
    assert message in str(e.value) and "\n" not in str(e.value) and len(str(e.value)) < 300


def test_huge_literal_arithmetic_is_refused_quickly():
    start = time.monotonic()
    for text in ["9 ** 9 ** 9 ** 9 > a", "(10 ** 400) * (10 ** 400) > a", "2 ** 1025 > a"]:
        with pytest.raises(ConfigError, match="too large"):
            parse_where(text).mask(FRAME)
    with pytest.raises(ConfigError, match="division by zero"):
        parse_where("1 / 0 < a").mask(FRAME)
    assert time.monotonic() - start < 5


def test_type_mismatches_are_one_line_errors_naming_the_column_types():
    with pytest.raises(ConfigError) as e:
        parse_where("s > 1").mask(FRAME)
    assert str(e.value).startswith('--where "s > 1": cannot evaluate it:') and "columns read: s (str)" in str(e.value)
    with pytest.raises(ConfigError, match="arithmetic needs numbers, not a column of str values"):
        parse_where("s * 100000000 == 'x'").mask(FRAME)  # never builds huge strings
    with pytest.raises(ConfigError, match="`and`, `or`, `&` and `|` need comparisons or boolean columns"):
        parse_where("a and flag").mask(FRAME)
    with pytest.raises(ConfigError, match="`not` and `~` need comparisons or boolean columns, not a column of int64"):
        parse_where("~a > 1").mask(FRAME)


@pytest.mark.parametrize("text", ["a + 1", "a", "s", "'x'", "None", "3"])
def test_a_result_that_is_not_boolean_is_refused(text):
    with pytest.raises(ConfigError, match="the expression must be a comparison or a boolean"):
        parse_where(text).mask(FRAME)


def test_messages_name_the_flag_and_keep_long_or_multiline_text_on_one_line():
    with pytest.raises(ConfigError, match=r'^--filter "a > 1\\n and foo\(\)": a call'):
        parse_where("a > 1\n and foo()", flag="--filter")
    with pytest.raises(ConfigError) as e:
        parse_where("a > 1 and " * 30 + "len(s) > 1")
    assert "..." in str(e.value) and "a call (len(...))" in str(e.value)


# -- random expressions: equal to pandas' answer, or a ConfigError; never another exception -------------------

NUMBERS = st.sampled_from(["a", "`motion score`", "matching_score", "0", "1", "2", "-1", "0.5", "2.5", "3"])


def _binary(parts) -> str:
    left, op, right = parts
    return f"({left} {op} {right})"


ARITH = st.recursive(NUMBERS, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "//", "%"]), inner).map(_binary),
    # small literal exponents: pandas computes 5**5**5**5 on Python ints, and never ends
    st.tuples(inner, st.just("**"), st.sampled_from(["0", "1", "2", "3"])).map(_binary),
    inner.map(lambda x: f"-{x}"),
), max_leaves=4)
LITERALS = st.sampled_from(["1", "2", "-1", "0.5", "'x'", "'y'", "None", "True"])
# pandas reads `not` and `~` on a literal as Python's bitwise `~` (`not True` is -2): every comparison reads a column
COLUMNS = st.tuples(st.sampled_from(["a", "`motion score`", "matching_score"]), st.sampled_from(["+", "*", "/", "**"]),
                    ARITH).map(_binary) | st.sampled_from(["a", "`motion score`", "matching_score"])
COMPARISONS = st.one_of(
    st.tuples(COLUMNS, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), ARITH).map(" ".join),
    st.tuples(ARITH, st.sampled_from(["==", "!=", "<", "<=", ">", ">="]), COLUMNS).map(" ".join),
    st.tuples(ARITH, st.sampled_from(["<", "<="]), COLUMNS, st.sampled_from(["<", "<=", "!="]), ARITH).map(" ".join),
    st.tuples(st.sampled_from(["s", "a", "`motion score`", "(a + 1)"]), st.sampled_from(["in", "not in"]),
              st.lists(LITERALS, max_size=3)).map(lambda t: f"{t[0]} {t[1]} [{', '.join(t[2])}]"),
    st.tuples(st.sampled_from(["s", "a"]), st.sampled_from(["==", "!=", "<"]),  # pandas: 'x' == 'x' is False
              st.sampled_from(["'x'", "'zz'", "s", "1"])).map(" ".join),
    st.just("flag"),
)
BOOLEANS = st.recursive(COMPARISONS, lambda inner: st.one_of(
    st.tuples(inner, st.sampled_from(["and", "or", "&", "|"]), inner).map(" ".join),
    st.tuples(inner, st.sampled_from(["and", "or", "&", "|"]), inner).map(_binary),
    inner.map(lambda x: f"not {x}"),
    inner.map(lambda x: f"~({x})"),
), max_leaves=5)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BOOLEANS)
def test_random_expressions_agree_with_pandas_query_or_are_refused(text):
    try:
        ours = kept(parse_where(text, FRAME.columns))
    except ConfigError as e:
        assert "\n" not in str(e)
        return
    try:
        raw = FRAME.eval(text)
        if not (isinstance(raw, pd.Series) and pd.api.types.is_bool_dtype(raw.dtype)):
            return  # pandas itself gives no row mask here (e.g. `not` on a literal is its bitwise `~`)
        expected = reference(text)
    except Exception:  # noqa: BLE001 - pandas raises many kinds
        return  # pandas refuses what we allow (e.g. a literal-only expression)
    assert ours == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab `'\"()[]<>=!&|~+-*/%.,:#@\\01 \nxnotandorin", max_size=40))
def test_any_text_is_parsed_or_refused_with_a_config_error(text):
    frame = pd.DataFrame({"a": [1, 2], "b": [0.5, NAN], "x": ["p", None]})
    try:
        parse_where(text, frame.columns).mask(frame)
    except ConfigError as e:
        assert "\n" not in str(e)
