"""``sutazai registry ...``: the MLflow model registry."""

from __future__ import annotations

import typer
from rich.table import Table

from sutazai.cli.output import console, emit_json
from sutazai.config import load_settings
from sutazai.workflows.mirror import sync_registry

app = typer.Typer(help="Keep MLflow's model registry in step with the repository.",
                  no_args_is_help=True)


@app.command("sync")
def sync_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """Register every repository version MLflow does not know yet (idempotent)."""
    registered = sync_registry(load_settings())
    if as_json:
        emit_json([r.model_dump() for r in registered])
        return
    table = Table(title="MLflow registry")
    for column in ("model", "repository", "MLflow version", "aliases", "status"):
        table.add_column(column)
    for r in registered:
        table.add_row(r.name, str(r.repository_version), r.version, ", ".join(r.aliases) or "-",
                      "[green]registered[/]" if r.created else "already registered")
    console.print(table)
