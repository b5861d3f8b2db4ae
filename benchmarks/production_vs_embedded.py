"""Production profile against embedded: registry read latency and the nightly cycle.

Run from the repository root (needs PostgreSQL and redis-server: make system-deps)::

    .venv/bin/python benchmarks/production_vs_embedded.py [--models 50] [--versions 20]
        [--repeats 20] [--benchmarks 50] [--cli-repeats 3] [--probes 5] [--skip-nightly]
        [--skip-cli] [--json]

About 2.5 minutes with the defaults on 2 busy cores (1,000 versions in each home).

Two homes in one temporary folder (mode 0755, so PostgreSQL's user reaches its cluster):

* **embedded**: MLflow's registry in ``<home>/mlflow.db`` (SQLite, in this process);
* **production**: a :class:`~sutazai.production.postgres.LocalPostgres` cluster (durable,
  as deployed) with SutazAI's role and databases, Redis, and ``mlflow server`` on the
  ``mlflow`` database started by :func:`sutazai_stack.services.start` exactly as
  ``SUTAZAI_PROFILE=production make up`` starts it (PGPASSWORD in its environment); the
  production settings' tracking URI is that server.

In this order (0-2 in each home):

0. **The store**: embedded, MLflow's SQLite tables and migrations made (timed); production,
   the same done by the ``mlflow server`` start (timed), before anything else.
1. **The nightly cycle** (unless ``--skip-nightly``): ``sutazai run --json`` invoked in a
   fresh Python of its own per home (Typer's runner on the CLI app there, so each stage of
   :data:`sutazai.workflows.nightly.IN_PROCESS` can be timed) on a catalog of spaCy's
   ``en-core-web-sm`` only, benchmark profile ``smoke``, no vLLM, an empty learning inbox
   (so the data gate stops training, as on a machine with no feedback yet). In process,
   not through Airflow/KFP: this compares the stores, not the orchestrators.
2. **Seeding** ``--models`` x ``--versions`` repository versions (tiny GGUF-named blobs,
   published in the home's repository) and their MLflow model versions: each model's
   first version through :meth:`ModelRegistry.register` (registered model, lineage run,
   version, as a pull does), the others through the bulk path, ``create_model_version``
   with the same source, tags and description ``register`` writes (no lineage run: it is
   not read by ``models list`` or the leaderboard). ``--benchmarks`` models get one
   synthetic benchmark run (no engine runs) logged by :func:`log_benchmark`, and task
   aliases are set by :class:`TaskAliases` as the selection sets them (a champion that
   moved, so ``sutazai.previous_champion`` is written too).
3. **PostgreSQL's statistics**: right after the bulk registration the planner has none
   for MLflow's tables, and ``search_registered_models`` (MLflow's window-function query
   for each model's latest versions, the fix of mlflow/mlflow#16582) is timed ``--probes``
   times like that; then ``ANALYZE`` (autovacuum did it by itself 58 s after seeding in
   one run here) and the same probes again. The reads below run on the analysed database, the steady
   state of a live registry; SQLite is left as MLflow leaves it (never analysed).
4. **Reads**, ``--repeats`` times each, the two homes interleaved repeat by repeat (both
   meet the same background load), in this process (warm: MLflow's SQL store stays open
   between calls, as in a long-lived process): what ``sutazai models list`` does
   (repository manifests + :func:`current_aliases` + each version's aliases), the alias
   reading alone, and :func:`sutazai.selection.leaderboard.leaderboard` (``sutazai bench
   leaderboard``); then ``--cli-repeats`` times each through the real CLI in a fresh
   process (cold: imports, store opening) for the end-to-end figure (median shown).

The repository seeding runs the same code in both homes (the repository is files in
either profile): its ratio shows how much the shared machine's load moved between them.

Every public ``MlflowClient`` method is wrapped for the reads, so the report names the
slowest calls and how many of each one command makes. Figures are P50/P95 over the
repeats, with the production/embedded ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import spacy_entry  # noqa: E402 (after the path)

PROFILES = ("embedded", "production")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=50, help="registered models (50)")
    parser.add_argument("--versions", type=int, default=20, help="versions of each (20)")
    parser.add_argument("--repeats", type=int, default=20, help="timed reads per call (20)")
    parser.add_argument("--benchmarks", type=int, default=50,
                        help="models with a (synthetic) benchmark run (50)")
    parser.add_argument("--skip-nightly", action="store_true", help="no nightly cycle")
    parser.add_argument("--skip-cli", action="store_true", help="no CLI subprocess reads")
    parser.add_argument("--cli-repeats", type=int, default=3,
                        help="CLI processes per command; the median is shown (3)")
    parser.add_argument("--probes", type=int, default=5, help="search_registered_models "
                        "calls before and after PostgreSQL's ANALYZE (5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--nightly-child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- timing
class CallLog:
    """Seconds of each outermost ``MlflowClient`` call while ``active`` (nested client
    calls, such as ``download_artifacts`` asking for the run, count in their caller)."""

    def __init__(self) -> None:
        self.active = False
        self.depth = 0
        self.calls: dict[str, list[float]] = defaultdict(list)

    def reset(self) -> None:
        self.calls = defaultdict(list)

    def snapshot(self) -> dict[str, list[float]]:
        return {name: list(times) for name, times in self.calls.items()}


def instrument_mlflow() -> CallLog:
    from mlflow.tracking import MlflowClient

    log = CallLog()

    def wrap(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not log.active or log.depth:
                return method(*args, **kwargs)
            log.depth += 1
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                log.calls[name].append(time.perf_counter() - started)
                log.depth -= 1

        timed.__wrapped__ = method  # type: ignore[attr-defined]
        return timed

    for name in dir(MlflowClient):
        attribute = getattr(MlflowClient, name)
        if not name.startswith("_") and callable(attribute) and not isinstance(attribute, type):
            setattr(MlflowClient, name, wrap(name, attribute))
    return log


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``env`` on top of a copy of ``os.environ`` for the block (settings load from it)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ------------------------------------------------------------------------ the servers
class ProductionServers:
    """PostgreSQL (durable, as deployed), Redis and the stack's MLflow server on it."""

    def __init__(self, root: Path) -> None:
        from sutazai.production.postgres import LocalPostgres
        from sutazai.serving.process import free_port

        self.root = root
        self.password = secrets.token_urlsafe(16)
        self.redis_password = secrets.token_urlsafe(16)
        self.cluster = LocalPostgres(root / "postgres" / "data", free_port(),
                                     root / "postgres.log")
        self.redis: Any = None
        self.redis_port = free_port()
        self.mlflow_port = free_port()
        self.mlflow: Any = None

    def environment(self) -> dict[str, str]:
        from sutazai.security.rate_limit import PASSWORD_SECRET as REDIS_PASSWORD
        from sutazai.security.secret_base import POSTGRES_PASSWORD, env_var

        return {"SUTAZAI_PROFILE": "production",
                "SUTAZAI_POSTGRES_PORT": str(self.cluster.port),
                "SUTAZAI_REDIS_PORT": str(self.redis_port),
                "SUTAZAI_MLFLOW_PORT": str(self.mlflow_port),
                env_var(POSTGRES_PASSWORD): self.password,
                env_var(REDIS_PASSWORD): self.redis_password}

    def start_databases(self) -> None:
        from sutazai.production.redis_server import answers, redis_binary, write_config
        from sutazai.serving.process import ManagedProcess
        from sutazai_stack.services import DATABASES

        self.cluster.start()
        self.cluster.ensure_role("sutazai", self.password, list(DATABASES))
        folder = self.root / "redis"
        self.redis = ManagedProcess(
            "redis", [redis_binary(), str(write_config(folder, self.redis_port,
                                                       self.redis_password))],
            self.root / "redis.log", url=f"redis://127.0.0.1:{self.redis_port}",
            die_with_owner=True).start()
        deadline = time.monotonic() + 30
        while not answers(self.redis_port, self.redis_password):
            if time.monotonic() > deadline or not self.redis.alive():
                raise SystemExit(f"redis did not start; see {self.root / 'redis.log'}")
            time.sleep(0.05)

    def start_mlflow(self) -> float:
        """The stack's MLflow service (needs the production environment applied)."""
        from sutazai.config import load_settings
        from sutazai_stack import services as stack

        settings = load_settings()
        [self.mlflow] = [s for s in stack.services(settings) if s.name == "mlflow"]
        stack.stack_dir(settings).mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        stack.start(settings, self.mlflow)
        self.mlflow_settings = settings
        return time.monotonic() - started

    def analyse(self) -> float:
        """``ANALYZE`` MLflow's database, as autovacuum does on its own some time after a
        bulk registration (a minute here); returns its seconds."""
        connection = self.cluster.admin("mlflow")
        started = time.perf_counter()
        try:
            connection.execute("ANALYZE")
        finally:
            connection.close()
        return time.perf_counter() - started

    def stop(self) -> None:
        from sutazai_stack import services as stack

        if self.mlflow is not None:
            stack.stop(self.mlflow_settings, self.mlflow)
        if self.redis is not None:
            self.redis.stop()
        self.cluster.stop()


