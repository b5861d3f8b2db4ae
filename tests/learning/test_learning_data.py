"""The feedback / training-data store, its snapshots, splits and MLflow lineage, and the
``sutazai data`` CLI, on real SQLite databases and a real (SQLite-backed) MLflow store."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from sutazai.cli.data import app
from sutazai.config import Settings
from sutazai.errors import DataGateError, NotFoundError
from sutazai.learning.datastore import (
    DataError,
    FeedbackStore,
    join_text,
    load_snapshot,
    log_snapshot_input,
    snapshot,
    train_heldout_split,
    training_texts,
)

SEED = Path(__file__).resolve().parents[2] / "examples" / "feedback-seed.jsonl"


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow SQLite store for the module: creating its tables costs ~10 s each time."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def store(settings: Settings) -> Iterator[FeedbackStore]:
    with FeedbackStore.open(settings) as opened:
        yield opened


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"prompt": "The capital of Peru is", "response": " Lima.", "rating": 1.0, "label": "good",
     "created": "2026-01-02T03:04:05Z"},
    {"prompt": "2 + 2 =", "response": " 4", "rating": None, "label": None},
    {"prompt": "The sky is", "response": " green.", "rating": -1, "label": "incorrect"},
]


def test_store_round_trip_on_sqlite_in_wal_mode(store: FeedbackStore, settings: Settings
                                                ) -> None:
    first = store.log_interaction("Hello", " world", model="gemma3-270m:1")
    second = store.log_interaction("Hello", " world")  # a repeat is a separate event
    assert (first, second) == (1, 2) and store.count() == 2
    store.rate(first, 0.5, label="helpful")
    row = store.get(first)
    assert row["rating"] == 0.5 and row["label"] == "helpful" and row["model"] == "gemma3-270m:1"
    assert row["source"] == "serving" and row["created"].tzinfo is UTC
    store.rate(first, -1)  # the label stays
    assert store.get(first)["label"] == "helpful" and store.get(first)["rating"] == -1.0
    with pytest.raises(NotFoundError, match="no feedback row with id 99"):
        store.rate(99, 1.0)
    with pytest.raises(DataError, match=r"outside -1\.\.1"):
        store.rate(first, 4)
    with pytest.raises(DataError, match="not a number"):
        store.rate(first, "good")  # type: ignore[arg-type]
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert Path(settings.learning_url.removeprefix("sqlite:///")).is_file()
    assert store.remove([second, 1234]) == 1 and store.count() == 1


def test_gateway_threads_write_while_a_snapshot_reads(store: FeedbackStore,
                                                      settings: Settings) -> None:
    """The serving gateway logs from worker threads while the nightly snapshots."""
    def log(worker: int) -> None:
        for n in range(25):
            store.log_interaction(f"prompt {worker}-{n}", f" answer {n}", model="m:1")

    threads = [threading.Thread(target=log, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    snapshot(store, settings)
    for thread in threads:
        thread.join()
    assert store.count() == 100


def test_import_jsonl_csv_and_parquet(store: FeedbackStore, tmp_path: Path) -> None:
    jsonl = write_jsonl(tmp_path / "a.jsonl", ROWS)
    result = store.import_file(jsonl)
    assert (result.rows, result.added, result.duplicates) == (3, 3, 0)
    assert result.source == "file:a.jsonl"
    rows = {r["prompt"]: r for r in store.rows()}
    peru = rows["The capital of Peru is"]
    assert peru["rating"] == 1.0 and peru["label"] == "good"
    assert peru["created"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert rows["2 + 2 ="]["rating"] is None and rows["The sky is"]["rating"] == -1.0

    csv_path = tmp_path / "b.csv"
    pd.DataFrame([{"prompt": "csv prompt", "response": " csv answer", "rating": "",
                   "label": "", "extra": "x"},
                  {"prompt": "csv two", "response": " two", "rating": "0.25", "label": "good",
                   "extra": "y"}]).to_csv(csv_path, index=False)
    result = store.import_file(csv_path, source="survey")
    assert (result.added, result.ignored_columns, result.source) == (2, ["extra"], "survey")
    rows = {r["prompt"]: r for r in store.rows()}
    assert rows["csv prompt"]["rating"] is None and rows["csv prompt"]["label"] is None
    assert rows["csv two"]["rating"] == 0.25 and rows["csv two"]["source"] == "survey"

    parquet = tmp_path / "c.parquet"
    pd.DataFrame({"prompt": ["pq one", "pq two"], "response": [" 1", " 2"],
                  "rating": [0.5, float("nan")],
                  "created": pd.to_datetime(["2025-05-05T00:00:00Z"] * 2)}).to_parquet(parquet)
    assert store.import_file(parquet).added == 2
    rows = {r["prompt"]: r for r in store.rows()}
    assert rows["pq two"]["rating"] is None
    assert rows["pq one"]["created"] == datetime(2025, 5, 5, tzinfo=UTC)
    assert store.count() == 7


def test_reimport_adds_nothing(store: FeedbackStore, tmp_path: Path) -> None:
    first = store.import_file(SEED)
    assert first.added == first.rows == 299
    again = store.import_file(SEED)
    assert again.already_imported and again.added == 0 and store.count() == 299
    # the same rows under another name (and one new row): only the new row is added
    copy = tmp_path / "copy.jsonl"
    copy.write_text(SEED.read_text() + json.dumps({"prompt": "new", "response": " row"}) + "\n")
    result = store.import_file(copy)
    assert (result.added, result.duplicates, result.already_imported) == (1, 299, False)
    # duplicates inside one file count once
    twice = write_jsonl(tmp_path / "twice.jsonl", [{"prompt": "p", "response": " r"}] * 2)
    assert (store.import_file(twice).added, store.count()) == (1, 301)
    assert store.stats().imported_files == 3


@pytest.mark.parametrize(("name", "content", "message"), [
    ("rows.txt", "prompt,response\n", r"unknown file type '\.txt'"),
    ("rows.jsonl", '{"prompt": "p", "answer": "a"}\n', r"missing column response \(found: "
                                                        r"prompt, answer\)"),
    ("rows.csv", "question,answer\nq,a\n", "missing columns prompt, response"),
    ("rows.jsonl", '{"prompt": "p", "response": " r"}\n{"prompt": "q", "response": " s", '
                   '"rating": 5}\n', r"row 2: rating 5 is outside -1\.\.1"),
    ("rows.jsonl", '{"prompt": "p", "response": " r"}\n{"prompt": "q"}\n',
     "row 2: column 'response' is empty"),
    ("rows.jsonl", '{"prompt": "p", "response": " r"}\nnot json\n', "line 2 is not JSON"),
    ("rows.parquet", "this is not parquet", "cannot be read as parquet"),
    ("rows.jsonl", '{"prompt": "p", "response": " r", "created": "yesterday"}\n',
     "not an ISO 8601 time"),
])
def test_bad_file_imports_nothing_and_says_why(store: FeedbackStore, tmp_path: Path, name: str,
                                               content: str, message: str) -> None:
    store.log_interaction("kept", " row")
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=message) as caught:
        store.import_file(path)
    assert str(path) in str(caught.value)
    assert store.count() == 1 and store.stats().imported_files == 0
    with pytest.raises(DataError, match="no such file"):
        store.import_file(tmp_path / "absent.jsonl")


def test_inbox_imports_each_file_once(store: FeedbackStore, settings: Settings) -> None:
    inbox = settings.learning_inbox_dir
    inbox.mkdir(parents=True)
    write_jsonl(inbox / "b.jsonl", ROWS[1:])
    write_jsonl(inbox / "a.jsonl", ROWS[:1])
    (inbox / ".gitkeep").write_text("")
    results = store.import_inbox(settings)
    assert [Path(r.path).name for r in results] == ["a.jsonl", "b.jsonl"]
    assert [r.added for r in results] == [1, 2]
    assert all(r.already_imported for r in store.import_inbox(settings))
    assert store.count() == 3


def test_snapshot_digest_is_stable_and_the_file_is_reused(store: FeedbackStore,
                                                          settings: Settings) -> None:
    store.import_file(SEED)
    first = snapshot(store, settings)
    again = snapshot(store, settings)
    assert first.digest == again.digest and first.path == again.path and first.rows == 299
    assert first.path == settings.home / "datasets" / "feedback" / f"{first.digest}.parquet"
    assert first.path.stat().st_mtime_ns == again.path.stat().st_mtime_ns  # not rewritten
    df = load_snapshot(first)
    assert list(df.columns) == ["id", "prompt", "response", "rating", "label", "source",
                                "model", "created"]
    assert len(df) == 299 and df["prompt"].iloc[0] == "The capital of France is"
    assert str(df["created"].dt.tz) == "UTC"
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temp left

    row = store.log_interaction("one", " more")
    grown = snapshot(store, settings)
    assert grown.digest != first.digest and grown.rows == 300 and first.path.is_file()
    store.rate(row, -0.5)
    rated = snapshot(store, settings)
    assert rated.digest != grown.digest  # a rating is content
    filtered = snapshot(store, settings, min_rating=0)
    assert filtered.rows == 299 and filtered.digest != rated.digest
    assert snapshot(store, settings, name="other").digest == rated.digest
    with pytest.raises(DataError, match="not allowed"):
        snapshot(store, settings, name="inbox")
    with pytest.raises(DataError, match="not allowed"):
        snapshot(store, settings, name="../escape")


def test_empty_store_snapshots_to_an_empty_table(store: FeedbackStore,
                                                 settings: Settings) -> None:
    snap = snapshot(store, settings)
    assert snap.rows == 0 and load_snapshot(snap).empty


def test_split_is_deterministic_and_rows_keep_their_side(store: FeedbackStore,
                                                         settings: Settings) -> None:
    store.import_file(SEED)
    df = load_snapshot(snapshot(store, settings))
    train, held = train_heldout_split(df, 0.2)
    train2, held2 = train_heldout_split(df, 0.2)
    assert train.equals(train2) and held.equals(held2)
    assert len(train) + len(held) == len(df) and 30 <= len(held) <= 90
    assert not set(train["prompt"]) & set(held["prompt"])
    for n in range(200):
        store.log_interaction(f"extra prompt {n}", f" extra answer {n}")
    grown = load_snapshot(snapshot(store, settings))
    train3, held3 = train_heldout_split(grown, 0.2)
    assert set(held["prompt"]) <= set(held3["prompt"])
    assert set(train["prompt"]) <= set(train3["prompt"])
    other_train, _ = train_heldout_split(df, 0.2, seed=1)
    assert set(other_train["prompt"]) != set(train["prompt"])
    assert train_heldout_split(df, 0.0)[1].empty
    with pytest.raises(DataError, match="heldout_fraction"):
        train_heldout_split(df, 1.0)


def test_training_texts_leave_out_negative_feedback() -> None:
    df = pd.DataFrame({"prompt": ["The capital of Chile is", "Q: 2+2?", "bad", "unrated"],
                       "response": [" Santiago.", "A: 4", " answer", " row"],
                       "rating": [1.0, 0.0, -0.5, float("nan")]})
    assert training_texts(df) == ["The capital of Chile is Santiago.", "Q: 2+2?\nA: 4",
                                  "unrated row"]
    assert join_text("a ", "b") == "a b"


def test_snapshot_is_logged_as_an_mlflow_dataset_input(
        store: FeedbackStore, settings: Settings, mlflow_uri: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    store.import_file(SEED)
    snap = snapshot(store, settings)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_snapshot_input(snap)
    mlflow.set_experiment("learning-data-test")
    with mlflow.start_run() as run:
        log_snapshot_input(snap, context="training")
    inputs = MlflowClient(mlflow_uri).get_run(run.info.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset, tags = inputs[0].dataset, {t.key: t.value for t in inputs[0].tags}
    assert dataset.name == "feedback" and dataset.digest == snap.digest[:36]
    assert dataset.source_type == "local" and str(snap.path) in dataset.source
    assert json.loads(dataset.profile)["num_rows"] == 299
    assert tags == {"mlflow.data.context": "training", "sutazai.digest": snap.digest}


def test_cli(settings: Settings, tmp_path: Path, mlflow_uri: str,
             monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("SUTAZAI_MLFLOW_TRACKING_URI", mlflow_uri)
    done = runner.invoke(app, ["import", str(SEED)])
    assert done.exit_code == 0, done.output
    assert "feedback-seed.jsonl" in done.output and "299 row(s) in the store" in done.output
    done = runner.invoke(app, ["import", str(SEED), "--json"])
    assert json.loads(done.output)[0]["already_imported"] is True

    done = runner.invoke(app, ["validate"])
    assert done.exit_code == 0, done.output
    assert "unique_pairs" in done.output and "FAILED" not in done.output

    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "Mail me at jane.doe@example.com", "response": " ok"}])
    assert runner.invoke(app, ["import", str(bad)]).exit_code == 0
    done = runner.invoke(app, ["validate", "--json"])
    assert done.exit_code == 1 and isinstance(done.exception, DataGateError)
    assert "no_email on prompt (1 row(s)) ids 300" in str(done.exception)
    report = json.loads(done.output)
    assert report["success"] is False and "jane.doe@example.com" not in done.output
    assert runner.invoke(app, ["remove", "300"]).exit_code == 0

    assert runner.invoke(app, ["rate", "1", "0.5", "--label", "good"]).exit_code == 0
    done = runner.invoke(app, ["rate", "999", "1"])
    assert isinstance(done.exception, NotFoundError)
    done = runner.invoke(app, ["stats", "--json"])
    stats = json.loads(done.output)
    assert (stats["rows"], stats["rated"], stats["by_label"]) == (299, 1, {"good": 1})
    done = runner.invoke(app, ["stats"])
    assert "299 row(s), 1 rated" in done.output
    done = runner.invoke(app, ["snapshot", "--name", "demo", "--json"])
    snap = json.loads(done.output)
    assert snap["rows"] == 299 and Path(snap["path"]).is_file()
    assert Path(snap["path"]).parent == settings.home / "datasets" / "demo"
    done = runner.invoke(app, ["import", str(tmp_path / "missing.csv")])
    assert isinstance(done.exception, DataError) and "no such file" in str(done.exception)
