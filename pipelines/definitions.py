"""SutazAI's Kubeflow pipelines.

- ``model_sync``: list the catalog -> for each model (2 at a time): pull -> verify -> register.
- ``benchmark_select``: derive engine formats -> plan -> benchmark each (model, engine) pair,
  one at a time -> select the champion and challenger of each task.
- ``nightly``: the stages declared in ``sutazai.workflows.cycle.NIGHTLY``, in order, one
  group of tasks each (the mirror and benchmark groups as above; the architecture search is
  shared by two worker steps).
- ``backup_drill``: back up the home, verify, restore into a scratch home, serve its
  champion, query its graph, compare counts with the source (``sutazai.backup.drill``).
- ``knowledge_ingest``: extract entities and relations from documents -> upsert them into
  the graph -> embed the new chunks with the embeddings champion (skipped, not failed,
  when the repository has none) -> statistics.

Resource requests and GPU limits only matter on a Kubeflow cluster; ``kfp.local`` ignores
them. Step retries are quick (5 s, then 10 s...) for blips such as a pod evicted or a
registry hiccup; Airflow retries the whole run minutes later for real outages. Caching is
off for every step: each one reads state that changes outside its inputs (the sources, the
repository, MLflow), so a cached result would be stale. Benchmarks run one at a time so
that two never share (and distort) the same node.
"""

from collections.abc import Callable

from kfp import dsl
from kfp.dsl import PipelineTask

from components.backup import backup_drill as drill_step
from components.benchmark import (
    benchmark_model,
    convert_models,
    plan_benchmarks,
    plan_capacity,
    select_champions,
)
from components.knowledge import (
    embed_chunks,
    extract_documents,
    graph_statistics,
    upsert_documents,
)
from components.learning import (
    finetune_and_challenge,
    monitor_champions,
    register_architecture,
    search_architectures,
    validate_training_data,
)
from components.model_sync import list_catalog, pull_model, register_model, verify_model
from components.report import summarize_cycle
from components.serving import deploy_champion
from sutazai.workflows.cycle import NIGHTLY

GPU = "nvidia.com/gpu"


def on_cluster(task: PipelineTask, cpu: str, memory: str, *, gpu: bool = False,
               retries: int = 0) -> PipelineTask:
    """Requests, an optional GPU, retries with exponential backoff; no caching."""
    task.set_cpu_request(cpu).set_memory_request(memory).set_caching_options(False)
    if gpu:
        task.set_accelerator_type(GPU).set_accelerator_limit(1)
    if retries:
        task.set_retry(num_retries=retries, backoff_duration="5s", backoff_factor=2,
                       backoff_max_duration="60s")
    task.set_display_name(task.name.replace("-", " "))
    return task


def mirror_steps(models: list[str]) -> PipelineTask:
    """Add the mirror steps; returns the register task (collect its outputs after it)."""
    names = on_cluster(list_catalog(names=models), "0.5", "512M", retries=2)
    with dsl.ParallelFor(names.output, parallelism=2) as name:
        pulled = on_cluster(pull_model(name=name), "1", "2G", retries=2)
        verified = on_cluster(verify_model(model=pulled.outputs["model"]), "1", "1G")
        registered = on_cluster(register_model(ref=verified.output,
                                               pulled=pulled.outputs["Output"]),
                                "0.5", "1G", retries=3)
    return registered


Tasks = dict[str, PipelineTask]


def convert_stage(tasks: Tasks) -> PipelineTask:
    """Derive engine formats (after the mirror, when the pipeline mirrors)."""
    synced = dsl.Collected(tasks["mirror"].output) if "mirror" in tasks else []
    return on_cluster(convert_models(synced=synced), "2", "8G", retries=1)


def benchmark_stage(tasks: Tasks, profile: str) -> PipelineTask:
    """Plan -> benchmark each pair, one at a time; returns the loop's task."""
    plan = on_cluster(plan_benchmarks(conversion_failures=tasks["convert"].output), "0.5", "1G")
    with dsl.ParallelFor(plan.output, parallelism=1) as item:
        measured = on_cluster(
            benchmark_model(ref=item.ref, engine=item.engine, profile=profile),
            "4", "16G", gpu=True, retries=1)
    return measured


def select_stage(tasks: Tasks, profile: str) -> PipelineTask:
    """A loop's outputs are collected once per consumer: KFP 2.17 fails to compile one
    ``dsl.Collected`` read by two tasks (the report collects the benchmarks again)."""
    return on_cluster(select_champions(
        benchmarks=dsl.Collected(tasks["benchmark"].outputs["Output"]), profile=profile),
        "1", "2G", retries=2)


@dsl.pipeline(name="sutazai-model-sync",
              description="Mirror the catalog into the offline repository; register in MLflow.")
def model_sync(models: list[str] = []) -> list[dict]:  # noqa: B006 (KFP needs a literal)
    return dsl.Collected(mirror_steps(models).output)


@dsl.pipeline(name="sutazai-benchmark-select",
              description="Benchmark every model version on its engines; select per task.")
