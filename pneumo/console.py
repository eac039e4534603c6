"""Console output: rich, with the process rank in front when several processes share a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

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
