"""``sutazai backup ...``: consistent, incremental, signed backups of the home, and restores."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from sutazai.cli.output import console, emit_json, errors
from sutazai.config import load_settings

app = typer.Typer(help="Back up the home (repository, MLflow, graph, learning store, audit "
                       "log) and restore it.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")


@app.command("create")
def create_command(
    include_secrets: bool = typer.Option(
        False, "--include-secrets",
        help="Also the secrets folder, sealed with the secret backup/sealing-key."),
    as_json: bool = JSON,
) -> None:
    """Snapshot the home; only bytes no earlier backup holds are written."""
    from sutazai.backup.service import as_json as to_json
    from sutazai.backup.service import backup_root, create
    from sutazai.cli.progress import RichProgress

    settings = load_settings()
    with RichProgress(errors) as progress:
        manifest = create(settings, include_secrets=include_secrets, progress=progress)
    if as_json:
        emit_json(to_json(manifest))
        return
    console.print(f"backup {manifest.id}: {len(manifest.files)} file(s), "
                  f"{manifest.size / 2**20:.1f} MiB, in {backup_root(settings)}",
                  highlight=False)
    for note in manifest.notes:
        console.print(f"  {escape(note)}", highlight=False)


@app.command("list")
def list_command(as_json: bool = JSON) -> None:
    """The backups, oldest first."""
    from sutazai.backup.service import as_json as to_json
    from sutazai.backup.service import list_backups

    found = list_backups(load_settings())
    if as_json:
        emit_json([to_json(m) for m in found])
        return
    table = Table(title="SutazAI backups")
    for column in ("id", "profile", "files", "MiB", "secrets", "counts"):
        table.add_column(column)
    for m in found:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(m.counts.items()))
        table.add_row(m.id, m.profile, str(len(m.files)), f"{m.size / 2**20:.1f}",
                      "sealed" if m.secrets else "-", counts)
    console.print(table)


@app.command("verify")
def verify_command(backup_id: str = typer.Argument(..., help="A backup id (or its start)."),
                   as_json: bool = JSON) -> None:
    """Check the manifest's signature and re-read every object it names."""
    from sutazai.backup.service import verify
    from sutazai.cli.progress import RichProgress

    with RichProgress(errors) as progress:
        manifest, problems = verify(load_settings(), backup_id, progress)
    if as_json:
        emit_json({"id": manifest.id, "ok": not problems, "problems": problems})
    else:
        for problem in problems:
            errors.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
        if not problems:
            console.print(f"backup {manifest.id} is intact: {len(manifest.files)} file(s), "
                          "signature good", highlight=False)
    if problems:
        raise typer.Exit(1)


@app.command("restore")
def restore_command(
    backup_id: str = typer.Argument(..., help="A backup id (or its start)."),
    to: Path = typer.Option(..., "--to", help="The home to restore into (empty)."),
    force: bool = typer.Option(False, "--force", help="Write over a folder, or PostgreSQL "
                               "databases, that are not empty."),
) -> None:
    """Restore a backup into a new home; each file is checked as it is written. A
    production backup's PostgreSQL dumps go onto the databases the settings name."""
    from sutazai.backup.service import restore
    from sutazai.cli.progress import RichProgress

    with RichProgress(errors) as progress:
        manifest = restore(load_settings(), backup_id, to, force=force, progress=progress,
                           replace_databases=force)
    console.print(f"restored {manifest.id} into {to}: {len(manifest.files)} file(s); use it "
                  f"with SUTAZAI_HOME={to}", highlight=False)
    if manifest.databases:
        console.print(f"  PostgreSQL databases restored: {', '.join(sorted(manifest.databases))}",
                      highlight=False)


@app.command("prune")
def prune_command(keep: int = typer.Option(..., "--keep", min=1,
                                           help="How many of the newest to keep.")) -> None:
    """Remove all but the newest backups, and the objects only they held."""
    from sutazai.backup.service import prune

    removed, freed = prune(load_settings(), keep)
    console.print(f"removed {len(removed)} backup(s), freed {freed / 2**20:.1f} MiB",
                  highlight=False)


@app.command("drill")
def drill_command(
    backup_id: str | None = typer.Option(
        None, "--backup", help="Drill this backup instead of making a new one."),
    ask: bool = typer.Option(True, "--ask/--no-ask",
                             help="Serve the restored champion and ask it one question "
                                  "(--no-ask where no engine may start, e.g. a full GPU)."),
    as_json: bool = JSON,
) -> None:
    """Back up, verify, restore into a scratch home, use it, compare counts with the
    source; exit 1 when any check failed. Pushes its result to the Pushgateway."""
    from sutazai.backup.drill import as_json as drill_json
    from sutazai.backup.drill import run_drill

    report = run_drill(load_settings(), backup_id=backup_id, ask=ask)
    if as_json:
        emit_json(drill_json(report))
    else:
        for check in report.checks:
            counts = "".join(f" {key} {value}" for key, value in (
                ("source", check.source), ("restored", check.restored)) if value is not None)
            mark = {"ok": "[green]ok[/]", "failed": "[bold red]FAILED[/]"}.get(
                check.status, "[yellow]skipped[/]")
            console.print(f"{mark} {check.name}{counts} ({check.seconds:.1f} s)"
                          + (f": {escape(check.detail)}" if check.detail else ""),
                          highlight=False)
        console.print(f"drill of backup {report.backup_id or '(none)'}: "
                      f"{'passed' if report.ok else 'FAILED'} in {report.seconds:.1f} s",
                      highlight=False)
    if not report.ok:
        raise typer.Exit(1)