# --------------------------------------------------------------------------- the cycle
def nightly(log: CallLog) -> dict[str, Any]:
    """``sutazai run --json`` in this process, each stage timed."""
    from typer.testing import CliRunner

    from sutazai.cli.main import app
    from sutazai.workflows import nightly as cycle

    stages: dict[str, float] = {}
    original = dict(cycle.IN_PROCESS)

    def timed(name: str, stage: Callable[..., None]) -> Callable[..., None]:
        def run(*args: Any) -> None:
            started = time.perf_counter()
            try:
                stage(*args)
            finally:
                stages[name] = time.perf_counter() - started
        return run

    cycle.IN_PROCESS.update({name: timed(name, stage) for name, stage in original.items()})
    log.reset()
    log.active = True
    started = time.perf_counter()
    try:
        result = CliRunner().invoke(app, ["run", "--json"])
    finally:
        wall = time.perf_counter() - started
        log.active = False
        cycle.IN_PROCESS.update(original)
    output = result.stdout
    report: dict[str, Any] = {}
    if "{" in output:
        try:
            report = json.loads(output[output.index("{"):])
        except json.JSONDecodeError:
            report = {}
    if not report:
        raise SystemExit(f"sutazai run printed no report (exit {result.exit_code}): "
                         f"{result.exception!r}\n{output[-3000:]}")
    calls = log.snapshot()
    return {"wall_s": wall, "report_s": report.get("seconds"), "exit_code": result.exit_code,
            "stages": stages, "failures": report.get("failures", []),
            "champions": {task: (c or {}).get("model") for task, c in
                          (report.get("champions") or {}).items()},
            "mlflow_calls": sum(len(t) for t in calls.values()),
            "mlflow_s": sum(sum(t) for t in calls.values())}


