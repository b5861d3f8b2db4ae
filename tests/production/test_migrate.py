"""``sutazai migrate --to production`` for real: an embedded home's MLflow runs and registry,
learning store and NAS study copied into the production profile's PostgreSQL, read back
through the stack's own MLflow server, re-run without change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from sutazai.config import Settings, load_settings
from sutazai.learning.datastore import FeedbackStore
from sutazai.production.databases import connect_args
from sutazai.production.migrate import MigrationError, migrate
from sutazai.production.postgres import LocalPostgres
from sutazai.security.audit import open_audit_log
from sutazai.serving.process import free_port
from sutazai_stack import services as stack
from tests.test_cli import sutazai


def build_home(home: Path) -> dict[str, Any]:
    """An embedded home with a run (params, metrics, an artifact), a registered model with two
    versions and an alias, rated feedback and a three-trial study, written by the tools."""
    embedded = Settings(home=home, profile="embedded", mlflow_tracking_uri=None,
                        learning_db_url=None, nas_storage_url=None)
    client = MlflowClient(embedded.mlflow_store_url)
    artifacts = embedded.mlflow_artifacts_dir / "sutazai-test"
    experiment = client.create_experiment("sutazai-test", artifact_location=artifacts.as_uri())
    run = client.create_run(experiment, run_name="pull", tags={"sutazai.kind": "test"})
    run_id = run.info.run_id
    client.log_param(run_id, "quant", "q4_k_m")
    for step, loss in enumerate((0.9, 0.5, float("nan"))):
        client.log_metric(run_id, "loss", loss, step=step)
    client.log_text(run_id, "weights sha256 abc\n", "manifest.txt")
    client.set_terminated(run_id)
    client.create_registered_model("gemma", description="mirrored")
    for _ in range(2):
        client.create_model_version("gemma", f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("gemma", "champion", "2")
    with FeedbackStore(embedded.learning_url) as store:
        ids = [store.log_interaction(f"question {i}", f"answer {i}", model="gemma")
               for i in range(3)]
        store.rate(ids[1], -0.5, "incorrect")
        feedback = store.rows()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="nas", storage=embedded.nas_storage,
                                direction="minimize")
    study.optimize(lambda t: (t.suggest_int("layers", 1, 4) - 2) ** 2, n_trials=3)
    return {"run_id": run_id, "experiment": experiment, "feedback": feedback,
            "trials": [(t.number, t.params, t.value, t.state) for t in study.trials],
            "metrics": [(m.step, m.value) for m in client.get_metric_history(run_id, "loss")]}


@pytest.fixture(scope="module")
def embedded_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Built once for the module (MLflow's SQLite schema alone takes seconds); each test
    copies the files into its own home. The run's artifact stays in this folder: its URI is
    absolute, as in any home."""
    home = tmp_path_factory.mktemp("embedded") / ".sutazai"
    return home, build_home(home)


@pytest.fixture
def moved(production: Settings, embedded_home: tuple[Path, dict[str, Any]]
          ) -> tuple[Settings, Settings, dict[str, Any]]:
    source, facts = embedded_home
    production.home.mkdir(parents=True, exist_ok=True)
    for name in ("mlflow.db", "learning.db", "nas.db"):
        for part in (source / name, source / f"{name}-wal"):  # a WAL not yet checkpointed
            if part.exists():
                shutil.copyfile(part, production.home / part.name)
    return Settings(home=production.home, profile="embedded"), production, facts


def table_rows(cluster: LocalPostgres, database: str, table: str) -> int:
    connection = cluster.admin(database)
    try:
        found = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
    finally:
        connection.close()
    assert found is not None
    return int(found[0])


