"""A light stand-in chat-completions endpoint for measuring the client alone (STAND-IN, not a model).

``treegen sim serve`` costs ~1.7 ms of CPU per request (its pool search, token counts, JSON
schema dialects), which on a 2-core machine caps what a client benchmark can show. This server
answers every ``POST .../chat/completions`` with ``k`` new yes/no examples (k read from the
prompt's "Write N new examples", else 10) made of words drawn by a per-request seeded RNG, so
they are distinct and not near-duplicates, in the ``{"examples": [...]}`` shape that
``--structured`` replies have. It speaks HTTP/1.1 with keep-alive on raw asyncio, ~0.1-0.2 ms of
CPU a request. Usage is reported from a whitespace count of the prompt (an underestimate is
safe: the client's usage-anomaly check only refuses counts above its own).

    python benchmarks/standin.py --port 8800 --latency-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re

_WORDS = [a + b for a in ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "we", "zu", "pe", "da", "fo", "gi")
          for b in ("ran", "tel", "mov", "pis", "dak", "lum", "ser", "bo", "quin", "tas", "fen", "gor", "hil")]
_K = re.compile(rb"Write (\d+) new examples")


def completion(body: bytes, n: int) -> bytes:
    k = int(m.group(1)) if (m := _K.search(body)) else 10
    rng = random.Random(n)
    items = [{"question": "Is a " + " ".join(rng.choice(_WORDS) for _ in range(5)) + " a kind of "
              + rng.choice(_WORDS) + "?", "options": ["True", "False"], "label": rng.choice(("True", "False"))}
             for _ in range(k)]
    content = json.dumps({"examples": items})
    return json.dumps({
        "id": f"standin-{n}", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": len(body.split()) // 4, "completion_tokens": len(content) // 5,
                  "total_tokens": len(body.split()) // 4 + len(content) // 5},
    }).encode()


class StandIn(asyncio.Protocol):
    served = 0

    def __init__(self, latency: float):
        self.latency = latency
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            path = head.split(" ", 2)[1]
            StandIn.served += 1
            if path.endswith("/models"):
                payload = b'{"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}'
            else:
                payload = completion(body, StandIn.served)
            reply = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                     + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            if self.latency > 0:
                asyncio.get_running_loop().call_later(self.latency, self._send, reply)
            else:
                self._send(reply)

    def _send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


async def serve(port: int, latency_ms: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: StandIn(latency_ms / 1000), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    args = ap.parse_args()
    asyncio.run(serve(args.port, args.latency_ms))


if __name__ == "__main__":
    main()
