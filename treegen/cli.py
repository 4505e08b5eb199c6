"""The treegen command line: parse, call the library, format, map errors to exit codes."""

from __future__ import annotations

import typer
from rich.console import Console
from typer.core import TyperGroup

from treegen.errors import TreegenError

console = Console()
err_console = Console(stderr=True)


class _TreegenGroup(TyperGroup):
    """Every TreegenError becomes its message on stderr and its exit code (2 for bad input)."""

    def invoke(self, ctx):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except TreegenError as exc:
            err_console.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_TreegenGroup,
    help="Create labelled training data with an LLM from a handful of examples, under a hard cost limit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    app()
