"""Per-task ``champion`` / ``challenger`` aliases in MLflow, with a rollback.

Aliases on a model's own registered model can only rank versions of that one model, but
a task (text-generation, embeddings, ner) is won by one of several models, on one engine
at one concurrency. So each task gets a registered model ``task.<task>`` whose versions
each point at a repository version (same ``sutazai://`` source and tags as the model's own
registration) plus the serving choice (``sutazai.engine``, ``sutazai.concurrency``).
``models:/task.text-generation@champion`` is then the answer to "what serves this task".

Promoting a new champion records the one it replaces in the registered model's
``sutazai.previous_champion`` tag, and :meth:`TaskAliases.rollback` swaps them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sutazai.errors import NotFoundError
from sutazai.registry.mlflow_registry import TAG, ModelRegistry, repository_uri, version_tags
from sutazai.repository.manifest import Manifest

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = f"{TAG}previous_champion"


@dataclass(frozen=True)
class TaskChoice:
    """What serves a task: a repository version on an engine at a concurrency."""

    task: str
    model: str
    repository_version: int
    engine: str
    concurrency: int
    registry_version: str = ""

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.repository_version}"


def task_model_name(task: str) -> str:
    return f"task.{task}"


class TaskAliases:
    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.client = registry.client

    def get(self, task: str, alias: str = CHAMPION) -> TaskChoice | None:
        version = self.registry.version_by_alias(task_model_name(task), alias)
        return None if version is None else _choice(task, version)

    def require(self, task: str, alias: str = CHAMPION) -> TaskChoice:
        choice = self.get(task, alias)
        if choice is None:
            raise NotFoundError(
                f"no {alias} is selected for task {task!r} yet: run 'make run' (or 'sutazai "
                "bench run' then 'sutazai select') first, or name a model: sutazai serve NAME"
            )
        return choice

    def set(self, task: str, alias: str, manifest: Manifest, engine: str, concurrency: int,
            explanation: str = "") -> TaskChoice:
        """Point ``task.<task>@alias`` at this choice (idempotent); remember the old champion."""
        name = task_model_name(task)
        self._ensure_model(name, task)
        version = self._find_or_create(name, manifest, engine, concurrency, explanation)
        current = self.registry.version_by_alias(name, alias)
        if current is not None and str(current.version) == str(version.version):
            return _choice(task, version)
        if alias == CHAMPION and current is not None:
            self.client.set_registered_model_tag(name, PREVIOUS, str(current.version))
        self.client.set_registered_model_alias(name, alias, str(version.version))
        return _choice(task, version)

    def clear(self, task: str, alias: str) -> None:
        name = task_model_name(task)
        if self.registry.version_by_alias(name, alias) is not None:
            self.client.delete_registered_model_alias(name, alias)

    def rollback(self, task: str) -> tuple[TaskChoice, TaskChoice]:
        """Make the previous champion champion again; returns (restored, demoted)."""
        name = task_model_name(task)
        current = self.registry.version_by_alias(name, CHAMPION)
        previous = None
        if current is not None:
            tags = self.client.get_registered_model(name).tags
            if tags.get(PREVIOUS):
                previous = self.client.get_model_version(name, tags[PREVIOUS])
        if current is None or previous is None:
            raise NotFoundError(f"task {task!r} has no previous champion to roll back to")
        self.client.set_registered_model_alias(name, CHAMPION, str(previous.version))
        self.client.set_registered_model_tag(name, PREVIOUS, str(current.version))
        return _choice(task, previous), _choice(task, current)

    def _ensure_model(self, name: str, task: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name, tags={f"{TAG}task": task},
                description=f"What SutazAI serves for the task {task!r}: each version points "
                "at a repository model version and the engine and concurrency chosen for it.")

    def _find_or_create(self, name: str, manifest: Manifest, engine: str, concurrency: int,
                        explanation: str) -> ModelVersion:
        query = (f"name = '{name}' and tags.`{TAG}model` = '{manifest.name}' and "
                 f"tags.`{TAG}digest` = '{manifest.digest}' and "
                 f"tags.`{TAG}engine` = '{engine}' and tags.`{TAG}concurrency` = '{concurrency}'")
        found = self.client.search_model_versions(query)
        if found:
            return self.client.get_model_version(
                name, str(min(found, key=lambda v: int(v.version)).version))
        return self.client.create_model_version(
            name, source=repository_uri(manifest),
            tags=version_tags(manifest) | {
                f"{TAG}model": manifest.name, f"{TAG}engine": engine,
                f"{TAG}concurrency": str(concurrency),
            },
            description=explanation[:4000] or f"{manifest.ref} on {engine}",
            await_creation_for=0,
        )


def _choice(task: str, version: ModelVersion) -> TaskChoice:
    tags = version.tags
    return TaskChoice(
        task=task, model=tags[f"{TAG}model"],
        repository_version=int(tags[f"{TAG}repository_version"]),
        engine=tags[f"{TAG}engine"], concurrency=int(tags.get(f"{TAG}concurrency", "1")),
        registry_version=str(version.version),
    )
