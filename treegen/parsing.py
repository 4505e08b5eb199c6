"""Recover every example object from an LLM reply, whatever shape the model wrote it in.

Models answer a request for k JSON objects as a JSON array, one object a line, pretty-printed
objects, fenced ```json blocks, numbered or bulleted lists, an object wrapping a list, with
chatter around and between, trailing commas, or cut off by the token limit. Rather than
regexes on whole objects (which break on braces inside strings), one pass of a
brace-matching scanner that respects JSON strings and escapes finds every ``{...}`` span and
how they nest; each span is then parsed on its own, so one broken object never hides the
others. Field validation is not done here (``treegen.task.example_from_dict`` does it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

EXAMPLE_KEYS = ("question", "options", "label")

# A broken fragment is reported only if it looks like key/value JSON, so that braces in
# prose ("{k}", "{}") are not counted as bad candidates.
_KEY_LIKE = re.compile(r"""["']?[A-Za-z_][\w ]*["']?\s*:""")


@dataclass
class Candidate:
    """One object-like fragment of a reply: ``obj`` when it parsed, else ``error``."""

    obj: dict | None
    raw: str
    error: str | None  # None, "invalid-json" or "truncated"


@dataclass
class _Span:
    start: int
    end: int | None = None  # index after the closing brace; None when the text ends first
    children: list["_Span"] = field(default_factory=list)


def parse_reply(text: str) -> list[Candidate]:
    """Every example-like object in ``text`` in order, plus broken and cut-off fragments."""
    out: list[Candidate] = []
    for span in _scan(text):
        _resolve(text, span, out)
    return out


def looks_like_example(obj: object) -> bool:
    return isinstance(obj, dict) and any(k in obj for k in EXAMPLE_KEYS)


def _scan(text: str) -> list[_Span]:
    """Top-level object spans with their nested object spans.

    Strings are tracked only inside brackets: prose between objects ("Here's what I made")
    may hold unbalanced quotes that must not swallow the next object.
    """
    roots: list[_Span] = []
    stack: list[tuple[str, _Span | None]] = []  # ("{", span) or ("[", None)
    in_string = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"' and stack:
            in_string = True
        elif ch == "{":
            span = _Span(i)
            parent = _innermost_object(stack)
            (parent.children if parent else roots).append(span)
            stack.append(("{", span))
        elif ch == "[":
            stack.append(("[", None))
        elif ch == "}":
            # Pop to the nearest open object; unclosed arrays inside it are dropped.
            if any(kind == "{" for kind, _ in stack):
                while stack:
                    kind, span = stack.pop()
                    if kind == "{":
                        span.end = i + 1
                        break
        elif ch == "]":
            if stack and stack[-1][0] == "[":
                stack.pop()
        i += 1
    return roots


def _innermost_object(stack: list[tuple[str, _Span | None]]) -> _Span | None:
    for kind, span in reversed(stack):
        if kind == "{":
            return span
    return None


def _resolve(text: str, span: _Span, out: list[Candidate]) -> None:
    if span.end is None:
        # Cut off by the end of the text. A wrapper ({"examples": [...) keeps its complete
        # children; its own head is reported only if it held example fields itself.
        if not span.children:
            out.append(Candidate(None, text[span.start :], "truncated"))
            return
        _head_fragment(text, span, out)
        for child in span.children:
            _resolve(text, child, out)
        return
    raw = text[span.start : span.end]
    obj = _loads(raw)
    if isinstance(obj, dict):
        if looks_like_example(obj):
            out.append(Candidate(obj, raw, None))
        else:
            # A wrapper object or unrelated metadata: only its example-like children count.
            for child in span.children:
                _resolve(text, child, out)
        return
    if span.children:
        _head_fragment(text, span, out)
        for child in span.children:
            _resolve(text, child, out)
    elif _KEY_LIKE.search(raw):
        out.append(Candidate(None, raw, "invalid-json"))


def _head_fragment(text: str, span: _Span, out: list[Candidate]) -> None:
    """A broken object that contains other objects, e.g. one missing its closing brace."""
    head = text[span.start : span.children[0].start]
    if any(f'"{k}"' in head for k in EXAMPLE_KEYS):
        out.append(Candidate(None, head.rstrip(), "invalid-json"))


def _loads(raw: str) -> object:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    fixed = _drop_trailing_commas(raw)
    if fixed != raw:
        try:
            return json.loads(fixed)
        except json.JSONDecodeError:
            pass
    return None


def _drop_trailing_commas(raw: str) -> str:
    """Remove commas followed (after white space) by a closing bracket, outside strings."""
    out: list[str] = []
    in_string = False
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(raw[i + 1])
                i += 2
                continue
            if ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif ch == ",":
            j = i + 1
            while j < n and raw[j] in " \t\r\n":
                j += 1
            if j >= n or raw[j] not in "}]":
                out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)
