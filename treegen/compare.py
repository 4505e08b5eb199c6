"""Side-by-side comparison of runs for one task: cost, ID/OOD accuracy, PGR, quality metrics.

PGR (performance gap recovered) = 100 (acc_generated − acc_floor) / (acc_human − acc_floor),
where the floor is the majority-class accuracy on the ID test split and acc_human is the mean
ID accuracy of the same student trained on the task's human training data (D_L) over the seeds.

Runs are read and student results stored through ``RunStore`` (no SQL here); progress goes to
an ``on_progress(done, total, what)`` callback.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from treegen import datasets
from treegen.errors import StudentError
from treegen.evaluation import (
    Trained, check_task_matches, evaluate, human_training_data, read_trained, results_store, run_training_data,
    student_dir, train,
)
from treegen.store import NodeStatus, RunStore, call_spent_micro, call_spent_tokens
from treegen.students import ProgressCallback, min_train_examples

QUALITY_METRICS = ("mauve", "distinct_4", "self_bleu")
CONTAMINATION_LIMIT = 0.05


def pgr(acc: float, floor: float, human: float) -> float | None:
    """Performance gap recovered, in %; None when the human student is not above the floor."""
    gap = human - floor
    if gap <= 1e-12:
        return None
    return 100.0 * (acc - floor) / gap


def mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


@dataclass
class Row:
    name: str  # run id, or "human (D_L)"
    strategy: str
    simulated: bool
    accepted: int | None
    spent_micro: int | None
    tokens: int | None
    id_acc: list[float] = field(default_factory=list)  # one per seed
    ood_acc: dict[str, list[float]] = field(default_factory=dict)
    pgr: list[float | None] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    contamination: float | None = None
    path: str = ""

    @property
    def cost_per_accepted_micro(self) -> int | None:
        if self.spent_micro is None or not self.accepted:
            return None
        return round(self.spent_micro / self.accepted)

    @property
    def ood_mean(self) -> list[float]:
        if not self.ood_acc:
            return []
        per_seed = zip(*self.ood_acc.values())
        return [float(np.mean(v)) for v in per_seed]


    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-seed figures, means and stds (accuracies as fractions, PGR in %)."""
        id_m, id_s = mean_std(self.id_acc)
        pgr_m, pgr_s = mean_std(self.pgr)
        return {
            "run": self.name, "strategy": self.strategy, "simulated": self.simulated, "path": self.path,
            "accepted": self.accepted, "spent_micro": self.spent_micro, "tokens": self.tokens,
            "cost_per_accepted_micro": self.cost_per_accepted_micro,
            "id_accuracy": self.id_acc, "id_accuracy_mean": id_m, "id_accuracy_std": id_s,
            "ood_accuracy": self.ood_acc, "ood_accuracy_mean": mean_std(self.ood_mean)[0],
            "pgr": self.pgr, "pgr_mean": pgr_m, "pgr_std": pgr_s,
            "metrics": self.metrics, "contamination_rate": self.contamination,
            "contaminated": self.contamination is not None and self.contamination > CONTAMINATION_LIMIT,
        }


def latest_metrics(store: RunStore) -> tuple[dict[str, float], float | None]:
    """Latest value of the quality metrics (``treegen metrics``) and the contamination rate."""
    out: dict[str, float] = {}
    for name in (*QUALITY_METRICS, "contamination_rate"):
        value = store.latest_metric(name)
        if value is not None:
            out[name] = value
    return {k: v for k, v in out.items() if k != "contamination_rate"}, out.get("contamination_rate")


def run_cost(store: RunStore) -> tuple[int, int, int]:
    """(accepted examples, micro-dollars spent, tokens spent) by the store's one spending rule."""
    calls = store.calls()
    accepted = store.node_status_counts().get(NodeStatus.ACCEPTED, 0)
    return accepted, sum(call_spent_micro(c) for c in calls), sum(call_spent_tokens(c) for c in calls)


def _same(data: Any) -> Any:
    return data


