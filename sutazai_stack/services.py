"""The services of the local stack, their environment, and their process files."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import urllib3

from sutazai.config import Settings
from sutazai.secrets import generated_secret, secret_value
from sutazai.serving.process import ManagedProcess, require_free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ADMIN = "admin"


def stack_dir(settings: Settings) -> Path:
    return settings.home / "stack"


def airflow_home(settings: Settings) -> Path:
    return settings.home / "airflow"


def admin_password(settings: Settings) -> str:
    return secret_value(settings.airflow_admin_password, settings.home, "airflow-admin")


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
        "AIRFLOW__API_AUTH__JWT_SECRET": generated_secret(settings.home, "airflow-jwt"),
        "AIRFLOW__CORE__FERNET_KEY": fernet_key(settings),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if mlflow_uri:
        env["SUTAZAI_MLFLOW_TRACKING_URI"] = mlflow_uri
        env["SUTAZAI_MLFLOW_UI_URL"] = mlflow_uri
    return env


def fernet_key(settings: Settings) -> str:
    """Airflow encrypts connections and variables with it; generated once, kept 0600."""
    import base64

    raw = generated_secret(settings.home, "airflow-fernet")
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
        Service("airflow", settings.airflow_port, "/api/v2/monitor/health",
                [str(BIN / "airflow"), "standalone"],
                lambda: {**os.environ, **airflow_environment(settings, mlflow_url)}, 240.0),
    ]


def write_prometheus_config(settings: Settings) -> None:
    """Scrape ``sutazai serve`` (its gateway's /metrics) and Prometheus itself."""
    config = {
        "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
        "scrape_configs": [
            {"job_name": "sutazai-serving",
             "static_configs": [{"targets": [f"127.0.0.1:{settings.serve_port}"]}]},
            {"job_name": "prometheus",
             "static_configs": [{"targets": [f"127.0.0.1:{settings.prometheus_port}"]}]},
        ],
    }
    path = stack_dir(settings) / "prometheus.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))


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