# --------------------------------------------------------------------------- seeding
def seed(models: int, versions: int, benchmarked: int) -> dict[str, Any]:
    """The repository versions and their MLflow registrations, benchmarks and aliases."""
    with contextlib.redirect_stdout(io.StringIO()):  # MLflow prints a link per run
        return _seed(models, versions, benchmarked)


def _seed(models: int, versions: int, benchmarked: int) -> dict[str, Any]:
    from sutazai.benchmark.profiles import get_profile
    from sutazai.benchmark.runner import BenchmarkSummary, StepSummary, log_benchmark
    from sutazai.config import load_settings
    from sutazai.registry import open_registry
    from sutazai.registry.mlflow_registry import TAG, describe, repository_uri, version_tags
    from sutazai.registry.task_aliases import CHALLENGER, CHAMPION, TaskAliases
    from sutazai.repository import open_repository
    from sutazai.repository.manifest import FileEntry, Manifest

    settings = load_settings()
    repo = open_repository(settings)
    folder = settings.home / "seed"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    newest: list[Manifest] = []
    manifests: list[Manifest] = []
    for m in range(models):
        name = f"bench-model-{m:03d}"
        for v in range(versions):
            path = folder / "model.gguf"
            path.write_bytes(b"GGUF" + f"{name} version {v}".encode() * 4)
            digest, size, _ = repo.ingest_file(path)
            manifest, _ = repo.publish(
                name=name, files=[FileEntry(path="model.gguf", digest=digest, size=size)],
                source=f"hf:bench/{name}", revision=f"{v:040x}", format="gguf",
                tasks=["text-generation"], license="apache-2.0",
                description=f"benchmark model {m}")
            manifests.append(manifest)
        newest.append(manifest)
    repository_s = time.perf_counter() - started

    started = time.perf_counter()
    registry = open_registry(settings)
    for manifest in manifests:
        location = repo.snapshot_path(manifest)
        if manifest.version == 1:  # as a pull registers: model, lineage run, version
            registry.register(manifest, location)
            continue
        registry.client.create_model_version(  # the bulk path: what register writes
            manifest.name, source=repository_uri(manifest),
            tags=version_tags(manifest) | {f"{TAG}path": str(location.resolve())},
            description=describe(manifest), await_creation_for=0)
    registry_s = time.perf_counter() - started

    started = time.perf_counter()
    for rank, manifest in enumerate(newest[:benchmarked]):
        throughput = 10.0 + rank
        step = StepSummary(concurrency=1, completed=4, failed=0, ttft_p95_ms=50.0,
                           tpot_p95_ms=5.0, e2el_p95_ms=120.0, ttft_p50_ms=40.0,
                           ttft_p99_ms=60.0, request_throughput=1.0,
                           output_throughput=throughput, goodput=None)
        log_benchmark(settings, BenchmarkSummary(
            model=manifest.name, version=manifest.version, digest=manifest.digest,
            task="text-generation", engine="llamacpp", profile=get_profile("smoke"),
            steps=[step], quality=None, load_seconds=0.5, peak_rss_bytes=None,
            size_bytes=manifest.size), [], None)
    benchmarks_s = time.perf_counter() - started

    aliases = TaskAliases(registry)
    picks = newest[:3]
    if len(picks) == 3:  # the selection's champion moved once: previous_champion written
        aliases.set("text-generation", CHAMPION, picks[0], "llamacpp", 1, "first pick")
        aliases.set("text-generation", CHALLENGER, picks[1], "llamacpp", 1, "runner-up")
        aliases.set("text-generation", CHAMPION, picks[2], "llamacpp", 1, "next night")
        aliases.set("text-generation", CHALLENGER, picks[0], "llamacpp", 1, "runner-up")
    return {"versions": len(manifests), "repository_s": repository_s,
            "registry_s": registry_s, "benchmarks_s": benchmarks_s}


