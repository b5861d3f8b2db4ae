"""``sutazai migrate --to production``: move an embedded home's stores onto PostgreSQL."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from sutazai.cli.output import console, emit_json, errors
from sutazai.errors import ConfigError

if TYPE_CHECKING:
    from sutazai.cli.progress import RichProgress
    from sutazai.production.migrate import MigrationReport


def row_progress() -> RichProgress:
    """Rich bars counting rows (the byte columns of plain :class:`RichProgress` say "kB")."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from sutazai.cli.progress import RichProgress

    progress = RichProgress(errors)
    progress.bars = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(None),
                             MofNCompleteColumn(), TextColumn("rows"), TimeRemainingColumn(),
                             console=errors, transient=True)
    return progress


def migrate_command(
    to: str = typer.Option(..., "--to", help="The profile to move to: production."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Count and check for conflicts; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Copy this home's embedded stores (MLflow runs and registry, the learning store, NAS
    studies) into the production profile's PostgreSQL, keeping every id. Safe to re-run."""
    from sutazai.config import load_settings
    from sutazai.production.migrate import migrate

    if to != "production":
        raise ConfigError(f"cannot migrate to {to!r}: the only target is --to production")
    embedded = load_settings(profile="embedded")
    production = load_settings(profile="production", home=embedded.home)
    with row_progress() as progress:
        report = migrate(embedded, production, dry_run=dry_run, progress=progress)
    if as_json:
        emit_json(report.as_dict())
    else:
        show(report)


def show(report: MigrationReport) -> None:
    from rich.table import Table

    verb = "would copy" if report.dry_run else "copied"
    table = Table(title=f"SutazAI migration to production{' (dry run)' if report.dry_run else ''}")
    for column in ("store", "from the home", "to", "rows", verb, "already there"):
        table.add_column(column, overflow="fold")
    for store in report.stores:
        table.add_row(store.store, store.source.rsplit("/", 1)[-1], store.target, str(store.rows),
                      str(store.copied), str(store.present))
    console.print(table)
    for store in report.stores:
        for note in store.notes:
            console.print(f"[dim]{store.store}: {escape(note)}[/]", highlight=False)
    console.print(f"{sum(s.copied for s in report.stores)} row(s) {verb} in "
                  f"{report.seconds:.1f}s; MLflow artifacts stay in the home's "
                  "mlflow-artifacts folder", highlight=False)
