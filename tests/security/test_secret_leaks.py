"""No secret value SutazAI reads reaches a log record, MLflow, the audit log or a settings dump.

Known values are put behind both kinds of embedded provider (``SUTAZAI_SECRET_*`` variables
and files in ``<home>/secrets``); then real code paths read and use them: the provider and
its audit trail, a generated secret, a write, the MLflow credentials hook, the embedded
graph server started with its password, Airflow's environment, a SQLite-backed MLflow run
given the settings and the secrets as params, and the settings dumped every usual way.
Every logger is captured at DEBUG, including those that do not propagate to the root.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from secrets import token_urlsafe

import pytest
from pydantic import SecretStr

from sutazai.config import Settings
from sutazai.security.audit import open_audit_log
from sutazai.security.secrets import (
    AIRFLOW_ADMIN_PASSWORD,
    AIRFLOW_JWT_SECRET,
    GRAPH_PASSWORD,
    KUBEFLOW_TOKEN,
    MLFLOW_PASSWORD,
    MLFLOW_USERNAME,
    SERVING_API_KEYS,
    SecretError,
    SecretNotFoundError,
    export_mlflow_credentials,
    read_secret,
    secrets_config,
    settings_provider,
)

MLFLOW_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                    "MLFLOW_TRACKING_TOKEN")


def known(prefix: str) -> str:
    return f"{prefix}-{token_urlsafe(20)}"  # made at run time: nothing secret-looking in git


@pytest.fixture
def every_logger(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at DEBUG on the root and on every logger: those a library set to a higher
    level are lowered, and those that keep their records to themselves get its handler."""
    caplog.set_level(logging.DEBUG)
    levels: dict[logging.Logger, int] = {}
    hooked: list[logging.Logger] = []

    def hook() -> None:
        for logger in list(logging.root.manager.loggerDict.values()):
            if not isinstance(logger, logging.Logger):
                continue
            if logger.level > logging.DEBUG:
                levels.setdefault(logger, logger.level)
                logger.setLevel(logging.DEBUG)
            if not logger.propagate and caplog.handler not in logger.handlers:
                hooked.append(logger)
                logger.addHandler(caplog.handler)

    hook()
    caplog.hook = hook  # type: ignore[attr-defined]  # call again after heavy imports
    yield caplog
    for logger in hooked:
        logger.removeHandler(caplog.handler)
    for logger, level in levels.items():
        logger.setLevel(level)


def private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(text)
    path.chmod(0o600)


