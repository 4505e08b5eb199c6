"""Harder examples (``--harder P``, DataGen's difficulty enhancement): an expansion may rewrite
one accepted example into a harder variant of the same task format instead of asking for new
ones. The reply has the generation reply's shape with k=1 (``{"examples": [one example]}``)
and is parsed by ``treegen.parsing.parse_reply`` like any generation reply.

The user message is the example, one compact JSON line as the generation prompt shows it,
then ``Rewrite it as 1 harder example.``; the JSON schema (when sent) is named ``harder``.
"""

from __future__ import annotations

from typing import Any

from treegen.errors import ConfigError
from treegen.prompts import render_example
from treegen.schema import DIALECTS, example_schema, response_format
from treegen.task import Example, TaskFormat

HARDER_SCHEMA_NAME = "harder"
HARDER_LAST_LINE = "Rewrite it as 1 harder example."

_ROLE = "Rewrite the example shown as a harder one of the same format: more reasoning or knowledge needed, still correct."
_PLAIN_FORMAT = "One JSON object a line, nothing else."


def _label_rule(fmt: TaskFormat, structured: bool) -> str:
    """What the example cannot show about its answer (as the generation prompt says it)."""
    if fmt.kind == "yesno":
        return 'label is "True" or "False".'
    if fmt.kind == "numeric":
        return f"{'answer' if structured else 'label'} is the number that answers the question (digits only, no units)."
    if structured:
        return "answer is the number of the correct option (1 is the first)."
    return "label is the correct option's text."


def harder_system_prompt(fmt: TaskFormat, task_description: str | None = None, *, structured: bool = True,
                         constraints: str = "") -> str:
    """The fixed part of a harder request: role, answer rule, reply format, then the run's constraints."""
    parts = [f"Task: {task_description.strip()}" if task_description and task_description.strip() else "", _ROLE]
    parts.append(_label_rule(fmt, structured))
    if fmt.has_context:
        parts.append("The context must answer the question.")
    if not structured:
        parts.append(_PLAIN_FORMAT)
    parts.append(constraints.strip())
    return " ".join(p for p in parts if p)


def harder_messages(example: Example, fmt: TaskFormat, task_description: str | None = None, *, structured: bool = True,
                    constraints: str = "") -> list[dict[str, str]]:
    """Chat messages asking for one harder variant of ``example``.

    ``constraints``: the run's ``treegen.constraints.constraint_sentences``, appended to the
    system message as in generation requests."""
    return [
        {"role": "system", "content": harder_system_prompt(fmt, task_description, structured=structured, constraints=constraints)},
        {"role": "user", "content": f"{render_example(example, fmt, structured)}\n{HARDER_LAST_LINE}"},
    ]


def harder_response_format(fmt: TaskFormat, dialect: str) -> dict[str, Any] | None:
    """``example_schema(fmt, 1)`` in ``dialect``, named ``harder``; None for "off"."""
    if dialect not in DIALECTS:
        raise ConfigError(f"Unknown structured-output dialect {dialect!r}. Use one of: {', '.join(DIALECTS)}.")
    schema = example_schema(fmt, 1, non_empty=dialect == "json_object")
    out = response_format(schema, dialect)
    if out is not None and out.get("type") == "json_schema":
        out = {**out, "json_schema": {**out["json_schema"], "name": HARDER_SCHEMA_NAME}}
    return out
