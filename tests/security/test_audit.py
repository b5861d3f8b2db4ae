"""The audit log: a hash chain that names the first tampered line, anchored outside its folder
so that a log cut short or emptied is caught, safe for many writers."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from sutazai.cli.audit import app
from sutazai.config import Settings
from sutazai.security.audit import (
    GENESIS,
    AuditChainError,
    AuditError,
    AuditLog,
    audit,
    open_audit_log,
    record_hash,
)
from sutazai.security.audit_anchor import FileAnchor, default_anchor_path


def filled(path: Path, n: int = 5) -> AuditLog:
    log = AuditLog(path)
    for i in range(n):
        log.record("model.pull", f"gemma-3-270m:{i + 1}", actor="user:alice",
                   after={"version": i + 1}, details={"bytes": 1000 * i})
    return log


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_records_chain_and_verify(tmp_path: Path) -> None:
    log = filled(tmp_path / "audit.jsonl")
    records = log.records()
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS
    for previous, record in itertools.pairwise(records):
        assert record.prev_hash == previous.hash
        assert record.hash == record_hash(record.model_dump())
    assert records[0].time.endswith("+00:00")  # UTC
    result = log.verify()
    assert result.ok and result.records == 5 and result.last_hash == records[-1].hash
    assert [r.seq for r in log.tail(2)] == [4, 5]
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("tamper", "line", "why"), [
    ("edit", 3, "the record was edited"),
    ("delete", 3, "deleted, inserted or moved"),
    ("insert", 3, "deleted, inserted or moved"),
    ("swap", 2, "deleted, inserted or moved"),
    ("truncate", 5, "cut off the end"),
    ("garbage", 4, "not a valid audit record"),
    ("remove", 1, "cut off the end"),
])
def test_verify_names_the_first_tampered_line(tmp_path: Path, tamper: str, line: int,
                                              why: str) -> None:
    path = tmp_path / "audit.jsonl"
    log = filled(path)
    content = lines(path)
    if tamper == "edit":  # a consistent-looking edit: valid JSON, same fields
        record = json.loads(content[2])
        record["actor"] = "user:mallory"
        content[2] = json.dumps(record) + "\n"
    elif tamper == "delete":
        del content[2]
    elif tamper == "insert":  # a forged record copied from another chain position
        content.insert(2, content[1])
    elif tamper == "swap":
        content[1], content[2] = content[2], content[1]
    elif tamper == "truncate":
        del content[4]
    elif tamper == "garbage":
        content[3] = content[3][:40] + "\n"
    else:
        content = []
    path.write_text("".join(content))
    if tamper == "remove":
        path.unlink()
    result = log.verify()
    assert not result.ok and result.bad_line == line, result
    assert why in (result.reason or "")
    assert f"line {line}" in result.summary()


def test_a_recomputed_chain_is_caught_by_the_head(tmp_path: Path) -> None:
    """Rewriting a record *and* recomputing every hash after it still disagrees with the
    head file (an attacker must rewrite both; the sink copy catches even that)."""
    path = tmp_path / "audit.jsonl"
    log = filled(path, 3)
    records = [json.loads(line) for line in lines(path)]
    records[2]["target"] = "forged"
    records[2]["hash"] = record_hash(records[2])
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = log.verify()
    assert not result.ok and result.bad_line == 3 and "rewritten" in (result.reason or "")


def test_a_damaged_last_line_stops_new_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = filled(path, 2)
    with path.open("a") as handle:
        handle.write('{"seq": 3, "ti')
    with pytest.raises(AuditError, match=r"damaged.*sutazai audit verify"):
        log.record("model.delete", "x")
    assert log.verify().bad_line == 3


def test_an_unwritable_log_fails_loudly(tmp_path: Path) -> None:
    blocker = tmp_path / "audit"
    blocker.write_text("a file where the log's folder should be")  # fails even for root
    with pytest.raises(AuditError, match=r"cannot write the audit log.*not recorded"):
        AuditLog(blocker / "audit.jsonl").record("model.delete", "gemma:1")


def test_secrets_are_masked_and_sink_gets_each_record(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    value = "hunter2-" + "x" * 12
    sink = tmp_path / "pipeline.jsonl"
    log = AuditLog(tmp_path / "audit.jsonl", sink=str(sink))
    log.record("serve.start", "gateway", before={"token": SecretStr(value)})
    AuditLog(tmp_path / "audit.jsonl", sink="stdout").record("serve.stop", "gateway")
    text = (tmp_path / "audit.jsonl").read_text()
    assert value not in text and "**********" in text
    assert json.loads(sink.read_text())["action"] == "serve.start"
    assert json.loads(capsys.readouterr().out)["action"] == "serve.stop"
    assert log.verify().ok


def _append(path: str, writer: int, count: int) -> None:
    log = AuditLog(Path(path))
    for i in range(count):
        log.record("model.register", f"m{writer}:{i}", actor=f"proc:{writer}")


def test_concurrent_writers_keep_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("fork")  # spawn would re-import the test module
    workers = [context.Process(target=_append, args=(str(path), w, 25)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    log = AuditLog(path)
    result = log.verify()
    assert result.ok and result.records == 100 and result.anchored == 100, result
    targets = {r.target for r in log.records()}
    assert targets == {f"m{w}:{i}" for w in range(4) for i in range(25)}


def test_audit_helper_uses_the_home_log(settings: Settings,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTAZAI_ACTOR", "apikey:ci-bot")
    record = audit(settings, "promotion", "text-generation", before={"champion": "a:1"},
                   after={"champion": "b:2"})
    assert record.actor == "apikey:ci-bot" and record.seq == 1
    assert (settings.home / "audit" / "audit.jsonl").exists()


def test_cli_verify_and_tail(settings: Settings) -> None:
    path = settings.home / "audit" / "audit.jsonl"
    filled(path, 3)
    runner = CliRunner()
    result = runner.invoke(app, ["verify"])
    assert result.exit_code == 0 and "intact: 3 record(s)" in result.output
    result = runner.invoke(app, ["tail", "-n", "2", "--json"])
    assert result.exit_code == 0
    assert [r["seq"] for r in json.loads(result.output)] == [2, 3]
    result = runner.invoke(app, ["tail"])
    assert result.exit_code == 0 and "gemma-3-270m:3" in result.output
    content = lines(path)
    content[0], content[1] = content[1], content[0]
    path.write_text("".join(content))
    result = runner.invoke(app, ["verify", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["bad_line"] == 1
    result = runner.invoke(app, ["verify", "--path", str(path)])
    assert result.exit_code == 1 and "broken at line 1" in result.output


def test_the_sink_is_a_setting(settings: Settings, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """SUTAZAI_AUDIT_SINK=stdout sends every record to stdout for a log shipper."""
    from sutazai.config import load_settings

    monkeypatch.setenv("SUTAZAI_AUDIT_SINK", "stdout")
    audit(load_settings(), "model.delete", "gemma:1", result="ok")
    shipped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (shipped["action"], shipped["target"]) == ("model.delete", "gemma:1")
    assert open_audit_log(settings).verify().ok


def test_a_folder_is_not_an_audit_log(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="is a folder"):
        AuditLog(tmp_path)


# --- the anchor: the end of the log, kept outside its folder --------------------------------

def cut(path: Path, how: str) -> None:
    """What a hostile user did: delete the head, then cut the end, empty or delete the log."""
    path.with_name(path.name + ".head").unlink()
    if how == "cut the end":
        path.write_text("".join(lines(path)[:3]))
    elif how == "emptied":
        path.write_text("")
    else:
        path.unlink()


@pytest.mark.parametrize("how", ["cut the end", "emptied", "deleted"])
def test_a_log_cut_short_without_its_head_fails_verify(tmp_path: Path, how: str) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    log = filled(path)
    anchor = default_anchor_path(path)
    assert anchor.exists() and anchor.parent != path.parent  # outside the log's folder
    cut(path, how)
    result = log.verify()
    kept = 3 if how == "cut the end" else 0
    assert not result.ok and result.records == kept and result.bad_line == kept + 1, result
    assert (f"the log has {kept} record(s) but the anchor at {anchor} recorded 5"
            in result.summary())
    assert f"records {kept + 1}-5 were cut off the end" in (result.reason or "")
    assert "sutazai audit accept" in (result.reason or "")


def edit_last(path: Path, recompute: bool) -> None:
    content = lines(path)
    record = json.loads(content[-1])
    record["target"] = "forged"
    if recompute:
        record["hash"] = record_hash(record)
    content[-1] = json.dumps(record) + "\n"
    path.write_text("".join(content))


@pytest.mark.parametrize(("tamper", "why"), [
    ("cut the end", "records 4-5 were cut off the end"),
    ("emptied", "records 1-5 were cut off the end"),
    ("edit the last record", "last record (seq 5) was edited"),
    ("rewrite the last record", "the log was rewritten"),
])
def test_no_record_is_appended_after_an_end_that_does_not_match(tmp_path: Path, tamper: str,
                                                                 why: str) -> None:
    path = tmp_path / "audit.jsonl"
    filled(path)
    if tamper in ("cut the end", "emptied"):
        cut(path, tamper)
    else:
        edit_last(path, recompute=tamper.startswith("rewrite"))
    before = path.read_bytes()
    with pytest.raises(AuditChainError, match=r"refusing to add to the audit log") as caught:
        AuditLog(path).record("model.delete", "gemma:1")
    message = str(caught.value)
    assert why in message and "sutazai audit accept --reason" in message
    assert "\n" not in message
    assert path.read_bytes() == before


def test_an_admin_accepts_a_cut_log_after_investigating_and_that_is_audited(
        tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = filled(path)
    cut(path, "cut the end")
    record = log.accept("rotated by hand on host x; records 4-5 are in the sink",
                        actor="user:admin")
    assert (record.seq, record.action, record.actor) == (4, "audit.accept", "user:admin")
    assert record.details["anchored_before"]["count"] == 5 and record.details["records"] == 3
    assert "cut off the end" in record.details["problem"]
    assert log.verify().ok
    assert log.record("model.pull", "x:1").seq == 5
    counts = [json.loads(line)["count"] for line in default_anchor_path(path).read_text()
              .splitlines()]
    assert counts == [1, 2, 3, 4, 5, 3, 4, 5]  # the anchor's history keeps what was accepted


def test_a_chain_broken_inside_must_be_moved_aside_before_accepting(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = filled(path, 3)
    content = lines(path)
    path.write_text(content[0] + content[2])
    with pytest.raises(AuditChainError, match=r"broken at line 2.*move it aside"):
        log.accept("looked at it")
    path.rename(tmp_path / "audit.jsonl.broken")
    assert log.accept("moved aside for case 42").seq == 1
    assert log.verify().ok


def test_a_log_older_than_anchoring_is_adopted_once_then_anchored(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = filled(path, 3)
    anchor, head = default_anchor_path(path), path.with_name("audit.jsonl.head")
    anchor.unlink()
    head.write_text(json.dumps({k: v for k, v in json.loads(head.read_text()).items()
                                if k != "anchor"}))  # the head as older versions wrote it
    result = log.verify()
    assert result.ok and "not anchored yet" in result.summary()
    record = log.record("model.pull", "x:1")
    assert record.seq == 5
    assert [(r.seq, r.action) for r in log.records()][3] == (4, "audit.anchor.adopt")
    result = log.verify()
    assert result.ok and result.anchored == 5 and result.note is None
    anchor.unlink()  # now the head says where the anchor was
    result = log.verify()
    assert not result.ok and "its anchor is missing" in (result.reason or "")
    with pytest.raises(AuditChainError, match="anchor is missing"):
        log.record("model.pull", "x:2")


def test_an_anchor_a_crash_left_behind_is_caught_up(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = filled(path, 3)
    anchor = default_anchor_path(path)
    anchor.write_text("".join(anchor.read_text().splitlines(keepends=True)[:-1]))
    result = log.verify()
    assert result.ok and result.anchored == 2 and "lags 1 record" in (result.note or "")
    assert log.record("model.pull", "x:1").seq == 4
    assert FileAnchor(anchor).read().count == 4  # type: ignore[union-attr]


def test_the_anchor_is_a_setting(settings: Settings, tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from sutazai.config import load_settings

    elsewhere = tmp_path / "other-volume" / "audit.anchor"
    monkeypatch.setenv("SUTAZAI_HOME", str(settings.home))
    monkeypatch.setenv("SUTAZAI_AUDIT_ANCHOR", str(elsewhere))
    audit(load_settings(), "model.delete", "gemma:1")
    assert FileAnchor(elsewhere).read().count == 1  # type: ignore[union-attr]
    assert open_audit_log(load_settings()).verify().anchor == str(elsewhere)


def test_the_cli_says_in_one_line_what_was_cut_and_refuses_changes(settings: Settings,
                                                                   tmp_path: Path) -> None:
    path = settings.home / "audit" / "audit.jsonl"
    filled(path)
    cut(path, "cut the end")
    result = CliRunner().invoke(app, ["verify"])
    assert result.exit_code == 1 and result.output.count("error:") == 1  # one message,
    assert "recorded 5" in " ".join(result.output.split())  # which rich wraps at 120 columns
    env = {**os.environ, "SUTAZAI_HOME": str(settings.home)}
    env.pop("SUTAZAI_API_KEY", None)
    done = subprocess.run([sys.executable, "-m", "sutazai.cli.main", "keys", "create", "bot"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1
    assert done.stderr.startswith("error:")
    flat = " ".join(done.stderr.split())  # rich wraps at 120 columns
    assert "refusing to add to the audit log" in flat and "sutazai audit accept" in flat
    result = CliRunner().invoke(app, ["accept", "--reason", "case 42: restored from the sink"])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(app, ["verify"]).exit_code == 0
