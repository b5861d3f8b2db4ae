"""Which CLI commands change state, and the permission each needs (:mod:`sutazai.security.access`).

One table rather than a check inside each command, so a test can walk every command and
fail when a new one is neither here nor declared read-only (:data:`READ_ONLY`).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperGroup

from sutazai.security.access import Permission

COMMAND_PERMISSIONS: dict[str, Permission] = {
    "run": "promote",  # the nightly cycle selects and promotes champions
    "serve": "serve",
    "optimize": "ingest",
    "models pull": "ingest",
    "models import": "ingest",
    "models convert": "ingest",
    "models rm": "delete",
    "models gc": "delete",
    "models encrypt": "admin",
    "models rekey": "admin",
    "models decrypt": "admin",
    "models evict-plaintext": "delete",
    "models rollback": "promote",
    "registry sync": "ingest",
    "bench run": "ingest",
    "bench select": "promote",
    "bench capacity": "ingest",
    "data import": "ingest",
    "data snapshot": "ingest",
    "data rate": "ingest",
    "data remove": "delete",
    "kg ingest": "ingest",
    "kg embed": "ingest",
    "kg rm": "delete",
    "backup create": "ingest",
    "backup restore": "admin",
    "backup prune": "delete",
    "backup drill": "ingest",  # writes a backup (the restore goes to a scratch home)
    "learn finetune": "ingest",
    "nas run": "ingest",
    "nas register": "ingest",
    "keys create": "admin",
    "keys list": "admin",
    "keys revoke": "admin",
    "audit accept": "admin",  # re-anchors the audit log after an investigation
    "migrate": "admin",  # copies the home's stores into the production databases
}
READ_ONLY = frozenset({
    "report", "models list", "models show", "models verify", "models export", "bench leaderboard",
    "data validate", "data stats", "kg stats", "kg entity", "kg query", "kg export", "kg search",
    "kg ask", "nas show", "backup list", "backup verify",
    "audit verify", "audit tail",
})


class GuardedGroup(TyperGroup):
    """A command group that checks the caller's permission for the sub-command it is about
    to run, after the command line is parsed (so ``--help`` stays open to everyone) and
    before anything runs."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        full = f"{ctx.info_name} {name}" if ctx.parent is not None else str(name)
        permission = COMMAND_PERMISSIONS.get(full)
        if permission is not None and not ctx.resilient_parsing and "--help" not in rest:
            from sutazai.config import load_settings
            from sutazai.security.access import require

            require(load_settings(), permission, f"sutazai {full}")
        return name, command, rest
