"""Two ``sutazai serve`` replicas behind nginx on the production profile, as the stack runs
them: one API key's rate limit holds across both (its bucket is in Redis), and killing one
replica under load costs at most the requests in flight on it.

Everything is real: two ``sutazai serve`` processes on one home and one environment (the
settings and the secrets, as ``make up`` gives them), Redis for the rate limit,
PostgreSQL for the learning store (request logging on), nginx from
:func:`~sutazai.serving.balancer.round_robin` with ``max_fails=1`` as in the stack. No
engine starts: the replicas serve two models loaded on demand, and the requests are ones
the gateway answers itself (``GET /v1/models``) after authenticating and rate-limiting
them, so what is measured is the gateway and the balancer, at no model-load cost (the
GGUF published is a header only, never read).
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from pipelines.runner import settings_environment
from sutazai.config import Settings
from sutazai.optimize.derive import publish_derived
from sutazai.production.postgres import LocalPostgres
from sutazai.security.access import KeyStore, new_key
from sutazai.security.rate_limit import KEY_PREFIX
from sutazai.serving.balancer import round_robin
from sutazai.serving.process import free_port
from tests.servers import RedisServer

RPS, BURST = 1.0, 4
RECORD = re.compile(r"(\S+) (\d+) \[(.*)\] \[(.*)\]")  # balancer.ACCESS_LOG
THREADS = 4


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def publish_models(settings: Settings, folder: Path) -> None:
    """Two models in the repository, unregistered (no MLflow needed): serving names them."""
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    for name in ("alpha", "beta"):
        publish_derived(settings, folder, name=name, parent=None, source="test:replicas",
                        revision="1", format="gguf", tasks=["text-generation"],
                        description="never loaded", register=False)


@contextmanager
def replicas(settings: Settings, logs: Path, count: int = 2) -> Iterator[list[Replica]]:
    """``count`` ``sutazai serve`` processes, each on a port of its own, started together."""
    env = {**os.environ, **settings_environment(settings)}
    started: list[Replica] = []
    try:
        for n in range(count):
            port = free_port()
            log = (logs / f"serve-{n}.log").open("wb")
            started.append(Replica(subprocess.Popen(
                [sys.executable, "-m", "sutazai.cli.main", "serve", "alpha", "beta",
                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT), port))
        deadline = time.monotonic() + 60
        for replica, n in zip(started, range(count), strict=True):
            while True:
                assert replica.process.poll() is None, (logs / f"serve-{n}.log").read_text()
                assert time.monotonic() < deadline, "a replica did not start in 60 s"
                try:
                    if httpx.get(f"{replica.url}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        yield started
    finally:
        for replica in started:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        for replica in started:
            try:
                replica.process.wait(20)
            except subprocess.TimeoutExpired:
                replica.process.kill()


def access_log(workdir: Path, lines: int) -> list[tuple[float, int, list[str]]]:
    """nginx's first ``lines`` records of proxied requests (not its own health probes):
    (epoch s, status, replicas tried in order). A record is written as its response is
    sent, so it may trail the client a moment."""
    path, deadline = workdir / "access.log", time.monotonic() + 5
    while True:
        text = path.read_text() if path.exists() else ""
        records = [r for r in map(RECORD.fullmatch, text.splitlines())
                   if r is not None and r[3] != "-"]
        if len(records) >= lines or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(records) >= lines, text
    return [(float(r[1]), int(r[2]), [u.strip() for u in r[3].split(",")])
            for r in records[:lines]]


def test_replicas_share_one_rate_limit_and_survive_a_replica_killed_under_load(
        production: Settings, postgres_cluster: LocalPostgres, redis_server: RedisServer,
        tmp_path: Path) -> None:
    settings = production.model_copy(update={"request_logging": True})
    publish_models(settings, tmp_path / "model")
    limited, limited_entry = new_key("limited", "operator", rate_limit_rps=RPS,
                                     rate_limit_burst=BURST)
    loader, loader_entry = new_key("load", "operator", rate_limit_rps=10_000,
                                   rate_limit_burst=10_000)
    store = KeyStore(settings)
    store.add(limited_entry)
    store.add(loader_entry)
    nginx = tmp_path / "nginx"
    with ExitStack() as stack:
        first, second = stack.enter_context(replicas(settings, tmp_path))
        balanced = stack.enter_context(round_robin([first.url, second.url], nginx,
                                                   max_fails=1, access_log=True))
        with postgres_cluster.admin("sutazai_learning") as learning:  # request logging: PG
            assert learning.execute("SELECT to_regclass('public.feedback')").fetchone() != (None,)

        # -- one key, a burst through nginx: the bucket is one, not one per replica
        statuses, retry_after = [], []
        with httpx.Client(base_url=balanced, timeout=10,
                          headers={"Authorization": f"Bearer {limited}"}) as client:
            began = time.monotonic()
            for _ in range(12):
                answer = client.get("/v1/models")
                statuses.append(answer.status_code)
                if answer.status_code == 429:
                    retry_after.append(int(answer.headers["retry-after"]))
                    assert answer.json()["error"]["code"] == "rate_limit_exceeded"
            elapsed = time.monotonic() - began
        allowed = statuses.count(200)
        # a full bucket lets BURST through at once; it refills RPS a second meanwhile
        assert BURST <= allowed <= BURST + math.floor(elapsed * RPS), (statuses, elapsed)
        assert statuses.count(429) == len(statuses) - allowed
        assert retry_after and all(wait >= 1 for wait in retry_after)
        records = access_log(nginx, len(statuses))
        assert [status for _, status, _ in records] == statuses
        # both replicas let requests through AND both refused: each read the one bucket
        assert {tried[-1] for _, s, tried in records if s == 200} == \
            {first.address, second.address}, records
        assert {tried[-1] for _, s, tried in records if s == 429} == \
            {first.address, second.address}, records
        assert redis_server.client().exists(KEY_PREFIX + limited_entry.id)  # type: ignore

        # -- under load, SIGKILL one replica: nginx moves the traffic to the other
        results: list[tuple[float, float, int | str]] = []  # (sent, answered, outcome)
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(base_url=balanced, timeout=10,
                              headers={"Authorization": f"Bearer {loader}"}) as client:
                while not stop.is_set():
                    sent = time.time()
                    try:
                        outcome: int | str = client.get("/v1/models").status_code
                    except httpx.HTTPError as exc:
                        outcome = type(exc).__name__
                    results.append((sent, time.time(), outcome))

        threads = [threading.Thread(target=load) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        killed_at = time.time()
        first.process.send_signal(signal.SIGKILL)
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(15)
        assert first.process.wait(5) == -signal.SIGKILL

    before = [r for r in results if r[0] < killed_at]
    after = [r for r in results if r[0] >= killed_at]
    failed = [r for r in results if r[2] != 200]
    # only requests in flight at the kill may fail, at most one per client thread
    assert all(sent < killed_at < answered for sent, answered, _ in failed), failed
    assert len(failed) <= THREADS, failed
    assert len(before) >= 20 and len(after) >= 20, (len(before), len(after))
    assert all(outcome == 200 for _, _, outcome in after)
    records = access_log(nginx, len(statuses) + len(results))[len(statuses):]
    # the survivor answered everything sent after the kill (a margin for the log's clock)
    assert {tried[-1] for at, _, tried in records if at > killed_at + 0.5} == \
        {second.address}
    # and nginx moved at least one request from the dead replica to the live one
    assert any(tried == [first.address, second.address] and status == 200
               for _, status, tried in records), records
    print(f"burst: {allowed}/{len(statuses)} allowed in {elapsed:.2f} s; load: "
          f"{len(before)} before the kill, {len(after)} after, {len(failed)} failed")
