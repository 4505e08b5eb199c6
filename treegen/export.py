"""Export the accepted examples of a run: JSONL, CSV, Parquet, a Hugging Face dataset folder,
or a Hugging Face Hub repository, each with a dataset card.

Rows are ``{question, context, options, label}`` (the unified format treegen reads back);
with ``lineage`` each also has a ``_treegen`` object (node, parent, root, depth, status,
strategy, cost share, call, simulated). Beside a file export go ``README.md`` (the dataset
card: model, strategy, seeds, caps, cost, counts, rejection reasons, SIMULATED or REAL) and
``<file>.meta.json`` (the same facts for programs); a dataset folder holds both inside.

Every write goes to a temporary file in the destination folder and is renamed into place:
a missing or unwritable folder, or a full disk, leaves nothing half-written (OutputError).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from treegen.budget import Caps
from treegen.errors import OutputError
from treegen.prices import format_usd
from treegen.reports import run_summary
from treegen.store import NodeStatus, RunStore, node_example, utcnow

FORMATS = ("jsonl", "csv", "parquet", "hf")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
CARD_NAME = "README.md"
CARD_MARK = "<!-- treegen dataset card -->"  # a README without it is the user's: never overwritten silently
LINEAGE_FIELDS = ("node_id", "parent_id", "root_id", "depth", "status", "strategy", "cost_share_micro", "call_id",
                  "simulated")


def meta_path(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".meta.json")


def card_path(out_path: str | Path, fmt: str) -> Path:
    out_path = Path(out_path)
    return out_path / CARD_NAME if fmt == "hf" else out_path.with_name(CARD_NAME)


def detect_format(out_path: str | Path, fmt: str | None = None) -> str:
    """The export format: ``fmt`` if given, else from the file extension; a path without an
    extension (or an existing folder) is a Hugging Face dataset folder."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt in ("hf", "huggingface", "datasets"):
            return "hf"
        if fmt == "json":
            return "jsonl"
        if fmt not in FORMATS:
            raise OutputError(f"Unknown export format {fmt!r}. Choose one of: {', '.join(FORMATS)}.")
        return fmt
    p = Path(out_path)
    if p.suffix.lower() in EXTENSIONS:
        return EXTENSIONS[p.suffix.lower()]
    if p.is_dir() or p.suffix == "":
        return "hf"
    raise OutputError(
        f"Cannot tell the export format from {p.name!r}. Use a .jsonl, .csv or .parquet file name, a folder name "
        f"(Hugging Face dataset), or pass --format {{{','.join(FORMATS)}}}."
    )


def rows(store: RunStore, lineage: bool = False, include_seeds: bool = False) -> Iterator[dict[str, Any]]:
    """The exported rows in creation order."""
    simulated = bool(store.run()["simulated"])
    statuses = (NodeStatus.SEED, NodeStatus.ACCEPTED) if include_seeds else (NodeStatus.ACCEPTED,)
    for r in store.nodes(statuses):
        row = node_example(r).to_dict()
        if lineage:
            row["_treegen"] = {
                "node_id": r["id"], "parent_id": r["parent_id"], "root_id": r["root_id"], "depth": r["depth"],
                "status": r["status"], "strategy": r["strategy"], "cost_share_micro": r["cost_share_micro"] or 0,
                "call_id": r["call_id"], "simulated": simulated,
            }
        yield row


