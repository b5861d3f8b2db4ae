"""The nightly self-improvement, as steps a pipeline runs one by one.

1. :func:`prepare_data`: import new files from the inbox, freeze the store into a snapshot,
   run its Great Expectations gate. A failing gate raises :class:`DataGateError` after the
   report is logged, so nothing downstream trains.
2. :func:`improve_champion`: fine-tune the default task's champion on the gated training
   split, quantise the result back to the champion's format when it serves GGUF (within the
   quality tolerance), then challenge the champion with it on the held-out split
   (:mod:`sutazai.learning.challenge`).
3. :func:`search_architectures` / :func:`register_searched`: an Optuna study of small
   causal LMs on the same data, its best trial registered with lineage.
4. :func:`monitor_champions`: tonight's champion measurements against earlier nights.

Each returns a pydantic model, so KFP components stay one call long.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from sutazai.config import Settings
from sutazai.learning.datastore import DatasetSnapshot
from sutazai.learning.monitoring import WATCHED, Regression
from sutazai.observability.tracing import traced
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository.manifest import Manifest
from sutazai.repository.provenance import is_finetuned, is_quantized
from sutazai.selection.promotion import PromotionDecision
from sutazai.selection.rules import Candidate

GGUF_ENGINES = {"llamacpp"}


class DataOutcome(BaseModel):
    """The gated dataset snapshot tonight's training uses."""

    snapshot: DatasetSnapshot | None = None  # None: nothing to learn from (see note)
    note: str = ""
    imported: int = 0
    train_rows: int = 0
    heldout_rows: int = 0
    gate_run_id: str | None = None
    gate_report: str | None = None


class ImprovementOutcome(BaseModel):
    """What tonight's fine-tuning tried for one task, and what became of it."""

    task: str
    champion_before: str | None = None
    base: str | None = None
    finetuned: str | None = None
    eval_loss_before: float | None = None
    eval_loss_after: float | None = None
    finetune_seconds: float | None = None
    optimized: str | None = None
    optimize_reason: str = ""
    decision: PromotionDecision | None = None
    note: str = ""

    @property
    def champion_after(self) -> str | None:
        return self.decision.champion_after if self.decision else self.champion_before


class SearchOutcome(BaseModel):
    study: str
    trials: int = 0
    pruned: int = 0
    best_value: float | None = None
    best_params: dict[str, object] = Field(default_factory=dict)
    registered: str | None = None
    run_id: str | None = None


@traced("prepare_data")
def prepare_data(settings: Settings) -> DataOutcome:
    """Import the inbox, snapshot the store, gate the snapshot (raises when it fails)."""
    from sutazai.learning.datastore import FeedbackStore, snapshot
    from sutazai.learning.gate import require_pass, run_gate

    if not settings.nightly_learning:
        return DataOutcome(note="self-improvement is off (SUTAZAI_NIGHTLY_LEARNING=false)")
    with FeedbackStore.open(settings) as store:
        imported = sum(result.added for result in store.import_inbox(settings))
        if store.count() == 0:
            return DataOutcome(note=f"no training data yet: put jsonl/csv/parquet files in "
                                    f"{settings.learning_inbox_dir} or turn on request logging")
        snap = snapshot(store, settings)
    report = run_gate(settings, snap)
    require_pass(report)
    train, heldout = split_texts(DataOutcome(snapshot=snap))
    return DataOutcome(snapshot=snap, imported=imported, train_rows=len(train),
                       heldout_rows=len(heldout), gate_run_id=report.run_id,
                       gate_report=report.report_path)


