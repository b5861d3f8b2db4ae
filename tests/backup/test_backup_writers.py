"""Backups taken while a real pull and a benchmark-like writer run (issue 17: "consistent
while writers run"): every snapshot restores with no dangling reference.

The pull is the real ``sutazai models pull`` from ``file:`` sources; the benchmark-like
writer is a process that logs MLflow runs and moves the ``task.text-generation`` aliases,
as ``sutazai bench`` and the selection do (the real bench needs an engine: too slow here).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sutazai.backup.archive import BackupManifest
from sutazai.backup.service import create, restore
from sutazai.config import Settings
from sutazai.repository import open_repository
from sutazai.repository.manifest import FileEntry
from tests.helpers import entry

pytestmark = pytest.mark.slow

MODELS = 8
BENCH_WRITER = """
import itertools, sys, time
from pathlib import Path
from sutazai.config import load_settings
from sutazai.registry import open_registry
from sutazai.registry.task_aliases import TaskAliases
from sutazai.repository import open_repository
from sutazai.repository.manifest import FileEntry

stop = Path(sys.argv[1])
settings = load_settings()
repo = open_repository(settings)
while not repo.all_versions():
    time.sleep(0.02)
registry = open_registry(settings)
aliases = TaskAliases(registry)
for i in itertools.count():
    if stop.exists():
        break
    manifest = repo.all_versions()[-1]
    run = registry.start_run(f"bench {manifest.ref}", tags={"sutazai.step": "bench"},
                             params={"model": manifest.ref, "engine": "llamacpp"},
                             experiment="sutazai-bench")
    registry.client.log_metric(run, "tokens_per_second", 10.0 + i)
    registry.client.set_terminated(run)
    aliases.set("text-generation", ("champion", "challenger")[i % 2], manifest, "llamacpp",
                1 + i % 3)
    Path(sys.argv[2]).write_text(str(i + 1))
"""


def _dangling(database: Path, repository: dict[tuple[str, int], str]) -> list[str]:
    """Every reference in a restored MLflow database that leads nowhere: an alias to a
    missing version, a version of a missing model or run, a version whose
    ``sutazai://`` source or digest names no repository version (``repository`` maps
    (name, version) to the manifest's digest)."""
    problems = []
    with sqlite3.connect(database) as db:
        live = {(n, int(v)) for n, v in db.execute(
            "SELECT name, version FROM model_versions WHERE current_stage != "
            "'Deleted_Internal'")}
        models = {n for (n,) in db.execute("SELECT name FROM registered_models")}
        runs = {r for (r,) in db.execute("SELECT run_uuid FROM runs")}
        experiments = {e for (e,) in db.execute("SELECT experiment_id FROM experiments")}
        for name, alias, version in db.execute(
                "SELECT name, alias, version FROM registered_model_aliases"):
            if (name, int(version)) not in live:
                problems.append(f"alias {name}@{alias} -> missing version {version}")
        for run, experiment in db.execute("SELECT run_uuid, experiment_id FROM runs"):
            if experiment not in experiments:
                problems.append(f"run {run} of missing experiment {experiment}")
        tags: dict[tuple[str, int], dict[str, str]] = {}
        for name, version, key, value in db.execute(
                "SELECT name, version, key, value FROM model_version_tags"):
            tags.setdefault((name, int(version)), {})[key] = value
        for name, version, source, run in db.execute(
                "SELECT name, version, source, run_id FROM model_versions WHERE "
                "current_stage != 'Deleted_Internal'"):
            label = f"{name}/{version}"
            if name not in models:
                problems.append(f"{label}: registered model missing")
            if run and run not in runs:
                problems.append(f"{label}: run {run} missing")
            prefix = "sutazai://repository/snapshots/"
            if not source.startswith(prefix):
                problems.append(f"{label}: source {source} is not the repository's")
                continue
            model, _, number = source.removeprefix(prefix).rpartition("/")
            mine = tags.get((name, int(version)), {})
            if (model, int(number)) not in repository:
                problems.append(f"{label}: source {source} is not in the repository")
            elif repository[model, int(number)] != mine.get("sutazai.digest"):
                problems.append(f"{label}: digest tag differs from {model}:{number}'s")
            if mine.get("sutazai.repository_version") != number:
                problems.append(f"{label}: sutazai.repository_version tag is not {number}")
    return problems


