"""The nightly cycle's steps, and ``run_cycle``, which runs them in this process.

The stages and their order are declared once, in :data:`sutazai.workflows.cycle.NIGHTLY`;
``run_cycle`` runs one function per stage (:data:`IN_PROCESS`), and the Kubeflow pipeline
``nightly`` calls the same step functions through its components. Each step takes the
settings and plain values and returns pydantic models, so the KFP components that wrap
them stay one call long and their outputs serialise as JSON. Each is a span
``step <name>`` when tracing is on (:mod:`sutazai.observability.tracing`); the cycle, the
monitor, the report and the graph statistics push their metrics to the Pushgateway when
one is configured (:mod:`sutazai.observability.metrics`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, Field

from sutazai.benchmark.capacity import CapacityPlan
from sutazai.benchmark.profiles import get_profile
from sutazai.benchmark.runner import BenchmarkSummary, benchmark
from sutazai.config import Settings
from sutazai.errors import DataGateError, NotFoundError, SutazAIError
from sutazai.learning.monitoring import Regression
from sutazai.observability.metrics import (
    NIGHTLY_PIPELINE,
    champion_changes,
    champion_figures,
    pipeline_run,
    push_champion_metrics,
    push_graph_metrics,
    push_repository_metrics,
)
from sutazai.observability.tracing import span, traced
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.registry.task_aliases import CHALLENGER, CHAMPION, TaskChoice, current_aliases
from sutazai.repository import open_repository
from sutazai.repository.manifest import Manifest, parse_ref
from sutazai.repository.provenance import made_by_learning
from sutazai.repository.store import FileProblem, Repository
from sutazai.selection.rules import Candidate
from sutazai.serving.engines import EMBEDDING_TASKS, ENGINES, GENERATION_TASKS, VllmEngine
from sutazai.workflows import improvement as self_improvement
from sutazai.workflows.cycle import NIGHTLY
from sutazai.workflows.improvement import DataOutcome, ImprovementOutcome, SearchOutcome
from sutazai.workflows.mirror import MirrorOutcome, mirror_catalog, verify_repository

if TYPE_CHECKING:
    from sutazai.knowledge.models import GraphStats

log = logging.getLogger(__name__)
BENCHMARKED_TASKS = GENERATION_TASKS | EMBEDDING_TASKS | {"ner"}
REPORT_NAME = "nightly-latest.json"


class ServedAnswer(BaseModel):
    ref: str
    engine: str
    prompt: str
    text: str
    seconds: float


class BenchmarkItem(BaseModel):
    """One (model version, engine) pair to benchmark."""

    ref: str
    engine: str


class BenchmarkPlan(BaseModel):
    items: list[BenchmarkItem] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)


class BenchmarkOutcome(BaseModel):
    """A benchmark step's result: the summary (fresh or reused), or why it failed."""

    item: BenchmarkItem
    summary: BenchmarkSummary | None = None
    reused: bool = False
    error: str | None = None


class SelectionOutcome(BaseModel):
    """What selection decided for one task, in a form that survives JSON."""

    task: str
    champion: Candidate | None = None
    challenger: Candidate | None = None
    explanation: str = ""
    run_id: str | None = None


class AliasedChoice(BaseModel):
    """A task's champion or challenger as the MLflow aliases name it when the cycle ends
    (after the promotion: serving reads the same alias)."""

    model: str
    version: int
    engine: str
    concurrency: int = 1
    label: str = ""
    digest: str = ""
    registry_version: str = ""

    @classmethod
    def of(cls, choice: TaskChoice) -> AliasedChoice:
        return cls(model=choice.model, version=choice.repository_version, engine=choice.engine,
                   concurrency=choice.concurrency, label=choice.label, digest=choice.digest,
                   registry_version=choice.registry_version)


