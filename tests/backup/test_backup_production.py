"""Backups of the production profile: the learning store, the NAS studies and MLflow's store
live in the session's real PostgreSQL; ``pg_dump`` takes them, ``pg_restore`` puts them back.

MLflow's rows are written through ``MlflowClient`` straight onto its PostgreSQL store (the
store the stack's MLflow server uses), without starting that server: the backup reads the
database, not the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from sutazai.backup.archive import BackupArchive
from sutazai.backup.service import backup_root, create, restore, verify
from sutazai.config import Settings
from sutazai.errors import ConfigError, IntegrityError
from sutazai.learning.datastore import FeedbackStore
from sutazai.production.databases import connect_args

pytestmark = pytest.mark.slow


def _nas_trials(settings: Settings) -> list[float]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.RDBStorage(
        settings.nas_storage,
        engine_kwargs={"connect_args": connect_args(settings, settings.nas_storage)})
    try:
        study = optuna.load_study(study_name="search", storage=storage)
        return sorted(float(t.value) for t in study.trials if t.value is not None)
    finally:
        storage.engine.dispose()


def _learning_prompts(settings: Settings) -> list[str]:
    with FeedbackStore.open(settings) as store:
        return sorted(r["prompt"] for r in store.rows())


def test_postgres_stores_are_dumped_signed_and_restored(
        production: Settings, postgres_cluster: object, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    from mlflow import MlflowClient

    production.home.mkdir(parents=True, exist_ok=True)
    with FeedbackStore.open(production) as store:
        for i in range(3):
            store.log_interaction(f"question {i}", f"answer {i}", model="m")
    storage = optuna.storages.RDBStorage(
        production.nas_storage,
        engine_kwargs={"connect_args": connect_args(production, production.nas_storage)})
    study = optuna.create_study(study_name="search", storage=storage)
    for value in (0.25, 0.5):
        study.enqueue_trial({"x": value})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    storage.engine.dispose()
    monkeypatch.setenv("PGPASSWORD", postgres_cluster.password)  # type: ignore[attr-defined]
    mlflow = MlflowClient(tracking_uri=production.mlflow_store_url)
    mlflow.create_registered_model("tiny")

    made = create(production)
    assert made.profile == "production" and set(made.databases) == {"mlflow", "learning",
                                                                   "nas"}
    assert made.counts["mlflow_registered_models"] == 1
    dumps = {f.path for f in made.files if f.path.startswith("postgres/")}
    assert dumps == {"postgres/mlflow.dump", "postgres/learning.dump", "postgres/nas.dump"}
    assert not any("password" in url or ":" in url.split("@")[0].removeprefix("postgresql:")
                   for url in made.databases.values())
    assert verify(production, made.id)[1] == []

    # a new server: the databases exist, empty (emptied: cheaper than made again)
    for database in ("mlflow", "sutazai_learning", "sutazai_nas"):
        with postgres_cluster.admin(database) as admin:  # type: ignore[attr-defined]
            admin.execute("DROP SCHEMA public CASCADE")
            admin.execute("CREATE SCHEMA public AUTHORIZATION pg_database_owner")
    restore(production, made.id, tmp_path / "home-1")
    assert _learning_prompts(production) == ["question 0", "question 1", "question 2"]
    assert _nas_trials(production) == [0.25, 0.5]
    assert [m.name for m in MlflowClient(tracking_uri=production.mlflow_store_url)
            .search_registered_models()] == ["tiny"]
    assert not (tmp_path / "home-1" / "postgres").exists()  # dumps go to the server only

    # the live store moves on; a restore over it is refused unless --force
    with FeedbackStore.open(production) as store:
        store.log_interaction("written after the backup", "x", model="m")
        store.remove([r["id"] for r in store.rows() if r["prompt"] == "question 0"])
    with pytest.raises(ConfigError, match=r"is not empty.*--force"):
        restore(production, made.id, tmp_path / "home-2")
    assert not (tmp_path / "home-2").exists()  # refused before writing anything
    with pytest.raises(ConfigError, match="is not empty"):  # a home's --force alone: no
        restore(production, made.id, tmp_path / "home-2", force=True)
    restore(production, made.id, tmp_path / "home-2", force=True, replace_databases=True)
    assert _learning_prompts(production) == ["question 0", "question 1", "question 2"]

    # an embedded home does not take a production backup, nor production an embedded one
    embedded = Settings(home=production.home, profile="embedded")
    with pytest.raises(ConfigError, match=r"production profile.*SUTAZAI_PROFILE=production"):
        restore(embedded, made.id, tmp_path / "home-3")
    of_embedded = create(embedded)
    assert of_embedded.profile == "embedded" and not of_embedded.databases
    with pytest.raises(ConfigError, match=r"embedded home.*SUTAZAI_PROFILE=embedded"):
        restore(production, of_embedded.id, tmp_path / "home-3")
    assert not (tmp_path / "home-3").exists()

    # a flipped byte in a dump: verify names it, restore refuses it before pg_restore
    archive = BackupArchive(backup_root(production))
    [entry] = [f for f in made.files if f.path == "postgres/learning.dump"]
    victim = archive.object_path(entry.sha256)
    victim.chmod(0o600)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    assert [p for p in verify(production, made.id)[1]] == [
        f"postgres/learning.dump: object {entry.sha256[:12]} is damaged (sha256 differs)"]
    with FeedbackStore.open(production) as store:
        store.log_interaction("kept", "x", model="m")
    with pytest.raises(IntegrityError, match=r"learning\.dump.*damaged"):
        restore(production, made.id, tmp_path / "home-4", replace_databases=True)
    assert "kept" in _learning_prompts(production)  # nothing of it was restored
