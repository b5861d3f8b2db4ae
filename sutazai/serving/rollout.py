"""Follow the champion: a running ``sutazai serve`` switches to a newly promoted model.

Blue/green inside one process: the watcher polls the task's ``champion`` alias; when it
points somewhere new it starts the new engine next to the old one, waits for it to be
ready, sends it one real request, and only then asks the gateway to swap. Requests in
flight finish on the old engine, which is stopped after them. A new champion that fails
to start or to answer is logged and skipped (the old one keeps serving); the watcher
tries it again only when the alias moves again.

Serving many models (``sutazai serve --champions``), one watcher per task swaps that
task's model only; a champion not loaded at the time is just retargeted (``adopt``): its
next request loads the new one, no engine starts for nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

import httpx

from sutazai.config import Settings
from sutazai.errors import SutazAIError
from sutazai.registry.task_aliases import CHAMPION, TaskChoice
from sutazai.serving.engines import RunningEngine

LOG = logging.getLogger(__name__)
ChoiceKey = tuple[str, int, str]


def choice_key(choice: TaskChoice) -> ChoiceKey:
    return choice.model, choice.repository_version, choice.engine


def probe(engine: RunningEngine) -> None:
    """One real request straight to the engine: ready is not the same as answering."""
    body: dict[str, object]
    if "embeddings" in engine.capabilities:
        path, body = "/v1/embeddings", {"model": engine.model, "input": "ping"}
    else:
        path, body = "/v1/completions", {"model": engine.model, "prompt": "Hello",
                                         "max_tokens": 1, "temperature": 0}
    answer = httpx.post(f"{engine.base_url}{path}", json=body, timeout=120)
    if answer.status_code != 200:
        raise SutazAIError(f"the new engine answered {answer.status_code}: {answer.text[:200]}")


class SwapTarget(Protocol):
    """What serves the task's champion: a gateway, or one model of a multi-model router."""

    def swap_threadsafe(self, engine: RunningEngine, timeout_s: float = ...) -> None: ...


class ChampionWatcher:
    """Poll the champion alias of ``task`` every ``interval_s``; swap the gateway on change."""

    def __init__(self, settings: Settings, gateway: SwapTarget, task: str, current: ChoiceKey,
                 interval_s: float,
                 start: Callable[[Settings, TaskChoice], RunningEngine] | None = None,
                 adopt: Callable[[TaskChoice], bool] | None = None) -> None:
        """``adopt``: take a new champion without starting it (True: nothing was loaded,
        its first request will load it); False or None: start, probe, swap."""
        self.settings = settings
        self.gateway = gateway
        self.task = task
        self.current = current
        self.interval_s = interval_s
        self.skipped: ChoiceKey | None = None
        self._start = start or _start_choice
        self.adopt = adopt
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sutazai-champion-watcher",
                                       daemon=True)

    def start(self) -> ChampionWatcher:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # the watcher must outlive any one bad poll
                LOG.exception("champion watcher: the check failed; serving continues")

    def check(self) -> bool:
        """Swap to the champion if it changed and starts and answers; True when swapped."""
        from sutazai.registry import open_registry
        from sutazai.registry.task_aliases import TaskAliases

        choice = TaskAliases(open_registry(self.settings)).get(self.task, CHAMPION)
        if choice is None or choice_key(choice) in (self.current, self.skipped):
            return False
        from sutazai.security.audit import audit

        if self.adopt is not None and self.adopt(choice):
            audit(self.settings, "serve.swap", choice.ref,
                  before=":".join(map(str, self.current)),
                  after=":".join(map(str, choice_key(choice))))
            self.current = choice_key(choice)
            LOG.warning("champion of %s is now %s on %s; it loads on its first request",
                        self.task, choice.ref, choice.engine)
            return True
        LOG.warning("champion of %s is now %s on %s: starting it next to the current one",
                    self.task, choice.ref, choice.engine)
        try:
            engine = self._start(self.settings, choice)
        except SutazAIError as exc:
            LOG.error("the new champion %s did not start (%s); still serving the old one",
                      choice.ref, exc)
            self.skipped = choice_key(choice)
            return False
        try:
            probe(engine)
        except (httpx.HTTPError, SutazAIError) as exc:
            LOG.error("the new champion %s did not answer (%s); still serving the old one",
                      choice.ref, exc)
            engine.stop()
            self.skipped = choice_key(choice)
            return False
        self.gateway.swap_threadsafe(engine)
        audit(self.settings, "serve.swap", choice.ref,
              before=":".join(map(str, self.current)), after=":".join(map(str, choice_key(choice))))
        self.current = choice_key(choice)
        LOG.warning("now serving %s on %s", choice.ref, choice.engine)
        return True


def _start_choice(settings: Settings, choice: TaskChoice) -> RunningEngine:
    from sutazai.repository import open_repository
    from sutazai.serving.engines import start_engine

    manifest = open_repository(settings).get(choice.model, choice.repository_version)
    return start_engine(settings, manifest, choice.engine)