class CycleReport(BaseModel):
    outcomes: list[MirrorOutcome] = Field(default_factory=list)
    versions: int = 0
    problems: list[FileProblem] = Field(default_factory=list)
    benchmarks: list[BenchmarkSummary] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)
    failures: list[str] = Field(default_factory=list)
    selections: list[SelectionOutcome] = Field(default_factory=list)
    data: DataOutcome | None = None
    improvement: ImprovementOutcome | None = None
    search: SearchOutcome | None = None
    regressions: list[Regression] = Field(default_factory=list)
    capacity: list[CapacityPlan] = Field(default_factory=list)  # for capacity_target_rps
    answer: ServedAnswer | None = None
    #: Each task's champion and challenger as the aliases say at the end of the cycle; the
    #: selection's own picks (before any promotion) stay in ``selections``.
    champions: dict[str, AliasedChoice] = Field(default_factory=dict)
    challengers: dict[str, AliasedChoice] = Field(default_factory=dict)
    seconds: float = 0.0

    def champion_labels(self) -> dict[str, str]:
        """Each task's champion after the cycle (``""``: none), for logs and headlines."""
        tasks = sorted({s.task for s in self.selections} | set(self.champions))
        return {task: self.champions[task].label if task in self.champions else ""
                for task in tasks}

    def selected_labels(self) -> dict[str, str]:
        """What tonight's selection chose per task, before any promotion (``""``: nothing)."""
        return {s.task: s.champion.label if s.champion else "" for s in self.selections}

    def as_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"benchmarks": {"__all__": {
            "quality": {"details"}}}})
        data["champions"] = {task: data["champions"].get(task)
                             for task in self.champion_labels()}
        data["selected"] = {s.task: data["selections"][i]["champion"]
                            for i, s in enumerate(self.selections)}
        data["explanations"] = {s.task: s.explanation for s in self.selections}
        return data


def engines_available(settings: Settings, manifest: Manifest) -> tuple[list[str], list[str]]:
    """Engines that can serve ``manifest`` on this machine, and why others are skipped."""
    usable: list[str] = []
    skipped: list[str] = []
    if manifest.format == "spacy":  # NER runs in-process, no serving engine
        return ["spacy"], skipped
    if not any(cls(settings).can_serve(manifest) for cls in ENGINES.values()):
        return usable, [f"{manifest.ref}: no engine serves the format {manifest.format!r}"]
    for name, engine_class in ENGINES.items():
        engine = engine_class(settings)
        if not engine.can_serve(manifest):
            continue
        if name == "ollama":
            skipped.append(f"{manifest.ref} on ollama: only with an Ollama server (OLLAMA_HOST)")
        elif isinstance(engine, VllmEngine) and not engine.installed:
            skipped.append(f"{manifest.ref} on vllm: run 'make vllm' to set it up")
        else:
            usable.append(name)
    return usable, skipped


@traced("plan_benchmarks")
def plan_benchmarks(settings: Settings) -> BenchmarkPlan:
    """Every (latest version, usable engine) pair of the benchmarked tasks, in name order."""
    plan = BenchmarkPlan()
    repo = open_repository(settings)
    for name in repo.names():
        manifest = repo.latest(name)
        if (manifest is None or not BENCHMARKED_TASKS & set(manifest.tasks)
                or made_by_learning(manifest)):
            continue
        usable, reasons = engines_available(settings, manifest)
        plan.skipped += reasons
        plan.items += [BenchmarkItem(ref=manifest.ref, engine=engine) for engine in usable]
    return plan


@traced("run_benchmark")
def run_benchmark(settings: Settings, item: BenchmarkItem, profile_name: str | None = None,
                  progress: Progress = NULL_PROGRESS) -> BenchmarkOutcome:
    """Benchmark one pair, reusing the latest complete run of the same bytes and engine."""
    with span("benchmark", **{"sutazai.model": item.ref, "sutazai.engine": item.engine}) as s:
        outcome = _run_benchmark(settings, item, profile_name, progress)
        s.set_attribute("sutazai.reused", outcome.reused)
        if outcome.error:
            s.set_attribute("sutazai.error", outcome.error)
        return outcome


def _run_benchmark(settings: Settings, item: BenchmarkItem, profile_name: str | None,
                   progress: Progress) -> BenchmarkOutcome:
    from sutazai.selection.store import latest_summaries

    profile = get_profile(profile_name or settings.benchmark_profile)
    name, version = parse_ref(item.ref)
    try:
        manifest = open_repository(settings).get(name, version)
        known = latest_summaries(settings, profile=profile.name, digest=manifest.digest,
                                 engine=item.engine)
        if known:
            return BenchmarkOutcome(item=item, summary=known[0], reused=True)
        summary, _ = benchmark(settings, manifest, item.engine, profile, settings.selection_slo,
                               progress=progress)
    except SutazAIError as exc:
        return BenchmarkOutcome(item=item, error=f"benchmark of {item.ref} on {item.engine} "
                                                 f"failed: {exc}")
    return BenchmarkOutcome(item=item, summary=summary)