def benchmark_select(profile: str = "") -> list[dict]:
    tasks: Tasks = {}
    tasks["convert"] = convert_stage(tasks)
    tasks["benchmark"] = benchmark_stage(tasks, profile)
    return select_stage(tasks, profile).outputs["Output"]


NAS_WORKERS = 2


def search_stage(tasks: Tasks) -> PipelineTask:
    """NAS_WORKERS search workers, then one registration after them; returns the latter.

    The workers are separate tasks, not a ParallelFor over constants: kfp.local 2.17 binds a
    constant loop's item to the wrong parameter.
    """
    gated = tasks["gate"].outputs["Output"]
    searches = [on_cluster(search_architectures(data=gated, worker=worker), "4", "8G",
                           gpu=True, retries=1) for worker in range(NAS_WORKERS)]
    return on_cluster(register_architecture(data=gated), "4", "8G", gpu=True).after(*searches)


def report_stage(tasks: Tasks) -> PipelineTask:
    return on_cluster(summarize_cycle(
        mirrored=dsl.Collected(tasks["mirror"].output),
        conversion_failures=tasks["convert"].output,
        benchmarks=dsl.Collected(tasks["benchmark"].outputs["Output"]),
        selections=tasks["select"].outputs["Output"], answer=tasks["deploy"].output,
        data=tasks["gate"].outputs["Output"], improvement=tasks["improve"].outputs["Output"],
        search=tasks["search"].output, regressions=tasks["monitor"].output,
        capacity=tasks["capacity"].output), "0.5", "1G")


def nightly_stages(models: list[str], profile: str) -> dict[str, Callable[[Tasks], PipelineTask]]:
    """How each stage of :data:`sutazai.workflows.cycle.NIGHTLY` becomes tasks; each builder
    reads the tasks of the stages it needs (a test checks the compiled edges)."""
    return {
        "mirror": lambda tasks: mirror_steps(models),
        "convert": convert_stage,
        "benchmark": lambda tasks: benchmark_stage(tasks, profile),
        "select": lambda tasks: select_stage(tasks, profile),
        "gate": lambda tasks: on_cluster(validate_training_data(
            selections=tasks["select"].outputs["Output"]), "1", "2G"),
        "improve": lambda tasks: on_cluster(finetune_and_challenge(
            data=tasks["gate"].outputs["Output"]), "8", "32G", gpu=True, retries=1),
        "search": search_stage,
        "deploy": lambda tasks: on_cluster(deploy_champion(
            selections=tasks["select"].outputs["Output"]), "4", "16G", gpu=True,
            retries=1).after(tasks["improve"]),
        "capacity": lambda tasks: on_cluster(plan_capacity(
            selections=tasks["select"].outputs["Output"], deployed=tasks["deploy"].output),
            "4", "16G", gpu=True),
        "monitor": lambda tasks: on_cluster(monitor_champions(
            selections=tasks["select"].outputs["Output"],
            improvement=tasks["improve"].outputs["Output"]), "0.5", "1G"),
        "report": report_stage,
    }


@dsl.pipeline(name="sutazai-nightly",
              description="The nightly cycle: mirror, benchmark, select, improve, deploy, "
                          "monitor, report.")
def nightly(models: list[str] = [], profile: str = "") -> dict:  # noqa: B006
    builders = nightly_stages(models, profile)
    tasks: Tasks = {}
    for stage in NIGHTLY:  # declared once, in sutazai.workflows.cycle
        tasks[stage.name] = builders[stage.name](tasks)
    return tasks["report"].outputs["Output"]


@dsl.pipeline(name="sutazai-knowledge-ingest",
              description="Documents to entities and relations in the knowledge graph, and "
                          "their chunks embedded for vector search.")
def knowledge_ingest(paths: list[str] = [], relations: str = "svo") -> dict:  # noqa: B006
    extracted = on_cluster(extract_documents(paths=paths, relations=relations), "2", "4G",
                           retries=1)
    written = on_cluster(upsert_documents(extracted=extracted.outputs["extracted"]), "1", "2G",
                         retries=2)
    # the embedding model runs on the CPU (a MiniLM); resumable, so a retry only does the rest
    embedded = on_cluster(embed_chunks(ingested=written.outputs["Output"]), "2", "4G",
                          retries=1)
    return on_cluster(graph_statistics(ingested=written.outputs["Output"]), "0.5", "1G"
                      ).after(embedded).output


@dsl.pipeline(name="sutazai-backup-drill",
              description="Back up the home, verify it, restore it into a scratch home, "
                          "use it there and compare its counts with the source.")
def backup_drill(ask: bool = True) -> dict:
    # the whole home passes through one step (it reads what it backs up); a retry would
    # make a second backup, which only writes what changed
    return on_cluster(drill_step(ask=ask), "2", "4G", retries=1).outputs["Output"]


PIPELINES = {
    "model_sync": model_sync,
    "benchmark_select": benchmark_select,
    "nightly": nightly,
    "knowledge_ingest": knowledge_ingest,
    "backup_drill": backup_drill,
}
