"""
### SutazAI benchmark

Benchmarks the latest version of every model on every engine that can serve it (latency,
throughput, quality, memory), selects the champion and challenger of each task under the
SLOs, and sets the MLflow aliases, through the Kubeflow pipeline `benchmark_select`.
Identical bytes on the same engine and load profile are not measured twice.

**Scheduled** on new model versions (the `sutazai-model-versions` asset alias that
`sutazai_model_sync` feeds); trigger it by hand to re-select.

**Conf** — `profile`: the load profile (`latency`, `throughput`, `poisson`, `sweep`,
`smoke`; default: the `benchmark_profile` setting).
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
)


@dag(
    dag_id="sutazai_benchmark",
    schedule=MODEL_VERSIONS,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=6),
    default_args={**DEFAULT_ARGS, "retries": 1},
    tags=[*TAGS, "benchmark", "selection"],
    doc_md=__doc__,
    params={"profile": Param(None, type=["null", "string"],
                             description="Load profile; empty: the benchmark_profile setting.")},
)
def sutazai_benchmark() -> None:
    @task
    def benchmark_and_select(arguments: dict[str, Any]) -> dict[str, Any]:
        """Run the benchmark_select pipeline; log each task's champion."""
        result = launch("benchmark_select", arguments)
        for selection in result["output"] or []:
            champion = selection.get("champion")
            log.info("%s champion: %s", selection["task"],
                     f"{champion['model']}:{int(champion['version'])} on {champion['engine']}"
                     if champion else "none (no candidate meets the SLOs)")
        return result

    benchmark_and_select(check_request("benchmark_select"))


sutazai_benchmark()