@traced("derive_for_vllm")
def derive_for_vllm(settings: Settings, progress: Progress = NULL_PROGRESS) -> list[str]:
    """Give vLLM a safetensors version of every GGUF generation model (idempotent).

    Returns the failures; a machine without vLLM's venv derives nothing.
    """
    from sutazai.optimize.derive import HF_SUFFIX, convert_to_safetensors

    if not VllmEngine(settings).installed:
        return []
    repo: Repository = open_repository(settings)
    failures = []
    for name in repo.names():
        manifest = repo.latest(name)
        if (manifest is None or manifest.format != "gguf" or name.endswith(HF_SUFFIX)
                or not GENERATION_TASKS & set(manifest.tasks) or made_by_learning(manifest)):
            continue
        try:
            convert_to_safetensors(settings, manifest, progress=progress)
        except SutazAIError as exc:
            failures.append(f"conversion of {manifest.ref} for vLLM failed: {exc}")
    return failures


@traced("select_tasks")
def select_tasks(settings: Settings, tasks: list[str], profile_name: str | None = None
                 ) -> list[SelectionOutcome]:
    """Select and set the aliases of every task in ``tasks`` (sorted, each once)."""
    from sutazai.selection.store import select_and_promote

    profile = profile_name or settings.benchmark_profile
    outcomes = []
    for task in sorted(set(tasks)):
        decision, run_id = select_and_promote(settings, task, profile, settings.selection_slo,
                                              settings.selection_weights)
        outcomes.append(SelectionOutcome(task=task, champion=decision.winner,
                                         challenger=decision.challenger,
                                         explanation=decision.explanation, run_id=run_id))
    return outcomes


@traced("ask_champion")
def ask_champion(settings: Settings, prompt: str = "The capital of France is"
                 ) -> ServedAnswer | None:
    """Serve the default task's champion, ask it one question; None when it has none."""
    from sutazai.serving.service import resolve_target, serving

    try:
        target = resolve_target(settings, None)
    except NotFoundError:
        return None
    with serving(settings, target.manifest, target.engine) as (running, url):
        started = time.perf_counter()
        answer = httpx.post(f"{url}/v1/completions", timeout=120, json={
            "model": running.model, "prompt": prompt, "max_tokens": 12, "temperature": 0})
        answer.raise_for_status()
        return ServedAnswer(ref=target.manifest.ref, engine=running.engine, prompt=prompt,
                            text=answer.json()["choices"][0]["text"],
                            seconds=time.perf_counter() - started)


@traced("deploy_champion")
def deploy_champion(settings: Settings, selections: list[SelectionOutcome]
                    ) -> ServedAnswer | None:
    """Prove tonight's champion of the default task serves (None when it has none)."""
    if not any(s.task == settings.default_task and s.champion for s in selections):
        return None
    return ask_champion(settings)


def assemble_report(outcomes: list[MirrorOutcome], benchmarks: list[BenchmarkOutcome],
                    plan: BenchmarkPlan, selections: list[SelectionOutcome],
                    answer: ServedAnswer | None, *, versions: int,
                    problems: list[FileProblem] | None = None,
                    failures: list[str] | None = None, seconds: float = 0.0,
                    data: DataOutcome | None = None,
                    improvement: ImprovementOutcome | None = None,
                    search: SearchOutcome | None = None,
                    regressions: list[Regression] | None = None,
                    capacity: list[CapacityPlan] | None = None,
                    settings: Settings | None = None) -> CycleReport:
    """The cycle's report; with ``settings``, its champions and challengers are read from
    the aliases now, at the end of the cycle (what serving serves), not from the selection."""
    report = CycleReport(
        outcomes=outcomes, versions=versions, problems=problems or [],
        benchmarks=[b.summary for b in benchmarks if b.summary is not None],
        skipped=plan.skipped,
        failures=(failures or []) + [b.error for b in benchmarks if b.error],
        selections=selections, answer=answer, seconds=seconds, data=data,
        improvement=improvement, search=search, regressions=regressions or [],
        capacity=capacity or [],
    )
    if settings is not None:
        book = current_aliases(settings)
        report.champions = {task: AliasedChoice.of(c) for task, c in book.choices(CHAMPION).items()}
        report.challengers = {task: AliasedChoice.of(c)
                              for task, c in book.choices(CHALLENGER).items()}
    return report


