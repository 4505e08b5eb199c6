"""Peers for CPU per call: the same chat request sent without treegen (STAND-IN endpoint).

Sends ``--calls`` requests, ``--concurrency`` at a time, each the body treegen sends (a yes/no
prompt of k=10 with a JSON schema, a new seed each), and parses the reply's JSON:

- ``httpx2``: a bare ``httpx2.AsyncClient`` (the SDK's default transport, no SDK);
- ``aiohttp``: a bare ``aiohttp.ClientSession``;
- ``sdk-httpx``, ``sdk-aiohttp``: the openai SDK's request path exactly as treegen uses it
  (``AsyncOpenAI.post("/chat/completions", cast_to=httpx2.Response)``), on each transport.

``bench_cpu.py --bare`` runs these beside treegen and subtracts a one-call run, as for treegen.

    python benchmarks/bare_client.py --base-url http://127.0.0.1:8801/v1 --mode sdk-aiohttp --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json

SYSTEM = 'Write new, varied, correct examples like the ones shown, not copies. label is "True" or "False".'
USER = ('{"question":"Is a kilogram of feathers as heavy as a kilogram of iron?","options":["True","False"],'
        '"label":"True"}\nWrite 10 new examples.')
ITEM = {"type": "object", "additionalProperties": False, "required": ["question", "options", "label"],
        "properties": {"question": {"type": "string"}, "options": {"type": "array", "items": {"type": "string"}},
                       "label": {"type": "string", "enum": ["True", "False"]}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "examples", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["examples"],
    "properties": {"examples": {"type": "array", "items": ITEM, "minItems": 10, "maxItems": 10}}}}}


def body(i: int) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}],
            "max_tokens": 1024, "temperature": 1.0, "seed": i, "response_format": SCHEMA}


async def run(base_url: str, mode: str, calls: int, concurrency: int) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(calls):
        queue.put_nowait(i)
    headers = {"Authorization": "Bearer sk-test", "Content-Type": "application/json"}

    if mode == "httpx2":
        import httpx2

        client = httpx2.AsyncClient(base_url=base_url, timeout=60,
                                    limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000))

        async def send(i: int) -> bytes:
            return (await client.post("/chat/completions", json=body(i), headers=headers)).content

        close = client.aclose
    elif mode == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession()

        async def send(i: int) -> bytes:
            async with session.post(base_url + "/chat/completions", data=json.dumps(body(i)), headers=headers) as r:
                return await r.read()

        close = session.close
    else:
        import httpx2

        from treegen.client import _http_client, import_sdk

        openai = import_sdk()
        transport = mode.split("-", 1)[1]
        sdk = openai.AsyncOpenAI(base_url=base_url, api_key="sk-test", max_retries=0, timeout=60,
                                 http_client=_http_client(transport, 60, 1000))

        async def send(i: int) -> bytes:
            raw = await sdk.post("/chat/completions", cast_to=httpx2.Response, body=body(i), options={"timeout": 60})
            return raw.content

        close = sdk.close

    async def worker() -> None:
        while not queue.empty():
            reply = json.loads(await send(queue.get_nowait()))
            assert reply["choices"][0]["message"]["content"]

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--mode", choices=("httpx2", "aiohttp", "sdk-httpx", "sdk-aiohttp"), required=True)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("-c", "--concurrency", type=int, default=8)
    args = ap.parse_args()
    asyncio.run(run(args.base_url, args.mode, args.calls, args.concurrency))


if __name__ == "__main__":
    main()
