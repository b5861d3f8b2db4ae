"""The main job (``make run``): today the model sync; the nightly cycle grows from here."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sutazai.config import Settings
from sutazai.mirror import MirrorOutcome, mirror_catalog, verify_repository
from sutazai.progress import NULL_PROGRESS, Progress
from sutazai.repository.store import FileProblem


@dataclass
class CycleReport:
    outcomes: list[MirrorOutcome]
    versions: int
    problems: list[FileProblem] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcomes": [o.as_dict() for o in self.outcomes],
            "versions": self.versions,
            "problems": [p.__dict__ for p in self.problems],
            "seconds": self.seconds,
        }


def run_cycle(settings: Settings, progress: Progress = NULL_PROGRESS) -> CycleReport:
    """Mirror every catalog model, register it in MLflow, and re-verify the repository."""
    started = time.monotonic()
    outcomes = mirror_catalog(settings, progress=progress)
    manifests, problems = verify_repository(settings, progress=progress)
    return CycleReport(outcomes, len(manifests), problems, time.monotonic() - started)
