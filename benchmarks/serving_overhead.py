"""Serving latency: SutazAI's serving path (gateway + engine) against the raw engine.

Run from the repository root after ``make run`` (it serves the repository's Gemma 3 270M)::

    .venv/bin/python benchmarks/serving_overhead.py [--model gemma3-270m] [--rounds 4]
        [--prompts 24] [--output-tokens 16] [--check] [--json]

One llama.cpp engine is started from the repository; SutazAI's gateway runs in its own
process in front of it (as under ``sutazai serve``). The same seeded, sequential load
(short prompts, 16-token completions, streamed) then alternates between the raw engine
and the gateway, ``--rounds`` times each, so drift on a shared machine hits both alike.
Reported: TTFT and end-to-end P50/P95/P99 of each path, and the ratio of P95s.

Targets (issue 3): P95 TTFT <= 100 ms through SutazAI; SutazAI adds at most 2 % to the
raw engine's P95 end-to-end latency. Exit code 0 unless ``--check`` and a target fails.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import run_gateway  # noqa: E402 (after the path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import httpx
    from rich.console import Console
    from rich.table import Table

    from sutazai.benchmark.loadgen import run_load
    from sutazai.benchmark.metrics import Distribution, RequestRecord
    from sutazai.benchmark.profiles import LoadProfile
    from sutazai.benchmark.prompts import load_corpus, make_prompts
    from sutazai.config import load_settings
    from sutazai.serving.engines import start_engine
    from sutazai.serving.process import free_port
    from sutazai.serving.service import resolve_target

    settings = load_settings()
    manifest = resolve_target(settings, args.model).manifest
    profile = LoadProfile(name="overhead", mode="sequential", num_prompts=args.prompts,
                          output_tokens=args.output_tokens, warmup=2)
    prompts = make_prompts(load_corpus(settings.benchmark_data_dir / "prompts.txt"),
                           profile.warmup + profile.num_prompts, profile.input_words,
                           profile.seed)
    err = Console(stderr=True)
    engine = start_engine(settings, manifest, "llamacpp")
    port = free_port()
    gateway = multiprocessing.get_context("fork").Process(target=run_gateway,
                                                          args=(engine, port), daemon=True)
    gateway.start()
    paths = {"raw engine": engine.base_url, "SutazAI gateway": f"http://127.0.0.1:{port}"}
    records: dict[str, list[RequestRecord]] = {name: [] for name in paths}
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{paths['SutazAI gateway']}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        for round_number in range(args.rounds):
            for name, url in paths.items():
                [step] = run_load(url, engine.model, prompts, profile)
                if step.incomplete or step.metrics.failed:
                    raise SystemExit(f"{name} failed: {step.abort_reason}")
                records[name] += step.records
                err.log(f"round {round_number + 1}/{args.rounds} {name}: P95 e2e "
                        f"{step.metrics.e2el.p95_ms:.1f} ms")
    finally:
        gateway.terminate()
        gateway.join(10)
        engine.stop()

    figures: dict[str, Any] = {"model": manifest.ref, "engine": "llamacpp",
                               "threads": settings.engine_threads, "rounds": args.rounds,
                               "requests_per_path": args.rounds * args.prompts,
                               "output_tokens": args.output_tokens}
    for name, rows in records.items():
        figures[name] = {
            "ttft": Distribution.of([r.ttft for r in rows if r.ttft is not None]).model_dump(),
            "e2el": Distribution.of([r.latency for r in rows if r.latency is not None]
                                    ).model_dump(),
        }
    raw, ours = figures["raw engine"], figures["SutazAI gateway"]
    figures["e2el_p95_ratio"] = ours["e2el"]["p95_ms"] / raw["e2el"]["p95_ms"]
    figures["ttft_p95_ratio"] = ours["ttft"]["p95_ms"] / raw["ttft"]["p95_ms"]
    figures["ttft_target_pass"] = ours["ttft"]["p95_ms"] <= 100.0
    figures["overhead_target_pass"] = figures["e2el_p95_ratio"] <= 1.02
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        table = Table(title=f"{manifest.ref} on llama.cpp, {args.rounds}x{args.prompts} "
                            f"sequential requests per path, {args.output_tokens}-token outputs")
        for column in ("path", "TTFT P50", "TTFT P95", "TTFT P99", "e2e P50", "e2e P95",
                       "e2e P99"):
            table.add_column(column, justify="left" if column == "path" else "right")
        for name in paths:
            f = figures[name]
            table.add_row(name, *(f"{f[m][p]:.1f} ms" for m in ("ttft", "e2el")
                                  for p in ("median_ms", "p95_ms", "p99_ms")))
        console = Console()
        console.print(table)
        console.print(f"SutazAI / raw P95 end-to-end: {figures['e2el_p95_ratio']:.3f}x "
                      f"({'PASS' if figures['overhead_target_pass'] else 'FAIL'}: <= 1.02x); "
                      f"P95 TTFT through SutazAI {ours['ttft']['p95_ms']:.1f} ms "
                      f"({'PASS' if figures['ttft_target_pass'] else 'FAIL'}: <= 100 ms)",
                      highlight=False)
    failed = not (figures["ttft_target_pass"] and figures["overhead_target_pass"])
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
