"""nginx as a round-robin load balancer in front of several OpenAI-compatible replicas.

What a platform puts in front of its replicas (a Kubernetes Service, an ingress), here on
127.0.0.1 for the capacity benchmark and tests: streaming is passed through unbuffered, so
TTFT through the balancer is the replica's, and upstream connections are kept alive.

*Which failures move a request to the other replica* (``proxy_next_upstream error
timeout``, written out rather than left to nginx's default so the choice is visible):

- a connection the replica refuses or that times out: the request never reached it, so
  any method goes to the next replica (what makes killing a replica invisible to callers
  that were not talking to it at that instant);
- a GET, HEAD or OPTIONS whose replica died before answering: it is sent again;
- a POST (a completion, a rating, an ingest) that had been sent is *not* sent again
  (``non_idempotent`` is off): the dead replica may already have generated, logged or
  rated it, and a request that killed one replica must not get to kill the next (the
  gateway's own rule for its engine). The caller gets a 502 and its client retries, as
  OpenAI clients do; at most the requests in flight on that replica fail.
- a 502 or 503 *answered* by a replica is passed on, not retried (no ``http_502``/
  ``http_503``): the gateway's 503s (engine restarting, model still loading) carry
  Retry-After for the caller, and with ``max_fails=1`` counting them as failures would
  take a replica whose model is loading out of rotation, sending its load to the other.

With ``access_log`` each request is logged to ``access.log`` in the work folder as
``epoch-seconds status [replicas tried] [their statuses]``: which replica answered, and
for a retried request every replica tried, in order (``[127.0.0.1:A, 127.0.0.1:B] [502,
200]``; ``[-]`` for nginx's own health probe).
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
    {access_log}
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
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


def nginx_binary() -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise EngineError("nginx is not installed: run make system-deps "
                          "(scripts/install-system-deps.sh)")
    return nginx


ACCESS_LOG = ("log_format replicas '$msec $status [$upstream_addr] [$upstream_status]';\n"
              "    access_log {prefix}/access.log replicas;")


def write_config(upstreams: Sequence[str], workdir: Path, port: int, *,
                 max_fails: int = 0, fail_timeout_s: int = 10, access_log: bool = False
                 ) -> Path:
    """nginx's configuration in ``workdir`` (run it with :func:`nginx_command`).

    ``max_fails=0`` keeps every replica in rotation (a benchmark's replicas never die);
    with ``max_fails=1`` a replica that refuses a connection is skipped for
    ``fail_timeout_s``. Either way a request whose connection is refused goes to the next
    replica, so the caller sees no error from a replica that is down (see the module
    docstring for what is retried). ``access_log`` logs which replica answered each
    request (off by default: it grows with every request)."""
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    servers = "\n".join(
        f"        server {urlparse(u).netloc} max_fails={max_fails} "
        f"fail_timeout={fail_timeout_s}s;" for u in upstreams)
    conf = workdir / "nginx.conf"
    log = ACCESS_LOG.format(prefix=workdir) if access_log else "access_log off;"
    conf.write_text(CONF.format(prefix=workdir, port=port, servers=servers, access_log=log,
                                user="user root;" if os.geteuid() == 0 else ""))
    return conf


def nginx_command(workdir: Path) -> list[str]:
    return [nginx_binary(), "-p", f"{workdir}/", "-c", str(workdir / "nginx.conf"), "-e",
            str(workdir / "error.log")]


@contextlib.contextmanager
def round_robin(upstreams: Sequence[str], workdir: Path, *, max_fails: int = 0,
                access_log: bool = False) -> Iterator[str]:
    """nginx balancing ``upstreams`` (base URLs) round-robin; yields its base URL."""
    port = free_port()
    write_config(upstreams, workdir, port, max_fails=max_fails, access_log=access_log)
    url = f"http://127.0.0.1:{port}"
    process = ManagedProcess("nginx", nginx_command(workdir), workdir / "nginx.log", url=url,
                             health_path="/nginx-health", die_with_owner=True).start()
    try:
        process.wait_ready(30)
        yield url
    finally:
        process.stop()
