"""The ``sutazai`` command as a user runs it: exit codes, JSON, tables, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sutazai.config import Settings
from sutazai.repository import Repository
from tests.helpers import entry, flip_byte


def sutazai(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sutazai.cli.main", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)


@pytest.fixture
def catalog_with_two_models(tmp_path: Path, write_catalog: Callable[..., Path]) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.gguf").write_bytes(b"GGUF" + b"\1" * 50_000)
    (tmp_path / "src" / "notes.md").write_text("notes")
    return write_catalog(entry("alpha", f"file:{tmp_path / 'src'}", format="gguf"),
                         entry("beta", f"file:{tmp_path / 'src' / 'model.gguf'}"))


def test_user_errors_are_one_line_without_traceback(write_catalog: Callable[..., Path]) -> None:
    write_catalog(entry("bad", "ftp://example/x"))
    done = sutazai("models", "pull")
    assert done.returncode == 1
    assert "error:" in done.stderr and "entry 1 (bad): field 'source'" in done.stderr
    assert "Traceback" not in done.stderr

    missing = sutazai("models", "show", "nothing-here")
    assert missing.returncode == 1 and "sutazai models pull nothing-here" in missing.stderr
    bad_ref = sutazai("models", "show", "alpha:zero")
    assert bad_ref.returncode == 1 and "positive number" in bad_ref.stderr


def test_pull_list_show_verify_rm_gc(catalog_with_two_models: Path, settings: Settings) -> None:
    pulled = sutazai("models", "pull", "--no-register", "--json")
    assert pulled.returncode == 0, pulled.stderr
    outcomes = json.loads(pulled.stdout)
    assert [(o["name"], o["version"], o["created"]) for o in outcomes] == [
        ("alpha", 1, True), ("beta", 1, True)]

    listed = json.loads(sutazai("models", "list", "--json").stdout)
    assert {(m["name"], m["format"]) for m in listed} == {("alpha", "gguf"), ("beta", "other")}
    shown = json.loads(sutazai("models", "show", "alpha:1", "--json").stdout)
    assert {f["path"] for f in shown["files"]} == {"model.gguf", "notes.md"}
    assert Path(shown["path"], "model.gguf").read_bytes().startswith(b"GGUF")

    table = sutazai("models", "list")
    assert "alpha" in table.stdout and shown["digest"][:12] in table.stdout

    assert json.loads(sutazai("models", "verify", "--json").stdout)["ok"] is True
    repo = Repository(settings.repository_root)
    notes = next(f for f in repo.get("alpha").files if f.path == "notes.md")
    flip_byte(repo.blob_path(notes.digest))
    broken = sutazai("models", "verify", "alpha", "--json")
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["problems"][0]["path"] == "notes.md"

    removed = sutazai("models", "rm", "alpha:1")
    assert removed.returncode == 0, removed.stderr
    collected = json.loads(sutazai("models", "gc", "--json").stdout)
    assert collected["removed_blobs"] == 1  # notes.md; model.gguf is still used by beta


def test_export_and_import_between_homes(catalog_with_two_models: Path, tmp_path: Path) -> None:
    assert sutazai("models", "pull", "--no-register").returncode == 0
    bundle = tmp_path / "bundle.tar"
    exported = sutazai("models", "export", str(bundle), "alpha")
    assert exported.returncode == 0, exported.stderr and bundle.is_file()

    other = {"SUTAZAI_HOME": str(tmp_path / "other-site")}
    imported = sutazai("models", "import", str(bundle), env=other)
    assert imported.returncode == 0, imported.stderr
    assert "imported alpha:1" in imported.stdout
    listed = json.loads(sutazai("models", "list", "--json", env=other).stdout)
    assert [m["name"] for m in listed] == ["alpha"]
    synced = json.loads(sutazai("registry", "sync", "--json", env=other).stdout)
    assert [(r["name"], r["created"]) for r in synced] == [("alpha", False)]  # import registered


def test_run_mirrors_verifies_registers_and_prints_a_summary(catalog_with_two_models: Path
                                                             ) -> None:
    first = sutazai("run")
    shown = " ".join(first.stdout.split())  # rich wraps at the terminal width
    assert "SutazAI model sync" in shown and "verified ok" in shown
    assert first.stdout.count("new") >= 2
    # Both are mirrored; neither can be benchmarked, and the run says why, model by model.
    assert "skipped beta:1: no engine serves the format 'other'" in shown
    assert first.returncode == 1
    assert "error: benchmark of alpha:1 on llamacpp failed: model.gguf is not a GGUF file " \
        "llama.cpp can read" in " ".join(first.stderr.split())
    report = json.loads(sutazai("run", "--json").stdout)
    assert [o["unchanged"] for o in report["outcomes"]] == [True, True]
    assert [o["mlflow_version"] for o in report["outcomes"]] == ["1", "1"]
    assert report["problems"] == [] and report["versions"] == 2


def test_two_first_pulls_in_a_new_home_both_succeed_and_leave_it_usable(
        catalog_with_two_models: Path, tmp_path: Path) -> None:
    """Two real processes set up a new home at once: MLflow's SQLite database must be
    created and migrated once, not by both (alembic crashed, and a half-done migration
    broke every later command)."""
    env = {**os.environ, "SUTAZAI_HOME": str(tmp_path / "new-home")}
    pulls = [subprocess.Popen([sys.executable, "-m", "sutazai.cli.main", "models", "pull",
                               "alpha", "--json"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(pull.communicate(timeout=300), pull.returncode) for pull in pulls]
    for (_, stderr), code in results:
        assert code == 0, stderr
    outcomes = [json.loads(stdout)[0] for (stdout, _), _ in results]
    assert sorted(o["created"] for o in outcomes) == [False, True]
    assert {o["mlflow_version"] for o in outcomes} == {"1"}
    listed = sutazai("models", "list", "--json", env={"SUTAZAI_HOME": env["SUTAZAI_HOME"]})
    assert listed.returncode == 0, listed.stderr


def test_a_migration_cut_short_is_cleaned_up_by_the_next_command(
        catalog_with_two_models: Path, settings: Settings) -> None:
    """A home whose MLflow database was left half-migrated by a killed process: stopped
    inside the batch migration of ``latest_metrics`` (revision 39d1c3be5f05), with its copy
    table left behind. Every later command failed with 'table _alembic_tmp_latest_metrics
    already exists'; the next one now cleans up and finishes the migration."""
    import sqlite3

    import sqlalchemy
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    database = settings.home / "mlflow.db"
    database.parent.mkdir(parents=True)
    url = f"sqlite:///{database}"
    engine = sqlalchemy.create_engine(url)
    InitialBase.metadata.create_all(engine)
    with engine.begin() as connection:
        config = _get_alembic_config(url)
        config.attributes["connection"] = connection
        # the revision before the batch migration (an alembic id, not a secret)
        command.upgrade(config, "a8c4a736bde6")  # pragma: allowlist secret
        connection.execute(sqlalchemy.text(
            "CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))"))
    engine.dispose()

    pulled = sutazai("models", "pull", "beta", "--json")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(pulled.stdout)[0]["mlflow_version"] == "1"
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "_alembic_tmp_latest_metrics" not in tables and "latest_metrics" in tables
    assert sutazai("models", "list").returncode == 0


