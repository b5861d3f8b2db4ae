"""Benchmark steps: derive engine formats, plan, benchmark one pair, select per task.

No ``from __future__ import annotations`` in component modules: KFP reads the annotations.
"""

from kfp.dsl import Artifact, Markdown, Metrics, Output

from components.base import component


@component
def convert_models(synced: list[dict]) -> list[str]:
    """Derive a safetensors version of each GGUF generation model for vLLM (idempotent).

    ``synced`` (the mirror's outcomes) only orders this step after the mirror. Returns the
    conversions that failed; they do not stop the cycle.
    """
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import derive_for_vllm

    return derive_for_vllm(load_settings())


@component
def plan_benchmarks(conversion_failures: list[str]) -> list[dict]:
    """Every (latest model version, engine that serves it here) pair.

    One output only: kfp.local cannot loop over a named output of a multi-output task.
    The report recomputes what was skipped and why.
    """
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import plan_benchmarks as plan

    return [item.model_dump() for item in plan(load_settings()).items]


@component
def benchmark_model(ref: str, engine: str, profile: str, metrics: Output[Metrics],
                    summary: Output[Artifact]) -> str:
    """Benchmark one model version on one engine (reusing an identical earlier run).

    Returns the outcome as JSON text (KFP parameters cannot hold nulls). A failure is
    reported in the outcome, not raised: one model that cannot be served must not stop
    the others' benchmarks.
    """
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import BenchmarkItem, run_benchmark

    outcome = run_benchmark(load_settings(), BenchmarkItem(ref=ref, engine=engine),
                            profile or None)
    result = outcome.summary
    if result is not None:
        for step in result.steps:
            if step.completed:
                metrics.log_metric(f"c{step.concurrency}_ttft_p95_ms", step.ttft_p95_ms)
                metrics.log_metric(f"c{step.concurrency}_e2el_p95_ms", step.e2el_p95_ms)
                metrics.log_metric(f"c{step.concurrency}_output_tok_s", step.output_throughput)
        if result.quality is not None:
            metrics.log_metric("quality", result.quality.score)
        if result.peak_rss_bytes:
            metrics.log_metric("peak_rss_mib", result.peak_rss_bytes / 2**20)
        summary.metadata.update({"mlflow_run_id": result.run_id or "", "reused": outcome.reused})
    with open(summary.path, "w") as handle:
        handle.write(outcome.model_dump_json(indent=2))
    return outcome.model_dump_json(exclude={"summary": {"quality": {"details"}}})


@component
def select_champions(benchmarks: list[str], profile: str,
                     explanation: Output[Markdown]) -> list[dict]:
    """Select champion and challenger of every benchmarked task; set the MLflow aliases."""
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import BenchmarkOutcome, select_tasks

    outcomes = [BenchmarkOutcome.model_validate_json(b) for b in benchmarks]
    tasks = [t for o in outcomes if o.summary is not None for t in o.summary.measured_tasks]
    selections = select_tasks(load_settings(), tasks, profile or None)
    with open(explanation.path, "w") as handle:
        handle.write("\n\n".join(s.explanation for s in selections) or "Nothing to select.")
    return [s.model_dump(mode="json", exclude_none=True) for s in selections]


@component
def plan_capacity(selections: list[dict], deployed: dict) -> list[dict]:
    """With ``capacity_target_rps`` set, each generation champion's rate sweep and the
    replicas that rate needs (MLflow runs with the goodput curves); else nothing.

    ``deployed`` (the deploy step's answer) only orders this step after it: both serve.
    """
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import SelectionOutcome, plan_capacity

    chosen = [SelectionOutcome.model_validate(s) for s in selections]
    return [p.model_dump(mode="json") for p in plan_capacity(load_settings(), chosen)]
