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
from sutazai.production.databases import client_environment
from sutazai.security.secret_base import POSTGRES_PASSWORD
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
    LocalExecutor on SQLite under ``<home>/airflow`` (PostgreSQL in the production
    profile), the admin's password from SutazAI's secrets (never a random one printed to a
    log), and SutazAI's settings for the tasks."""
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
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": settings.airflow_db_url,
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
        **client_environment(settings, settings.airflow_db_url),
    }
    if settings.production:  # psycopg 3 for Airflow's async engine too (not asyncpg)
        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC"] = settings.airflow_db_url.replace(
            "postgresql://", "postgresql+psycopg://", 1)
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
    #: whether it answers, for a server that speaks no HTTP (default: GET health_path)
    probe: Callable[[], bool] | None = None
    #: before it starts: create a cluster, write a configuration
    prepare: Callable[[], object] | None = None
    #: once it answers: create roles and databases
    after_start: Callable[[], object] | None = None
    #: why it is not started now (None: start it)
    skip_reason: Callable[[], str | None] | None = None
    #: further Popen arguments (PostgreSQL refuses to run as root)
    popen_options: dict[str, object] | None = None
    stop_signal: int = signal.SIGTERM
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


#: The databases of the production profile, all owned by settings.postgres_user.
DATABASES = ("mlflow", "airflow", "sutazai_learning", "sutazai_nas")
#: `sutazai serve` replicas behind nginx in the production profile.
REPLICAS = 2


def services(settings: Settings) -> list[Service]:
    """The stack in start order: the shared databases first in the production profile,
    then MLflow, Prometheus, the Pushgateway and Airflow, then the serving replicas."""
    mlflow_url = f"http://127.0.0.1:{settings.mlflow_port}"
    base_env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    base_env.pop("MLFLOW_TRACKING_URI", None)
    prometheus_config = stack_dir(settings) / "prometheus.yml"
    core = [
        Service("mlflow", settings.mlflow_port, "/health", [
            str(BIN / "mlflow"), "server", "--backend-store-uri", settings.mlflow_store_url,
            "--default-artifact-root", str(settings.mlflow_artifacts_dir),
            "--host", "127.0.0.1", "--port", str(settings.mlflow_port), "--workers", "1"],
            lambda: {**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                     **client_environment(settings, settings.mlflow_store_url)}),
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
    if not settings.production:
        return core
    return [*database_services(settings), *core, *serving_services(settings)]


def database_services(settings: Settings) -> list[Service]:
    """PostgreSQL (a cluster of the stack's own) and Redis, for the production profile."""
    from sutazai.production.postgres import LocalPostgres
    from sutazai.production.redis_server import answers, redis_binary, write_config
    from sutazai.security.rate_limit import PASSWORD_SECRET

    cluster = LocalPostgres(settings.postgres_data_dir, settings.postgres_port,
                            log_file(settings, "postgres"))
    redis_dir = stack_dir(settings) / "redis"

    def create_roles() -> None:
        password = read_secret(settings, POSTGRES_PASSWORD, generate=True).get_secret_value()
        cluster.ensure_role(settings.postgres_user, password, list(DATABASES))

    def redis_password() -> str:
        return read_secret(settings, PASSWORD_SECRET, generate=True).get_secret_value()

    plain_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    return [
        Service("postgres", settings.postgres_port, "", cluster.command(), lambda: plain_env,
                60.0, probe=cluster.ready, prepare=cluster.init, after_start=create_roles,
                popen_options=cluster.popen_options(), stop_signal=signal.SIGINT,
                scheme="postgresql"),
        Service("redis", settings.redis_port, "", [redis_binary(), str(redis_dir / "redis.conf")],
                lambda: plain_env, 30.0,
                probe=lambda: answers(settings.redis_port, redis_password()),
                prepare=lambda: write_config(redis_dir, settings.redis_port, redis_password()),
                scheme="redis"),
    ]


def serving_services(settings: Settings) -> list[Service]:
    """Two ``sutazai serve --champions`` replicas on the ports after serve_port, and nginx on
    serve_port balancing them round-robin, skipping a replica that refuses connections."""
    from pipelines.runner import settings_environment
    from sutazai.serving.balancer import nginx_command, write_config

    def environment() -> dict[str, str]:
        return {**os.environ, **settings_environment(settings)}

    replicas = [Service(f"serve-{n}", settings.serve_port + n, "/health",
                        [str(BIN / "sutazai"), "serve", "--champions", "--port",
                         str(settings.serve_port + n)], environment, 300.0,
                        skip_reason=lambda: no_champion(settings))
                for n in range(1, REPLICAS + 1)]
    workdir = stack_dir(settings) / "balancer"
    balancer = Service(
        "balancer", settings.serve_port, "/nginx-health", nginx_command(workdir),
        lambda: dict(os.environ), 30.0, skip_reason=lambda: no_champion(settings),
        prepare=lambda: write_config([r.url for r in replicas], workdir, settings.serve_port,
                                     max_fails=1),
        stop_signal=signal.SIGQUIT)  # nginx's graceful stop: requests in flight finish
    return [*replicas, balancer]


def no_champion(settings: Settings) -> str | None:
    from sutazai.errors import NotFoundError
    from sutazai.serving.service import champion_targets

    try:
        champion_targets(settings)
    except NotFoundError as exc:
        return str(exc).split(":", 1)[0] + "; run the nightly cycle, then make up again"
    return None


def serving_ports(settings: Settings) -> list[int]:
    """Where Prometheus scrapes the gateways: each replica in the production profile."""
    if settings.production:
        return [settings.serve_port + n for n in range(1, REPLICAS + 1)]
    return [settings.serve_port]


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
             "static_configs": [{"targets": [f"127.0.0.1:{port}"
                                             for port in serving_ports(settings)]}]},
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
    if service.probe is not None:
        return service.probe()
    pool = urllib3.PoolManager(timeout=2.0, retries=False)
    with contextlib.suppress(urllib3.exceptions.HTTPError):
        return pool.request("GET", service.url + service.health_path).status == 200
    return False


