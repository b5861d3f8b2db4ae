"""``sutazai nas ...``: architecture search over small causal LMs (Optuna), and its results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from sutazai.cli.output import console, emit_json, errors
from sutazai.config import Settings, load_settings
from sutazai.errors import TrainingError

if TYPE_CHECKING:
    from sutazai.cli.progress import RichTask
    from sutazai.learning.nas_report import StudyReport

app = typer.Typer(help="Neural architecture search: Optuna studies over small causal LMs, "
                       "tracked in MLflow.", no_args_is_help=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")
DEFAULT_SPACE = Path("models/nas-space.yaml")
SPACE = typer.Option(DEFAULT_SPACE, "--space", help="Search space YAML.")
DATA = typer.Option(None, "--data", help="Training texts: .txt (one per line, # comments) or "
                                         ".jsonl (a 'text' field); default the built-in "
                                         "corpus (benchmarks/data).")
EVAL = typer.Option(None, "--eval", help="Held-out texts, same formats; default every 10th "
                                         "text of --data.")


def read_texts(path: Path) -> list[str]:
    """Texts of a .txt (one per line, blank and # lines skipped) or .jsonl file."""
    if not path.is_file():
        raise TrainingError(f"data file {path} does not exist: pass --data FILE (.txt/.jsonl)")
    texts: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or (path.suffix != ".jsonl" and line.startswith("#")):
            continue
        if path.suffix == ".jsonl":
            if line.startswith("#"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TrainingError(f"{path}:{number} is not JSON ({exc.msg}): one object "
                                    "with a 'text' field per line") from None
            text = record.get("text") if isinstance(record, dict) else record
            if not isinstance(text, str):
                raise TrainingError(f"{path}:{number} has no 'text' string field")
            texts.append(text)
        else:
            texts.append(line)
    if not texts:
        raise TrainingError(f"{path} holds no texts")
    return texts


def load_texts(settings: Settings, data: Path | None, eval_data: Path | None
               ) -> tuple[list[str], list[str]]:
    """(training, held-out) texts from the options, or the built-in corpus."""
    if data is None:
        corpus = settings.benchmark_data_dir
        train, held = read_texts(corpus / "prompts.txt"), read_texts(corpus / "heldout.txt")
        return train, (read_texts(eval_data) if eval_data is not None else held)
    texts = read_texts(data)
    if eval_data is not None:
        return texts, read_texts(eval_data)
    held = texts[::10]
    train = [t for i, t in enumerate(texts) if i % 10]
    if not train:
        raise TrainingError(f"{data} holds too few texts to hold some out: pass --eval FILE")
    return train, held


class _TrialBars:
    """Bars counting trials (the byte-oriented download bars would say '3 B')."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bars = Progress(TextColumn("[bold blue]{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                             console=errors, transient=True)

    def __enter__(self) -> _TrialBars:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def task(self, description: str, total: int | None = None) -> RichTask:
        from sutazai.cli.progress import RichTask

        return RichTask(self.bars, self.bars.add_task(description, total=total))


@app.command("run")
def run_command(
    space: Path = SPACE,
    trials: int = typer.Option(12, "--trials", help="Finished trials the study should hold in "
                                                    "total (a resumed study runs the rest)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Start no trial after this "
                                                                 "many seconds."),
    study: str = typer.Option("nas", "--study", help="Study name (resumes it if it exists)."),
    data: Path | None = DATA,
    eval_data: Path | None = EVAL,
    mode: str = typer.Option("pruned", "--mode", help="pruned (loss, with pruning) or pareto "
                                                      "(loss and size, no pruning)."),
    worker: int | None = typer.Option(None, "--worker", help="This process's number when "
                                                             "several share the study."),
    register: bool = typer.Option(False, "--register", help="Retrain the best trial and "
                                                            "register it as nas-STUDY."),
    as_json: bool = JSON,
) -> None:
    """Run (or resume, or join) an architecture search."""
    from sutazai.learning.nas import load_space, register_best, run_study

    settings = load_settings()
    declared = load_space(space)
    train, held = load_texts(settings, data, eval_data)
    if mode not in ("pruned", "pareto"):
        raise TrainingError(f"--mode {mode} is not known: use pruned or pareto")
    with _TrialBars() as bars:
        report = run_study(settings, declared, train, held, study_name=study, n_trials=trials,
                           timeout_s=timeout, mode=mode,  # type: ignore[arg-type]
                           worker=worker, progress=bars)
    if register:
        manifest = register_best(settings, study, declared, train, held)
        report.registered = manifest.ref
    _print(report, as_json)


@app.command("show")
def show_command(study: str = typer.Argument(..., help="Study name."),
                 as_json: bool = JSON) -> None:
    """A study's trials, best trial and Pareto front."""
    from sutazai.learning.nas import show_study

    _print(show_study(load_settings(), study), as_json)


@app.command("register")
def register_command(study: str = typer.Argument(..., help="Study name."), space: Path = SPACE,
                     data: Path | None = DATA, eval_data: Path | None = EVAL,
                     as_json: bool = JSON) -> None:
    """Retrain a study's best trial and store it as a repository version (nas-STUDY)."""
    from sutazai.learning.nas import load_space, register_best

    settings = load_settings()
    train, held = load_texts(settings, data, eval_data)
    manifest = register_best(settings, study, load_space(space), train, held)
    if as_json:
        emit_json(manifest.model_dump(mode="json"))
    else:
        console.print(f"registered [bold]{manifest.ref}[/] ({manifest.source}, digest "
                      f"{manifest.digest[:12]})", highlight=False)


def _print(report: StudyReport, as_json: bool) -> None:
    if as_json:
        emit_json(report.model_dump(mode="json"))
        return
    table = Table(title=f"NAS study {report.study} ({report.mode})")
    for column in ("trial", "state", "val loss", "params", "epochs", "layers", "width", "heads",
                   "ffn", "lr"):
        table.add_column(column, justify="right")
    for row in report.trials:
        params = row.params
        table.add_row(
            str(row.number), row.state.lower(),
            f"{row.val_loss:.4f}" if row.val_loss is not None else "-",
            f"{row.n_params:,}" if row.n_params is not None else "-", str(row.epochs),
            *(str(params.get(k, "-")) for k in ("num_hidden_layers", "hidden_size",
                                                 "num_attention_heads", "intermediate_size")),
            f"{params['learning_rate']:.2e}" if "learning_rate" in params else "-")
    console.print(table)
    target = f" of {report.trials_target}" if report.trials_target else ""
    console.print(f"{report.trials_finished}{target} finished ({report.trials_complete} "
                  f"complete, {report.trials_pruned} pruned), {report.trials_failed} failed, "
                  f"{report.trials_running} running; {report.trial_epochs} trial-epochs",
                  highlight=False)
    if report.best_trial is not None:
        console.print(f"best: trial {report.best_trial}, validation loss "
                      f"{report.best_value:.4f}", highlight=False)
    if report.pareto_front:
        front = Table(title=f"Pareto front (validation loss vs {report.second_objective})")
        for column in ("trial", "val loss", report.second_objective):
            front.add_column(column, justify="right")
        for p in report.pareto_front:
            front.add_row(str(p.trial), f"{p.val_loss:.4f}", f"{p.second:,.6g}")
        console.print(front)
    if report.mlflow_run_id:
        console.print(f"MLflow run {report.mlflow_run_id}", highlight=False)
    if report.registered:
        console.print(f"registered {report.registered}", highlight=False)