def _check_restored(settings: Settings, made: BackupManifest, target: Path) -> int:
    """Restore ``made`` into ``target`` and check it end to end; its repository versions."""
    restore(settings, made.id, target)
    again = settings.model_copy(update={"home": target})
    repo = open_repository(again)
    manifests = repo.all_versions()
    assert len(manifests) == made.counts["repository_versions"]
    assert repo.verify(manifests) == []  # every blob present, right bytes, snapshot links
    repository = {(m.name, m.version): m.digest for m in manifests}
    assert _dangling(target / "mlflow.db", repository) == [], made.id
    with sqlite3.connect(target / "mlflow.db") as db:
        versions = db.execute("SELECT count(*) FROM model_versions").fetchone()[0]
    assert versions == made.counts["mlflow_model_versions"]
    return len(manifests)


def test_backups_taken_during_a_pull_and_a_benchmark_restore_with_nothing_dangling(
        settings: Settings, tmp_path: Path, write_catalog: Callable[..., Path]) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    entries = []
    for i in range(MODELS):  # distinct content, 1 MiB each
        path = sources / f"m{i}.gguf"
        path.write_bytes(b"GGUF" + bytes([i]) * 2**20)
        entries.append(entry(f"m{i}", f"file:{path}", format="gguf"))
    write_catalog(*entries)
    repo = open_repository(settings)  # a version the bench writer starts on
    seed = sources / "seed.gguf"
    seed.write_bytes(b"GGUF seed")
    digest, size, _ = repo.ingest_file(seed)
    repo.publish(name="seed", files=[FileEntry(path="seed.gguf", digest=digest, size=size)],
                 source=f"file:{seed}", revision=digest, format="gguf",
                 tasks=["text-generation"], license="apache-2.0")
    stop, progress = tmp_path / "stop", tmp_path / "bench-iterations"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    bench = subprocess.Popen([sys.executable, "-c", BENCH_WRITER, str(stop), str(progress)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    pull: subprocess.Popen[str] | None = None
    made: list[BackupManifest] = []
    running_at_start: list[bool] = []
    try:
        deadline = time.monotonic() + 60
        while not progress.exists():  # the bench writer has moved an alias
            assert bench.poll() is None, bench.communicate()[1]
            assert time.monotonic() < deadline, "the bench writer never set an alias"
            time.sleep(0.02)
        pull = subprocess.Popen([sys.executable, "-m", "sutazai.cli.main", "models", "pull",
                                 "--json"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        while not (settings.repository_root / "manifests" / "m0").is_dir():
            assert pull.poll() is None, pull.communicate()[1]
            assert time.monotonic() < deadline, "the pull published nothing"
            time.sleep(0.02)
        while len(made) < 3 or (pull.poll() is None and len(made) < 6):
            running_at_start.append(pull.poll() is None)
            made.append(create(settings))
            time.sleep(0.2)
    finally:
        stop.touch()
        pulled = pull.communicate(timeout=120) if pull is not None else ("", "not started")
        benched = bench.communicate(timeout=120)
    assert pull is not None and pull.returncode == 0, pulled[1]
    assert bench.returncode == 0, benched[1]
    assert running_at_start[0], "the pull ended before the first backup: no overlap"
    scratch = settings.repository_root / "manifests" / "m0" / ".2.json.x1y2.tmp"
    scratch.write_text("{")  # a writer's half-written manifest, renamed or gone any moment
    assert not any(f.path.endswith(".tmp") for f in create(settings).files)
    runs = [m.counts["mlflow_runs"] for m in made]
    assert runs == sorted(runs) and runs[0] < runs[-1]  # the writers ran between backups

    versions = [_check_restored(settings, m, tmp_path / f"restored-{i}")
                for i, m in enumerate(made)]
    assert versions == sorted(versions) and versions[-1] <= MODELS + 1
    assert versions[0] < MODELS + 1  # the first backup caught the pull half-way
