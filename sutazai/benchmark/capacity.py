"""Capacity planning: how fast one replica may be driven within the SLOs, how many replicas a
target rate needs, and what a million tokens costs there.

One replica is swept with Poisson arrivals at rising rates (GuideLLM's and AIPerf's method):
a step meets the SLOs when every request completed and the P95 of TTFT, TPOT and end-to-end
latency are within the limits (a replica that falls behind queues, and its TTFT shows
it). The highest rate that meets them is the replica's sustainable rate;
the sweep grows geometrically until a step fails, then bisects twice between the last
pass and the first failure. A target rate then needs ``ceil(target / sustainable)`` replicas
(llm-d's planner rule), and the plan predicts P95 TTFT at the rate each replica would get
by interpolating the sweep. Cost per 1M tokens is the replica's price per hour over the
tokens it serves per hour at its sustainable rate.

What the plan assumes is part of it (prompt and output lengths, Poisson arrivals,
round-robin balancing), and it says where it extrapolates beyond what was measured.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from sutazai.benchmark.loadgen import LoadResult
from sutazai.benchmark.metrics import SLO

GROWTH = 1.6  # each sweep step offers this much more than the last
MAX_STEPS = 10
REFINE = 2  # bisections of the bracket where the SLOs start to fail


class RateStep(BaseModel):
    """One step of a rate sweep: what was offered and what the replica did with it."""

    rate: float  # offered requests per second
    requests: int
    completed: int
    throughput_rps: float
    input_tokens_per_s: float
    output_tokens_per_s: float
    ttft_p95_ms: float | None
    tpot_p95_ms: float | None
    e2el_p95_ms: float | None
    good_ratio: float  # share of requests that met every per-request limit
    meets_slo: bool
    why: str = ""  # the first limit it broke


class CapacityCurve(BaseModel):
    """A candidate's sweep and its sustainable rate (0 when no step met the SLOs)."""

    candidate: str
    engine: str = ""
    concurrency: int = 1
    hardware_profile: str = ""
    steps: list[RateStep] = Field(default_factory=list)
    max_rate_rps: float = 0.0
    limit_found: bool = False  # a step above the sustainable rate failed

    @property
    def best(self) -> RateStep | None:
        passing = [s for s in self.steps if s.meets_slo]
        return max(passing, key=lambda s: s.rate) if passing else None


class CapacityPlan(BaseModel):
    """Replicas of one candidate for a target rate, with cost and what it rests on."""

    curve: CapacityCurve
    target_rps: float
    replicas: int | None  # None: no rate met the SLOs
    headroom: float | None = None  # share of the planned replicas' capacity left unused
    rate_per_replica: float | None = None
    predicted_ttft_p95_ms: float | None = None
    cost_per_1m_input: float | None = None
    cost_per_1m_output: float | None = None
    currency: str = ""
    assumptions: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


def judge(result: LoadResult, rate: float, slo: SLO) -> RateStep:
    """A load step as a rate step: did it meet the SLOs, and if not, which limit broke."""
    m = result.metrics
    requests = len(result.records)
    checks = [
        ("a request failed", m.failed == 0 and not result.incomplete),
        (f"P95 TTFT {m.ttft.p95_ms or 0:.0f} ms > {slo.ttft_p95_ms} ms",
         slo.ttft_p95_ms is None or (m.ttft.p95_ms or 0) <= slo.ttft_p95_ms),
        (f"P95 TPOT {m.tpot.p95_ms or 0:.1f} ms > {slo.tpot_p95_ms} ms",
         slo.tpot_p95_ms is None or (m.tpot.p95_ms or 0) <= slo.tpot_p95_ms),
        (f"P95 E2EL {m.e2el.p95_ms or 0:.0f} ms > {slo.e2el_p95_ms} ms",
         slo.e2el_p95_ms is None or (m.e2el.p95_ms or 0) <= slo.e2el_p95_ms),
    ]
    broken = next((why for why, ok in checks if not ok), "")
    good = sum(slo.request_ok(r) for r in result.records) / requests if requests else 0.0
    return RateStep(rate=rate, requests=requests, completed=m.completed,
                    throughput_rps=m.request_throughput,
                    input_tokens_per_s=m.total_input_tokens / m.duration_s,
                    output_tokens_per_s=m.output_throughput, ttft_p95_ms=m.ttft.p95_ms,
                    tpot_p95_ms=m.tpot.p95_ms, e2el_p95_ms=m.e2el.p95_ms, good_ratio=good,
                    meets_slo=not broken, why=broken)


