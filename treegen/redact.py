"""Remove API keys and bearer tokens from text before it is stored, logged or printed.

Error messages from HTTP clients and servers may echo the request's headers or the key
itself ("Incorrect API key provided: sk-proj-abc..."). Everything treegen keeps or shows
about a failed call goes through ``redact`` first.
"""

from __future__ import annotations

import re
from typing import Iterable

REDACTED = "[REDACTED]"

# A given secret shorter than this is ignored: it guards nothing and replacing it everywhere
# would shred the message (a local server's key may be "x").
MIN_SECRET_CHARS = 4

# OpenAI keys: sk-, sk-proj-, sk-svcacct-, sk-admin- ... then 20 or more key characters. Not
# inside a longer word ("task-..."), so the look-behind excludes key characters.
_OPENAI_KEY = re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}")
# RFC 6750 bearer token characters (b64token), after "Bearer" and white space.
_BEARER = re.compile(r"\b(Bearer)([ \t]+)[A-Za-z0-9._~+/-]+=*", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with each of ``secrets``, every ``Bearer <token>`` and every ``sk-...`` key
    replaced by ``[REDACTED]`` ("Bearer [REDACTED]" keeps the word, so the message still
    says what was there). Linear in the length of the text."""
    if not text:
        return text
    given = sorted({s for s in secrets if s and len(s.strip()) >= MIN_SECRET_CHARS}, key=len, reverse=True)
    if given:
        # One alternation, longest first, so a key that contains another is replaced whole.
        text = re.sub("|".join(re.escape(s) for s in given), REDACTED, text)
    text = _OPENAI_KEY.sub(REDACTED, text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
