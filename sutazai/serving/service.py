"""Serve a repository version: resolve what to serve, start its engine, front it.

``NAME`` is the latest version, ``NAME:VERSION`` one version, ``NAME@ALIAS`` the version an
MLflow alias points at, and nothing at all the champion of the default task, on the
engine the selection chose for it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from sutazai.config import Settings
from sutazai.errors import NotFoundError
from sutazai.mirror import open_registry, open_repository
from sutazai.registry.task_aliases import TaskAliases
from sutazai.repository.manifest import Manifest, parse_ref
from sutazai.serving.engines import RunningEngine, engine_for
from sutazai.serving.gateway import GatewayThread, create_app
from sutazai.serving.process import free_port, require_free_port

_ALIAS = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Target:
    """What to serve and, when the selection chose it, on which engine."""

    manifest: Manifest
    engine: str | None = None
    concurrency: int | None = None


def resolve_target(settings: Settings, spec: str | None) -> Target:
    repo = open_repository(settings)
    if spec is None:
        choice = TaskAliases(open_registry(settings)).require(settings.default_task)
        return Target(repo.get(choice.model, choice.repository_version), choice.engine,
                      choice.concurrency)
    name, at, alias = spec.partition("@")
    if at:
        if not _ALIAS.match(alias):
            raise NotFoundError(f"{spec!r}: an alias is letters, digits, '.', '_' or '-'")
        repo.get(name)  # an unknown model fails here, before MLflow is asked
        version = open_registry(settings).repository_version_for_alias(name, alias)
        return Target(repo.get(name, version))
    name, version_number = parse_ref(spec)
    return Target(repo.get(name, version_number))


def engine_workdir(settings: Settings, manifest: Manifest, engine: str) -> Path:
    return settings.home / "serving" / f"{manifest.name}-{manifest.version}-{engine}"


def start_engine(settings: Settings, manifest: Manifest, engine_name: str | None = None
                 ) -> RunningEngine:
    """Start the engine for ``manifest`` (the format's default unless named)."""
    engine = engine_for(settings, manifest, engine_name)
    repo = open_repository(settings)
    model_dir = repo.ensure_snapshot(manifest)
    return engine.start(manifest, model_dir, engine_workdir(settings, manifest, engine.name))


@contextlib.contextmanager
def serving(settings: Settings, manifest: Manifest, engine_name: str | None = None,
            host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[RunningEngine, str]]:
    """The engine plus SutazAI's gateway in a background thread; yields (engine, base URL).

    Port 0 picks a free port for the gateway.
    """
    if port:
        require_free_port(host, port)
    running = start_engine(settings, manifest, engine_name)
    try:
        if not port:
            port = free_port()
        with GatewayThread(create_app(running), host, port) as gateway:
            yield running, gateway.url
    finally:
        running.stop()


def serve_forever(settings: Settings, target: Target, engine_name: str | None, host: str,
                  port: int, announce: Callable[[RunningEngine, str], None]) -> None:
    """Serve in the foreground until SIGINT/SIGTERM, then stop the engine."""
    import uvicorn

    require_free_port(host, port)
    running = start_engine(settings, target.manifest, engine_name or target.engine)
    try:
        announce(running, f"http://{host}:{port}")
        uvicorn.run(create_app(running, owns_engine=True), host=host, port=port,
                    log_level="warning", access_log=False)
    finally:
        running.stop()
