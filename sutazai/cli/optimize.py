"""``sutazai optimize NAME[:VERSION] --method M``: a quantised variant, measured and decided."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from sutazai.cli.output import console, emit_json, errors, size
from sutazai.cli.progress import RichProgress
from sutazai.config import load_settings

if TYPE_CHECKING:
    from sutazai.optimize.variants import OptimizeResult

app = typer.Typer(help="Quantise model versions (GGUF types, torch int8) with lineage.")

METHOD_HELP = ("gguf:q8_0, gguf:q6_k, gguf:q5_k_m, gguf:q4_k_m, gguf:q4_0, gguf:q3_k_m, "
               "gguf:q2_k, gguf:f16 or int8-dynamic.")


def _figure(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key == "size_bytes":
        return size(int(value))
    return f"{value:.1f}" if key == "tokens_per_s" else f"{value:.3f}"


def result_table(result: OptimizeResult) -> Table:
    table = Table(title=f"{result.method} of {result.parent}")
    table.add_column("metric", no_wrap=True)
    for column in ("before", "after", "change"):
        table.add_column(column, justify="right")
    labels = {"size_bytes": "size", "tokens_per_s": "tokens/s", "perplexity": "perplexity",
              "mc_accuracy": "MC accuracy"}
    for key, label in labels.items():
        before, after = result.before.get(key), result.after.get(key)
        change = "-"
        if before is not None and after is not None:
            change = (f"{after - before:+.2f}" if key == "mc_accuracy"
                      else f"{after / before - 1:+.1%}" if before else "-")
        table.add_row(label, _figure(key, before), _figure(key, after), change)
    drop = "-" if result.quality_drop is None else f"{result.quality_drop:+.2%}"
    table.add_row("quality drop", "", drop, f"tolerance {result.tolerance:.2%}")
    return table


@app.command("optimize")
def optimize_command(
    ref: str = typer.Argument(..., help="NAME or NAME:VERSION from the repository."),
    method: str = typer.Option(..., "--method", "-m", help=METHOD_HELP),
    tolerance: float = typer.Option(None, "--tolerance", min=0.0,
                                    help="Largest relative perplexity increase accepted; "
                                         "default settings.optimize_tolerance."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Make a quantised variant, measure it against its parent, publish it if good enough."""
    from sutazai.optimize.variants import optimize_model
    from sutazai.repository import open_repository
    from sutazai.workflows.mirror import resolve_refs

    settings = load_settings()
    [manifest] = resolve_refs(open_repository(settings), [ref])
    with RichProgress(errors) as progress:
        result = optimize_model(settings, manifest, method, tolerance=tolerance,
                                progress=progress)
    if as_json:
        emit_json(json.loads(result.model_dump_json()))
        return
    console.print(result_table(result))
    console.print(result.reason, style="green" if result.accepted else "red", markup=False,
                  highlight=False)
    if result.variant is not None:
        console.print(f"variant {result.variant.ref} (parent {result.variant.parent}, source "
                      f"{result.variant.source})", highlight=False)
    if result.run_id:
        console.print(f"MLflow run {result.run_id} in experiment "
                      f"{settings.learning_experiment}", highlight=False)
