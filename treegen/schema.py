"""JSON schemas that constrain a reply to exactly k examples, and the request dialects that carry them.

A reply constrained by ``example_schema(fmt, k)`` is one object ``{"examples": [...]}``
holding exactly k example objects of the task format; ``treegen.parsing.parse_reply``
already unwraps such a wrapper, so the rest of the pipeline does not change. Multiple choice
names its answer by the option's number (``"answer": 2``); a numeric format has no options and
its ``"answer"`` is the number itself. ``answer_to_label`` turns both back into a ``label``.

Servers take the schema in different shapes ("dialects"):

- ``json_schema``: ``{"type": "json_schema", "json_schema": {"name", "strict", "schema"}}``,
  the OpenAI shape, also accepted by Azure OpenAI, vLLM and Ollama's OpenAI endpoint
  (Ollama passes ``json_schema.schema`` on as its ``format``).
- ``json_object``: ``{"type": "json_object", "schema": ...}``, what llama-cpp-python's
  server accepts (it turns the schema into a grammar); it answers the ``json_schema``
  shape with a 422 validation error.
- ``off``: no ``response_format``; the prompt alone asks for JSON.

``auto`` tries them in the order of ``fallback_dialects`` and moves on when the server
refuses one (``is_response_format_refusal``).
"""

from __future__ import annotations

import re
from typing import Any

from treegen.errors import ConfigError
from treegen.task import YESNO_OPTIONS, TaskFormat, canonical_number

DIALECTS = ("json_schema", "json_object", "off")
SCHEMA_NAME = "examples"

# Words a server's 400/422 names when it does not take our response_format (OpenAI,
# vLLM, llama-cpp-python's pydantic validation, LiteLLM proxies). Checked lower-case.
_REFUSAL_WORDS = ("response_format", "json_schema", "schema")


def example_schema(fmt: TaskFormat, k: int, non_empty: bool = False) -> dict[str, Any]:
    """Schema of ``{"examples": [...]}`` with exactly ``k`` examples of format ``fmt``.

    Every object lists all its properties as required and forbids others, as OpenAI's
    strict mode demands. A closed-book format has no ``context`` property at all (rather
    than a nullable one) so that a constrained model cannot spend tokens on it.

    ``non_empty`` adds ``minLength: 1`` to the texts: llama.cpp's grammar honours it (a small
    model otherwise writes empty options); OpenAI's strict mode is not known to take it, so
    the json_schema dialect goes without.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1 to build a schema, got {k}. Ask for one or more examples per call.")
    text: dict[str, Any] = {"type": "string", "minLength": 1} if non_empty else {"type": "string"}
    properties: dict[str, Any] = {"question": dict(text)}
    if fmt.has_context:
        properties["context"] = dict(text)
    if fmt.kind == "numeric":
        # No options: the answer is the number itself.
        properties["answer"] = {"type": "number"}
        return _wrapper(properties, k)
    if fmt.kind == "yesno":
        options: dict[str, Any] = {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 2,
            "maxItems": 2,
            "const": list(YESNO_OPTIONS),
        }
        label: dict[str, Any] = {"type": "string", "enum": list(YESNO_OPTIONS)}
    else:
        options = {
            "type": "array",
            "items": dict(text),
            "minItems": fmt.n_options,
            "maxItems": fmt.n_options,
        }
        # A schema cannot tie a label's text to the options, so the model names the right
        # option by its number: a label that is not an option cannot be written at all.
        label = {"type": "integer", "enum": list(range(1, fmt.n_options + 1))}
    properties["options"] = options
    properties["answer" if fmt.kind == "mcqa" else "label"] = label
    return _wrapper(properties, k)


def _wrapper(properties: dict[str, Any], k: int) -> dict[str, Any]:
    item = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "examples": {"type": "array", "items": item, "minItems": k, "maxItems": k},
        },
        "required": ["examples"],
        "additionalProperties": False,
    }


def answer_to_label(obj: Any) -> Any:
    """A structured multiple-choice reply names its answer by number (``"answer": 2``): the
    label is that option's text. A numeric reply (no options, or ``[]``) gives the number
    itself: the label is its canonical text (``3.0`` -> ``"3"``). Anything else is returned as
    it is, for validation to judge."""
    if not isinstance(obj, dict) or "label" in obj or "answer" not in obj:
        return obj
    answer, options = obj["answer"], obj.get("options")
    if options is None or options == []:
        number = canonical_number(answer)
        if number is None:
            return obj
        out = {k: v for k, v in obj.items() if k != "answer"}
        out["label"] = number
        return out
    if isinstance(answer, bool) or not isinstance(answer, int) or not isinstance(options, list):
        return obj
    if not 1 <= answer <= len(options):
        return obj
    out = {k: v for k, v in obj.items() if k != "answer"}
    out["label"] = options[answer - 1]
    return out


def label_to_answer(row: dict[str, Any]) -> dict[str, Any]:
    """The inverse, for a multiple-choice or numeric example shown or validated in the
    structured form (a numeric one drops its empty options and answers with a JSON number)."""
    if "label" not in row:
        return row
    if row.get("options") in (None, []):
        number = canonical_number(row["label"])
        if number is None:
            return row
        out = {k: v for k, v in row.items() if k not in ("label", "options")}
        out["answer"] = json_number(number)
        return out
    if not isinstance(row.get("options"), list) or row["options"] == ["True", "False"]:
        return row
    out = {k: v for k, v in row.items() if k != "label"}
    out["answer"] = [str(o) for o in row["options"]].index(str(row["label"])) + 1
    return out


def json_number(canonical: str) -> int | float:
    """A canonical number's text as the JSON number a schema's ``"type": "number"`` takes."""
    return int(canonical) if re.fullmatch(r"-?\d+", canonical) else float(canonical)


def response_format(schema: dict[str, Any], dialect: str) -> dict[str, Any] | None:
    """The ``response_format`` request field carrying ``schema`` in ``dialect``; None for "off"."""
    if dialect == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": schema}}
    if dialect == "json_object":
        return {"type": "json_object", "schema": schema}
    if dialect == "off":
        return None
    raise ConfigError(f"Unknown structured-output dialect {dialect!r}. Use one of: auto, {', '.join(DIALECTS)}.")


def fallback_dialects(start: str) -> list[str]:
    """The dialects to try, in order, beginning at ``start`` ("auto" means from the first)."""
    if start == "auto":
        return list(DIALECTS)
    if start not in DIALECTS:
        raise ConfigError(f"Unknown structured-output dialect {start!r}. Use one of: auto, {', '.join(DIALECTS)}.")
    return list(DIALECTS[DIALECTS.index(start):])


def is_response_format_refusal(status: int, message: str) -> bool:
    """True when an error answer says the server does not take our ``response_format``.

    Then the request is worth repeating with the next dialect; any other error is a real
    error of the request and must not be hidden by a fallback. 400/422 qualify when the
    message names response_format, json_schema or schema. 500 qualifies only when it names
    ``response_format``: llama-cpp-python's server (0.3.x) answers the json_schema dialect
    with a 500 whose message is its request validation error
    (``('body', 'response_format', 'type') ... Input should be 'text' or 'json_object'``).
    """
    text = (message or "").lower()
    if status in (400, 422):
        return any(word in text for word in _REFUSAL_WORDS)
    if status == 500:
        return "response_format" in text
    return False
