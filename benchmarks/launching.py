"""Launch train.py as a user would, for the benchmarks that compare whole runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(processes: int, args: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run train.py (under `accelerate launch`, i.e. torchrun, when processes > 1); its wall seconds.

    Output goes to `log`, `env` is added to the environment; a failed run ends the benchmark naming the log.
    """
    cmd = [sys.executable, "train.py", *args]
    if processes > 1:
        accelerate = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
        accelerate += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        cmd = [sys.executable, *accelerate, "--main_process_port", str(29500 + os.getpid() % 1000), "train.py", *args]
    started = time.monotonic()
    with open(log, "w") as f:
        full = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=full)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.monotonic() - started