# ----------------------------------------------------------------------------- reads
def models_list() -> int:
    """What ``sutazai models list`` computes (its table left out)."""
    from sutazai.config import load_settings
    from sutazai.registry.task_aliases import current_aliases
    from sutazai.repository import open_repository

    settings = load_settings()
    manifests = open_repository(settings).all_versions()
    book = current_aliases(settings)
    return sum(len(book.names_of(m.name, m.version)) for m in manifests)


def alias_reading() -> int:
    """The registry's part of ``models list``: :func:`current_aliases` alone."""
    from sutazai.config import load_settings
    from sutazai.registry.task_aliases import current_aliases

    return len(current_aliases(load_settings()).holders)


def bench_leaderboard() -> int:
    """What ``sutazai bench leaderboard`` computes (its table left out)."""
    from sutazai.config import load_settings
    from sutazai.selection.leaderboard import leaderboard

    return len(leaderboard(load_settings()))


READS: dict[str, Callable[[], int]] = {
    "models list": models_list, "  of which aliases": alias_reading,
    "bench leaderboard": bench_leaderboard,
}
CLI = {"models list": ["models", "list", "--json"],
       "bench leaderboard": ["bench", "leaderboard", "--json"]}


def time_reads(log: CallLog, homes: dict[str, dict[str, str]], repeats: int
               ) -> dict[str, dict[str, Any]]:
    """Each read ``repeats`` times in each home, interleaved (repeat by repeat, home by
    home) so both profiles meet the same background load on a shared machine."""
    samples: dict[tuple[str, str], list[float]] = defaultdict(list)
    calls: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    rows: dict[tuple[str, str], int] = {}
    for env in homes.values():
        with environment(env):
            for read in READS.values():
                read()  # first use: imports, MLflow's store, the server's connection pool
    for _ in range(repeats):
        for profile, env in homes.items():
            with environment(env):
                for label, read in READS.items():
                    log.reset()
                    log.active = True
                    started = time.perf_counter()
                    try:
                        rows[profile, label] = read()
                    finally:
                        samples[profile, label].append(time.perf_counter() - started)
                        log.active = False
                    for name, times in log.snapshot().items():
                        calls[profile, label][name] += times
    results: dict[str, dict[str, Any]] = {profile: {} for profile in homes}
    for (profile, label), times in samples.items():
        results[profile][label.strip()] = {
            "p50_s": percentile(times, 50), "p95_s": percentile(times, 95),
            "max_s": max(times), "rows": rows[profile, label],
            "calls": {name: {"per_command": len(t) / repeats,
                             "mean_ms": 1000 * sum(t) / len(t), "max_ms": 1000 * max(t),
                             "ms_per_command": 1000 * sum(t) / repeats}
                      for name, t in calls[profile, label].items()}}
    return results


