"""`overlaid` leaves os.environ as it found it: steps' variables must not leak into the
rest of a process that goes on working (a DAG task, a test session, `make run`)."""

from __future__ import annotations

import os

import pytest

from sutazai.environ import overlaid


def test_values_are_set_inside_and_restored_or_removed_after_even_on_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUTAZAI_TEST_KEPT", "before")
    monkeypatch.delenv("SUTAZAI_TEST_NEW", raising=False)
    with pytest.raises(RuntimeError), overlaid({"SUTAZAI_TEST_KEPT": "inside",
                                                "SUTAZAI_TEST_NEW": "inside"}):
        assert os.environ["SUTAZAI_TEST_KEPT"] == os.environ["SUTAZAI_TEST_NEW"] == "inside"
        raise RuntimeError("a step failed")
    assert os.environ["SUTAZAI_TEST_KEPT"] == "before"
    assert "SUTAZAI_TEST_NEW" not in os.environ
