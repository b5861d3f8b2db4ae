"""The bootstrap regression decision on per-request samples (pure, seeded)."""

from __future__ import annotations

import random

import pytest

from sutazai.benchmark.compare import (
    MIN_EFFECT,
    MIN_SAMPLES,
    Samples,
    compare,
    compare_samples,
    figures,
    samples_of,
)
from sutazai.benchmark.metrics import RequestRecord


def jittered(n: int, base: float, seed: int, spread: float = 0.2) -> list[float]:
    rng = random.Random(seed)
    return [base * (1 + spread * rng.uniform(-1, 1)) for _ in range(n)]


def test_identical_samples_are_no_regression() -> None:
    night = jittered(100, 5.0, seed=1)
    same = compare("tpot_mean_ms", night, [night], "mean")
    assert same is not None and not same.regressed
    assert same.change == 0 and same.low < 0 < same.high
    other = compare("tpot_mean_ms", jittered(100, 5.0, seed=2), [night], "mean")
    assert other is not None and not other.regressed and other.low < MIN_EFFECT


def test_a_clear_slowdown_is_flagged_with_an_interval_beyond_the_minimum_effect() -> None:
    night = jittered(100, 5.0, seed=1)
    slow = compare("tpot_mean_ms", jittered(100, 6.0, seed=2), [night], "mean")
    assert slow is not None and slow.regressed
    assert 0 < MIN_EFFECT < slow.low < slow.change < slow.high
    assert slow.change == pytest.approx(0.2, abs=0.05)
    assert (slow.n, slow.n_baseline, slow.nights) == (100, 100, 1)
    faster = compare("ttft_p95_ms", jittered(100, 4.0, seed=2), [night], "p95")
    assert faster is not None and not faster.regressed and faster.high < 0
    # seeded: the same data gives the same interval
    again = compare("tpot_mean_ms", jittered(100, 6.0, seed=2), [night], "mean")
    assert again == slow


def test_the_baseline_is_the_median_of_the_nights_so_one_odd_night_does_not_count() -> None:
    nights = [jittered(60, 5.0, seed=s) for s in range(3)] + [jittered(60, 9.0, seed=9)]
    tonight = compare("tpot_mean_ms", jittered(60, 5.0, seed=7), nights, "mean")
    assert tonight is not None and not tonight.regressed and tonight.nights == 4
    assert tonight.baseline == pytest.approx(5.0, rel=0.06)


def test_too_few_requests_leave_the_decision_to_the_median_rule() -> None:
    few = jittered(MIN_SAMPLES - 1, 5.0, seed=1)
    enough = jittered(100, 5.0, seed=2)
    assert compare("tpot_mean_ms", few, [enough], "mean") is None
    assert compare("tpot_mean_ms", enough, [few], "mean") is None
    # a small night among others is left out, not the whole baseline
    kept = compare("tpot_mean_ms", enough, [few, enough], "mean")
    assert kept is not None and kept.nights == 1


def test_samples_come_from_successful_requests_in_milliseconds() -> None:
    ok = RequestRecord(index=0, sent=0.0, ttft=0.02, latency=0.08, output_tokens=16,
                       success=True)
    failed = RequestRecord(index=1, sent=0.0, error="HTTP 500")
    samples = samples_of([ok, failed])
    assert len(samples) == 1
    assert samples.ttft == pytest.approx((20.0,)) and samples.e2el == pytest.approx((80.0,))
    assert samples.tpot == pytest.approx((4.0,))
    assert figures(samples)["tpot_mean_ms"] == pytest.approx(4.0)
    night = Samples(ttft=tuple(jittered(50, 20, 1)), tpot=tuple(jittered(50, 4, 2)),
                    e2el=tuple(jittered(50, 80, 3)))
    assert set(compare_samples(night, [night])) == {"ttft_p95_ms", "tpot_mean_ms",
                                                    "e2el_p95_ms"}
    assert compare_samples(night, [Samples()]) == {}
