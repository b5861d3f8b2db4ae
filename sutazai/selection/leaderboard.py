"""The leaderboard: the newest benchmarks, each task's champion and challenger marked.

The marks come from the task aliases (:func:`~sutazai.registry.task_aliases.current_aliases`),
the same reading serving and the nightly report use. A champion or challenger SutazAI made
itself (fine-tuned, quantised from a fine-tune, found by architecture search) is never in the
benchmark experiment: the promotion measured it, on the held-out split, in the learning
experiment. It is listed with those measurements, labelled as such.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from sutazai.benchmark.runner import BenchmarkSummary
from sutazai.config import Settings
from sutazai.errors import NotFoundError
from sutazai.registry.task_aliases import AliasBook, TaskChoice, current_aliases
from sutazai.repository import open_repository
from sutazai.repository.provenance import made_by_learning
from sutazai.selection.store import latest_summaries

BENCHMARK = "benchmark"
HELDOUT = "learning (held-out)"


class Role(BaseModel):
    """An alias a leaderboard entry holds: ``task@alias`` at ``concurrency`` streams."""

    task: str
    alias: str
    concurrency: int = 1


class Entry(BaseModel):
    """One model version on one engine: its newest measurements and the aliases it holds."""

    model: str
    version: int
    engine: str
    source: str = BENCHMARK
    summary: BenchmarkSummary | None = None  # None: a learned holder never measured
    roles: list[Role] = Field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.version}"

    @property
    def held_out(self) -> bool:
        """Its numbers come from the promotion's held-out run, not from the benchmark."""
        return self.source != BENCHMARK

    def role_at(self, concurrency: int | None, task: str = "") -> str:
        """The roles to show on the row of ``concurrency`` (None: a row without load steps):
        each role on its own concurrency's row, or on every row when none has it; ``task``
        (the row's own) is left out of the names: ``champion``, but ``chat@champion``."""
        levels = {s.concurrency for s in self.summary.steps} if self.summary else set()
        return ", ".join(r.alias if r.task == task else f"{r.task}@{r.alias}"
                         for r in self.roles
                         if concurrency is None or r.concurrency == concurrency
                         or r.concurrency not in levels)


def _matches(choice: TaskChoice, model: str, version: int, engine: str) -> bool:
    return (choice.model, choice.repository_version, choice.engine) == (model, version, engine)


def _learned(settings: Settings, choice: TaskChoice) -> bool:
    try:
        return made_by_learning(open_repository(settings).get(choice.model,
                                                              choice.repository_version))
    except NotFoundError:  # removed from the repository since
        return False


def leaderboard(settings: Settings, task: str | None = None, profile: str | None = None,
                aliases: AliasBook | None = None) -> list[Entry]:
    """The newest benchmark of every version and engine (best throughput first within a
    task and profile), then each champion and challenger those miss: a learned one (or one
    outside ``profile``) with its newest held-out measurement from the promotion, if any."""
    book = current_aliases(settings) if aliases is None else aliases
    holders = book.task_holders(task)
    summaries = latest_summaries(settings, task, profile)
    summaries.sort(key=lambda s: (s.task, s.profile.name,
                                  -max((st.output_throughput for st in s.steps), default=0)))
    entries = [Entry(model=s.model, version=s.version, engine=s.engine, summary=s)
               for s in summaries]
    learning = settings.model_copy(update={"benchmark_experiment": settings.learning_experiment})
    for holder in holders:  # every holder is listed, measured or not
        choice = holder.choice
        assert choice is not None  # task_holders() holds task aliases only
        if any(_matches(choice, e.model, e.version, e.engine) for e in entries):
            continue
        measured = latest_summaries(learning, digest=choice.digest,
                                    engine=choice.engine) if choice.digest else []
        entries.append(Entry(model=choice.model, version=choice.repository_version,
                             engine=choice.engine,
                             source=HELDOUT if measured or _learned(settings, choice)
                             else BENCHMARK, summary=measured[0] if measured else None))
    for entry in entries:
        entry.roles = [Role(task=h.task, alias=h.alias, concurrency=h.choice.concurrency)
                       for h in holders if h.choice is not None
                       and _matches(h.choice, entry.model, entry.version, entry.engine)]
    return entries
