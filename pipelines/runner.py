"""Run a SutazAI pipeline here (``kfp.local``) or on Kubeflow (``kfp.Client``).

The settings choose: with ``SUTAZAI_KFP_HOST`` unset, the steps run as subprocesses of this
Python (``SubprocessRunner(use_venv=False)``: no Docker, no PyPI at run time); with it set,
the compiled pipeline is submitted to that Kubeflow Pipelines API, in an experiment named
after the pipeline, and the call waits for the run and fails when the run fails.

Either way the run is recorded as an MLflow run (experiment ``sutazai-pipelines``) holding
the pipeline's name, arguments, run id, state, duration and output, so that every Airflow
task can log one link a person can open.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from sutazai.config import Settings, load_settings
from sutazai.environ import overlaid
from sutazai.errors import SutazAIError
from sutazai.observability.metrics import pipeline_run, push_repository_metrics
from sutazai.registry import open_registry

log = logging.getLogger(__name__)

COMPILED_DIR = Path(__file__).parent / "compiled"
SUCCEEDED = "SUCCEEDED"


class PipelineError(SutazAIError):
    """A pipeline run failed, or its arguments or endpoint are wrong."""

    def __init__(self, message: str, run_id: str = "", where: str = "") -> None:
        super().__init__(message)
        self.run_id, self.where = run_id, where


class PipelineRun(BaseModel):
    pipeline: str
    mode: Literal["local", "kubeflow"]
    run_id: str
    state: str
    output: Any = None
    seconds: float
    mlflow_run_id: str
    mlflow_url: str | None
    where: str  # the local run's folder, or the Kubeflow run's UI address

    def describe(self) -> str:
        link = self.mlflow_url or f"MLflow run {self.mlflow_run_id}"
        return (f"pipeline {self.pipeline} run {self.run_id} ({self.mode}) {self.state} in "
                f"{self.seconds:.1f}s; {link}; {self.where}")


def pipeline_function(name: str) -> Any:
    from pipelines.definitions import PIPELINES

    if name not in PIPELINES:
        raise PipelineError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
    return PIPELINES[name]


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting, as the ``SUTAZAI_*`` variables a step's process reads back.

    The whole settings object travels, serialised once (paths absolute, derived defaults
    such as the tracking URI resolved, lists and models as JSON), so a step sees exactly
    what the caller saw; a hand-kept list let a forgotten setting fall back to its default
    inside the step. Settings hold no secrets (those come from the secret provider).
    Settings left at their defaults are left out, so the step's own defaults (the same
    code) apply; a ``secrets_*`` field, should Settings grow one, stays unset unless set,
    as ``secrets_config`` expects.
    """
    values = settings.model_dump(mode="json", exclude_defaults=True)
    values.update(home=str(settings.home), repository_dir=str(settings.repository_root),
                  mlflow_tracking_uri=settings.tracking_uri,
                  documents_dir=str(settings.documents_root))
    environment = {}
    for name, value in values.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        environment[f"SUTAZAI_{name.upper()}"] = text
    return environment


def compile_pipeline(name: str, path: Path) -> Path:
    from kfp import compiler

    compiler.Compiler().compile(pipeline_function(name), str(path))
    return path


def run_pipeline(name: str, arguments: dict[str, Any] | None = None,
                 settings: Settings | None = None) -> PipelineRun:
    """Run pipeline ``name`` with ``arguments``; raise PipelineError when it fails."""
    settings = settings or load_settings()
    arguments = arguments or {}
    pipeline_function(name)  # unknown names fail before anything is recorded
    registry = open_registry(settings)
    mode: Literal["local", "kubeflow"] = "kubeflow" if settings.kfp_host else "local"
    mlflow_run_id = registry.start_run(
        f"{name} pipeline", tags={"sutazai.step": "pipeline", "sutazai.pipeline": name,
                                  "sutazai.mode": mode},
        params={"pipeline": name, "mode": mode,
                **{f"arg.{k}": json.dumps(v) for k, v in arguments.items()}},
        experiment=settings.pipeline_experiment)
    # one trace for the run (steps' spans under it) and its end pushed as metrics
    with pipeline_run(settings, name, **{"sutazai.mode": mode}):
        started = time.monotonic()
        run_id, state, output, where, error = "", "FAILED", None, "", ""
        try:
            if mode == "local":
                run_id, output, where = _run_locally(name, arguments, settings)
            else:
                run_id, where = _submit(name, arguments, settings)
            state = SUCCEEDED
        except PipelineError as exc:
            error = str(exc)
            run_id, where = exc.run_id, exc.where
        finally:
            run = PipelineRun(pipeline=name, mode=mode, run_id=run_id, state=state,
                              output=output, seconds=time.monotonic() - started,
                              mlflow_run_id=mlflow_run_id,
                              mlflow_url=mlflow_run_url(settings, registry, mlflow_run_id),
                              where=where)
            _record(registry, run, error)
        if error:
            raise PipelineError(f"{error} ({run.mlflow_url or 'MLflow run ' + mlflow_run_id})",
                                run.run_id, run.where)
        if mode == "local" and name == "model_sync":
            push_repository_metrics(settings)
    return run


