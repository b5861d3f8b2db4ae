"""How long-running library work reports progress without printing.

The library only talks to this small protocol; the CLI plugs in rich progress bars,
pipelines plug in nothing (or their own logger). That keeps ``print`` out of the core.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol


class ProgressTask(Protocol):
    """One bar: bytes downloaded, files hashed, ..."""

    def advance(self, amount: int) -> None: ...

    def reset(self, completed: int = 0, total: int | None = None) -> None: ...

    def close(self) -> None: ...


class Progress(Protocol):
    """Factory of progress tasks."""

    def task(self, description: str, total: int | None = None) -> ProgressTask: ...


class _NullTask:
    def advance(self, amount: int) -> None:
        return None

    def reset(self, completed: int = 0, total: int | None = None) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> _NullTask:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class NullProgress:
    """Reports nothing: the default for library callers and pipelines."""

    def task(self, description: str, total: int | None = None) -> ProgressTask:
        return _NullTask()


NULL_PROGRESS: Progress = NullProgress()
