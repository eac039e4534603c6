"""Kills, preemption signals and resumes: a resumed run ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import ROOT, cli_env, launch_command, read_jsonl, run_cli, train_args

from pneumo.data.synthetic import generate

# Long enough epochs (~3 s) that a kill timed at a quarter of an epoch lands mid-epoch; float32,
# since bf16 autocast is emulated (10x slower) on CPUs without AVX-512 BF16.
RESUME_ARGS = ("--model", "resnet18", "--image-size", "48", "--folds", "2", "--epochs", "2", "--mixed-precision", "no")
EXIT_STOPPED = 75
TIMING_KEYS = {"wall_seconds", "seconds", "finished_at", "train_seconds", "images_per_second", "processes"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume-data") / "chest_xray"
    generate(root, counts={"train": (40, 120), "test": (6, 6)}, seed=5)
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume-cache")


@pytest.fixture(scope="module")
def reference(data, cache, tmp_path_factory) -> Path:
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("resume-runs") / "reference"
    run_cli(train_args(data, out, cache, *RESUME_ARGS), processes=2)
    return out


@pytest.fixture
def fake_slurm(tmp_path) -> tuple[dict, Path]:
    """SLURM_JOB_ID set and an `scontrol` on PATH that records its arguments."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    return {"SLURM_JOB_ID": "4242", "PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def _strip_timing(obj):
    if isinstance(obj, dict):
        return {k: _strip_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_strip_timing(v) for v in obj]
    return obj


def _assert_same_run(run: Path, reference: Path) -> None:
    for k in range(2):
        fold, ref = run / f"fold{k}", reference / f"fold{k}"
        assert (fold / "best.safetensors").read_bytes() == (ref / "best.safetensors").read_bytes()
        assert not (fold / "state.pt").exists()  # done: its resume state is gone
        assert _strip_timing(read_jsonl(fold / "metrics.jsonl")) == _strip_timing(read_jsonl(ref / "metrics.jsonl"))
    results = json.loads((run / "results.json").read_text())
    assert _strip_timing(results) == _strip_timing(json.loads((reference / "results.json").read_text()))
    assert (run / "oof.csv").read_text() == (reference / "oof.csv").read_text()


