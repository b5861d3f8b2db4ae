"""Benchmark one model version on one engine: load, quality, resources, all into MLflow.

The engine is started from the repository and fronted by SutazAI's gateway, exactly as
``sutazai serve`` runs it, so the figures are those of the serving path users get. Every
run is an MLflow run in the ``sutazai-benchmarks`` experiment: params (model version,
digest, engine, every field of the load profile) are enough to reproduce it; metrics
per concurrency level use the level as MLflow's ``step``; artifacts hold the raw
per-request records, ``summary.json`` (what the selection reads) and the plots.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from sutazai.benchmark import plots
from sutazai.benchmark.loadgen import LoadResult, run_load
from sutazai.benchmark.metrics import SLO
from sutazai.benchmark.profiles import LoadProfile
from sutazai.benchmark.prompts import load_corpus, make_prompts
from sutazai.benchmark.quality import (
    ApiScorer,
    LlamaCppScorer,
    QualityReport,
    chat_quality,
    embedding_quality,
    merged,
    ner_quality,
    text_generation_quality,
)
from sutazai.config import Settings
from sutazai.errors import BenchmarkError
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.registry import open_registry
from sutazai.repository import open_repository
from sutazai.repository.manifest import Manifest
from sutazai.serving.engines import EMBEDDING_TASKS, GENERATION_TASKS, single_file
from sutazai.serving.service import serving

SUMMARY = "summary.json"


class StepSummary(BaseModel):
    """One concurrency level, in the units the selection compares."""

    concurrency: int
    completed: int
    failed: int
    ttft_p95_ms: float | None
    tpot_p95_ms: float | None
    e2el_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    request_throughput: float
    output_throughput: float
    goodput: float | None

    @classmethod
    def of(cls, step: LoadResult) -> StepSummary:
        m = step.metrics
        return cls(concurrency=step.concurrency, completed=m.completed, failed=m.failed,
                   ttft_p95_ms=m.ttft.p95_ms, tpot_p95_ms=m.tpot.p95_ms,
                   e2el_p95_ms=m.e2el.p95_ms, ttft_p50_ms=m.ttft.median_ms,
                   ttft_p99_ms=m.ttft.p99_ms, request_throughput=m.request_throughput,
                   output_throughput=m.output_throughput, goodput=m.goodput)


class BenchmarkSummary(BaseModel):
    """What a benchmark run established; stored as ``summary.json`` with the run."""

    model: str
    version: int
    digest: str
    task: str
    engine: str
    profile: LoadProfile
    #: Every task this run measured (a chat model is also a text-generation model); older
    #: summaries, from before chat was a task, have only ``task``.
    tasks: list[str] = []
    steps: list[StepSummary]
    quality: QualityReport | None
    load_seconds: float
    peak_rss_bytes: int | None
    size_bytes: int
    incomplete: bool = False
    abort_reason: str = ""
    run_id: str | None = None
    hardware_profile: str = ""  # what it ran on (setting hardware_profile): prices its tokens

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def measured_tasks(self) -> list[str]:
        return self.tasks or [self.task]


def task_of(manifest: Manifest) -> str:
    return next((t for t in manifest.tasks if t in GENERATION_TASKS | EMBEDDING_TASKS),
                manifest.tasks[0])


def quality_scorer(settings: Settings, manifest: Manifest, url: str, model: str
                   ) -> ApiScorer | LlamaCppScorer:
    """In-process llama.cpp for GGUF weights (fast logprobs); the engine's API otherwise
    (its own URL: ``/tokenize`` is not under ``/v1``, so the gateway does not carry it)."""
    if manifest.format == "gguf":
        folder = open_repository(settings).ensure_snapshot(manifest)
        return LlamaCppScorer(single_file(folder, ".gguf", manifest), settings.engine_threads)
    return ApiScorer(url, model)


def quality_only(settings: Settings, manifest: Manifest, engine: str | None,
                 profile: LoadProfile, task: str) -> BenchmarkSummary:
    """Embeddings (served, scored through /v1/embeddings) and spaCy NER (in-process): quality
    and resources; the load generator drives completions only, so there are no load steps."""
    def summary(engine_name: str, report: QualityReport, load_seconds: float,
                rss: int | None) -> BenchmarkSummary:
        return BenchmarkSummary(
            model=manifest.name, version=manifest.version, digest=manifest.digest, task=task,
            engine=engine_name, profile=profile, steps=[], quality=report,
            load_seconds=load_seconds, peak_rss_bytes=rss, size_bytes=manifest.size)

    if task == "ner" and manifest.format == "spacy":
        folder = open_repository(settings).ensure_snapshot(manifest)
        started = time.monotonic()
        # In a fresh process: its peak RSS is what serving the pipeline takes. RSS growth
        # of this process said little (a heap with room from earlier work grows by KiBs).
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            report, peak = pool.submit(_ner_in_child, folder,
                                       settings.benchmark_data_dir).result()
        return summary("spacy", report, time.monotonic() - started, peak)
    if task in EMBEDDING_TASKS:
        with serving(settings, manifest, engine) as (running, _):
            report = embedding_quality(running.base_url, running.model,
                                       settings.benchmark_data_dir)
            return summary(running.engine, report, running.load_seconds,
                           running.peak_rss_bytes)
    raise BenchmarkError(f"{manifest.ref} is a {task} model ({manifest.format}); SutazAI "
                         "benchmarks text generation, embeddings and spaCy NER")


def _ner_in_child(folder: Path, data_dir: Path) -> tuple[QualityReport, int]:
    import resource

    report = ner_quality(folder, data_dir)
    return report, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def benchmark(settings: Settings, manifest: Manifest, engine: str | None, profile: LoadProfile,
              slo: SLO | None = None, *, quality: bool = True,
              progress: Progress = NULL_PROGRESS) -> tuple[BenchmarkSummary, list[LoadResult]]:
    """Serve ``manifest``, drive it with ``profile``, score it, and log it all to MLflow.

    An engine that dies mid-run still yields a logged, ``incomplete`` summary; the error
    is raised after logging so that nothing measured is lost.
    """
    task = task_of(manifest)
    if task not in GENERATION_TASKS:
        summary = quality_only(settings, manifest, engine, profile, task)
        summary.run_id = log_benchmark(settings, summary, [], slo)
        return summary, []
    words = load_corpus(settings.benchmark_data_dir / "prompts.txt")
    prompts = make_prompts(words, profile.warmup + profile.num_prompts, profile.input_words,
                           profile.seed)
    steps: list[LoadResult] = []
    report: QualityReport | None = None
    with serving(settings, manifest, engine) as (running, url):
        total = profile.num_prompts * len(profile.levels())
        bar = progress.task(f"benchmark {manifest.ref} on {running.engine}", total=total)
        steps = run_load(url, running.model, prompts, profile, slo,
                         on_done=lambda: bar.advance(1))
        bar.close()
        abort = next((s.abort_reason for s in steps if s.incomplete), "")
        abort = running.death() or abort
        chat = "chat" in manifest.tasks and "chat" in running.capabilities
        if quality and not abort:
            scorer = quality_scorer(settings, manifest, running.base_url, running.model)
            try:
                report = text_generation_quality(scorer, settings.benchmark_data_dir)
            finally:
                scorer.close()
            if chat:
                report = merged(report, chat_quality(url, running.model,
                                                     settings.benchmark_data_dir))
        tasks = [t for t in manifest.tasks if t in GENERATION_TASKS and (t != "chat" or chat)]
        summary = BenchmarkSummary(
            model=manifest.name, version=manifest.version, digest=manifest.digest, task=task,
            tasks=tasks, engine=running.engine, profile=profile,
            steps=[StepSummary.of(s) for s in steps],
            quality=report, load_seconds=running.load_seconds,
            peak_rss_bytes=running.peak_rss_bytes, size_bytes=manifest.size,
            incomplete=bool(abort), abort_reason=abort,
        )
    summary.hardware_profile = settings.hardware_profile
    summary.run_id = log_benchmark(settings, summary, steps, slo)
    if summary.incomplete:
        raise BenchmarkError(f"benchmark of {manifest.ref} on {summary.engine} is incomplete: "
                             f"{abort}. Partial results are in MLflow run {summary.run_id}")
    return summary, steps


def log_benchmark(settings: Settings, summary: BenchmarkSummary, steps: list[LoadResult],
                  slo: SLO | None) -> str:
    registry = open_registry(settings)
    client = registry.client
    params = {"model": summary.model, "repository_version": summary.version,
              "digest": summary.digest, "engine": summary.engine, "task": summary.task,
              **summary.profile.params(), **(slo.params() if slo is not None else {})}
    run_id = registry.start_run(
        f"{summary.ref} on {summary.engine} ({summary.profile.name})",
        tags={"sutazai.step": "benchmark", "sutazai.model": summary.model,
              "sutazai.repository_version": str(summary.version),
              "sutazai.digest": summary.digest, "sutazai.task": summary.task,
              "sutazai.tasks": ",".join(summary.measured_tasks),
              "sutazai.engine": summary.engine, "sutazai.profile": summary.profile.name,
              "sutazai.hardware_profile": summary.hardware_profile,
              "sutazai.incomplete": str(summary.incomplete).lower()},
        params=params, experiment=settings.benchmark_experiment,
    )
    summary.run_id = run_id
    now = int(time.time() * 1000)
    from mlflow.entities import Metric

    metrics = [Metric("load_seconds", summary.load_seconds, now, 0),
               Metric("size_bytes", float(summary.size_bytes), now, 0)]
    if summary.peak_rss_bytes is not None:
        metrics.append(Metric("peak_rss_mib", summary.peak_rss_bytes / 2**20, now, 0))
    for step in steps:
        metrics += [Metric(k, v, now, step.concurrency) for k, v in step.metrics.flat().items()]
    if summary.quality is not None:
        metrics += [Metric(f"quality_{k}", v, now, 0) for k, v in summary.quality.scores.items()]
    client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        (out / SUMMARY).write_text(summary.model_dump_json(indent=2))
        with (out / "requests.jsonl").open("w") as records:
            for step in steps:
                for record in step.records:
                    records.write(json.dumps({"concurrency": step.concurrency,
                                              **record.model_dump()}) + "\n")
        title = f"{summary.ref} on {summary.engine}, profile {summary.profile.name}"
        if any(s.records for s in steps):
            plots.latency_cdf(steps, title, out / "latency_cdf.png")
        if len(steps) > 1:
            plots.throughput_vs_concurrency(steps, title, out / "throughput_vs_concurrency.png")
        client.log_artifacts(run_id, str(out))
    client.set_terminated(run_id, "FAILED" if summary.incomplete else "FINISHED")
    return run_id
