"""Tokens per generated example: the EMNLP 2023 paper's prompt vs treegen's, and two cost
measurements of the engine's per-request work (prompt token counting, near-duplicate index).

    python benchmarks/bench_tokens.py                  # all sections
    python benchmarks/bench_tokens.py --section tokens --ks 1,3,5,10
    python benchmarks/bench_tokens.py --section neardup --sizes 1000,10000,100000

tokens: for each request i, example i of a real training file is shown and examples
i+1..i+k stand for the model's k replies, rendered as each prompt makes a model write them:

- paper: our reconstruction of Lee et al. (EMNLP 2023)'s script from its description (not
  its code): one example shown in the unified JSON format, k asked for, replies in the same
  format separated by blank lines. Replies are written like the shown example, i.e. the
  dataset line, ``"context": null`` included.
- treegen (before): the prompt before this change (treegen/prompts.py at commit 05ea70f),
  replies as a JSON array of the unified objects (what it asked for).
- treegen plain: the current prompt without structured outputs, replies one compact JSON
  object a line.
- treegen structured: the current prompt with a JSON schema sent (structured outputs),
  replies ``{"examples":[...]}`` in compact JSON, the schema's shape.

Counts are tiktoken's o200k_base (gpt-4o-mini) with OpenAI's chat framing. Tokens per
example = (prompt + completion) / k: every reply item counts as accepted for all prompts
alike. No model is called; these are token counts, not model behaviour.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("TREEGEN_DATA_DIR", REPO.parent / "shared" / "datasets"))
FILES = {
    "strategyqa (yesno_close)": DATA / "yesno_close" / "strategyqa" / "train.jsonl",
    "csqa (mcqa_5)": DATA / "mcqa_5" / "csqa" / "train.jsonl",
}
MODEL = "gpt-4o-mini"

# Reconstructed from the paper's description: one example, k asked, blank-line separated.
PAPER_INSTRUCTION = (
    "Here is an example of a task in JSON format: a question, an optional context, the "
    "options and the label (the correct option). Generate {k} new examples of the same task "
    "in the same format, different from the example and from each other. Separate the examples with a blank line.\n\nExample:\n{example}\n\nNew examples:"
)


def paper_messages(shown_line: str, k: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PAPER_INSTRUCTION.format(k=k, example=shown_line)}]


BEFORE_COMMIT = "05ea70f"  # the last commit with the earlier prompt


def load_head_prompts() -> Any:
    """treegen/prompts.py as committed at BEFORE_COMMIT (the prompt before this change)."""
    source = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:treegen/prompts.py"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "prompts_head.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("prompts_head", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_uncached(messages: list[dict[str, str]], model: str) -> int:
    """treegen.tokens.count_messages as it was: every message encoded on every call."""
    from treegen.tokens import encoding_name_for_model, get_encoding

    enc = get_encoding(encoding_name_for_model(model))
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(enc.encode(str(value), disallowed_special=()))
            if key == "name":
                total += 1
    return total


def section_tokens(ks: list[int], requests: int) -> list[str]:
    from treegen.prompts import build_messages, render_example
    from treegen.task import load_examples
    from treegen.tokens import count_messages, count_text

    head = load_head_prompts()
    out = ["## Tokens per generated example (o200k_base, gpt-4o-mini counting)", "",
           f"`python benchmarks/bench_tokens.py --section tokens --ks {','.join(map(str, ks))} --requests {requests}`", "",
           "| data | k | paper: prompt + completion = per example | treegen before | treegen plain | treegen structured | structured / paper | structured, yes/no options implied (proposal) |",
           "|---|---|---|---|---|---|---|---|"]
    for label, path in FILES.items():
        examples, fmt = load_examples(path)
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for k in ks:
            names = ("paper", "before", "plain", "structured", "implied")
            sums: dict[str, list[int]] = {n: [0, 0] for n in names}
            for i in range(requests):
                shown = examples[i]
                replies = examples[i + 1 : i + 1 + k]
                variants: dict[str, tuple[list[dict[str, str]], str]] = {
                    "paper": (paper_messages(lines[i], k), "\n\n".join(lines[i + 1 : i + 1 + k])),
                    "before": (head.build_messages([shown], fmt, k),
                               json.dumps([r.to_dict() for r in replies], ensure_ascii=False)),
                    "plain": (build_messages([shown], fmt, k), "\n".join(render_example(r, fmt) for r in replies)),
                    "structured": (build_messages([shown], fmt, k, structured=True),
                                   '{"examples":[' + ",".join(render_example(r, fmt) for r in replies) + "]}"),
                    # Proposal: yes/no options are always ["True","False"]; a schema without them
                    # (the engine adding them back) saves their tokens in every shown and written item.
                    "implied": (_drop_yesno_options(build_messages([shown], fmt, k, structured=True), fmt),
                                '{"examples":[' + ",".join(_implied(r, fmt) for r in replies) + "]}"),
                }
                for name, (messages, completion) in variants.items():
                    sums[name][0] += count_messages(messages, MODEL)
                    sums[name][1] += count_text(completion, MODEL)
            cells = []
            per: dict[str, float] = {}
            for name in names:
                p, c = sums[name][0] / requests, sums[name][1] / requests
                per[name] = (p + c) / k
                cells.append(f"{p:.0f} + {c:.0f} = **{per[name]:.1f}**")
            ratios = (f"{per['structured'] / per['paper']:.2f} (plain {per['plain'] / per['paper']:.2f}, "
                      f"before {per['before'] / per['paper']:.2f})")
            out.append(f"| {label} | {k} | " + " | ".join(cells[:4]) + f" | {ratios} | {cells[4]}: "
                       f"{per['implied'] / per['paper']:.2f} |")
    out.append("")
    out += section_count_cpu(head)
    return out


def _implied(example: Any, fmt: Any) -> str:
    from treegen.prompts import example_fields

    fields = example_fields(example, fmt)
    if fmt.kind == "yesno":
        fields.pop("options")
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))


def _drop_yesno_options(messages: list[dict[str, str]], fmt: Any) -> list[dict[str, str]]:
    if fmt.kind != "yesno":
        return messages
    return [dict(m, content=m["content"].replace('"options":["True","False"],', "")) for m in messages]


def _best_us(fn: Callable[[], Any], reps: int) -> float:
    fn()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps)
    return min(times) * 1e6


def section_count_cpu(head: Any) -> list[str]:
    from treegen.prompts import build_messages
    from treegen.task import load_examples
    from treegen.tokens import count_messages

    examples, fmt = load_examples(FILES["strategyqa (yesno_close)"])
    before = [head.build_messages([examples[i]], fmt, 5) for i in range(200)]
    after = [build_messages([examples[i]], fmt, 5, structured=True) for i in range(200)]
    it_b, it_a = iter(range(10**9)), iter(range(10**9))
    old = _best_us(lambda: count_uncached(before[next(it_b) % 200], MODEL), 2000)
    new = _best_us(lambda: count_messages(after[next(it_a) % 200], MODEL), 2000)
    same = _best_us(lambda: count_uncached(after[next(it_a) % 200], MODEL), 2000)
    assert all(count_messages(m, MODEL) == count_uncached(m, MODEL) for m in after + before)
    return ["## CPU per count_messages call (best of 5 x 2,000 calls, StrategyQA prompts, k=5)", "",
            "`python benchmarks/bench_tokens.py --section tokens`", "",
            f"- before (old prompt, every message encoded): {old:.1f} µs",
            f"- after (new prompt, system prompt counted once per run): {new:.1f} µs",
            f"- new prompt without the cache: {same:.1f} µs (the cache's own share)",
            "- counts identical to the uncached count on all 400 prompts", ""]


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def section_neardup(sizes: list[int], queries: int, threshold: float) -> list[str]:
    import numpy as np

    from treegen import neardup
    from treegen.neardup import NearDuplicateIndex

    rng = np.random.default_rng(0)
    dim = 384
    out = ["## Near-duplicate index: float16 storage vs a float32 exact scan (384-d, MiniLM's size)", "",
           f"`python benchmarks/bench_tokens.py --section neardup --sizes {','.join(map(str, sizes))}`", "",
           "Stored rows: random unit vectors, added 5 at a time as the engine does. Queries: perturbed copies of "
           f"stored rows with cosines spread uniformly over threshold {threshold} +- 0.05, 5 per reply (a reply's "
           "candidates). Time: best of 5 rounds. Error and decisions: the faiss index against a float32 scan "
           "of the same rows.", "",
           "| accepted nodes | per reply: faiss fp16 (default) | numpy fp16 blocks (no faiss) | float32 scan (before) | "
           "stored bytes / node | RSS growth / node | max abs sim error | decisions changed |",
           "|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        base = rng.normal(size=(n, dim)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
        r0 = _rss()
        index = NearDuplicateIndex(dim, threshold)
        for start in range(0, n, 5):
            index.add(base[start : start + 5])
        rss_per_node = (_rss() - r0) / n
        neardup._USE_FAISS = False
        blocks = NearDuplicateIndex(dim, threshold)
        neardup._USE_FAISS = True
        blocks.add(base)
        picks = rng.integers(0, n, size=queries)
        target = rng.uniform(threshold - 0.05, threshold + 0.05, size=queries).astype(np.float32)
        noise = rng.normal(size=(queries, dim)).astype(np.float32)
        noise -= (noise * base[picks]).sum(1, keepdims=True) * base[picks]
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        q = (target[:, None] * base[picks] + np.sqrt(1 - target[:, None] ** 2) * noise).astype(np.float32)
        got = np.concatenate([index.max_similarity(q[s : s + 5]) for s in range(0, queries, 5)])
        exact = (q @ base.T).max(axis=1) if n * queries <= 2e8 else np.concatenate(
            [(q[s : s + 500] @ base.T).max(axis=1) for s in range(0, queries, 500)])
        err = float(np.abs(got - exact).max())
        changed = int(((got >= threshold) != (exact >= threshold)).sum())
        it = iter(range(10**9))
        reps = max(2, min(100, 1_000_000 // n))

        def reply() -> Any:
            s = (next(it) * 5) % (queries - 5)
            return q[s : s + 5]

        t_faiss = _best_us(lambda: index.max_similarity(reply()), reps) / 1000
        t_blocks = _best_us(lambda: blocks.max_similarity(reply()), reps) / 1000
        t32 = _best_us(lambda: (reply() @ base.T).max(axis=1), reps) / 1000
        out.append(f"| {n:,} | {t_faiss:.2f} ms | {t_blocks:.2f} ms | {t32:.2f} ms | {index.stored_bytes / n:.0f} B | "
                   f"{rss_per_node:.0f} B | {err:.1e} | {changed} of {queries} |")
        del index, blocks, base
    out.append("")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--section", choices=("all", "tokens", "neardup"), default="all")
    ap.add_argument("--ks", default="1,3,5,10")
    ap.add_argument("--requests", type=int, default=300, help="requests averaged per (data, k)")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--threshold", type=float, default=0.9)
    args = ap.parse_args()
    lines: list[str] = []
    if args.section in ("all", "tokens"):
        lines += section_tokens([int(k) for k in args.ks.split(",")], args.requests)
    if args.section in ("all", "neardup"):
        lines += section_neardup([int(n) for n in args.sizes.split(",")], args.queries, args.threshold)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
