"""The Great Expectations data gate: clean seed data passes, bad data is blocked with the
right checks and counts, reports never contain the secrets they found, and every gate run
is recorded in MLflow (a real SQLite-backed tracking store)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sutazai.config import Settings
from sutazai.errors import DataGateError
from sutazai.learning.datastore import DatasetSnapshot, FeedbackStore, snapshot
from sutazai.learning.gate import GateReport, GateSuite, redact, require_pass, run_gate, validate

SEED = Path(__file__).resolve().parents[2] / "examples" / "feedback-seed.jsonl"
EMAIL = "jane.doe@example.com"
KEY = "sk-proj4f9Kx2LmQ8vZpR7tYw3N"


@pytest.fixture(scope="module")
def seed() -> pd.DataFrame:
    df = pd.read_json(SEED, lines=True)
    df.insert(0, "id", range(1, len(df) + 1))
    return df


def snap_of(df: pd.DataFrame, name: str = "test") -> DatasetSnapshot:
    from datetime import UTC, datetime

    return DatasetSnapshot(name=name, digest="ab" * 32, path=Path("/nonexistent"),
                           rows=len(df), created=datetime.now(UTC))


def failing(report: GateReport) -> dict[tuple[str, str | None], int | None]:
    return {(c.name, c.column): c.unexpected_count for c in report.failed}


def test_seed_file_passes_the_gate(seed: pd.DataFrame) -> None:
    assert 250 <= len(seed) <= 350
    assert not seed.duplicated(["prompt", "response"]).any()
    assert all(r.startswith(" ") and r.strip() for r in seed["response"])
    report = validate(seed, snap_of(seed))
    assert report.success, report.to_markdown()
    names = {c.name for c in report.checks}
    assert {"columns", "row_count", "not_null", "length", "unique_pairs", "no_email",
            "no_sk_api_key", "no_aws_access_key", "no_github_token", "no_private_key",
            "no_jwt"} <= names
    assert "PASSED" in report.to_markdown()


def test_bad_rows_are_blocked_by_the_right_checks(seed: pd.DataFrame) -> None:
    good = seed.head(30)
    bad = pd.DataFrame([
        {"id": 101, "prompt": "The capital of Norway is", "response": None},
        {"id": 102, "prompt": good["prompt"][0], "response": good["response"][0]},
        {"id": 103, "prompt": "Tell me a long story", "response": " once" * 1000},
        {"id": 104, "prompt": f"Write to {EMAIL} about it", "response": " Sure."},
        {"id": 105, "prompt": "My key is", "response": f" {KEY} please keep it"},
        {"id": 106, "prompt": "Rate this", "response": " ok", "label": "awesome"},
    ])
    df = pd.concat([good.assign(label=None), bad], ignore_index=True)
    report = validate(df, snap_of(df))
    assert not report.success
    assert failing(report) == {("not_null", "response"): 1,
                               ("unique_pairs", "prompt,response"): 2,
                               ("length", "response"): 1,
                               ("no_email", "prompt"): 1,
                               ("no_sk_api_key", "response"): 1,
                               ("label_allowed", "label"): 1}
    by_name = {(c.name, c.column): c for c in report.checks}
    assert by_name[("unique_pairs", "prompt,response")].row_ids == [1, 102]
    assert by_name[("no_email", "prompt")].row_ids == [104]
    assert by_name[("length", "response")].examples[0].endswith("(5000 chars)")
    dumped = report.model_dump_json() + report.to_markdown()
    assert EMAIL not in dumped and KEY not in dumped and KEY[3:] not in dumped
    assert "j***@***.com" in dumped and "sk-***" in dumped
    assert "## What to do" in report.to_markdown()


def test_missing_columns_small_data_and_bad_ratings(seed: pd.DataFrame) -> None:
    df = seed.head(5).drop(columns=["response"]).assign(rating=[0.0, 1.0, 3.0, None, -2.0])
    report = validate(df, snap_of(df), GateSuite(min_rows=10, allowed_labels=None))
    checks = {(c.name, c.column): c for c in report.failed}
    assert checks[("columns", None)].note == "missing column(s): response"
    assert checks[("row_count", None)].note == "5 row(s); at least 10 needed"
    assert checks[("rating_range", "rating")].unexpected_count == 2
    assert checks[("rating_range", "rating")].row_ids == [3, 5]
    assert "missing" in (checks[("not_null", "response")].note or "")
    assert ("no_email", "response") in checks and ("no_email", "prompt") not in checks


def test_empty_snapshot_fails_on_row_count_only(settings: Settings) -> None:
    from sutazai.learning.datastore import load_snapshot

    with FeedbackStore.open(settings) as store:
        snap = snapshot(store, settings)
    report = validate(load_snapshot(snap), snap)
    assert failing(report) == {("row_count", None): None}
    assert report.failed[0].note == "0 row(s); at least 20 needed"


def test_redaction_masks_every_default_kind() -> None:
    secrets = {
        "AKIAIOSFODNN7EXAMPLE": "AKIA***",
        "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8": "ghp_***",
        "-----BEGIN RSA PRIVATE KEY-----": "-----BEGIN ***",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9Pl": "eyJ***",
        "xoxb-123456789012-abcdefghij": "xoxb-***",
        "+1 415-555-0199": "***",
        "bob@mail.example.org": "b***@***.org",
        KEY: "sk-***",
    }
    for secret, masked in secrets.items():
        out = redact(f"before {secret} after")
        assert out == f"before {masked} after", (secret, out)
    assert redact("12 + 345 = 357 in 2026") == "12 + 345 = 357 in 2026"


def test_require_pass_raises_with_what_to_do(seed: pd.DataFrame) -> None:
    require_pass(validate(seed, snap_of(seed)))  # passes silently
    df = pd.concat([seed, seed.head(2).assign(id=[900, 901])], ignore_index=True)
    report = validate(df, snap_of(df))
    with pytest.raises(DataGateError) as caught:
        require_pass(report)
    message = str(caught.value)
    assert "failed its data gate, so nothing was trained" in message
    assert "unique_pairs on prompt,response (4 row(s)) ids 1, 2, 900, 901" in message
    assert "sutazai data remove" in message and "sutazai data import" in message


def test_gate_run_is_logged_in_mlflow(settings: Settings, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    settings = settings.model_copy(update={
        "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(SEED.read_text() + json.dumps(
        {"prompt": f"Contact {EMAIL}", "response": f" {KEY}"}) + "\n")
    with FeedbackStore.open(settings) as store:
        store.import_file(bad)
        snap = snapshot(store, settings)
    report = run_gate(settings, snap)
    assert not report.success and report.run_id and report.report_path
    assert failing(report) == {("no_email", "prompt"): 1, ("no_sk_api_key", "response"): 1}
    client = MlflowClient(settings.tracking_uri)
    run = client.get_run(report.run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == settings.learning_experiment
    assert run.info.run_name == "data-gate feedback"
    assert run.data.tags["sutazai.digest"] == snap.digest
    assert run.data.tags["sutazai.gate"] == "failed"
    assert run.data.metrics["rows"] == 300 and run.data.metrics["failed_checks"] == 2
    assert {a.path for a in client.list_artifacts(report.run_id)} == {"gate-report.md",
                                                                      "gate-report.json"}
    markdown = Path(client.download_artifacts(report.run_id, "gate-report.md",
                                              str(tmp_path))).read_text()
    assert "FAILED" in markdown and "## no_email on `prompt` failed" in markdown
    assert "- row ids: 300" in markdown
    assert EMAIL not in markdown and KEY not in markdown
    assert Path(report.report_path).read_text() == markdown
    data = json.loads(Path(client.download_artifacts(report.run_id, "gate-report.json",
                                                     str(tmp_path))).read_text())
    assert data["success"] is False and data["digest"] == snap.digest
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.digest for i in inputs] == [snap.digest[:36]]
    with pytest.raises(DataGateError, match=str(Path(report.report_path))):
        require_pass(report)
    # a clean snapshot of the same store after removing the rows passes, in the same experiment
    with FeedbackStore.open(settings) as store:
        store.remove([300])
        clean = snapshot(store, settings)
    passed = run_gate(settings, clean)
    assert passed.success and client.get_run(passed.run_id).data.tags["sutazai.gate"] == "passed"
