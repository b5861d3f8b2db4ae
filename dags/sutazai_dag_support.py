"""What SutazAI's DAGs share: defaults, the assets, the conf check and the pipeline launch.

Only light imports here: Airflow parses DAG files often, and each must parse in well under
half a second. SutazAI and KFP are imported inside the tasks that use them.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, AssetAlias, task

log = logging.getLogger("sutazai")

TAGS = ["sutazai"]
# No start_date: enabling a DAG waits for its next scheduled time instead of running at once
# for the slot it "missed" (CronTriggerTimetable's run_immediately=False).

#: Retries with exponential backoff; every SutazAI step is idempotent, so a retry is safe.
DEFAULT_ARGS: dict[str, Any] = {
    "owner": "sutazai",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=20),
    "execution_timeout": timedelta(hours=3),
}

#: New model versions: the mirror adds one ``x-sutazai://models/<name>`` event per model
#: that got a new version; the benchmark DAG is scheduled on this alias.
MODEL_VERSIONS = AssetAlias("sutazai-model-versions")

#: Documents to ingest: whoever drops documents posts an event (REST API or a DAG).
DOCUMENTS = Asset(name="sutazai-documents", uri="x-sutazai://documents", group="sutazai")


def model_asset(name: str) -> Asset:
    return Asset(name=f"sutazai-model-{name}", uri=f"x-sutazai://models/{name}",
                 group="sutazai-models")


def check_request(pipeline: str) -> Any:
    """The first task of every DAG: the run's conf, checked; fails at once (no retry),
    with the fix, on a conf the pipeline would reject."""
    @task(task_id="check_request", retries=0)
    def check(params: dict[str, Any] | None = None) -> dict[str, Any]:
        return checked_arguments(pipeline, params)

    return check()


def checked_arguments(pipeline: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The pipeline's arguments from the run's params; fails the run (no retry) if bad."""
    from airflow.sdk.exceptions import AirflowFailException

    from pipelines.requests import validate_request
    from sutazai.config import load_settings

    # an empty field in the trigger form arrives as None: the pipeline's default then
    conf = {key: value for key, value in (params or {}).items() if value is not None}
    try:
        arguments = validate_request(pipeline, conf, load_settings())
    except ValueError as exc:
        raise AirflowFailException(f"{exc}. Trigger the run again with a corrected conf.") \
            from None
    log.info("%s arguments: %s", pipeline, arguments)
    return arguments


def launch(pipeline: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run one pipeline (here, or on Kubeflow per the settings) and log where to look."""
    from pipelines.runner import PipelineError, run_pipeline

    try:
        run = run_pipeline(pipeline, arguments)
    except PipelineError as exc:
        log.error("pipeline run id: %s; %s", exc.run_id or "(none)", exc)
        raise
    log.info("pipeline run id: %s (%s)", run.run_id, run.where)
    log.info("MLflow run: %s", run.mlflow_url or f"{run.mlflow_run_id} (embedded store)")
    return {"run_id": run.run_id, "mode": run.mode, "mlflow_run_id": run.mlflow_run_id,
            "mlflow_url": run.mlflow_url, "seconds": run.seconds, "output": run.output}
