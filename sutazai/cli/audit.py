"""``sutazai audit ...``: check the audit log's hash chain and read its latest records."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from sutazai.audit import AuditLog, open_audit_log
from sutazai.cli.output import console, emit_json, errors

app = typer.Typer(help="Verify and read the hash-chained audit log.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")
PATH = typer.Option(None, "--path", help="The log file; default <home>/audit/audit.jsonl.")


def _log(path: Path | None) -> AuditLog:
    from sutazai.config import load_settings

    return AuditLog(path) if path is not None else open_audit_log(load_settings())


@app.command("verify")
def verify_command(path: Path | None = PATH, as_json: bool = JSON) -> None:
    """Walk the chain; exit 1 naming the first edited, deleted, inserted or moved line."""
    log = _log(path)
    result = log.verify()
    if as_json:
        emit_json({"path": str(log.path), **result.model_dump()})
    elif result.ok:
        console.print(f"{escape(str(log.path))}: {escape(result.summary())}")
    else:
        errors.print(f"[bold red]error:[/] {escape(str(log.path))}: {escape(result.summary())}",
                     highlight=False)
    if not result.ok:
        raise typer.Exit(1)


@app.command("tail")
def tail_command(
    n: int = typer.Option(20, "-n", "--lines", min=1, help="How many records."),
    path: Path | None = PATH,
    as_json: bool = JSON,
) -> None:
    """The latest records, oldest first."""
    records = _log(path).tail(n)
    if as_json:
        emit_json([record.model_dump() for record in records])
        return
    table = Table(title=f"Last {len(records)} audit record(s)")
    for column in ("seq", "time", "actor", "action", "target", "result", "details"):
        table.add_column(column, justify="right" if column == "seq" else "left")
    for record in records:
        details = json.dumps(record.details, sort_keys=True) if record.details else ""
        table.add_row(str(record.seq), record.time[:19].replace("T", " "), escape(record.actor),
                      escape(record.action), escape(record.target), record.result,
                      escape(details))
    console.print(table)
