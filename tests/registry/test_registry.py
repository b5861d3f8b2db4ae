"""MLflow registration: embedded SQLite and a real ``mlflow server`` on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sutazai.config import Settings
from sutazai.errors import InUseError
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import (
    CHALLENGER,
    CHAMPION,
    AliasBook,
    TaskAliases,
    current_aliases,
)
from sutazai.repository import Repository
from sutazai.workflows.mirror import mirror_catalog, remove_version, sync_registry
from tests.helpers import entry
from tests.servers import MlflowServer


def make_source(folder: Path, content: str = "v1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.gguf").write_bytes(b"GGUF" + content.encode() * 1000)
    (folder / "README.md").write_text(content)
    return folder


def check_registration(settings: Settings, tmp_path: Path, write_catalog: Callable[..., Path]
                       ) -> None:
    source = make_source(tmp_path / "src")
    write_catalog(entry("tiny-llm", f"file:{source}", format="gguf", license="mit"))
    first = mirror_catalog(settings)
    assert first[0].error is None and first[0].mlflow_version == "1"

    client = MlflowClient(settings.tracking_uri, registry_uri=settings.tracking_uri)
    version = client.get_model_version("tiny-llm", "1")
    repo = Repository(settings.repository_root)
    manifest = repo.get("tiny-llm")
    assert version.source == "sutazai://repository/snapshots/tiny-llm/1"
    assert version.tags["sutazai.digest"] == manifest.digest
    assert version.tags["sutazai.format"] == "gguf"
    assert version.tags["sutazai.license"] == "mit"
    assert version.tags["sutazai.size"] == str(manifest.size)
    assert version.tags["sutazai.path"] == str(repo.snapshot_path(manifest))
    assert manifest.digest in version.description
    logged = client.download_artifacts(version.run_id, "manifest.json", str(tmp_path / "dl"))
    assert json.loads(Path(logged).read_text())["digest"] == manifest.digest

    # the same digest again, by a re-pull or a registry sync: no new version
    assert mirror_catalog(settings)[0].mlflow_version == "1"
    assert [r.created for r in sync_registry(settings)] == [False]
    assert len(client.search_model_versions("name = 'tiny-llm'")) == 1

    make_source(source, "v2")
    assert mirror_catalog(settings)[0].mlflow_version == "2"
    assert len(client.search_model_versions("name = 'tiny-llm'")) == 2


def test_registration_is_idempotent_on_embedded_sqlite(
    settings: Settings, tmp_path: Path, write_catalog: Callable[..., Path]
) -> None:
    assert settings.tracking_uri.startswith("sqlite:///")
    check_registration(settings, tmp_path, write_catalog)
    assert (settings.home / "mlflow.db").is_file()
    assert not Path("mlruns").exists()  # run artifacts stay under .sutazai/


@pytest.mark.slow
def test_registration_is_idempotent_on_an_mlflow_server(
    mlflow_server: MlflowServer, tmp_path: Path, write_catalog: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    settings = Settings(home=tmp_path / ".sutazai", catalog=tmp_path / "catalog.yaml")
    assert settings.tracking_uri == mlflow_server.url
    check_registration(settings, tmp_path, write_catalog)


def test_rm_refuses_a_version_holding_an_alias_unless_forced(
    settings: Settings, tmp_path: Path, write_catalog: Callable[..., Path]
) -> None:
    source = make_source(tmp_path / "src")
    write_catalog(entry("tiny-llm", f"file:{source}"))
    mirror_catalog(settings)
    make_source(source, "v2")
    mirror_catalog(settings)
    registry = open_registry(settings)
    registry.client.set_registered_model_alias("tiny-llm", "champion", "1")

    with pytest.raises(InUseError, match="champion"):
        remove_version(settings, "tiny-llm:1")
    assert len(Repository(settings.repository_root).versions("tiny-llm")) == 2

    remove_version(settings, "tiny-llm:2")  # no alias: removed from both places
    remove_version(settings, "tiny-llm:1", force=True)
    assert Repository(settings.repository_root).versions("tiny-llm") == []
    assert registry.client.search_model_versions("name = 'tiny-llm'") == []


def test_every_view_reads_who_holds_which_alias_in_one_place(
    settings: Settings, tmp_path: Path, write_catalog: Callable[..., Path]
) -> None:
    assert current_aliases(settings) == AliasBook()  # nothing registered yet: and no
    assert not (settings.home / "mlflow.db").exists()  # database made just to read it
    source = make_source(tmp_path / "src")
    write_catalog(entry("tiny-llm", f"file:{source}"))
    mirror_catalog(settings)
    make_source(source, "v2")
    mirror_catalog(settings)
    repo = Repository(settings.repository_root)
    registry = open_registry(settings)
    aliases = TaskAliases(registry)
    aliases.set("text-generation", CHAMPION, repo.get("tiny-llm", 1), "llamacpp", 1)
    # a promotion moves the champion on; the selection's pick becomes the challenger
    aliases.set("text-generation", CHAMPION, repo.get("tiny-llm", 2), "llamacpp", 4)
    aliases.set("text-generation", CHALLENGER, repo.get("tiny-llm", 1), "llamacpp", 1)
    registry.client.set_registered_model_alias("tiny-llm", "stable", "1")

    book = current_aliases(settings)
    champion = book.choice("text-generation")
    assert champion is not None and champion == aliases.get("text-generation")  # as serving
    assert (champion.ref, champion.label) == ("tiny-llm:2", "tiny-llm:2@llamacppx4")
    assert champion.digest == repo.get("tiny-llm", 2).digest
    assert book.choices(CHALLENGER) == {"text-generation": aliases.get("text-generation",
                                                                       CHALLENGER)}
    assert book.names_of("tiny-llm", 1) == ["text-generation@challenger", "tiny-llm@stable"]
    assert book.names_of("tiny-llm", 2) == ["text-generation@champion"]
    assert book.choice("ner") is None and book.names_of("other", 1) == []
