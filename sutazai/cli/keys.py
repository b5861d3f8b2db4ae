"""``sutazai keys ...``: create, list and revoke the API keys of SutazAI's HTTP endpoints."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, cast

import typer
from rich.markup import escape
from rich.table import Table

from sutazai.cli.output import console, emit_json

if TYPE_CHECKING:
    from sutazai.security.access import Role

app = typer.Typer(help="Manage API keys (held in the secret provider, mapped to roles).",
                  no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")


@app.command("create")
def create_command(
    name: str = typer.Argument(..., help="Who or what uses the key, e.g. team-search."),
    role: str = typer.Option("operator", "--role", help="viewer, operator or admin."),
    expires: str | None = typer.Option(None, "--expires", help="Lifetime, e.g. 90d or 12h."),
    rps: float | None = typer.Option(None, "--rps", min=0.001,
                                     help="Requests a second (default rate_limit_rps)."),
    burst: int | None = typer.Option(None, "--burst", min=1,
                                     help="Bucket size (default rate_limit_burst)."),
    as_json: bool = JSON,
) -> None:
    """Create a key; it is printed once and only its sha256 is stored."""
    from sutazai.config import load_settings
    from sutazai.errors import ConfigError
    from sutazai.security.access import ROLES, KeyStore, cli_principal, new_key, parse_duration
    from sutazai.security.audit import audit

    settings = load_settings()
    if role not in ROLES:
        raise ConfigError(f"role {role!r} does not exist: use one of {', '.join(ROLES)}")
    caller = cli_principal(settings)  # sutazai.cli.permissions checked the role
    key, entry = new_key(name, cast("Role", role),
                         expires_in=parse_duration(expires) if expires else None,
                         rate_limit_rps=rps, rate_limit_burst=burst)
    audit(settings, "key.create", entry.id, actor=caller.actor,
          after={"name": name, "role": role, "expires": str(entry.expires or "never")})
    KeyStore(settings).add(entry)
    if as_json:
        emit_json({"key": key, **entry.model_dump(mode="json", exclude={"sha256"})})
        return
    console.print(f"created API key {entry.id} ({escape(name)}, role {role}); it is shown "
                  "only now:")
    console.print(key, highlight=False, soft_wrap=True)


@app.command("list")
def list_command(as_json: bool = JSON) -> None:
    """The keys: id, name, role, limits, expiry (never the keys)."""
    from sutazai.config import load_settings
    from sutazai.security.access import KeyStore

    settings = load_settings()
    entries = sorted(KeyStore(settings).load().keys.values(), key=lambda e: e.created)
    if as_json:
        emit_json([e.model_dump(mode="json", exclude={"sha256"}) for e in entries])
        return
    now = datetime.now(UTC)
    table = Table(title=f"{len(entries)} API key(s)")
    for column in ("id", "name", "role", "created", "expires", "rate limit"):
        table.add_column(column)
    for e in entries:
        expiry = "never" if e.expires is None else f"{e.expires:%Y-%m-%d %H:%M}"
        if e.expired(now):
            expiry += " (expired)"
        limit = f"{e.rate_limit_rps or settings.rate_limit_rps:g}/s"
        table.add_row(e.id, escape(e.name), e.role, f"{e.created:%Y-%m-%d %H:%M}", expiry, limit)
    console.print(table)


@app.command("revoke")
def revoke_command(key_id: str = typer.Argument(..., help="The key's id (keys list)."),
                   as_json: bool = JSON) -> None:
    """Remove a key; servers refuse it within 30 s (their table refresh)."""
    from sutazai.config import load_settings
    from sutazai.security.access import KeyStore, cli_principal
    from sutazai.security.audit import audit

    settings = load_settings()
    caller = cli_principal(settings)
    entry = KeyStore(settings).revoke(key_id)
    audit(settings, "key.revoke", entry.id, actor=caller.actor,
          before={"name": entry.name, "role": entry.role})
    if as_json:
        emit_json({"revoked": entry.id, "name": entry.name})
    else:
        console.print(f"revoked API key {entry.id} ({escape(entry.name)})")
