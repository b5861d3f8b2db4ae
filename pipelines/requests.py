"""What a person may ask of each pipeline, checked before anything runs.

Airflow's ``Param`` schemas catch wrong types when a run is triggered; these models catch
what a schema cannot (a model name missing from the catalog, an unknown load profile, a
document path that does not exist) and turn it into one readable message, so that a bad
``conf`` fails the run at its first task instead of an hour later in a pipeline step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from sutazai.benchmark.profiles import PROFILES
from sutazai.config import Settings
from sutazai.knowledge.models import RelationMode
from sutazai.repository import load_catalog


class PipelineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def check(self, settings: Settings) -> None:
        """Checks that need the settings (the catalog, the file system)."""

    def arguments(self) -> dict[str, Any]:
        return self.model_dump()


def _known_profile(value: str) -> str:
    if value and value not in PROFILES:
        raise ValueError(f"unknown load profile {value!r}; choose one of {', '.join(PROFILES)}")
    return value


def _check_models(models: list[str], settings: Settings) -> None:
    known = [entry.name for entry in load_catalog(settings.catalog).models]
    unknown = [name for name in models if name not in known]
    if unknown:
        raise ValueError(f"model(s) {', '.join(unknown)} not in the catalog "
                         f"{settings.catalog}; known: {', '.join(known)}")


class ModelSyncRequest(PipelineRequest):
    models: list[str] = []

    def check(self, settings: Settings) -> None:
        _check_models(self.models, settings)


class BenchmarkRequest(PipelineRequest):
    profile: str = ""

    _profile = field_validator("profile")(_known_profile)


class NightlyRequest(ModelSyncRequest):
    profile: str = ""

    _profile = field_validator("profile")(_known_profile)


class KnowledgeRequest(PipelineRequest):
    paths: list[str] = []
    relations: RelationMode = "svo"

    def check(self, settings: Settings) -> None:
        missing = [p for p in self.paths if "://" not in p and not Path(p).exists()]
        if missing:
            raise ValueError(f"document path(s) {', '.join(missing)} do not exist")


class BackupDrillRequest(PipelineRequest):
    ask: bool = True


REQUESTS: dict[str, type[PipelineRequest]] = {
    "model_sync": ModelSyncRequest,
    "benchmark_select": BenchmarkRequest,
    "nightly": NightlyRequest,
    "knowledge_ingest": KnowledgeRequest,
    "backup_drill": BackupDrillRequest,
}


def validate_request(pipeline: str, conf: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The pipeline's arguments from a run's ``conf``; ValueError with the fix otherwise."""
    try:
        request = REQUESTS[pipeline].model_validate(conf)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'conf'}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"invalid conf for {pipeline}: {problems}") from None
    try:
        request.check(settings)
    except ValueError as exc:
        raise ValueError(f"invalid conf for {pipeline}: {exc}") from None
    return request.arguments()