def _wait_for(what: str, done: Callable[[], bool], proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, f"run ended before {what}:\n{proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.02)


def _mid_epoch_of_epoch_two(fold_dir: Path, proc: subprocess.Popen) -> None:
    """Return early in epoch 2, with epoch 1's state on disk: a quarter of epoch 1's time after its
    record was logged (the state is written in the background from then on, overlapping epoch 2).

    Epoch 1 pays one-off warm-up costs, so epoch 2 can be much shorter: half of epoch 1's
    time sometimes reached past the end of epoch 2 on a loaded 2-core machine.
    """
    metrics = fold_dir / "metrics.jsonl"
    _wait_for("epoch 1's record", lambda: metrics.exists() and len(read_jsonl(metrics)) > 0, proc)
    logged = time.monotonic()
    epoch_seconds = read_jsonl(metrics)[0]["seconds"]
    _wait_for("epoch 1's state", (fold_dir / "state.pt").exists, proc)
    time.sleep(max(0.0, logged + epoch_seconds / 4 - time.monotonic()))


def _workers(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the worker processes `accelerate launch` started."""
    children = Path(f"/proc/{launcher_pid}/task/{launcher_pid}/children").read_text().split()
    ranks = {}
    for pid in map(int, children):
        env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
        if "RANK" in env:
            ranks[int(env["RANK"])] = pid
    return ranks


def test_sigkill_of_one_process_mid_epoch_then_resume_equals_uninterrupted(
    data, cache, reference, tmp_path, fake_slurm
):
    env, scontrol_calls = fake_slurm
    out = tmp_path / "killed"
    cmd = launch_command(train_args(data, out, cache, *RESUME_ARGS), processes=2)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=cli_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _mid_epoch_of_epoch_two(out / "fold1", proc)
        os.kill(_workers(proc.pid)[1], signal.SIGKILL)
        log = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert not (out / "results.json").exists()
    # The launcher stopped rank 0 with SIGTERM: it saved its fold mid-epoch and did not requeue.
    assert "received SIGTERM" in log
    assert not scontrol_calls.exists()
    assert len(read_jsonl(out / "fold1" / "metrics.jsonl")) == 1

    resumed = run_cli(train_args(data, out, cache, *RESUME_ARGS), processes=2)
    assert "fold 1: resuming at epoch 2" in resumed.stdout
    _assert_same_run(out, reference)


def test_sigusr1_under_slurm_saves_mid_epoch_requeues_and_resumes_exactly(data, cache, reference, tmp_path, fake_slurm):
    env, scontrol_calls = fake_slurm
    out = tmp_path / "preempted"
    cmd = launch_command(train_args(data, out, cache, *RESUME_ARGS))
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=cli_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _mid_epoch_of_epoch_two(out / "fold0", proc)
        proc.send_signal(signal.SIGUSR1)
        log = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode == EXIT_STOPPED, log[-3000:]
    assert "received SIGUSR1" in log
    assert scontrol_calls.read_text().split() == ["requeue", "4242"]
    assert not (out / "fold1" / "metrics.jsonl").exists()  # fold 1 is claimed, not started
    match = [line for line in log.splitlines() if "state saved" in line]
    assert match, log[-3000:]

    resumed = run_cli(train_args(data, out, cache, *RESUME_ARGS), env=env)
    line = next(s for s in resumed.stdout.splitlines() if "fold 0: resuming" in s)
    step = int(line.rsplit("step ", 1)[1])
    assert "epoch 2" in line and step > 0  # stopped in the middle of epoch 2, not at its start
    _assert_same_run(out, reference)
    assert scontrol_calls.read_text().split() == ["requeue", "4242"]  # a finished run asks nothing


# One fold on two processes: the plan trains it data-parallel on both.
GROUPED = ("--train-folds", "0")


@pytest.fixture(scope="module")
def grouped_reference(data, cache, tmp_path_factory) -> Path:
    """Fold 0 on a group of two processes, never interrupted."""
    out = tmp_path_factory.mktemp("resume-runs") / "grouped-reference"
    run_cli(train_args(data, out, cache, *RESUME_ARGS, *GROUPED), processes=2)
    return out


def _assert_same_fold(run: Path, reference: Path, fold: int) -> None:
    a, b = run / f"fold{fold}", reference / f"fold{fold}"
    assert (a / "best.safetensors").read_bytes() == (b / "best.safetensors").read_bytes()
    assert _strip_timing(read_jsonl(a / "metrics.jsonl")) == _strip_timing(read_jsonl(b / "metrics.jsonl"))
    assert (run / "oof.csv").read_text() == (reference / "oof.csv").read_text()


@pytest.mark.parametrize("how", ["sigkill-one-member", "sigusr1-both"])
def test_a_grouped_fold_interrupted_mid_epoch_resumes_to_the_uninterrupted_result(
    data, cache, grouped_reference, tmp_path, how
):
    out = tmp_path / how
    cmd = launch_command(train_args(data, out, cache, *RESUME_ARGS, *GROUPED), processes=2)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _mid_epoch_of_epoch_two(out / "fold0", proc)
        workers = _workers(proc.pid)
        if how == "sigkill-one-member":
            os.kill(workers[1], signal.SIGKILL)
        else:
            for pid in workers.values():
                os.kill(pid, signal.SIGUSR1)
        log = proc.communicate(timeout=120)[0]
    finally:
        proc.kill()
    assert proc.returncode != 0 and not (out / "results.json").exists()
    if how == "sigusr1-both":  # both members stop after the same step; the leader saved it mid-epoch
        assert log.count("fold 0: stopped; state saved") == 2, log[-3000:]
    state = torch.load(out / "fold0" / "state.pt", weights_only=True)
    for part in ("model", "ema"):  # the weights saved alone, not the group's whole shared memory around them
        storages = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes() for v in state[part].values()}
        assert sum(storages.values()) == sum(v.nbytes for v in state[part].values()), part

    resumed = run_cli(train_args(data, out, cache, *RESUME_ARGS, *GROUPED), processes=2)
    line = next(s for s in resumed.stdout.splitlines() if "fold 0: resuming" in s)
    assert "epoch 2" in line
    assert "fold 0: gradients averaged over 2 processes through shared memory" in resumed.stdout
    if how == "sigusr1-both":
        assert int(line.rsplit("step ", 1)[1]) > 0
    _assert_same_fold(out, grouped_reference, 0)


def test_finished_folds_are_skipped_on_resume(reference, data, cache):
    before = {p: p.stat().st_mtime_ns for p in reference.glob("fold*/best.safetensors")}
    proc = run_cli(train_args(data, reference, cache, *RESUME_ARGS, "--resume"))
    assert proc.stdout.count("already done, skipping") == 2
    assert {p: p.stat().st_mtime_ns for p in reference.glob("fold*/best.safetensors")} == before


def test_a_different_config_is_refused_naming_the_keys(reference, data, cache):
    before = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    proc = run_cli(train_args(data, reference, cache, *RESUME_ARGS, "--lr", "0.01", "--epochs", "4"), check=False)
    assert proc.returncode == 2
    assert "epochs: 2 -> 4" in proc.stderr and "lr: 0.001 -> 0.01" in proc.stderr
    assert "--overwrite" in proc.stderr
    assert {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()} == before  # the run untouched


FAKE_SRUN = """#!/bin/bash
# Test double for srun: one task per "node" of SLURM_NNODES, all on this machine, with srun's
# ending rules: once the first task has ended, the others are killed (SIGTERM) after --wait
# seconds (default: this fake cluster's WaitTime, 1 s; 0 waits for ever); with
# --kill-on-bad-exit=1, a task that fails has them killed at once. Unknown options are refused.
wait_s=1 kill_on_bad_exit=0
while [[ $1 == --* ]]; do
  case $1 in
    --wait=*) wait_s=${1#*=} ;;
    --kill-on-bad-exit=*) kill_on_bad_exit=${1#*=} ;;
    *) echo "fake srun: unknown option $1" >&2; exit 64 ;;
  esac
  shift
done
declare -A running
for ((node = 0; node < ${SLURM_NNODES:-1}; node++)); do SLURM_NODEID=$node "$@" & running[$!]=1; done
status=0 deadline=
while ((${#running[@]})); do
  for pid in "${!running[@]}"; do
    kill -0 "$pid" 2>/dev/null && continue
    wait "$pid"; code=$?
    unset "running[$pid]"
    ((code)) && status=$code
    if ((code && kill_on_bad_exit)); then deadline=$SECONDS; fi
    if [[ -z $deadline ]] && ((wait_s > 0)); then deadline=$((SECONDS + wait_s)); fi
  done
  if [[ -n $deadline ]] && ((SECONDS >= deadline)) && ((${#running[@]})); then
    echo "fake srun: killing the tasks still running" >&2
    kill -TERM "${!running[@]}" 2>/dev/null
    deadline=$((SECONDS + 3600))
  fi
  sleep 0.1
done
exit $status
"""


def _launchers(root_pid: int) -> list[int]:
    """The `accelerate launch` processes below `root_pid` (what SLURM signals: the step's tasks)."""
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if argv[1:3] == [b"-m", b"accelerate.commands.launch"]:
            found.append(pid)
        else:
            todo.extend(map(int, children))
    return found


def _two_node_cluster(env: dict, scontrol_calls: Path, venv: str) -> dict:
    """The environment of a 2-node SLURM job on this machine: fake srun and scontrol on PATH."""
    bin_dir = Path(env["PATH"].split(":", 1)[0])
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\nif [ "$1" = show ]; then echo 127.0.0.1; echo 127.0.0.2; else echo "$@" >> {scontrol_calls}; fi\n'
    )
    return {
        **env,
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "PNEUMO_NPROC": "1",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "PNEUMO_VENV": venv,
    }


def test_slurm_script_lets_the_other_nodes_finish_when_one_node_is_done_early(tmp_path, fake_slurm):
    # Each node's task stands in for its `accelerate launch`: node 1's folds are done at once,
    # node 0 trains for 3 s more (longer than the cluster's WaitTime) and then writes its result.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text(f'export PATH="{venv / "bin"}:$PATH"\n')
    done = tmp_path / "node0-done"
    (venv / "bin" / "python").write_text(f'#!/bin/sh\n[ "$SLURM_NODEID" = 0 ] && sleep 3 && touch {done}\nexit 0\n')
    (venv / "bin" / "python").chmod(0o755)
    env = _two_node_cluster(*fake_slurm, str(venv))
    job = subprocess.run(
        ["bash", "slurm/train.sbatch"], cwd=ROOT, env=cli_env(env), capture_output=True, text=True, timeout=60
    )
    assert job.returncode == 0, job.stderr
    assert "killing" not in job.stderr
    assert done.exists()


def test_slurm_script_on_two_nodes_survives_a_time_limit_signal_and_resumes_exactly(
    data, cache, reference, tmp_path, fake_slurm
):
    env, scontrol_calls = fake_slurm
    env = _two_node_cluster(env, scontrol_calls, sys.prefix)
    out = tmp_path / "slurm-run"
    cmd = ["bash", "slurm/train.sbatch", *train_args(data, out, cache, *RESUME_ARGS)[1:]]
    job = subprocess.Popen(cmd, cwd=ROOT, env=cli_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _mid_epoch_of_epoch_two(out / "fold1", job)
        launchers = _launchers(job.pid)
        assert len(launchers) == 2  # one per node
        for pid in launchers:
            os.kill(pid, signal.SIGUSR1)
        log = job.communicate(timeout=180)[0]
    finally:
        job.kill()
    assert "2 node(s) x 1 process(es)" in log
    assert log.count("received SIGUSR1") == 2, log[-4000:]
    assert scontrol_calls.read_text().split() == ["requeue", "4242"]  # rank 0 only
    assert not (out / "results.json").exists()

    requeued = subprocess.run(
        cmd, cwd=ROOT, env=cli_env({**env, "SLURM_RESTART_COUNT": "1"}), capture_output=True, text=True, timeout=300
    )
    assert requeued.returncode == 0, requeued.stdout[-4000:]
    assert "fold 1: resuming at epoch 2" in requeued.stdout
    _assert_same_run(out, reference)