@pytest.mark.slow  # creating the MLflow SQLite store and starting the embedded graph: ~10 s
def test_no_secret_reaches_logs_mlflow_audit_or_dumps(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        every_logger: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    from sutazai.knowledge.service import open_store
    from sutazai.registry import open_registry
    from sutazai_stack.services import airflow_environment

    caplog = every_logger
    caplog.hook()  # type: ignore[attr-defined]  # the loggers those imports made
    for variable in MLFLOW_VARIABLES:  # exported below: removed again after the test
        monkeypatch.setenv(variable, "placeholder")
        monkeypatch.delenv(variable)
    # env provider
    values = {KUBEFLOW_TOKEN: known("kfp"), MLFLOW_USERNAME: known("user"),
              MLFLOW_PASSWORD: known("mlflow"), AIRFLOW_ADMIN_PASSWORD: known("admin")}
    monkeypatch.setenv("SUTAZAI_SECRET_KUBEFLOW_TOKEN", values[KUBEFLOW_TOKEN])
    monkeypatch.setenv("SUTAZAI_SECRET_MLFLOW_USERNAME", values[MLFLOW_USERNAME])
    monkeypatch.setenv("SUTAZAI_SECRET_MLFLOW_PASSWORD", values[MLFLOW_PASSWORD])
    monkeypatch.setenv("SUTAZAI_SECRET_AIRFLOW_ADMIN_PASSWORD", values[AIRFLOW_ADMIN_PASSWORD])
    # file provider (the embedded default), one read and one written through put
    values[GRAPH_PASSWORD] = known("graph")
    private(settings.home / "secrets" / "graph" / "password", values[GRAPH_PASSWORD])
    values[SERVING_API_KEYS] = json.dumps({known("key"): {"role": "admin"}})
    provider = settings_provider(settings)
    assert secrets_config(settings).provider == "file" and provider.label.startswith("env,file:")
    provider.put(SERVING_API_KEYS, values[SERVING_API_KEYS])

    # reads through the one entry point, a generated secret, a missing one
    read = {name: read_secret(settings, name).get_secret_value() for name in values}
    assert read == values
    values[AIRFLOW_JWT_SECRET] = read_secret(settings, AIRFLOW_JWT_SECRET,
                                             generate=True).get_secret_value()
    with pytest.raises(SecretNotFoundError) as missing:
        read_secret(settings, "mlflow/token")
    unsafe = settings.home / "secrets" / "tls" / "key"
    private(unsafe, known("tls"))
    values["tls/key"] = unsafe.read_text()
    unsafe.chmod(0o644)
    with pytest.raises(SecretError) as refused:
        read_secret(settings, "tls/key")
    logging.getLogger("sutazai.test").info("secrets %s and %s", read_secret(
        settings, KUBEFLOW_TOKEN), read_secret(settings, GRAPH_PASSWORD))

    # MLflow's client credentials (an http server), then a SQLite-backed run
    assert export_mlflow_credentials("https://mlflow.internal", settings) == [
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == values[MLFLOW_PASSWORD]
    registry = open_registry(settings)
    caplog.hook()  # type: ignore[attr-defined]  # mlflow's loggers exist now
    params = {k: v for k, v in settings.model_dump(mode="json").items() if v is not None}
    secret_params = {name.replace("/", "."): read_secret(settings, name) for name in values
                     if name != "tls/key"}
    run_id = registry.start_run("leak-check", tags={"sutazai.step": "leak-check"},
                                params={**params, **secret_params, "settings": settings},
                                experiment="sutazai-leak-check")
    client = MlflowClient(settings.tracking_uri)
    client.log_metric(run_id, "secrets_read", len(values))
    client.set_tag(run_id, "provider", provider.label)
    client.set_terminated(run_id)
    run = client.get_run(run_id)
    assert run.data.params["kubeflow.token"] == "**********"

    # the embedded graph server started with its password; Airflow's environment
    with open_store(settings) as store:
        assert store.stats() is not None
    airflow = airflow_environment(settings)
    assert json.loads((Path(airflow["AIRFLOW_HOME"]) / "passwords.json").read_text()) == {
        "admin": values[AIRFLOW_ADMIN_PASSWORD]}  # the file Airflow reads it from (0600)

    audit_log = open_audit_log(settings)
    audit_text = audit_log.path.read_text()
    assert audit_log.verify().ok
    targets = {json.loads(line)["target"] for line in audit_text.splitlines()}
    assert set(values) <= targets
    log_files = {str(path): path.read_text(errors="replace")
                 for path in settings.home.rglob("*.log")}
    assert any(name.endswith("falkordb.log") for name in log_files)
    records = "\n".join(f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}"
                        for r in caplog.records)
    assert "secret serving/api-keys written" in records  # the capture works
    mlflow_names = json.dumps({"params": run.data.params, "tags": run.data.tags,
                               "metrics": sorted(run.data.metrics)})
    for name, value in values.items():
        for where, text in (
                ("log records", records), ("captured log text", caplog.text),
                ("a log file", json.dumps(log_files)), ("the audit log", audit_text),
                ("MLflow params, tags or metric names", mlflow_names),
                ("an error", f"{missing.value} {refused.value}"),
                ("repr(settings)", repr(settings)), ("str(settings)", str(settings)),
                ("settings.model_dump_json()", settings.model_dump_json()),
                ("the secrets config", repr(secrets_config(settings))
                 + secrets_config(settings).model_dump_json()),
                ("repr(provider)", repr(provider)),
                ("a SecretStr's repr", repr(SecretStr(value)))):
            assert value not in text, f"secret {name} leaked into {where}"
