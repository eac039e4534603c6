"""Console output: rich, with the process rank in front when several processes share a terminal.

Live progress bars are drawn only on a terminal that this process has to itself (one
process); otherwise progress is a plain line every PNEUMO_PROGRESS_EVERY seconds (default
30), so several processes, SLURM logs and files stay readable and free of escape codes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from types import TracebackType
from typing import TypeVar

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

console = Console(highlight=False)
if not console.is_terminal:
    # Log files (SLURM, CI) get long lines instead of 80-column wrapping.
    console = Console(highlight=False, width=160)
_prefix = ""
_world = 1


def set_process(rank: int, world: int) -> None:
    """Prefix every line with the rank when more than one process runs."""
    global _prefix, _world
    _prefix = f"[rank {rank}] " if world > 1 else ""
    _world = world


def live() -> bool:
    """Whether live displays may redraw the screen: a terminal, and no other process writing to it."""
    return console.is_terminal and _world == 1


def progress_every() -> float:
    """Seconds between plain progress lines ($PNEUMO_PROGRESS_EVERY, default 30)."""
    return float(os.environ.get("PNEUMO_PROGRESS_EVERY", "30"))


def log(message: str, style: str | None = None) -> None:
    console.print(f"{_prefix}{message}", style=style, markup=False)


def warn(message: str) -> None:
    log(f"WARNING: {message}", style="bold yellow")


def render_text(renderable: RenderableType) -> str:
    """What the console would print for `renderable`, as plain text (for summary files)."""
    with console.capture() as captured:
        console.print(renderable)
    return captured.get()


def progress() -> Progress:
    """A rich progress display (live on a terminal of its own, silent otherwise)."""
    return Progress(
        TextColumn(f"{_prefix}{{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not live(),
    )


def _duration(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class StepProgress:
    """Progress of a loop of steps: step, running loss, images/s and ETA.

    A live bar when `live()`, else one plain line every `progress_every()` seconds, each
    saying what runs (e.g. "fold 3 epoch 2/10") after the process's rank prefix.
    """

    def __init__(
        self, description: str, total: int, done: int, images_per_step: int, loss: Callable[[], float]
    ) -> None:
        self.description = description
        self.total, self.done, self.images_per_step, self.loss = total, done, images_per_step, loss
        self._first = done
        self._started = self._last_line = self._last_step = time.monotonic()
        self._bar: Progress | None = None
        if live():
            self._bar = Progress(
                TextColumn(description),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[rate]} img/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._task = self._bar.add_task(description, total=total, completed=done, loss="-", rate="-")

    def __enter__(self) -> StepProgress:
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None):
        if self._bar:
            self._bar.stop()

    def rate(self) -> float:
        """Images per second over the steps done since this display started, up to the last step."""
        elapsed = self._last_step - self._started
        return (self.done - self._first) * self.images_per_step / elapsed if elapsed > 0 else 0.0

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """Yield `items`, counting a step after each has been used."""
        for item in items:
            yield item
            self.step()

    def step(self) -> None:
        self.done += 1
        self._last_step = time.monotonic()
        if self._bar:
            self._bar.update(self._task, completed=self.done, loss=f"{self.loss():.4f}", rate=f"{self.rate():.1f}")
            return
        now = self._last_step
        if now - self._last_line < progress_every():
            return
        self._last_line = now
        per_step = (now - self._started) / max(1, self.done - self._first)
        log(
            f"{self.description} step {self.done}/{self.total} loss {self.loss():.4f} "
            f"{self.rate():.1f} img/s ETA {_duration(per_step * (self.total - self.done))}"
        )
