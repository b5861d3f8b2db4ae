"""Self-improvement steps: gate the data, fine-tune and challenge, search, monitor.

No ``from __future__ import annotations`` in component modules: KFP reads the annotations.
Outputs are JSON dictionaries without nulls (KFP parameters cannot carry them).
"""

from kfp.dsl import Markdown, Output

from components.base import component


@component
def validate_training_data(selections: list[dict], gate_report: Output[Markdown]) -> dict:
    """Import the inbox, snapshot the store, run its Great Expectations gate.

    ``selections`` only orders this step after the selection. A failing gate fails this
    step, so nothing downstream trains; its report is in MLflow (run ``data-gate``) and
    next to the snapshot under ``<home>/datasets``.
    """
    from pathlib import Path

    from sutazai.config import load_settings
    from sutazai.workflows.improvement import prepare_data

    data = prepare_data(load_settings())
    report = Path(data.gate_report) if data.gate_report else None
    with open(gate_report.path, "w") as handle:
        handle.write(report.read_text() if report and report.is_file() else data.note)
    return data.model_dump(mode="json", exclude_none=True)


@component
def finetune_and_challenge(data: dict, decision: Output[Markdown]) -> dict:
    """Fine-tune the champion on the gated data, quantise it for the champion's engine,
    and promote it only if it beats the champion on held-out data within the SLOs."""
    from sutazai.config import load_settings
    from sutazai.workflows.improvement import DataOutcome, improve_champion

    outcome = improve_champion(load_settings(), DataOutcome.model_validate(data))
    with open(decision.path, "w") as handle:
        handle.write(outcome.decision.reason if outcome.decision else outcome.note)
    return outcome.model_dump(mode="json", exclude_none=True)


@component
def search_architectures(data: dict, worker: int) -> dict:
    """This worker's share of tonight's architecture search; workers share the study."""
    from sutazai.config import load_settings
    from sutazai.workflows.improvement import DataOutcome, search_architectures

    outcome = search_architectures(load_settings(), DataOutcome.model_validate(data),
                                   int(worker))
    return outcome.model_dump(mode="json", exclude_none=True) if outcome else {}


@component
def register_architecture(data: dict) -> dict:
    """Register the finished study's best architecture (the pipeline runs it after the
    search workers)."""
    from sutazai.config import load_settings
    from sutazai.workflows.improvement import DataOutcome, register_searched

    outcome = register_searched(load_settings(), DataOutcome.model_validate(data))
    return outcome.model_dump(mode="json", exclude_none=True) if outcome else {}


@component
def monitor_champions(selections: list[dict], improvement: dict) -> list[dict]:
    """Compare each champion's measurements with earlier nights; the regressions found
    (and, with a Pushgateway, each champion's figures pushed for the alerts)."""
    from sutazai.config import load_settings
    from sutazai.workflows.improvement import ImprovementOutcome
    from sutazai.workflows.nightly import SelectionOutcome, monitor_champions

    chosen = [SelectionOutcome.model_validate(s) for s in selections]
    tried = ImprovementOutcome.model_validate(improvement) if improvement else None
    return [r.model_dump(mode="json") for r in monitor_champions(load_settings(), chosen, tried)]
