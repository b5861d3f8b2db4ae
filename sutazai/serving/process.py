"""Server child processes: free ports, readiness, captured logs, clean shutdown, memory.

Every engine SutazAI starts (llama.cpp, vLLM) and every service its tests start runs
through :class:`ManagedProcess`, so they share one behaviour: a process group of its own
(so a stop also reaps the engine's workers), a log file to show when it fails, a
readiness poll that notices a crash at once instead of waiting for the timeout, and a
peak-RSS sample of the whole process tree for the benchmark's resource figures.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import urllib3

from sutazai.errors import EngineError, PortInUseError

LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # looked up before any fork


def _die_with(parent_pid: int) -> Callable[[], None]:
    """A ``preexec_fn`` that asks the kernel to SIGTERM the child when its parent dies.

    A server that outlives a SIGKILLed owner keeps its data folder open while the next
    command starts a second server on it (two FalkorDBs on one append-only file lose data).
    The signal is tied to the thread that forks, so start such children from a thread that
    lives as long as they do. If the parent died before the call took effect, exit at once.
    """

    def set_parent_death_signal() -> None:
        if _prctl is not None:
            _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:
            os._exit(1)

    return set_parent_death_signal


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_free_port(host: str, port: int) -> None:
    """Fail early, and clearly, when ``host:port`` is taken (before loading a model)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {port} on {host} is already in use ({exc.strerror}); choose another "
                "with --port, or stop the process that holds it"
            ) from None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """A child process serving HTTP at ``url``, started in its own process group."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        *,
        url: str,
        health_path: str = "/health",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        die_with_owner: bool = False,
        popen_options: Mapping[str, Any] | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> None:
        """``die_with_owner``: the kernel stops the process (SIGTERM) when this one dies,
        even by SIGKILL, so it cannot live on as an orphan."""
        self.name = name
        self.command = list(command)
        self.log_path = log_path
        self.url = url
        self.health_path = health_path
        self.env = dict(env) if env is not None else dict(os.environ)
        self.cwd = cwd
        self.die_with_owner = die_with_owner
        #: further subprocess.Popen arguments (user/group: a server that refuses root)
        self.popen_options = dict(popen_options or {})
        #: the graceful stop (PostgreSQL's fast shutdown is SIGINT; SIGTERM waits for clients)
        self.stop_signal = stop_signal
        self.process: subprocess.Popen[bytes] | None = None
        self.owner_pid = os.getpid()
        self.started_at = 0.0
        self.ready_seconds: float | None = None
        self._peak_rss = 0
        self._sampler: threading.Thread | None = None
        self._stopping = threading.Event()

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True,
                preexec_fn=_die_with(os.getpid()) if self.die_with_owner else None,
                **self.popen_options,
            )
        self.started_at = time.monotonic()
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True,
                                         name=f"{self.name}-rss")
        self._sampler.start()
        return self

    def wait_ready(
        self, timeout_s: float, ready: Callable[[urllib3.BaseHTTPResponse], bool] | None = None
    ) -> float:
        """Poll the health URL until it answers; seconds since start. Fails fast on exit."""
        assert self.process is not None, "start() first"
        accept = ready or (lambda response: response.status == 200)
        pool = urllib3.PoolManager(timeout=2.0, retries=False)
        deadline = self.started_at + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EngineError(
                    f"{self.name} exited with code {self.process.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path)}"
                )
            with contextlib.suppress(urllib3.exceptions.HTTPError):
                if accept(pool.request("GET", self.url + self.health_path)):
                    self.ready_seconds = time.monotonic() - self.started_at
                    return self.ready_seconds
            time.sleep(0.1)
        self.stop()
        raise EngineError(
            f"{self.name} did not become ready within {timeout_s:.0f}s (raise the timeout if "
            f"the model is large); last lines of {self.log_path}:\n{tail(self.log_path)}"
        )

    def alive(self) -> bool:
        if self.process is None:
            return False
        if self.process.pid and os.getpid() != self.owner_pid:
            # A forked gateway process (benchmarks) is not the engine's parent: poll() would
            # get ECHILD and report it dead. Ask the kernel instead.
            try:
                return psutil.Process(self.process.pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False
        return self.process.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        """Send the stop signal (SIGTERM) to the process group, SIGKILL it after ``grace_s``."""
        self._stopping.set()
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, self.stop_signal)
        try:
            self.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------- memory
    @property
    def peak_rss_bytes(self) -> int:
        """Highest resident memory of the process and its children seen so far."""
        self._peak_rss = max(self._peak_rss, self.rss_bytes())
        return self._peak_rss

    def rss_bytes(self) -> int:
        if not self.alive():
            return 0
        assert self.process is not None
        try:
            root = psutil.Process(self.process.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for member in tree:
            with contextlib.suppress(psutil.Error):
                total += member.memory_info().rss
        return total

    def _sample_rss(self) -> None:
        while not self._stopping.wait(0.25) and self.alive():
            self._peak_rss = max(self._peak_rss, self.rss_bytes())

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
