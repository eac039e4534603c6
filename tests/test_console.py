"""Progress and log output: live only on a terminal of its own, plain readable lines otherwise."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from pneumo.utils import console

PLAIN = re.compile(
    r"^(\[rank (\d)\] )?fold (\d) epoch (\d+)/(\d+) step (\d+)/(\d+) loss \d+\.\d{4} [\d.]+ img/s ETA \d+:\d\d:\d\d$"
)


@pytest.fixture
def screen(monkeypatch) -> io.StringIO:
    """The console writing to a buffer that claims to be a terminal."""
    buffer = io.StringIO()
    monkeypatch.setattr(console, "console", Console(file=buffer, force_terminal=True, width=120, highlight=False))
    yield buffer
    console.set_process(0, 1)


def _train(steps: int) -> None:
    with console.StepProgress("fold 3 epoch 2/10", steps, 0, 32, lambda: 0.25) as bar:
        for _ in bar.track(range(steps)):
            pass


def test_one_process_on_a_terminal_gets_a_live_bar_with_loss_and_throughput(screen):
    console.set_process(0, 1)
    _train(3)
    out = screen.getvalue()
    assert "\x1b[" in out
    assert "fold 3 epoch 2/10" in out and "loss 0.2500" in out and "img/s" in out and "3/3" in out


def test_several_processes_on_one_terminal_write_plain_lines_naming_rank_and_fold(screen, monkeypatch):
    monkeypatch.setenv("PNEUMO_PROGRESS_EVERY", "0")
    console.set_process(1, 2)
    _train(3)
    out = screen.getvalue()
    assert not re.search(r"\x1b\[[0-9;?]*[A-Za-ln-z]", out)  # colours at most: no cursor moves, no redraws
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()
    assert len(lines) == 3
    for step, line in enumerate(lines, 1):
        m = PLAIN.match(line)
        assert m and m.group(2) == "1" and m.group(3) == "3" and int(m.group(6)) == step


def test_plain_progress_lines_come_at_most_every_interval(screen, monkeypatch):
    monkeypatch.setenv("PNEUMO_PROGRESS_EVERY", "3600")
    console.set_process(0, 2)
    _train(50)
    assert screen.getvalue() == ""


def test_fold_parallel_launch_prints_readable_progress_lines_per_rank_and_fold(run_two):
    out = run_two[1].stdout
    assert "\x1b[" not in out
    lines = [line for line in out.splitlines() if " step " in line]
    seen = set()
    for line in lines:
        m = PLAIN.match(line)
        assert m, line
        seen.add((int(m.group(3)), int(m.group(2))))
    # Folds 0-3 alone on process fold mod 2, fold 4 data-parallel on both (each prints its progress).
    assert seen == {(0, 0), (1, 1), (2, 0), (3, 1), (4, 0), (4, 1)}


def test_a_training_log_written_to_a_file_is_plain_text(run_one):
    log = run_one[1].stdout
    assert "\x1b[" not in log
    assert re.search(r"^fold 0 epoch 1/2 step 1/\d+ loss ", log, re.M)
    assert re.search(r"^fold 4 epoch 2/2: train loss .* img/s$", log, re.M)
