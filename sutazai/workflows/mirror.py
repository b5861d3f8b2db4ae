"""Mirroring as a service: the repository and the MLflow registry kept in step.

This is the one place that composes :mod:`sutazai.repository` with
:mod:`sutazai.registry`; the CLI, KFP components and DAGs call these functions and stay
thin.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sutazai.config import Settings
from sutazai.errors import InUseError, SutazAIError
from sutazai.observability.tracing import traced
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.registry import ModelRegistry, RegisteredVersion, open_registry
from sutazai.repository import Repository, load_catalog, open_repository, pull
from sutazai.repository.manifest import Manifest, parse_ref
from sutazai.repository.store import FileProblem
from sutazai.security.audit import audit

log = logging.getLogger(__name__)


@dataclass
class MirrorOutcome:
    """One catalog entry after a mirror run, for tables, JSON and pipeline outputs."""

    name: str
    version: int | None = None
    digest: str | None = None
    size: int = 0
    created: bool = False
    unchanged: bool = False
    downloaded_bytes: int = 0
    written_bytes: int = 0
    resumed_bytes: int = 0
    repaired: list[str] = field(default_factory=list)  # damaged files fetched again
    mlflow_version: str | None = None
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)




@traced("mirror_catalog")
def mirror_catalog(
    settings: Settings,
    names: list[str] | None = None,
    *,
    register: bool = True,
    progress: Progress = NULL_PROGRESS,
) -> list[MirrorOutcome]:
    """Pull the catalog's models (all, or ``names``) and register each version.

    A model that fails is reported in its outcome and the others still run, so one bad
    source does not hold back the nightly mirror; callers decide the exit status.
    """
    entries = load_catalog(settings.catalog).select(names)
    repo = open_repository(settings)
    registry = open_registry(settings) if register else None
    outcomes = []
    for entry in entries:
        started = time.monotonic()
        outcome = MirrorOutcome(name=entry.name)
        try:
            result = pull(entry, repo, settings, progress)
            manifest = result.manifest
            outcome.version, outcome.digest, outcome.size = (
                manifest.version, manifest.digest, manifest.size)
            outcome.created, outcome.unchanged = result.created, result.unchanged
            outcome.downloaded_bytes = result.downloaded_bytes
            outcome.written_bytes = result.written_bytes
            outcome.resumed_bytes = result.resumed_bytes
            outcome.repaired = result.repaired
            if result.created:
                audit(settings, "model.pull", manifest.ref, after=manifest.digest,
                      details={"source": manifest.source, "bytes": manifest.size})
            if result.repaired:
                audit(settings, "model.repair", manifest.ref, after=manifest.digest,
                      details={"files": result.repaired})
            if registry is not None:
                registered = register_version(repo, registry, manifest, result.seconds)
                outcome.mlflow_version = registered.version
                if registered.created:
                    audit(settings, "model.register", manifest.ref,
                          after=f"mlflow {registered.name} v{registered.version}")
        except SutazAIError as exc:
            # The outcome carries the error and every caller reports it (the CLI once, a
            # pipeline step by failing), so the log does not repeat it at a level users see.
            # The model's name is in the outcome already: it is not repeated in the text.
            message = str(exc)
            outcome.error = message.removeprefix(f"{entry.name}: ")
            log.debug("mirroring %s failed: %s", entry.name, outcome.error)
        outcome.seconds = time.monotonic() - started
        outcomes.append(outcome)
    return outcomes


def register_version(repo: Repository, registry: ModelRegistry, manifest: Manifest,
                     pull_seconds: float | None = None) -> RegisteredVersion:
    """Register one stored version; one registration per digest, even when racing."""
    with repo.model_lock(manifest.name):
        return registry.register(manifest, repo.ensure_snapshot(manifest),
                                 pull_seconds=pull_seconds)


def resolve_refs(repo: Repository, refs: list[str]) -> list[Manifest]:
    """``NAME`` (latest), ``NAME:VERSION``; every version of every model when empty."""
    if not refs:
        return repo.all_versions()
    manifests = []
    for ref in refs:
        name, version = parse_ref(ref)
        manifests.append(repo.get(name, version))
    return manifests


@traced("verify_repository")
def verify_repository(
    settings: Settings, refs: list[str] | None = None, progress: Progress = NULL_PROGRESS
) -> tuple[list[Manifest], list[FileProblem]]:
    repo = open_repository(settings)
    manifests = resolve_refs(repo, refs or [])
    return manifests, repo.verify(manifests, progress)


def remove_version(settings: Settings, ref: str, *, force: bool = False) -> Manifest:
    """Remove a version from the repository and the registry.

    A version that holds a registry alias (``champion``...) is what something serves or
    selects; removing it needs ``force``.
    """
    repo = open_repository(settings)
    name, version = parse_ref(ref)
    if version is None:
        raise InUseError(f"name the version to remove, e.g. {name}:1 (see 'sutazai models list')")
    manifest = repo.get(name, version)
    registry = open_registry(settings)
    aliases = registry.aliases(manifest)
    if aliases and not force:
        raise InUseError(
            f"{manifest.ref} holds the alias(es) {', '.join(aliases)}; move them to another "
            "version first, or pass --force to remove it anyway"
        )
    registry.delete(manifest)
    repo.remove(manifest)
    audit(settings, "model.delete", manifest.ref, before=manifest.digest,
          details={"forced": force, "aliases": aliases})
    return manifest


def sync_registry(settings: Settings) -> list[RegisteredVersion]:
    """Register every repository version that MLflow does not know yet (idempotent)."""
    repo = open_repository(settings)
    registry = open_registry(settings)
    return [register_version(repo, registry, m) for m in repo.all_versions()]
