"""Surface statistics of the ten benchmark datasets that explain where students fail.

No model is trained: these are counts over the splits in ../shared/datasets (or
$TREEGEN_DATA_DIR). Writes benchmarks/results/datasets_diagnosis.md.

    python benchmarks/diagnose_datasets.py

- multiple choice: how often the longest / the shortest option is the answer, per split (a
  cue a lexical student learns from train), the answer-position shares, and an option-prior
  baseline (pick the option whose text was most often right in train);
- CommonsenseQA-style option reuse: test questions that share at least three options with a
  training question, and how many of those have their answer among those training answers;
- yes/no: the share of True per split (the prior a classifier learns from train).
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "datasets_diagnosis.md"
sys.path.insert(0, str(REPO))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def length_cues(examples: list) -> tuple[float, float]:
    """Share of questions whose longest (resp. shortest) option, by characters, is the answer (ties: first)."""
    longest = shortest = 0
    for e in examples:
        lens = [len(o) for o in e.options]
        longest += lens.index(max(lens)) == e.label_index
        shortest += lens.index(min(lens)) == e.label_index
    return longest / len(examples), shortest / len(examples)


def option_prior_accuracy(train: list, test: list) -> float:
    """Pick the option whose text was the answer most often (relative to appearances) in train."""
    right, seen = Counter(), Counter()
    for e in train:
        for o in e.options:
            seen[o.lower()] += 1
        right[e.label.lower()] += 1
    hits = 0
    for e in test:
        rates = [(right[o.lower()] + 0.5) / (seen[o.lower()] + 2.5) for o in e.options]
        hits += rates.index(max(rates)) == e.label_index
    return hits / len(test)


def option_reuse(train: list, test: list, shared: int = 3) -> tuple[int, int]:
    """(test questions sharing >= ``shared`` options with some training question, of those: answer among theirs)."""
    by_option: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(train):
        for o in set(o.lower() for o in e.options):
            by_option[o].append(i)
    reused = answer_seen = 0
    for e in test:
        counts = Counter(i for o in set(o.lower() for o in e.options) for i in by_option.get(o, []))
        near = [i for i, c in counts.items() if c >= shared]
        if near:
            reused += 1
            answer_seen += e.label.lower() in {train[i].label.lower() for i in near}
    return reused, answer_seen


def main() -> None:
    from treegen import datasets

    lines = ["# Dataset surface statistics", "", "Command: `python benchmarks/diagnose_datasets.py` (counts only, no model).", ""]
    lines += ["## Multiple choice: length cues and answer positions", "",
              "| task | split | rows | longest option is the answer % | shortest % | answer position shares % |",
              "|---|---|---|---|---|---|"]
    mc_tasks = [t for t, spec in datasets.TASKS.items() if spec.group.startswith("mcqa")]
    yn_tasks = [t for t in datasets.TASKS if t not in mc_tasks]
    splits: dict[tuple[str, str], list] = {}
    for task in datasets.TASKS:
        for split in ("train", "dev", "test"):
            if split == "train" and not datasets.has_train(task):
                continue
            splits[task, split] = datasets.load_split(task, split)[0]
    for task in mc_tasks:
        for split in ("train", "dev", "test"):
            ex = splits.get((task, split))
            if not ex:
                continue
            lo, sh = length_cues(ex)
            pos = Counter(e.label_index for e in ex)
            shares = " / ".join(_pct(pos[k] / len(ex)) for k in range(len(ex[0].options)))
            lines.append(f"| {task} | {split} | {len(ex):,} | {_pct(lo)} | {_pct(sh)} | {shares} |")
    lines += ["", "## Multiple choice: option reuse between train and test", "",
              "| task | option-prior baseline on test % | test questions sharing >= 3 options with a train question | "
              "of those, answer among those train answers |", "|---|---|---|---|"]
    for task in mc_tasks:
        if (task, "train") not in splits:
            continue
        train, test = splits[task, "train"], splits[task, "test"]
        reused, seen = option_reuse(train, test)
        lines.append(f"| {task} | {_pct(option_prior_accuracy(train, test))} | {reused:,} of {len(test):,} | {seen:,} |")
    lines += ["", "## Yes/no: share of True", "", "| task | train % | dev % | test % |", "|---|---|---|---|"]
    for task in yn_tasks:
        cells = []
        for split in ("train", "dev", "test"):
            ex = splits.get((task, split))
            cells.append(_pct(sum(e.label == "True" for e in ex) / len(ex)) if ex else "—")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
