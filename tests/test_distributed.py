"""Launch detection and per-process CPU threads, under the launchers users really run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, cli_env, launch_command

PROBE = (
    "import json, os\n"
    "from pneumo.utils.processes import cpu_share, single_process_cpu_launch\n"
    "print('PROBE', json.dumps({'rank': os.environ.get('RANK'), 'single': single_process_cpu_launch(),"
    " 'share': cpu_share()}), flush=True)\n"
)


def _probe(tmp_path, cmd_head: list[str]) -> list[dict]:
    script = tmp_path / "probe.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + PROBE)
    proc = subprocess.run(
        [*cmd_head, str(script)], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=120, check=True
    )
    return [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("PROBE ")]


def test_accelerate_cpu_launcher_starts_one_process_and_pneumo_notices(tmp_path):
    accel = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2"]
    accel += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    seen = _probe(tmp_path, accel)
    assert len(seen) == 1 and seen[0]["rank"] is None  # accelerate #2741: one process, not two
    assert seen[0]["single"] is True


def test_two_process_launch_forms_ranks_and_splits_the_cpus(tmp_path):
    seen = _probe(tmp_path, launch_command([], processes=2))
    assert sorted(p["rank"] for p in seen) == ["0", "1"]
    assert not any(p["single"] for p in seen)
    assert all(p["share"] == max(1, len(os.sched_getaffinity(0)) // 2) for p in seen)


def test_plain_python_is_not_mistaken_for_the_cpu_launcher(tmp_path):
    (seen,) = _probe(tmp_path, [sys.executable])
    assert seen["single"] is False and seen["rank"] is None


WARN_PROBE = (
    "import sys\n"
    "import pneumo.utils.processes as d\n"
    "d.cpu_has_native_bf16 = lambda: sys.argv[1] == 'native'\n"
    "d.make_accelerator(sys.argv[2])\n"
)


def _accelerator_warnings(tmp_path, cpu: str, mixed_precision: str) -> str:
    script = tmp_path / "warn.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + WARN_PROBE)
    env = cli_env({"CUDA_VISIBLE_DEVICES": ""})
    proc = subprocess.run(
        [sys.executable, str(script), cpu, mixed_precision], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_bf16_on_a_cpu_that_emulates_it_is_a_warning_naming_the_fix(tmp_path):
    out = _accelerator_warnings(tmp_path, "emulated", "bf16")
    assert "bf16 autocast on a CPU without AVX-512 BF16 or AMX" in out and "--mixed-precision no" in out


def test_bf16_on_a_native_cpu_and_float32_anywhere_are_not_warned_about(tmp_path):
    assert "WARNING" not in _accelerator_warnings(tmp_path, "native", "bf16")
    assert "WARNING" not in _accelerator_warnings(tmp_path, "emulated", "no")


def test_more_processes_than_gpus_on_a_node_count_as_sharing_gpus(monkeypatch):
    import torch

    from pneumo.utils.processes import gpus_shared

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "5")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "5")
    assert gpus_shared()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert not gpus_shared()  # one GPU each: NCCL as usual
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert not gpus_shared()  # CPU processes: gloo anyway


def test_fold_groups_use_nccl_between_distinct_gpus_and_gloo_on_the_cpu():
    import torch

    from pneumo.training.distributed import group_backend

    assert group_backend(torch.device("cpu"), 1)((0,)) == "gloo"
    if torch.distributed.is_nccl_available():
        assert group_backend(torch.device("cuda", 0), 1)((0,)) == "nccl"


FAULT_PROBE = (
    "import json, resource, sys, torch\n"
    "from pneumo.utils.processes import retain_freed_memory\n"
    "torch.set_num_threads(1)\n"
    "retained = retain_freed_memory() if sys.argv[1] == 'retain' else None\n"
    "nn = torch.nn\n"
    "m = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),\n"
    "    nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 2))\n"
    "x = torch.randn(16, 1, 64, 64)\n"
    "for _ in range(3):\n"
    "    m(x).sum().backward()\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "for _ in range(10):\n"
    "    m(x).sum().backward()\n"
    "faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
    "print('PROBE', json.dumps({'retained': retained, 'faults': faults}), flush=True)\n"
)


def _step_faults(tmp_path, mode: str, env: dict[str, str] | None = None) -> dict:
    script = tmp_path / "faults.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + FAULT_PROBE)
    cmd = [sys.executable, str(script), mode]
    proc = subprocess.run(cmd, env=cli_env(env or {}), capture_output=True, text=True, timeout=120, check=True)
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE ")]
    return json.loads(line.split(" ", 1)[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_retained_memory_spares_a_cpu_step_its_page_faults(tmp_path):
    default = _step_faults(tmp_path, "default")
    retained = _step_faults(tmp_path, "retain")
    assert retained["retained"] is True
    # glibc's default mmaps each freed activation again: ~10^5 faults in these 10 steps, ~0 kept
    assert default["faults"] > 20_000 and retained["faults"] < default["faults"] / 10


def test_a_users_malloc_settings_are_left_alone(tmp_path):
    assert _step_faults(tmp_path, "retain", {"MALLOC_TRIM_THRESHOLD_": "131072"})["retained"] is False
