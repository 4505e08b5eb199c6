"""A restricted arithmetic evaluator for the verifier's numeric answers, and number comparison.

A verifier answers a numeric question with a short expression (``"(12+7)*3"``) that treegen
computes itself, so the model's arithmetic slips do not count against a right label. The
text comes from a model, so it is never given to Python's ``eval``: it is parsed with
``ast.parse(mode="eval")`` and only a whitelist is walked — number literals, ``+ - * / // %
**``, unary ``+ -`` and parentheses. Names, calls, attributes, subscripts, lambdas,
comprehensions, strings and everything else are refused. Length, exponent and magnitude
limits keep every evaluation small and fast (``10**10**10`` is refused, not computed).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Callable

MAX_EXPR_CHARS = 200
MAX_EXPONENT = 10  # |exponent| of ``**``
MAX_POW_BASE = 1e6  # |base| of ``**``
MAX_MAGNITUDE = 1e15  # every literal, intermediate and result (numeric labels have the same limit)
_DECIMALS = 12  # decimal places a canonical number keeps

Number = int | float

_BINARY: dict[type, Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
# How models write arithmetic that Python spells otherwise: "2^3" means a power, not XOR.
_SPELLINGS = (("×", "*"), ("·", "*"), ("÷", "/"), ("−", "-"), ("–", "-"), ("^", "**"))
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class ArithError(ValueError):
    """An expression treegen will not evaluate; the message says why."""


def safe_eval(expr: str) -> float:
    """The value of an arithmetic expression, or ArithError with the reason.

    Tolerates what models add around an expression: surrounding space, ``$``, thousands
    commas (``1,000``), ``×``/``÷``/``^``, and a trailing ``= result`` (the part before
    ``=`` is evaluated). Integer arithmetic stays exact up to the magnitude limit.
    """
    if not isinstance(expr, str):
        raise ArithError(f"expected an expression as text, got {type(expr).__name__}")
    text = expr.strip()
    if len(text) > MAX_EXPR_CHARS:
        raise ArithError(f"expression longer than {MAX_EXPR_CHARS} characters")
    text = text.split("=", 1)[0].replace("$", "")
    for written, meant in _SPELLINGS:
        text = text.replace(written, meant)
    text = _THOUSANDS.sub("", text).strip()
    if not text:
        raise ArithError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:  # ValueError: a NUL byte
        raise ArithError(f"not an arithmetic expression ({type(exc).__name__})") from None
    try:
        value = _eval(tree.body)
    except RecursionError:
        raise ArithError("expression nested too deeply") from None
    return float(value)


def _eval(node: ast.AST) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ArithError(f"only numbers are allowed, not {type(value).__name__}")
        return _bounded(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        operand = _eval(node.operand)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        op = _BINARY.get(type(node.op))
        if op is None:
            raise ArithError(f"operator {type(node.op).__name__} is not allowed")
        try:
            return _bounded(op(left, right))
        except ZeroDivisionError:
            raise ArithError("division by zero") from None
        except OverflowError:
            raise ArithError(f"result beyond {MAX_MAGNITUDE:g}") from None
    raise ArithError(f"{type(node).__name__} is not allowed (only numbers and + - * / // % **)")


def _power(base: Number, exponent: Number) -> Number:
    if abs(exponent) > MAX_EXPONENT:
        raise ArithError(f"exponent beyond {MAX_EXPONENT}")
    if abs(base) > MAX_POW_BASE:
        raise ArithError(f"power of a base beyond {MAX_POW_BASE:g}")
    if base < 0 and exponent != int(exponent):
        raise ArithError("fractional power of a negative number")
    try:
        return _bounded(base**exponent)
    except ZeroDivisionError:
        raise ArithError("zero to a negative power") from None
    except OverflowError:
        raise ArithError(f"result beyond {MAX_MAGNITUDE:g}") from None


def _bounded(value: Number) -> Number:
    if isinstance(value, complex):  # defensive: a negative base with a fractional power
        raise ArithError("complex result")
    if isinstance(value, float) and not math.isfinite(value):
        raise ArithError("not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise ArithError(f"number beyond {MAX_MAGNITUDE:g}")
    return value


def parse_number(value: str | float | int) -> float | None:
    """A number from a label or an answer (``"42"``, ``"3.5"``, ``"1,000"``, ``"3/4"``), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(_THOUSANDS.sub("", value.strip()))
        except ValueError:
            try:
                number = safe_eval(value)
            except ArithError:
                return None
    else:
        return None
    return number if math.isfinite(number) and abs(number) <= MAX_MAGNITUDE else None


def format_number(value: float) -> str:
    """A number written canonically, as numeric labels are (``treegen.task.canonical_number``):
    ``42`` not ``42.0``, at most 12 decimal places (``0.1+0.2`` is ``0.3``), no exponent."""
    if not math.isfinite(value):
        raise ArithError("not a finite number")
    number = Decimal(repr(float(value)))
    if number.as_tuple().exponent < -_DECIMALS:  # type: ignore[operator]
        number = number.quantize(Decimal(1).scaleb(-_DECIMALS), rounding=ROUND_HALF_EVEN)
    number = number.normalize()
    return "0" if number == 0 else format(number, "f")


def numbers_equal(a: str | float, b: str | float, rel: float = 1e-6) -> bool:
    """True when both are numbers equal within ``rel`` (relative) or 1e-9 (absolute).

    Text is read with ``parse_number``; anything that is not a number is equal to nothing.
    """
    x, y = parse_number(a), parse_number(b)
    if x is None or y is None:
        return False
    return math.isclose(x, y, rel_tol=rel, abs_tol=1e-9)