@traced("save_report")
def save_report(settings: Settings, report: CycleReport) -> Path:
    """Keep the cycle's report under ``<home>/reports`` (one per run, and the latest).

    The report ends the nightly cycle (both ``run_cycle`` and the pipeline's last step),
    so this is where the repository's size and versions are pushed.
    """
    push_repository_metrics(settings)
    folder = settings.home / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report.model_dump(mode="json"), indent=2)
    stamped = folder / f"nightly-{time.strftime('%Y%m%dT%H%M%S')}.json"
    stamped.write_text(text)
    latest = folder / REPORT_NAME
    tmp = latest.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(latest)
    return stamped


def load_report(settings: Settings) -> CycleReport:
    path = settings.home / "reports" / REPORT_NAME
    if not path.is_file():
        raise NotFoundError(f"no nightly report at {path} yet: run 'make run' (or the "
                            "sutazai_nightly DAG) first")
    return CycleReport.model_validate_json(path.read_text())


@traced("monitor_champions")
def monitor_champions(settings: Settings, selections: list[SelectionOutcome],
                      improvement: ImprovementOutcome | None) -> list[Regression]:
    """Compare each champion with earlier nights (MLflow) and push, per task, the
    regression flag and change of every watched metric and the champion itself."""
    chosen = [(s.task, s.champion) for s in selections]
    champions = self_improvement.champion_measurements(chosen, improvement)
    changes: dict[str, dict[str, float]] = {}
    if settings.pushgateway_url:  # the history is read before tonight's run joins it
        for task, (label, tonight) in champions.items():
            try:
                changes[task] = champion_changes(settings, task, label, tonight)
            except Exception as exc:  # metrics must not stop the monitor
                log.warning("could not read the earlier nights of %s for metrics: %s", task, exc)
    regressions = self_improvement.monitor_champions(
        settings, champions, self_improvement.champion_runs(chosen, improvement))
    for task, (label, tonight) in champions.items():
        push_champion_metrics(settings, champion_figures(task, label, tonight,
                                                         changes.get(task, {}), regressions))
    return regressions


@traced("plan_capacity")
def plan_capacity(settings: Settings, selections: list[SelectionOutcome],
                  progress: Progress = NULL_PROGRESS) -> list[CapacityPlan]:
    """Each generation champion's capacity per replica and the replicas
    ``capacity_target_rps`` needs; nothing when the setting is unset. A task that cannot be
    planned is logged and left out: capacity must not stop the cycle."""
    from sutazai.workflows.capacity import capacity_plans

    rate = settings.capacity_target_rps
    if rate is None:
        return []
    plans: list[CapacityPlan] = []
    for selection in selections:
        if selection.task not in GENERATION_TASKS or selection.champion is None:
            continue
        try:
            plans += capacity_plans(settings, selection.task, rate, progress=progress,
                                    champion_only=True)
        except SutazAIError as exc:
            log.warning("capacity of the %s champion not planned: %s", selection.task, exc)
    return plans


@traced("graph_statistics")
def graph_statistics(settings: Settings, ingested: dict[str, Any] | None = None
                     ) -> GraphStats:
    """The graph's counts after an ingest, pushed with what the ingest wrote (``ingested``:
    the upsert step's :class:`~sutazai.knowledge.models.IngestReport` as a dict)."""
    from sutazai.knowledge.models import IngestReport
    from sutazai.knowledge.service import graph_stats

    stats = graph_stats(settings)
    report = IngestReport.model_validate(ingested) if ingested else None
    push_graph_metrics(settings, stats, report)
    return stats


def run_cycle(settings: Settings, progress: Progress = NULL_PROGRESS) -> CycleReport:
    """Mirror, verify, benchmark, select and smoke-serve, in this process.

    One run of the nightly pipeline for the metrics (``sutazai-nightly``): it fails when it
    raises or when the repository fails verification.
    """
    with pipeline_run(settings, NIGHTLY_PIPELINE, **{"sutazai.mode": "in-process"}) as run:
        report = _cycle(settings, progress)
        if report.problems:
            run.fail(f"{len(report.problems)} repository files failed verification")
        return report


