"""Rich progress bars behind the library's Progress protocol."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class RichTask:
    def __init__(self, bars: Progress, task_id: TaskID) -> None:
        self.bars, self.task_id = bars, task_id

    def advance(self, amount: int) -> None:
        self.bars.advance(self.task_id, amount)

    def reset(self, completed: int = 0, total: int | None = None) -> None:
        self.bars.update(self.task_id, completed=completed, total=total)

    def close(self) -> None:
        self.bars.remove_task(self.task_id)


class RichProgress:
    """Byte-oriented bars (size, rate, ETA) on stderr; finished bars disappear."""

    def __init__(self, console: Console) -> None:
        self.bars = Progress(
            TextColumn("[bold blue]{task.description}", justify="left"),
            BarColumn(bar_width=None),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def task(self, description: str, total: int | None = None) -> RichTask:
        label = description if len(description) <= 48 else description[:47] + "…"
        return RichTask(self.bars, self.bars.add_task(label, total=total))