def write_jsonl_to(fh: IO[str], items: Iterator[dict[str, Any]]) -> int:
    n = 0
    for row in items:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row: options as a JSON list, lineage as treegen_* columns."""
    out = {k: v for k, v in row.items() if k != "_treegen"}
    out["options"] = json.dumps(row["options"], ensure_ascii=False)
    for k, v in (row.get("_treegen") or {}).items():
        out[f"treegen_{k}"] = v
    return out


def _write_csv(path: Path, items: list[dict[str, Any]], lineage: bool) -> None:
    fields = ["question", "context", "options", "label"] + ([f"treegen_{k}" for k in LINEAGE_FIELDS] if lineage else [])
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in items:
            w.writerow(_flat(r))


def _arrow_table(items: list[dict[str, Any]], lineage: bool) -> Any:
    import pyarrow as pa

    fields = [pa.field("question", pa.string()), pa.field("context", pa.string()),
              pa.field("options", pa.list_(pa.string())), pa.field("label", pa.string())]
    if lineage:
        fields.append(pa.field("_treegen", pa.struct([
            ("node_id", pa.int64()), ("parent_id", pa.int64()), ("root_id", pa.int64()), ("depth", pa.int64()),
            ("status", pa.string()), ("strategy", pa.string()), ("cost_share_micro", pa.int64()),
            ("call_id", pa.int64()), ("simulated", pa.bool_())])))
    return pa.Table.from_pylist(items, schema=pa.schema(fields))


def _require(module: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise OutputError(f"This export needs the {package!r} package: pip install {package}") from None


def _os_error(path: Path, exc: OSError) -> OutputError:
    if exc.errno == errno.ENOSPC:
        why = "the disk is full: free some space"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "permission denied: choose a folder you can write to"
    else:
        why = f"{exc.strerror or exc}: choose another place"
    return OutputError(f"Cannot write {path}: {why}, then try again. Nothing was written.")


def check_destination(path: Path, force: bool, is_folder: bool = False) -> None:
    """Refuse, before anything is read or written, a destination that cannot be used."""
    if path.exists() and not force:
        raise OutputError(f"{path} already exists. Choose another name, or pass --force to overwrite it.")
    if path.is_dir() and not is_folder:
        raise OutputError(f"{path} is a folder. Give a file name, e.g. {path / 'data.jsonl'}.")
    if path.exists() and is_folder and not path.is_dir():
        raise OutputError(f"{path} is a file. Give a folder name for a Hugging Face dataset.")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"The folder {parent} does not exist. Create it first (mkdir -p {parent}), or export elsewhere.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"The folder {parent} is not writable. Choose a folder you can write to.")


def atomic_write(path: Path, write: Callable[[Path], object], is_folder: bool = False) -> None:
    """Run ``write(tmp)`` on a temporary file (or folder) beside ``path``, then rename it to ``path``.

    On any failure the temporary is removed and ``path`` is left as it was.
    """
    parent = path.parent
    try:
        if is_folder:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=parent))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        write(tmp)
        if is_folder:
            old = None
            if path.exists():  # --force over an existing folder: swap, then drop the old one
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; an export is for sharing
            os.replace(tmp, path)
    except OSError as exc:
        raise _os_error(path, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()


def dataset_card(store: RunStore, n: int, fmt: str, lineage: bool, include_seeds: bool) -> str:
    """The dataset card (Markdown with Hugging Face front matter) of an export."""
    s = run_summary(store)
    run = store.run()
    config = run["config"]
    sim = s["simulated"]
    kind = "SIMULATED" if sim else "REAL"
    lines = [
        "---",
        "tags: [synthetic, treegen" + (", simulated" if sim else "") + "]",
        f"size_categories: [{_size_category(n)}]",
        "---",
        CARD_MARK,
        f"# {s['run_id']}: {n:,} examples made by treegen ({kind})",
        "",
    ]
    if sim:
        lines += ["> **SIMULATED.** No language model wrote these rows: texts and dollars come from treegen's "
                  "simulator. Do not train on them or cite their cost as real.", ""]
    else:
        where = f" served at {run['base_url']}" if run.get("base_url") else ""
        quant = config.get("quantization") or config.get("quantisation")
        lines += [f"> **REAL** model output: `{s['model']}`{where}" + (f", quantisation {quant}" if quant else "") + ".", ""]
    caps = [f"--{Caps.flag(k)} {_cap_value(k, u['cap'])}" for k, u in s["caps"].items() if u["cap"] is not None]
    dollars = "simulated " if sim else ""
    lines += [
        "| | |", "|---|---|",
        f"| output | {kind} |",
        f"| model | `{s['model']}` |",
        f"| strategy | {s['strategy']} |",
        f"| task format | {s['format']} |",
        f"| seeds | {s['seeds']:,} from {config.get('seeds_source') or 'unrecorded source'} |",
        f"| caps | {', '.join(caps) or 'none'} |",
        f"| run status | {s['status']}" + (f" ({s['stop_reason']})" if s["stop_reason"] else "") + " |",
        f"| spent | {dollars}{format_usd(s['spent_micro'])} over {s['n_calls']:,} calls |",
        f"| cost per accepted example | {dollars}{format_usd(s['cost_per_accepted_micro'])} |",
        f"| tokens (prompt / completion) | {s['prompt_tokens']:,} / {s['completion_tokens']:,} |",
        f"| accepted / rejected | {s['accepted']:,} / {s['rejected']:,} |",
        f"| max depth | {s['max_depth']} |",
        f"| rows in this export | {n:,} ({fmt}; seeds {'included' if include_seeds else 'left out'}; "
        f"lineage {'in _treegen' if lineage else 'left out'}) |",
        f"| exported at | {utcnow()} |",
        "",
    ]
    if s["rejected_by_reason"]:
        lines += ["## Rejected candidates", "", "| reason | n |", "|---|---:|"]
        lines += [f"| {_md(reason)} | {k:,} |" for reason, k in s["rejected_by_reason"].items()]
        lines.append("")
    lines += ["## Fields", "", "`question`, `context` (may be empty), `options` (list of strings), `label` (one of the "
              "options)" + (", `_treegen` (node, parent, root, depth, status, strategy, cost share in micro-dollars, "
                            "call, simulated)" if lineage else "") + ".", ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cap_value(key: str, value: Any) -> str:
    return f"{value / 1e6:g}" if key == "max_usd_micro" else f"{value:g}" if isinstance(value, float) else str(value)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _meta(store: RunStore, n: int, fmt: str, lineage: bool, include_seeds: bool) -> dict[str, Any]:
    run = store.run()
    return {
        "run_id": run["id"], "simulated": bool(run["simulated"]), "model": run["model"], "strategy": run["strategy"],
        "task_format": run["task_format"], "format": fmt, "n": n, "include_seeds": include_seeds, "lineage": lineage,
        "exported_at": utcnow(),
    }


def _write_text(text: str) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")
    return write


def _card_is_ours(path: Path) -> bool:
    try:
        return CARD_MARK in path.read_text(encoding="utf-8", errors="replace")[:2000]
    except OSError:
        return False


def export_run(
    store: RunStore,
    out_path: str | Path,
    lineage: bool = False,
    include_seeds: bool = False,
    force: bool = False,
    fmt: str | None = None,
) -> int:
    """Write the run's accepted examples (and seeds if asked) with a dataset card; returns the row count.

    ``fmt`` is one of FORMATS, else taken from the extension. Refuses to overwrite an existing
    export (or a README.md that treegen did not write) unless ``force``.
    """
    out_path = Path(out_path)
    fmt = detect_format(out_path, fmt)
    folder = fmt == "hf"
    check_destination(out_path, force, is_folder=folder)
    card = card_path(out_path, fmt)
    if not folder and card.exists() and not force and not _card_is_ours(card):
        raise OutputError(f"{card} exists and was not written by treegen. Export into another folder, "
                          "or pass --force to replace it with the dataset card.")
    items = list(rows(store, lineage, include_seeds))
    n = len(items)
    if fmt == "jsonl":
        def write(tmp: Path) -> None:
            with tmp.open("w", encoding="utf-8") as fh:
                write_jsonl_to(fh, iter(items))
    elif fmt == "csv":
        def write(tmp: Path) -> None:
            _write_csv(tmp, items, lineage)
    elif fmt == "parquet":
        _require("pyarrow", "pyarrow")
        table = _arrow_table(items, lineage)

        def write(tmp: Path) -> None:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
    else:
        _require("datasets", "datasets")
        card_text = dataset_card(store, n, fmt, lineage, include_seeds)
        meta = _meta(store, n, fmt, lineage, include_seeds)

        def write(tmp: Path) -> None:
            hf_dataset(items, lineage).save_to_disk(str(tmp))
            (tmp / CARD_NAME).write_text(card_text, encoding="utf-8")
            (tmp / "treegen_meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

        atomic_write(out_path, write, is_folder=True)
        return n
    atomic_write(out_path, write)
    # The data first, then its card and meta: a failure here leaves the data and says so.
    try:
        atomic_write(card, _write_text(dataset_card(store, n, fmt, lineage, include_seeds)))
        atomic_write(meta_path(out_path), _write_text(
            json.dumps(_meta(store, n, fmt, lineage, include_seeds), indent=2) + "\n"))
    except OutputError as exc:
        with contextlib.suppress(OSError):
            out_path.unlink()  # no export without its card (a simulated run must say so)
        raise exc
    return n


def hf_dataset(items: list[dict[str, Any]], lineage: bool) -> Any:
    """The rows as a ``datasets.Dataset`` (with the same Arrow schema as the Parquet export)."""
    import datasets

    return datasets.Dataset(_arrow_table(items, lineage))


def export_stdout(store: RunStore, lineage: bool = False, include_seeds: bool = False,
                  stream: IO[str] | None = None) -> int:
    """JSONL on stdout (``-o -``): the rows only; there is no place beside stdout for a card."""
    return write_jsonl_to(stream or sys.stdout, rows(store, lineage, include_seeds))


def hf_token() -> str | None:
    """The user's Hugging Face token: $HF_TOKEN, else the one `huggingface-cli login` saved."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # no huggingface_hub, unreadable token file: treated as no token
        return None


