"""``sutazai bench ...``: benchmark model versions, compare them, select champions."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.table import Table

from sutazai.cli.output import console, emit_json, errors
from sutazai.cli.progress import RichProgress
from sutazai.config import load_settings

if TYPE_CHECKING:
    from sutazai.benchmark.capacity import CapacityPlan
    from sutazai.benchmark.runner import BenchmarkSummary
    from sutazai.selection.leaderboard import Entry

app = typer.Typer(help="Benchmark model versions on real engines and select champions.",
                  no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


#: The figures of both tables; latencies are P95 in ms (the captions say so).
COLUMNS = ("TTFT", "e2e", "TPOT", "tok/s", "quality", "bits/B", "MiB", "load s")
CAPTION = ("TTFT, e2e (end to end), TPOT: P95 in ms; tok/s: output tokens/s; bits/B: bits "
           "per byte of held-out text (lower is better); MiB: the engine's peak RSS")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _quality(s: BenchmarkSummary, task: str | None = None) -> tuple[str, str]:
    """The quality score ``task``'s selection uses (default: the run's primary one) and, for
    text generation, bits per byte (lower is better; unlike perplexity it compares models
    with different tokenizers)."""
    if s.quality is None:
        return "-", "-"
    score = s.quality.score_for(task) if task else s.quality.score
    bits = s.quality.scores.get("bits_per_byte")
    return ("-" if score is None else f"{score:.3f}"), ("-" if bits is None else f"{bits:.2f}")


def summary_table(summaries: list[BenchmarkSummary], title: str) -> Table:
    table = Table(title=title, caption=CAPTION)
    for column in ("model", "engine", "profile", "conc."):
        table.add_column(column, no_wrap=True)
    for column in COLUMNS:
        table.add_column(column, justify="right")
    for s in summaries:
        quality, bits = _quality(s)
        rss = f"{s.peak_rss_bytes / 2**20:.0f}" if s.peak_rss_bytes else "-"
        if not s.steps:  # quality-only tasks (embeddings, NER)
            table.add_row(s.ref, s.engine, s.profile.name, "-", "-", "-", "-", "-", quality, bits,
                          rss, f"{s.load_seconds:.1f}")
        for step in s.steps:
            table.add_row(s.ref, s.engine, s.profile.name, str(step.concurrency),
                          _ms(step.ttft_p95_ms), _ms(step.e2el_p95_ms), _ms(step.tpot_p95_ms),
                          f"{step.output_throughput:.1f}", quality, bits, rss,
                          f"{s.load_seconds:.1f}")
    return table


@app.command("run")
def run_command(
    model: str = typer.Argument(..., help="NAME or NAME:VERSION from the repository."),
    engine: str = typer.Option(None, "--engine", "-e", help="llamacpp, vllm or ollama."),
    profile: str = typer.Option(None, "--profile", "-p",
                                help="latency, throughput, poisson, sweep or smoke."),
    quality: bool = typer.Option(True, help="Also score quality on benchmarks/data."),
    as_json: bool = JSON,
) -> None:
    """Serve a model version, load it, score it, and log the run to MLflow."""
    from sutazai.benchmark.profiles import get_profile
    from sutazai.benchmark.runner import benchmark
    from sutazai.repository import open_repository
    from sutazai.workflows.mirror import resolve_refs

    settings = load_settings()
    [manifest] = resolve_refs(open_repository(settings), [model])
    with RichProgress(errors) as progress:
        summary, _ = benchmark(settings, manifest, engine,
                               get_profile(profile or settings.benchmark_profile),
                               settings.selection_slo, quality=quality, progress=progress)
    if as_json:
        emit_json(json.loads(summary.model_dump_json()))
        return
    console.print(summary_table([summary], f"Benchmark of {summary.ref}"))
    console.print(f"MLflow run {summary.run_id} in experiment {settings.benchmark_experiment}",
                  highlight=False)


#: Marks a row whose numbers the promotion measured on held-out data, not the benchmark.
HELDOUT_MARK = "†"


def leaderboard_table(entries: list[Entry], title: str, task: str | None = None, *,
                      prices: dict[str, float] | None = None, currency: str = "") -> Table:
    """The leaderboard: each row's engine x concurrency, the aliases it holds (the task
    named only when it is not the row's own) and where its numbers come from; quality is
    the score ``task``'s selection uses (a chat model's chat accuracy under ``chat``).
    With ``prices`` (per hour, by hardware profile) a column gives the cost per 1M output
    tokens at the measured throughput; rows on an unpriced profile show "-"."""
    from sutazai.benchmark.capacity import per_million

    prices = prices or {}
    priced = any(e.summary and e.summary.hardware_profile in prices for e in entries)
    cost_column = [f"{currency}/1M out"] if priced else []

    def cost(s: BenchmarkSummary, throughput: float) -> list[str]:
        if not priced:
            return []
        price = prices.get(s.hardware_profile)
        value = per_million(price, throughput) if price is not None else None
        return [_money(value) if value is not None else "-"]

    profiles = {e.summary.profile.name for e in entries if e.summary}
    by_profile = len(profiles) > 1
    caption = CAPTION + (f"; {HELDOUT_MARK} measured by the promotion on the held-out split of "
                         "its dataset (learning experiment), not by the benchmark"
                         if any(e.held_out for e in entries) else "")
    if not by_profile and profiles:
        title = f"{title} (profile {next(iter(profiles))})"
    table = Table(title=title, box=box.SIMPLE_HEAD, caption=caption, pad_edge=False)
    # Names may fold onto a second line; figures never lose digits to an ellipsis.
    for column in ("model", "engine", *(["profile"] if by_profile else []), "role"):
        table.add_column(column, overflow="fold")
    for column in (*COLUMNS, *cost_column):
        table.add_column(column, justify="right", no_wrap=True, min_width=len(column))
    for e in entries:
        s = e.summary
        ref = f"{e.ref} {HELDOUT_MARK}" if e.held_out else e.ref
        if s is None:  # a learned champion or challenger with no measurement on record
            table.add_row(ref, e.engine, *(["-"] if by_profile else []), e.role_at(None),
                          *["-"] * (8 + len(cost_column)))
            continue
        quality, bits = _quality(s, task)
        rss = f"{s.peak_rss_bytes / 2**20:.0f}" if s.peak_rss_bytes else "-"
        profile = [s.profile.name] if by_profile else []
        if not s.steps:  # quality-only tasks (embeddings, NER)
            table.add_row(ref, e.engine, *profile, e.role_at(None, s.task),
                          "-", "-", "-", "-", quality, bits, rss, f"{s.load_seconds:.1f}",
                          *(["-"] if priced else []))
        for step in s.steps:
            table.add_row(ref, f"{e.engine} x{step.concurrency}", *profile,
                          e.role_at(step.concurrency, s.task), _ms(step.ttft_p95_ms),
                          _ms(step.e2el_p95_ms), _ms(step.tpot_p95_ms),
                          f"{step.output_throughput:.1f}", quality, bits, rss,
                          f"{s.load_seconds:.1f}", *cost(s, step.output_throughput))
    return table


@app.command("leaderboard")
def leaderboard_command(
    task: str = typer.Option(None, "--task", "-t", help="Only this task."),
    profile: str = typer.Option(None, "--profile", "-p", help="Only this load profile."),
    as_json: bool = JSON,
) -> None:
    """The newest benchmark of every model version and engine, best throughput first, with
    each task's champion and challenger (as the MLflow aliases say) marked; a learned one
    (fine-tuned, quantised, searched) with its held-out measurements from the promotion."""
    from sutazai.selection.leaderboard import leaderboard

    settings = load_settings()
    entries = leaderboard(settings, task, profile)
    if as_json:
        emit_json([(json.loads(e.summary.model_dump_json()) if e.summary else
                    {"model": e.model, "version": e.version, "engine": e.engine})
                   | {"source": e.source, "roles": [r.model_dump() for r in e.roles]}
                   for e in entries])
        return
    if not entries:
        errors.print("no benchmarks yet: run 'sutazai bench run NAME' or 'make run'")
        return
    console.print(leaderboard_table(entries, "SutazAI leaderboard", task,
                                    prices=settings.hardware_costs,
                                    currency=settings.cost_currency))


@app.command("capacity")
def capacity_command(
    task: str = typer.Argument(None, help="The task; default: the default task."),
    rate: float = typer.Option(..., "--rate", "-r", min=0.001,
                               help="Requests per second the task must serve."),
    profile: str = typer.Option(None, "--profile", "-p",
                                help="Load profile for prompt and output lengths."),
    as_json: bool = JSON,
) -> None:
    """Replicas each candidate needs for --rate within the SLOs, from a rate sweep of one
    replica (logged to MLflow with its goodput curve), and cost per 1M tokens."""
    from sutazai.workflows.capacity import capacity_plans

    settings = load_settings()
    with RichProgress(errors) as progress:
        plans = capacity_plans(settings, task or settings.default_task, rate, profile,
                               progress)
    if as_json:
        emit_json([p.model_dump(mode="json") for p in plans])
        return
    console.print(capacity_table(plans, settings.hardware_profile))
    for plan in plans:
        for key, value in plan.assumptions.items():
            console.print(f"  assumed {key}: {value}", highlight=False)
        for note in plan.notes:
            console.print(f"  note ({plan.curve.candidate}): {note}", highlight=False)


def capacity_table(plans: list[CapacityPlan], hardware: str) -> Table:
    """One row per candidate; cost columns only when a price is configured."""
    priced = any(p.cost_per_1m_output is not None for p in plans)
    currency = next((p.currency for p in plans if p.currency), "")
    target = plans[0].target_rps if plans else 0
    table = Table(title=f"Capacity for {target:g} req/s on {hardware}")
    columns = ["candidate", "sustainable req/s", "replicas", "headroom", "P95 TTFT at plan"]
    if priced:
        columns += [f"{currency}/1M in", f"{currency}/1M out"]
    for column in columns:
        table.add_column(column, justify="left" if column == "candidate" else "right")
    for plan in plans:
        curve = plan.curve
        bound = "" if curve.limit_found else "≥"
        row = [curve.candidate, f"{bound}{curve.max_rate_rps:.2f}",
               str(plan.replicas) if plan.replicas is not None else "none meets",
               f"{plan.headroom:.0%}" if plan.headroom is not None else "",
               _ms(plan.predicted_ttft_p95_ms) if plan.replicas is not None else ""]
        if priced:
            row += [_money(plan.cost_per_1m_input), _money(plan.cost_per_1m_output)]
        table.add_row(*row)
    return table


def _money(value: float | None) -> str:
    return "" if value is None else f"{value:,.4f}" if value < 1 else f"{value:,.2f}"


@app.command("select")
def select_command(
    task: str = typer.Argument(None, help="The task; default: the default task."),
    profile: str = typer.Option(None, "--profile", "-p", help="Load profile to select on."),
    as_json: bool = JSON,
) -> None:
    """Choose the champion and challenger of a task under the SLOs; set the MLflow aliases."""
    from sutazai.selection.store import select_and_promote

    settings = load_settings()
    decision, run_id = select_and_promote(
        settings, task or settings.default_task, profile or settings.benchmark_profile,
        settings.selection_slo, settings.selection_weights)
    if as_json:
        emit_json({"task": decision.task, "run_id": run_id,
                   "champion": decision.winner.model_dump() if decision.winner else None,
                   "challenger": decision.challenger.model_dump() if decision.challenger
                   else None, "rejected": decision.rejected,
                   "explanation": decision.explanation})
        return
    console.print(decision.explanation, markup=False, highlight=False)
    console.print(f"MLflow selection run {run_id}", highlight=False)
