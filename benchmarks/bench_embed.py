"""CPU time per text of MiniLM (all-MiniLM-L6-v2, fp32), backend by backend, side by side.

Backends: ``transformers`` = the path before session 5 (transformers' BertModel, a pass sorted
by length, padded to its longest text in chunks of 64); ``torch`` and ``onnx`` = treegen's
MiniLMEmbedder backends (the packed graph: no padding in the matrix products). Every backend
embeds the same passes of real StrategyQA texts (``Example.text()`` of the training questions,
shuffled with seed 0), the backends taking turns pass set by pass set so that a change of the
machine's load hits them alike. CPU = the calling thread's CPU time (one intra-op thread each),
tokenisation included.

    HF_HUB_OFFLINE=1 python benchmarks/bench_embed.py --sizes 1,4,16,64 --rounds 8

Also prints the largest |difference| of each backend's vectors to ``transformers``'s.

Same decisions: ``--decisions`` runs ``treegen run`` (in-process simulator, StrategyQA pool,
seed 7, ``-c 1 --chains 4 --max-calls 60 --embedder minilm``) with each code variant and
compares the accepted nodes as (question, label, parent's question) in id order:

    python benchmarks/bench_embed.py --decisions --code before=/tmp/emb5/before \
        --code after-onnx=/tmp/emb5/after@onnx --code after-torch=/tmp/emb5/after@torch

(``NAME=PATH@BACKEND``: the ``treegen`` package in PATH, with TREEGEN_MINILM_BACKEND=BACKEND.)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRATEGYQA = Path("/work/shared/datasets/yesno_close/strategyqa/train.jsonl")


def strategyqa_texts(path: Path = STRATEGYQA) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from treegen.task import load_examples

    examples, _ = load_examples(path)
    texts = [e.text() for e in examples]
    random.Random(0).shuffle(texts)
    return texts


def transformers_padded(path: str, batch_size: int = 64) -> Callable[[Sequence[str]], np.ndarray]:
    """The MiniLM forward of treegen before session 5 (its ``MiniLMEmbedder._embed`` without the
    de-duplication), the baseline."""
    import torch
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model.eval()

    def embed(texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 384), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=256,
                                  return_tensors="pt")
                hidden = model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()
        return out

    return embed


def treegen_backend(backend: str) -> Callable[[Sequence[str]], np.ndarray]:
    """MiniLMEmbedder with ``backend``, its forward called on this thread (for its CPU time)."""
    sys.path.insert(0, str(ROOT))
    from treegen.embedders import MiniLMEmbedder

    embedder = MiniLMEmbedder(backend=backend)
    embedder.embed(["warm up"])  # the worker has loaded the model
    assert embedder.backend == backend, embedder.backend
    return embedder._embed


def accepted_nodes(run: Path, code: Path) -> list[tuple[str, str, str]]:
    """(question, label, parent's question) of the accepted nodes in id order, read with the
    variant's own store (a subprocess: two treegen packages cannot share one process)."""
    script = (
        "import json, sys\n"
        "from treegen.store import RunStore, node_example\n"
        "with RunStore.open(sys.argv[1], readonly=True) as st:\n"
        "    nodes = {n['id']: n for n in st.nodes(statuses=('seed', 'accepted'))}\n"
        "    out = []\n"
        "    for i in sorted(nodes):\n"
        "        n = nodes[i]\n"
        "        if n['status'] != 'accepted': continue\n"
        "        e = node_example(n)\n"
        "        parent = nodes.get(n['parent_id'])\n"
        "        out.append([e.question, str(e.label), node_example(parent).question if parent else None])\n"
        "print(json.dumps(out))\n")
    env = dict(os.environ, PYTHONPATH=str(code))
    proc = subprocess.run([sys.executable, "-c", script, str(run)], env=env, cwd=str(code), capture_output=True,
                          text=True, check=True)
    return [tuple(x) for x in json.loads(proc.stdout)]


def decisions(variants: list[str], strategies: list[str], out: Path) -> None:
    """The accepted nodes of each variant against the first one's, strategy by strategy."""
    seeds = out / "seeds.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    seeds.write_text(STRATEGYQA.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    parsed = []
    for v in variants:
        name, _, rest = v.partition("=")
        path, _, backend = rest.partition("@")
        parsed.append((name, Path(path), backend or None))
    print("| strategy | " + " | ".join(f"{n}: accepted (identical to {parsed[0][0]})" for n, _, _ in parsed)
          + " | seconds per run | load avg (1 min) |")
    print("| --- " + "| ---: " * (len(parsed) + 2) + "|")
    for strategy in strategies:
        results, seconds = [], []
        for name, code, backend in parsed:
            env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(code), OPENAI_API_KEY="bench")
            if backend:
                env["TREEGEN_MINILM_BACKEND"] = backend
            run_name = f"{strategy}-{name}-{time.monotonic_ns()}"
            t0 = time.monotonic()
            subprocess.run([sys.executable, "-m", "treegen", "run", str(seeds), "--backend", "sim", "--sim-pool",
                            str(STRATEGYQA), "-s", strategy, "-c", "1", "--chains", "4", "--max-calls", "60",
                            "--embedder", "minilm", "--seed", "7", "--out", str(out), "--name", run_name, "--quiet"],
                           env=env, cwd=str(code), check=True, capture_output=True)
            seconds.append(time.monotonic() - t0)
            results.append(accepted_nodes(out / run_name, code))
        base = results[0]
        cells = []
        for got in results:
            same = sum(1 for a, b in zip(base, got) if a == b) if len(got) == len(base) else 0
            cells.append(f"{len(got)} ({same} of {len(base)})")
        print(f"| {strategy} | " + " | ".join(cells) + f" | {' / '.join(f'{x:.0f}' for x in seconds)} | "
              f"{os.getloadavg()[0]:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--decisions", action="store_true", help="compare the accepted nodes of --code variants")
    ap.add_argument("--code", action="append", default=[], metavar="NAME=PATH[@BACKEND]")
    ap.add_argument("--strategies", default="contrastive,similar,novelty")
    ap.add_argument("--out", type=Path, default=Path("/tmp/treegen-bench-embed"), help="--decisions: runs folder")
    ap.add_argument("--sizes", default="1,4,16,64", help="texts per pass")
    ap.add_argument("--rounds", type=int, default=8, help="measurements per backend and pass size")
    ap.add_argument("--texts-per-round", type=int, default=64)
    ap.add_argument("--backends", default="transformers,torch,onnx")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.decisions:
        decisions(args.code, args.strategies.split(","), args.out)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # this thread's intra-op threads: the embedder's worker uses one too
    sys.path.insert(0, str(ROOT))
    from treegen.embedders import minilm_path

    texts = strategyqa_texts()
    makers = {"transformers": lambda: transformers_padded(minilm_path()),
              "torch": lambda: treegen_backend("torch"), "onnx": lambda: treegen_backend("onnx")}
    backends = {name: makers[name]() for name in args.backends.split(",")}
    names = list(backends)

    # Vectors against the baseline: 1,024 texts in passes of 64, 16 and 1 (64 texts).
    reference = np.concatenate([backends[names[0]](texts[i : i + 64]) for i in range(0, 1024, 64)])
    diffs = {}
    for name, embed in backends.items():
        for size in (64, 16, 1):
            n = 1024 if size > 1 else 64
            got = np.concatenate([embed(texts[i : i + size]) for i in range(0, n, size)])
            diffs[f"{name}, passes of {size}"] = float(np.abs(got - reference[:n]).max())
    for key, value in diffs.items():
        print(f"max |vector - {names[0]}'s|, {key}: {value:.2e}")

    machine = f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"
    try:
        import onnxruntime

        machine += f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        pass
    print(f"{machine}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start")
    header = "| texts per pass | " + " | ".join(f"{n}: ms CPU / text (median, min)" for n in names)
    header += " | " + " | ".join(f"{names[0]} / {n}" for n in names[1:]) + " | load avg (1 min) |"
    print(header)
    print("| ---: " * (1 + 2 * len(names) - 1) + "| ---: |")
    pool = texts[1024:]
    cursor = 0
    results: dict[int, dict[str, list[float]]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        per = {n: [] for n in names}
        passes = max(1, args.texts_per_round // size)
        for r in range(args.rounds):
            batch = []
            for _ in range(passes):
                batch.append(pool[cursor : cursor + size])
                cursor = (cursor + size) % (len(pool) - size)
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
                embed = backends[name]
                t0 = time.thread_time()
                for texts_ in batch:
                    embed(texts_)
                per[name].append((time.thread_time() - t0) * 1000 / (passes * size))
        results[size] = per
        med = {n: statistics.median(v) for n, v in per.items()}
        cells = " | ".join(f"{med[n]:.2f} ({min(per[n]):.2f})" for n in names)
        ratios = " | ".join(f"{med[names[0]] / med[n]:.2f}x" for n in names[1:])
        print(f"| {size} | {cells} | {ratios} | {os.getloadavg()[0]:.2f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "diffs": diffs,
                                         "ms_cpu_per_text": {str(k): v for k, v in results.items()}}, indent=1))


if __name__ == "__main__":
    main()
