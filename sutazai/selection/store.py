"""The MLflow side of selection: read benchmark summaries, record the decision, set aliases."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from sutazai.benchmark import plots
from sutazai.benchmark.metrics import SLO
from sutazai.benchmark.runner import SUMMARY, BenchmarkSummary
from sutazai.config import Settings
from sutazai.errors import NotFoundError
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import CHALLENGER, CHAMPION, TaskAliases
from sutazai.repository import open_repository
from sutazai.security.audit import audit
from sutazai.selection.promotion import hold_or_replace
from sutazai.selection.rules import Candidate, Selection, Weights, select
from sutazai.serving.engines import GENERATION_TASKS


def latest_summaries(settings: Settings, task: str | None = None,
                     profile: str | None = None, *, digest: str | None = None,
                     engine: str | None = None) -> list[BenchmarkSummary]:
    """The newest complete benchmark of each (model digest, engine, profile), optionally
    of one digest and engine only (one search, one download: the reuse check).

    ``task`` keeps the runs that measured it: a chat model's run also counts for text
    generation (the ``sutazai.tasks`` tag; runs from before it have ``sutazai.task`` only).
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    registry = open_registry(settings)
    experiment = registry.client.get_experiment_by_name(settings.benchmark_experiment)
    if experiment is None:
        return []
    query = ["tags.`sutazai.step` = 'benchmark'", "tags.`sutazai.incomplete` = 'false'"]
    for tag, value in (("profile", profile), ("digest", digest), ("engine", engine)):
        if value:
            query.append(f"tags.`sutazai.{tag}` = '{value}'")
    runs = registry.client.search_runs(
        [experiment.experiment_id], " and ".join(query), order_by=["attributes.start_time DESC"],
        max_results=500,
    )
    seen: set[tuple[str, str, str]] = set()
    summaries = []
    for run in runs:
        tags = run.data.tags
        measured = tags.get("sutazai.tasks") or tags.get("sutazai.task", "")
        if task and task not in measured.split(","):
            continue
        key = (tags["sutazai.digest"], tags["sutazai.engine"], tags["sutazai.profile"])
        if key in seen:
            continue
        seen.add(key)
        # From the run's artifact location itself, not download_artifacts(run_id): that
        # resolves a runs:/ URI, which searches MLflow's logged models each time (~100 ms
        # with 1,000 versions, ~190 ms behind a server, most of the leaderboard's time).
        store = get_artifact_repository(run.info.artifact_uri,
                                        tracking_uri=registry.client.tracking_uri)
        with tempfile.TemporaryDirectory() as folder:
            path = store.download_artifacts(SUMMARY, folder)
            summaries.append(BenchmarkSummary.model_validate_json(Path(path).read_text()))
    return summaries


def candidates(summaries: list[BenchmarkSummary], task: str | None = None,
               prices: dict[str, float] | None = None) -> list[Candidate]:
    """One candidate per concurrency level; one per summary for quality-only tasks.

    Quality is the score ``task``'s selection uses (a chat model's summary holds the
    scores of text generation and chat); without ``task``, the summary's primary score.
    ``prices`` (per hour, by hardware profile) give each candidate its cost per 1M output
    tokens at the throughput measured.
    """
    from sutazai.benchmark.capacity import per_million

    pool = []
    for s in summaries:
        price = (prices or {}).get(s.hardware_profile)
        memory = s.peak_rss_bytes / 2**20 if s.peak_rss_bytes else None
        quality = None if s.quality is None else (
            s.quality.score_for(task) if task else s.quality.score)
        common: dict[str, Any] = {
            "model": s.model, "version": s.version, "engine": s.engine, "memory_mib": memory,
            "quality": quality, "run_id": s.run_id, "digest": s.digest,
        }
        if not s.steps:
            pool.append(Candidate(concurrency=1, ttft_p95_ms=None, e2el_p95_ms=None,
                                  tpot_p95_ms=None, output_throughput=0.0, **common))
        pool += [Candidate(concurrency=step.concurrency, ttft_p95_ms=step.ttft_p95_ms,
                           e2el_p95_ms=step.e2el_p95_ms, tpot_p95_ms=step.tpot_p95_ms,
                           output_throughput=step.output_throughput,
                           cost_per_1m_output=None if price is None else per_million(
                               price, step.output_throughput), **common)
                 for step in s.steps if step.completed]
    return pool


