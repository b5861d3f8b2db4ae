"""MLflow model registry integration: every repository version is a registered version."""

from sutazai.registry.mlflow_registry import ModelRegistry, RegisteredVersion

__all__ = ["ModelRegistry", "RegisteredVersion"]