def split_texts(data: DataOutcome) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts) of the snapshot: the same rows every night."""
    assert data.snapshot is not None, "no snapshot: check DataOutcome.snapshot first"
    from sutazai.learning.datastore import load_snapshot, train_heldout_split, training_texts

    train, heldout = train_heldout_split(load_snapshot(data.snapshot))
    return training_texts(train), training_texts(heldout)


def finetune_base(settings: Settings, champion: Manifest) -> Manifest:
    """What to fine-tune: the champion, or the unquantised model a quantised champion came
    from (training on dequantised weights would compound the rounding every night)."""
    from sutazai.repository import open_repository
    from sutazai.repository.manifest import parse_ref

    if is_quantized(champion) and champion.parent:
        name, version = parse_ref(champion.parent)
        return open_repository(settings).get(name, version)
    return champion


@traced("improve_champion")
def improve_champion(settings: Settings, data: DataOutcome, task: str | None = None,
                     progress: Progress = NULL_PROGRESS) -> ImprovementOutcome:
    """Fine-tune the champion, bring it to the champion's engine, and challenge it."""
    from sutazai.learning.challenge import evaluate_and_promote
    from sutazai.learning.finetune import finetune
    from sutazai.optimize.variants import optimize_model
    from sutazai.registry import open_registry
    from sutazai.registry.task_aliases import CHAMPION, TaskAliases
    from sutazai.repository import open_repository

    task = task or settings.default_task
    outcome = ImprovementOutcome(task=task)
    if data.snapshot is None:
        outcome.note = data.note
        return outcome
    choice = TaskAliases(open_registry(settings)).get(task, CHAMPION)
    if choice is None:
        outcome.note = f"task {task!r} has no champion yet: nothing to improve"
        return outcome
    outcome.champion_before = f"{choice.ref}@{choice.engine}"
    champion = open_repository(settings).get(choice.model, choice.repository_version)
    base = finetune_base(settings, champion)
    outcome.base = base.ref
    if is_finetuned(base) and base.revision == data.snapshot.digest:
        outcome.note = (f"{outcome.champion_before} was fine-tuned on this very snapshot "
                        f"({data.snapshot.digest[:12]}); no new data to learn from tonight")
        return outcome
    train, heldout = split_texts(data)
    tuned = finetune(settings, base, train, heldout, dataset_digest=data.snapshot.digest,
                     progress=progress)
    outcome.finetuned = tuned.manifest.ref
    outcome.eval_loss_before, outcome.eval_loss_after = (tuned.eval_loss_before,
                                                         tuned.eval_loss_after)
    outcome.finetune_seconds = tuned.seconds
    candidate, engine = tuned.manifest, None
    if choice.engine in GGUF_ENGINES:
        optimized = optimize_model(settings, tuned.manifest, settings.nightly_quantization,
                                   progress=progress)
        outcome.optimize_reason = optimized.reason
        if not optimized.accepted or optimized.variant is None:
            outcome.note = (f"the {settings.nightly_quantization} variant of "
                            f"{tuned.manifest.ref} was rejected; {outcome.champion_before} "
                            "stays champion")
            return outcome
        candidate, engine = optimized.variant, choice.engine
        outcome.optimized = candidate.ref
    outcome.decision = evaluate_and_promote(settings, task, candidate, engine, heldout,
                                            data.snapshot.digest, progress=progress)
    return outcome


def monitor_champions(settings: Settings, champions: dict[str, tuple[str, dict[str, float]]],
                      runs: dict[str, tuple[str, int | None]] | None = None
                      ) -> list[Regression]:
    """Record each task's champion measurements; the regressions against earlier nights.
    ``runs`` (:func:`champion_runs`) names the benchmark runs whose per-request records the
    latencies are judged on."""
    from sutazai.learning.monitoring import monitor_champion

    found: list[Regression] = []
    for task, (label, metrics) in sorted(champions.items()):
        run, concurrency = (runs or {}).get(task, (None, None))
        found += monitor_champion(settings, task, label, metrics, run, concurrency)
    return found


def study_name(data: DataOutcome) -> str:
    """One study per dataset: a night with the same data finds its study finished."""
    assert data.snapshot is not None
    return f"nightly-{data.snapshot.digest[:12]}"


