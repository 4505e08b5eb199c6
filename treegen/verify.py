"""Verification: a second model answers each candidate's question without seeing its label.

Several candidates share one request (the fixed system message is paid once). The user
message holds one compact JSON object a line, ``{"id":1,"question":...,"options":[...]}``
(``context`` after the question for open-book formats, ``evidence`` when passages were
retrieved), then ``Answer every question.``; the reply is ``{"verdicts": [{"id": 1,
"answer": ...}, ...]}``. Answers: the option's number for multiple choice, ``"True"`` or
``"False"`` for yes/no, and for a numeric format a short arithmetic expression that
``treegen.arith.safe_eval`` computes (the model's arithmetic is not trusted, its reading is).

``tally`` turns one or more votes into a verdict: kept when a strict majority of the votes
name the label, relabelled (mode ``relabel``) when every vote names the same other valid
label, otherwise disputed; unverified when no vote could be read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from treegen.arith import ArithError, format_number, numbers_equal, parse_number, safe_eval
from treegen.errors import ConfigError
from treegen.schema import DIALECTS, response_format
from treegen.task import YESNO_OPTIONS, Example, TaskFormat

VERIFY_SCHEMA_NAME = "verdicts"
VERIFY_LAST_LINE = "Answer every question."
MODES = ("reject", "relabel")
OUTCOMES = ("kept", "relabelled", "disputed", "unverified")

# Completion tokens per verdict: {"id":12,"answer":3}, is about 10 tokens; an expression
# about 20 more. The slack covers a model that pretty-prints or adds a sentence.
_TOKENS_FIXED = 32
_TOKENS_PER_VERDICT = 16
_TOKENS_PER_EXPRESSION = 48
# A verifier's reply is small (max_tokens); a longer one is cut before it is scanned for JSON.
_MAX_REPLY_CHARS = 50_000


def _answer_rule(fmt: TaskFormat) -> str:
    if fmt.kind == "yesno":
        return 'answer is "True" or "False".'
    if fmt.kind == "numeric":
        return 'answer is an arithmetic expression that computes the number, e.g. "(12+7)*3".'
    return "answer is the number of the correct option (1 is the first)."


def verify_system_prompt(fmt: TaskFormat, *, task_description: str | None = None, structured: bool = True,
                         evidence: bool = False) -> str:
    """The fixed part of a verification request (one per format, reply mode and description)."""
    parts = [f"Task: {task_description.strip()}" if task_description and task_description.strip() else ""]
    parts.append("Answer each question." if fmt.kind == "numeric" else "Answer each question from its options.")
    parts.append(_answer_rule(fmt))
    if evidence:
        parts.append("Use the evidence.")
    if not structured:
        parts.append('Reply with one JSON object: {"verdicts":[{"id":1,"answer":...}, ...]}, nothing else.')
    return " ".join(p for p in parts if p)


def question_line(index: int, example: Example, fmt: TaskFormat, evidence: Sequence[str] | None = None) -> str:
    """One candidate as the verifier sees it: compact JSON without its label."""
    obj: dict[str, Any] = {"id": index, "question": example.question}
    if fmt.has_context:
        obj["context"] = example.context or ""
    if fmt.kind != "numeric":  # a numeric question has no options to choose from
        obj["options"] = list(example.options)
    if evidence:
        obj["evidence"] = list(evidence)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def verify_messages(
    candidates: Sequence[Example], fmt: TaskFormat, *, evidence: Sequence[Sequence[str]] | None = None,
    task_description: str | None = None, structured: bool = True,
) -> list[dict[str, str]]:
    """Chat messages asking for an answer to each candidate's question, labels hidden.

    ``evidence``: one list of passages per candidate (``--facts``), in candidate order.
    ``structured``: the request carries ``verify_response_format``; without it the system
    message asks for the JSON object.
    """
    if not candidates:
        raise ValueError("verify_messages needs at least one candidate")
    if evidence is not None and len(evidence) != len(candidates):
        raise ValueError(f"evidence for {len(evidence)} candidates, but {len(candidates)} candidates")
    lines = [
        question_line(i, ex, fmt, evidence[i - 1] if evidence is not None else None)
        for i, ex in enumerate(candidates, 1)
    ]
    # evidence given at all (--facts), not per batch: the system message stays one prefix per run
    system = verify_system_prompt(fmt, task_description=task_description, structured=structured, evidence=evidence is not None)
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": "\n".join(lines) + "\n" + VERIFY_LAST_LINE},
    ]


def verify_schema(fmt: TaskFormat, n: int, *, bounded_text: bool = False) -> dict[str, Any]:
    """``{"verdicts": [...]}`` with exactly ``n`` items, ids 1..n; strict-mode compatible.

    ``bounded_text`` caps an expression's length (llama.cpp's grammar honours maxLength;
    OpenAI's strict mode is not known to take it)."""
    if n < 1:
        raise ConfigError(f"n must be at least 1 to build a verification schema, got {n}. Verify one or more candidates per call.")
    answer: dict[str, Any]
    if fmt.kind == "yesno":
        answer = {"type": "string", "enum": list(YESNO_OPTIONS)}
    elif fmt.kind == "numeric":
        answer = {"type": "string", "maxLength": 200} if bounded_text else {"type": "string"}
    else:
        answer = {"type": "integer", "enum": list(range(1, fmt.n_options + 1))}
    item = {
        "type": "object",
        "properties": {"id": {"type": "integer", "enum": list(range(1, n + 1))}, "answer": answer},
        "required": ["id", "answer"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {VERIFY_SCHEMA_NAME: {"type": "array", "items": item, "minItems": n, "maxItems": n}},
        "required": [VERIFY_SCHEMA_NAME],
        "additionalProperties": False,
    }


def named_response_format(schema: dict[str, Any], dialect: str, name: str) -> dict[str, Any] | None:
    """``treegen.schema.response_format`` with the json_schema dialect's name set to ``name``
    (the name tells the simulator, and a log reader, which kind of request this is)."""
    fmt = response_format(schema, dialect)
    if fmt is not None and fmt.get("type") == "json_schema":
        fmt = {**fmt, "json_schema": {**fmt["json_schema"], "name": name}}
    return fmt


def verify_response_format(fmt: TaskFormat, n: int, dialect: str) -> dict[str, Any] | None:
    """The ``response_format`` of a verification request for ``n`` candidates; None for "off"."""
    if dialect not in DIALECTS:
        raise ConfigError(f"Unknown structured-output dialect {dialect!r}. Use one of: {', '.join(DIALECTS)}.")
    return named_response_format(verify_schema(fmt, n, bounded_text=dialect == "json_object"), dialect, VERIFY_SCHEMA_NAME)


def verify_max_tokens(fmt: TaskFormat, n: int) -> int:
    """The completion budget for a verification reply about ``n`` candidates."""
    per = _TOKENS_PER_EXPRESSION if fmt.kind == "numeric" else _TOKENS_PER_VERDICT
    return _TOKENS_FIXED + per * max(n, 1)


# --- reading the reply ---------------------------------------------------------------

# A verdicts reply nests three levels ({"verdicts": [{...}]}); a span nested deeper than this
# is never parsed whole, only its shallower parts: the work stays linear on hostile replies.
_MAX_JSON_HEIGHT = 6
_CLOSER = {"}": "{", "]": "["}


@dataclass
class _Span:
    start: int
    end: int | None = None  # after the closing bracket; None when the text ends first
    height: int = 1
    children: list["_Span"] = field(default_factory=list)


def json_values(text: str, max_height: int = _MAX_JSON_HEIGHT) -> list[Any]:
    """Every JSON object or array in ``text`` that parses, outermost first, in text order.

    One pass matches brackets (strings respected inside them, so prose with a stray quote
    does not swallow the JSON); a span that does not parse (chatter, a reply cut off by the
    token limit) is skipped and the spans inside it are tried instead. Linear in the text.
    """
    roots: list[_Span] = []
    stack: list[tuple[str, _Span]] = []
    open_count = {"{": 0, "[": 0}
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
        elif ch in "{[":
            span = _Span(i)
            (stack[-1][1].children if stack else roots).append(span)
            stack.append((ch, span))
            open_count[ch] += 1
        elif ch in _CLOSER and open_count[_CLOSER[ch]]:
            while stack:  # brackets left open inside this one stay unclosed
                kind, span = stack.pop()
                open_count[kind] -= 1
                if stack and stack[-1][1].height < span.height + 1:
                    stack[-1][1].height = span.height + 1
                if kind == _CLOSER[ch]:
                    span.end = i + 1
                    break
        i += 1
    while stack:  # spans the text ends inside: their heights still reach their parents
        _, span = stack.pop()
        if stack and stack[-1][1].height < span.height + 1:
            stack[-1][1].height = span.height + 1
    out: list[Any] = []
    todo = list(reversed(roots))
    while todo:
        span = todo.pop()
        if span.end is not None and span.height <= max_height:
            try:
                out.append(json.loads(text[span.start : span.end]))
                continue
            except (ValueError, RecursionError):
                pass
        todo.extend(reversed(span.children))
    return out


def _verdict_items(value: Any) -> list[dict[str, Any]]:
    """The ``{"id", "answer"}`` items a parsed value holds, whatever it wraps them in."""
    if isinstance(value, list):
        return [item for v in value for item in _verdict_items(v)]
    if not isinstance(value, dict):
        return []
    if "answer" in value:
        return [value]
    items: list[dict[str, Any]] = []
    for v in value.values():  # {"verdicts": [...]}, or a wrapper under another name
        if isinstance(v, (list, dict)):
            items.extend(_verdict_items(v))
    return items


def _item_id(item: dict[str, Any]) -> int | None:
    raw = item.get("id")
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():  # is_integer: False for inf and nan
        return int(raw)
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    return None


def answer_label(answer: Any, example: Example, fmt: TaskFormat) -> str | None:
    """The label text an answer names for ``example``, or None when it names none."""
    if fmt.kind == "numeric":
        if isinstance(answer, bool):
            return None
        if isinstance(answer, (int, float)):
            number = parse_number(answer)
        elif isinstance(answer, str):
            try:
                number = safe_eval(answer)
            except ArithError:
                return None
        else:
            return None
        return None if number is None else format_number(number)
    if fmt.kind == "yesno" or tuple(example.options) == YESNO_OPTIONS:
        if isinstance(answer, bool):
            return "True" if answer else "False"
        if isinstance(answer, str):
            word = answer.strip().strip(".").lower()
            if word in ("true", "yes"):
                return "True"
            if word in ("false", "no"):
                return "False"
        return None
    options = example.options
    if isinstance(answer, bool):
        return None
    if isinstance(answer, float) and answer.is_integer():
        answer = int(answer)
    if isinstance(answer, int):
        return options[answer - 1] if 1 <= answer <= len(options) else None
    if not isinstance(answer, str):
        return None
    text = answer.strip()
    if text.isdigit():
        number = int(text)
        return options[number - 1] if 1 <= number <= len(options) else None
    folded = text.casefold()
    matches = [o for o in options if o.strip().casefold() == folded]
    if len(matches) == 1:
        return matches[0]
    letter = text.strip("().").upper()
    if len(letter) == 1 and "A" <= letter <= "Z":  # "B": models letter options unasked
        index = ord(letter) - ord("A")
        return options[index] if index < len(options) else None
    return None


def parse_verdicts(text: str, candidates: Sequence[Example], fmt: TaskFormat) -> list[str | None]:
    """One entry per candidate: the label text the verifier's answer names, None when its
    answer is missing or unreadable.

    Items are matched by ``id`` (1 = the first candidate) in any order; when no item has a
    usable id they are taken in order. Two items that give one id different answers make
    that candidate None. Prose, code fences and a cut-off tail around the JSON are ignored.
    """
    out: list[str | None] = [None] * len(candidates)
    if not text or not candidates:
        return out
    items: list[dict[str, Any]] = []
    for value in json_values(str(text)[:_MAX_REPLY_CHARS]):
        items.extend(_verdict_items(value))
    if not items:
        return out
    ids = [_item_id(item) for item in items]
    if all(i is None for i in ids):
        for index, item in enumerate(items[: len(candidates)]):
            out[index] = answer_label(item.get("answer"), candidates[index], fmt)
        return out
    seen: dict[int, str | None] = {}
    for item_id, item in zip(ids, items):
        if item_id is None or not 1 <= item_id <= len(candidates):
            continue
        label = answer_label(item.get("answer"), candidates[item_id - 1], fmt)
        if item_id in seen and seen[item_id] != label:
            seen[item_id] = None  # the model answered twice, differently: neither counts
        elif item_id not in seen:
            seen[item_id] = label
    for item_id, label in seen.items():
        out[item_id - 1] = label
    return out


# --- votes to a verdict --------------------------------------------------------------

@dataclass(frozen=True)
class Verdict:
    """What the votes decide for one candidate; ``label`` is the label to keep."""

    keep: bool
    label: str
    outcome: str  # "kept" | "relabelled" | "disputed" | "unverified"
    votes: tuple[str | None, ...]

    def to_json(self) -> str:
        """The ``nodes.verdict`` column: ``{"votes": [...], "outcome": ...}``."""
        return json.dumps({"votes": list(self.votes), "outcome": self.outcome}, ensure_ascii=False, separators=(",", ":"))


def _same(a: str, b: str, fmt: TaskFormat) -> bool:
    return numbers_equal(a, b) if fmt.kind == "numeric" else a == b


def _valid_label(vote: str, example: Example, fmt: TaskFormat) -> bool:
    if fmt.kind == "numeric":
        return parse_number(vote) is not None
    return vote in example.options


def tally(example: Example, votes: Sequence[str | None], mode: str, fmt: TaskFormat) -> Verdict:
    """The verdict of ``votes`` (from ``parse_verdicts``, one per verifier call) on ``example``.

    - kept: a strict majority of all the votes (unreadable ones included) name the label;
    - relabelled (mode ``relabel`` only): every vote names the same other valid label;
    - unverified: no vote could be read, or the readable ones all agree but are too few for
      a majority (nobody disputed the label, nobody confirmed it enough);
    - disputed: otherwise.
    """
    if mode not in MODES:
        raise ConfigError(f"Unknown verification mode {mode!r}. Use one of: {', '.join(MODES)}.")
    cast = tuple(votes)
    readable = [v for v in cast if v is not None]
    if not readable:
        return Verdict(False, example.label, "unverified", cast)
    agree = sum(1 for v in readable if _same(v, example.label, fmt))
    if 2 * agree > len(cast):
        return Verdict(True, example.label, "kept", cast)
    if mode == "relabel" and len(readable) == len(cast):
        first = readable[0]
        if (not _same(first, example.label, fmt) and _valid_label(first, example, fmt)
                and all(_same(v, first, fmt) for v in readable)):
            number = parse_number(first)
            new = format_number(number) if fmt.kind == "numeric" and number is not None else first
            return Verdict(True, new, "relabelled", cast)
    if agree == len(readable):
        return Verdict(False, example.label, "unverified", cast)
    return Verdict(False, example.label, "disputed", cast)
