"""Shared fixtures: isolated settings and real servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sutazai.config import Settings
from sutazai.repository import Repository
from tests.servers import MlflowServer, Nginx, OciRegistry


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's state, settings or tracking server."""
    for name in ("MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE", "HF_ENDPOINT", "SUTAZAI_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SUTAZAI_HOME", str(tmp_path / ".sutazai"))
    monkeypatch.setenv("SUTAZAI_CATALOG", str(tmp_path / "catalog.yaml"))
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml")


@pytest.fixture
def repo(settings: Settings) -> Repository:
    return Repository(settings.repository_root)


@pytest.fixture
def write_catalog(settings: Settings) -> Callable[..., Path]:
    """Write the catalog the settings point at from entry dictionaries."""

    def write(*entries: dict[str, Any]) -> Path:
        settings.catalog.write_text(yaml.safe_dump({"models": list(entries)}))
        return settings.catalog

    return write


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Nginx]:
    server = Nginx(tmp_path / "nginx", tmp_path / "mirror")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def oci_registry(tmp_path: Path) -> Iterator[OciRegistry]:
    server = OciRegistry(tmp_path / "registry")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start(timeout_s=120)
    yield server
    server.stop()
