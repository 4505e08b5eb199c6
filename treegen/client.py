"""The one LLM path: the async ``openai`` SDK against any OpenAI-compatible base URL.

The SDK's own retries are switched off: every HTTP attempt is reserved against the budget
and recorded as its own row, so retries (exponential backoff with jitter, honouring
``Retry-After``) are done by the engine with the helpers here.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from treegen.errors import BackendError, ConfigError

if TYPE_CHECKING:
    import openai

OPENAI_BASE_URL = "https://api.openai.com/v1"
SIM_FINGERPRINT = "treegen-sim"


@dataclass
class ChatReply:
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int
    request_id: str | None
    model: str | None
    system_fingerprint: str | None = None

    @property
    def simulated(self) -> bool:
        """The treegen simulator signs its replies, wherever it is served from."""
        return self.system_fingerprint == SIM_FINGERPRINT


@dataclass
class AttemptFailure(Exception):
    """One HTTP attempt that failed. ``retryable`` failures are retried by the engine."""

    kind: str  # "timeout", "connection", "refused", "bad-body", "rate-limit", "server", "fatal"
    message: str
    http_status: int | None = None
    retry_after: float | None = None
    request_id: str | None = None

    @property
    def retryable(self) -> bool:
        return self.kind != "fatal"

    @property
    def billing_unknown(self) -> bool:
        # The server may have done (and billed) the work when we stopped listening.
        return self.kind in ("timeout", "connection")

    @property
    def fatal_after_retries(self) -> bool:
        """A failure that no other request would escape either: the run fails when its retries
        are used up, instead of moving on to the next node (a closed port, a URL serving HTML)."""
        return self.kind in ("refused", "bad-body")

    def __str__(self) -> str:
        return self.message


def uses_max_completion_tokens(model: str, base_url: str | None) -> bool:
    """OpenAI's reasoning models refuse ``max_tokens``; other servers expect it."""
    official = base_url is None or "api.openai.com" in base_url
    return official and model.lower().startswith(("o1", "o3", "o4", "gpt-5"))


def _retry_after(headers: Any) -> float | None:
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            return None  # an HTTP date: fall back to backoff
    return None


def import_sdk() -> Any:
    """The openai SDK and its HTTP transport, imported on first use, not at import (start-up).

    Two optional packages are masked while the SDK is imported, unless already loaded:
    ``trio`` (the transport's connection pool imports it only to support trio event loops,
    ~0.05-0.25 s of CPU that treegen, on asyncio, never uses) and ``aiohttp`` (the SDK imports
    it when installed, ~0.1 s, for its optional aiohttp transport; ``ChatClient`` loads that
    transport itself when a run uses it). ``sys.modules[name] = None`` makes ``import name``
    raise ImportError, for this import only.
    """
    import sys

    masked = [name for name in ("trio", "aiohttp") if name not in sys.modules]
    for name in masked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        try:
            import httpcore2  # noqa: F401
        except ImportError:  # an SDK on another transport: nothing to pre-import
            pass
        import openai
    finally:
        for name in masked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
    return openai


HTTP_TRANSPORTS = ("auto", "aiohttp", "httpx")
# aiohttp's import costs ~0.1 s of CPU and saves ~0.4 ms per call against httpx2's pure-Python
# HTTP/1.1 (benchmarks/results/cpu.md): a run that cannot make this many calls stays on httpx2.
AIOHTTP_MIN_CALLS = 256


def choose_transport(wanted: str | None = None, max_calls: int | None = None) -> str:
    """"aiohttp" or "httpx": the SDK's HTTP transport for a run.

    ``wanted`` (else ``TREEGEN_HTTP``, else "auto"): "auto" takes the SDK's aiohttp transport
    (``openai.DefaultAioHttpClient``) when the aiohttp package is installed and the run may make
    at least ``AIOHTTP_MIN_CALLS`` calls, else the SDK's default httpx2 transport."""
    import importlib.util
    import os

    wanted = (wanted or os.environ.get("TREEGEN_HTTP") or "auto").strip().lower()
    if wanted not in HTTP_TRANSPORTS:
        raise ConfigError(f"TREEGEN_HTTP={wanted!r} is not a transport: use one of {', '.join(HTTP_TRANSPORTS)}.")
    has_aiohttp = importlib.util.find_spec("aiohttp") is not None
    if wanted == "aiohttp" and not has_aiohttp:
        raise ConfigError("TREEGEN_HTTP=aiohttp needs the aiohttp package: pip install aiohttp, "
                          "or unset TREEGEN_HTTP.")
    if wanted == "auto":
        small = max_calls is not None and max_calls < AIOHTTP_MIN_CALLS
        return "aiohttp" if has_aiohttp and not small else "httpx"
    return wanted