@dataclass
class _CycleState:
    """What the stages of one in-process cycle hand each other."""

    started: float
    outcomes: list[MirrorOutcome] = field(default_factory=list)
    versions: int = 0
    problems: list[FileProblem] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    plan: BenchmarkPlan = field(default_factory=BenchmarkPlan)
    benchmarks: list[BenchmarkOutcome] = field(default_factory=list)
    selections: list[SelectionOutcome] = field(default_factory=list)
    data: DataOutcome | None = None
    improvement: ImprovementOutcome | None = None
    search: SearchOutcome | None = None
    answer: ServedAnswer | None = None
    capacity: list[CapacityPlan] = field(default_factory=list)
    regressions: list[Regression] = field(default_factory=list)
    report: CycleReport | None = None


Stage = Callable[[Settings, _CycleState, Progress], None]


def _mirror(settings: Settings, state: _CycleState, progress: Progress) -> None:
    state.outcomes = mirror_catalog(settings, progress=progress)  # each traced as a step
    manifests, state.problems = verify_repository(settings, progress=progress)
    state.versions = len(manifests)


def _convert(settings: Settings, state: _CycleState, progress: Progress) -> None:
    state.failures += derive_for_vllm(settings, progress)


def _benchmark(settings: Settings, state: _CycleState, progress: Progress) -> None:
    state.plan = plan_benchmarks(settings)
    state.benchmarks = [run_benchmark(settings, item, progress=progress)
                        for item in state.plan.items]


def _select(settings: Settings, state: _CycleState, progress: Progress) -> None:
    state.selections = select_tasks(settings, [task for b in state.benchmarks if b.summary
                                               for task in b.summary.measured_tasks])


def _gate(settings: Settings, state: _CycleState, progress: Progress) -> None:
    try:
        state.data = self_improvement.prepare_data(settings)
    except DataGateError as exc:
        state.failures.append(f"the data gate stopped training: {exc}")
    except SutazAIError as exc:
        state.failures.append(f"self-improvement failed: {exc}")


def _improve(settings: Settings, state: _CycleState, progress: Progress) -> None:
    if state.data is None:  # the gate failed: nothing trains
        return
    try:
        state.improvement = self_improvement.improve_champion(settings, state.data,
                                                              progress=progress)
    except SutazAIError as exc:
        state.failures.append(f"self-improvement failed: {exc}")


def _search(settings: Settings, state: _CycleState, progress: Progress) -> None:
    if state.data is None:
        return
    try:
        self_improvement.search_architectures(settings, state.data, progress=progress)
        state.search = self_improvement.register_searched(settings, state.data)
    except SutazAIError as exc:
        state.failures.append(f"architecture search failed: {exc}")


def _deploy(settings: Settings, state: _CycleState, progress: Progress) -> None:
    state.answer = deploy_champion(settings, state.selections)


def _capacity(settings: Settings, state: _CycleState, progress: Progress) -> None:
    state.capacity = plan_capacity(settings, state.selections, progress)


def _monitor(settings: Settings, state: _CycleState, progress: Progress) -> None:
    state.regressions = monitor_champions(settings, state.selections, state.improvement)


def _report(settings: Settings, state: _CycleState, progress: Progress) -> None:
    state.report = assemble_report(
        state.outcomes, state.benchmarks, state.plan, state.selections, state.answer,
        versions=state.versions, failures=state.failures,
        seconds=time.monotonic() - state.started, data=state.data,
        improvement=state.improvement, search=state.search, regressions=state.regressions,
        capacity=state.capacity, settings=settings)
    save_report(settings, state.report)


#: One function per stage of :data:`sutazai.workflows.cycle.NIGHTLY` (a test holds them equal).
IN_PROCESS: dict[str, Stage] = {
    "mirror": _mirror, "convert": _convert, "benchmark": _benchmark, "select": _select,
    "gate": _gate, "improve": _improve, "search": _search, "deploy": _deploy,
    "capacity": _capacity, "monitor": _monitor, "report": _report,
}


def _cycle(settings: Settings, progress: Progress) -> CycleReport:
    state = _CycleState(started=time.monotonic())
    for stage in NIGHTLY:
        IN_PROCESS[stage.name](settings, state, progress)
        if state.problems:  # a repository that fails verification stops the cycle
            return CycleReport(outcomes=state.outcomes, versions=state.versions,
                               problems=state.problems,
                               seconds=time.monotonic() - state.started)
    assert state.report is not None, "the last stage reports"
    return state.report
