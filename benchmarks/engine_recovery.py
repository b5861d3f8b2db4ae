"""Engine recovery: how fast ``sutazai serve`` brings back an engine that was SIGKILLed,
and whether every request the death touched failed clearly.

Run from the repository root after ``make run`` (it serves the repository's Gemma 3 270M)::

    .venv/bin/python benchmarks/engine_recovery.py [--model gemma3-270m] [--kills 3]
        [--clients 4] [--baseline] [--check] [--json]

The real ``sutazai serve MODEL`` runs as a subprocess (API keys off: a loopback run).
``--clients`` closed-loop clients keep it busy, half streaming, half not. Each round
SIGKILLs the engine process, then polls ``/health/ready`` until it answers 200 again.

Reported per kill: seconds from the kill to readiness (the engine answers its health path
through the gateway) and to the first completion sent after the kill, the restarted
engine's own load time and the backoff the restart policy added (both from the audit
record ``engine.restart``: kills in a row are a crash loop to the policy, so the second
restart waits 1 s, the third 2 s), and the overhead: back - load - backoff. Every request is
classified: ``ok``; clear failures (a 503 with Retry-After and code ``engine_failed`` or
``engine_restarting``, or a stream ending in an error event of code ``engine_failed``);
unclear ones (anything else: a 502, a stream cut without an error event, a connection
error). ``--baseline`` also runs one kill with restarts off (``SUTAZAI_ENGINE_RESTART_MAX=0``),
the peer: the engine alone, as before the gateway healed it, stays dead.

Target (reliability issue): back within the engine's load time + 2 s; no unclear failure.
Exit code 0 unless ``--check`` and a target fails.

:func:`measure_recovery` is the measurement, importable by a larger benchmark.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import stop_server  # noqa: E402 (after the path)

CLEAR_CODES = {"engine_failed", "engine_restarting"}
PROMPTS = ["Count: 1, 2, 3,", "The capital of France is", "Once upon a time",
           "List of colours: red,"]


@dataclass
class Recovery:
    """One kill and what followed."""

    kill: int
    ready_s: float | None  # SIGKILL -> /health/ready 200 (None: not back in time)
    first_answer_s: float | None  # SIGKILL -> first completion sent after it, answered
    load_s: float | None  # the restarted engine's own load time
    backoff_s: float = 0.0  # the wait the restart policy added (repeated deaths in its window)
    target_met: bool | None = None


@dataclass
class RecoveryReport:
    model: str
    healing: bool
    initial_load_s: float | None
    recoveries: list[Recovery]
    outcomes: dict[str, int]
    unclear_examples: list[str] = field(default_factory=list)

    @property
    def unclear(self) -> int:
        return sum(n for kind, n in self.outcomes.items() if kind.startswith("unclear"))

    @property
    def passed(self) -> bool:
        return self.unclear == 0 and all(r.target_met for r in self.recoveries)


class _Requests:
    """Closed-loop clients; every request's start, end and outcome."""

    def __init__(self, url: str, model: str, clients: int, max_tokens: int) -> None:
        self.url, self.model, self.max_tokens = url, model, max_tokens
        self.records: list[tuple[float, float, str]] = []
        self.examples: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(clients)]

    def __enter__(self) -> _Requests:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(120)

    def _client(self, index: int) -> None:
        import httpx

        stream = index % 2 == 0
        number = 0
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self.stop.is_set():
                body = {"model": self.model, "prompt": PROMPTS[number % len(PROMPTS)],
                        "max_tokens": self.max_tokens, "temperature": 0, "stream": stream}
                number += 1
                started = time.monotonic()
                try:
                    outcome = (self._streamed(client, body) if stream
                               else self._answered(client.post("/v1/completions", json=body)))
                except httpx.HTTPError as exc:
                    outcome = f"unclear: {type(exc).__name__}", str(exc)
                kind, detail = outcome
                with self.lock:
                    self.records.append((started, time.monotonic(), kind))
                    if kind.startswith("unclear") and len(self.examples) < 10:
                        self.examples.append(f"{kind}: {detail}")
                if kind != "ok":
                    time.sleep(0.05)

    @staticmethod
    def _answered(answer: Any) -> tuple[str, str]:
        """(kind, detail) of an answer that is not a stream."""
        if answer.status_code == 200:
            return "ok", ""
        try:
            code = answer.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if answer.status_code == 503 and code in CLEAR_CODES and answer.headers.get(
                "retry-after"):
            return f"clear: 503 {code} + Retry-After", ""
        return f"unclear: HTTP {answer.status_code}", answer.text[:160]

    def _streamed(self, client: Any, body: dict[str, Any]) -> tuple[str, str]:
        with client.stream("POST", "/v1/completions", json=body) as answer:
            if answer.status_code != 200:
                answer.read()
                return self._answered(answer)
            events = [line[5:].strip() for line in answer.iter_lines()
                      if line.startswith("data:")]
        if events and events[-1] == "[DONE]":
            return "ok", ""
        try:
            error = json.loads(events[-1])["error"] if events else None
        except (ValueError, KeyError, TypeError):
            error = None
        if error and error.get("code") == "engine_failed":
            return "clear: stream error event engine_failed", ""
        return ("unclear: stream without [DONE] or error event",
                f"{len(events)} events, the last {events[-1][:120] if events else None}")

    def first_answer_after(self, moment: float) -> float | None:
        with self.lock:
            ends = [end for start, end, outcome in self.records
                    if start >= moment and outcome == "ok"]
        return min(ends) - moment if ends else None


