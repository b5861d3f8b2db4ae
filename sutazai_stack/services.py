"""The services of the local stack, their environment, and their process files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import urllib3

from sutazai.config import Settings
from sutazai.errors import ConfigError
from sutazai.security.secrets import (
    AIRFLOW_ADMIN_PASSWORD,
    AIRFLOW_FERNET_KEY,
    AIRFLOW_JWT_SECRET,
    credential,
    read_secret,
    secret_folder,
    secrets_config,
)
from sutazai.serving.process import ManagedProcess, require_free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
INFRA_PROMETHEUS = ROOT / "infra" / "prometheus"
ADMIN = "admin"
VAULT_BACKEND = "airflow.providers.hashicorp.secrets.vault.VaultBackend"


def stack_dir(settings: Settings) -> Path:
    return settings.home / "stack"


def airflow_home(settings: Settings) -> Path:
    return settings.home / "airflow"


def admin_password(settings: Settings) -> str:
    """The Airflow UI admin's password: the secret ``airflow/admin-password``, generated on
    first use (an older home's ``airflow-admin`` file is adopted)."""
    return read_secret(settings, AIRFLOW_ADMIN_PASSWORD, generate=True,
                       legacy="airflow-admin").get_secret_value()


def admin_password_hint(settings: Settings) -> str:
    """Where a person finds the admin's password (never the password itself)."""
    path = secret_folder(settings) / AIRFLOW_ADMIN_PASSWORD
    if path.is_file():
        return f"password in {path}"
    return (f"password: secret {AIRFLOW_ADMIN_PASSWORD} "
            f"({secrets_config(settings).provider} provider)")


def airflow_vault_kwargs(settings: Settings) -> dict[str, object]:
    """``[secrets] backend_kwargs`` for Airflow's HashiCorp VaultBackend, from SutazAI's own
    Vault settings: the same server, mount and auth, with Airflow's connections and
    variables under ``<vault_path>/airflow/connections/<conn_id>`` and
    ``<vault_path>/airflow/variables/<key>`` (field ``value``). No credential is in it:
    a token reaches Airflow as ``VAULT_TOKEN`` in its process environment (or as the token
    file's path), AppRole ids as per-key ``AIRFLOW__SECRETS__BACKEND_KWARG__*`` variables
    (:func:`airflow_secrets_environment`)."""
    config = secrets_config(settings)
    base = "/".join(p for p in (config.vault_path.strip("/"), "airflow") if p)
    kwargs: dict[str, object] = {
        "url": config.vault_addr,
        "mount_point": config.vault_mount.strip("/"),
        "kv_engine_version": 2,
        "connections_path": f"{base}/connections",
        "variables_path": f"{base}/variables",
        "config_path": None,  # Airflow's own configuration stays in its environment
        "auth_type": config.vault_auth,
    }
    if config.vault_auth_mount:
        kwargs["auth_mount_point"] = config.vault_auth_mount
    if config.vault_auth == "token" and config.vault_token_file is not None:
        kwargs["token_path"] = str(config.vault_token_file)  # a Vault Agent may rotate it
    elif config.vault_auth == "kubernetes":
        if not config.vault_role:
            raise ConfigError("Kubernetes auth needs the Vault role: set "
                              "SUTAZAI_SECRETS_VAULT_ROLE")
        kwargs["kubernetes_role"] = config.vault_role
        kwargs["kubernetes_jwt_path"] = str(config.vault_jwt_file)
    if config.vault_namespace:
        kwargs["namespace"] = config.vault_namespace
    if config.vault_ca_cert:
        kwargs["verify"] = str(config.vault_ca_cert)
    return kwargs


def airflow_secrets_environment(settings: Settings) -> dict[str, str]:
    """With the vault provider, Airflow reads connections and variables from the same
    Vault (HashiCorp secrets backend, then its environment and metastore); otherwise
    nothing. Credentials go into the process environment only, never a file, so
    ``airflow.cfg``, the stack's files and logs never hold them (Airflow masks the
    sensitive ``backend_kwargs`` in ``airflow config list``)."""
    config = secrets_config(settings)
    if config.provider != "vault":
        return {}
    env = {"AIRFLOW__SECRETS__BACKEND": VAULT_BACKEND,
           "AIRFLOW__SECRETS__BACKEND_KWARGS": json.dumps(airflow_vault_kwargs(settings))}
    if config.vault_auth == "token" and config.vault_token_file is None:
        env["VAULT_TOKEN"] = credential(
            config.vault_token, None, "the Vault token for Airflow",
            "SUTAZAI_SECRETS_VAULT_TOKEN")().get_secret_value()
    elif config.vault_auth == "approle":
        prefix = "AIRFLOW__SECRETS__BACKEND_KWARG__"
        env[prefix + "ROLE_ID"] = credential(
            config.vault_role_id, config.vault_role_id_file, "the AppRole role_id",
            "SUTAZAI_SECRETS_VAULT_ROLE_ID")().get_secret_value()
        env[prefix + "SECRET_ID"] = credential(
            config.vault_secret_id, config.vault_secret_id_file, "the AppRole secret_id",
            "SUTAZAI_SECRETS_VAULT_SECRET_ID")().get_secret_value()
    return env


def airflow_environment(settings: Settings, mlflow_uri: str | None = None) -> dict[str, str]:
    """Airflow's configuration for SutazAI: examples off, at most 4 parallel tasks,
    LocalExecutor on SQLite under ``<home>/airflow``, the admin's password from SutazAI's
    secrets (never a random one printed to a log), and SutazAI's settings for the tasks."""
    from pipelines.runner import settings_environment

    home = airflow_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    passwords = home / "passwords.json"
    fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({ADMIN: admin_password(settings)}, handle)
    env = {
        **settings_environment(settings),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{settings.airflow_port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL":
            f"http://127.0.0.1:{settings.airflow_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": read_secret(
            settings, AIRFLOW_JWT_SECRET, generate=True,
            legacy="airflow-jwt").get_secret_value(),
        "AIRFLOW__CORE__FERNET_KEY": fernet_key(settings),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        **airflow_secrets_environment(settings),
    }
    if mlflow_uri:
        env["SUTAZAI_MLFLOW_TRACKING_URI"] = mlflow_uri
        env["SUTAZAI_MLFLOW_UI_URL"] = mlflow_uri
    env["SUTAZAI_PUSHGATEWAY_URL"] = pushgateway_url(settings)
    return env


def pushgateway_url(settings: Settings) -> str:
    return settings.pushgateway_url or f"http://127.0.0.1:{settings.pushgateway_port}"


def fernet_key(settings: Settings) -> str:
    """Airflow encrypts connections and variables with it: the secret
    ``airflow/fernet-key`` when it is a Fernet key, else a key derived from it (a generated
    secret is 32 random URL-safe characters, not a Fernet key)."""
    import base64
    import binascii

    raw = read_secret(settings, AIRFLOW_FERNET_KEY, generate=True,
                      legacy="airflow-fernet").get_secret_value()
    try:
        if len(base64.urlsafe_b64decode(raw.encode())) == 32 and len(raw) == 44:
            return raw
    except (binascii.Error, ValueError):
        pass
    return base64.urlsafe_b64encode(raw.encode()[:32].ljust(32, b"0")).decode()


@dataclass
class Service:
    name: str
    port: int
    health_path: str
    command: list[str]
    #: built when the service starts (Airflow's writes its password file), not for status
    environment: Callable[[], dict[str, str]]
    ready_timeout_s: float = 120.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def services(settings: Settings) -> list[Service]:
    mlflow_url = f"http://127.0.0.1:{settings.mlflow_port}"
    base_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    base_env.pop("MLFLOW_TRACKING_URI", None)
    prometheus_config = stack_dir(settings) / "prometheus.yml"
    return [
        Service("mlflow", settings.mlflow_port, "/health", [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", settings.tracking_uri if not settings.tracking_uri.startswith(
                "http") else f"sqlite:///{settings.home / 'mlflow.db'}",
            "--default-artifact-root", str(settings.mlflow_artifacts_dir),
            "--host", "127.0.0.1", "--port", str(settings.mlflow_port), "--workers", "1"],
            lambda: {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
        Service("prometheus", settings.prometheus_port, "/-/ready", [
            "/usr/bin/prometheus", f"--config.file={prometheus_config}",
            f"--storage.tsdb.path={stack_dir(settings) / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{settings.prometheus_port}"], lambda: base_env,
            30.0),
        Service("pushgateway", settings.pushgateway_port, "/-/ready", [
            "/usr/bin/prometheus-pushgateway",
            f"--web.listen-address=127.0.0.1:{settings.pushgateway_port}"], lambda: base_env,
            30.0),
        Service("airflow", settings.airflow_port, "/api/v2/monitor/health",
                [str(BIN / "airflow"), "standalone"],
                lambda: {**os.environ, **airflow_environment(settings, mlflow_url)}, 240.0),
    ]


def write_prometheus_config(settings: Settings) -> None:
    """Scrape ``sutazai serve`` (its gateway's /metrics, with a viewer key of its own), the
    Pushgateway (batch metrics, ``honor_labels``) and Prometheus itself, with infra's
    recording and alert rules."""
    folder = stack_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    rules = []
    for name in ("recording.yml", "alerts.yml"):
        shutil.copyfile(INFRA_PROMETHEUS / name, folder / name)
        rules.append(str(folder / name))
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "rule_files": rules,
        "scrape_configs": [
            {"job_name": "sutazai-serving",
             "authorization": {"type": "Bearer",
                               "credentials_file": str(metrics_key_file(settings))},
             "static_configs": [{"targets": [f"127.0.0.1:{settings.serve_port}"]}]},
            {"job_name": "sutazai-pushgateway", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{settings.pushgateway_port}"]}]},
            {"job_name": "prometheus",
             "static_configs": [{"targets": [f"127.0.0.1:{settings.prometheus_port}"]}]},
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config, indent=2))


def metrics_key_file(settings: Settings) -> Path:
    """A viewer API key for Prometheus, made once (0600) and added to the key table."""
    from sutazai.security.access import KeyStore, new_key

    path = stack_dir(settings) / "metrics-key"
    if not path.exists():
        key, entry = new_key("prometheus-local", "viewer")
        KeyStore(settings).add(entry)
        path.touch(mode=0o600)
        path.write_text(key)
    return path


def pid_file(settings: Settings, name: str) -> Path:
    return stack_dir(settings) / f"{name}.pid"


def log_file(settings: Settings, name: str) -> Path:
    return stack_dir(settings) / "logs" / f"{name}.log"


def running_pid(settings: Settings, name: str) -> int | None:
    path = pid_file(settings, name)
    try:
        pid = int(path.read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    return pid


def healthy(service: Service) -> bool:
    pool = urllib3.PoolManager(timeout=2.0, retries=False)
    with contextlib.suppress(urllib3.exceptions.HTTPError):
        return pool.request("GET", service.url + service.health_path).status == 200
    return False


def start(settings: Settings, service: Service) -> str:
    """Start ``service`` unless it runs; wait until it answers its health check."""
    if running_pid(settings, service.name) is not None:
        return "already running"
    require_free_port("127.0.0.1", service.port)
    process = ManagedProcess(service.name, service.command, log_file(settings, service.name),
                             url=service.url, health_path=service.health_path,
                             env=service.environment(), cwd=stack_dir(settings))
    process.start()
    assert process.process is not None
    pid_file(settings, service.name).write_text(str(process.process.pid))
    seconds = process.wait_ready(service.ready_timeout_s)
    return f"started in {seconds:.1f}s"


def stop(settings: Settings, name: str, grace_s: float = 20.0) -> str:
    """SIGTERM the service's process group, SIGKILL it after ``grace_s``."""
    pid = running_pid(settings, name)
    pid_file(settings, name).unlink(missing_ok=True)
    if pid is None:
        return "not running"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return "stopped"
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return "killed"
