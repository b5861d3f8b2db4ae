"""Challenge the champion: benchmark a candidate and the champion alike, decide, record.

The candidate is registered as the task's ``challenger`` first, so MLflow shows what is
being tried before it is decided. Both versions then run through the serving benchmark
harness (:func:`sutazai.benchmark.runner.benchmark`: real engine, the configured load
profile) with the quality data swapped for the held-out split of tonight's gated dataset.
Those runs go to the learning experiment, not the benchmark one, so the nightly selection
never mixes held-out scores with its standard ones. The decision (:func:`promotion.decide`)
is an MLflow run of its own and tags on the challenger's registry version.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from sutazai.benchmark.profiles import get_profile
from sutazai.benchmark.runner import benchmark
from sutazai.config import Settings
from sutazai.errors import SutazAIError
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import CHALLENGER, CHAMPION, TaskAliases, task_model_name
from sutazai.repository import open_repository
from sutazai.repository.manifest import Manifest
from sutazai.security.audit import audit
from sutazai.selection.promotion import Evaluation, PromotionDecision, decide
from sutazai.selection.rules import slo_misses
from sutazai.selection.store import candidates, slo_for_task
from sutazai.serving.engines import engine_for

SHARED_DATA = ("prompts.txt", "multiple_choice.jsonl", "chat.jsonl")


def heldout_data_dir(settings: Settings, texts: list[str], digest: str) -> Path:
    """A benchmark data folder whose ``heldout.txt`` is the dataset's held-out split.

    Prompts, multiple-choice questions and chat prompts stay the standard ones, so latency,
    MC and chat accuracy remain comparable with the selection's runs.
    """
    if not texts:
        raise SutazAIError("the held-out split is empty: import more data (sutazai data import "
                           "FILE) so that a promotion has something to be judged on")
    folder = settings.home / "learning" / "heldout" / digest[:16]
    folder.mkdir(parents=True, exist_ok=True)
    for name in SHARED_DATA:  # also into folders made before a shared file existed
        if not (folder / name).is_file():
            shutil.copyfile(settings.benchmark_data_dir / name, folder / name)
    if (folder / "heldout.txt").is_file():
        return folder
    lines = [" ".join(text.split()) for text in texts]
    staged = folder / "heldout.txt.tmp"
    staged.write_text("\n".join(line for line in lines if line) + "\n")
    staged.replace(folder / "heldout.txt")
    return folder


def evaluate(settings: Settings, manifest: Manifest, engine: str | None, data_dir: Path,
             task: str, concurrency: int = 1, progress: Progress = NULL_PROGRESS) -> Evaluation:
    """Benchmark ``manifest`` with the held-out data; its metrics and SLO misses."""
    scoped = settings.model_copy(update={"benchmark_data_dir": data_dir,
                                         "benchmark_experiment": settings.learning_experiment})
    profile = get_profile(settings.benchmark_profile)
    summary, _ = benchmark(scoped, manifest, engine, profile, settings.selection_slo,
                           progress=progress)
    pool = candidates([summary], task)
    chosen = next((c for c in pool if c.concurrency == concurrency), pool[0])
    metrics = dict(summary.quality.scores) if summary.quality else {}
    for name in ("ttft_p95_ms", "e2el_p95_ms", "tpot_p95_ms", "memory_mib"):
        value = getattr(chosen, name)
        if value is not None:
            metrics[name] = float(value)
    metrics["output_throughput"] = chosen.output_throughput
    return Evaluation(ref=manifest.ref, engine=summary.engine, metrics=metrics,
                      slo_failures=slo_misses(chosen, slo_for_task(task, settings.selection_slo)),
                      run_id=summary.run_id)


def evaluate_and_promote(settings: Settings, task: str, candidate: Manifest,
                         engine: str | None, heldout_texts: list[str], dataset_digest: str, *,
                         margin: float | None = None, progress: Progress = NULL_PROGRESS
                         ) -> PromotionDecision:
    """Register ``candidate`` as challenger, evaluate it against the champion, decide."""
    margin = settings.promotion_margin if margin is None else margin
    engine_name = engine or engine_for(settings, candidate, None).name
    repo = open_repository(settings)
    aliases = TaskAliases(open_registry(settings))
    challenger_choice = aliases.set(task, CHALLENGER, candidate, engine_name, 1,
                                    f"{candidate.ref} on {engine_name}, trained on dataset "
                                    f"{dataset_digest[:12]}; awaiting its evaluation")
    data_dir = heldout_data_dir(settings, heldout_texts, dataset_digest)
    current = aliases.get(task, CHAMPION)
    champion_eval = None
    if current is not None:
        champion_manifest = repo.get(current.model, current.repository_version)
        champion_eval = evaluate(settings, champion_manifest, current.engine, data_dir, task,
                                 current.concurrency, progress)
    challenger_eval = evaluate(settings, candidate, engine_name, data_dir, task, 1, progress)
    decision = decide(task, champion_eval, challenger_eval, margin)
    if decision.promoted:
        aliases.set(task, CHAMPION, candidate, engine_name, 1, decision.reason)
        aliases.clear(task, CHALLENGER)
    decision.run_id = record_decision(settings, decision, dataset_digest,
                                      challenger_choice.registry_version)
    audit(settings, "promotion", f"task {task}", before=decision.champion_before,
          after=decision.champion_after, result="ok" if decision.promoted else "denied",
          details={"challenger": decision.challenger, "reason": decision.reason,
                   "mlflow_run": decision.run_id})
    return decision


def record_decision(settings: Settings, decision: PromotionDecision, dataset_digest: str,
                    registry_version: str) -> str:
    """An MLflow run per decision, and the verdict on the challenger's registry version."""
    registry = open_registry(settings)
    client = registry.client
    verdict = "promoted" if decision.promoted else "kept"
    run_id = registry.start_run(
        f"promote {decision.task}",
        tags={"sutazai.step": "promotion", "sutazai.task": decision.task,
              "sutazai.decision": verdict, "sutazai.reason": decision.reason[:5000],
              "sutazai.challenger": decision.challenger,
              "sutazai.champion_before": decision.champion_before or "",
              "sutazai.champion_after": decision.champion_after or ""},
        params={"task": decision.task, "margin": decision.margin,
                "dataset_digest": dataset_digest, "challenger": decision.challenger,
                "champion_before": decision.champion_before or "none"},
        experiment=settings.learning_experiment,
    )
    if decision.gain is not None:
        client.log_metric(run_id, "gain", decision.gain)
    roles = ["champion", "challenger"][-len(decision.evaluations):]
    for role, evaluation in zip(roles, decision.evaluations, strict=True):
        for metric, value in evaluation.metrics.items():
            client.log_metric(run_id, f"{role}.{metric}", value)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "decision.json"
        path.write_text(json.dumps(decision.model_dump(mode="json"), indent=2))
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    name = task_model_name(decision.task)
    client.set_model_version_tag(name, registry_version, "sutazai.decision", verdict)
    client.set_model_version_tag(name, registry_version, "sutazai.decision_reason",
                                 decision.reason[:5000])
    return run_id
