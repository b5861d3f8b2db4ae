"""SutazAI's load generator and ``vllm bench serve`` against a server whose timing is known.

Run from the repository root (``.venv-vllm`` must hold vLLM, as ``make setup vllm`` makes it)::

    .venv/bin/python benchmarks/harness_truth.py [--scenarios fast engine]
        [--concurrency 1 4 16] [--json] [--check]

The synthetic server (``sutazai.benchmark.synthetic_server``, its own process on
127.0.0.1) streams on a seeded schedule, so the true TTFT, TPOT and output throughput of
each load are computed, not measured (``simulate``). Both tools send the same prompts,
closed-loop, at each concurrency; each tool's mean and P95 TTFT, mean and P95 TPOT and
output throughput are printed with their error against the truth. ``vllm bench serve``
needs a tokenizer: a tiny Llama's (``tests/tiny_llama.py``), made offline.

Scenarios: ``fast`` is the tiny model of issue 16 (TTFT 20 ms, TPOT 2 ms, 32 tokens);
``engine`` a slower engine with 8 slots (TTFT 100 ms, TPOT 10 ms, 32 tokens), so that
concurrency 16 queues and the wait shows in TTFT. TTFT and TPOT vary +-20 % per prompt.

Target (issue 16): SutazAI within 2 % of the truth on every figure. ``--check``: exit 1
if a figure of SutazAI is off by more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness_vs_vllm_bench import vllm_bench  # noqa: E402
from sutazai.benchmark.synthetic_server import Timing, serve_in_subprocess, simulate  # noqa: E402

TOLERANCE = 0.02
SCENARIOS = {
    "fast": (Timing(ttft_s=0.020, tpot_s=0.002, jitter=0.2, seed=0), 32),
    "engine": (Timing(ttft_s=0.100, tpot_s=0.010, slots=8, jitter=0.2, seed=0), 32),
}
KEYS = ("mean_ttft_ms", "p95_ttft_ms", "mean_tpot_ms", "p95_tpot_ms", "output_throughput")


def _ours(metrics: Any) -> dict[str, float]:
    return {"mean_ttft_ms": metrics.ttft.mean_ms, "p95_ttft_ms": metrics.ttft.p95_ms,
            "mean_tpot_ms": metrics.tpot.mean_ms, "p95_tpot_ms": metrics.tpot.p95_ms,
            "output_throughput": metrics.output_throughput}


def _server_seen(url: str, skip: int) -> float:
    """Mean TTFT as the server saw it (handler entered to first chunk written), in ms."""
    trace = json.load(urllib.request.urlopen(url + "/stats"))["trace"][skip:]
    return 1000 * statistics.mean(first - received for received, _, first, _ in trace)


def _reset(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url + "/reset", method="POST")).read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--waves", type=int, default=6,
                        help="prompts per step = waves x concurrency (at least 16)")
    parser.add_argument("--no-vllm", action="store_true", help="SutazAI only")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from sutazai.benchmark.loadgen import run_load
    from sutazai.benchmark.profiles import LoadProfile
    from sutazai.benchmark.prompts import load_corpus, make_prompts
    from sutazai.config import load_settings
    from tests.tiny_llama import make_tiny_llama

    err = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="sutazai-harness-truth-"))
    tokenizer = make_tiny_llama(work / "tiny-llama")
    vllm_python = load_settings().vllm_venv / "bin" / "python"
    corpus = load_corpus(ROOT / "benchmarks" / "data" / "prompts.txt")
    rows: list[dict[str, Any]] = []
    for name in args.scenarios:
        timing, output_tokens = SCENARIOS[name]
        with serve_in_subprocess(timing, model="synthetic") as url:
            for concurrency in args.concurrency:
                n = max(16, args.waves * concurrency)
                prompts = make_prompts(corpus, 2 + n, 24, seed=concurrency)
                truth = _ours(simulate(timing, prompts[2:], output_tokens, concurrency))
                profile = LoadProfile(name="truth", mode="concurrency", concurrency=concurrency,
                                      num_prompts=n, output_tokens=output_tokens, warmup=2)
                _reset(url)
                [step] = run_load(url, "synthetic", prompts, profile)
                measured = {"sutazai": _ours(step.metrics)}
                seen = {"sutazai": _server_seen(url, skip=2)}
                if not args.no_vllm:
                    prompt_file = work / f"prompts-{name}-{concurrency}.jsonl"
                    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n"
                                                   for p in prompts[2:]))
                    _reset(url)
                    result = vllm_bench(vllm_python, url, "synthetic", tokenizer, prompt_file,
                                        n, concurrency, output_tokens,
                                        work / f"vllm-{name}-{concurrency}.json",
                                        percentiles="50,95")
                    measured["vllm_bench_serve"] = {k: float(result[k]) for k in KEYS}
                    seen["vllm_bench_serve"] = _server_seen(url, skip=1)
                for tool, figures in measured.items():
                    rows.append({"scenario": name, "concurrency": concurrency, "prompts": n,
                                 "tool": tool, "truth": truth, "measured": figures,
                                 "server_seen_mean_ttft_ms": seen[tool],
                                 "error": {k: figures[k] / truth[k] - 1 for k in KEYS}})
                    err.log(f"{name} c={concurrency} {tool}: " + ", ".join(
                        f"{k} {figures[k]:.2f} ({rows[-1]['error'][k]:+.1%})" for k in KEYS))

    ours_ok = all(abs(e) <= TOLERANCE for r in rows if r["tool"] == "sutazai"
                  for e in r["error"].values())
    if args.json:
        json.dump({"rows": rows, "tolerance": TOLERANCE, "pass": ours_ok}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        table = Table(title="error against the truth (measured / true - 1)")
        for column in ("scenario", "c", "tool", "TTFT mean", "TTFT P95", "TPOT mean",
                       "TPOT P95", "out tok/s", "true TTFT / TPOT / tok/s",
                       "server-seen TTFT"):
            table.add_column(column)
        for r in rows:
            t = r["truth"]
            table.add_row(r["scenario"], str(r["concurrency"]), r["tool"],
                          *(f"{r['error'][k]:+.2%}" for k in KEYS),
                          f"{t['mean_ttft_ms']:.2f} / {t['mean_tpot_ms']:.3f} / "
                          f"{t['output_throughput']:.0f}",
                          f"{r['server_seen_mean_ttft_ms']:.2f}")
        Console().print(table)
        Console().print(f"SutazAI within {TOLERANCE:.0%} everywhere: {ours_ok}")
    return 0 if ours_ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
