"""Console output: rich, with the process rank in front when several processes share a terminal."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
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


def set_process(rank: int, world: int) -> None:
    """Prefix every line with the rank when more than one process runs."""
    global _prefix
    _prefix = f"[rank {rank}] " if world > 1 else ""


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
    """A rich progress display (live on a terminal, silent in log files)."""
    return Progress(
        TextColumn(f"{_prefix}{{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def advancing(items: Iterable[T], bar: Progress, task: TaskID) -> Iterator[T]:
    """Yield `items`, advancing `task` by one after each has been used."""
    for item in items:
        yield item
        bar.advance(task)
