"""Serving metrics on hand-made request records, checked against hand-computed values."""

from __future__ import annotations

import pytest

from sutazai.benchmark.metrics import SLO, RequestRecord, compute_metrics, max_in_flight
from sutazai.benchmark.profiles import LoadProfile
from sutazai.benchmark.prompts import make_prompts


def record(index: int, sent: float, ttft: float, latency: float, tokens: int,
           itl: list[float] | None = None, success: bool = True) -> RequestRecord:
    return RequestRecord(index=index, sent=sent, ttft=ttft, latency=latency, itl=itl or [],
                         output_tokens=tokens, prompt_tokens=10, success=success)


def test_metrics_follow_vllm_definitions() -> None:
    records = [
        record(0, 0.0, 0.010, 0.310, 4, [0.1, 0.1, 0.1]),
        record(1, 0.5, 0.030, 0.230, 3, [0.1, 0.1]),
        record(2, 1.0, 0.020, 0.020, 1),                    # one token: no TPOT
        RequestRecord(index=3, sent=1.2, error="HTTP 500"),  # failed: excluded
    ]
    m = compute_metrics(records, duration_s=2.0)
    assert (m.completed, m.failed) == (3, 1)
    assert m.total_output_tokens == 8 and m.total_input_tokens == 30
    assert m.request_throughput == pytest.approx(1.5)
    assert m.output_throughput == pytest.approx(4.0)
    assert m.total_token_throughput == pytest.approx(19.0)
    assert m.ttft.mean_ms == pytest.approx(20.0) and m.ttft.median_ms == pytest.approx(20.0)
    # TPOT: (0.310 - 0.010) / 3 = 100 ms and (0.230 - 0.030) / 2 = 100 ms
    assert m.tpot.count == 2 and m.tpot.mean_ms == pytest.approx(100.0)
    assert m.itl.count == 5 and m.itl.p99_ms == pytest.approx(100.0)
    assert m.e2el.p95_ms == pytest.approx(302.0)  # rank 1.9 of 20, 230, 310: 230 + 0.9 * 80
    assert m.goodput is None  # no per-request SLO declared
    assert m.max_concurrent_requests == 1


def test_goodput_counts_requests_within_every_slo() -> None:
    records = [record(0, 0.0, 0.050, 0.2, 5), record(1, 0.0, 0.150, 0.3, 5),
               record(2, 0.0, 0.010, 2.5, 5)]
    m = compute_metrics(records, 1.0, SLO(ttft_p95_ms=100, e2el_p95_ms=1000))
    assert m.goodput == pytest.approx(1.0)  # only the first meets both
    assert m.max_concurrent_requests == 3


def test_max_in_flight_treats_back_to_back_requests_as_sequential() -> None:
    records = [record(0, 0.0, 0.01, 1.0, 2), record(1, 1.0, 0.01, 1.0, 2)]
    assert max_in_flight(records) == 1


def test_prompts_are_seeded_and_sized() -> None:
    words = [f"w{i}" for i in range(200)]
    first = make_prompts(words, 5, 12, seed=3)
    assert first == make_prompts(words, 5, 12, seed=3)
    assert first != make_prompts(words, 5, 12, seed=4)
    assert all(len(p.split()) == 12 for p in first)


def test_profiles_reject_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="poisson profile needs a rate"):
        LoadProfile(name="x", mode="poisson")
    with pytest.raises(ValueError, match="sequential profile has concurrency 1"):
        LoadProfile(name="x", mode="sequential", concurrency=4)
    assert LoadProfile(name="s", mode="sweep", sweep=(1, 4)).levels() == [1, 4]
