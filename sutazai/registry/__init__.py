"""MLflow model registry integration: every repository version is a registered version."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sutazai.registry.mlflow_registry import ModelRegistry, RegisteredVersion

if TYPE_CHECKING:
    from sutazai.config import Settings

__all__ = ["ModelRegistry", "RegisteredVersion", "open_registry"]


def open_registry(settings: Settings) -> ModelRegistry:
    """The MLflow registry of ``settings``, logged in with the credentials its secret
    provider holds (not whatever the environment happens to say)."""
    return ModelRegistry(settings.tracking_uri, settings.mlflow_experiment,
                         settings.mlflow_artifacts_dir, settings=settings)
