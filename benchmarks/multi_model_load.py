"""Many models behind one endpoint: mixed load over three models under a memory budget that
holds two, and what a load costs the model that is already resident.

Run from the repository root (after ``make setup``: it uses the Gemma 3 270M weight
packages)::

    .venv/bin/python benchmarks/multi_model_load.py [--seconds 60] [--clients 3]
        [--rounds 6] [--json]

It publishes the Gemma GGUF under three names (alpha, beta, gamma: one blob, three models
to the router) into a temporary home, and starts the real ``sutazai serve alpha beta gamma``
as a subprocess with ``SUTAZAI_SERVE_MEMORY_BUDGET_MIB`` set to 2.5 models (2.5 times one
engine's peak RSS, measured first: two fit, three do not). Then:

1. TTFT while another model loads. alpha stays resident and a probe sends it one short
   streamed completion after another. Rounds alternate a quiet slice (nothing else runs:
   the peer) with a loading slice (one request for whichever of beta/gamma is not loaded,
   which evicts the other and loads it). Reported: P95 TTFT of alpha's probes during loads
   over P95 in quiet slices. Target <= 1.10x.
2. Mixed load: ``--clients`` closed-loop clients for ``--seconds``, each request for alpha
   (50 %), beta (30 %) or gamma (20 %), 4-token completions, so models keep being loaded
   and evicted. Reported: requests, failed requests (any answer but 200; target 0), loads
   and evictions (from the gateway's /metrics), P95 end-to-end latency per model.

Exit code 0 unless ``--check`` and a target fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import gemma_gguf, stop_server  # noqa: E402 (after the path)

NAMES = ("alpha", "beta", "gamma")
WEIGHTS = (0.5, 0.3, 0.2)
PROMPT = "Count: 1, 2, 3,"


def publish(home: Path) -> int:
    """Gemma as alpha, beta and gamma in ``home``; returns the budget in MiB: 2.5 times the
    peak RSS of one engine, measured here (the router's estimate before a model's first
    load is larger, on the safe side, so the first loads evict sooner)."""
    import yaml

    from sutazai.config import Settings
    from sutazai.repository import open_repository
    from sutazai.serving.engines import start_engine
    from sutazai.serving.multi import MIB, estimate_bytes
    from sutazai.workflows.mirror import mirror_catalog

    gguf = gemma_gguf(home.parent)
    settings = Settings(home=home, catalog=home.parent / "catalog.yaml")
    settings.catalog.write_text(yaml.safe_dump({"models": [
        {"name": name, "source": f"file:{gguf}", "format": "gguf",
         "tasks": ["text-generation"], "license": "gemma"} for name in NAMES]}))
    failed = [o.error for o in mirror_catalog(settings, register=False) if o.error]
    if failed:
        raise SystemExit(f"could not publish the models: {failed}")
    manifest = open_repository(settings).get("alpha")
    engine = start_engine(settings, manifest, "llamacpp")
    try:
        httpx.post(f"{engine.base_url}/v1/completions", timeout=300, json={
            "model": engine.model, "prompt": PROMPT, "max_tokens": 8})
        one = engine.peak_rss_bytes or estimate_bytes(settings, manifest, "llamacpp")
    finally:
        engine.stop()
    return int(one * 2.5 / MIB)


def metric(url: str, name: str) -> dict[str, float]:
    """Every sample of ``name`` by its label text."""
    found = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name):]] = float(value)
    return found


def ttft(url: str, model: str) -> float | None:
    """Seconds to the first streamed text of a short completion; None when it failed."""
    body = {"model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0,
            "stream": True}
    started = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=300) as answer:
        if answer.status_code != 200:
            return None
        first = None
        for line in answer.iter_lines():
            if first is None and '"text"' in line and '"text":""' not in line:
                first = time.perf_counter() - started
        return first


def loaded(url: str) -> dict[str, bool]:
    return {m["id"]: m["loaded"]
            for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}


def p95(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=20, method="inclusive")[18]


@dataclass
class Report:
    budget_mib: int
    quiet_ttft_ms: list[float] = field(default_factory=list)
    loading_ttft_ms: list[float] = field(default_factory=list)
    probe_failures: int = 0
    load_seconds: list[float] = field(default_factory=list)
    requests: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latency_p95_ms: dict[str, float] = field(default_factory=dict)
    loads: dict[str, float] = field(default_factory=dict)
    evictions: dict[str, float] = field(default_factory=dict)

    @property
    def ttft_ratio(self) -> float:
        return p95(self.loading_ttft_ms) / p95(self.quiet_ttft_ms)


def measure_ttft(url: str, rounds: int, report: Report) -> None:
    """Alternate quiet and loading slices; alpha's probe never stops."""
    for name in NAMES:  # all three once: every later load is a measured reload
        httpx.post(f"{url}/v1/completions", timeout=300, json={
            "model": name, "prompt": PROMPT, "max_tokens": 2})
    for _ in range(3):
        ttft(url, "alpha")  # warm
    for _ in range(rounds):
        quiet_until = time.monotonic() + 4.0
        while time.monotonic() < quiet_until:
            value = ttft(url, "alpha")
            if value is None:
                report.probe_failures += 1
            else:
                report.quiet_ttft_ms.append(value * 1000)
        resident = loaded(url)
        other = next(n for n in ("beta", "gamma") if not resident[n])
        done = threading.Event()
        started = time.monotonic()

        def load(name: str = other, done: threading.Event = done,
                 started: float = started) -> None:
            httpx.post(f"{url}/v1/completions", timeout=300, json={
                "model": name, "prompt": PROMPT, "max_tokens": 1})
            report.load_seconds.append(time.monotonic() - started)
            done.set()

        threading.Thread(target=load, daemon=True).start()
        while not done.is_set():
            value = ttft(url, "alpha")
            if value is None:
                report.probe_failures += 1
            elif not done.is_set():  # it overlapped the load
                report.loading_ttft_ms.append(value * 1000)