def start(settings: Settings, service: Service) -> str:
    """Start ``service`` unless it runs; wait until it answers its health check."""
    if running_pid(settings, service.name) is not None:
        return "already running"
    reason = service.skip_reason() if service.skip_reason else None
    if reason:
        return f"not started: {reason}"
    require_free_port("127.0.0.1", service.port)
    if service.prepare is not None:
        service.prepare()
    process = ManagedProcess(service.name, service.command, log_file(settings, service.name),
                             url=service.url, health_path=service.health_path,
                             env=service.environment(), cwd=stack_dir(settings),
                             popen_options=service.popen_options)
    process.start()
    assert process.process is not None
    pid_file(settings, service.name).write_text(str(process.process.pid))
    if service.probe is None:
        seconds = process.wait_ready(service.ready_timeout_s)
    else:
        seconds = _wait_for(process, service.probe, service.ready_timeout_s)
    if service.after_start is not None:
        service.after_start()
    return f"started in {seconds:.1f}s"


def _wait_for(process: ManagedProcess, probe: Callable[[], bool], timeout_s: float) -> float:
    assert process.process is not None
    deadline = process.started_at + timeout_s
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise ConfigError(f"{process.name} exited with code {process.process.returncode} "
                              f"while starting; see {process.log_path}")
        if probe():
            return time.monotonic() - process.started_at
        time.sleep(0.1)
    process.stop()
    raise ConfigError(f"{process.name} did not answer within {timeout_s:.0f}s; see "
                      f"{process.log_path}")


def stop(settings: Settings, service: Service, grace_s: float = 20.0) -> str:
    """Send the service's stop signal to its process group, SIGKILL it after ``grace_s``."""
    pid = running_pid(settings, service.name)
    pid_file(settings, service.name).unlink(missing_ok=True)
    if pid is None:
        return "not running"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, service.stop_signal)
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
