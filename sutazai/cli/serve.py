"""``sutazai serve``: the OpenAI-compatible API and /metrics for one model version."""

from __future__ import annotations

import typer

from sutazai.cli.output import errors
from sutazai.config import load_settings
from sutazai.serving.engines import RunningEngine


def serve_command(
    model: str = typer.Argument(None, help="NAME, NAME:VERSION or NAME@ALIAS; default: the "
                                "champion of the default task."),
    engine: str = typer.Option(None, "--engine", "-e",
                               help="llamacpp, vllm or ollama; default: the selection's "
                               "choice, else the format's default."),
    port: int = typer.Option(None, "--port", "-p", help="Port to listen on (default 8000)."),
    host: str = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
) -> None:
    """Serve a model version until interrupted."""
    from sutazai.serving.service import resolve_target, serve_forever

    settings = load_settings()
    target = resolve_target(settings, model)

    def announce(running: RunningEngine, url: str) -> None:
        abilities = ", ".join(sorted(running.capabilities))
        errors.print(
            f"serving [bold]{running.manifest.ref}[/] on {running.engine} (loaded in "
            f"{running.load_seconds:.1f}s; {abilities}) at {url}/v1 — metrics at {url}/metrics, "
            "liveness at /health, readiness at /health/ready; Ctrl-C stops", highlight=False)

    serve_forever(settings, target, engine, host or settings.serve_host,
                  port or settings.serve_port, announce)