def _trained_or_train(folder: Path, make_data: Callable[[], Any], student: str, task: str, seed: int,
                      data_dir: Any, on_progress: ProgressCallback | None, student_kwargs: dict[str, Any]) -> Trained:
    """Reuse a student already trained in ``folder`` for (student, task, seed), else train it."""
    existing = student_dir(folder, student, task, seed)
    if (existing / "training.json").is_file():
        return read_trained(existing)
    return train(make_data(), student, task, folder, seed, data_dir, on_progress, **student_kwargs)


def _accuracies(trained: Trained, store: RunStore, data_dir: Any, on_progress: ProgressCallback | None,
                limit: int | None) -> dict[str, float]:
    """ID/OOD test accuracies of a student: from the database if stored, else evaluated and stored."""
    rows = store.student_results(student_path=str(trained.path), split="test", max_n=limit)
    wanted = {trained.task, *datasets.ood_tasks(trained.task)}
    got = {r["dataset"]: r["accuracy"] for r in rows}
    if limit is None and set(got) >= wanted:
        return got
    return {r["dataset"]: r["accuracy"] for r in evaluate(trained, store, "test", data_dir, limit, on_progress)}


def compare_runs(
    runs: Sequence[str | Path],
    task: str,
    student: str = "lexical",
    seeds: list[int] | tuple[int, ...] = (0,),
    out: str | Path = "runs/compare",
    data_dir: str | Path | None = None,
    on_progress: ProgressCallback | None = None,
    eval_limit: int | None = None,
    human_limit: int | None = None,
    **student_kwargs: Any,
) -> tuple[list[Row], dict[str, Path]]:
    """Train/evaluate ``student`` on every run and on the human data; write md, csv and png in ``out``.

    ``eval_limit`` caps the test examples per dataset and ``human_limit`` the human training
    examples (both for quick checks; stated in the report).
    """
    task = datasets.get_task(task).name
    if not runs:
        raise StudentError("Give at least one run folder to compare.")
    out = Path(out)
    # Check every run before training anything: a bad one stops the command with nothing stored.
    opened = []
    for r in runs:
        data = run_training_data(r)  # opens the run read-only: a missing or damaged one stops here
        check_task_matches(task, data.fmt, f"Run {r}")
        if len(data.examples) < min_train_examples(student):
            raise StudentError(
                f"Run {r} has {len(data.examples)} accepted examples; the {student} student needs at least "
                f"{min_train_examples(student)}. Leave it out of the comparison or let it create more."
            )
        opened.append((Path(r), data))
    test, _fmt, _note = datasets.load_split(task, "test", data_dir, limit=eval_limit, sample=True)
    floor = datasets.test_majority_floor(test)
    ood = datasets.ood_tasks(task)

    human_folder = out / "human"
    human = Row(f"human ({task} train)", "human (D_L)", False, None, None, None, path=str(human_folder))
    with results_store(human_folder) as hstore:
        for seed in seeds:
            t = _trained_or_train(human_folder, lambda: human_training_data(task, data_dir, human_limit), student,
                                  task, seed, data_dir, on_progress, student_kwargs)
            human.accepted = t.n_train
            accs = _accuracies(t, hstore, data_dir, on_progress, eval_limit)
            human.id_acc.append(accs[task])
            for o in ood:
                human.ood_acc.setdefault(o, []).append(accs[o])
    human_mean = float(np.mean(human.id_acc))
    human.pgr = [pgr(a, floor, human_mean) for a in human.id_acc]

    rows: list[Row] = []
    for path, data in opened:
        with RunStore.open(path) as store:  # writable: the run's student results are stored in it
            run = store.run()
            accepted, spent, tokens = run_cost(store)
            metrics, contamination = latest_metrics(store)
            row = Row(str(run["id"]), run.get("strategy") or "?", bool(run.get("simulated")), accepted, spent,
                      tokens, metrics=metrics, contamination=contamination, path=str(path))
            for seed in seeds:
                t = _trained_or_train(path, functools.partial(_same, data), student, task, seed, data_dir,
                                      on_progress, student_kwargs)
                accs = _accuracies(t, store, data_dir, on_progress, eval_limit)
                row.id_acc.append(accs[task])
                for o in ood:
                    row.ood_acc.setdefault(o, []).append(accs[o])
                row.pgr.append(pgr(accs[task], floor, human_mean))
        rows.append(row)

    out.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{task}-{student}"
    files = {"md": out / f"{stem}.md", "csv": out / f"{stem}.csv", "png": out / f"{stem}.png"}
    header = {"task": task, "student": student, "seeds": list(seeds), "floor": floor, "ood": ood,
              "eval_limit": eval_limit, "human_limit": human_limit}
    files["md"].write_text(render_markdown(rows, human, header), encoding="utf-8")
    write_csv(files["csv"], rows, human, header)
    plot(files["png"], rows, human, header)
    return [*rows, human], files