def slo_for_task(task: str, slo: SLO) -> SLO:
    """Latency limits apply to load-tested tasks (text generation) only; embeddings and NER
    are scored for quality and memory, so only those limits carry over."""
    if task in GENERATION_TASKS:
        return slo
    return SLO(max_memory_mib=slo.max_memory_mib, min_quality=slo.min_quality)


def select_and_promote(settings: Settings, task: str, profile: str, slo: SLO,
                       weights: Weights) -> tuple[Selection, str]:
    """Select from the latest benchmarks, set champion/challenger, log it; (selection, run)."""
    summaries = latest_summaries(settings, task, profile)
    if not summaries:
        raise NotFoundError(f"no complete benchmark of task {task!r} with profile {profile!r} "
                            "in MLflow yet: run 'sutazai bench run NAME' first")
    pool = candidates(summaries, task, settings.hardware_costs)
    slo = slo_for_task(task, slo)
    decision = select(task, pool, slo, weights)
    repo = open_repository(settings)
    aliases = TaskAliases(open_registry(settings))
    current = aliases.get(task, CHAMPION)
    champion, challenger, note = hold_or_replace(decision, None if current is None else Candidate(
        model=current.model, version=current.repository_version, engine=current.engine,
        concurrency=current.concurrency), settings.promotion_margin)
    if note:
        decision = replace(decision, winner=champion, challenger=challenger,
                           explanation=f"{decision.explanation}\n**Promotion:** {note}\n")
    if champion is not None and (current is None or (
            champion.model, champion.version, champion.engine) != (
            current.model, current.repository_version, current.engine)):
        audit(settings, "promotion", f"task {task}",
              before=f"{current.ref}@{current.engine}" if current else None,
              after=f"{champion.model}:{champion.version}@{champion.engine}",
              details={"by": "selection", "profile": profile, "note": note})
    for alias, chosen in ((CHAMPION, champion), (CHALLENGER, challenger)):
        if chosen is None:
            if alias == CHALLENGER:
                aliases.clear(task, alias)
            continue
        aliases.set(task, alias, repo.get(chosen.model, chosen.version), chosen.engine,
                    chosen.concurrency, decision.explanation)
    return decision, log_selection(settings, decision, pool, profile, slo, weights)


def log_selection(settings: Settings, decision: Selection, pool: list[Candidate],
                  profile: str, slo: SLO, weights: Weights) -> str:
    registry = open_registry(settings)
    client = registry.client
    run_id = registry.start_run(
        f"select {decision.task}",
        tags={"sutazai.step": "selection", "sutazai.task": decision.task,
              "sutazai.champion": decision.winner.label if decision.winner else "",
              "sutazai.challenger": decision.challenger.label if decision.challenger else ""},
        params={"task": decision.task, "profile": profile, **slo.params(),
                **{f"weight.{k}": v for k, v in weights.model_dump().items()}},
        experiment=settings.benchmark_experiment,
    )
    client.log_metric(run_id, "candidates", len(decision.ranked) + len(decision.rejected))
    client.log_metric(run_id, "feasible", len(decision.ranked))
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / "explanation.md").write_text(decision.explanation)
        (out / "selection.json").write_text(json.dumps({
            "task": decision.task,
            "champion": decision.winner.model_dump() if decision.winner else None,
            "challenger": decision.challenger.model_dump() if decision.challenger else None,
            "ranked": [{"label": r.candidate.label, "score": r.score, "on_front": r.on_front,
                        "dominated_by": r.dominated_by} for r in decision.ranked],
            "rejected": decision.rejected,
        }, indent=2))
        feasible = {r.candidate.label for r in decision.ranked}
        front = {r.candidate.label for r in decision.ranked if r.on_front}
        everything = [r.candidate for r in decision.ranked] + sorted(
            (c for c in pool if c.label not in feasible), key=lambda c: c.label)
        if everything:
            plots.pareto_front(
                [(c.label, c.ttft_p95_ms or 0.0, c.output_throughput, c.label in front,
                  c.label in feasible) for c in everything],
                "P95 TTFT (ms, lower is better)", "output tokens/s (higher is better)",
                f"Candidates for {decision.task} (star: champion)", out / "pareto_front.png")
        client.log_artifacts(run_id, str(out))
    client.set_terminated(run_id)
    return run_id
