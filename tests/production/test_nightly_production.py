"""The nightly cycle through Airflow and KFP on the production profile, for real: Airflow's
metadata database, MLflow's tracking and registry store (behind the stack's own ``mlflow
server``), the learning store and the NAS storage all in PostgreSQL, rate limits in Redis.
No SQLite file is left in the home."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sutazai.config import Settings, load_settings
from sutazai.production.postgres import LocalPostgres
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import TaskAliases
from sutazai.serving.process import free_port
from sutazai_stack import services as stack
from sutazai_stack.__main__ import SEED
from tests.helpers import spacy_entry
from tests.test_dags import Airflow


@pytest.fixture
def stack_mlflow(production: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The stack's MLflow service of the production profile, started by the stack's code."""
    monkeypatch.setenv("SUTAZAI_MLFLOW_PORT", str(free_port()))
    settings = load_settings()
    [mlflow] = [s for s in stack.services(settings) if s.name == "mlflow"]
    assert "--backend-store-uri" in mlflow.command
    assert mlflow.command[mlflow.command.index("--backend-store-uri") + 1] == (
        settings.mlflow_store_url)  # no password in the command line
    stack.stack_dir(settings).mkdir(parents=True, exist_ok=True)
    stack.start(settings, mlflow)
    yield settings
    stack.stop(settings, mlflow)


def rows(cluster: LocalPostgres, database: str, query: str) -> int:
    connection = cluster.admin(database)
    try:
        found = connection.execute(query).fetchone()
    finally:
        connection.close()
    assert found is not None
    return int(found[0])


@pytest.mark.slow
def test_nightly_dag_runs_on_postgresql(stack_mlflow: Settings, postgres_cluster: LocalPostgres,
                                        monkeypatch: pytest.MonkeyPatch,
                                        write_catalog: Callable[..., Path]) -> None:
    settings = stack_mlflow
    monkeypatch.setenv("SUTAZAI_VLLM_VENV", str(settings.home / "no-vllm"))
    monkeypatch.setenv("SUTAZAI_BENCHMARK_PROFILE", "smoke")
    monkeypatch.setenv("SUTAZAI_NAS_TRIALS", "2")
    write_catalog(spacy_entry())
    settings.learning_inbox_dir.mkdir(parents=True)  # training data: gated, then searched on
    shutil.copyfile(SEED, settings.learning_inbox_dir / SEED.name)
    airflow = Airflow(load_settings())
    assert airflow.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql://")
    assert "PGPASSWORD" in airflow.env  # the URL names the role only, never its password
    assert airflow.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == settings.postgres_url("airflow")

    result = airflow.test("sutazai_nightly")

    assert result["state"] == "success", airflow.last_log[-4000:]
    assert set(result["tasks"].values()) == {"success"}
    assert "ner champion: en-core-web-sm:1@spacyx1" in airflow.last_log
    assert "MLflow run: " in airflow.last_log
    report = json.loads((settings.home / "reports" / "nightly-latest.json").read_text())
    assert report["selections"][0]["champion"]["model"] == "en-core-web-sm"
    assert TaskAliases(open_registry(settings)).require("ner").ref == "en-core-web-sm:1"
    # every registry, run and DAG row is in PostgreSQL ...
    assert rows(postgres_cluster, "mlflow", "SELECT count(*) FROM model_versions") >= 1
    assert rows(postgres_cluster, "mlflow", "SELECT count(*) FROM registered_model_aliases"
                ) >= 1
    assert rows(postgres_cluster, "mlflow", "SELECT count(*) FROM runs") >= 3
    assert rows(postgres_cluster, "airflow", "SELECT count(*) FROM dag_run WHERE dag_id = "
                "'sutazai_nightly' AND state = 'success'") == 1
    assert rows(postgres_cluster, "airflow", "SELECT count(*) FROM task_instance WHERE "
                "dag_id = 'sutazai_nightly'") == len(result["tasks"])
    seeded = sum(1 for line in SEED.read_text().splitlines() if line.strip())
    assert rows(postgres_cluster, "sutazai_learning", "SELECT count(*) FROM feedback") == seeded
    assert rows(postgres_cluster, "sutazai_nas", "SELECT count(*) FROM trials WHERE state = "
                "'COMPLETE'") == 2
    # ... and none in a SQLite file of the home but the repository's cache of verified
    # hashes, which belongs with the files it vouches for
    assert [p.relative_to(settings.home).as_posix() for p in settings.home.rglob("*.db")
            ] == ["repository/verified.db"]
