"""Entry point of the ``sutazai`` command."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from sutazai.cli import audit, backup, bench, data, keys, kg, learn, models, nas, registry
from sutazai.cli.migrate import migrate_command
from sutazai.cli.optimize import optimize_command
from sutazai.cli.output import console, emit_json, errors
from sutazai.cli.permissions import GuardedGroup
from sutazai.cli.serve import serve_command
from sutazai.errors import SutazAIError

if TYPE_CHECKING:
    from rich.table import Table

    from sutazai.benchmark.capacity import CapacityPlan
    from sutazai.config import Settings
    from sutazai.workflows.nightly import CycleReport

app = typer.Typer(
    help="SutazAI: mirror, benchmark, improve and serve LLMs on your own hardware.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=GuardedGroup,
)
for group, name in ((models, "models"), (registry, "registry"), (bench, "bench"), (kg, "kg"),
                    (data, "data"), (learn, "learn"), (nas, "nas"), (audit, "audit"),
                    (keys, "keys"), (backup, "backup")):
    app.add_typer(group.app, name=name, cls=GuardedGroup)
app.command("optimize")(optimize_command)
app.command("serve")(serve_command)
app.command("migrate")(migrate_command)


@app.command("run")
def run_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """The nightly cycle in this process: mirror, verify, benchmark, select, serve.

    ``make run`` runs the same cycle through Airflow and Kubeflow Pipelines instead.
    """
    from sutazai.cli.progress import RichProgress
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import run_cycle

    settings = load_settings()
    with RichProgress(errors) as progress:
        report = run_cycle(settings, progress)
    show_report(report, settings, as_json)


@app.command("report")
def report_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """The summary of the last nightly cycle (whichever way it ran)."""
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import load_report

    settings = load_settings()
    show_report(load_report(settings), settings, as_json)


def show_report(report: CycleReport, settings: Settings, as_json: bool) -> None:
    """Print a cycle's tables and decisions; exit non-zero when any part failed."""
    if as_json:
        emit_json(report.as_dict())
    else:
        console.print(models.outcome_table(report.outcomes, "SutazAI model sync"))
        console.print(f"repository {settings.repository_root}: {report.versions} version(s), "
                      f"verified {'[green]ok[/]' if not report.problems else '[red]FAILED[/]'}; "
                      f"MLflow {settings.tracking_uri}")
        if report.benchmarks:
            console.print(leaderboard_view(settings, report))
        for reason in report.skipped:
            console.print(f"[dim]skipped {escape(reason)}[/]")
        for decision in report.selections:
            console.print(decision.explanation, markup=False, highlight=False)
        show_improvement(report)
        show_champions(report)
        if report.answer is not None:
            a = report.answer
            console.print(f"champion {a.ref} on {a.engine} answered in {a.seconds * 1000:.0f} "
                          f"ms: {a.prompt!r} -> {a.text!r}", highlight=False)
        if report.seconds:
            console.print(f"{report.seconds:.1f}s in all")
    for failure in report.failures:
        errors.print(f"[bold red]error:[/] {escape(failure)}", highlight=False)
    models.report_failures(report.outcomes)
    if report.failures:
        raise typer.Exit(1)
    if report.problems:
        raise SutazAIError(f"{len(report.problems)} stored file(s) failed verification; run "
                           "'sutazai models verify' for details")


def leaderboard_view(settings: Settings, report: CycleReport) -> Table:
    """The leaderboard as ``sutazai bench leaderboard`` shows it (champions and challengers
    marked from the MLflow aliases, learned ones with their held-out figures); tonight's
    benchmarks alone, unmarked, when MLflow cannot be read."""
    from sutazai.selection.leaderboard import leaderboard

    profile = settings.benchmark_profile
    try:
        return bench.leaderboard_table(leaderboard(settings, None, profile),
                                       "SutazAI leaderboard", prices=settings.hardware_costs,
                                       currency=settings.cost_currency)
    except SutazAIError as exc:
        errors.print(f"[dim]the leaderboard could not read MLflow ({escape(str(exc))}); "
                     "tonight's benchmarks without their aliases:[/]")
        return bench.summary_table(report.benchmarks, f"SutazAI leaderboard (profile {profile})")


