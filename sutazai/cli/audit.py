"""``sutazai audit ...``: check the audit log's hash chain against its anchor, read its latest
records, and accept (after an investigation) a log whose end no longer matches its anchor."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from sutazai.cli.output import console, emit_json, errors
from sutazai.security.audit import AuditLog, anchor_store, audit_path, open_audit_log

app = typer.Typer(help="Verify and read the hash-chained audit log.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")
PATH = typer.Option(None, "--path", help="The log file; default <home>/audit/audit.jsonl.")
ANCHOR = typer.Option(None, "--anchor", help="The log's anchor file; default the "
                      "audit_anchor setting for the configured log, else next to the log's "
                      "folder (<folder>-anchor/<name>.anchor).")


def _log(path: Path | None, anchor: Path | None = None) -> AuditLog:
    from sutazai.config import load_settings

    if path is not None and anchor is not None:
        return AuditLog(path, anchor=anchor)
    settings = load_settings()
    if path is None:
        log = open_audit_log(settings)
        return log if anchor is None else AuditLog(log.path, sink=log.sink, anchor=anchor)
    same = Path(path).absolute() == audit_path(settings).absolute()  # its configured anchor
    return AuditLog(path, anchor=anchor_store(settings) if same else None)


@app.command("verify")
def verify_command(path: Path | None = PATH, anchor: Path | None = ANCHOR,
                   as_json: bool = JSON) -> None:
    """Walk the chain and hold it against its anchor; exit 1 naming the first edited,
    deleted, inserted or moved line, or the records cut off the end."""
    log = _log(path, anchor)
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


@app.command("accept")
def accept_command(
    reason: str = typer.Option(..., "--reason", help="What the investigation found; kept in "
                               "the record this writes."),
    path: Path | None = PATH,
    anchor: Path | None = ANCHOR,
) -> None:
    """After investigating a failed 'audit verify': anchor the log as it is now (admin).

    For an end that no longer matches the anchor (records cut off, the log emptied, the
    anchor or head lost). A chain broken inside is refused: move that log aside first,
    then this starts a new one. Either way the decision is itself an audit record.
    """
    from sutazai.config import load_settings
    from sutazai.security.access import cli_principal

    log = _log(path, anchor)
    record = log.accept(reason, actor=cli_principal(load_settings()).actor)
    before = record.details.get("anchored_before")
    was = (f"the anchor said {before['count']} record(s)" if isinstance(before, dict)
           else "there was no readable anchor")
    console.print(f"{escape(str(log.path))}: accepted {record.details['records']} record(s) "
                  f"({escape(was)}); recorded as seq {record.seq}, anchored at "
                  f"{escape(log.anchor.location)}", highlight=False)


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
