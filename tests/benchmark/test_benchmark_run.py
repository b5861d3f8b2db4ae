"""The benchmark harness end to end on the real llama.cpp engine with Gemma 3 270M, logged to
MLflow (SQLite), then the selection, the task aliases, rollback, and `sutazai serve` of the
champion answering the openai client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from sutazai.benchmark.metrics import SLO
from sutazai.benchmark.profiles import LoadProfile
from sutazai.benchmark.runner import benchmark
from sutazai.config import Settings
from sutazai.errors import BenchmarkError, NotFoundError
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import TaskAliases
from sutazai.repository import open_repository
from sutazai.selection.rules import Weights
from sutazai.selection.store import latest_summaries, select_and_promote
from sutazai.serving.process import free_port
from sutazai.serving.service import resolve_target
from sutazai.workflows.mirror import mirror_catalog
from tests.conftest import gemma_entry

pytestmark = pytest.mark.slow

QUICK = LoadProfile(name="quick", mode="concurrency", concurrency=2, num_prompts=6,
                    output_tokens=8, warmup=1)


def publish(settings: Settings, gguf: Path, *names: str) -> None:
    settings.catalog.write_text(yaml.safe_dump({"models": [gemma_entry(gguf, n) for n in names]}))
    assert all(o.error is None for o in mirror_catalog(settings))


def test_benchmark_logs_a_reproducible_run_and_selection_sets_the_champion(
    settings: Settings, gemma_gguf: Path, tmp_path: Path
) -> None:
    publish(settings, gemma_gguf, "gemma3-270m")
    manifest = open_repository(settings).get("gemma3-270m")
    summary, steps = benchmark(settings, manifest, None, QUICK, SLO(ttft_p95_ms=10_000))

    [step] = steps
    assert step.metrics.completed == 6 and step.metrics.failed == 0
    assert step.metrics.max_concurrent_requests <= 2
    assert all(r.output_tokens >= 1 and r.ttft is not None for r in step.records)
    assert summary.quality is not None and 0 <= summary.quality.score <= 1
    assert summary.quality.scores["perplexity"] > 1
    assert summary.peak_rss_bytes and summary.load_seconds > 0
    assert summary.size_bytes == manifest.size and not summary.incomplete

    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(summary.run_id)
    params = run.data.params
    assert params["engine"] == "llamacpp" and params["digest"] == manifest.digest
    assert LoadProfile.model_validate({k.removeprefix("profile."): _parse(v)
                                       for k, v in params.items()
                                       if k.startswith("profile.")}) == QUICK
    assert run.data.metrics["completed"] == 6 and "ttft_p95_ms" in run.data.metrics
    assert run.data.metrics["quality_mc_accuracy"] == summary.quality.score
    artifacts = {a.path for a in client.list_artifacts(summary.run_id)}
    assert {"summary.json", "requests.jsonl", "latency_cdf.png"} <= artifacts

    [found] = latest_summaries(settings, "text-generation", "quick")
    assert found.run_id == summary.run_id

    decision, selection_run = select_and_promote(settings, "text-generation", "quick",
                                                 SLO(ttft_p95_ms=10_000), Weights())
    assert decision.winner is not None and decision.winner.model == "gemma3-270m"
    assert decision.winner.engine == "llamacpp" and decision.winner.concurrency == 2
    assert "explanation.md" in {a.path for a in client.list_artifacts(selection_run)}
    target = resolve_target(settings, None)
    assert (target.manifest.ref, target.engine, target.concurrency) == \
        ("gemma3-270m:1", "llamacpp", 2)

    # An SLO nobody meets: no champion is chosen, and the old one stays.
    impossible, _ = select_and_promote(settings, "text-generation", "quick",
                                       SLO(ttft_p95_ms=0.001), Weights())
    assert impossible.winner is None
    assert resolve_target(settings, None).manifest.ref == "gemma3-270m:1"


def _parse(value: str) -> object:
    if value in ("True", "False"):
        return value == "True"
    if value.startswith("("):
        return tuple(int(v) for v in value.strip("()").split(",") if v.strip())
    return None if value == "None" else value


def test_rollback_restores_the_previous_champion(settings: Settings, gemma_gguf: Path) -> None:
    """Two repository models (same weights, two names) take turns as champion."""
    publish(settings, gemma_gguf, "gemma-a", "gemma-b")
    repo = open_repository(settings)
    aliases = TaskAliases(open_registry(settings))
    with pytest.raises(NotFoundError, match="no previous champion"):
        aliases.rollback("text-generation")
    aliases.set("text-generation", "champion", repo.get("gemma-a"), "llamacpp", 1)
    assert aliases.set("text-generation", "champion", repo.get("gemma-a"), "llamacpp", 1) \
        .registry_version == "1"  # idempotent
    aliases.set("text-generation", "champion", repo.get("gemma-b"), "llamacpp", 1)
    assert aliases.require("text-generation").model == "gemma-b"

    restored, demoted = aliases.rollback("text-generation")
    assert (restored.model, demoted.model) == ("gemma-a", "gemma-b")
    assert resolve_target(settings, None).manifest.name == "gemma-a"
    done = subprocess.run([sys.executable, "-m", "sutazai.cli.main", "models", "rollback",
                           "text-generation"], capture_output=True, text=True,
                          env={**os.environ, "SUTAZAI_HOME": str(settings.home),
                               "SUTAZAI_CATALOG": str(settings.catalog)})
    assert done.returncode == 0, done.stderr
    assert "champion is gemma-b:1 on llamacpp again (was gemma-a:1" in done.stdout
    assert aliases.require("text-generation").model == "gemma-b"


class KillEngineAfter:
    """A progress sink that SIGKILLs the engine after ``after`` finished requests."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.done = 0

    def task(self, description: str, total: int | None = None) -> KillEngineAfter:
        return self

    def advance(self, amount: int) -> None:
        self.done += amount
        if self.done == self.after:
            for child in psutil.Process().children(recursive=True):
                if "llama_cpp.server" in " ".join(child.cmdline()):
                    os.killpg(child.pid, signal.SIGKILL)

    def reset(self, completed: int = 0, total: int | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def test_an_engine_dying_mid_benchmark_keeps_the_partial_run(
    settings: Settings, gemma_gguf: Path
) -> None:
    publish(settings, gemma_gguf, "gemma3-270m")
    manifest = open_repository(settings).get("gemma3-270m")
    profile = LoadProfile(name="long", mode="sequential", num_prompts=40, output_tokens=4,
                          warmup=0)
    with pytest.raises(BenchmarkError,
                       match=r"(?s)incomplete.*Partial results are in MLflow run"):
        benchmark(settings, manifest, None, profile, progress=KillEngineAfter(3))
    client = MlflowClient(settings.tracking_uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name(settings.benchmark_experiment).experiment_id])
    assert run.data.tags["sutazai.incomplete"] == "true" and run.info.status == "FAILED"
    assert run.data.metrics["completed"] == 3 and run.data.metrics["failed"] >= 1
    assert latest_summaries(settings) == []  # incomplete runs are never selected from


