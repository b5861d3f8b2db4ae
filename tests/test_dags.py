"""SutazAI's Airflow DAGs: integrity, parse time, and ``dag.test()`` of each on the embedded
defaults (a real Airflow 3 metadata database, real KFP local runs, real MLflow).

The nightly DAG runs on the production profile (PostgreSQL) in
``tests/production/test_nightly_production.py``; ``make run`` runs it on the embedded one.

Each Airflow run happens in a process of its own (sutazai_stack.dag_probe), so Airflow's
logging and settings never leak into the rest of the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sutazai.config import Settings, load_settings
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import TaskAliases
from sutazai_stack.services import airflow_environment
from tests.helpers import spacy_entry

DAG_IDS = {"sutazai_model_sync", "sutazai_benchmark", "sutazai_nightly",
           "sutazai_knowledge_ingest", "sutazai_backup"}


class Airflow:
    """Airflow configured for one test's SutazAI home, with a migrated database."""

    def __init__(self, settings: Settings) -> None:
        self.env = {**os.environ, **airflow_environment(settings)}
        done = subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                              env=self.env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        self.last_log = ""

    def probe(self, *args: str) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "sutazai_stack.dag_probe", *args],
                              env=self.env, capture_output=True, text=True, timeout=900)
        self.last_log = done.stdout + done.stderr
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        assert done.returncode == 0 and lines, self.last_log[-6000:]
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT "):])
        return result

    def test(self, dag_id: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.probe("test", dag_id, json.dumps(conf or {}))


@pytest.fixture
def airflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            write_catalog: Callable[..., Path]) -> Airflow:
    monkeypatch.setenv("SUTAZAI_VLLM_VENV", str(tmp_path / "no-vllm"))
    monkeypatch.setenv("SUTAZAI_BENCHMARK_PROFILE", "smoke")
    write_catalog(spacy_entry())
    return Airflow(load_settings())


def test_dags_import_cleanly_parse_fast_and_are_well_formed(airflow: Airflow) -> None:
    found = airflow.probe("integrity")
    assert found["import_errors"] == {}
    assert set(found["dags"]) == DAG_IDS
    for stat in found["stats"]:  # measured by the DagBag itself, file by file
        assert stat["dags"] == 1 and stat["duration_s"] < 0.5, stat
    schedules = {dag_id: dag["schedule"] for dag_id, dag in found["dags"].items()}
    assert schedules == {"sutazai_model_sync": "CronTriggerTimetable",
                         "sutazai_nightly": "CronTriggerTimetable",
                         "sutazai_backup": "CronTriggerTimetable",
                         "sutazai_benchmark": "AssetTriggeredTimetable",
                         "sutazai_knowledge_ingest": "AssetTriggeredTimetable"}
    for dag_id, dag in found["dags"].items():
        assert "sutazai" in dag["tags"] and dag["doc_md"] and dag["catchup"] is False, dag_id
        tasks = dag["tasks"]
        # the conf is checked first, and a bad conf is not retried
        assert tasks["check_request"] == {"retries": 0, "timeout_s": 10800.0, "upstream": []}
        launchers = [t for name, t in tasks.items() if name not in ("check_request", "report")]
        assert launchers and all(t["retries"] >= 1 and t["timeout_s"] for t in launchers)
        assert all(t["upstream"] for name, t in tasks.items() if name != "check_request")


@pytest.mark.slow
def test_model_sync_dag_emits_one_asset_event_per_new_version(airflow: Airflow) -> None:
    first = airflow.test("sutazai_model_sync")
    assert first["state"] == "success", airflow.last_log[-4000:]
    assert first["tasks"] == {"check_request": "success", "mirror": "success"}
    [event] = first["asset_events"]
    assert event["uri"] == "x-sutazai://models/en-core-web-sm"
    assert event["extra"]["version"] == 1 and event["extra"]["mlflow_version"] == "1"
    assert "pipeline run id: model_sync-" in airflow.last_log
    again = airflow.test("sutazai_model_sync")  # nothing new: no new event
    assert again["state"] == "success" and len(again["asset_events"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize(("dag_id", "conf", "message"), [
    ("sutazai_model_sync", {"models": ["no-such-model"]},
     "model(s) no-such-model not in the catalog"),
    ("sutazai_nightly", {"profile": "fastest"}, "unknown load profile 'fastest'"),
])
def test_bad_conf_fails_the_run_at_its_first_task(airflow: Airflow, dag_id: str,
                                                  conf: dict[str, Any], message: str) -> None:
    result = airflow.test(dag_id, conf)
    assert result["state"] == "failed"
    assert result["tasks"].pop("check_request") == "failed"
    assert set(result["tasks"].values()) == {"upstream_failed"}
    assert message in airflow.last_log and "Trigger the run again" in airflow.last_log


@pytest.mark.slow
def test_benchmark_dag_selects_a_champion(airflow: Airflow, settings: Settings) -> None:
    assert airflow.test("sutazai_model_sync")["state"] == "success"
    result = airflow.test("sutazai_benchmark", {"profile": "smoke"})
    assert result["state"] == "success", airflow.last_log[-4000:]
    assert "ner champion: en-core-web-sm:1 on spacy" in airflow.last_log
    assert TaskAliases(open_registry(settings)).require("ner").ref == "en-core-web-sm:1"


@pytest.mark.slow
def test_knowledge_dag_ingests_the_documents_folder(airflow: Airflow, settings: Settings
                                                   ) -> None:
    settings.documents_root.mkdir(parents=True)
    (settings.documents_root / "acme.md").write_text(
        "# Acme\n\nTim Cook leads Apple. Apple acquired Beats in 2014.")
    result = airflow.test("sutazai_knowledge_ingest")
    assert result["state"] == "success", airflow.last_log[-4000:]
    assert "graph after ingest: 1 documents, 1 chunks" in airflow.last_log, [
        line for line in airflow.last_log.splitlines() if "graph after" in line or "rror" in line]
    # the embedding step ran after the write and, with no embeddings model, skipped it
    assert "chunks not embedded (1 written by the ingest): no embeddings model" in (
        airflow.last_log), [line for line in airflow.last_log.splitlines() if "embed" in line]