SDK_KEEPALIVE = 100  # the SDK's default: idle connections kept for reuse (of 1,000 at most)


def _http_client(transport: str, timeout: float, keepalive: int) -> Any:
    """The SDK's own HTTP client for ``transport``, with its defaults (timeout, redirects, 1,000
    connections) except that up to ``keepalive`` idle connections are kept: with more requests
    in flight than the httpx2 default's 100, each wave would close the extra connections and
    open them again (tests/test_transport.py; aiohttp's connector keeps them all anyway). None:
    the SDK's default client as it stands."""
    import httpx2

    if transport == "aiohttp":
        from openai._vendor.httpx_aiohttp import Httpx2AiohttpClient

        factory: Any = Httpx2AiohttpClient  # openai.DefaultAioHttpClient, from the vendored transport
    elif keepalive > SDK_KEEPALIVE:
        from openai import DefaultAsyncHttpxClient

        factory = DefaultAsyncHttpxClient
    else:
        return None
    limits = httpx2.Limits(max_connections=max(1000, keepalive), max_keepalive_connections=max(SDK_KEEPALIVE, keepalive))
    return factory(timeout=timeout, limits=limits, follow_redirects=True)


class ChatClient:
    def __init__(self, base_url: str | None, api_key: str | None, model: str, timeout: float = 60.0,
                 http_client: Any = None, transport: str = "httpx", keepalive: int = SDK_KEEPALIVE):
        """``transport``: "httpx" (the SDK's default) or "aiohttp" (its ``DefaultAioHttpClient``),
        used when no ``http_client`` is given (see ``choose_transport``); ``keepalive``: idle
        connections kept, at least the most requests the caller has in flight."""
        import httpx2  # the openai SDK's transport; imported with it, on first use (start-up)

        openai = import_sdk()
        self.transport = transport if http_client is None else "custom"
        if http_client is None:
            http_client = _http_client(transport, timeout, keepalive)

        self.model = model
        self.base_url = base_url or OPENAI_BASE_URL
        self._raw_response = httpx2.Response
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key or "not-needed",
            max_retries=0,
            timeout=timeout,
            http_client=http_client,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        temperature: float | None,
        top_p: float | None,
        seed: int | None,
        timeout: float,
        response_format: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> ChatReply:
        import openai

        model = model or self.model  # a quality module may ask another model (--verify-model)
        body: dict[str, Any] = {"model": model, "messages": messages}
        if uses_max_completion_tokens(model, self.base_url):
            body["max_completion_tokens"] = max_tokens
        else:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        if top_p is not None:
            body["top_p"] = top_p
        if seed is not None:
            body["seed"] = seed
        if response_format is not None:
            # Sent as given: the SDK's typed path would drop keys it does not know (llama.cpp's "schema").
            body["response_format"] = response_format
        try:
            # The SDK's own request path (auth, headers, timeouts, its exception types), with a
            # plain JSON body: the typed ``chat.completions.create`` re-walks every message
            # against its TypedDicts and builds pydantic models of the reply, about a third of
            # the client's CPU per call on loopback. The body is parsed once, below, with json.
            started = time.monotonic()
            raw = await self._client.post("/chat/completions", cast_to=self._raw_response, body=body,
                                          options={"timeout": timeout})
        except openai.APIConnectionError as exc:  # APITimeoutError is one too
            # A timeout is one that took the whole timeout: the SDK's aiohttp transport reports
            # a refused or dropped connection as a timeout too, at once.
            if isinstance(exc, openai.APITimeoutError) and time.monotonic() - started >= 0.9 * timeout:
                raise AttemptFailure("timeout", f"no answer within {timeout:g} s") from exc
            # The SDK says only "connection error": whether the request reached the server
            # decides whether it can have been billed, so ask the port directly.
            if not await asyncio.to_thread(port_accepts, self.base_url):
                raise AttemptFailure(
                    "refused", f"could not connect to {self.base_url}: is the server running?") from exc
            raise AttemptFailure("connection", f"the connection to {self.base_url} broke: {exc}") from exc
        except openai.APIStatusError as exc:
            raise _status_failure(exc, self.base_url, self.model) from exc
        return parse_completion(raw.content, raw.status_code, raw.headers.get("x-request-id"), self.base_url)


