"""``sutazai serve``: the OpenAI-compatible API and /metrics for one model version, or for
several behind one endpoint (routed by the request's ``model``, loaded on demand)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from sutazai.cli.output import errors
from sutazai.config import load_settings
from sutazai.serving.engines import RunningEngine

if TYPE_CHECKING:
    from sutazai.serving.multi import ModelRouter


def serve_command(
    models: list[str] = typer.Argument(
        None, metavar="[NAME]...",
        help="NAME, NAME:VERSION or NAME@ALIAS; several serve them all on one endpoint, "
        "each loaded on its first request; default: the champion of the default task."),
    champions: bool = typer.Option(
        False, "--champions", help="Serve the champion of every task on one endpoint, each "
        "following its task's champion alias."),
    engine: str = typer.Option(None, "--engine", "-e",
                               help="llamacpp, vllm or ollama; default: the selection's "
                               "choice, else the format's default."),
    port: int = typer.Option(None, "--port", "-p", help="Port to listen on (default 8000)."),
    host: str = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
) -> None:
    """Serve model versions until interrupted.

    One model starts at once. Several (sutazai serve A B:2 C@champion, or --champions)
    are listed at /v1/models and routed by the request's "model" (its name, NAME:VERSION,
    NAME@ALIAS, or for a champion its task); each engine starts on the first request for
    it, and idle engines are stopped, least recently used first, when a load would exceed
    SUTAZAI_SERVE_MEMORY_BUDGET_MIB (default: half the RAM). A request waits up to
    SUTAZAI_SERVE_LOAD_WAIT_S for its model to load, then gets a 503 with Retry-After.
    """
    from sutazai.serving.service import (
        resolve_target,
        resolve_targets,
        serve_forever,
        serve_many_forever,
    )

    settings = load_settings()
    names = list(models or [])
    address = (host or settings.serve_host, port or settings.serve_port)
    if champions or len(names) > 1:
        targets = resolve_targets(settings, names, champions)

        def announce_many(router: ModelRouter, url: str) -> None:
            budget = (f"{router.budget_bytes / 2**20:.0f} MiB" if router.budget_bytes
                      else "no limit")
            listed = ", ".join(f"{m.key} ({m.manifest.ref}"
                               + (f", champion of {m.task})" if m.task else ")")
                               for m in router.models)
            errors.print(
                f"serving [bold]{listed}[/] at {url}/v1, each loaded on its first request "
                f"(memory budget {budget}) — metrics at {url}/metrics, liveness at /health, "
                "readiness at /health/ready; Ctrl-C stops", highlight=False)

        serve_many_forever(settings, targets, engine, *address, announce_many)
        return

    target = resolve_target(settings, names[0] if names else None)

    def announce(running: RunningEngine, url: str) -> None:
        abilities = ", ".join(sorted(running.capabilities))
        errors.print(
            f"serving [bold]{running.manifest.ref}[/] on {running.engine} (loaded in "
            f"{running.load_seconds:.1f}s; {abilities}) at {url}/v1 — metrics at {url}/metrics, "
            "liveness at /health, readiness at /health/ready; Ctrl-C stops", highlight=False)

    serve_forever(settings, target, engine, *address, announce)
