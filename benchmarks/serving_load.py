"""The serving API under load: 100 concurrent clients, API keys and audit on against off.

Run from the repository root after ``make run`` (it serves the repository's Gemma 3 270M)::

    .venv/bin/python benchmarks/serving_load.py [--clients 100] [--duration 60]
        [--rounds 4] [--max-tokens 4] [--throttled 10] [--endpoint completions|models]
        [--check] [--json]

One llama.cpp engine is started from the repository, with two SutazAI gateways in front
of it, each in its own process as under ``sutazai serve``: one requires API keys (roles,
per-key token buckets, audited denials; keys in a file secret provider of a scratch home),
the other is open. Everything stays on 127.0.0.1.

1. *Overhead.* ``--clients`` closed-loop clients (each sends its next completion when the
   last one is answered), spread over 10 operator keys, run ``--duration`` seconds against
   each gateway (the open one gets the same keys and ignores them), split into ``--rounds``
   alternating slices (order flipped every round) so
   drift on a shared machine hits both alike. Reported: requests, errors, P50/P95/P99 of
   each, and the ratio of P95s. Target: keys and audit add at most 3 % to P95.
2. *Rate limits.* The same clients for ``--duration`` seconds against the keyed gateway,
   ``--throttled`` of them sharing a key limited to 1 request/s (burst 2) that honour
   ``Retry-After``. Target: the only non-200 answers are that key's 429s.

Exit code 0 unless ``--check`` and a target fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import run_gateway  # noqa: E402 (after the path)

PROMPTS = ["The capital of France is", "Water boils at", "The largest planet is",
           "A haiku about the sea:", "The opposite of hot is", "Photosynthesis makes"]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, status: str, latency: float | None) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if latency is not None:
            self.latencies.append(latency)

    def percentile(self, q: float) -> float:
        values = sorted(self.latencies)
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0

    def summary(self) -> dict[str, Any]:
        return {"requests": sum(self.statuses.values()), "statuses": dict(self.statuses),
                "p50_ms": self.percentile(0.50), "p95_ms": self.percentile(0.95),
                "p99_ms": self.percentile(0.99),
                "mean_ms": statistics.fmean(self.latencies) * 1000 if self.latencies else 0}


async def drive(url: str, keys: list[str | None], seconds: float, max_tokens: int,
                served: Tally, throttled: Tally | None = None,
                throttled_keys: frozenset[int] = frozenset(), endpoint: str = "completions"
                ) -> None:
    """Closed-loop clients until the deadline; client i uses ``keys[i]``."""
    import aiohttp

    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=600)

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        key = keys[index]
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        tally = throttled if index in throttled_keys and throttled is not None else served
        number = 0
        while time.monotonic() < deadline:
            body = {"prompt": PROMPTS[(index + number) % len(PROMPTS)], "max_tokens": max_tokens,
                    "temperature": 0, "seed": index}
            number += 1
            started = time.perf_counter()
            try:
                async with (session.post(f"{url}/v1/completions", json=body, headers=headers)
                            if endpoint == "completions"
                            else session.get(f"{url}/v1/models", headers=headers)) as answer:
                    await answer.read()
                    status = str(answer.status)
                    retry_after = float(answer.headers.get("retry-after", "1"))
            except aiohttp.ClientError as exc:
                tally.add(type(exc).__name__, None)
                continue
            if status == "200":
                tally.add(status, time.perf_counter() - started)
            else:
                tally.add(status, None)
                if status == "429":
                    await asyncio.sleep(min(retry_after, max(0.0, deadline - time.monotonic())))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(i, session) for i in range(len(keys))))


def wait_healthy(url: str) -> None:
    import httpx

    for _ in range(200):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the gateway at {url} did not come up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--throttled", type=int, default=10)
    parser.add_argument("--endpoint", choices=("completions", "models"), default="completions",
                        help="models: GET /v1/models, so cheap for the engine that the "
                        "gateway's own cost (keys, limits, audit) is as visible as it gets")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from sutazai.config import load_settings
    from sutazai.security.access import KeyTable, new_key
    from sutazai.serving.engines import start_engine
    from sutazai.serving.process import free_port
    from sutazai.serving.service import resolve_target

    settings = load_settings()
    manifest = resolve_target(settings, args.model).manifest
    err = Console(stderr=True)
    scratch = Path(tempfile.mkdtemp(prefix="sutazai-load-"))
    home = scratch / ".sutazai"
    keys, entries = [], []
    for team in range(10):
        key, entry = new_key(f"team-{team}", "operator", rate_limit_rps=10_000,
                             rate_limit_burst=10_000)
        keys.append(key)
        entries.append(entry)
    limited_key, limited = new_key("trial", "operator", rate_limit_rps=1, rate_limit_burst=2)
    table_file = home / "secrets" / settings.api_keys_secret
    table_file.parent.mkdir(parents=True)
    table_file.touch(mode=0o600)
    table_file.write_text(KeyTable(keys={e.id: e for e in [*entries, limited]}
                                   ).model_dump_json())

    engine = start_engine(settings, manifest, "llamacpp")
    context = multiprocessing.get_context("fork")
    ports = {"keys + audit on": free_port(), "open": free_port()}
    gateways = [context.Process(target=run_gateway, args=(engine, ports[name],
                                                          str(home) if "on" in name else None),
                                daemon=True) for name in ports]
    for process in gateways:
        process.start()
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    client_keys = [keys[i % len(keys)] for i in range(args.clients)]
    tallies = {name: Tally() for name in urls}
    throttled_tally, unthrottled_tally = Tally(), Tally()
    try:
        for url in urls.values():
            wait_healthy(url)
        asyncio.run(drive(urls["open"], [None] * 4, 3.0, args.max_tokens, Tally()))  # warm up
        slice_s = args.duration / args.rounds
        for round_number in range(args.rounds):
            order = list(urls) if round_number % 2 == 0 else list(reversed(urls))
            for name in order:
                # The open gateway gets the same keys, and ignores them: both see the same
                # bytes, so the difference is the checking alone.
                asyncio.run(drive(urls[name], client_keys, slice_s, args.max_tokens,
                                  tallies[name], endpoint=args.endpoint))
                err.log(f"round {round_number + 1}/{args.rounds} {name}: "
                        f"{tallies[name].summary()['requests']} requests so far")
        mixed = [limited_key if i < args.throttled else client_keys[i]
                 for i in range(args.clients)]
        asyncio.run(drive(urls["keys + audit on"], mixed, args.duration, args.max_tokens,
                          unthrottled_tally, throttled_tally,
                          frozenset(range(args.throttled)), args.endpoint))
        err.log("rate-limit phase done")
    finally:
        for process in gateways:
            process.terminate()
            process.join(10)
        engine.stop()

    on, off = tallies["keys + audit on"].summary(), tallies["open"].summary()
    limits = {"throttled": throttled_tally.summary(), "others": unthrottled_tally.summary()}
    figures: dict[str, Any] = {
        "model": manifest.ref, "engine": "llamacpp", "clients": args.clients,
        "duration_s": args.duration, "rounds": args.rounds, "max_tokens": args.max_tokens,
        "endpoint": args.endpoint,
        "keys_and_audit_on": on, "open": off, "rate_limit_phase": limits,
    }
    figures["p95_ratio"] = on["p95_ms"] / off["p95_ms"] if off["p95_ms"] else float("nan")
    errors = {s: n for t in (on, off) for s, n in t["statuses"].items() if s != "200"}
    errors |= {s: n for s, n in limits["others"]["statuses"].items() if s != "200"}
    errors |= {s: n for s, n in limits["throttled"]["statuses"].items() if s not in ("200", "429")}
    figures["unexpected_errors"] = errors
    figures["deliberate_429"] = limits["throttled"]["statuses"].get("429", 0)
    figures["overhead_target_pass"] = figures["p95_ratio"] <= 1.03
    figures["errors_target_pass"] = not errors and figures["deliberate_429"] > 0
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        work = (f"{args.max_tokens}-token completions" if args.endpoint == "completions"
                else "GET /v1/models")
        table = Table(title=f"{manifest.ref} on llama.cpp: {args.clients} closed-loop clients, "
                            f"{args.duration:g} s per gateway, {work}")
        for column in ("gateway", "requests", "non-200", "P50", "P95", "P99"):
            table.add_column(column, justify="left" if column == "gateway" else "right")
        for name, row in (("keys + audit on", on), ("open", off),
                          ("on, rate-limit phase: other keys", limits["others"]),
                          (f"on, rate-limit phase: throttled key ({args.throttled} clients)",
                           limits["throttled"])):
            non_200 = ", ".join(f"{s}: {n}" for s, n in row["statuses"].items() if s != "200")
            table.add_row(name, str(row["requests"]), non_200 or "0",
                          *(f"{row[p]:.0f} ms" for p in ("p50_ms", "p95_ms", "p99_ms")))
        console = Console()
        console.print(table)
        console.print(f"P95 with keys + audit / open: {figures['p95_ratio']:.3f}x "
                      f"({'PASS' if figures['overhead_target_pass'] else 'FAIL'}: <= 1.03x); "
                      f"deliberate 429s: {figures['deliberate_429']}, other errors: "
                      f"{errors or 'none'} ({'PASS' if figures['errors_target_pass'] else 'FAIL'})",
                      highlight=False)
    failed = not (figures["overhead_target_pass"] and figures["errors_target_pass"])
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