def mixed_load(url: str, seconds: float, clients: int, report: Report) -> None:
    stop = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: dict[str, list[float]] = {name: [] for name in NAMES}

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=300) as http:
            while time.monotonic() < stop:
                model = rng.choices(NAMES, WEIGHTS)[0]
                started = time.perf_counter()
                try:
                    answer = http.post("/v1/completions", json={
                        "model": model, "prompt": PROMPT, "max_tokens": 4})
                    outcome = str(answer.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with lock:
                    report.requests += 1
                    if outcome == "200":
                        latencies[model].append((time.perf_counter() - started) * 1000)
                    else:
                        report.failed += 1
                        report.failures[outcome] = report.failures.get(outcome, 0) + 1

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.latency_p95_ms = {name: round(p95(values), 1)
                             for name, values in latencies.items() if values}


def run(seconds: float, clients: int, rounds: int) -> Report:
    from sutazai.serving.process import free_port

    work = Path(tempfile.mkdtemp(prefix="sutazai-multi-"))
    home = work / ".sutazai"
    budget = publish(home)
    report = Report(budget)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SUTAZAI_HOME": str(home), "SUTAZAI_CATALOG": str(work / "catalog.yaml"),
           "SUTAZAI_AUTH_REQUIRED": "false", "SUTAZAI_SERVE_WATCH_INTERVAL_S": "0",
           "SUTAZAI_SERVE_MEMORY_BUDGET_MIB": str(budget)}
    log_path = work / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "sutazai.cli.main", "serve", *NAMES, "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sutazai serve did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        measure_ttft(url, rounds, report)
        mixed_load(url, seconds, clients, report)
        pattern = re.compile(r'model="([^"]+)"')
        for labels, value in metric(url, "sutazai_model_loads_total").items():
            if 'outcome="ok"' in labels:
                report.loads[pattern.findall(labels)[0]] = value
        for labels, value in metric(url, "sutazai_model_evictions_total").items():
            report.evictions[pattern.findall(labels)[0]] = value
    finally:
        stop_server(server)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args(argv)
    report = run(args.seconds, args.clients, args.rounds)
    ratio = report.ttft_ratio
    if args.json:
        print(json.dumps({**asdict(report), "ttft_ratio": ratio}, indent=2))
    else:
        quiet, busy = report.quiet_ttft_ms, report.loading_ttft_ms
        print(f"memory budget {report.budget_mib} MiB (2.5x one engine's measured peak RSS)")
        print(f"{'':34} {'probes':>7} {'P50 ms':>8} {'P95 ms':>8}")
        print(f"{'alpha TTFT, nothing loading (peer)':34} {len(quiet):>7} "
              f"{statistics.median(quiet):>8.1f} {p95(quiet):>8.1f}")
        print(f"{'alpha TTFT, while beta/gamma load':34} {len(busy):>7} "
              f"{statistics.median(busy) if busy else float('nan'):>8.1f} {p95(busy):>8.1f}")
        print(f"P95 ratio {ratio:.3f}x (target <= 1.10x: {'pass' if ratio <= 1.10 else 'FAIL'})"
              f"; probe failures {report.probe_failures}; loads took "
              f"{', '.join(f'{s:.1f}' for s in report.load_seconds)} s")
        print(f"mixed load: {report.requests} requests, {report.failed} failed "
              f"({'pass' if report.failed == 0 else 'FAIL'}, target 0) {report.failures or ''}")
        print(f"P95 latency by model (ms): {report.latency_p95_ms}")
        print(f"loads {report.loads} (total {sum(report.loads.values()):.0f}); evictions "
              f"{report.evictions} (total {sum(report.evictions.values()):.0f})")
    ok = ratio <= 1.10 and report.failed == 0 and report.probe_failures == 0
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
