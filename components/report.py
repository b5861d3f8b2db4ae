"""The nightly cycle's last step: one report of everything the run did.

No ``from __future__ import annotations`` in component modules: KFP reads the annotations.
"""

from kfp.dsl import Artifact, Output

from components.base import component


@component
def summarize_cycle(mirrored: list[dict], conversion_failures: list[str],
                    benchmarks: list[str], selections: list[dict], answer: dict, data: dict,
                    improvement: dict, search: dict, regressions: list[dict],
                    capacity: list[dict], report: Output[Artifact]) -> dict:
    """Assemble the cycle report, keep it under ``<home>/reports`` and as an artifact.

    Returns the headline: each task's champion (as the aliases say after the promotion, and
    what the selection chose), the failures, the champion's answer.
    """
    from pydantic import TypeAdapter

    from sutazai.benchmark.capacity import CapacityPlan
    from sutazai.config import load_settings
    from sutazai.learning.monitoring import Regression
    from sutazai.repository import open_repository
    from sutazai.workflows.improvement import DataOutcome, ImprovementOutcome, SearchOutcome
    from sutazai.workflows.mirror import MirrorOutcome
    from sutazai.workflows.nightly import (
        BenchmarkOutcome,
        SelectionOutcome,
        ServedAnswer,
        assemble_report,
        plan_benchmarks,
        save_report,
    )

    settings = load_settings()
    result = assemble_report(
        # KFP hands numbers over as floats; validation turns 1.0 back into 1
        TypeAdapter(list[MirrorOutcome]).validate_python(mirrored),
        [BenchmarkOutcome.model_validate_json(b) for b in benchmarks],
        plan_benchmarks(settings),
        [SelectionOutcome.model_validate(s) for s in selections],
        ServedAnswer.model_validate(answer) if answer else None,
        versions=len(open_repository(settings).all_versions()),
        failures=conversion_failures,
        data=DataOutcome.model_validate(data),
        improvement=ImprovementOutcome.model_validate(improvement),
        search=SearchOutcome.model_validate(search) if search else None,
        regressions=[Regression.model_validate(r) for r in regressions],
        capacity=[CapacityPlan.model_validate(c) for c in capacity],
        settings=settings,
    )
    saved = save_report(settings, result)
    with open(report.path, "w") as handle:
        handle.write(result.model_dump_json(indent=2))
    headline = {
        "champions": result.champion_labels(),
        "selected": result.selected_labels(),
        "mirrored": {o.name: f"{o.version}{' (new)' if o.created else ''}"
                     for o in result.outcomes},
        "failures": result.failures,
        "answer": result.answer.model_dump() if result.answer else {},
        "improvement": (result.improvement.decision.reason if result.improvement
                        and result.improvement.decision else
                        result.improvement.note if result.improvement else ""),
        "regressions": [r.sentence for r in result.regressions],
        "report": str(saved),
    }
    report.metadata.update({k: v for k, v in headline.items() if k != "answer"})
    return headline
