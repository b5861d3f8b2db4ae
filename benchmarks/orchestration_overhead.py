"""Orchestration overhead: SutazAI's pipeline steps under kfp.local versus direct calls.

Run from the repository root (after ``make run`` or ``make test`` set things up)::

    .venv/bin/python benchmarks/orchestration_overhead.py [--steps 6] [--cycle] [--json]
                                                          [--check]

Three measurements, in one run:

* **Per-step overhead.** A pipeline of ``--steps`` sequential ``list_catalog`` steps (the
  real component, reading the real catalog) runs under ``kfp.local.SubprocessRunner(
  use_venv=False)``, as ``make run`` runs the nightly; the peer is the same function
  (``load_catalog(...).select()``) called ``--steps`` times in this process. Overhead per
  step = (pipeline seconds - direct seconds) / steps: a fresh Python per step, the
  imports, KFP's executor and its output files. Target <= 1 s per step.
* **DAG parse times**, measured by Airflow's own DagBag, file by file, in a fresh process.
  Target < 0.5 s per file.
* **The whole nightly cycle** (``--cycle``): ``python -m sutazai_stack nightly`` (what
  ``make run`` runs: Airflow's ``dags test`` -> KFP -> every step) on the embedded
  defaults in ``.sutazai/``. Target <= 10 minutes on 2 cores. Its benchmarks are reused
  when the same bytes were measured before, so a second run is the warm figure; a first
  run is what ``make run`` prints on a fresh machine.

The exit code is 0 whatever the figures unless ``--check`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STEP_TARGET_S = 1.0
PARSE_TARGET_S = 0.5
CYCLE_TARGET_S = 600.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="sequential steps (default 6)")
    parser.add_argument("--cycle", action="store_true",
                        help="also time the whole nightly cycle through Airflow (minutes)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args(argv)


def step_overhead(steps: int) -> dict[str, float]:
    from kfp import dsl, local

    from components.model_sync import list_catalog
    from pipelines.runner import settings_environment
    from sutazai.config import load_settings
    from sutazai.environ import overlaid
    from sutazai.repository import load_catalog

    settings = load_settings()

    @dsl.pipeline(name="overhead")
    def chain():  # type: ignore[no-untyped-def]  (KFP reads annotations; none here)
        task = list_catalog(names=[])
        for _ in range(steps - 1):
            task = list_catalog(names=[]).after(task)

    started = time.perf_counter()
    for _ in range(steps):
        load_catalog(settings.catalog).select(None)
    direct = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as root, overlaid(settings_environment(settings)):
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=root)
        started = time.perf_counter()
        chain()
        pipeline = time.perf_counter() - started
    return {"steps": steps, "direct_s": direct, "pipeline_s": pipeline,
            "overhead_per_step_s": (pipeline - direct) / steps}


def parse_times() -> list[dict[str, Any]]:
    from sutazai.config import load_settings
    from sutazai_stack.services import airflow_environment

    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home))
        env = {**os.environ, **airflow_environment(settings)}
        done = subprocess.run([sys.executable, "-m", "sutazai_stack.dag_probe", "integrity"],
                              env=env, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    stats: list[dict[str, Any]] = json.loads(line[len("RESULT "):])["stats"]
    return sorted(stats, key=lambda s: s["file"])


def nightly_cycle() -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sutazai_stack", "nightly"], cwd=ROOT,
                          capture_output=True, text=True)
    return {"seconds": time.perf_counter() - started, "exit_code": done.returncode}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(ROOT)
    results: dict[str, Any] = {"steps": step_overhead(args.steps), "parse": parse_times()}
    if args.cycle:
        results["cycle"] = nightly_cycle()
    passed = (results["steps"]["overhead_per_step_s"] <= STEP_TARGET_S
              and all(s["duration_s"] < PARSE_TARGET_S for s in results["parse"])
              and ("cycle" not in results or (results["cycle"]["exit_code"] == 0
                                              and results["cycle"]["seconds"] <= CYCLE_TARGET_S)))
    results["passed"] = passed
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
    else:
        show(results)
    return 1 if args.check and not passed else 0


def show(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SutazAI orchestration overhead (2 cores, embedded defaults)")
    for column in ("measure", "SutazAI", "peer", "per unit", "target"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    steps = results["steps"]
    table.add_row(f"{steps['steps']} list_catalog steps",
                  f"{steps['pipeline_s']:.2f} s (kfp.local)",
                  f"{steps['direct_s']:.3f} s (direct)",
                  f"{steps['overhead_per_step_s']:.2f} s/step", f"<= {STEP_TARGET_S:g} s")
    for stat in results["parse"]:
        table.add_row(f"parse {stat['file']}", f"{stat['duration_s'] * 1000:.1f} ms", "", "",
                      f"< {PARSE_TARGET_S * 1000:g} ms")
    if "cycle" in results:
        cycle = results["cycle"]
        table.add_row("nightly cycle via Airflow + KFP", f"{cycle['seconds']:.0f} s",
                      "", f"exit {cycle['exit_code']}", f"<= {CYCLE_TARGET_S:g} s")
    console = Console(width=120)
    console.print(table)
    console.print("targets met" if results["passed"] else "[red]a target was missed[/]")


if __name__ == "__main__":
    sys.exit(main())
