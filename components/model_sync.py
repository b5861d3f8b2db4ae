"""Mirror steps: list the catalog, pull a model, verify it, register it in MLflow.

No ``from __future__ import annotations`` in component modules: KFP reads the annotations.
"""

from kfp.dsl import Input, Model, Output

from components.base import component


@component
def list_catalog(names: list[str]) -> list[str]:
    """The catalog entries to mirror: ``names`` when given (each must exist), else all."""
    from sutazai.config import load_settings
    from sutazai.repository import load_catalog

    settings = load_settings()
    return [entry.name for entry in load_catalog(settings.catalog).select(names or None)]


@component
def pull_model(name: str, model: Output[Model]) -> dict:
    """Pull one catalog model into the offline repository (resumable, idempotent).

    The ``model`` artifact holds the version's manifest; its metadata names the version.
    """
    import json

    from sutazai.config import load_settings
    from sutazai.errors import SutazAIError
    from sutazai.repository import open_repository
    from sutazai.workflows.mirror import mirror_catalog

    settings = load_settings()
    (outcome,) = mirror_catalog(settings, [name], register=False)
    if outcome.error:
        raise SutazAIError(f"pulling {name} failed: {outcome.error}")
    manifest = open_repository(settings).get(name, outcome.version)
    with open(model.path, "w") as handle:
        json.dump(manifest.model_dump(mode="json"), handle, indent=2)
    model.metadata.update({"ref": manifest.ref, "digest": manifest.digest,
                           "format": manifest.format, "size": manifest.size,
                           "tasks": manifest.tasks})
    return {key: value for key, value in outcome.as_dict().items() if value is not None}


@component
def verify_model(model: Input[Model]) -> str:
    """Re-hash every file of the pulled version; fail on any missing or changed byte."""
    from sutazai.config import load_settings
    from sutazai.errors import IntegrityError
    from sutazai.workflows.mirror import verify_repository

    ref = str(model.metadata["ref"])
    _, problems = verify_repository(load_settings(), [ref])
    if problems:
        raise IntegrityError(f"{ref}: " + "; ".join(f"{p.path} {p.problem}" for p in problems))
    return ref


@component
def register_model(ref: str, pulled: dict) -> dict:
    """Register the verified version in MLflow's model registry (once per digest)."""
    from sutazai.config import load_settings
    from sutazai.observability.metrics import push_repository_metrics
    from sutazai.registry import open_registry
    from sutazai.repository import open_repository
    from sutazai.repository.manifest import parse_ref
    from sutazai.workflows.mirror import register_version

    settings = load_settings()
    repo = open_repository(settings)
    manifest = repo.get(*parse_ref(ref))
    registered = register_version(repo, open_registry(settings), manifest)
    push_repository_metrics(settings, repo)  # bytes and versions, with a Pushgateway
    return {**pulled, "mlflow_version": registered.version}