@traced("search_architectures")
def search_architectures(settings: Settings, data: DataOutcome, worker: int | None = None,
                         progress: Progress = NULL_PROGRESS) -> SearchOutcome | None:
    """Run this worker's share of tonight's study (several workers share its storage);
    None when there is no data to search on."""
    from sutazai.learning.nas import run_study
    from sutazai.learning.search_space import load_space

    if data.snapshot is None:
        return None
    train, heldout = split_texts(data)
    report = run_study(settings, load_space(settings.nas_space), train, heldout,
                       study_name=study_name(data), n_trials=settings.nas_trials,
                       worker=worker, progress=progress)
    return SearchOutcome(study=report.study, trials=report.trials_finished,
                         pruned=report.trials_pruned, best_value=report.best_value,
                         best_params=report.best_params, run_id=report.mlflow_run_id)


@traced("register_searched")
def register_searched(settings: Settings, data: DataOutcome) -> SearchOutcome | None:
    """Register the finished study's best architecture as a model version with lineage;
    None when there was no data to search on."""
    from sutazai.learning.nas import register_best, show_study
    from sutazai.learning.search_space import load_space

    if data.snapshot is None:
        return None
    train, heldout = split_texts(data)
    name = study_name(data)
    manifest = register_best(settings, name, load_space(settings.nas_space), train, heldout)
    report = show_study(settings, name)
    return SearchOutcome(study=name, trials=report.trials_finished, pruned=report.trials_pruned,
                         best_value=report.best_value, best_params=report.best_params,
                         registered=manifest.ref, run_id=report.mlflow_run_id)


def champion_measurements(selections: list[tuple[str, Candidate | None]],
                          improvement: ImprovementOutcome | None
                          ) -> dict[str, tuple[str, dict[str, float]]]:
    """Each task's champion after tonight and its numbers, for :func:`monitor_champions`.

    A champion that was evaluated tonight (the promotion benchmarks it afresh) is judged on
    those numbers; otherwise on its selection benchmark.
    """
    found: dict[str, tuple[str, dict[str, float]]] = {}
    for task, champion in selections:
        if champion is not None:
            # A champion kept from an earlier night but absent from tonight's pool carries no
            # measurements: its throughput reads 0.0, which means "not measured", not "slow".
            metrics = {name: float(value) for name in WATCHED
                       if (value := getattr(champion, name, None)) is not None
                       and not (name == "output_throughput" and not value)}
            if metrics:
                found[task] = (f"{champion.model}:{champion.version}@{champion.engine}",
                               metrics)
    decision = improvement.decision if improvement else None
    if decision is not None and decision.champion_after:
        fresh = next((e for e in decision.evaluations
                      if f"{e.ref}@{e.engine}" == decision.champion_after), None)
        if fresh is not None:
            metrics = {k: v for k, v in fresh.metrics.items() if k in WATCHED}
            if "mc_accuracy" in fresh.metrics:  # the selection's quality for text generation
                metrics["quality"] = fresh.metrics["mc_accuracy"]
            found[decision.task] = (decision.champion_after, metrics)
    return found


def champion_runs(selections: list[tuple[str, Candidate | None]],
                  improvement: ImprovementOutcome | None
                  ) -> dict[str, tuple[str, int | None]]:
    """The benchmark run (and its concurrency level; None: the run's first) behind each
    champion's numbers in :func:`champion_measurements`, for the per-request records."""
    found: dict[str, tuple[str, int | None]] = {
        task: (champion.run_id, champion.concurrency) for task, champion in selections
        if champion is not None and champion.run_id}
    decision = improvement.decision if improvement else None
    if decision is not None and decision.champion_after:
        fresh = next((e for e in decision.evaluations
                      if f"{e.ref}@{e.engine}" == decision.champion_after), None)
        if fresh is not None:
            found.pop(decision.task, None)
            if fresh.run_id:
                found[decision.task] = (fresh.run_id, None)
    return found
