"""One typed settings object for the whole platform.

Values come, highest priority first, from explicit arguments, ``SUTAZAI_*`` environment
variables, an optional YAML file (``SUTAZAI_CONFIG``, or ``sutazai.yaml`` in the working
directory), and finally embedded defaults that keep all state under ``.sutazai/``.
Production deployments change settings, never code: point ``mlflow_tracking_uri`` at an
MLflow server and ``repository_dir`` at a shared volume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from sutazai.errors import ConfigError


def _settings_file() -> Path | None:
    explicit = os.environ.get("SUTAZAI_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(
                f"SUTAZAI_CONFIG points at {path}, which is not a file: "
                "create it or unset the variable."
            )
        return path
    local = Path("sutazai.yaml")
    return local if local.is_file() else None


class Settings(BaseSettings):
    """Every knob SutazAI reads. Paths are made absolute when the settings load."""

    model_config = SettingsConfigDict(env_prefix="SUTAZAI_", extra="ignore")

    home: Path = Field(
        default=Path(".sutazai"), description="Root of all embedded state (repository, MLflow)."
    )
    catalog: Path = Field(
        default=Path("models/catalog.yaml"), description="The catalog of models to mirror."
    )
    repository_dir: Path | None = Field(
        default=None, description="Model repository root; default <home>/repository."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking/registry URI; default MLFLOW_TRACKING_URI, "
        "else SQLite under <home>.",
    )
    mlflow_experiment: str = "sutazai-model-sync"
    pypi_index_url: str = Field(
        default="https://pypi.org/simple",
        description="PEP 503/691 index for pypi: sources (a devpi or Artifactory mirror "
        "in an air-gapped site).",
    )
    ollama_registry: str = Field(
        default="registry.ollama.ai", description="Registry host behind ollama: URIs."
    )
    oci_plain_http_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description="Registry hosts reached over plain HTTP instead of HTTPS.",
    )
    http_timeout_s: float = Field(default=60.0, gt=0)
    download_chunk_bytes: int = Field(default=4 * 1024 * 1024, ge=64 * 1024)

    @field_validator("home", "catalog", "repository_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value is not None else None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _settings_file()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    @property
    def repository_root(self) -> Path:
        return self.repository_dir or self.home / "repository"

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.home / "mlflow-artifacts"


def load_settings(**overrides: Any) -> Settings:
    """Load settings, turning validation problems into a readable ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(
            f"invalid settings ({problems}); fix the SUTAZAI_* variable or settings file"
        ) from None
