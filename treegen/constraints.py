"""User constraints (``--constraint TEXT``, repeatable, or a file): said in every prompt, and
the checkable ones enforced as rejections named ``constraint: <text>``.

Every constraint is one sentence of the system message (the fixed prefix of the run's
prompt). A constraint in one of these forms (case-insensitive, a final period allowed) is
also checked on each candidate:

- ``question at most 30 words``, ``context at least 200 characters``, ``each option at
  most 5 words``, ``label exactly 1 word`` (``must be``/``must have`` may come between;
  ``no more than``, ``fewer than``, ``more than``, ``under``, ``over`` also read);
- ``question must match /regex/`` and ``... must not match /regex/`` (flags after the
  closing slash: ``i``, ``m``, ``s``, ``x``; without a field, any text of the example);
- ``must not contain "word"`` and ``question must contain "word"`` (case-insensitive);
- ``exactly 4 options``.

Anything else is prompt-only (``check`` None). A checkable form with a broken pattern is an
InputError naming the constraint, so a typo never silently turns a rule into a wish.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from treegen.errors import InputError
from treegen.task import Example, read_text_file

_FIELD = r"(?:the\s+)?(?P<field>questions?|contexts?|each\s+option|every\s+option|all\s+options|options?|labels?|answers?)"
_MODAL = r"(?:(?:must|should)\s+(?:be|have|contain|use)\s+|(?:is|are|has|have)\s+)?"
_COMPARE = (
    r"(?P<cmp>at\s+most|at\s+least|no\s+more\s+than|no\s+fewer\s+than|no\s+less\s+than|not\s+more\s+than|"
    r"up\s+to|fewer\s+than|less\s+than|more\s+than|under|over|exactly)"
)
_LENGTH = re.compile(
    rf"^{_FIELD}\s+{_MODAL}{_COMPARE}\s+(?P<n>\d+)\s+(?P<unit>words?|characters?|chars?)\.?$", re.I
)
_PATTERN = re.compile(rf"^(?:{_FIELD}\s+)?(?:must|should)\s+(?P<neg>not\s+)?match\s+/(?P<pat>.*)/(?P<flags>[a-z]*)\.?$", re.I | re.S)
_CONTAIN = re.compile(
    rf"^(?:{_FIELD}\s+)?(?:must|should)\s+(?P<neg>not\s+)?contain\s+(?:\"(?P<a>[^\"]+)\"|'(?P<b>[^']+)'|“(?P<c>[^”]+)”)\.?$",
    re.I,
)
_OPTIONS = re.compile(r"^(?:(?:must\s+|should\s+)?(?:have|has|use)\s+)?exactly\s+(?P<n>\d+)\s+options?\.?$", re.I)
_FLAGS = {"i": re.I, "m": re.M, "s": re.S, "x": re.X}
_LIMITS: dict[str, Callable[[int, int], bool]] = {
    "at most": lambda v, n: v <= n, "no more than": lambda v, n: v <= n, "not more than": lambda v, n: v <= n,
    "up to": lambda v, n: v <= n, "at least": lambda v, n: v >= n, "no fewer than": lambda v, n: v >= n,
    "no less than": lambda v, n: v >= n, "fewer than": lambda v, n: v < n, "less than": lambda v, n: v < n,
    "under": lambda v, n: v < n, "more than": lambda v, n: v > n, "over": lambda v, n: v > n,
    "exactly": lambda v, n: v == n,
}


@dataclass(frozen=True)
class Constraint:
    """One user constraint; ``check(example)`` is True when it holds, None when only the prompt can ask for it."""

    text: str
    check: Callable[[Example], bool] | None


def _texts(example: Example, field: str | None) -> list[str]:
    """The texts of ``field`` (None: every text of the example); an absent context is no text."""
    if field is None:
        return [t for t in (example.question, example.context, *example.options) if t]
    field = " ".join(field.lower().split())
    if field.startswith("question"):
        return [example.question]
    if field.startswith("context"):
        return [example.context] if example.context else []
    if field.startswith(("label", "answer")):
        return [example.label]
    return list(example.options)


def _length_check(m: re.Match[str]) -> Callable[[Example], bool]:
    field, limit, n = m.group("field"), _LIMITS[" ".join(m.group("cmp").lower().split())], int(m.group("n"))
    words = m.group("unit").lower().startswith("word")

    def check(example: Example) -> bool:
        return all(limit(len(t.split()) if words else len(t), n) for t in _texts(example, field))

    return check


def _pattern_check(text: str, m: re.Match[str]) -> Callable[[Example], bool]:
    flags = 0
    for letter in m.group("flags").lower():
        if letter not in _FLAGS:
            raise InputError(
                f"constraint {text!r}: unknown regex flag {letter!r} after the closing slash. "
                "Use i (ignore case), m, s or x, or none."
            )
        flags |= _FLAGS[letter]
    try:
        pattern = re.compile(m.group("pat"), flags)
    except re.error as exc:
        raise InputError(
            f"constraint {text!r}: the pattern between the slashes is not a valid regular expression ({exc}). "
            "Fix the pattern (Python regex syntax), or write the constraint without slashes to keep it prompt-only."
        ) from None
    field, negated = m.group("field"), bool(m.group("neg"))

    def check(example: Example) -> bool:
        texts = _texts(example, field)
        if field is None:  # the example as a whole matches when any of its texts does
            found = any(pattern.search(t) for t in texts)
            return not found if negated else found
        if negated:
            return not any(pattern.search(t) for t in texts)
        return all(pattern.search(t) for t in texts)

    return check


def _contain_check(m: re.Match[str]) -> Callable[[Example], bool]:
    word = (m.group("a") or m.group("b") or m.group("c")).casefold()
    field, negated = m.group("field"), bool(m.group("neg"))

    def check(example: Example) -> bool:
        texts = [t.casefold() for t in _texts(example, field)]
        if negated:
            return not any(word in t for t in texts)
        if field is None:  # the example as a whole contains it when any of its texts does
            return any(word in t for t in texts)
        return all(word in t for t in texts)

    return check


def _options_check(m: re.Match[str]) -> Callable[[Example], bool]:
    n = int(m.group("n"))
    return lambda example: len(example.options) == n


def parse_constraint(text: str) -> Constraint:
    """One constraint; InputError when it is empty or a checkable form is malformed."""
    clean = str(text).strip()
    if not clean:
        raise InputError("A constraint is empty. Give its text, e.g. --constraint \"question at most 30 words\".")
    if m := _LENGTH.match(clean):
        return Constraint(clean, _length_check(m))
    if m := _PATTERN.match(clean):
        return Constraint(clean, _pattern_check(clean, m))
    if m := _CONTAIN.match(clean):
        return Constraint(clean, _contain_check(m))
    if m := _OPTIONS.match(clean):
        return Constraint(clean, _options_check(m))
    return Constraint(clean, None)


def parse_constraints(texts: Sequence[str]) -> list[Constraint]:
    """The constraints in order; raises InputError for an empty or malformed checkable one."""
    return [parse_constraint(t) for t in texts]


def load_constraints(path: str | Path) -> list[str]:
    """The constraints of a text file: one a line; blank lines and lines starting with ``#`` skipped."""
    path = Path(path)
    content = read_text_file(path, "constraints file", missing_fix="Check the path.",
                             folder_fix="Give a text file with one constraint a line.",
                             save_fix="Save it as UTF-8, one constraint a line.")
    lines = [line.strip() for line in content.splitlines()]
    out = [line for line in lines if line and not line.startswith("#")]
    if not out:
        raise InputError(f"{path} holds no constraints. Write one a line, e.g. `question at most 30 words`.")
    return out


def violated(example: Example, constraints: Sequence[Constraint]) -> str | None:
    """``"constraint: <text>"`` of the first checkable constraint ``example`` breaks, else None."""
    for constraint in constraints:
        if constraint.check is not None and not constraint.check(example):
            return f"constraint: {constraint.text}"
    return None


def constraint_sentences(constraints: Sequence[Constraint]) -> str:
    """What the system message appends: each constraint as one sentence, "" when none."""
    sentences = []
    for constraint in constraints:
        text = constraint.text[0].upper() + constraint.text[1:]
        sentences.append(text if text[-1] in ".!?" else text + ".")
    return " ".join(sentences)