def search_models(probes: int) -> list[float]:
    """Seconds of ``probes`` ``search_registered_models`` calls as ``read_aliases`` makes."""
    from sutazai.config import load_settings
    from sutazai.registry import open_registry

    client = open_registry(load_settings()).client
    times = []
    for _ in range(probes):
        started = time.perf_counter()
        client.search_registered_models(max_results=1000)
        times.append(time.perf_counter() - started)
    return times


def cli_reads(homes: dict[str, dict[str, str]], repeats: int) -> dict[str, dict[str, float]]:
    """The median seconds of ``repeats`` fresh ``sutazai`` processes per command and home,
    the homes interleaved."""
    sutazai = Path(sys.executable).with_name("sutazai")
    samples: dict[str, dict[str, list[float]]] = {p: defaultdict(list) for p in homes}
    for _ in range(repeats):
        for label, args in CLI.items():
            for profile, env in homes.items():
                with environment(env):
                    started = time.perf_counter()
                    done = subprocess.run([str(sutazai), *args], capture_output=True,
                                          text=True, timeout=600, cwd=ROOT)
                    samples[profile][label].append(time.perf_counter() - started)
                if done.returncode != 0:
                    raise SystemExit(f"sutazai {' '.join(args)} failed ({profile}): "
                                     f"{done.stderr[-2000:]}")
    return {profile: {label: statistics.median(t) for label, t in figures.items()}
            for profile, figures in samples.items()}


