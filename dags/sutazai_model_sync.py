"""
### SutazAI model sync

Mirrors the models of `models/catalog.yaml` into SutazAI's offline, content-addressed
repository, verifies every byte, and registers each version in MLflow's model registry,
through the Kubeflow pipeline `model_sync`.

Every model that got a **new version** emits an Airflow asset event
(`x-sutazai://models/<name>`, through the alias `sutazai-model-versions`), which schedules
`sutazai_benchmark`.

**Conf** — `models`: catalog names to mirror (default: all of them).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from sutazai_dag_support import (
    DEFAULT_ARGS,
    MODEL_VERSIONS,
    TAGS,
    check_request,
    launch,
    log,
    model_asset,
)


@dag(
    dag_id="sutazai_model_sync",
    schedule="@daily",
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=4),
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "models"],
    doc_md=__doc__,
    params={"models": Param(None, type=["null", "array"], items={"type": "string"},
                            description="Catalog names to mirror; empty: all of them.")},
)
def sutazai_model_sync() -> None:
    @task(outlets=[MODEL_VERSIONS])
    def mirror(arguments: dict[str, Any], outlet_events: Any = None) -> dict[str, Any]:
        """Run the model_sync pipeline; one asset event per new model version."""
        result = launch("model_sync", arguments)
        for outcome in result["output"] or []:
            if outcome.get("created"):
                log.info("new version %s:%s", outcome["name"], outcome["version"])
                outlet_events[MODEL_VERSIONS].add(model_asset(outcome["name"]), extra={
                    "version": int(outcome["version"]), "digest": outcome["digest"],
                    "mlflow_version": outcome.get("mlflow_version")})
        return result

    mirror(check_request("model_sync"))


sutazai_model_sync()
