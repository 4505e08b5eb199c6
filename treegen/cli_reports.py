"""CLI commands that read a run or the cost tables: status, export, lineage, prices, budgets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from treegen.errors import UnknownModelPriceError
from treegen.export import export_run, meta_path
from treegen.lineage import export_graphml
from treegen.prices import find_prices_file, format_usd, load_price_table, price_for
from treegen.profiles import list_budget_profiles, load_budget_profile, profile_description
from treegen.reports import render_status, run_summary
from treegen.store import open_run

console = Console()


def status(
    run: Path = typer.Argument(..., help="Run folder (runs/<run-id>) or its treegen.db."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of tables."),
) -> None:
    """Show what a run made and spent, computed from its database."""
    db = open_run(run)
    if as_json:
        typer.echo(json.dumps(run_summary(db), indent=2))
    else:
        render_status(db, console)


def export(
    run: Path = typer.Argument(..., help="Run folder (runs/<run-id>) or its treegen.db."),
    out: Path = typer.Option(..., "--output", "-o", help="JSONL file to write."),
    lineage: bool = typer.Option(False, "--lineage", help="Add a _treegen object (node, parent, depth, cost...) to each row."),
    include_seeds: bool = typer.Option(False, "--include-seeds", help="Export the seeds too."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Export the accepted examples in the unified format (question, context, options, label)."""
    db = open_run(run)
    n = export_run(db, out, lineage=lineage, include_seeds=include_seeds, force=force)
    simulated = bool(run_summary(db)["simulated"])
    mark = " [bold red](SIMULATED run: marked in the meta file)[/]" if simulated else ""
    console.print(f"Wrote {n:,} examples to {out} and {meta_path(out)}{mark}", highlight=False)


def lineage(
    run: Path = typer.Argument(..., help="Run folder (runs/<run-id>) or its treegen.db."),
    out: Path = typer.Argument(..., help="GraphML file to write."),
    accepted_only: bool = typer.Option(False, "--accepted-only", help="Leave the rejected candidates out."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Write the run's search tree as GraphML (for networkx, Gephi, yEd)."""
    n = export_graphml(open_run(run), out, include_rejected=not accepted_only, force=force)
    console.print(f"Wrote a tree of {n:,} nodes to {out}", highlight=False)


def prices(
    model: Optional[str] = typer.Argument(None, help="Show the price of this model only."),
    table_file: Optional[str] = typer.Option(None, "--prices-file", help="Price table name or path (default budgets/prices.toml)."),
) -> None:
    """List the model prices used for dollar caps (dollars per 1M tokens; verify them)."""
    path = find_prices_file(table_file)
    table = load_price_table(path)
    if model is not None:
        found = price_for(model, table)
        if found is None:
            raise UnknownModelPriceError(
                f"No price known for model {model!r} in {path}. Add it there, or pass --prices input=..,output=.. to treegen run."
            )
        rows = [found]
    else:
        rows = list(table.values())
    t = Table(title=f"Prices from {path} (dollars per 1M tokens)", caption="As published by OpenAI in 2025: verify before trusting a dollar cap.")
    for col in ("model", "input", "cached input", "output", "batch input", "batch output"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for p in rows:
        t.add_row(p.model, *(format_usd(v) for v in (p.input, p.cached_input, p.output, p.batch_input, p.batch_output)))
    console.print(t)


def budgets() -> None:
    """List the budget profiles usable with --budget."""
    t = Table(title="Budget profiles")
    for col in ("name", "caps", "description", "file"):
        t.add_column(col)
    for name, path in sorted(list_budget_profiles().items()):
        caps = load_budget_profile(str(path))
        t.add_row(name, ", ".join(f"{k}={v}" for k, v in caps.items()), profile_description(path), str(path))
    console.print(t)


COMMANDS = {"status": status, "export": export, "lineage": lineage, "prices": prices, "budgets": budgets}


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``; a name already registered is left alone."""
    present = {c.name or (c.callback.__name__ if c.callback else None) for c in app.registered_commands}
    for name, fn in COMMANDS.items():
        if name not in present:
            app.command(name)(fn)