def test_sutazai_serve_serves_the_champion_until_sigterm(
    settings: Settings, gemma_gguf: Path, tmp_path: Path
) -> None:
    publish(settings, gemma_gguf, "gemma3-270m")
    TaskAliases(open_registry(settings)).set(
        "text-generation", "champion", open_repository(settings).get("gemma3-270m"),
        "llamacpp", 1)
    port = free_port()
    env = {**os.environ, "SUTAZAI_HOME": str(settings.home),
           "SUTAZAI_CATALOG": str(settings.catalog)}
    created = subprocess.run([sys.executable, "-m", "sutazai.cli.main", "keys", "create",
                              "test-client", "--role", "operator", "--json"], env=env,
                             capture_output=True, text=True, check=True)
    key = json.loads(created.stdout)["key"]
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "sutazai.cli.main", "serve", "--port",
                               str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key)
        answer = client.completions.create(model="gemma3-270m", prompt="Hello", max_tokens=4)
        assert answer.choices[0].text
        stranger = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-guess")
        with pytest.raises(openai.AuthenticationError):
            stranger.completions.create(model="gemma3-270m", prompt="Hello", max_tokens=4)
        engines = [c for c in psutil.Process(server.pid).children(recursive=True)
                   if "llama_cpp.server" in " ".join(c.cmdline())]
        assert len(engines) == 1
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    # uvicorn re-raises SIGTERM once it has shut down; the CLI turns it into exit 128 + 15
    assert server.returncode == 128 + signal.SIGTERM, (tmp_path / "serve.log").read_text()
    assert "serving gemma3-270m:1 on llamacpp" in (tmp_path / "serve.log").read_text()
    assert not engines[0].is_running()  # the engine went with it


def test_a_terminated_command_takes_its_engine_with_it(settings: Settings, gemma_gguf: Path
                                                       ) -> None:
    """`kill <pid>` (SIGTERM) of `sutazai bench run` mid-benchmark stops the engine too."""
    publish(settings, gemma_gguf, "gemma3-270m")
    env = {**os.environ, "SUTAZAI_HOME": str(settings.home),
           "SUTAZAI_CATALOG": str(settings.catalog)}
    command = subprocess.Popen([sys.executable, "-m", "sutazai.cli.main", "bench", "run",
                                "gemma3-270m", "--profile", "throughput", "--no-quality"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    engines: list[psutil.Process] = []
    deadline = time.monotonic() + 120
    while not engines and time.monotonic() < deadline:
        engines = [c for c in psutil.Process(command.pid).children(recursive=True)
                   if "llama_cpp.server" in " ".join(c.cmdline())]
        time.sleep(0.2)
    assert engines, "the engine never started"
    time.sleep(2)  # mid-benchmark
    command.send_signal(signal.SIGTERM)
    assert command.wait(30) == 128 + signal.SIGTERM
    psutil.wait_procs(engines, timeout=15)
    assert not any(e.is_running() and e.status() != psutil.STATUS_ZOMBIE for e in engines)
