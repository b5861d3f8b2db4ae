"""nginx as a round-robin load balancer in front of several OpenAI-compatible replicas.

What a platform puts in front of its replicas (a Kubernetes Service, an ingress), here on
127.0.0.1 for the capacity benchmark and tests: streaming is passed through unbuffered, so
TTFT through the balancer is the replica's, and upstream connections are kept alive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

from sutazai.errors import EngineError
from sutazai.serving.process import ManagedProcess, free_port

CONF = """
daemon off;
master_process on;
worker_processes 1;
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    access_log off;
    upstream replicas {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /nginx-health {{ return 200 "ok"; }}
        location / {{
            proxy_pass http://replicas;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
"""


@contextlib.contextmanager
def round_robin(upstreams: Sequence[str], workdir: Path) -> Iterator[str]:
    """nginx balancing ``upstreams`` (base URLs) round-robin; yields its base URL."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise EngineError("nginx is not installed: run make system-deps "
                          "(scripts/install-system-deps.sh)")
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    port = free_port()
    servers = "\n".join(f"        server {urlparse(u).netloc} max_fails=0;" for u in upstreams)
    conf = workdir / "nginx.conf"
    conf.write_text(CONF.format(prefix=workdir, port=port, servers=servers,
                                user="user root;" if os.geteuid() == 0 else ""))
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess("nginx", [nginx, "-p", f"{workdir}/", "-c", str(conf),
                                       "-e", str(workdir / "error.log")],
                             workdir / "nginx.log", url=url, health_path="/nginx-health",
                             die_with_owner=True).start()
    try:
        process.wait_ready(30)
        yield url
    finally:
        process.stop()
