"""SutazAI's Kubeflow pipelines: compiled IR, local runs end to end, and submission."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from pipelines.definitions import PIPELINES
from pipelines.runner import COMPILED_DIR, PipelineError, compile_pipeline, run_pipeline
from sutazai.cli.main import app
from sutazai.config import Settings, load_settings
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import TaskAliases
from sutazai.repository import open_repository
from sutazai.repository.manifest import parse_ref
from sutazai.workflows.nightly import load_report
from tests.conftest import gemma_entry
from tests.helpers import spacy_entry
from tests.kfp_endpoint import KfpEndpoint

SEED = Path(__file__).parent.parent / "examples" / "feedback-seed.jsonl"


@pytest.fixture
def local_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   write_catalog: Callable[..., Path]) -> Settings:
    """Embedded defaults with the spaCy model only, vLLM off, the quick load profile, and
    latency SLOs loose enough for a shared 2-core machine (these tests are about the
    orchestration; performance is measured in benchmarks/)."""
    monkeypatch.setenv("SUTAZAI_VLLM_VENV", str(tmp_path / "no-vllm"))
    monkeypatch.setenv("SUTAZAI_BENCHMARK_PROFILE", "smoke")
    monkeypatch.setenv("SUTAZAI_SELECTION_SLO", json.dumps(
        {"ttft_p95_ms": 5000, "e2el_p95_ms": 30000, "max_memory_mib": 8192}))
    write_catalog(spacy_entry())
    return load_settings()


def pipeline_runs(settings: Settings) -> list[Any]:
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.pipeline_experiment)
    assert experiment is not None
    return client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_compiled_pipelines_are_current(name: str, tmp_path: Path) -> None:
    """The committed IR is what the code compiles to; run `python -m pipelines compile`."""
    fresh = compile_pipeline(name, tmp_path / f"{name}.yaml").read_text()
    committed = COMPILED_DIR / f"{name}.yaml"
    assert committed.exists(), f"missing {committed}: run 'python -m pipelines compile'"
    assert fresh == committed.read_text(), (
        f"{committed} is stale: run '.venv/bin/python -m pipelines compile' and commit it")


def test_compiled_nightly_carries_the_cluster_settings() -> None:
    """GPU limits on the steps that serve or train, requests, retries, no caching, bounded
    loops."""
    spec = yaml.safe_load((COMPILED_DIR / "nightly.yaml").read_text())
    executors = spec["deploymentSpec"]["executors"]
    gpu = {name for name, e in executors.items()
           if e["container"].get("resources", {}).get("accelerator")}
    assert gpu == {"exec-benchmark-model", "exec-deploy-champion", "exec-finetune-and-challenge",
                   "exec-search-architectures", "exec-search-architectures-2",
                   "exec-register-architecture", "exec-plan-capacity"}
    assert all(e["container"]["resources"].get("cpuRequest") for e in executors.values())
    assert all(e["container"]["image"] == "sutazai/platform:0.1.0" for e in executors.values())
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    steps = {n: t for n, t in tasks.items()
             if not t["componentRef"]["name"].startswith("comp-for-loop")}
    assert len(steps) == 17
    assert all(t["cachingOptions"] == {} for t in steps.values())  # enableCache false
    assert tasks["pull-model"]["retryPolicy"]["maxRetryCount"] == 2
    loops = {name: t["iteratorPolicy"]["parallelismLimit"] for name, t in tasks.items()
             if "iteratorPolicy" in t}
    assert sorted(loops.values()) == [1, 2]  # benchmarks one at a time, pulls two


@pytest.mark.slow
def test_model_sync_pipeline_runs_locally(local_settings: Settings) -> None:
    run = run_pipeline("model_sync", {"models": []}, local_settings)
    assert run.mode == "local" and run.state == "SUCCEEDED"
    [outcome] = run.output
    assert outcome["name"] == "en-core-web-sm" and outcome["created"] is True
    assert outcome["mlflow_version"] == "1"
    assert Path(run.where, ).is_dir() and run.where.startswith(
        str(local_settings.pipeline_root_dir))
    [recorded] = pipeline_runs(local_settings)
    assert recorded.info.status == "FINISHED"
    assert recorded.data.tags["sutazai.run_id"] == run.run_id
    assert recorded.data.params["arg.models"] == "[]"
    again = run_pipeline("model_sync", {}, local_settings)  # idempotent
    assert again.output[0]["created"] is False and again.output[0]["mlflow_version"] == "1"


@pytest.mark.slow
def test_a_failing_step_fails_the_run_and_says_where(
        local_settings: Settings, write_catalog: Callable[..., Path], tmp_path: Path) -> None:
    write_catalog({**spacy_entry(), "source": f"file:{tmp_path / 'missing'}"})
    with pytest.raises(PipelineError, match=r"pipeline model_sync run model_sync-\S+ failed"
                       ) as failure:
        run_pipeline("model_sync", {}, local_settings)
    assert failure.value.run_id.startswith("model_sync-")
    assert Path(failure.value.where).is_dir()
    [recorded] = pipeline_runs(local_settings)
    assert recorded.info.status == "FAILED" and recorded.data.tags["sutazai.state"] == "FAILED"


def test_unknown_pipeline_is_refused(local_settings: Settings) -> None:
    with pytest.raises(PipelineError, match="unknown pipeline 'nope'; choose one of"):
        run_pipeline("nope", {}, local_settings)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # fine-tuning Gemma 3 270M on 2 CPU cores: minutes
def test_nightly_pipeline_end_to_end(local_settings: Settings, gemma_gguf: Path,
                                     write_catalog: Callable[..., Path],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Real Gemma 3 270M on llama.cpp and spaCy NER: mirror, benchmark, select, then the
    self-improvement on the seed data (gate, LoRA fine-tune, Q8_0, challenge, search,
    monitor), deploy and report."""
    write_catalog(gemma_entry(gemma_gguf), spacy_entry())
    monkeypatch.setenv("SUTAZAI_FINETUNE_STEPS", "3")
    monkeypatch.setenv("SUTAZAI_NAS_TRIALS", "2")
    inbox = local_settings.learning_inbox_dir
    inbox.mkdir(parents=True)
    shutil.copy(SEED, inbox / SEED.name)
    run = run_pipeline("nightly", {"models": [], "profile": "smoke"}, local_settings)
    headline = run.output
    assert headline["failures"] == []
    assert headline["selected"] == {"ner": "en-core-web-sm:1@spacyx1",
                                    "text-generation": "gemma3-270m:1@llamacppx1"}
    assert headline["answer"]["engine"] == "llamacpp" and headline["answer"]["text"].strip()
    assert headline["improvement"], headline

    report = load_report(local_settings)
    assert report.capacity == []  # capacity_target_rps unset: the stage plans nothing
    assert report.data is not None and report.data.snapshot is not None
    assert report.data.snapshot.rows == report.data.imported > 200
    improvement = report.improvement
    assert improvement is not None and improvement.decision is not None, improvement
    assert improvement.champion_before == "gemma3-270m:1@llamacpp"
    repo = open_repository(local_settings)
    tuned = repo.get(*parse_ref(improvement.finetuned or ""))
    assert tuned.parent == "gemma3-270m-hf:1" and tuned.source == "finetune:gemma3-270m-hf:1"
    assert tuned.revision == report.data.snapshot.digest
    quantised = repo.get(*parse_ref(improvement.optimized or ""))
    assert quantised.parent == tuned.ref and quantised.format == "gguf"
    assert len(improvement.decision.evaluations) == 2
    aliases = TaskAliases(open_registry(local_settings))
    champion = aliases.require("text-generation")
    assert f"{champion.ref}@{champion.engine}" == improvement.champion_after
    # the headline (what the DAG logs) names the champion after the promotion, as serving does
    assert headline["champions"] == {"ner": "en-core-web-sm:1@spacyx1",
                                     "text-generation": champion.label}
    assert headline["answer"]["ref"] == champion.ref  # the deployed champion is tonight's
    assert report.search is not None and report.search.trials >= 2
    assert repo.get(*parse_ref(report.search.registered or "")).source.startswith("nas:")
    client = MlflowClient(local_settings.tracking_uri)
    learning = client.get_experiment_by_name(local_settings.learning_experiment)
    assert learning is not None
    steps = {r.data.tags.get("sutazai.step") for r in client.search_runs(
        [learning.experiment_id], max_results=200)}
    assert {"promotion", "monitor"} <= steps, steps
    shown = CliRunner().invoke(app, ["report", "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["champions"]["text-generation"]["label"] == champion.label
    assert {b["engine"] for b in report["benchmarks"]} == {"llamacpp", "spacy"}
    assert any("ollama" in s for s in report["skipped"])
    # benchmark_select on its own reuses the nightly's measurements: no new benchmark run
    client = MlflowClient(local_settings.tracking_uri)
    experiment = client.get_experiment_by_name(local_settings.benchmark_experiment)
    assert experiment is not None
    measured = "tags.`sutazai.step` = 'benchmark'"
    before = len(client.search_runs([experiment.experiment_id], measured))
    selected = run_pipeline("benchmark_select", {"profile": "smoke"}, local_settings)
    assert {s["task"] for s in selected.output} == {"ner", "text-generation"}
    assert len(client.search_runs([experiment.experiment_id], measured)) == before == 2


def test_submission_to_kubeflow(local_settings: Settings, monkeypatch: pytest.MonkeyPatch
                                ) -> None:
    """Against a local stand-in of the Kubeflow Pipelines API (tests/kfp_endpoint.py): no
    Kubeflow API server can run here. It checks what SutazAI sends and how it waits."""
    with KfpEndpoint(polls_until_done=2) as kubeflow:
        monkeypatch.setenv("SUTAZAI_KFP_HOST", kubeflow.url)
        monkeypatch.setenv("SUTAZAI_SECRET_KUBEFLOW_TOKEN", "kfp-test-token")
        settings = load_settings()
        run = run_pipeline("model_sync", {"models": ["en-core-web-sm"]}, settings)
        again = run_pipeline("model_sync", {"models": []}, settings)
    assert run.mode == "kubeflow" and run.state == "SUCCEEDED"
    assert run.where == f"{kubeflow.url}/#/runs/details/{run.run_id}"
    assert list(kubeflow.experiments) == ["sutazai-model_sync"]  # created once, then found
    submitted = kubeflow.runs[run.run_id]
    assert submitted["pipeline_spec"]["pipelineInfo"]["name"] == "sutazai-model-sync"
    assert submitted["runtime_config"]["parameters"] == {"models": ["en-core-web-sm"]}
    assert kubeflow.runs[again.run_id]["polls"] == 2
    assert all(auth == "Bearer kfp-test-token" for _, _, auth in kubeflow.requests)
    assert [r.data.tags["sutazai.mode"] for r in pipeline_runs(settings)] == ["kubeflow"] * 2


def test_failed_kubeflow_run_raises(local_settings: Settings,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Against the local stand-in (no Kubeflow here): a FAILED run is an error."""
    with KfpEndpoint(final_state="FAILED") as kubeflow:
        monkeypatch.setenv("SUTAZAI_KFP_HOST", kubeflow.url)
        with pytest.raises(PipelineError, match="ended FAILED") as failure:
            run_pipeline("model_sync", {}, load_settings())
    assert failure.value.run_id in kubeflow.runs


def test_unreachable_kubeflow_is_a_clear_error(local_settings: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTAZAI_KFP_HOST", "http://127.0.0.1:9")
    with pytest.raises(PipelineError, match="cannot reach Kubeflow Pipelines at "
                                            r"http://127.0.0.1:9.*SUTAZAI_KFP_HOST"):
        run_pipeline("model_sync", {}, load_settings())


def test_compiled_knowledge_ingest_embeds_after_the_upsert() -> None:
    """extract -> upsert -> embed -> statistics: the embedding step waits for the write, and
    the statistics (the pipeline's output) for the embedding."""
    spec = yaml.safe_load((COMPILED_DIR / "knowledge_ingest.yaml").read_text())
    tasks = spec["root"]["dag"]["tasks"]
    depends = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert depends == {"extract-documents": set(), "upsert-documents": {"extract-documents"},
                       "embed-chunks": {"upsert-documents"},
                       "graph-statistics": {"upsert-documents", "embed-chunks"}}
    assert tasks["embed-chunks"]["retryPolicy"]["maxRetryCount"] >= 1
    assert spec["root"]["outputDefinitions"]["parameters"]["Output"]["parameterType"] == "STRUCT"
    assert spec["root"]["dag"]["outputs"]["parameters"]["Output"]["valueFromParameter"][
        "producerSubtask"] == "graph-statistics"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) == {"paths", "relations"}


@pytest.mark.slow
def test_knowledge_ingest_pipeline_runs_locally(local_settings: Settings, tmp_path: Path
                                                ) -> None:
    """Real spaCy extraction into the real embedded FalkorDB, through kfp.local."""
    documents = tmp_path / "documents"
    documents.mkdir()
    (documents / "curie.txt").write_text(
        "Marie Curie was born in Warsaw. Marie Curie founded the Radium Institute in Paris.")
    (documents / "broken.txt").write_bytes(b"\x00\xff" * 64)
    first = run_pipeline("knowledge_ingest", {"paths": [str(documents)]}, local_settings)
    stats = first.output
    assert stats["documents"] == 1 and stats["entities"] >= 3
    assert stats["entities_by_type"]["PERSON"] >= 1
    # no embeddings model in this repository: the embed step ran, and skipped rather than
    # failing the ingest
    [embed_output] = Path(first.where).glob("*/embed-chunks/executor_output.json")
    embedded = json.loads(embed_output.read_text())["parameterValues"]["Output"]
    assert embedded["chunks_embedded"] == 0 and embedded["model"] == ""
    assert "no embeddings model in the repository" in embedded["skipped"]
    again = run_pipeline("knowledge_ingest", {"paths": [str(documents)]}, local_settings)
    assert again.output == stats  # unchanged documents change nothing


def test_every_setting_reaches_a_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step's process rebuilds the caller's settings from the environment it is given:
    every field, not a hand-kept list (a forgotten one fell back to its default)."""

    from pipelines.runner import settings_environment
    from sutazai.benchmark.metrics import SLO
    from sutazai.config import Settings

    caller = Settings(
        home=tmp_path / "home", catalog=tmp_path / "catalog.yaml", kg_batch_size=17,
        kg_entity_types=["PERSON", "ORG"], selection_slo=SLO(ttft_p95_ms=123.0),
        engine_restart_max=2, nightly_learning=False, rate_limit_rps=3.5,
        pushgateway_url="http://127.0.0.1:9/", benchmark_profile="smoke")
    environment = settings_environment(caller)
    for name in [k for k in os.environ if k.startswith("SUTAZAI_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    step = Settings()
    resolved = {"repository_dir", "mlflow_tracking_uri", "documents_dir"}  # sent resolved
    assert step.model_dump(exclude=resolved) == caller.model_dump(exclude=resolved)
    assert (step.repository_root, step.tracking_uri, step.documents_root) == (
        caller.repository_root, caller.tracking_uri, caller.documents_root)
    # settings left at their defaults are not sent: the step's own defaults apply
    assert "SUTAZAI_KG_STORE" not in environment and "SUTAZAI_DEFAULT_TASK" not in environment


def test_the_nightly_cycle_is_declared_once(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """Both executors follow sutazai.workflows.cycle.NIGHTLY: run_cycle has exactly one
    function per stage, and in the compiled Kubeflow pipeline every stage's task depends,
    directly or through others, on the task of each stage it needs."""
    import networkx as nx
    from kfp import compiler, dsl
    from kfp.dsl import pipeline_context

    from pipelines import definitions
    from sutazai.workflows.cycle import NIGHTLY
    from sutazai.workflows.nightly import IN_PROCESS

    names = [stage.name for stage in NIGHTLY]
    assert list(IN_PROCESS) == names
    for index, stage in enumerate(NIGHTLY):
        assert set(stage.needs) <= set(names[:index]), f"{stage.name} needs a later stage"

    built: dict[str, str] = {}
    graph = nx.DiGraph()
    declared = definitions.nightly_stages

    def recording(models: list[str], profile: str) -> dict[str, Any]:
        def record(name: str, build: Any) -> Any:
            def run(tasks: dict[str, Any]) -> Any:
                task = build(tasks)
                built[name] = task.name
                for each in pipeline_context.Pipeline.get_default_pipeline().tasks.values():
                    upstream = set(each._task_spec.dependent_tasks or []) | {
                        channel.task_name for channel in each.channel_inputs
                        if channel.task_name}
                    graph.add_edges_from((each.name, up) for up in upstream)
                return task
            return run
        return {name: record(name, build) for name, build in declared(models, profile).items()}

    monkeypatch.setattr(definitions, "nightly_stages", recording)
    fresh = dsl.pipeline(name="nightly-probe")(definitions.nightly.pipeline_func)
    compiler.Compiler().compile(fresh, str(tmp_path / "nightly.yaml"))
    assert list(built) == names
    for stage in NIGHTLY:
        for need in stage.needs:
            assert nx.has_path(graph, built[stage.name], built[need]), (
                f"the pipeline runs {stage.name} without waiting for {need}")