def sweep(run_at: Callable[[float], RateStep], start_rate: float, *,
          growth: float = GROWTH, max_steps: int = MAX_STEPS, refine: int = REFINE,
          on_step: Callable[[RateStep], None] = lambda step: None) -> list[RateStep]:
    """Steps at ``start_rate * growth**i`` until one fails (or ``max_steps``), then
    ``refine`` more, each between the last pass and the first failure. If the first step
    already fails, the rate is lowered the same way until one passes, or the steps run
    out."""
    steps: list[RateStep] = []

    def run(rate: float) -> RateStep:
        step = run_at(rate)
        steps.append(step)
        on_step(step)
        return step

    rate = start_rate
    first = run(rate)
    direction = growth if first.meets_slo else 1 / growth
    while len(steps) < max_steps:
        rate *= direction
        if run(rate).meets_slo != first.meets_slo:
            break
    for _ in range(refine):  # bisect the bracket: each halves it (1.6x -> 1.26x -> 1.12x)
        passed = [s.rate for s in steps if s.meets_slo]
        above = [s.rate for s in steps if not s.meets_slo and passed and s.rate > max(passed)]
        if not above:
            break
        run(math.sqrt(max(passed) * min(above)))  # geometric midpoint, as the steps grow
    return sorted(steps, key=lambda s: s.rate)


def curve_of(candidate: str, steps: Sequence[RateStep], **where: str | int) -> CapacityCurve:
    best = [s for s in steps if s.meets_slo]
    top = max((s.rate for s in best), default=0.0)
    return CapacityCurve(candidate=candidate, steps=list(steps), max_rate_rps=top,
                         limit_found=any(not s.meets_slo and s.rate > top for s in steps),
                         **where)  # type: ignore[arg-type]


def plan(curve: CapacityCurve, target_rps: float, *, price_per_hour: float | None = None,
         currency: str = "", assumptions: dict[str, str] | None = None) -> CapacityPlan:
    """Replicas for ``target_rps`` from the curve, the P95 TTFT each replica should then
    see, and cost per 1M tokens at the sustainable rate (None without a price)."""
    result = CapacityPlan(curve=curve, target_rps=target_rps, replicas=None,
                          currency=currency, assumptions=dict(assumptions or {}))
    best = curve.best
    if best is None:
        closest = min(curve.steps, key=lambda s: s.ttft_p95_ms or math.inf, default=None)
        hint = (f"; closest: {closest.rate:.2f} req/s with P95 TTFT "
                f"{closest.ttft_p95_ms or 0:.0f} ms ({closest.why})" if closest else "")
        result.notes.append(f"{curve.candidate} meets the SLOs at no rate tried{hint}")
        return result
    replicas = max(1, math.ceil(target_rps / curve.max_rate_rps - 1e-9))
    per_replica = target_rps / replicas
    result.replicas = replicas
    result.rate_per_replica = per_replica
    result.headroom = 1 - per_replica / curve.max_rate_rps
    result.predicted_ttft_p95_ms = interpolate(curve.steps, per_replica)
    if not curve.limit_found:
        result.notes.append(f"the sweep never failed: {curve.max_rate_rps:.2f} req/s is a "
                            "lower bound of one replica's capacity, so the plan may be high")
    lowest = min(s.rate for s in curve.steps)
    if per_replica < lowest:
        result.notes.append(f"{per_replica:.2f} req/s per replica is below the slowest step "
                            f"measured ({lowest:.2f}): its TTFT is that step's (extrapolated)")
    if price_per_hour is None:
        result.notes.append("no price for this hardware profile (setting hardware_costs): "
                            "cost left out")
    else:
        result.cost_per_1m_input = per_million(price_per_hour, best.input_tokens_per_s)
        result.cost_per_1m_output = per_million(price_per_hour, best.output_tokens_per_s)
    return result


def per_million(price_per_hour: float, tokens_per_s: float) -> float | None:
    """Price of 1M tokens at ``tokens_per_s`` (None when nothing was served)."""
    if tokens_per_s <= 0:
        return None
    return price_per_hour / (tokens_per_s * 3600) * 1_000_000


def interpolate(steps: Sequence[RateStep], rate: float) -> float | None:
    """P95 TTFT at ``rate``, linear between the measured steps around it (the nearest step's
    value outside them)."""
    points = sorted((s.rate, s.ttft_p95_ms) for s in steps if s.ttft_p95_ms is not None)
    if not points:
        return None
    if rate <= points[0][0]:
        return points[0][1]
    for (r0, t0), (r1, t1) in itertools.pairwise(points):
        if r0 <= rate <= r1:
            return t0 + (t1 - t0) * (rate - r0) / (r1 - r0) if r1 > r0 else t1
    return points[-1][1]
