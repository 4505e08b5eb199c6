"""The OpenAI Batch API of the simulator: files and batches held in memory, per server.

The `openai` SDK's calls are answered as OpenAI answers them: ``files.create`` (multipart,
purpose ``batch``), ``files.retrieve`` / ``files.content`` / ``files.delete``,
``batches.create`` / ``retrieve`` / ``list`` (cursor pages, newest first) / ``cancel``.

A batch's life is a function of the time since it was created and ``batch_delay_s`` (d):
validating until 0.1·d, in_progress until 0.8·d, finalizing until d, then completed (or
expired when some request was drawn to miss the window). Request i of n is run when the
clock passes 0.1·d + 0.7·d·(i+1)/n, so ``request_counts`` grow while in progress and a
cancel keeps what was already done. Nothing runs in the background: a batch moves on when it
is read (retrieve, list, cancel), so d = 0 completes on the next retrieve. Each request's
reply comes from the same function as the synchronous endpoint (same seed, same content
faults, same usage); transport faults (rate limits, 500/503, hangs, latency, body faults)
do not apply inside a batch, whose failures are drawn with ``batch_fail_rate`` instead.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

FINGERPRINT = "treegen-sim"
BATCH_ENDPOINT = "/v1/chat/completions"  # the only endpoint the simulator runs in batches
COMPLETION_WINDOW = "24h"  # the only window OpenAI accepts
WINDOW_S = 24 * 3600
TERMINAL = ("completed", "expired", "cancelled", "failed")

Reply = Callable[[dict], tuple[int, dict]]  # request body -> (status, response body)
Answer = tuple[int, dict[str, str], "dict | bytes"]


@dataclass
class _File:
    meta: dict
    content: bytes


@dataclass
class _Request:
    line: int
    custom_id: str
    body: dict
    fate: str  # "run" | "fail" | "expire"
    done: bool = False


@dataclass
class _Batch:
    id: str
    input_file_id: str
    endpoint: str
    metadata: dict | None
    created_at: int
    started: float  # time.monotonic() at creation
    requests: list[_Request]
    errors: list[dict]  # validation errors of the input file: the batch fails
    model: str | None
    status: str = "validating"
    times: dict[str, int] = field(default_factory=dict)
    output: list[dict] = field(default_factory=list)
    error_lines: list[dict] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"input": 0, "output": 0})


def _error(message: str, code: str | None, param: str | None = None, type_: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class BatchStore:
    """Files and batches of one simulator, in dicts under one lock (thread-safe)."""

    def __init__(self, seed: int, delay_s: float, fail_rate: float, expire_rate: float, reply: Reply):
        self.seed = seed
        self.delay_s = delay_s
        self.fail_rate = fail_rate
        self.expire_rate = expire_rate
        self._reply = reply
        self._lock = threading.RLock()  # held while a batch runs its due requests
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}

    # -- routing --------------------------------------------------------------------------

    def route(self, method: str, path: str, headers: dict[str, str], body: bytes, query: dict[str, str]) -> Answer | None:
        """The answer to a /v1/files or /v1/batches request, or None for another path."""
        parts = path.strip("/").split("/")  # ["v1", "files", id, "content"]
        if len(parts) < 2 or parts[1] not in ("files", "batches"):
            return None
        rest = parts[2:]
        with self._lock:
            if parts[1] == "files":
                if not rest and method == "POST":
                    return self._upload(headers, body)
                if len(rest) == 1 and method == "GET":
                    f = self._files.get(rest[0])
                    return (200, {}, dict(f.meta)) if f else self._no_file(rest[0])
                if len(rest) == 1 and method == "DELETE":
                    if self._files.pop(rest[0], None) is None:
                        return self._no_file(rest[0])
                    return 200, {}, {"id": rest[0], "object": "file", "deleted": True}
                if len(rest) == 2 and rest[1] == "content" and method == "GET":
                    f = self._files.get(rest[0])
                    if f is None:
                        return self._no_file(rest[0])
                    return 200, {"content-type": "application/octet-stream"}, f.content
            else:
                if not rest and method == "POST":
                    return self._create(body)
                if not rest and method == "GET":
                    return self._list(query)
                if len(rest) == 1 and method == "GET":
                    b = self._batches.get(rest[0])
                    if b is None:
                        return self._no_batch(rest[0])
                    self._advance(b)
                    return 200, {}, self._view(b)
                if len(rest) == 2 and rest[1] == "cancel" and method == "POST":
                    return self._cancel(rest[0])
        return 404, {}, _error(f"Unknown endpoint {method} {path}.", "unknown_url")

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"files": len(self._files), "batches": len(self._batches)}

    # -- files ----------------------------------------------------------------------------

    def _upload(self, headers: dict[str, str], body: bytes) -> Answer:
        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            return 400, {}, _error("Upload files as multipart/form-data with fields 'file' and 'purpose'.", None)
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"content-type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in msg.iter_parts() if msg.is_multipart() else ():
            name = part.get_param("name", header="content-disposition")
            if name:
                payload = part.get_payload(decode=True)
                fields[str(name)] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
        if "file" not in fields:
            return 400, {}, _error("The upload has no 'file' field.", None, "file")
        purpose = fields.get("purpose", (None, b""))[1].decode("utf-8", "replace")
        if purpose != "batch":
            return 400, {}, _error(
                f"The simulator stores files for the Batch API only: send purpose='batch', not {purpose!r}.", None, "purpose"
            )
        filename, content = fields["file"]
        return 200, {}, dict(self._store(filename or "upload.jsonl", content, purpose).meta)

    def _store(self, filename: str, content: bytes, purpose: str) -> _File:
        fid = "file-sim-" + uuid.uuid4().hex[:24]
        meta = {
            "id": fid, "object": "file", "bytes": len(content), "created_at": int(time.time()),
            "filename": filename, "purpose": purpose, "status": "processed", "expires_at": None,
            "status_details": None, "system_fingerprint": FINGERPRINT,
        }
        f = _File(meta, content)
        self._files[fid] = f
        return f

    @staticmethod
    def _no_file(fid: str) -> Answer:
        return 404, {}, _error(f"No such File object: {fid}", None, "id")

    @staticmethod
    def _no_batch(bid: str) -> Answer:
        return 404, {}, _error(f"No batch found with id '{bid}'.", None, "batch_id")

    # -- batches --------------------------------------------------------------------------

    def _create(self, body: bytes) -> Answer:
        try:
            req = json.loads(body.decode("utf-8") or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return 400, {}, _error(f"The request body is not valid JSON: {exc}", None)
        if not isinstance(req, dict):
            return 400, {}, _error("The request body must be a JSON object.", None)
        fid = req.get("input_file_id")
        if not isinstance(fid, str) or fid not in self._files:
            return 400, {}, _error(f"Invalid 'input_file_id': {fid!r} is not an uploaded file.", "invalid_value", "input_file_id")
        endpoint = req.get("endpoint")
        if endpoint != BATCH_ENDPOINT:
            return 400, {}, _error(
                f"The simulator runs batches for {BATCH_ENDPOINT} only, not {endpoint!r}.", "invalid_value", "endpoint"
            )
        if req.get("completion_window") != COMPLETION_WINDOW:
            return 400, {}, _error(
                f"Invalid 'completion_window': {req.get('completion_window')!r}. Supported values are: '24h'.",
                "invalid_value", "completion_window",
            )
        metadata = req.get("metadata")
        if metadata is not None and not (
            isinstance(metadata, dict) and len(metadata) <= 16
            and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items())
        ):
            return 400, {}, _error(
                "'metadata' must map at most 16 string keys (64 characters) to string values (512 characters).",
                "invalid_value", "metadata",
            )
        requests, errors = self._read_input(self._files[fid].content)
        model = next((str(r.body.get("model")) for r in requests if r.body.get("model")), None)
        b = _Batch(
            id="batch_sim_" + uuid.uuid4().hex[:24], input_file_id=fid, endpoint=endpoint, metadata=metadata,
            created_at=int(time.time()), started=time.monotonic(), requests=requests, errors=errors, model=model,
        )
        self._batches[b.id] = b
        return 200, {}, self._view(b)  # validating; it moves on when next read

    def _read_input(self, content: bytes) -> tuple[list[_Request], list[dict]]:
        """The requests of an input file, or the errors that fail the batch (OpenAI's codes)."""
        requests: list[_Request] = []
        errors: list[dict] = []
        seen: set[str] = set()

        def bad(line: int, code: str, message: str, param: str | None = None) -> None:
            errors.append({"code": code, "line": line, "message": message, "param": param})

        lines = content.decode("utf-8", "replace").splitlines()
        for n, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError:
                bad(n, "invalid_json_line", "This line is not parseable as valid JSON.")
                continue
            if not isinstance(obj, dict):
                bad(n, "invalid_json_line", "This line is not a JSON object.")
                continue
            cid = obj.get("custom_id")
            if not isinstance(cid, str) or not cid:
                bad(n, "missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id")
                continue
            if cid in seen:
                bad(n, "duplicate_custom_id", f"The custom_id {cid!r} appears more than once in the file.", "custom_id")
                continue
            if obj.get("method") != "POST":
                bad(n, "invalid_method", "Only POST requests are supported in a batch.", "method")
                continue
            if obj.get("url") != BATCH_ENDPOINT:
                bad(n, "mismatched_endpoint", f"The url {obj.get('url')!r} does not match the batch endpoint {BATCH_ENDPOINT}.", "url")
                continue
            if not isinstance(obj.get("body"), dict):
                bad(n, "invalid_request", "'body' must be a JSON object.", "body")
                continue
            seen.add(cid)
            requests.append(_Request(n, cid, obj["body"], self._fate(cid, obj["body"])))
        if not requests and not errors:
            bad(1, "empty_file", "The input file holds no requests.")
        return requests, errors

    def _fate(self, custom_id: str, body: dict) -> str:
        """Failure and expiry drawn from the seed and the request: the same file, the same fates."""
        blob = json.dumps([self.seed, custom_id, body], sort_keys=True, ensure_ascii=False)
        r = random.Random(hashlib.sha256(blob.encode("utf-8")).hexdigest())
        if r.random() < self.fail_rate:
            return "fail"
        if r.random() < self.expire_rate:
            return "expire"
        return "run"

    def _list(self, query: dict[str, str]) -> Answer:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = -1
        if not 1 <= limit <= 100:
            return 400, {}, _error("'limit' must be an integer from 1 to 100.", "invalid_value", "limit")
        ordered = sorted(self._batches.values(), key=lambda b: (b.started, b.id), reverse=True)  # newest first
        after = query.get("after")
        if after:
            ids = [b.id for b in ordered]
            if after not in ids:
                return 400, {}, _error(f"'after' is not a batch id: {after!r}.", "invalid_value", "after")
            ordered = ordered[ids.index(after) + 1 :]
        page = ordered[:limit]
        for b in page:
            self._advance(b)
        data = [self._view(b) for b in page]
        return 200, {}, {
            "object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(ordered) > limit,
        }

    def _cancel(self, bid: str) -> Answer:
        b = self._batches.get(bid)
        if b is None:
            return self._no_batch(bid)
        self._advance(b)  # what was due before the cancel is done and kept
        if b.status in TERMINAL or b.status == "cancelling":
            return 409, {}, _error(f"Cannot cancel a batch with status '{b.status}'.", None)
        b.status = "cancelling"
        b.times["cancelling_at"] = int(time.time())
        return 200, {}, self._view(b)

    # -- progress -------------------------------------------------------------------------

    def _advance(self, b: _Batch) -> None:
        """Move the batch to where its clock says, running the requests that came due."""
        if b.status in TERMINAL:
            return
        now = int(time.time())
        if b.status == "cancelling":
            b.status = "cancelled"
            b.times["cancelled_at"] = now
            self._write_files(b)
            return
        d = self.delay_s
        t = time.monotonic() - b.started
        if t < 0.1 * d:
            return  # validating
        if b.errors:
            b.status = "failed"
            b.times["failed_at"] = now
            return
        b.times.setdefault("in_progress_at", now)
        n = len(b.requests)
        for i, r in enumerate(b.requests):
            if r.done or r.fate == "expire":
                continue
            if t < 0.1 * d + 0.7 * d * (i + 1) / n:
                break
            self._run(b, r)
        if t < 0.8 * d:
            b.status = "in_progress"
            return
        b.times.setdefault("finalizing_at", now)
        if t < d:
            b.status = "finalizing"
            return
        expired = [r for r in b.requests if r.fate == "expire"]
        for r in expired:
            b.error_lines.append({
                "id": "batch_req_sim_" + uuid.uuid4().hex[:24], "custom_id": r.custom_id, "response": None,
                "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."},
            })
        if expired:
            b.status = "expired"
            b.times["expired_at"] = now
        else:
            b.status = "completed"
            b.times["completed_at"] = now
        self._write_files(b)

    def _run(self, b: _Batch, r: _Request) -> None:
        r.done = True
        line_id = "batch_req_sim_" + uuid.uuid4().hex[:24]
        request_id = "req_sim_" + uuid.uuid4().hex[:24]
        if r.fate == "fail":
            status, body = 500, _error("The server had an error processing your request. (simulated)", None, type_="server_error")
        else:
            status, body = self._reply(r.body)
        line = {
            "id": line_id, "custom_id": r.custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body}, "error": None,
        }
        if status == 200:
            b.output.append(line)
            usage = body.get("usage") or {}
            b.usage["input"] += int(usage.get("prompt_tokens", 0))
            b.usage["output"] += int(usage.get("completion_tokens", 0))
        else:
            b.error_lines.append(line)

    def _write_files(self, b: _Batch) -> None:
        def jsonl(rows: list[dict]) -> bytes:
            return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows).encode("utf-8")

        if b.output:
            b.output_file_id = self._store(f"{b.id}_output.jsonl", jsonl(b.output), "batch_output").meta["id"]
        if b.error_lines:
            b.error_file_id = self._store(f"{b.id}_error.jsonl", jsonl(b.error_lines), "batch_output").meta["id"]

    def _view(self, b: _Batch) -> dict[str, Any]:
        t = b.times
        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint, "model": b.model,
            "errors": {"object": "list", "data": list(b.errors)} if b.errors and b.status == "failed" else None,
            "input_file_id": b.input_file_id, "completion_window": COMPLETION_WINDOW, "status": b.status,
            "output_file_id": b.output_file_id, "error_file_id": b.error_file_id,
            "created_at": b.created_at, "in_progress_at": t.get("in_progress_at"),
            "expires_at": b.created_at + WINDOW_S, "finalizing_at": t.get("finalizing_at"),
            "completed_at": t.get("completed_at"), "failed_at": t.get("failed_at"), "expired_at": t.get("expired_at"),
            "cancelling_at": t.get("cancelling_at"), "cancelled_at": t.get("cancelled_at"),
            "request_counts": {
                "total": len(b.requests), "completed": len(b.output), "failed": len(b.error_lines),
            },
            "usage": {
                "input_tokens": b.usage["input"], "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": b.usage["output"], "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": b.usage["input"] + b.usage["output"],
            },
            "metadata": dict(b.metadata) if b.metadata is not None else None,
            "system_fingerprint": FINGERPRINT,
        }
