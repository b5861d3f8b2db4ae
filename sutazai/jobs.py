"""The main job (``make run``): the nightly cycle, as far as it has grown.

1. Mirror every catalog model, register it in MLflow, re-verify the repository.
2. Benchmark the latest version of every model on every engine that can serve it here:
   load and quality for text generation, quality for embeddings and spaCy NER (a benchmark
   of the same bytes, engine and profile is reused).
3. Select the champion and challenger of each task under the SLOs (latency limits for text
   generation; memory and quality for embeddings and NER); set the aliases.
4. Serve the text-generation champion briefly and ask it one question, to prove it answers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from sutazai.benchmark.profiles import get_profile
from sutazai.benchmark.runner import BenchmarkSummary, benchmark
from sutazai.config import Settings
from sutazai.errors import SutazAIError
from sutazai.mirror import MirrorOutcome, mirror_catalog, open_repository, verify_repository
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository.manifest import Manifest
from sutazai.repository.store import FileProblem, Repository
from sutazai.selection import Selection
from sutazai.serving.engines import EMBEDDING_TASKS, ENGINES, GENERATION_TASKS, VllmEngine

BENCHMARKED_TASKS = GENERATION_TASKS | EMBEDDING_TASKS | {"ner"}


@dataclass
class ServedAnswer:
    ref: str
    engine: str
    prompt: str
    text: str
    seconds: float


@dataclass
class CycleReport:
    outcomes: list[MirrorOutcome]
    versions: int
    problems: list[FileProblem] = field(default_factory=list)
    benchmarks: list[BenchmarkSummary] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    selections: list[Selection] = field(default_factory=list)
    answer: ServedAnswer | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcomes": [o.as_dict() for o in self.outcomes],
            "versions": self.versions,
            "problems": [p.__dict__ for p in self.problems],
            "benchmarks": [b.model_dump(mode="json", exclude={"quality": {"details"}})
                           for b in self.benchmarks],
            "skipped": self.skipped,
            "failures": self.failures,
            "champions": {d.task: d.winner.model_dump() if d.winner else None
                          for d in self.selections},
            "explanations": {d.task: d.explanation for d in self.selections},
            "answer": self.answer.__dict__ if self.answer else None,
            "seconds": self.seconds,
        }


def engines_available(settings: Settings, manifest: Manifest) -> tuple[list[str], list[str]]:
    """Engines that can serve ``manifest`` on this machine, and why others are skipped."""
    usable: list[str] = []
    skipped: list[str] = []
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


def benchmark_models(settings: Settings, progress: Progress = NULL_PROGRESS
                     ) -> tuple[list[BenchmarkSummary], list[str], list[str]]:
    """(summaries, skipped, failures); one model that fails does not stop the others."""
    from sutazai.selection_store import latest_summaries

    profile = get_profile(settings.benchmark_profile)
    known = {(s.digest, s.engine): s for s in latest_summaries(settings, profile=profile.name)}
    summaries: list[BenchmarkSummary] = []
    skipped: list[str] = []
    failures: list[str] = []
    repo = open_repository(settings)
    failures += derive_for_vllm(settings, repo, progress)
    for name in repo.names():
        manifest = repo.latest(name)
        if manifest is None or not BENCHMARKED_TASKS & set(manifest.tasks):
            continue
        reasons: list[str] = []
        if manifest.format == "spacy":  # NER runs in-process, no serving engine
            usable = ["spacy"]
        else:
            usable, reasons = engines_available(settings, manifest)
        skipped += reasons
        for engine in usable:
            cached = known.get((manifest.digest, engine))
            if cached is None:
                try:
                    cached, _ = benchmark(settings, manifest, engine, profile,
                                          settings.selection_slo, progress=progress)
                except SutazAIError as exc:
                    failures.append(f"benchmark of {manifest.ref} on {engine} failed: {exc}")
                    continue
            summaries.append(cached)
    return summaries, skipped, failures


def derive_for_vllm(settings: Settings, repo: Repository, progress: Progress) -> list[str]:
    """Give vLLM a safetensors version of every GGUF generation model (idempotent)."""
    from sutazai.optimize.derive import HF_SUFFIX, convert_to_safetensors

    if not VllmEngine(settings).installed:
        return []
    failures = []
    for name in repo.names():
        manifest = repo.latest(name)
        if (manifest is None or manifest.format != "gguf" or name.endswith(HF_SUFFIX)
                or not GENERATION_TASKS & set(manifest.tasks)):
            continue
        try:
            convert_to_safetensors(settings, manifest, progress=progress)
        except SutazAIError as exc:
            failures.append(f"conversion of {manifest.ref} for vLLM failed: {exc}")
    return failures


def ask_champion(settings: Settings, prompt: str = "The capital of France is"
                 ) -> ServedAnswer | None:
    from sutazai.serving.service import resolve_target, serving

    target = resolve_target(settings, None)
    with serving(settings, target.manifest, target.engine) as (running, url):
        started = time.perf_counter()
        answer = httpx.post(f"{url}/v1/completions", timeout=120, json={
            "model": running.model, "prompt": prompt, "max_tokens": 12, "temperature": 0})
        answer.raise_for_status()
        return ServedAnswer(target.manifest.ref, running.engine, prompt,
                            answer.json()["choices"][0]["text"],
                            time.perf_counter() - started)


def run_cycle(settings: Settings, progress: Progress = NULL_PROGRESS) -> CycleReport:
    """Mirror, verify, benchmark, select and smoke-serve; see the module docstring."""
    from sutazai.selection_store import select_and_promote

    started = time.monotonic()
    outcomes = mirror_catalog(settings, progress=progress)
    manifests, problems = verify_repository(settings, progress=progress)
    report = CycleReport(outcomes, len(manifests), problems)
    if not problems:
        report.benchmarks, report.skipped, report.failures = benchmark_models(settings,
                                                                              progress)
        for task in sorted({b.task for b in report.benchmarks}):
            decision, _ = select_and_promote(settings, task, settings.benchmark_profile,
                                             settings.selection_slo, settings.selection_weights)
            report.selections.append(decision)
        if any(d.task == settings.default_task and d.winner for d in report.selections):
            report.answer = ask_champion(settings)
    report.seconds = time.monotonic() - started
    return report