# ------------------------------------------------------------------ formatting


def _fmt_ms(values: Sequence[float | None], pct: bool = True) -> str:
    m, s = mean_std(values)
    if m is None:
        return "n/a"
    k = 100.0 if pct else 1.0
    n_valid = sum(v is not None for v in values)
    return f"{m * k:.1f} ± {(s or 0.0) * k:.1f}" if n_valid > 1 else f"{m * k:.1f}"


def _usd(micro: int | None) -> str:
    from treegen.prices import format_usd

    return "n/a" if micro is None else format_usd(micro)


def table_rows(rows: list[Row], human: Row, header: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for r in [*rows, human]:
        kind = "human" if r is human else ("SIMULATED" if r.simulated else "real")
        d = {
            "run": r.name, "strategy": r.strategy, "data": kind,
            "accepted": "n/a" if r.accepted is None else f"{r.accepted:,}",
            "dollars": _usd(r.spent_micro), "tokens": "n/a" if r.tokens is None else f"{r.tokens:,}",
            "$/accepted": _usd(r.cost_per_accepted_micro),
            "ID acc %": _fmt_ms(r.id_acc),
        }
        for o in header["ood"]:
            d[f"OOD {o} %"] = _fmt_ms(r.ood_acc.get(o, []))
        d["OOD mean %"] = _fmt_ms(r.ood_mean)
        d["PGR %"] = _fmt_ms(r.pgr, pct=False)
        for m in QUALITY_METRICS:
            d[m] = f"{r.metrics[m]:.3f}" if m in r.metrics else "—"
        flag = ""
        if r.contamination is not None and r.contamination > CONTAMINATION_LIMIT:
            flag = f"CONTAMINATED: {r.contamination * 100:.1f}% of items duplicate the benchmark's test/dev"
        d["flag"] = flag
        out.append(d)
    return out


def render_markdown(rows: list[Row], human: Row, header: dict[str, Any]) -> str:
    table = table_rows(rows, human, header)
    cols = list(table[0].keys())
    lines = [
        f"# Strategy comparison: {header['task']}, student `{header['student']}`",
        "",
        f"Seeds {', '.join(map(str, header['seeds']))} (mean ± sample std). ID = {header['task']} test; "
        f"OOD = {', '.join(header['ood']) or 'none'} test. PGR floor = majority class on the ID test split "
        f"({header['floor'] * 100:.1f}%); the human row is the same student trained on the task's human training "
        "data (D_L). Runs marked SIMULATED used the simulator, not a real model.",
    ]
    if header.get("eval_limit") or header.get("human_limit"):
        caps = [f"test examples capped at {header['eval_limit']} per dataset" if header.get("eval_limit") else "",
                f"human training examples capped at {header['human_limit']}" if header.get("human_limit") else ""]
        lines.append("Quick check: " + ", ".join(c for c in caps if c) + ".")
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(d[c] for c in cols) + " |" for d in table]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[Row], human: Row, header: dict[str, Any]) -> None:
    """Machine-readable: one line per row with means and stds as numbers."""
    fields = ["run", "strategy", "simulated", "is_human", "accepted", "spent_usd", "tokens", "usd_per_accepted",
              "id_acc_mean", "id_acc_std"]
    fields += [f"ood_{o}_mean" for o in header["ood"]] + ["ood_mean", "pgr_mean", "pgr_std", *QUALITY_METRICS,
                                                         "contamination_rate", "seeds", "floor"]
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in [*rows, human]:
            im, isd = mean_std(r.id_acc)
            pm, psd = mean_std(r.pgr)
            d: dict[str, Any] = {
                "run": r.name, "strategy": r.strategy, "simulated": int(r.simulated), "is_human": int(r is human),
                "accepted": r.accepted, "spent_usd": None if r.spent_micro is None else r.spent_micro / 1e6,
                "tokens": r.tokens,
                "usd_per_accepted": None if r.cost_per_accepted_micro is None else r.cost_per_accepted_micro / 1e6,
                "id_acc_mean": im, "id_acc_std": isd, "ood_mean": mean_std(r.ood_mean)[0],
                "pgr_mean": pm, "pgr_std": psd, "contamination_rate": r.contamination,
                "seeds": " ".join(map(str, header["seeds"])), "floor": header["floor"],
            }
            for o in header["ood"]:
                d[f"ood_{o}_mean"] = mean_std(r.ood_acc.get(o, []))[0]
            for m in QUALITY_METRICS:
                d[m] = r.metrics.get(m)
            w.writerow(d)


