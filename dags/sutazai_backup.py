"""
### SutazAI backup drill

Every morning SutazAI backs its home up and proves the backup restores: the Kubeflow
pipeline `backup_drill` (`sutazai.backup.drill`) makes a backup, verifies it, restores it
into a scratch home (removed afterwards), serves the restored default-task champion and
asks it one question, queries the restored graph, and compares what SutazAI reads back
(repository versions, MLflow registered versions and aliases, learning-store rows, graph
documents and chunks) with the source. The report task logs every check and fails the run
when any failed. The drill pushes `sutazai_backup_drill_success` and the time of the last
good backup to the Pushgateway (alerts `SutazAIBackupTooOld`, `SutazAIBackupDrillFailed`).

**Scheduled** at 06:00, after the nightly cycle (02:00) has usually finished, so the backup
holds that night's champions. A fixed time, not an asset the nightly emits: a backup must
not depend on the cycle succeeding, and the backup is consistent even while the cycle
still writes (its snapshot order: MLflow first, then manifests, then blobs).

**Conf** — `ask`: serve the restored champion and ask it (false where no second engine
may start, e.g. a GPU the serving fleet fills).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from sutazai_dag_support import DEFAULT_ARGS, TAGS, check_request, launch, log


@dag(
    dag_id="sutazai_backup",
    schedule="0 6 * * *",
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={**DEFAULT_ARGS, "retries": 1},
    tags=[*TAGS, "backup"],
    doc_md=__doc__,
    params={
        "ask": Param(True, type="boolean",
                     description="Serve the restored champion and ask it one question."),
    },
)
def sutazai_backup() -> None:
    @task
    def drill(arguments: dict[str, Any]) -> dict[str, Any]:
        """Run the backup_drill pipeline."""
        return launch("backup_drill", arguments)

    @task(retries=0)
    def report(result: dict[str, Any]) -> dict[str, Any]:
        """Log each check of the drill; fail the run when any failed."""
        from airflow.sdk.exceptions import AirflowFailException

        drilled = result["output"] or {}
        for check in drilled.get("checks") or []:
            # KFP returns numbers as floats
            counts = "".join(f" {key} {int(check[key])}" for key in ("source", "restored")
                             if check.get(key) is not None)
            log.info("%s %s%s (%.1f s) %s", check["status"], check["name"], counts,
                     check.get("seconds", 0.0), check.get("detail", ""))
        answer = drilled.get("answer")
        if answer:
            log.info("restored champion %s answered %r", answer["ref"], answer["text"])
        log.info("drill of backup %s: %s in %.0f s", drilled.get("backup_id"),
                 "passed" if drilled.get("ok") else "FAILED", drilled.get("seconds", 0.0))
        failures = drilled.get("failures") or []
        if not drilled.get("ok"):
            raise AirflowFailException("; ".join(failures) or "the backup drill failed")
        return {"backup_id": drilled.get("backup_id"), "seconds": result["seconds"],
                "mlflow_url": result["mlflow_url"], "run_id": result["run_id"]}

    report(drill(check_request("backup_drill")))


sutazai_backup()
