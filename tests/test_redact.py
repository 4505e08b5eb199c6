"""redact: API keys and bearer tokens never reach the database, the logs or the screen."""

from __future__ import annotations

import time

from treegen.redact import REDACTED, redact

PROJ_KEY = "sk-proj-" + "Ab3_x-9" * 12
LEGACY_KEY = "sk-" + "Z" * 48


def test_given_secret_is_replaced_everywhere() -> None:
    key = "my-local-server-key-123"
    text = f"401 for key {key}; retry with {key}?"
    assert redact(text, [key]) == f"401 for key {REDACTED}; retry with {REDACTED}?"
    assert key not in redact(text, (key,))


def test_longest_secret_wins_when_one_contains_another() -> None:
    assert redact("token=abcdEFGH1234", ["abcd", "abcdEFGH1234"]) == f"token={REDACTED}"


def test_empty_and_tiny_secrets_do_not_shred_the_text() -> None:
    text = "Connection refused by x at localhost"
    assert redact(text, ["", "x", "  "]) == text


def test_openai_key_patterns() -> None:
    msg = f"Incorrect API key provided: {PROJ_KEY}. Also {LEGACY_KEY}, and 'sk-svcacct-{'q' * 30}'."
    out = redact(msg)
    assert PROJ_KEY not in out and LEGACY_KEY not in out and "sk-svcacct" not in out
    assert out.count(REDACTED) == 3
    assert out.startswith("Incorrect API key provided: [REDACTED].")


def test_things_that_are_not_keys_are_kept() -> None:
    text = "sk-short, task-" + "a" * 30 + " and risk-free"  # under 20 key chars; inside a word
    assert redact(text) == text


def test_bearer_tokens() -> None:
    headers = "Authorization: Bearer eyJhbGciOi.JIUzI1NiJ9-_~+/abc== next"
    assert redact(headers) == f"Authorization: Bearer {REDACTED} next"
    assert redact("authorization: bearer\tTOKEN123") == f"authorization: bearer\t{REDACTED}"


def test_secret_inside_a_bearer_header_is_gone_whichever_rule_fires() -> None:
    key = "local-secret-key"
    out = redact(f"headers={{'Authorization': 'Bearer {key}'}}", [key])
    assert key not in out and "Bearer [REDACTED]" in out


def test_empty_text() -> None:
    assert redact("") == ""


def test_fast_on_100_kb() -> None:
    # Long runs of key characters, near-misses and many hits: the worst shapes for the regexes.
    chunk = f"x {PROJ_KEY} Bearer abc.def sk-{'-' * 19} {'k' * 500} "
    text = chunk * (100_000 // len(chunk) + 1)  # whole chunks, at least 100 KB
    secrets = [f"secret-number-{i:04d}" for i in range(100)]
    start = time.perf_counter()
    out = redact(text, secrets)
    elapsed = time.perf_counter() - start
    assert PROJ_KEY[:20] not in out and "Bearer abc" not in out
    assert elapsed < 0.5, f"redact took {elapsed:.3f} s on 100 KB"
