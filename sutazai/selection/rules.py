"""Choose, per task, the model version, engine and concurrency that serve it best.

Candidates are benchmark results, one per (model version, engine, concurrency level).
1. Every candidate that misses a declared SLO is dropped, with the reason in numbers.
2. Among the rest, the Pareto front on four objectives: P95 TTFT (lower), output
   throughput (higher), peak memory (lower) and quality (higher).
3. On the front, the declared weights score each objective normalised to [0, 1] across the
   feasible candidates; the highest score wins. Ties break deterministically: higher
   quality, then lower P95 TTFT, then higher throughput, then the label.
The runner-up becomes the challenger. The explanation says why the winner won and why
each other candidate lost; it is stored with the selection run.

This is pure: it takes candidates and returns a decision, so it is tested on synthetic
numbers as well as measured ones. MLflow I/O lives in :mod:`sutazai.selection.store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from sutazai.benchmark.metrics import SLO


class Weights(BaseModel):
    """How much each objective counts on the Pareto front (the load profile's priorities)."""

    quality: float = Field(default=1.0, ge=0)
    ttft: float = Field(default=1.0, ge=0)
    throughput: float = Field(default=1.0, ge=0)
    memory: float = Field(default=0.25, ge=0)
    cost: float = Field(default=0.0, ge=0, description="Cost per 1M output tokens at the "
                        "measured throughput (needs hardware_costs); off by default")


class Candidate(BaseModel):
    model: str
    version: int
    engine: str
    concurrency: int
    ttft_p95_ms: float | None = None
    e2el_p95_ms: float | None = None
    tpot_p95_ms: float | None = None
    output_throughput: float = 0.0
    memory_mib: float | None = None
    quality: float | None = None
    run_id: str | None = None
    digest: str = ""
    cost_per_1m_output: float | None = None  # None: no price for its hardware profile

    @property
    def label(self) -> str:
        return f"{self.model}:{self.version}@{self.engine}x{self.concurrency}"

    def objectives(self) -> tuple[float, float, float, float]:
        """All as 'higher is better', missing values as the worst possible."""
        inf = float("inf")
        return (
            -(self.ttft_p95_ms if self.ttft_p95_ms is not None else inf),
            self.output_throughput,
            -(self.memory_mib if self.memory_mib is not None else inf),
            self.quality if self.quality is not None else -inf,
        )


@dataclass(frozen=True)
class Ranked:
    candidate: Candidate
    score: float
    on_front: bool
    dominated_by: str | None


@dataclass(frozen=True)
class Selection:
    task: str
    winner: Candidate | None
    challenger: Candidate | None
    ranked: list[Ranked]
    rejected: dict[str, list[str]]
    explanation: str


def slo_misses(candidate: Candidate, slo: SLO) -> list[str]:
    """Why ``candidate`` misses ``slo``, one reason per objective (empty when it meets it)."""
    misses = []
    limits = [
        ("P95 TTFT", candidate.ttft_p95_ms, slo.ttft_p95_ms, "ms"),
        ("P95 TPOT", candidate.tpot_p95_ms, slo.tpot_p95_ms, "ms"),
        ("P95 end-to-end latency", candidate.e2el_p95_ms, slo.e2el_p95_ms, "ms"),
        ("peak memory", candidate.memory_mib, slo.max_memory_mib, "MiB"),
    ]
    for name, value, limit, unit in limits:
        if limit is None:
            continue
        if value is None:
            misses.append(f"{name} was not measured (limit {limit:g} {unit})")
        elif value > limit:
            misses.append(f"{name} {value:.1f} {unit} > {limit:g} {unit}")
    if slo.min_quality is not None:
        if candidate.quality is None:
            misses.append(f"quality was not measured (minimum {slo.min_quality:g})")
        elif candidate.quality < slo.min_quality:
            misses.append(f"quality {candidate.quality:.3f} < {slo.min_quality:g}")
    return misses


def dominates(a: Candidate, b: Candidate, cost: bool = False) -> bool:
    """``a`` is at least as good on every objective and better on one; with ``cost``, the
    price of its tokens is an objective too (a cheaper, slower candidate is not dominated)."""
    oa, ob = _objectives(a, cost), _objectives(b, cost)
    return all(x >= y for x, y in zip(oa, ob, strict=True)) and oa != ob


def _objectives(c: Candidate, cost: bool) -> tuple[float, ...]:
    if not cost:
        return c.objectives()
    return (*c.objectives(), -(c.cost_per_1m_output if c.cost_per_1m_output is not None
                               else float("inf")))


def _normalised(values: Sequence[float]) -> list[float]:
    finite = [v for v in values if v not in (float("inf"), float("-inf"))]
    if not finite:
        return [0.0] * len(values)
    low, high = min(finite), max(finite)
    out = []
    for v in values:
        if v == float("-inf"):
            out.append(0.0)
        else:
            out.append(1.0 if high == low else (v - low) / (high - low))
    return out


def select(task: str, candidates: Sequence[Candidate], slo: SLO, weights: Weights
           ) -> Selection:
    rejected = {c.label: misses for c in candidates if (misses := slo_misses(c, slo))}
    feasible = sorted((c for c in candidates if c.label not in rejected), key=lambda c: c.label)
    columns = list(zip(*(c.objectives() for c in feasible), strict=True)) if feasible else []
    norms = [_normalised(col) for col in columns]
    weight = (weights.ttft, weights.throughput, weights.memory, weights.quality)
    # With a cost weight the price of tokens is one more objective (unpriced: the dearest);
    # on one hardware profile it falls as throughput rises, across profiles it need not.
    use_cost = weights.cost > 0
    cheap = _normalised([-c.cost_per_1m_output if c.cost_per_1m_output is not None
                         else float("-inf") for c in feasible])
    ranked = []
    for i, candidate in enumerate(feasible):
        dominator = next((o.label for o in feasible if dominates(o, candidate, use_cost)), None)
        score = sum(w * norms[k][i] for k, w in enumerate(weight)) if norms else 0.0
        score += weights.cost * cheap[i] if feasible else 0.0
        ranked.append(Ranked(candidate, score, dominator is None, dominator))

    def order(r: Ranked) -> tuple[bool, float, float, float, float, str]:
        c = r.candidate
        o = c.objectives()
        return (not r.on_front, -round(r.score, 9), -o[3], -o[0], -o[1], c.label)

    ranked.sort(key=order)
    winner = ranked[0].candidate if ranked else None
    challenger = ranked[1].candidate if len(ranked) > 1 else None
    return Selection(task, winner, challenger, ranked, rejected,
                     explain(task, ranked, rejected, slo, weights))


def _describe(c: Candidate) -> str:
    def num(value: float | None, unit: str, digits: int = 1) -> str:
        return "n/a" if value is None else f"{value:.{digits}f} {unit}"

    return (f"P95 TTFT {num(c.ttft_p95_ms, 'ms')}, P95 e2e {num(c.e2el_p95_ms, 'ms')}, "
            f"{c.output_throughput:.1f} tok/s, memory {num(c.memory_mib, 'MiB', 0)}, "
            f"quality {num(c.quality, '', 3).strip()}")


def explain(task: str, ranked: Sequence[Ranked], rejected: dict[str, list[str]], slo: SLO,
            weights: Weights) -> str:
    limits = ", ".join(f"{k}={v:g}" for k, v in slo.model_dump().items() if v is not None)
    lines = [f"# Selection for task {task}", "",
             f"SLOs: {limits or 'none'}. Weights: quality {weights.quality:g}, TTFT "
             f"{weights.ttft:g}, throughput {weights.throughput:g}, memory {weights.memory:g}"
             + (f", cost {weights.cost:g}." if weights.cost else "."),
             ""]
    if not ranked:
        lines.append("No candidate meets the SLOs, so no champion was chosen.")
    for place, r in enumerate(ranked):
        c = r.candidate
        if place == 0:
            lines.append(f"- **champion** {c.label}: on the Pareto front with the highest "
                         f"weighted score {r.score:.3f} ({_describe(c)}).")
            continue
        role = "challenger" if place == 1 else "not chosen"
        if r.on_front:
            why = (f"on the Pareto front, but its weighted score {r.score:.3f} is lower than "
                   f"the champion's {ranked[0].score:.3f}")
            if abs(r.score - ranked[0].score) < 1e-9:
                why = "tied on score with the champion; lost on the tie-break (quality, TTFT, " \
                      "throughput, name)"
        else:
            why = f"dominated by {r.dominated_by} (worse or equal on every objective)"
        lines.append(f"- {role} {c.label}: {why} ({_describe(c)}).")
    for label, misses in sorted(rejected.items()):
        lines.append(f"- rejected {label}: misses the SLOs: {'; '.join(misses)}.")
    return "\n".join(lines) + "\n"
