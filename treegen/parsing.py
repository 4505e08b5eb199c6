"""Recover every example object from an LLM reply, whatever shape the model wrote it in.

Models answer a request for k JSON objects as a JSON array, one object a line, pretty-printed
objects, fenced ```json blocks, numbered or bulleted lists, an object wrapping a list, with
chatter around and between, trailing commas, or cut off by the token limit. Rather than
regexes on whole objects (which break on braces inside strings), one pass of a
brace-matching scanner that respects JSON strings and escapes finds every ``{...}`` span and
how they nest; each span is then parsed on its own, so one broken object never hides the
others. Field validation is not done here (``treegen.task.example_from_dict`` does it).

A well-formed reply of flat objects, ``{"examples": [{...}, ...]}`` (what structured outputs
return) or ``[{...}, ...]``, is read by the json module's own scanner instead
(``_parse_well_formed``): the same candidates, with the same raw text, at a fraction of the
per-character Python loop's cost. Anything else falls back to the tolerant scanner.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

EXAMPLE_KEYS = ("question", "options", "label")
WRAPPER_KEY = "examples"  # structured output: {"examples": [{...}, ...]}

# An object whose objects nest deeper than this is never parsed whole (an example nests one
# level, a wrapper two or three): only its shallower descendants are. This keeps the work
# linear on hostile replies such as 100,000 nested braces.
MAX_OBJECT_HEIGHT = 16

# A broken fragment is reported only if it looks like key/value JSON, so that braces in
# prose ("{k}", "{}") are not counted as bad candidates. Bounded repeats: no backtracking
# blow-up on long runs of words.
_KEY_LIKE = re.compile(r"""["']?[A-Za-z_][\w ]{0,80}["']?[ \t\r\n]{0,40}:""")
# A JSON string (kept as is) or a comma before a closing bracket (dropped).
_STRING_OR_TRAILING_COMMA = re.compile(r'("(?:[^"\\]|\\.)*")|,(?=[ \t\r\n]*[}\]])', re.S)
_SURROGATE = re.compile("[\ud800-\udfff]")


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
    height: int = 1  # 1 + the largest height among its children


def parse_reply(text: str | bytes | None) -> list[Candidate]:
    """Every example-like object in ``text`` in order, plus broken and cut-off fragments.

    Never raises: bytes are decoded as UTF-8 (bad bytes replaced), lone surrogates are
    replaced by U+FFFD (they could not be stored), and nesting or numbers too large for
    ``json`` make a fragment "invalid-json" instead of an exception.
    """
    if text is None:
        return []
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    text = str(text)
    if not text.isascii():
        text = _SURROGATE.sub("\ufffd", text)
    fast = _parse_well_formed(text)
    if fast is not None:
        return fast
    return _parse_tolerant(text)


def _parse_tolerant(text: str) -> list[Candidate]:
    """The brace-matching scanner, for any text (lone surrogates already replaced)."""
    out: list[Candidate] = []
    todo = list(reversed(_scan(text)))  # depth first, in text order, without recursion
    while todo:
        span = todo.pop()
        children = _resolve(text, span, out)
        todo.extend(reversed(children))
    return out


_WS = re.compile(r"[ \t\n\r]*")  # JSON white space
_WRAPPER_HEAD = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"examples"[ \t\n\r]*:[ \t\n\r]*\[')
_ARRAY_HEAD = re.compile(r"[ \t\n\r]*\[")
_DECODER = json.JSONDecoder()


def _parse_well_formed(text: str) -> list[Candidate] | None:
    """The candidates of a reply that is exactly ``{"examples": [...]}`` or ``[...]`` whose
    elements are scalars or flat objects (no ``{`` in their text after the first: no object
    inside); None for any other text, which the tolerant scanner then reads.

    On such text the scanner finds exactly the element objects, each of height 1, and keeps
    those that ``looks_like_example`` and are not wrappers, with their exact text as ``raw``:
    so does this, element by element, with ``json``'s C scanner.
    """
    head = _WRAPPER_HEAD.match(text)
    wrapped = head is not None
    if head is None:
        head = _ARRAY_HEAD.match(text)
        if head is None:
            return None
    ws = _skip_ws
    decode = _DECODER.raw_decode
    out: list[Candidate] = []
    i = ws(text, head.end())
    if text.startswith("]", i):
        i += 1
    else:
        while True:
            is_object = text.startswith("{", i)
            if not is_object and text.startswith("[", i):
                return None  # a nested array may hold objects: the scanner decides
            try:
                obj, end = decode(text, i)
            except (ValueError, RecursionError):  # a trailing comma, a broken object, a huge integer
                return None
            if is_object:
                if text.find("{", i + 1, end) >= 0:
                    return None  # an object inside (or a brace in a string): the scanner decides
                if looks_like_example(obj) and not is_wrapper(obj):
                    out.append(Candidate(obj, text[i:end], None))
            i = ws(text, end)
            if text.startswith(",", i):
                i = ws(text, i + 1)
                continue
            if text.startswith("]", i):
                i += 1
                break
            return None
    if wrapped:
        i = ws(text, i)
        if not text.startswith("}", i):
            return None
        i += 1
    return out if ws(text, i) == len(text) else None


def _skip_ws(text: str, i: int) -> int:
    """The index of the first character at or after ``i`` that is not JSON white space."""
    m = _WS.match(text, i)
    return m.end() if m is not None else i


def looks_like_example(obj: object) -> bool:
    return isinstance(obj, dict) and any(k in obj for k in EXAMPLE_KEYS)


def is_wrapper(obj: object) -> bool:
    """{"examples": [...]}: the examples are its children, not the object itself."""
    return isinstance(obj, dict) and isinstance(obj.get(WRAPPER_KEY), list) and "question" not in obj


def _scan(text: str) -> list[_Span]:
    """Top-level object spans with their nested object spans.

    Strings are tracked only inside brackets: prose between objects ("Here's what I made")
    may hold unbalanced quotes that must not swallow the next object. Each stack entry
    carries the innermost open object, so every character costs O(1).
    """
    roots: list[_Span] = []
    # (bracket, innermost open object at or below this entry)
    stack: list[tuple[str, _Span | None]] = []
    open_objects = 0
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
            parent = stack[-1][1] if stack else None
            (parent.children if parent else roots).append(span)
            stack.append(("{", span))
            open_objects += 1
        elif ch == "[":
            stack.append(("[", stack[-1][1] if stack else None))
        elif ch == "}":
            # Pop to the nearest open object; unclosed arrays inside it are dropped.
            if open_objects:
                while stack:
                    kind, closed = stack.pop()
                    if kind == "{":
                        assert closed is not None
                        closed.end = i + 1
                        open_objects -= 1
                        _lift_height(closed, stack)
                        break
        elif ch == "]":
            if stack and stack[-1][0] == "[":
                stack.pop()
        i += 1
    while stack:  # objects the text ends inside: their heights still reach their parents
        kind, unclosed = stack.pop()
        if kind == "{" and unclosed is not None:
            _lift_height(unclosed, stack)
    return roots


def _lift_height(span: _Span, stack: list[tuple[str, _Span | None]]) -> None:
    parent = stack[-1][1] if stack else None
    if parent is not None and parent.height < span.height + 1:
        parent.height = span.height + 1


def _resolve(text: str, span: _Span, out: list[Candidate]) -> list[_Span]:
    """Append what ``span`` itself yields to ``out``; return the children still to resolve."""
    if span.end is None:
        # Cut off by the end of the text. A wrapper ({"examples": [...) keeps its complete
        # children; its own head is reported only if it held example fields itself.
        if not span.children:
            out.append(Candidate(None, text[span.start :], "truncated"))
            return []
        _head_fragment(text, span, out)
        return span.children
    if span.height > MAX_OBJECT_HEIGHT:
        return span.children  # too deep to be an example: only its shallower parts may be
    raw = text[span.start : span.end]
    obj = _loads(raw)
    if isinstance(obj, dict):
        if looks_like_example(obj) and not is_wrapper(obj):
            out.append(Candidate(obj, raw, None))
            return []
        # A wrapper object or unrelated metadata: only its example-like children count.
        return span.children
    if span.children:
        _head_fragment(text, span, out)
        return span.children
    if _KEY_LIKE.search(raw):
        out.append(Candidate(None, raw, "invalid-json"))
    return []


def _head_fragment(text: str, span: _Span, out: list[Candidate]) -> None:
    """A broken object that contains other objects, e.g. one missing its closing brace."""
    head = text[span.start : span.children[0].start]
    if any(f'"{k}"' in head for k in EXAMPLE_KEYS):
        out.append(Candidate(None, head.rstrip(), "invalid-json"))


def _loads(raw: str) -> object:
    """The parsed value, or None. RecursionError (deep arrays) and ValueError (an integer of
    more than 4,300 digits) are failures to parse like any other."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        pass
    fixed = _drop_trailing_commas(raw)
    if fixed != raw:
        try:
            return json.loads(fixed)
        except (ValueError, RecursionError):
            pass
    return None


def _drop_trailing_commas(raw: str) -> str:
    """Remove commas followed (after white space) by a closing bracket, outside strings."""
    return _STRING_OR_TRAILING_COMMA.sub(lambda m: m.group(1) or "", raw)
