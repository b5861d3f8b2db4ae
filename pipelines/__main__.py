"""``python -m pipelines``: compile the pipelines, or run one here or on Kubeflow."""

from __future__ import annotations

import json
import sys

import typer

from pipelines.runner import COMPILED_DIR, PipelineError, compile_pipeline, run_pipeline

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="SutazAI's Kubeflow pipelines.")


@app.command("compile")
def compile_command() -> None:
    """Write every pipeline's IR YAML to pipelines/compiled/ (commit the result)."""
    from pipelines.definitions import PIPELINES

    COMPILED_DIR.mkdir(exist_ok=True)
    for name in PIPELINES:
        typer.echo(compile_pipeline(name, COMPILED_DIR / f"{name}.yaml"))


@app.command("run")
def run_command(name: str,
                argument: list[str] = typer.Option([], "--arg", help="NAME=JSON, repeatable"),
                ) -> None:
    """Run pipeline NAME (locally, or on Kubeflow when SUTAZAI_KFP_HOST is set)."""
    arguments = {}
    for item in argument:
        key, _, value = item.partition("=")
        try:
            arguments[key] = json.loads(value)
        except json.JSONDecodeError:
            arguments[key] = value
    try:
        run = run_pipeline(name, arguments)
    except PipelineError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    typer.echo(run.describe())
    typer.echo(json.dumps(run.output, indent=2, default=str))


if __name__ == "__main__":
    app()