def _engine_pids(server_pid: int) -> list[int]:
    import psutil

    found = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            if "llama_cpp.server" in " ".join(child.cmdline()) \
                    and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.Error:
            continue
    return found


def _ready(url: str) -> dict[str, Any] | None:
    import httpx

    try:
        answer = httpx.get(f"{url}/health/ready", timeout=5)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


def _audit_records(env: Mapping[str, str]) -> list[Any]:
    """The audit log the server writes (its home: ``SUTAZAI_HOME`` of its environment)."""
    from sutazai.config import load_settings
    from sutazai.security.audit import open_audit_log

    home = env.get("SUTAZAI_HOME")
    return open_audit_log(load_settings(**({"home": home} if home else {}))).records()


def _restart_loads(env: Mapping[str, str], after_seq: int) -> list[tuple[float, float]]:
    """(load time, backoff) of the restarts recorded after audit record ``after_seq``."""
    return [(float(r.details["load_s"]), float(r.details.get("backoff_s") or 0.0))
            for r in _audit_records(env)
            if r.seq > after_seq and r.action == "engine.restart" and r.result == "ok"
            and r.details and "load_s" in r.details]


def measure_recovery(model: str = "gemma3-270m", *, kills: int = 3, clients: int = 4,
                     max_tokens: int = 24, settle_s: float = 4.0,
                     recover_timeout_s: float = 120.0, start_timeout_s: float = 600.0,
                     env: Mapping[str, str] | None = None, healing: bool = True,
                     slack_s: float = 2.0) -> RecoveryReport:
    """Serve ``model`` with ``sutazai serve``, kill its engine ``kills`` times under load.

    ``env`` adds to this process's environment for the server (``SUTAZAI_HOME`` picks the
    repository). ``healing=False`` sets ``SUTAZAI_ENGINE_RESTART_MAX=0`` (the peer: no
    restart). A recovery meets the target when readiness is back within the restarted
    engine's load time + ``slack_s``, not counting the backoff the restart policy adds
    when deaths repeat within its window (``SUTAZAI_ENGINE_RESTART_BACKOFF_S``, reported).
    """
    from sutazai.serving.process import free_port

    server_env = {**os.environ, **(env or {}), "SUTAZAI_AUTH_REQUIRED": "false",
                  "SUTAZAI_SERVE_WATCH_INTERVAL_S": "0"}
    if not healing:
        server_env["SUTAZAI_ENGINE_RESTART_MAX"] = "0"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = Path(tempfile.mkdtemp(prefix="sutazai-recovery-")) / "serve.log"
    records = _audit_records(server_env)
    first_seq = records[-1].seq if records else 0
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "sutazai.cli.main", "serve", model, "--port", str(port)],
            env=server_env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    recoveries: list[Recovery] = []
    try:
        deadline = time.monotonic() + start_timeout_s
        while _ready(url) is None:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sutazai serve did not come up; its log:\n"
                                 f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        found = re.search(r"loaded in\s+([0-9.]+)s", log_path.read_text(errors="replace"))
        initial_load_s = float(found.group(1)) if found else None
        with _Requests(url, model, clients, max_tokens) as load:
            time.sleep(settle_s)
            for kill in range(1, kills + 1):
                pids = _engine_pids(server.pid)
                if len(pids) != 1:
                    raise SystemExit(f"expected one engine process under sutazai serve, "
                                     f"found {pids}")
                killed = time.monotonic()
                os.kill(pids[0], signal.SIGKILL)
                ready_s = None
                while time.monotonic() - killed < recover_timeout_s:
                    body = _ready(url)
                    if body is not None and body["restarts"] >= kill:
                        ready_s = time.monotonic() - killed
                        break
                    time.sleep(0.02)
                if ready_s is None:
                    recoveries.append(Recovery(kill, None, None, None, False))
                    break
                time.sleep(settle_s)
                recoveries.append(Recovery(kill, ready_s, load.first_answer_after(killed),
                                           None))
        outcomes = collections.Counter(kind for _, _, kind in load.records)
    finally:
        stop_server(server)
    loads = _restart_loads(server_env, first_seq)
    for recovery, (load_s, backoff_s) in zip(recoveries, loads, strict=False):
        recovery.load_s, recovery.backoff_s = load_s, backoff_s
    for recovery in recoveries:
        if recovery.ready_s is not None and recovery.load_s is not None:
            recovery.target_met = (recovery.ready_s - recovery.backoff_s
                                   <= recovery.load_s + slack_s)
        else:
            recovery.target_met = False
    return RecoveryReport(model, healing, initial_load_s, recoveries, dict(outcomes),
                          load.examples)


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--settle", type=float, default=4.0,
                        help="seconds of steady load before the first kill and after each")
    parser.add_argument("--baseline", action="store_true",
                        help="also kill once with restarts off (the engine alone)")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    reports = []
    if args.baseline:
        reports.append(measure_recovery(args.model, kills=1, clients=args.clients,
                                        max_tokens=args.max_tokens, settle_s=args.settle,
                                        recover_timeout_s=30.0, healing=False))
    reports.append(measure_recovery(args.model, kills=args.kills, clients=args.clients,
                                    max_tokens=args.max_tokens, settle_s=args.settle))
    if args.json:
        print(json.dumps([{**asdict(r), "unclear": r.unclear, "passed": r.passed}
                          for r in reports], indent=2))
    else:
        console = Console()
        for report in reports:
            title = (f"{report.model}: SIGKILL of the engine under {args.clients} clients, "
                     f"restarts {'on (SutazAI)' if report.healing else 'off (the engine alone)'}"
                     f"; first load {_seconds(report.initial_load_s)} s")
            table = Table(title=title)
            for column in ("kill", "back (ready) s", "first answer s", "restart load s",
                           "backoff s", "overhead s", "<= load + 2 s"):
                table.add_column(column, justify="right")
            for r in report.recoveries:
                overhead = (r.ready_s - r.load_s - r.backoff_s if r.ready_s is not None
                            and r.load_s is not None else None)
                table.add_row(str(r.kill), _seconds(r.ready_s), _seconds(r.first_answer_s),
                              _seconds(r.load_s), f"{r.backoff_s:g}", _seconds(overhead),
                              "yes" if r.target_met else "NO")
            console.print(table)
            outcomes = Table(title="requests during the run")
            outcomes.add_column("outcome")
            outcomes.add_column("count", justify="right")
            for kind, count in sorted(report.outcomes.items()):
                outcomes.add_row(kind, str(count))
            console.print(outcomes)
            for example in report.unclear_examples:
                console.print(f"  unclear: {example}", highlight=False)
    healed = reports[-1]
    return 1 if args.check and not healed.passed else 0


if __name__ == "__main__":
    sys.exit(main())
