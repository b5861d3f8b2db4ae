"""``sutazai bench capacity``: sweep each candidate of a task on a real engine, plan the
replicas a target rate needs, price them, and log the goodput curve to MLflow.

The candidates are the task's champion and challenger (the MLflow aliases), each served
as it would be in production (its engine), one replica on this machine's hardware
profile. The sweep and the plan are :mod:`sutazai.benchmark.capacity`; this module drives
real load at them and keeps the record.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sutazai.benchmark import plots
from sutazai.benchmark.capacity import CapacityCurve, CapacityPlan, RateStep, curve_of, judge
from sutazai.benchmark.capacity import plan as make_plan
from sutazai.benchmark.capacity import sweep as rate_sweep
from sutazai.benchmark.loadgen import run_load
from sutazai.benchmark.metrics import SLO
from sutazai.benchmark.profiles import LoadProfile, get_profile
from sutazai.benchmark.prompts import load_corpus, make_prompts
from sutazai.config import Settings
from sutazai.errors import NotFoundError
from sutazai.progress import NULL_PROGRESS, Progress

STEP_SECONDS = 15.0  # of arrivals per sweep step
MIN_REQUESTS = 30  # per step: enough for a P95
IN_FLIGHT_CAP = 256  # the client never holds requests back: queues form at the server


def stepper(url: str, model: str, profile: LoadProfile, slo: SLO, prompts: list[str], *,
            step_seconds: float = STEP_SECONDS, min_requests: int = MIN_REQUESTS
            ) -> Callable[[float], RateStep]:
    """A function that drives ``url`` with Poisson arrivals at a rate and judges the step."""

    def run_at(rate: float) -> RateStep:
        count = max(min_requests, round(rate * step_seconds))
        step = profile.model_copy(update={
            "mode": "poisson", "rate": rate, "concurrency": IN_FLIGHT_CAP,
            "num_prompts": count, "warmup": 1})
        needed = step.warmup + count
        batch = (prompts * (needed // len(prompts) + 1))[:needed]
        [result] = run_load(url, model, batch, step, slo)
        return judge(result, rate, slo)

    return run_at


def service_seconds(url: str, model: str, profile: LoadProfile, prompts: list[str]) -> float:
    """Mean end-to-end latency of a few requests one at a time: the sweep starts at half
    the rate one request at a time would sustain."""
    probe = profile.model_copy(update={"mode": "sequential", "concurrency": 1, "rate": None,
                                       "num_prompts": 6, "warmup": 1})
    [result] = run_load(url, model, prompts[:7], probe)
    return (result.metrics.e2el.mean_ms or 1000.0) / 1000


def measure_curve(url: str, model: str, candidate: str, profile: LoadProfile, slo: SLO,
                  prompts: list[str], *, engine: str = "", concurrency: int = 1,
                  hardware_profile: str = "", progress: Progress = NULL_PROGRESS,
                  step_seconds: float = STEP_SECONDS) -> CapacityCurve:
    """Sweep one served replica (see :func:`sutazai.benchmark.capacity.sweep`)."""
    start = 0.5 / service_seconds(url, model, profile, prompts)
    bar = progress.task(f"rate sweep of {candidate}", total=None)
    try:
        steps = rate_sweep(stepper(url, model, profile, slo, prompts,
                                   step_seconds=step_seconds), start,
                           on_step=lambda step: bar.advance(1))
    finally:
        bar.close()
    return curve_of(candidate, steps, engine=engine, concurrency=concurrency,
                    hardware_profile=hardware_profile)


def assumptions(profile: LoadProfile, slo: SLO) -> dict[str, str]:
    limits = ", ".join(f"{k} {v:g}" for k, v in slo.model_dump().items()
                       if v is not None and k != "max_memory_mib" and k != "min_quality")
    return {"prompt": f"{profile.input_words} words", "output": f"{profile.output_tokens} "
            f"tokens{' (EOS ignored)' if profile.fixed_output else ''}",
            "arrivals": "Poisson, per replica the target rate over the replicas "
                        "(round-robin balancing)",
            "slo": limits or "none", "replica": "one engine per replica, as measured here"}


def capacity_plans(settings: Settings, task: str, rate: float, profile_name: str | None = None,
                   progress: Progress = NULL_PROGRESS, *, champion_only: bool = False
                   ) -> list[CapacityPlan]:
    """Plans for ``rate`` requests/s of ``task``: its champion's and challenger's."""
    from sutazai.registry.task_aliases import CHALLENGER, CHAMPION, current_aliases
    from sutazai.repository import open_repository
    from sutazai.serving.service import serving

    book = current_aliases(settings)
    aliases = (CHAMPION,) if champion_only else (CHAMPION, CHALLENGER)
    choices = [c for c in (book.choice(task, alias) for alias in aliases) if c]
    if not choices:
        raise NotFoundError(f"task {task!r} has no champion to plan for; run 'sutazai bench "
                            f"select {task}' first")
    profile = get_profile(profile_name or settings.benchmark_profile)
    slo = settings.selection_slo
    words = load_corpus(settings.benchmark_data_dir / "prompts.txt")
    prompts = make_prompts(words, 64, profile.input_words, profile.seed)
    price = settings.hardware_costs.get(settings.hardware_profile)
    plans = []
    for choice in choices:
        manifest = open_repository(settings).get(choice.model, choice.repository_version)
        with serving(settings, manifest, choice.engine) as (running, url):
            curve = measure_curve(url, running.model, choice.label, profile, slo, prompts,
                                  engine=running.engine, concurrency=choice.concurrency,
                                  hardware_profile=settings.hardware_profile,
                                  progress=progress)
        result = make_plan(curve, rate, price_per_hour=price, currency=settings.cost_currency,
                           assumptions=assumptions(profile, slo))
        log_capacity(settings, task, result, slo)
        plans.append(result)
    return plans


def log_capacity(settings: Settings, task: str, result: CapacityPlan, slo: SLO) -> str:
    """An MLflow run per candidate's plan: a metric per sweep step, the plan, the curve."""
    from mlflow.entities import Metric

    from sutazai.registry import open_registry

    registry = open_registry(settings)
    curve = result.curve
    run_id = registry.start_run(
        f"capacity {curve.candidate} for {result.target_rps:g} req/s",
        tags={"sutazai.step": "capacity", "sutazai.task": task,
              "sutazai.candidate": curve.candidate,
              "sutazai.hardware_profile": curve.hardware_profile},
        params={"target_rps": result.target_rps, **slo.params(),
                **{f"assume.{k}": v for k, v in result.assumptions.items()}},
        experiment=settings.benchmark_experiment)
    now = int(time.time() * 1000)
    metrics = [Metric("max_rate_rps", curve.max_rate_rps, now, 0)]
    for key in ("replicas", "headroom", "predicted_ttft_p95_ms", "cost_per_1m_input",
                "cost_per_1m_output"):
        value = getattr(result, key)
        if value is not None:
            metrics.append(Metric(key, float(value), now, 0))
    for index, step in enumerate(curve.steps):
        for key in ("rate", "throughput_rps", "good_ratio", "ttft_p95_ms", "e2el_p95_ms",
                    "output_tokens_per_s"):
            value = getattr(step, key)
            if value is not None:
                metrics.append(Metric(f"sweep_{key}", float(value), now, index))
    registry.client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / "capacity_plan.json").write_text(result.model_dump_json(indent=2))
        if curve.steps:
            plots.goodput_curve(curve, slo, f"{curve.candidate}: goodput curve",
                                out / "goodput_curve.png")
        registry.client.log_artifacts(run_id, str(out))
    registry.client.set_terminated(run_id, "FINISHED")
    return run_id
