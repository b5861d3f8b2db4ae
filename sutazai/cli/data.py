"""``sutazai data ...``: the feedback / training-data store and its quality gate."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from sutazai.cli.output import console, emit_json, short
from sutazai.config import load_settings
from sutazai.errors import ConfigError

app = typer.Typer(help="Feedback and training data: import, rate, snapshot, and gate it.",
                  no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")
NAME = typer.Option("feedback", "--name", help="Dataset name (the snapshot folder).")
MIN_RATING = typer.Option(None, "--min-rating",
                          help="Leave out rows rated below this (-1..1); unrated rows stay.")


@app.command("import")
def import_command(
    files: list[Path] = typer.Argument(None, help="jsonl, csv or parquet files with prompt "
                                                  "and response columns."),
    inbox: bool = typer.Option(False, "--inbox", help="Also import every file of the inbox "
                                                      "folder (SUTAZAI_LEARNING_INBOX)."),
    source: str | None = typer.Option(None, help="Source recorded on the rows; default "
                                                 "file:<name>."),
    as_json: bool = JSON,
) -> None:
    """Import files into the store; rows and files already there are skipped."""
    from sutazai.learning.datastore import FeedbackStore

    if not files and not inbox:
        raise ConfigError("give one or more files to import, or --inbox")
    settings = load_settings()
    with FeedbackStore.open(settings) as store:
        results = [store.import_file(path, source=source) for path in files or []]
        if inbox:
            results += store.import_inbox(settings)
        total = store.count()
    if as_json:
        emit_json([r.model_dump(mode="json") for r in results])
        return
    table = Table(title="Imported into the training-data store")
    table.add_column("file")
    for column in ("rows", "added", "skipped"):
        table.add_column(column, justify="right")
    table.add_column("note")
    for r in results:
        note = "already imported" if r.already_imported else (
            f"ignored columns: {', '.join(r.ignored_columns)}" if r.ignored_columns else "")
        table.add_row(escape(Path(r.path).name), str(r.rows), str(r.added), str(r.duplicates),
                      escape(note))
    console.print(table)
    console.print(f"{total} row(s) in the store")


@app.command("snapshot")
def snapshot_command(name: str = NAME, min_rating: float | None = MIN_RATING,
                     as_json: bool = JSON) -> None:
    """Freeze the store's rows into a content-addressed parquet snapshot."""
    from sutazai.learning.datastore import FeedbackStore, snapshot

    settings = load_settings()
    with FeedbackStore.open(settings) as store:
        snap = snapshot(store, settings, name=name, min_rating=min_rating)
    if as_json:
        emit_json(snap.model_dump(mode="json"))
        return
    console.print(f"snapshot [bold]{escape(snap.name)}[/] {short(snap.digest)}: {snap.rows} "
                  f"row(s) in {escape(str(snap.path))}", highlight=False)


@app.command("validate")
def validate_command(name: str = NAME, min_rating: float | None = MIN_RATING,
                     as_json: bool = JSON) -> None:
    """Run the data gate on a fresh snapshot; exit 1 when it fails."""
    from sutazai.learning.datastore import FeedbackStore, snapshot
    from sutazai.learning.gate import require_pass, run_gate

    settings = load_settings()
    with FeedbackStore.open(settings) as store:
        snap = snapshot(store, settings, name=name, min_rating=min_rating)
    report = run_gate(settings, snap)
    if as_json:
        emit_json(report.model_dump(mode="json"))
    else:
        table = Table(title=f"Data gate: {snap.name} {short(snap.digest)}, {report.rows} row(s)")
        for column in ("check", "column", "result", "unexpected", "row ids / note"):
            table.add_column(column, justify="right" if column == "unexpected" else "left")
        for c in report.checks:
            ids = ", ".join(map(str, c.row_ids[:5])) + (" …" if len(c.row_ids) > 5 else "")
            table.add_row(c.name, c.column or "", "[green]ok[/]" if c.success else "[red]FAILED[/]",
                          "" if c.unexpected_count is None else str(c.unexpected_count),
                          escape(ids or c.note or "") if not c.success else "")
        console.print(table)
        console.print(f"report: {escape(report.report_path or '-')}; MLflow run {report.run_id}",
                      highlight=False)
    require_pass(report)


@app.command("rate")
def rate_command(
    interaction_id: int = typer.Argument(..., help="The row id."),
    rating: float = typer.Argument(..., help="-1 (bad) .. 0 (neutral) .. 1 (good)."),
    label: str | None = typer.Option(None, help="A short label, e.g. good, incorrect."),
) -> None:
    """Rate a row; rows rated below 0 never become training targets."""
    from sutazai.learning.datastore import FeedbackStore

    with FeedbackStore.open(load_settings()) as store:
        store.rate(interaction_id, rating, label)
    console.print(f"row {interaction_id} rated {rating:g}" + (f" ({escape(label)})" if label
                                                                 else ""), highlight=False)


@app.command("remove")
def remove_command(ids: list[int] = typer.Argument(..., help="Row ids (the gate names them).")
                   ) -> None:
    """Delete rows, e.g. those a failed gate names."""
    from sutazai.learning.datastore import FeedbackStore

    with FeedbackStore.open(load_settings()) as store:
        removed = store.remove(ids)
    console.print(f"removed {removed} of {len(ids)} row(s)")


@app.command("stats")
def stats_command(as_json: bool = JSON) -> None:
    """Rows, ratings, sources and labels in the store."""
    from sutazai.learning.datastore import FeedbackStore

    settings = load_settings()
    with FeedbackStore.open(settings) as store:
        stats = store.stats()
    if as_json:
        emit_json(stats.model_dump(mode="json"))
        return
    mean = "-" if stats.mean_rating is None else f"{stats.mean_rating:+.2f}"
    console.print(f"{stats.rows} row(s), {stats.rated} rated (mean {mean}, {stats.negative} "
                  f"negative), {stats.imported_files} file(s) imported", highlight=False)
    for title, counts in (("rows by source", stats.by_source), ("rows by label", stats.by_label)):
        if counts:
            table = Table(title=title)
            table.add_column(title.split()[-1])
            table.add_column("rows", justify="right")
            for key, count in counts.items():
                table.add_row(escape(key), str(count))
            console.print(table)