def mlflow_run_url(settings: Settings, registry: Any, run_id: str) -> str | None:
    base = settings.mlflow_ui
    if base is None:
        return None
    experiment = registry.experiment_id(settings.pipeline_experiment)
    return f"{base}/#/experiments/{experiment}/runs/{run_id}"


def _record(registry: Any, run: PipelineRun, error: str) -> None:
    client = registry.client
    client.set_tag(run.mlflow_run_id, "sutazai.run_id", run.run_id)
    client.set_tag(run.mlflow_run_id, "sutazai.state", run.state)
    client.set_tag(run.mlflow_run_id, "sutazai.where", run.where)
    client.log_metric(run.mlflow_run_id, "seconds", run.seconds)
    client.log_text(run.mlflow_run_id, run.model_dump_json(indent=2), "pipeline_run.json")
    if error:
        client.log_text(run.mlflow_run_id, error, "error.txt")
    client.set_terminated(run.mlflow_run_id, "FINISHED" if run.state == SUCCEEDED else "FAILED")


def _run_locally(name: str, arguments: dict[str, Any], settings: Settings
                 ) -> tuple[str, Any, str]:
    """Every step a subprocess of this Python; artifacts under the run's own folder."""
    from kfp import local

    run_id = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    root = settings.pipeline_root_dir / run_id
    root.mkdir(parents=True, exist_ok=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root),
               raise_on_error=True)
    log.info("pipeline %s: local run %s, artifacts in %s", name, run_id, root)
    try:
        # transformers' tqdm bars would flood the step logs; the steps log their progress
        quiet = {"TQDM_DISABLE": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        with overlaid({**settings_environment(settings), **quiet}), \
                warnings.catch_warnings():
            # requests, limits and display names are for the cluster; locally they are noise
            warnings.filterwarnings("ignore", message=".*no effect in the current local runner")
            warnings.filterwarnings("ignore", message=".*non-Python base image")
            task = pipeline_function(name)(**arguments)
    except Exception as exc:  # kfp.local raises RuntimeError for a failed step
        raise PipelineError(f"pipeline {name} run {run_id} failed: {exc}; the steps' outputs are "
                       f"in {root}", run_id, str(root)) from None
    return run_id, task.output if task.outputs else None, str(root)


def _submit(name: str, arguments: dict[str, Any], settings: Settings) -> tuple[str, str]:
    """Submit the compiled pipeline to Kubeflow and wait for its end."""
    import kfp

    from sutazai.security.secrets import KUBEFLOW_TOKEN, optional_secret

    host = settings.kfp_host or ""
    secret = optional_secret(settings, KUBEFLOW_TOKEN)
    token = secret.get_secret_value() if secret is not None else None
    try:
        client = kfp.Client(host=host, existing_token=token, namespace=settings.kfp_namespace)
    except Exception as exc:  # the constructor calls the API's health check
        raise PipelineError(f"cannot reach Kubeflow Pipelines at {host}: {exc}; check "
                            "SUTAZAI_KFP_HOST and the secret kubeflow/token") from None
    with tempfile.TemporaryDirectory() as folder:
        package = compile_pipeline(name, Path(folder) / f"{name}.yaml")
        run_name = f"{name} {time.strftime('%Y-%m-%d %H:%M:%S')}"
        try:
            created = client.create_run_from_pipeline_package(
                str(package), arguments=arguments, run_name=run_name,
                experiment_name=f"sutazai-{name}", namespace=settings.kfp_namespace)
        except Exception as exc:
            raise PipelineError(f"Kubeflow refused pipeline {name}: {exc}") from None
    run_id = str(created.run_id)
    where = f"{host.rstrip('/')}/#/runs/details/{run_id}"
    log.info("pipeline %s: submitted run %s (%s)", name, run_id, where)
    try:
        finished = client.wait_for_run_completion(run_id, timeout=int(settings.kfp_run_timeout_s))
    except Exception as exc:
        raise PipelineError(f"waiting for Kubeflow run {run_id} failed: {exc}", run_id,
                       where) from None
    state = str(finished.state)
    if state != SUCCEEDED:
        raise PipelineError(f"Kubeflow run {run_id} of pipeline {name} ended {state}", run_id,
                            where)
    return run_id, where
