"""Run Airflow work in a process of its own and print one ``RESULT {json}`` line.

Airflow configures logging and reads its settings when first imported; running it in a
process of its own keeps each caller's Airflow home and SutazAI settings apart (the tests,
the orchestration benchmark).

    python -m sutazai_stack.dag_probe integrity          (import errors, parse times)
    python -m sutazai_stack.dag_probe test DAG_ID CONF   (dag.test() with a JSON conf)
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def dagbag() -> Any:
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    # As Airflow's DAG processor and workers do: DAG files import their sibling modules.
    sys.path.insert(0, settings.DAGS_FOLDER)
    return DagBag()


def integrity() -> dict[str, Any]:
    started = time.perf_counter()
    bag = dagbag()
    stats = [{"file": s.file, "duration_s": s.duration.total_seconds(), "dags": s.dag_num}
             for s in bag.dagbag_stats]
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "tags": sorted(dag.tags), "doc_md": bool(dag.doc_md), "params": sorted(dag.params),
            "schedule": type(dag.timetable).__name__, "catchup": dag.catchup,
            "tasks": {t.task_id: {"retries": t.retries, "timeout_s": (
                t.execution_timeout.total_seconds() if t.execution_timeout else None),
                "upstream": sorted(t.upstream_task_ids)} for t in dag.tasks},
        }
    return {"import_errors": {k: str(v) for k, v in bag.import_errors.items()},
            "stats": stats, "dags": dags, "seconds": time.perf_counter() - started}


def test(dag_id: str, conf: dict[str, Any]) -> dict[str, Any]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    dag = dagbag().get_dag(dag_id)
    run = dag.test(run_conf=conf)
    with create_session() as session:
        tasks = {ti.task_id: str(ti.state) for ti in run.get_task_instances(session=session)}
        events = [{"uri": e.uri, "extra": e.extra} for e in session.query(AssetEvent).all()]
    return {"state": str(run.state), "tasks": tasks, "asset_events": events}


if __name__ == "__main__":
    if sys.argv[1] == "integrity":
        result = integrity()
    else:
        result = test(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
    sys.stdout.write("RESULT " + json.dumps(result, default=str) + "\n")