def push_to_hub(store: RunStore, repo: str, lineage: bool = False, include_seeds: bool = False,
                private: bool = True, token: str | None = None) -> str:
    """Upload the rows and the dataset card to a Hugging Face dataset repository; returns its URL.

    Uses the user's token (``HF_TOKEN`` or ``huggingface-cli login``); private by default.
    """
    _require("datasets", "datasets")
    if "/" not in repo:
        raise OutputError(f"{repo!r} is not a Hub repository name. Give it as USER/NAME or ORG/NAME.")
    token = token or hf_token()
    if not token:
        raise OutputError("No Hugging Face token found. Run `huggingface-cli login`, or set HF_TOKEN to a token with "
                          "write access (https://huggingface.co/settings/tokens), then push again.")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise OutputError("HF_HUB_OFFLINE=1 is set: the Hub cannot be reached. Unset it (HF_HUB_OFFLINE=0) to push.")
    from huggingface_hub import DatasetCard

    items = list(rows(store, lineage, include_seeds))
    try:
        hf_dataset(items, lineage).push_to_hub(repo, token=token, private=private)
        DatasetCard(dataset_card(store, len(items), "hf", lineage, include_seeds)).push_to_hub(repo, token=token)
    except Exception as exc:  # the Hub client raises many types (HTTP, auth, network); all mean the same here
        raise OutputError(f"Pushing to the Hub repository {repo} failed: {exc}. Check the token's write access "
                          "and your network, then push again.") from None
    return f"https://huggingface.co/datasets/{repo}"

