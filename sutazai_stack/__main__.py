"""`python -m sutazai_stack up|down|status|nightly`: make up, down, status and run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sutazai.config import Settings, load_settings
from sutazai.errors import SutazAIError
from sutazai_stack import services as stack

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="SutazAI's local stack: Airflow, MLflow and Prometheus on 127.0.0.1.")
console = Console(stderr=True)

#: Lines of ``airflow dags test`` worth showing while the nightly cycle runs.
PROGRESS = re.compile(r"(Task '[\w-]+' finished with status|pipeline run id|MLflow run:|"
                      r"champion: |DagRun Finished|invalid conf|Traceback)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Demo training data for a first `make run`: short factual prompt/response pairs.
SEED = Path(__file__).resolve().parent.parent / "examples" / "feedback-seed.jsonl"


@app.command("up")
def up() -> None:
    """Start MLflow, Prometheus and Airflow (standalone) and wait until each answers."""
    from sutazai.embedded_db import first_use

    settings = load_settings()
    # MLflow and Airflow create and migrate their databases in the home as they start
    with first_use(settings.home, "the local stack"):
        stack.write_prometheus_config(settings)
        for service in stack.services(settings):
            console.print(f"{service.name:<11} {stack.start(settings, service):<18} "
                          f"{service.url}")
    console.print(f"Airflow UI: http://127.0.0.1:{settings.airflow_port} (user "
                  f"{stack.ADMIN}, {stack.admin_password_hint(settings)})")
    console.print(f"MLflow UI:  http://127.0.0.1:{settings.mlflow_port}")


@app.command("down")
def down() -> None:
    """Stop every service of the stack (Airflow first, so no task is left half-done)."""
    settings = load_settings()
    for service in reversed(stack.services(settings)):
        console.print(f"{service.name:<11} {stack.stop(settings, service)}")


@app.command("status")
def status() -> None:
    """What runs where, and whether it answers."""
    settings = load_settings()
    table = Table(title="SutazAI local stack")
    for column in ("service", "pid", "url", "health", "log"):
        table.add_column(column)
    for service in stack.services(settings):
        pid = stack.running_pid(settings, service.name)
        health = ("[green]ok[/]" if stack.healthy(service) else "[red]not answering[/]"
                  ) if pid else "[dim]stopped[/]"
        table.add_row(service.name, str(pid or "-"), service.url, health,
                      str(stack.log_file(settings, service.name)))
    Console().print(table)


@app.command("nightly")
def nightly() -> None:
    """Run the sutazai_nightly DAG through Airflow (``airflow dags test``), then print the
    cycle's summary. Uses the stack's MLflow server when it runs, the embedded store else."""
    settings = load_settings()
    mlflow = next(s for s in stack.services(settings) if s.name == "mlflow")
    uri = mlflow.url if stack.running_pid(settings, "mlflow") and stack.healthy(mlflow) else None
    env = {**os.environ, **stack.airflow_environment(settings, uri)}
    log_path = settings.home / "airflow" / "nightly-dags-test.log"
    airflow = str(stack.BIN / "airflow")
    seed_demo_data(settings)
    console.print("preparing Airflow's database (first time: ~30 s)")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True)
    if migrate.returncode != 0:
        raise SutazAIError(f"airflow db migrate failed:\n{migrate.stdout[-3000:]}"
                           f"{migrate.stderr[-3000:]}")
    console.print(f"running sutazai_nightly through Airflow and KFP (full log: {log_path})")
    with log_path.open("w") as log, subprocess.Popen(
            [airflow, "dags", "test", "sutazai_nightly"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            log.write(line)
            line = ANSI.sub("", line).strip()
            if PROGRESS.search(line) and "[root]" not in line:  # not KFP's echo of a line
                console.print(f"  {line[:200]}", markup=False, highlight=False, soft_wrap=True)
        code = process.wait()
    dag_state = _dag_run_state(log_path)
    report = subprocess.run([str(stack.BIN / "sutazai"), "report"], env=env)
    if code != 0 or dag_state != "success":
        raise SutazAIError(f"the sutazai_nightly run ended {dag_state or f'with exit {code}'}; "
                           f"see {log_path}")
    raise typer.Exit(report.returncode)


def seed_demo_data(settings: Settings) -> None:
    """Give a first run on embedded defaults something to learn from: the seed set goes to
    the inbox when there is no store yet. A production store (a database URL, or the
    production profile's PostgreSQL) never gets demo data."""
    inbox = settings.learning_inbox_dir
    if settings.learning_db_url or settings.production or (
            settings.home / "learning.db").exists() or (
            inbox.is_dir() and any(inbox.iterdir())):
        return
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SEED, inbox / SEED.name)
    console.print(f"first run: demo training data {SEED.name} put in {inbox} (your own jsonl, "
                  "csv or parquet files go there too)")


def _dag_run_state(log_path: os.PathLike[str]) -> str:
    """The final state ``airflow dags test`` reports (it exits 0 even on a failed run)."""
    text = Path(log_path).read_text(errors="replace")
    found = re.findall(r"DagRun Finished: .*?state=(\w+)", text)
    return found[-1].lower() if found else ""


def main() -> None:
    try:
        app()
    except SutazAIError as exc:
        console.print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
