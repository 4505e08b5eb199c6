"""CLI commands that read runs or the cost tables: runs, status, export, lineage, report, prices, budgets.

Every command here opens run databases read-only and takes ``--json`` where it prints data.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import typer

from treegen.errors import OutputError, RunNotFoundError, UnknownModelPriceError
from treegen.render import LazyConsole

if TYPE_CHECKING:
    from treegen.store import RunStore

# Every command imports what it uses when it runs: `treegen run` (and --help) must not pay for
# the exporters, networkx, the HTML report or the store's helpers (issue 12: start-up CPU).
# The export formats, for the help text; tests/test_speed.py checks them against treegen.export.FORMATS.
EXPORT_FORMATS = ("jsonl", "csv", "parquet", "hf")

console = LazyConsole()
err_console = LazyConsole(stderr=True)


def _open(run: Path) -> "RunStore":
    from treegen.store import RunStore

    return RunStore.open(run, readonly=True)


def runs(
    folder: Path = typer.Argument(Path("runs"), metavar="FOLDER", help="Folder holding run folders (default runs/)."),
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List the runs in FOLDER: id, status, strategy, model, accepted, spent, simulated."""
    from treegen.prices import format_usd
    from treegen.render import print_json, show, table
    from treegen.reports import run_list

    if not folder.is_dir():
        raise RunNotFoundError(f"No folder {folder}. Runs live in runs/ by default; pass the folder that holds them.")
    items = run_list(folder)
    if as_json:
        print_json(items)
        return
    if not items:
        console.print(f"No runs in {folder}. Start one with `treegen run SEEDS.jsonl`.", highlight=False)
        return
    show(console.get(), table(f"Runs in {folder}", ("run", "status", "strategy", "model", "accepted", "spent", "simulated"), [
        (r["run_id"], r["status"], r["strategy"] or "-", r["model"] or "-",
         "-" if r["accepted"] is None else f"{r['accepted']:,}", format_usd(r["spent_micro"]),
         {True: "SIMULATED", False: "real", None: "-"}[r["simulated"]]) for r in items
    ], console.get(), right=("accepted", "spent")))


def status(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder (runs/<run-id>) or its treegen.db."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (with by_depth and by_strategy) as JSON."),
) -> None:
    """Show what a run made and spent, computed from its database."""
    from treegen.render import print_json, render_status
    from treegen.reports import by_depth, by_strategy, run_summary

    with _open(run) as store:
        summary, depth, strategy = run_summary(store), by_depth(store), by_strategy(store)
    if as_json:
        print_json({**summary, "by_depth": depth, "by_strategy": strategy})
    else:
        render_status(summary, depth, strategy, console.get())