def test_a_migration_cut_between_drop_and_rename_is_explained(
        catalog_with_two_models: Path, settings: Settings) -> None:
    import sqlite3

    assert sutazai("models", "pull", "alpha").returncode == 0
    with sqlite3.connect(settings.home / "mlflow.db") as connection:
        connection.execute("ALTER TABLE latest_metrics RENAME TO _alembic_tmp_latest_metrics")
    failed = sutazai("models", "pull", "beta")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "exists only as the copy '_alembic_tmp_latest_metrics'" in failed.stderr


def test_a_promoted_learned_champion_is_champion_in_every_view(settings: Settings,
                                                               tmp_path: Path) -> None:
    """One answer to "who is the champion?": the alias the promotion moved to a fine-tune is
    what the leaderboard, models list/show and the nightly report name, not the selection's
    earlier pick (a home as a first `make run` leaves it; no engine runs)."""
    from typer.testing import CliRunner

    from sutazai.cli.main import app
    from sutazai.selection.rules import Candidate
    from sutazai.workflows.nightly import (
        BenchmarkPlan,
        SelectionOutcome,
        assemble_report,
        save_report,
    )
    from tests.helpers import promote_learned_champion

    home = promote_learned_champion(settings, tmp_path / "weights")
    runner = CliRunner()

    def run_json(*args: str) -> Any:
        done = runner.invoke(app, [*args, "--json"])
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    board = {f"{e['model']}:{e['version']}": e for e in run_json("bench", "leaderboard")}
    assert set(board) == {home["base"], home["tuned"]}  # the fine-tune is listed too
    tuned, base = board[home["tuned"]], board[home["base"]]
    assert (tuned["source"], base["source"]) == ("learning (held-out)", "benchmark")
    assert tuned["roles"] == [{"task": "text-generation", "alias": "champion",
                               "concurrency": 1}]
    assert [r["alias"] for r in base["roles"]] == ["challenger"]
    assert tuned["steps"][0]["output_throughput"] == float(home["tuned_throughput"])
    table = sutazai("bench", "leaderboard", env={"COLUMNS": "250"})
    assert table.returncode == 0, table.stderr
    [row] = [line for line in table.stdout.splitlines() if home["tuned"] in line]
    assert "champion" in row and "†" in row and "challenger" not in row
    assert "† measured by the promotion on the held-out split" in " ".join(table.stdout.split())

    listed = {f"{m['name']}:{m['version']}": m["aliases"] for m in run_json("models", "list")}
    assert listed == {home["tuned"]: ["text-generation@champion"],
                      home["base"]: ["text-generation@challenger", "base-lm@stable"]}
    assert run_json("models", "show", home["tuned"])["aliases"] == ["text-generation@champion"]

    selected = Candidate(model="base-lm", version=1, engine="llamacpp", concurrency=1)
    report = assemble_report([], [], BenchmarkPlan(), [
        SelectionOutcome(task="text-generation", champion=selected)], None, versions=2,
        settings=settings)
    save_report(settings, report)
    shown = run_json("report")
    assert shown["champions"]["text-generation"]["label"] == f"{home['tuned']}@llamacppx1"
    assert shown["selected"]["text-generation"]["model"] == "base-lm"
    assert shown["challengers"]["text-generation"]["model"] == "base-lm"
    text = " ".join(runner.invoke(app, ["report"]).stdout.split())
    assert (f"text-generation champion: {home['tuned']}@llamacppx1 (selected before the "
            f"promotion: {home['base']}@llamacppx1)") in text
