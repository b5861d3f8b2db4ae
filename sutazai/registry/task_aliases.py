"""Per-task ``champion`` / ``challenger`` aliases in MLflow, with a rollback.

Aliases on a model's own registered model can only rank versions of that one model, but
a task (text-generation, embeddings, ner) is won by one of several models, on one engine
at one concurrency. So each task gets a registered model ``task.<task>`` whose versions
each point at a repository version (same ``sutazai://`` source and tags as the model's own
registration) plus the serving choice (``sutazai.engine``, ``sutazai.concurrency``).
``models:/task.text-generation@champion`` is then the answer to "what serves this task".

Promoting a new champion records the one it replaces in the registered model's
``sutazai.previous_champion`` tag, and :meth:`TaskAliases.rollback` swaps them back.

Who holds which alias right now is read in one place, :func:`read_aliases`: the leaderboard,
``sutazai models list/show``, the nightly report and its DAG all call it, so they name the
same champion (the one serving uses), whichever step set it: the selection or the promotion
of a fine-tuned model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sutazai.embedded_db import sqlite_file
from sutazai.errors import NotFoundError
from sutazai.registry import open_registry
from sutazai.registry.mlflow_registry import TAG, ModelRegistry, repository_uri, version_tags
from sutazai.repository.manifest import Manifest

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from sutazai.config import Settings

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
    digest: str = ""

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.repository_version}"

    @property
    def label(self) -> str:
        """``model:version@engine x concurrency``, as a selection candidate is labelled."""
        return f"{self.model}:{self.repository_version}@{self.engine}x{self.concurrency}"


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
                "bench run' then 'sutazai bench select') first, or name a model: sutazai serve NAME"
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
        registry_version=str(version.version), digest=tags.get(f"{TAG}digest", ""),
    )


@dataclass(frozen=True)
class AliasHolder:
    """One alias and the repository version holding it: a task alias (``task`` and
    ``choice`` set: ``task.<task>@alias``) or one on a model's own registered model."""

    alias: str
    model: str
    repository_version: int
    task: str = ""
    choice: TaskChoice | None = None

    @property
    def ref(self) -> str:
        return f"{self.model}:{self.repository_version}"

    @property
    def name(self) -> str:
        """How views show it: ``text-generation@champion``, or ``gemma3-270m@champion``."""
        return f"{self.task or self.model}@{self.alias}"


@dataclass(frozen=True)
class AliasBook:
    """Every alias in the registry at one moment, with the questions views ask of it."""

    holders: list[AliasHolder] = field(default_factory=list)

    def choice(self, task: str, alias: str = CHAMPION) -> TaskChoice | None:
        return next((h.choice for h in self.holders if h.task == task and h.alias == alias),
                    None)

    def choices(self, alias: str = CHAMPION) -> dict[str, TaskChoice]:
        """Each task's holder of ``alias``, by task name."""
        return {h.task: h.choice for h in sorted(self.holders, key=lambda h: h.task)
                if h.choice is not None and h.alias == alias}

    def task_holders(self, task: str | None = None) -> list[AliasHolder]:
        return [h for h in self.holders if h.choice is not None and task in (None, h.task)]

    def names_of(self, model: str, repository_version: int) -> list[str]:
        """The aliases a repository version holds: task ones first, then its model's own."""
        return [h.name for h in sorted(self.holders, key=lambda h: (not h.task, h.name))
                if (h.model, h.repository_version) == (model, repository_version)]


def read_aliases(registry: ModelRegistry) -> AliasBook:
    """Who holds which alias in ``registry`` now: the one reading every view shares."""
    from mlflow.exceptions import MlflowException

    holders: list[AliasHolder] = []
    try:
        models, token = [], None
        while True:
            page = registry.client.search_registered_models(max_results=1000, page_token=token)
            models += list(page)
            token = page.token
            if not token:
                break
        for model in models:
            task = (model.tags.get(f"{TAG}task") or model.name.removeprefix("task.")
                    if model.name.startswith("task.") else "")
            for alias, number in sorted((model.aliases or {}).items()):
                version = registry.client.get_model_version(model.name, str(number))
                tags = version.tags
                if task:
                    if f"{TAG}model" not in tags or f"{TAG}repository_version" not in tags:
                        continue  # not one SutazAI made
                    choice = _choice(task, version)
                    holders.append(AliasHolder(alias=alias, model=choice.model,
                                               repository_version=choice.repository_version,
                                               task=task, choice=choice))
                elif f"{TAG}repository_version" in tags:
                    holders.append(AliasHolder(
                        alias=alias, model=model.name,
                        repository_version=int(tags[f"{TAG}repository_version"])))
    except (MlflowException, OSError) as exc:
        raise registry._fail("read the aliases", exc) from None
    return AliasBook(holders)


def current_aliases(settings: Settings) -> AliasBook:
    """:func:`read_aliases` of the settings' registry; an empty book when the embedded store
    does not exist yet (nothing registered, and a read should not create it)."""
    path = sqlite_file(settings.tracking_uri)
    if path is not None and not path.is_file():
        return AliasBook()
    return read_aliases(open_registry(settings))