def test_migrate_copies_every_store_keeps_ids_and_reruns_as_a_no_op(
        moved: tuple[Settings, Settings, dict[str, Any]], postgres_cluster: LocalPostgres,
        monkeypatch: pytest.MonkeyPatch) -> None:
    embedded, production, home = moved
    dry = migrate(embedded, production, dry_run=True)
    by_store = {s.store: s for s in dry.stores}
    assert by_store["learning"].copied == 3 and by_store["nas"].copied > 3
    assert table_rows(postgres_cluster, "sutazai_learning",
                      "pg_tables WHERE tablename = 'feedback'") == 0  # a dry run writes nothing

    report = migrate(embedded, production)
    # the copied tables are analysed at once, so the planner does not guess (autovacuum
    # would take a minute)
    assert table_rows(postgres_cluster, "mlflow", "pg_stat_user_tables WHERE relname = "
                      "'model_versions' AND last_analyze IS NOT NULL") == 1
    counts = {s.store: (s.rows, s.copied, s.present) for s in report.stores}
    assert all(rows == copied + present and copied > 0 for rows, copied, present in
               counts.values())  # present: rows each tool's schema makes (MLflow's workspace)

    # MLflow, through the stack's own server on PostgreSQL: same ids, values, aliases, artifact
    monkeypatch.setenv("SUTAZAI_MLFLOW_PORT", str(free_port()))
    settings = load_settings()
    [server] = [s for s in stack.services(settings) if s.name == "mlflow"]
    stack.stack_dir(settings).mkdir(parents=True, exist_ok=True)
    stack.start(settings, server)
    try:
        client = MlflowClient(settings.tracking_uri)
        run = client.get_run(home["run_id"])
        assert run.info.experiment_id == home["experiment"]
        assert run.data.params == {"quant": "q4_k_m"} and run.info.status == "FINISHED"
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]
        assert history[:2] == home["metrics"][:2] and history[2][0] == 2  # NaN stays NaN
        assert history[2][1] != history[2][1]
        assert client.get_model_version_by_alias("gemma", "champion").version == "2"
        assert [v.version for v in client.search_model_versions("name = 'gemma'")] in (
            ["2", "1"], ["1", "2"])
        target = production.home / "download"
        target.mkdir()
        assert client.download_artifacts(run.info.run_id, "manifest.txt", str(target))
        assert (target / "manifest.txt").read_text() == "weights sha256 abc\n"
        fresh = client.create_experiment("after-migration")  # the sequence moved on
        assert int(fresh) > int(home["experiment"])
    finally:
        stack.stop(settings, server)

    with FeedbackStore.open(production) as store:
        assert store.rows() == home["feedback"]  # ids, ratings, labels, times
        new_id = store.log_interaction("later", "row", model="gemma")
        assert new_id == max(r["id"] for r in home["feedback"]) + 1
    storage = optuna.storages.RDBStorage(
        production.nas_storage,
        engine_kwargs={"connect_args": connect_args(production, production.nas_storage)})
    study = optuna.load_study(study_name="nas", storage=storage)
    assert [(t.number, t.params, t.value, t.state) for t in study.trials] == home["trials"]
    study.optimize(lambda t: t.suggest_int("layers", 1, 4), n_trials=1)
    assert study.trials[-1].number == 3 and len({t._trial_id for t in study.trials}) == 4

    # a re-run through the CLI: nothing copied, every source row found in place
    rerun = sutazai("migrate", "--to", "production", "--json")
    assert rerun.returncode == 0, rerun.stderr
    again = json.loads(rerun.stdout)
    assert [(s["store"], s["copied"], s["present"]) for s in again["stores"]] == [
        (store, 0, rows) for store, (rows, _, _) in counts.items()]
    assert table_rows(postgres_cluster, "sutazai_learning", "feedback") == 4
    audited = [r for r in open_audit_log(production).records() if r.action == "migrate.production"]
    assert len(audited) == 2 and audited[0].details["learning"]["copied"] == 3


def test_conflicting_target_row_is_refused_naming_the_table(
        moved: tuple[Settings, Settings, dict[str, Any]], postgres_cluster: LocalPostgres,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The targets were used before the migration: the production MLflow server made its own
    Default experiment (kept: it only differs in its times and artifact root), and a served
    request took feedback id 1 (refused: the embedded row 1 is another)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    embedded, production, _ = moved
    nas = sa.create_engine(embedded.nas_storage)
    with nas.begin() as connection:  # as if written by an older Optuna
        head = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'v3.0.0.d'"))
    with pytest.raises(MigrationError, match="optuna storage upgrade --storage sqlite:///"):
        migrate(embedded, production)
    assert table_rows(postgres_cluster, "mlflow", "pg_tables WHERE schemaname = 'public'") == 0
    with nas.begin() as connection:
        connection.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    nas.dispose()

    monkeypatch.setenv("PGPASSWORD", postgres_cluster.password)  # type: ignore[attr-defined]
    SqlAlchemyStore(production.mlflow_store_url, str(production.mlflow_artifacts_dir))
    with FeedbackStore.open(production) as store:
        store.log_interaction("a different first row", "x")
    with pytest.raises(MigrationError, match=r"table feedback .* 'prompt' differs"):
        migrate(embedded, production)
    assert table_rows(postgres_cluster, "mlflow", "runs") == 1  # MLflow's copy went through
    assert [r.result for r in open_audit_log(production).records()
            if r.action == "migrate.production"] == ["error", "error"]
    engine = sa.create_engine(production.learning_url,
                              connect_args=connect_args(production, production.learning_url))
    with engine.connect() as connection:  # the store's copy was rolled back as a whole
        assert connection.execute(sa.text("SELECT count(*) FROM feedback")).scalar() == 1
    engine.dispose()
