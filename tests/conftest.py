"""Shared fixtures: a tiny synthetic dataset and real train.py runs (1 and 2 processes) on it."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pneumo.data.synthetic import generate

ROOT = Path(__file__).resolve().parent.parent
TINY_COUNTS = {"train": (12, 24), "val": (2, 2), "test": (6, 6)}
# Small and fast: a 0.5M-parameter timm ResNet on 32 px images, 2 epochs, bf16 on the CPU.
# Levers that draw from torch's default generator inside the model (besides dropout): the
# 1-process and 2-process runs train with them, so their bitwise equality covers these draws.
RNG_LEVERS = ("--mixstyle", "0.5", "--drop-path", "0.1")
TRAIN_ARGS = [
    "--model",
    "test_resnet",
    "--image-size",
    "32",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--mixed-precision",
    "bf16",
    "--threads",
    "1",
    "--workers",
    "0",
    "--saliency-images",
    "0",
    "--no-report",
]


# The longest test files go first: `make test` hands pytest-xdist workers a file at a time in
# collection order (--no-loadscope-reorder), so no worker ends on one of them alone.
SLOWEST_FILES = ("test_resume.py", "test_demo.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Collect the slowest files first, keeping the order within and among the others."""
    items.sort(key=lambda item: item.path.name not in SLOWEST_FILES)


def launch_command(args: list[str], processes: int = 1) -> list[str]:
    """`python SCRIPT ARGS`, or a real `accelerate launch` of it with N processes on this machine."""
    if processes == 1:
        return [sys.executable, *args]
    # Accelerate's `--cpu` launcher starts one process without mpirun; torchrun it is.
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(29500 + os.getpid() % 1000),
        *args,
    ]


def cli_env(env: dict | None = None) -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}


def run_cli(
    args: list[str],
    *,
    processes: int = 1,
    env: dict | None = None,
    check: bool = True,
    timeout: float = 300,
    log: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run a CLI of the repo as a user would: `python SCRIPT` or `accelerate launch` with N processes.

    With `log`, stdout and stderr go to that file (as in a batch job) and are read back as stdout.
    """
    cmd = launch_command(args, processes)
    if log is None:
        proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(env), capture_output=True, text=True, timeout=timeout)
    else:
        with open(log, "w") as f:
            proc = subprocess.run(cmd, cwd=ROOT, env=cli_env(env), stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
        proc.stdout, proc.stderr = log.read_text(), ""
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "chest_xray"
    generate(root, counts=TINY_COUNTS, seed=3)
    return root


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def train_args(data: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    """train.py's command line for the tiny test runs (later flags in `extra` win)."""
    return [
        "train.py",
        "--data-dir",
        str(data),
        "--output-dir",
        str(out),
        "--cache-dir",
        str(cache),
        *TRAIN_ARGS,
        *extra,
    ]


def train(
    data: Path,
    out: Path,
    cache: Path,
    *extra: str,
    processes: int = 1,
    check: bool = True,
    env: dict | None = None,
    log: Path | None = None,
) -> subprocess.CompletedProcess:
    return run_cli(train_args(data, out, cache, *extra), processes=processes, check=check, env=env, log=log)


@pytest.fixture(scope="session")
def run_two(tiny_data, cache_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A real 2-process fold-parallel launch, auditing the samples each fold trained on, with its
    report and a progress line after every step."""
    out = tmp_path_factory.mktemp("runs") / "two"
    env = {"PNEUMO_PROGRESS_EVERY": "0"}
    extra = ("--audit-samples", "--report", *RNG_LEVERS)
    return out, train(tiny_data, out, cache_dir, *extra, processes=2, env=env)


@pytest.fixture(scope="session")
def run_one(tiny_data, cache_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The same run in one process (all folds in turn), keeping each fold's resume state, its output
    written to a file as a batch job's."""
    out = tmp_path_factory.mktemp("runs") / "one"
    log = out.parent / "one.log"
    env = {"PNEUMO_PROGRESS_EVERY": "0", "FORCE_COLOR": "", "TTY_COMPATIBLE": ""}  # rich's own detection
    extra = ("--audit-samples", "--keep-state", "--saliency-images", "2", *RNG_LEVERS)
    return out, train(tiny_data, out, cache_dir, *extra, env=env, log=log)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def load_script(path: Path, name: str) -> ModuleType:
    """A script (train.py, a benchmark, a study's harness) imported as a module, to call its functions."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
