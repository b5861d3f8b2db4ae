"""The nightly cycle, declared once: its stages, in order, and what each needs first.

Two executors build on this declaration. ``sutazai run`` and ``make run``'s in-process
path (:func:`sutazai.workflows.nightly.run_cycle`) run one function per stage, in this
order; the Kubeflow pipeline ``nightly`` (``pipelines/definitions.py``) adds one group of
tasks per stage, in this order, wired so that each runs after the stages it needs. Tests
hold both to it (the in-process stages are exactly these; every need is an edge of the
compiled pipeline), and the nightly DAG's documentation is written from it. Nothing heavy is
imported here, so a DAG file can read it while Airflow parses.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str  # one line of Markdown, for the DAG's documentation and the README
    needs: tuple[str, ...] = ()


NIGHTLY: tuple[Stage, ...] = (
    Stage("mirror", "**mirror** the catalog (pull, verify, register in MLflow); a repository "
          "that fails verification stops the cycle"),
    Stage("convert", "**convert** GGUF generation models to safetensors for vLLM (derived, "
          "registered versions)", ("mirror",)),
    Stage("benchmark", "**benchmark** every (model version, engine) pair, reusing identical "
          "earlier runs", ("convert",)),
    Stage("select", "**select** the champion and challenger of each task under the SLOs "
          "(MLflow aliases)", ("benchmark",)),
    Stage("gate", "**gate** tonight's training data with Great Expectations (a failure stops "
          "the learning, not the cycle)", ("select",)),
    Stage("improve", "**fine-tune** the text-generation champion (LoRA), quantise it to the "
          "champion's format, and **challenge** the champion with it on held-out data: "
          "promoted only by the margin within the SLOs", ("gate",)),
    Stage("search", "an Optuna **architecture search** on the same data registers its best "
          "model", ("gate",)),
    Stage("deploy", "**deploy**: serve tonight's text-generation champion and prove it "
          "answers", ("select", "improve")),
    Stage("capacity", "**capacity**: with `capacity_target_rps` set, sweep one replica of each "
          "generation champion and plan the replicas that rate needs (MLflow, goodput "
          "curve)", ("deploy",)),
    Stage("monitor", "**monitor** each champion against earlier nights (regressions pushed "
          "as metrics)", ("select", "improve")),
    Stage("report", "**report**: one summary with a before/after table, kept under "
          "`.sutazai/reports/` and in MLflow",
          ("mirror", "convert", "benchmark", "select", "gate", "improve", "search", "deploy",
           "capacity", "monitor")),
)

STAGES = {stage.name: stage for stage in NIGHTLY}


def describe(stages: tuple[Stage, ...] = NIGHTLY) -> str:
    """The stages as a numbered Markdown list."""
    return "\n".join(f"{number}. {stage.summary};" if number < len(stages) else
                     f"{number}. {stage.summary}."
                     for number, stage in enumerate(stages, start=1))