def show_improvement(report: CycleReport) -> None:
    """Tonight's data, what was tried against each champion, what was decided, regressions."""
    from rich.table import Table

    data, improvement, search = report.data, report.improvement, report.search
    if data is not None and data.snapshot is not None:
        console.print(f"training data: snapshot {data.snapshot.digest[:12]}, {data.snapshot.rows} "
                      f"rows ({data.train_rows} train, {data.heldout_rows} held out, "
                      f"{data.imported} new), data gate [green]passed[/]", highlight=False)
    if improvement is not None:
        table = Table(title="SutazAI self-improvement (before / after)")
        for column in ("task", "champion before", "candidates", "decision", "champion after"):
            table.add_column(column, overflow="fold")
        tried = []
        if improvement.finetuned:
            before, after = improvement.eval_loss_before, improvement.eval_loss_after
            tried.append(f"{improvement.finetuned} (fine-tuned; held-out loss {before:.3f} -> "
                         f"{after:.3f})")
        if improvement.optimized:
            tried.append(f"{improvement.optimized} (quantised)")
        if search is not None and search.registered:
            tried.append(f"{search.registered} (architecture search, best of {search.trials} "
                         f"trials, {search.pruned} pruned; registered only)")
        decision = improvement.decision
        verdict = (decision.reason if decision else improvement.note) or "-"
        if decision is not None:
            verdict = f"{'[green]promoted[/]' if decision.promoted else 'kept'}: {escape(verdict)}"
        else:
            verdict = escape(verdict)
        table.add_row(improvement.task, improvement.champion_before or "-",
                      escape("\n".join(tried)) or "-", verdict,
                      improvement.champion_after or "-")
        console.print(table)
    for regression in report.regressions:
        console.print(f"[yellow]regression[/] {escape(regression.sentence)}", highlight=False)
    for plan in report.capacity:
        console.print(f"capacity: {escape(capacity_sentence(plan))}", highlight=False)


def capacity_sentence(plan: CapacityPlan) -> str:
    """One line of the nightly report: a champion's capacity and the replicas it needs."""
    curve = plan.curve
    if plan.replicas is None:
        return "; ".join(plan.notes)
    bound = "" if curve.limit_found else "at least "
    cost = (f"; {plan.currency} {plan.cost_per_1m_output:.4g} per 1M output tokens"
            if plan.cost_per_1m_output is not None else "")
    return (f"{curve.candidate} sustains {bound}{curve.max_rate_rps:.2f} req/s per replica: "
            f"{plan.replicas} replica(s) for {plan.target_rps:g} req/s ({plan.headroom:.0%} "
            f"headroom, P95 TTFT ~{plan.predicted_ttft_p95_ms or 0:.0f} ms){cost}")


def show_champions(report: CycleReport) -> None:
    """Each task's champion and challenger as the MLflow aliases said when the cycle ended
    (what 'sutazai serve' serves), and the selection's pick where it differs."""
    selected = report.selected_labels()
    for task, champion in report.champion_labels().items():
        line = f"{task} champion: {champion or 'none'}"
        if selected.get(task) and champion and selected[task] != champion:
            line += f" (selected before the promotion: {selected[task]})"
        if task in report.challengers:
            line += f"; challenger: {report.challengers[task].label}"
        console.print(escape(line), highlight=False)


def _quiet_libraries() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")  # transformers' bars; SutazAI shows rich ones
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # llama.cpp's own log lines (context-size notes on every in-process load)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


def _exit_on_sigterm() -> None:
    """SIGTERM ends the command like Ctrl-C does, through ``finally`` blocks: engines run in
    process groups of their own, and without this they would outlive a killed command."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main() -> None:
    _quiet_libraries()
    _exit_on_sigterm()
    try:
        app()
    except SutazAIError as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:
        from sutazai.production.databases import outage_message

        message = outage_message(exc)
        if message is None:
            raise
        errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
