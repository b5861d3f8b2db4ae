"""Real servers on 127.0.0.1 for the test suite, each started as a child process.

Every server gets a free port, keeps all its state under a temporary folder, is polled
until it answers, and is stopped (SIGTERM, then SIGKILL) when the fixture ends. Logs are
kept so a failing test can show them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import urllib3

from sutazai.serving.process import ManagedProcess, free_port


class ServerProcess:
    """A child process serving HTTP on 127.0.0.1:<port> (a :class:`ManagedProcess`)."""

    name = "server"
    health_path = "/"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{self.name}.log"
        self.managed: ManagedProcess | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.managed.process if self.managed else None

    def start(self, timeout_s: float = 60.0) -> ServerProcess:
        self.managed = ManagedProcess(self.name, self.command(), self.log_path, url=self.url,
                                      health_path=self.health_path, env=self.environment(),
                                      cwd=self.workdir).start()
        self.managed.wait_ready(timeout_s, ready=lambda response: response.status < 500)
        return self

    def stop(self) -> None:
        if self.managed is not None:
            self.managed.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""


NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    log_format fixture '$status\\t$body_bytes_sent\\t"$http_range"\\t"$request"';
    access_log {prefix}/access.log fixture;
    sendfile on;
    keepalive_timeout 5;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ try_files $uri $uri/index.html =404; }}
        location /slow/ {{
            alias {root}/;
            limit_rate_after 0;
            limit_rate {slow_rate};
            sendfile_max_chunk 64k;
        }}
    }}
}}
"""


class Nginx(ServerProcess):
    """nginx serving ``root`` (Range requests, ETags); ``/slow/`` is rate limited."""

    name = "nginx"

    def __init__(self, workdir: Path, root: Path, slow_rate: str = "512k") -> None:
        super().__init__(workdir)
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        (workdir / "tmp").mkdir(exist_ok=True)
        self.conf = workdir / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(
            prefix=workdir, port=self.port, root=root, slow_rate=slow_rate,
            # as root, workers would otherwise run as nobody and not read pytest's tmp dirs
            user="user root;" if os.geteuid() == 0 else ""))

    def command(self) -> list[str]:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return [nginx, "-p", f"{self.workdir}/", "-c", str(self.conf),
                "-e", str(self.workdir / "error.log")]

    def access_log(self) -> list[dict[str, str]]:
        """Parsed access-log lines: status, bytes, range, request."""
        path = self.workdir / "access.log"
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            status, sent, range_header, request = line.split("\t")
            rows.append({"status": status, "bytes": sent, "range": range_header.strip('"'),
                         "request": request.strip('"')})
        return rows


REGISTRY_CONF = """
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: sutazai-test-registry
"""


class OciRegistry(ServerProcess):
    """Debian's docker-registry (the CNCF distribution registry), anonymous push/pull."""

    name = "docker-registry"
    health_path = "/v2/"

    def command(self) -> list[str]:
        conf = self.workdir / "config.yml"
        conf.write_text(REGISTRY_CONF.format(data=self.workdir / "data", port=self.port))
        return [shutil.which("docker-registry") or "/usr/bin/docker-registry", "serve", str(conf)]

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        http = urllib3.PoolManager()
        started = http.request("POST", f"{self.url}/v2/{repository}/blobs/uploads/")
        assert started.status == 202, started.data
        location = started.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        joiner = "&" if "?" in location else "?"
        done = http.request("PUT", f"{location}{joiner}digest={digest}", body=data,
                            headers={"Content-Type": "application/octet-stream"})
        assert done.status == 201, done.data
        return digest

    def push_ollama_model(self, repository: str, tag: str, layers: list[tuple[str, bytes]]
                          ) -> str:
        """Push an Ollama-layout model (media-typed layers + config); returns its digest."""
        config = json.dumps({"model_format": "gguf", "model_family": "gemma3"}).encode()
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": self.push_blob(repository, config), "size": len(config)},
            "layers": [{"mediaType": media, "digest": self.push_blob(repository, data),
                        "size": len(data)} for media, data in layers],
        }
        body = json.dumps(manifest).encode()
        response = urllib3.PoolManager().request(
            "PUT", f"{self.url}/v2/{repository}/manifests/{tag}", body=body,
            headers={"Content-Type": manifest["mediaType"]})
        assert response.status == 201, response.data
        return "sha256:" + hashlib.sha256(body).hexdigest()


class MlflowServer(ServerProcess):
    """``mlflow server`` with a SQLite backend, one worker, no job runner."""

    name = "mlflow"
    health_path = "/health"

    def command(self) -> list[str]:
        return [
            str(Path(sys.executable).with_name("mlflow")), "server",
            "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination", str(self.workdir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
        env.pop("MLFLOW_TRACKING_URI", None)
        return env


class Prometheus(ServerProcess):
    """Prometheus scraping ``targets`` (host:port) every second, TSDB under ``workdir``."""

    name = "prometheus"
    health_path = "/-/ready"

    def __init__(self, workdir: Path, targets: list[str]) -> None:
        super().__init__(workdir)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "sutazai", "static_configs": [{"targets": targets}]}],
        }))

    def command(self) -> list[str]:
        return [shutil.which("prometheus") or "/usr/bin/prometheus",
                f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]

    def query(self, expression: str) -> list[dict[str, object]]:
        answer = urllib3.request("GET", f"{self.url}/api/v1/query",
                                 fields={"query": expression}).json()
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])


class RedisServer:
    """Debian's redis-server with a password in its 0600 configuration file, as the
    production profile runs it (the rate limits' shared buckets)."""

    def __init__(self, workdir: Path, password: str) -> None:
        from sutazai.production.redis_server import redis_binary, write_config

        self.port = free_port()
        self.password = password
        self.process = ManagedProcess("redis", [redis_binary(), str(
            write_config(workdir, self.port, password))], workdir / "redis.log",
            url=f"redis://127.0.0.1:{self.port}", die_with_owner=True)

    def start(self) -> RedisServer:
        import time

        from sutazai.production.redis_server import answers

        self.process.start()
        deadline = time.monotonic() + 30
        while not answers(self.port, self.password):
            assert self.process.alive() and time.monotonic() < deadline, self.process.log()
            time.sleep(0.05)
        return self

    def client(self) -> object:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def stop(self) -> None:
        self.process.stop()