def parse_completion(content: bytes, status_code: int, request_id: str | None, base_url: str) -> ChatReply:
    """A chat completion's JSON body as a ChatReply; AttemptFailure("bad-body") when it is not one."""
    try:
        completion = json.loads(content)
        if not isinstance(completion, dict) or not isinstance(completion.get("choices"), list):
            raise ValueError("not a chat completion")
        choices = completion["choices"]
        if not choices:
            raise AttemptFailure("server", "the server answered with no choices", status_code, None, request_id)
        choice = choices[0]
        message = choice.get("message") or {}
        usage = completion.get("usage")
        if usage is not None and not isinstance(usage, dict):
            raise ValueError("usage is not an object")
        text = message.get("content") or ""
        if not isinstance(text, str):
            raise ValueError("content is not a string")
    except AttemptFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - any body that is not a chat completion
        raise AttemptFailure("bad-body", _bad_body_text(base_url, content), status_code, None, request_id) from exc
    details = (usage or {}).get("prompt_tokens_details") or {}
    return ChatReply(
        text=text,
        finish_reason=choice.get("finish_reason"),
        prompt_tokens=_int_or_none(usage.get("prompt_tokens")) if usage else None,
        completion_tokens=_int_or_none(usage.get("completion_tokens")) if usage else None,
        cached_tokens=_int_or_none(details.get("cached_tokens") if isinstance(details, dict) else None) or 0,
        request_id=request_id,
        model=completion.get("model"),
        system_fingerprint=completion.get("system_fingerprint"),
    )


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def port_accepts(base_url: str, timeout: float = 2.0) -> bool:
    """True when the URL's host and port accept a TCP connection."""
    parsed = urlparse(base_url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "localhost", port), timeout=timeout):
            return True
    except OSError:
        return False


def _bad_body_text(base_url: str, content: bytes) -> str:
    body = content.decode("utf-8", "replace") if isinstance(content, (bytes, bytearray)) else str(content or "")
    head = body.lstrip()[:120].replace("\n", " ")
    kind = "HTML" if head.lower().startswith(("<!doctype", "<html")) else ("an empty body" if not head else "text")
    what = kind if kind != "text" else f"text ({head!r})"
    if kind == "HTML":
        what = f"HTML ({head[:60]!r})"
    return f"the server at {base_url} answered {what}, not a JSON chat completion: check --base-url"


def _status_failure(exc: openai.APIStatusError, base_url: str, model: str) -> AttemptFailure:
    status = exc.status_code
    rid = exc.response.headers.get("x-request-id") if exc.response is not None else None
    message = _error_message(exc)
    if status == 429:
        # OpenAI says "insufficient_quota" with a 429 too: retrying that never helps.
        if "insufficient_quota" in message or "exceeded your current quota" in message:
            return AttemptFailure("fatal", f"the account is out of credit: {message}", status, None, rid)
        return AttemptFailure("rate-limit", f"rate limited: {message}", status, _retry_after(exc.response.headers), rid)
    if status >= 500 or status in (408, 409):
        return AttemptFailure("server", f"server error {status}: {message}", status, _retry_after(exc.response.headers), rid)
    if status == 401:
        return AttemptFailure(
            "fatal",
            f"the server at {base_url} refused the API key (401). Set OPENAI_API_KEY to a valid key "
            "(for local servers any value works unless the server was started with a key).",
            status, None, rid,
        )
    if status == 404:
        return AttemptFailure(
            "fatal",
            f"{base_url} does not know model {model!r} or the chat completions path (404): {message}. "
            "Check --model and --base-url (a local server's URL usually ends in /v1).",
            status, None, rid,
        )
    return AttemptFailure("fatal", f"the server refused the request ({status}): {message}", status, None, rid)


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(exc.message)


def fatal_backend_error(failure: AttemptFailure) -> BackendError:
    return BackendError(failure.message)


def backoff_seconds(attempt: int, rng: random.Random, base: float = 0.5, cap: float = 30.0,
                    retry_after: float | None = None) -> float:
    """Full-jitter exponential backoff; a server's Retry-After is a floor, never shortened."""
    delay = rng.uniform(0, min(cap, base * 2 ** (attempt - 1)))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
