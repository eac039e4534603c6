"""Fold claims: a fold is trained by the launch holding its lock, and the lock dies with its holder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from pneumo.training.claims import FoldClaims
from pneumo.training.preempt import slurm_job_to_requeue as slurm_job
from pneumo.utils.errors import PneumoError

# Another process: claim folds, say so, then hold them until killed.
HOLDER = """
import sys, time
from pathlib import Path
from pneumo.training.claims import FoldClaims
claims = FoldClaims(Path(sys.argv[1]))
for fold in map(int, sys.argv[2:]):
    assert claims.claim(fold) is None
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Start a process holding claims on the given folds of tmp_path/run; killed at the end."""
    procs = []

    def start(*folds: int, env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(tmp_path / "run"), *map(str, folds)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_fold_held_by_another_process_cannot_be_claimed_and_names_its_holder(tmp_path, holder):
    proc = holder(1)
    claims = FoldClaims(tmp_path / "run")
    found = claims.claim(1)
    assert found["pid"] == proc.pid
    assert claims.claim(0) is None  # other folds are free


def test_a_claim_dies_with_its_holder(tmp_path, holder):
    proc = holder(2)
    claims = FoldClaims(tmp_path / "run")
    assert claims.claim(2)["pid"] == proc.pid
    proc.kill()
    proc.wait()
    assert claims.claim(2) is None


def test_pending_folds_skip_finished_and_claimed_ones(tmp_path, holder):
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    (run / "fold0" / "result.json").write_text(json.dumps({"fold": 0, "status": "done"}))
    holder(2)
    claims = FoldClaims(run)
    assert claims.claim_pending([0, 1, 2, 3], lambda: False) == [1, 3]
    assert set(claims.held) == {1, 3}


def test_a_fold_held_by_an_earlier_instance_of_the_same_job_is_waited_for(tmp_path, holder, monkeypatch):
    env = {**_env_without_slurm(), "SLURM_JOB_ID": "77"}
    proc = holder(0, env=env)
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # this launch is the requeued job 77
    claims = FoldClaims(tmp_path / "run")
    started = time.monotonic()
    killer = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(1.5); os.kill({proc.pid}, 9)"])
    assert claims.claim_pending([0], lambda: False, poll_s=0.1) == [0]
    assert time.monotonic() - started >= 1.0
    killer.wait()


def test_a_fold_held_by_another_job_is_not_waited_for(tmp_path, holder, monkeypatch):
    holder(0, env={**_env_without_slurm(), "SLURM_JOB_ID": "77"})
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    assert FoldClaims(tmp_path / "run").claim_pending([0], lambda: False) == []


def test_array_tasks_are_told_apart_by_their_task_id(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "101")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "100")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert slurm_job() == "100_1"


def test_a_fold_abandoned_by_another_launch_is_an_error_naming_it(tmp_path, holder):
    proc = holder(3)
    claims = FoldClaims(tmp_path / "run")
    claims.check_not_abandoned([3])  # still held: fine
    proc.kill()
    proc.wait()
    with pytest.raises(PneumoError, match="fold 3 was left unfinished"):
        claims.check_not_abandoned([3])


def _env_without_slurm() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
