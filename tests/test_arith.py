"""The restricted evaluator: arithmetic is computed, everything else is refused with ArithError."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import treegen.task as task_module
from treegen.arith import (
    MAX_EXPR_CHARS,
    ArithError,
    format_number,
    numbers_equal,
    parse_number,
    safe_eval,
)


@pytest.mark.parametrize(
    "expr, value",
    [
        ("(12+7)*3", 57),
        ("7 // 2", 3),
        ("7 % 4", 3),
        ("7 / 2", 3.5),
        ("-3 + +5", 2),
        ("2 ** 10", 1024),
        ("2 ** -1", 0.5),
        ("2^3", 8),  # models mean a power
        ("1,250 * 4", 5000),  # thousands separators
        ("6 × 7", 42),
        ("84 ÷ 2", 42),
        ("$5 * 3", 15),
        ("3*4 = 12", 12),  # the part before "=" is what is evaluated
        ("  0.1 + 0.2 ", 0.30000000000000004),
        ("1_000 + 1", 1001),
    ],
)
def test_arithmetic_is_computed(expr, value):
    assert safe_eval(expr) == pytest.approx(value)


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "x + 1",
        "abs(-3)",
        "(1).real",
        "[1, 2][0]",
        "lambda: 1",
        "[i for i in range(3)]",
        "{1: 2}",
        "'12'",
        "True + 1",
        "1 if 1 else 2",
        "1 < 2",
        "1 & 3",
        "1 << 70",
        "3j",
        "f'{1}'",
        "(yield 1)",
        "",
        "   ",
        "1 +",
        "1\x00",
    ],
)
def test_everything_but_arithmetic_is_refused(expr):
    with pytest.raises(ArithError):
        safe_eval(expr)


@pytest.mark.parametrize(
    "expr, reason",
    [
        ("1/0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("0 ** -1", "zero to a negative power"),
        ("10 ** 11", "exponent"),
        ("10 ** 10 ** 10", "exponent"),
        ("9999999 ** 2", "base"),
        ("(-8) ** 0.5", "negative"),
        ("999999 ** 10 ", "beyond"),  # within the exponent and base limits, but the result is not
        ("1e300 * 1e300", "beyond"),
        ("99999999999999999999", "beyond"),
        ("1e308 * 10", "beyond"),
    ],
)
def test_limits_and_undefined_results_are_refused_with_the_reason(expr, reason):
    with pytest.raises(ArithError, match=reason):
        safe_eval(expr)


def test_long_and_deep_expressions_are_refused_fast():
    with pytest.raises(ArithError, match="longer"):
        safe_eval("1+" * MAX_EXPR_CHARS + "1")
    with pytest.raises(ArithError):
        safe_eval("(" * 150 + "1" + ")" * 49)  # within the length limit, unbalanced and deep
    assert safe_eval("(" * 90 + "1" + ")" * 90) == 1


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=250))
def test_random_text_never_raises_anything_but_arith_error(text):
    try:
        value = safe_eval(text)
    except ArithError:
        return
    assert isinstance(value, float) and abs(value) <= 1e15


_ATOMS = st.sampled_from(["1", "2", "0", "7.5", "-3", "10", "x", "f(1)", "'a'", "1e9", "()", "[1]", "a.b", "**", "//"])
_OPS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "(", ")", " ", "^", ",", "=", "."])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_ATOMS, _OPS), max_size=40))
def test_random_arithmetic_like_text_never_raises_anything_but_arith_error(parts):
    try:
        value = safe_eval("".join(parts))
    except ArithError:
        return
    assert isinstance(value, float) and abs(value) <= 1e15


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6), st.sampled_from(["+", "-", "*"]))
def test_integer_arithmetic_is_exact(a, b, op):
    expected = {"+": a + b, "-": a - b, "*": a * b}[op]
    assert safe_eval(f"({a}){op}({b})") == expected


def test_numbers_equal_reads_labels_and_tolerates_rounding():
    assert numbers_equal("42", 42.0)
    assert numbers_equal("3.5", "7/2")
    assert numbers_equal("1,000", "1000")
    assert numbers_equal(0.1 + 0.2, "0.3")
    assert numbers_equal("0", "-0")
    assert not numbers_equal("42", "43")
    assert not numbers_equal("1000", "1001")
    assert numbers_equal("1000", "1001", rel=1e-2)
    assert not numbers_equal("forty-two", "forty-two")  # not a number: equal to nothing
    assert not numbers_equal("nan", "nan")
    assert not numbers_equal("inf", "inf")


def test_parse_and_format_number():
    assert parse_number("  12 ") == 12.0
    assert parse_number("(2+3)*4") == 20.0
    assert parse_number(True) is None
    assert parse_number("abc") is None
    assert format_number(57.0) == "57"
    assert format_number(-0.0) == "0"
    assert format_number(3.5) == "3.5"
    assert format_number(0.1 + 0.2) == "0.3"
    assert format_number(1e15) == "1000000000000000"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(-1e15, 1e15, allow_nan=False), st.integers(-10**15, 10**15).map(float)))
def test_format_number_writes_what_numeric_labels_store(value):
    canonical_number = getattr(task_module, "canonical_number", None)
    if canonical_number is None:
        pytest.skip("treegen.task.canonical_number (the numeric format) is not there yet")
    text = format_number(value)
    assert text == canonical_number(value)
    assert numbers_equal(text, value)
