"""What a NAS study reports: its trials, their Pareto front, and the figures logged to MLflow.

Pure functions of finished trials, apart from the study's storage and training
(:mod:`sutazai.learning.nas`), so the CLI and the report can use them without a study open.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    import optuna


class TrialRow(BaseModel):
    number: int
    state: str
    val_loss: float | None
    second: float | None
    n_params: int | None
    latency_ms: float | None
    epochs: int
    params: dict[str, Any]
    note: str | None = None


class ParetoRow(BaseModel):
    trial: int
    val_loss: float
    second: float
    n_params: int | None
    params: dict[str, Any]


class StudyReport(BaseModel):
    study: str
    mode: str
    second_objective: str
    trials_target: int | None
    trials_finished: int
    trials_complete: int
    trials_pruned: int
    trials_failed: int
    trials_running: int
    trials_run_here: int = 0
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    pareto_front: list[ParetoRow]
    trial_epochs: int
    mlflow_run_id: str | None
    registered: str | None = None
    trials: list[TrialRow]


def trial_row(trial: optuna.trial.FrozenTrial, space_second: str) -> TrialRow:
    values = trial.values or []
    return TrialRow(
        number=trial.number, state=trial.state.name,
        val_loss=values[0] if values else _last_intermediate(trial),
        second=values[1] if len(values) > 1 else _second_attr(trial, space_second),
        n_params=trial.user_attrs.get("n_params"), latency_ms=trial.user_attrs.get("latency_ms"),
        epochs=int(trial.user_attrs.get("epochs", 0)), params=dict(trial.params),
        note=trial.user_attrs.get("note"))


def _last_intermediate(trial: optuna.trial.FrozenTrial) -> float | None:
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else None


def _second_attr(trial: optuna.trial.FrozenTrial, second: str) -> float | None:
    value = trial.user_attrs.get("n_params" if second == "params" else "latency_ms")
    return float(value) if value is not None else None


def pareto_front(rows: Sequence[TrialRow]) -> list[ParetoRow]:
    """Completed trials no other completed trial beats on both loss and the second
    objective, by increasing loss."""
    done = [r for r in rows if r.state == "COMPLETE" and r.val_loss is not None
            and r.second is not None]
    front = []
    for row in done:
        assert row.val_loss is not None and row.second is not None
        dominated = any(o.val_loss is not None and o.second is not None
                        and o.val_loss <= row.val_loss and o.second <= row.second
                        and (o.val_loss < row.val_loss or o.second < row.second) for o in done)
        if not dominated:
            front.append(ParetoRow(trial=row.number, val_loss=row.val_loss, second=row.second,
                                   n_params=row.n_params, params=row.params))
    return sorted(front, key=lambda p: (p.val_loss, p.second))


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_figure(report: StudyReport) -> Any:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    done = [r for r in report.trials if r.state == "COMPLETE" and r.second is not None]
    axis.scatter([r.second for r in done], [r.val_loss for r in done], color="tab:grey",
                 alpha=0.6, label="completed trials")
    front = sorted(report.pareto_front, key=lambda p: p.second)
    axis.plot([p.second for p in front], [p.val_loss for p in front], color="tab:red",
              marker="o", drawstyle="steps-post", label="Pareto front")
    for p in front:
        axis.annotate(f"#{p.trial}", (p.second, p.val_loss), fontsize=7,
                      textcoords="offset points", xytext=(3, 3))
    axis.set_xlabel("parameters" if report.second_objective == "params"
                    else "forward latency (ms)")
    axis.set_ylabel("validation loss (nats/token)")
    if report.second_objective == "params":
        axis.set_xscale("log")
    axis.set_title(f"NAS {report.study}: validation loss vs {report.second_objective}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def history_figure(report: StudyReport) -> Any:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for state, color in (("COMPLETE", "tab:blue"), ("PRUNED", "tab:orange")):
        rows = [r for r in report.trials if r.state == state and r.val_loss is not None]
        axis.scatter([r.number for r in rows], [r.val_loss for r in rows], color=color,
                     label=state.lower())
    best, xs, ys = float("inf"), [], []
    for row in sorted(report.trials, key=lambda r: r.number):
        if row.state == "COMPLETE" and row.val_loss is not None:
            best = min(best, row.val_loss)
            xs.append(row.number)
            ys.append(best)
    axis.step(xs, ys, where="post", color="tab:red", label="best so far")
    axis.set_xlabel("trial")
    axis.set_ylabel("validation loss (last epoch run)")
    axis.set_title(f"NAS {report.study}: optimisation history")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
