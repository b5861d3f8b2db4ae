"""Airflow reads its connections and variables from SutazAI's Vault (real OpenBao dev server).

With ``SUTAZAI_SECRETS_PROVIDER=vault`` the local stack configures Airflow's HashiCorp
secrets backend from SutazAI's own Vault settings. Checked here with Airflow's own
``VaultBackend`` class, built from exactly the kwargs ``sutazai_stack`` generates, and with
Airflow's own configuration loader in a process that has only the generated environment
(after writing ``airflow.cfg`` as every ``airflow`` command does); the Vault token must
reach Airflow through that environment and never land in a file.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from secrets import token_urlsafe

import pytest

from sutazai.config import Settings
from sutazai_stack.services import VAULT_BACKEND, airflow_environment, airflow_vault_kwargs
from tests.openbao import OpenBao, running_openbao

POLICY = 'path "secret/data/sutazai/*" { capabilities = ["read"] }'
CONN_ID, VARIABLE = "sutazai_mlflow", "sutazai_threshold"

LOAD = """
import json, sys
from airflow.configuration import (get_custom_secret_backend,
                                   write_default_airflow_configuration_if_needed)
write_default_airflow_configuration_if_needed()  # what every `airflow` command does first
server, worker = get_custom_secret_backend(), get_custom_secret_backend(worker_mode=True)
print(json.dumps({
    "class": f"{type(server).__module__}.{type(server).__name__}",
    "variable": server.get_variable(sys.argv[1]),
    "connection": server.get_conn_value(sys.argv[2]),
    "worker_variable": worker.get_variable(sys.argv[1]),
}))
"""


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBao]:
    with running_openbao(tmp_path / "openbao") as server:
        server.root().sys.create_or_update_policy("sutazai-read", POLICY)
        yield server


def fake() -> str:
    return "v-" + token_urlsafe(18)


def files_containing(root: Path, text: str) -> list[str]:
    return [str(path) for path in root.rglob("*")
            if path.is_file() and text.encode() in path.read_bytes()]


def test_airflow_reads_connections_and_variables_from_vault(
        bao: OpenBao, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    root = bao.root()
    token = root.auth.token.create(policies=["sutazai-read"], ttl="1h")["auth"]["client_token"]
    password, threshold = fake(), fake()
    root.secrets.kv.v2.create_or_update_secret(
        path=f"sutazai/airflow/connections/{CONN_ID}", mount_point="secret",
        secret={"conn_type": "http", "host": "mlflow.internal", "port": 5000,
                "login": "sutazai", "password": password})
    root.secrets.kv.v2.create_or_update_secret(
        path=f"sutazai/airflow/variables/{VARIABLE}", mount_point="secret",
        secret={"value": threshold})
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "vault")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_ADDR", bao.addr)
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_TOKEN", token)

    env = airflow_environment(settings)
    assert env["AIRFLOW__SECRETS__BACKEND"] == VAULT_BACKEND
    kwargs = json.loads(env["AIRFLOW__SECRETS__BACKEND_KWARGS"])
    assert kwargs == airflow_vault_kwargs(settings) == {
        "url": bao.addr, "mount_point": "secret", "kv_engine_version": 2,
        "connections_path": "sutazai/airflow/connections",
        "variables_path": "sutazai/airflow/variables", "config_path": None,
        "auth_type": "token"}
    assert env["VAULT_TOKEN"] == token  # the process environment, not the kwargs

    # Airflow's own backend class, from exactly those kwargs, the token from the environment
    from airflow.providers.hashicorp.secrets.vault import VaultBackend

    monkeypatch.setenv("VAULT_TOKEN", env["VAULT_TOKEN"])
    backend = VaultBackend(**kwargs)
    assert backend.get_variable(VARIABLE) == threshold
    connection = json.loads(backend.get_conn_value(CONN_ID) or "{}")
    assert (connection["host"], connection["login"], connection["password"]) == (
        "mlflow.internal", "sutazai", password)
    assert backend.get_variable("missing") is None and backend.get_conn_value("missing") is None

    # Airflow's configuration loader, in a process with only the generated environment
    loaded = subprocess.run([sys.executable, "-c", LOAD, VARIABLE, CONN_ID], env=env,
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    seen = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert seen["class"] == VAULT_BACKEND
    assert seen["variable"] == seen["worker_variable"] == threshold  # workers use it too
    assert json.loads(seen["connection"])["password"] == password
    assert token not in loaded.stderr

    # the token is in no file SutazAI or Airflow wrote (airflow.cfg included), nor logged
    assert (Path(env["AIRFLOW_HOME"]) / "airflow.cfg").is_file()
    assert not files_containing(settings.home, token)
    assert not files_containing(tmp_path, token)
    assert token not in env["AIRFLOW__SECRETS__BACKEND_KWARGS"]
    assert token not in caplog.text


def test_without_vault_airflow_keeps_its_own_backends(settings: Settings) -> None:
    env = airflow_environment(settings)
    assert not {"AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS",
                "VAULT_TOKEN"} & set(env)


def test_token_file_and_kubernetes_auth_pass_paths_only(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "vault-token"
    token_file.write_text(fake())
    token_file.chmod(0o600)
    monkeypatch.setenv("SUTAZAI_SECRETS_PROVIDER", "vault")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_PATH", "platform/sutazai")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_TOKEN_FILE", str(token_file))
    kwargs = airflow_vault_kwargs(settings)
    assert kwargs["token_path"] == str(token_file)
    assert kwargs["connections_path"] == "platform/sutazai/airflow/connections"
    from sutazai_stack.services import airflow_secrets_environment

    assert "VAULT_TOKEN" not in airflow_secrets_environment(settings)
    monkeypatch.delenv("SUTAZAI_SECRETS_VAULT_TOKEN_FILE")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_AUTH", "kubernetes")
    monkeypatch.setenv("SUTAZAI_SECRETS_VAULT_ROLE", "sutazai")
    kwargs = airflow_vault_kwargs(settings)
    assert (kwargs["auth_type"], kwargs["kubernetes_role"]) == ("kubernetes", "sutazai")
    assert kwargs["kubernetes_jwt_path"].endswith("serviceaccount/token")
    assert set(airflow_secrets_environment(settings)) == {
        "AIRFLOW__SECRETS__BACKEND", "AIRFLOW__SECRETS__BACKEND_KWARGS"}
