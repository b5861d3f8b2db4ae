"""
### SutazAI nightly cycle

Every night SutazAI tries to make its models better and proves it before anything changes
in production. The Kubeflow pipeline `nightly` runs the stages listed below, in order (the
list is written from `sutazai.workflows.cycle.NIGHTLY`, the one place that declares them).

**Conf** — `models`: catalog names (default: all); `profile`: the load profile.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task
from sutazai_dag_support import DEFAULT_ARGS, TAGS, check_request, launch, log

from sutazai.workflows.cycle import describe


@dag(
    dag_id="sutazai_nightly",
    schedule="0 2 * * *",
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=8),
    default_args={**DEFAULT_ARGS, "retries": 1},
    tags=[*TAGS, "nightly"],
    doc_md=f"{__doc__}\n{describe()}\n",
    params={
        "models": Param(None, type=["null", "array"], items={"type": "string"},
                        description="Catalog names to mirror; empty: all of them."),
        "profile": Param(None, type=["null", "string"],
                         description="Load profile; empty: the benchmark_profile setting."),
    },
)
def sutazai_nightly() -> None:
    @task
    def nightly_cycle(arguments: dict[str, Any]) -> dict[str, Any]:
        """Run the nightly pipeline end to end."""
        return launch("nightly", arguments)

    @task(retries=0)
    def report(result: dict[str, Any]) -> dict[str, Any]:
        """Log the cycle's summary (each task's champion as the aliases say at its end);
        fail the run when any model or step failed."""
        from airflow.sdk.exceptions import AirflowFailException

        summary = result["output"] or {}
        for name, version in (summary.get("mirrored") or {}).items():
            log.info("mirrored %s: version %s", name, version)
        # the champions as the MLflow aliases name them after the promotion (what serves)
        selected = summary.get("selected") or {}
        for task_name, champion in (summary.get("champions") or {}).items():
            chosen = selected.get(task_name)
            log.info("%s champion: %s%s", task_name, champion or "none",
                     f" (selected before the promotion: {chosen})"
                     if chosen and champion and chosen != champion else "")
        answer = summary.get("answer")
        if answer:
            log.info("champion %s answered %r in %.0f ms", answer["ref"], answer["text"],
                     answer["seconds"] * 1000)
        if summary.get("improvement"):
            log.info("self-improvement: %s", summary["improvement"])
        for regression in summary.get("regressions") or []:
            log.warning("regression: %s", regression)
        log.info("full report: %s", summary.get("report"))
        failures = summary.get("failures") or []
        if failures:
            raise AirflowFailException("; ".join(failures))
        return {"champions": summary.get("champions"), "seconds": result["seconds"],
                "mlflow_url": result["mlflow_url"], "run_id": result["run_id"]}

    report(nightly_cycle(check_request("nightly")))


sutazai_nightly()