def plot(path: Path, rows: list[Row], human: Row, header: dict[str, Any]) -> None:
    """``figure`` saved as a PNG at ``path``."""
    import matplotlib.pyplot as plt

    fig = figure(rows, human, header)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(rows: list[Row], human: Row, header: dict[str, Any]) -> Any:
    """Accuracy against dollars spent, ID on the left and mean OOD on the right (a matplotlib Figure).

    One point per run, labelled with its run id: the mean over the seeds with the seeds'
    spread as an error bar, and the run's own per-seed points joined by a thin vertical line.
    Different runs are never joined (a line between two runs would suggest a trend that no
    run measured). SIMULATED runs are hollow. The human-data student and (ID) the majority
    floor are horizontal references.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharex=True)
    panels = [
        (axes[0], lambda r: list(r.id_acc), lambda r: r.id_acc, f"ID accuracy on {header['task']} test (%)"),
        (axes[1], lambda r: list(r.ood_mean), lambda r: r.ood_mean,
         f"mean OOD accuracy ({', '.join(header['ood']) or 'none'}) (%)"),
    ]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, per_seed, _vals, ylabel in panels:
        for i, r in enumerate(rows):
            ys = [100 * v for v in per_seed(r)]
            if not ys:
                continue
            x = (r.spent_micro or 0) / 1e6
            colour = colours[i % len(colours)]
            mean, std = float(np.mean(ys)), float(np.std(ys, ddof=1)) if len(ys) > 1 else 0.0
            if len(ys) > 1:
                ax.plot([x] * len(ys), ys, color=colour, linewidth=0.8, alpha=0.6, marker=".", linestyle="-")
            ax.errorbar([x], [mean], yerr=[std], marker="o", capsize=3, linestyle="none", color=colour,
                        markerfacecolor="none" if r.simulated else colour)
            ax.annotate(r.name + (" (SIMULATED)" if r.simulated else ""), (x, mean), textcoords="offset points",
                        xytext=(6, 4), fontsize=7, color=colour)
        ref = per_seed(human)
        if ref:
            hm = float(np.mean(ref)) * 100
            ax.axhline(hm, color="black", linewidth=1, label=f"human D_L ({hm:.1f}%)")
        ax.set_xlabel("dollars spent")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].axhline(header["floor"] * 100, color="grey", linestyle=":", linewidth=1,
                    label=f"majority floor ({header['floor'] * 100:.1f}%)")
    if any(math.isfinite(r.spent_micro or 0) for r in rows):
        axes[0].set_xlim(left=0)
    for ax in axes:
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{header['task']}: student {header['student']}, seeds {','.join(map(str, header['seeds']))}; "
                 "one point per run (hollow = SIMULATED)", fontsize=10)
    fig.tight_layout()
    return fig