def nightly_process() -> dict[str, Any]:
    """:func:`nightly` in a fresh Python of its own, so neither profile's cycle inherits
    the other's imports (spaCy, MLflow) or open stores."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--nightly-child"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("NIGHTLY ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"the nightly cycle's process failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("NIGHTLY "):])
    return result


def store_creation() -> float:
    """Embedded: MLflow's SQLite tables and migrations, made before the cycle as the
    production profile's are made by its server's start (both shown on their own row)."""
    from sutazai.config import load_settings
    from sutazai.registry import embedded_mlflow

    started = time.perf_counter()
    embedded_mlflow.prepare(load_settings().tracking_uri)
    return time.perf_counter() - started


# ------------------------------------------------------------------------------- main
def base_environment(home: Path) -> dict[str, str]:
    return {"SUTAZAI_HOME": str(home), "SUTAZAI_CATALOG": str(home / "catalog.yaml"),
            "SUTAZAI_VLLM_VENV": str(home / "no-vllm"), "SUTAZAI_BENCHMARK_PROFILE": "smoke",
            "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "SUTAZAI_PROFILE": "embedded"}


def prepare_home(profile: str, home: Path, env: dict[str, str], args: argparse.Namespace
                 ) -> dict[str, Any]:
    """The home's store, its nightly cycle, then the seeded versions."""
    import yaml

    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.yaml").write_text(yaml.safe_dump({"models": [spacy_entry()]}))
    result: dict[str, Any] = {}
    with environment(env):
        if profile == "embedded":
            result["store_creation_s"] = store_creation()
        if not args.skip_nightly:
            print(f"[{profile}] nightly cycle ...", file=sys.stderr, flush=True)
            result["nightly"] = nightly_process()
        print(f"[{profile}] seeding {args.models}x{args.versions} versions ...",
              file=sys.stderr, flush=True)
        result["seed"] = seed(args.models, args.versions, args.benchmarks)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nightly_child:  # the environment of one home is set by the parent
        print("NIGHTLY " + json.dumps(nightly(instrument_mlflow())))
        return 0
    for name in [n for n in os.environ if n.startswith("SUTAZAI_")] + ["MLFLOW_TRACKING_URI"]:
        os.environ.pop(name, None)  # both homes see only what this script sets
    log = instrument_mlflow()
    root = Path(tempfile.mkdtemp(prefix="sutazai-prod-vs-emb-"))
    root.chmod(0o755)  # the postgres user must reach its cluster's folder
    servers = ProductionServers(root)
    results: dict[str, Any] = {"models": args.models, "versions": args.versions,
                               "repeats": args.repeats, "benchmarks": args.benchmarks,
                               "cli_repeats": args.cli_repeats,
                               "cores": os.cpu_count(), "load": os.getloadavg()[0]}
    try:
        homes = {"embedded": base_environment(root / "embedded")}
        results["embedded"] = prepare_home("embedded", root / "embedded", homes["embedded"],
                                           args)
        servers.start_databases()
        homes["production"] = base_environment(root / "production") | servers.environment()
        with environment(homes["production"]):
            results["mlflow_server_start_s"] = servers.start_mlflow()
        results["production"] = prepare_home("production", root / "production",
                                             homes["production"], args)
        with environment(homes["production"]):
            results["stale"] = search_models(args.probes)
        results["analyse_s"] = servers.analyse()
        with environment(homes["production"]):
            results["analysed"] = search_models(args.probes)
        print(f"reads x{args.repeats}, homes interleaved ...", file=sys.stderr, flush=True)
        for profile, reads in time_reads(log, homes, args.repeats).items():
            results[profile]["reads"] = reads
        if not args.skip_cli:
            for profile, figures in cli_reads(homes, args.cli_repeats).items():
                results[profile]["cli"] = figures
    finally:
        servers.stop()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    results["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        show(results)
    return 0


def _ratio(production: float | None, embedded: float | None) -> str:
    if not production or not embedded:
        return "-"
    return f"{production / embedded:.2f}x"


def show(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=130)
    emb, prod = results["embedded"], results["production"]
    title = (f"Production (PostgreSQL + mlflow server) vs embedded (SQLite in process): "
             f"{emb['seed']['versions']} model versions ({results['models']} models x "
             f"{results['versions']}), {results['repeats']} repeats, {results['cores']} cores, "
             f"load {results['load']:.1f}→{results['load_after']:.1f}")
    table = Table(title=title)
    for column in ("measurement", "embedded", "production", "prod/emb"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    for label in emb["reads"]:
        e, p = emb["reads"][label], prod["reads"][label]
        for q in ("p50", "p95", "max"):
            table.add_row(f"{label} {q.upper()} (in process)", f"{1000 * e[q + '_s']:.0f} ms",
                          f"{1000 * p[q + '_s']:.0f} ms", _ratio(p[q + "_s"], e[q + "_s"]))
    if "cli" in emb:
        for label in emb["cli"]:
            table.add_row(f"sutazai {label} (CLI process, median of {results['cli_repeats']})",
                          f"{emb['cli'][label]:.2f} s",
                          f"{prod['cli'][label]:.2f} s",
                          _ratio(prod["cli"][label], emb["cli"][label]))
    for key, label in (("repository_s", "seed: repository versions (same code: contention)"),
                       ("registry_s", "seed: MLflow versions"),
                       ("benchmarks_s", "seed: benchmark runs")):
        table.add_row(label, f"{emb['seed'][key]:.1f} s", f"{prod['seed'][key]:.1f} s",
                      _ratio(prod["seed"][key], emb["seed"][key]))
    if "nightly" in emb:
        en, pn = emb["nightly"], prod["nightly"]
        table.add_row("nightly cycle wall (sutazai run)", f"{en['wall_s']:.1f} s",
                      f"{pn['wall_s']:.1f} s", _ratio(pn["wall_s"], en["wall_s"]))
        for stage in en["stages"]:
            table.add_row(f"  stage {stage}", f"{en['stages'][stage]:.2f} s",
                          f"{pn['stages'].get(stage, 0):.2f} s",
                          _ratio(pn["stages"].get(stage), en["stages"][stage]))
        table.add_row("  MLflow client calls / their seconds",
                      f"{en['mlflow_calls']} / {en['mlflow_s']:.1f} s",
                      f"{pn['mlflow_calls']} / {pn['mlflow_s']:.1f} s",
                      _ratio(pn["mlflow_s"], en["mlflow_s"]))
    table.add_row("store made (emb: SQLite; prod: mlflow server start)",
                  f"{emb['store_creation_s']:.1f} s",
                  f"{results['mlflow_server_start_s']:.1f} s",
                  _ratio(results["mlflow_server_start_s"], emb["store_creation_s"]))
    console.print(table)
    if "nightly" in emb:
        for profile, data in (("embedded", emb), ("production", prod)):
            n = data["nightly"]
            console.print(f"nightly {profile}: exit {n['exit_code']}, champions "
                          f"{n['champions']}, failures {n['failures']}", highlight=False)

    calls = Table(title="MLflow client calls per command (in process; mean ms per call)")
    for column in ("command", "call", "emb calls", "emb ms", "emb max", "prod calls",
                   "prod ms", "prod max", "prod ms/cmd"):
        calls.add_column(column, justify="left" if column in ("command", "call") else "right")
    for label in emb["reads"]:
        e, p = emb["reads"][label]["calls"], prod["reads"][label]["calls"]
        names = sorted(set(e) | set(p), key=lambda n: -p.get(n, e.get(n, {})).get(
            "ms_per_command", 0))
        for name in names:
            ec, pc = e.get(name, {}), p.get(name, {})
            calls.add_row(label, name, f"{ec.get('per_command', 0):g}",
                          f"{ec.get('mean_ms', 0):.1f}", f"{ec.get('max_ms', 0):.0f}",
                          f"{pc.get('per_command', 0):g}", f"{pc.get('mean_ms', 0):.1f}",
                          f"{pc.get('max_ms', 0):.0f}", f"{pc.get('ms_per_command', 0):.0f}")
    console.print(calls)
    console.print(
        f"production search_registered_models right after seeding (no planner statistics "
        f"yet): P50 {1000 * statistics.median(results['stale']):.0f} ms, max "
        f"{1000 * max(results['stale']):.0f} ms over {len(results['stale'])}; after ANALYZE "
        f"({results['analyse_s']:.1f} s; autovacuum does it on its own later): P50 "
        f"{1000 * statistics.median(results['analysed']):.0f} ms, max "
        f"{1000 * max(results['analysed']):.0f} ms. The reads above ran after ANALYZE.",
        highlight=False)
    console.print("Figures under contention: the machine's cores are shared with other work "
                  "(load average shown in the title).", highlight=False)


if __name__ == "__main__":
    sys.exit(main())
