"""Champion/challenger promotion: a candidate replaces the champion only when it proves it.

Two paths reach the same rule ("win by the declared margin and meet every SLO"):

* The nightly selection (:mod:`sutazai.selection.rules`) ranks the mirrored models; its winner is
  only a *proposal* when a task already has a champion: :func:`hold_or_replace` keeps the
  champion unless the proposal's weighted score beats the champion's by the margin, or the
  champion no longer meets the SLOs. A champion the selection cannot compare (a fine-tuned
  model promoted on held-out data, not in tonight's pool) is kept.
* A model SutazAI made (fine-tuned, searched, quantised) is registered as ``challenger``,
  then it and the champion are benchmarked by the same harness, with the same load profile,
  on the same held-out data (``evaluate_and_promote``). :func:`decide` promotes it when
  its held-out perplexity is lower by at least the margin and it meets every SLO.

Both functions here are pure; the MLflow and serving I/O is in :mod:`sutazai.learning.challenge`
(:func:`~sutazai.learning.challenge.evaluate_and_promote`) and :mod:`sutazai.selection.store`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from sutazai.selection.rules import Candidate, Selection

PRIMARY = "perplexity"  # on the held-out split of the gated dataset; lower is better


class Evaluation(BaseModel):
    """One model version measured for a promotion decision."""

    ref: str
    engine: str
    metrics: dict[str, float] = Field(default_factory=dict)
    slo_failures: list[str] = Field(default_factory=list)
    run_id: str | None = None


class PromotionDecision(BaseModel):
    """What happened to one challenger, and why, in numbers."""

    task: str
    challenger: str
    champion_before: str | None = None
    champion_after: str | None = None
    promoted: bool = False
    gain: float | None = None
    margin: float = 0.0
    reason: str = ""
    evaluations: list[Evaluation] = Field(default_factory=list)
    run_id: str | None = None


def relative_gain(champion: float, challenger: float) -> float:
    """How much lower (better) the challenger's perplexity is, as a fraction of the champion's."""
    return (champion - challenger) / champion if champion > 0 else 0.0


def decide(task: str, champion: Evaluation | None, challenger: Evaluation,
           margin: float) -> PromotionDecision:
    """Promote ``challenger`` when it meets every SLO and beats the champion by ``margin``."""
    base = PromotionDecision(task=task, challenger=f"{challenger.ref}@{challenger.engine}",
                             margin=margin,
                             champion_before=(f"{champion.ref}@{champion.engine}"
                                              if champion else None),
                             evaluations=[e for e in (champion, challenger) if e])
    base.champion_after = base.champion_before
    if challenger.slo_failures:
        base.reason = (f"{base.challenger} misses the SLOs: " + "; ".join(challenger.slo_failures)
                       + f"; {base.champion_before or 'no champion'} stays")
        return base
    if PRIMARY not in challenger.metrics:
        base.reason = f"{base.challenger} has no held-out {PRIMARY}; it cannot be compared"
        return base
    if champion is None:
        base.promoted, base.champion_after = True, base.challenger
        base.reason = f"{base.challenger} meets every SLO and the task had no champion"
        return base
    if PRIMARY not in champion.metrics:
        base.promoted, base.champion_after = True, base.challenger
        base.reason = (f"{base.challenger} meets every SLO; the champion could not be scored "
                       "on the held-out data")
        return base
    before, after = champion.metrics[PRIMARY], challenger.metrics[PRIMARY]
    base.gain = relative_gain(before, after)
    numbers = (f"held-out {PRIMARY} {after:.3f} against {before:.3f} "
               f"({base.gain:+.1%}; margin {margin:.1%})")
    if base.gain >= margin:
        base.promoted, base.champion_after = True, base.challenger
        base.reason = f"{base.challenger} is promoted: {numbers}, and it meets every SLO"
    else:
        base.reason = f"{base.champion_before} stays champion: {base.challenger} has {numbers}"
    return base


def _key(candidate: Candidate) -> tuple[str, int, str]:
    return candidate.model, candidate.version, candidate.engine


def hold_or_replace(selection: Selection, current: Candidate | None, margin: float
                    ) -> tuple[Candidate | None, Candidate | None, str]:
    """The (champion, challenger) to set after a selection, and a sentence saying why.

    ``current`` is the champion before it (model, version, engine, concurrency), ``margin``
    in the selection's score units (weighted, normalised objectives).
    """
    winner, runner_up = selection.winner, selection.challenger
    if current is None or winner is None or _key(winner) == _key(current):
        return winner, runner_up, ""
    label = f"{current.model}:{current.version}@{current.engine}"
    held = next((r for r in selection.ranked if _key(r.candidate) == _key(current)), None)
    if held is None:
        misses = next((m for lbl, m in selection.rejected.items() if lbl.startswith(label)), None)
        if misses:
            return winner, runner_up, (f"{label} is replaced: it no longer meets the SLOs ("
                                       + "; ".join(misses) + ")")
        return current, winner, (f"{label} stays champion: it is not among tonight's "
                                 f"candidates (it was promoted on held-out data); "
                                 f"{winner.label} is the challenger")
    best = selection.ranked[0]
    lead = best.score - held.score
    if lead >= margin:
        return winner, held.candidate, (f"{winner.label} replaces {label}: score "
                                        f"{best.score:.3f} against {held.score:.3f} "
                                        f"(lead {lead:.3f} >= margin {margin:.3f})")
    return held.candidate, winner, (f"{label} stays champion: {winner.label} scores "
                                    f"{best.score:.3f} against {held.score:.3f}, a lead under "
                                    f"the margin {margin:.3f}")