def export(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder (runs/<run-id>) or its treegen.db."),
    out: Optional[str] = typer.Option(None, "--output", "-o",
                                      help="File (.jsonl, .csv, .parquet), folder (Hugging Face dataset), or - for JSONL on stdout."),
    fmt: Optional[str] = typer.Option(None, "--format", help=f"One of {', '.join(EXPORT_FORMATS)} (default: from the extension)."),
    lineage: bool = typer.Option(False, "--lineage", help="Add a _treegen object (node, parent, depth, cost...) to each row."),
    include_seeds: bool = typer.Option(False, "--include-seeds", help="Export the seeds too."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    hub_repo: Optional[str] = typer.Option(None, "--push-to-hub", help="Upload to this Hugging Face dataset repo (USER/NAME), with the card."),
    public: bool = typer.Option(False, "--public", help="With --push-to-hub: make the repo public (private by default)."),
) -> None:
    """Export the accepted examples in the unified format (question, context, options, label), with a dataset card."""
    from treegen.export import card_path, detect_format, export_run, export_stdout, push_to_hub

    if out is None and hub_repo is None:
        raise OutputError("Say where to export: -o data.jsonl (or .csv, .parquet, a folder, - for stdout), "
                          "or --push-to-hub USER/NAME.")
    with _open(run) as store:
        simulated = bool(store.run()["simulated"])
        mark = " (SIMULATED run: marked in the card and the meta file)" if simulated else ""
        if out == "-":
            if fmt not in (None, "jsonl"):
                raise OutputError("-o - writes JSONL only. Give a file name for other formats.")
            n = export_stdout(store, lineage=lineage, include_seeds=include_seeds)
            err_console.print(f"Wrote {n:,} examples to stdout{mark}; no dataset card (write to a file for one).",
                              highlight=False)
        elif out is not None:
            kind = detect_format(out, fmt)
            n = export_run(store, out, lineage=lineage, include_seeds=include_seeds, force=force, fmt=kind)
            console.print(f"Wrote {n:,} examples to {out} ({kind}) with its dataset card {card_path(out, kind)}{mark}",
                          highlight=False, markup=False)
        if hub_repo is not None:
            url = push_to_hub(store, hub_repo, lineage=lineage, include_seeds=include_seeds, private=not public)
            err_console.print(f"Pushed to {url}{mark}", highlight=False, markup=False)


def lineage(
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder (runs/<run-id>) or its treegen.db."),
    out: Path = typer.Argument(..., metavar="OUT", help="GraphML file to write."),
    accepted_only: bool = typer.Option(False, "--accepted-only", help="Leave the rejected candidates out."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Write the run's search tree as GraphML (for networkx, Gephi, yEd)."""
    from treegen.lineage import export_graphml

    with _open(run) as store:
        n = export_graphml(store, out, include_rejected=not accepted_only, force=force)
    console.print(f"Wrote a tree of {n:,} nodes to {out}", highlight=False, markup=False)


def report(
    run_paths: List[Path] = typer.Argument(..., metavar="RUN...", help="One or more run folders (or their treegen.db)."),
    out: Path = typer.Option(Path("report.html"), "--output", "-o", help="HTML file to write."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Write one self-contained HTML page (no network) about one or more runs."""
    from treegen.report_html import write_report

    with ExitStack() as stack:
        stores = [stack.enter_context(_open(p)) for p in run_paths]
        path = write_report(stores, out, force=force)
    console.print(f"Wrote {path} ({path.stat().st_size:,} bytes) about {len(run_paths)} run(s)",
                  highlight=False, markup=False)


def prices(
    model: Optional[str] = typer.Argument(None, metavar="MODEL", help="Show the price of this model only."),
    table_file: Optional[str] = typer.Option(None, "--prices-file", help="Price table name or path (default budgets/prices.toml)."),
    as_json: bool = typer.Option(False, "--json", help="Print the prices (micro-dollars per 1M tokens) as JSON."),
) -> None:
    """List the model prices used for dollar caps (dollars per 1M tokens; verify them)."""
    from treegen.prices import find_prices_file, format_usd, load_price_table, price_for
    from treegen.render import print_json, show, table

    path = find_prices_file(table_file)
    price_table = load_price_table(path)
    if model is not None:
        found = price_for(model, price_table)
        if found is None:
            raise UnknownModelPriceError(
                f"No price known for model {model!r} in {path}. Add it there, or pass --prices input=..,output=.. to treegen run."
            )
        rows = [found]
    else:
        rows = list(price_table.values())
    if as_json:
        print_json({"file": str(path), "unit": "micro-dollars per 1M tokens", "prices": [asdict(p) for p in rows]})
        return
    cols = ("model", "input", "cached input", "output", "batch input", "batch output")
    show(console.get(), table(f"Prices from {path} (dollars per 1M tokens)", cols, [
        (p.model, *(format_usd(v) for v in (p.input, p.cached_input, p.output, p.batch_input, p.batch_output)))
        for p in rows
    ], console.get(), caption="As published by OpenAI in 2025: verify before trusting a dollar cap.", right=cols[1:]))


def budgets(
    as_json: bool = typer.Option(False, "--json", help="Print the profiles as JSON."),
) -> None:
    """List the budget profiles usable with --budget."""
    from treegen.profiles import list_budget_profiles, load_budget_profile, profile_description
    from treegen.render import print_json, show, table

    items: list[dict[str, Any]] = []
    for name, path in sorted(list_budget_profiles().items()):
        items.append({"name": name, "caps": load_budget_profile(str(path)), "description": profile_description(path),
                      "file": str(path)})
    if as_json:
        print_json(items)
        return
    show(console.get(), table("Budget profiles", ("name", "caps", "description", "file"), [
        (b["name"], ", ".join(f"{k}={v}" for k, v in b["caps"].items()), b["description"], b["file"]) for b in items
    ], console.get()))


COMMANDS: dict[str, Callable[..., None]] = {"runs": runs, "status": status, "export": export, "lineage": lineage, "report": report,
            "prices": prices, "budgets": budgets}


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``; a name already registered is left alone."""
    present = {c.name or (c.callback.__name__ if c.callback else None) for c in app.registered_commands}
    for name, fn in COMMANDS.items():
        if name not in present:
            app.command(name)(fn)

