"""Does the regression monitor alarm on noise, and does it catch a real slowdown?

Run from the repository root::

    .venv/bin/python benchmarks/regression_power.py [--seeds 20] [--prompts 100]
        [--nights 1] [--slowdown 0.10] [--json] [--check]

For each seed, the synthetic server (``sutazai.benchmark.synthetic_server``, its own
process; TTFT 20 ms and TPOT 4 ms, each drawn per request within +-20 %, as in
``harness_truth.py``) is benchmarked by SutazAI's load generator (Poisson arrivals,
16 output tokens, the same prompts every run as a nightly benchmark sends):

- ``--nights`` baseline runs (the earlier nights),
- one run with the same timing (tonight, nothing changed),
- one run with TPOT ``--slowdown`` slower (tonight, the engine got slower).

Every run has its own server seed (each request's jitter) and arrival seed. Each
"tonight" is judged against the baseline nights by two rules, on the same runs:

- SutazAI: the bootstrap decision of :mod:`sutazai.benchmark.compare` (95 % interval of the
  relative change beyond 3 %), on TTFT P95, mean TPOT and end-to-end P95;
- peer: the old one-number rule (the figure against the median of the baseline nights,
  flagged beyond ``--tolerance``, 10 %).

False alarm: any of the three metrics flagged on an unchanged night. Detection: mean TPOT
flagged on a slowed night. Target (the issue): false alarms <= 5 %, detection >= 95 %.
``--check``: exit 1 if SutazAI misses either.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sutazai.benchmark.compare import (  # noqa: E402
    SAMPLED,
    Samples,
    compare_samples,
    figures,
    samples_of,
)
from sutazai.benchmark.synthetic_server import Timing, serve_in_subprocess  # noqa: E402

FALSE_ALARM_TARGET = 0.05
DETECTION_TARGET = 0.95
DETECT = "tpot_mean_ms"


def measure(timing: Timing, prompts: list[str], n: int, output_tokens: int, rate: float,
            concurrency: int, arrival_seed: int) -> Samples:
    """One benchmark run of its own server: its per-request samples."""
    from sutazai.benchmark.loadgen import run_load
    from sutazai.benchmark.profiles import LoadProfile

    profile = LoadProfile(name="power", mode="poisson", rate=rate, concurrency=concurrency,
                          num_prompts=n, output_tokens=output_tokens, warmup=2,
                          seed=arrival_seed)
    with serve_in_subprocess(timing) as url:
        [step] = run_load(url, "synthetic", prompts, profile)
    return samples_of(step.records)


def median_rule(tonight: Samples, nights: list[Samples], tolerance: float) -> dict[str, bool]:
    """The old monitor: each figure against the median of the nights' figures."""
    now = figures(tonight)
    before = [figures(n) for n in nights]
    return {m: now[m] / statistics.median(b[m] for b in before) - 1 > tolerance
            for m in SAMPLED}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--prompts", type=int, default=100, help="requests per run")
    parser.add_argument("--nights", type=int, default=1, help="baseline runs per seed")
    parser.add_argument("--slowdown", type=float, default=0.10, help="TPOT, relative")
    parser.add_argument("--tolerance", type=float, default=0.10, help="the old rule's")
    parser.add_argument("--ttft-ms", type=float, default=20.0)
    parser.add_argument("--tpot-ms", type=float, default=4.0)
    parser.add_argument("--jitter", type=float, default=0.2)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--rate", type=float, default=50.0, help="Poisson arrivals per s")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from sutazai.benchmark.prompts import load_corpus, make_prompts

    err = Console(stderr=True)
    corpus = load_corpus(ROOT / "benchmarks" / "data" / "prompts.txt")
    prompts = make_prompts(corpus, 2 + args.prompts, 12, seed=0)
    base = dict(ttft_s=args.ttft_ms / 1000, jitter=args.jitter)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        def run(k: int, tpot_ms: float, seed: int = seed) -> Samples:
            timing = Timing(tpot_s=tpot_ms / 1000, seed=1000 * seed + k, **base)
            return measure(timing, prompts, args.prompts, args.output_tokens, args.rate,
                           args.concurrency, arrival_seed=1000 * seed + k)

        nights = [run(k, args.tpot_ms) for k in range(args.nights)]
        same = run(args.nights, args.tpot_ms)
        slow = run(args.nights + 1, args.tpot_ms * (1 + args.slowdown))
        row: dict[str, Any] = {"seed": seed}
        for name, tonight in (("same", same), ("slow", slow)):
            decided = compare_samples(tonight, nights, seed=seed)
            row[name] = {
                "bootstrap": {m: c.regressed for m, c in decided.items()},
                "median": median_rule(tonight, nights, args.tolerance),
                "interval": {m: [c.change, c.low, c.high] for m, c in decided.items()},
            }
        rows.append(row)
        t = row["slow"]["interval"][DETECT]
        s = row["same"]["interval"][DETECT]
        err.log(f"seed {seed}: TPOT same {s[0]:+.1%} [{s[1]:+.1%}, {s[2]:+.1%}], "
                f"slow {t[0]:+.1%} [{t[1]:+.1%}, {t[2]:+.1%}]")

    def rate(kind: str, rule: str, metric: str | None) -> float:
        hits = [any(r[kind][rule].values()) if metric is None else r[kind][rule][metric]
                for r in rows]
        return sum(hits) / len(hits)

    result: dict[str, Any] = {"seeds": args.seeds, "prompts": args.prompts,
                              "nights": args.nights, "slowdown": args.slowdown,
                              "seconds": time.monotonic() - started, "rules": {}}
    for rule in ("bootstrap", "median"):
        result["rules"][rule] = {
            "false_alarm_any": rate("same", rule, None),
            "false_alarm": {m: rate("same", rule, m) for m in SAMPLED},
            "detection": rate("slow", rule, DETECT),
            "slow_flagged": {m: rate("slow", rule, m) for m in SAMPLED},
        }
    ours, peer = result["rules"]["bootstrap"], result["rules"]["median"]
    widths = [r["same"]["interval"][DETECT][2] - r["same"]["interval"][DETECT][1] for r in rows]
    result["tpot_interval_width_median"] = statistics.median(widths)
    result["detection_ratio"] = (ours["detection"] / peer["detection"]
                                 if peer["detection"] else None)
    ok = (ours["false_alarm_any"] <= FALSE_ALARM_TARGET
          and ours["detection"] >= DETECTION_TARGET)
    result["pass"] = ok
    if args.json:
        json.dump({**result, "runs": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        table = Table(title=f"{args.seeds} seeds, {args.prompts} requests per run, "
                            f"{args.nights} baseline night(s), TPOT +{args.slowdown:.0%}")
        for column in ("rule", "false alarms", "per metric", "TPOT slowdown flagged",
                       "slow night, per metric"):
            table.add_column(column)
        for rule, name in (("bootstrap", "SutazAI: bootstrap, CI beyond 3 %"),
                           ("median", f"peer: median, {args.tolerance:.0%} tolerance")):
            r = result["rules"][rule]
            table.add_row(name, f"{r['false_alarm_any']:.0%}",
                          " / ".join(f"{r['false_alarm'][m]:.0%}" for m in SAMPLED),
                          f"{r['detection']:.0%}",
                          " / ".join(f"{r['slow_flagged'][m]:.0%}" for m in SAMPLED))
        table.caption = "per metric: " + " / ".join(SAMPLED)
        console = Console()
        console.print(table)
        ratio = result["detection_ratio"]
        console.print(f"detection ratio SutazAI / peer: "
                      f"{'inf' if ratio is None else f'{ratio:.2f}x'}; median width of the "
                      f"TPOT interval on unchanged nights: "
                      f"{result['tpot_interval_width_median']:.1%}; {result['seconds']:.0f} s")
        console.print(f"targets (false alarms <= {FALSE_ALARM_TARGET:.0%}, detection >= "
                      f"{DETECTION_TARGET:.0%}) met: {ok}")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
