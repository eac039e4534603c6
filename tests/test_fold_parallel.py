"""Folds across launches and process groups, end to end: groups of processes, two launches into one
run, and a SLURM-style fold array (one launch per fold, then `evaluate.py --ensemble`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import yaml
from conftest import RNG_LEVERS, ROOT, cli_env, launch_command, read_jsonl, run_cli, train, train_args

N_FOLDS = 5


def test_four_processes_train_two_folds_each_on_a_pair_with_the_one_process_schedule(tiny_data, cache_dir, tmp_path):
    one, four = tmp_path / "one", tmp_path / "four"
    train(tiny_data, one, cache_dir, "--folds", "2", "--epochs", "1", "--audit-samples")
    proc = train(tiny_data, four, cache_dir, "--folds", "2", "--epochs", "1", "--audit-samples", processes=4)
    plan = json.loads((four / "plan.json").read_text())
    assert [[(g["fold"], g["ranks"]) for g in r] for r in plan["rounds"]] == [[(0, [0, 1]), (1, [2, 3])]]
    assert sorted(re.findall(r"\[rank (\d)\] fold (\d): training on processes", proc.stdout)) == [
        ("0", "0"),
        ("1", "0"),
        ("2", "1"),
        ("3", "1"),
    ]
    for k in range(2):
        name = f"fold{k}/samples_epoch1.json"
        assert (four / name).read_text() == (one / name).read_text()
        grouped, alone = read_jsonl(four / f"fold{k}" / "metrics.jsonl"), read_jsonl(one / f"fold{k}" / "metrics.jsonl")
        assert [r["lr_steps"] for r in grouped] == [r["lr_steps"] for r in alone]
        assert [r["processes"] for r in grouped] == [2]
    assert json.loads((four / "results.json").read_text())["folds_done"] == [0, 1]


def _launch(tiny_data, out, cache_dir, *extra: str) -> subprocess.CompletedProcess:
    cmd = launch_command(train_args(tiny_data, out, cache_dir, *extra))
    return subprocess.run(cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)


def test_two_launches_into_one_run_train_each_fold_once_and_both_finish(tiny_data, cache_dir, tmp_path):
    out = tmp_path / "double"
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: _launch(tiny_data, out, cache_dir, "--folds", "3", "--epochs", "1"), range(2)))
    assert all(r.returncode == 0 for r in runs), [r.stderr[-2000:] for r in runs]
    started = [f for r in runs for f in re.findall(r"fold (\d): training on", r.stdout)]
    assert sorted(started) == ["0", "1", "2"]
    for k in range(3):
        assert len(read_jsonl(out / f"fold{k}" / "metrics.jsonl")) == 1  # trained once: no epoch twice
    assert json.loads((out / "results.json").read_text())["folds_done"] == [0, 1, 2]


def test_a_fold_array_of_single_fold_launches_then_the_ensemble_step_equals_one_launch(
    tiny_data, cache_dir, tmp_path, run_one
):
    one, out = run_one[0], tmp_path / "array"
    task = lambda k: _launch(tiny_data, out, cache_dir, *RNG_LEVERS, "--train-folds", str(k), "--no-ensemble")
    with ThreadPoolExecutor(2) as pool:  # an array throttled to two tasks at a time
        tasks = list(pool.map(task, range(N_FOLDS)))
    assert all(t.returncode == 0 for t in tasks), [t.stderr[-2000:] for t in tasks]
    assert not (out / "results.json").exists()  # no task builds the ensemble
    run_cli(["evaluate.py", str(out), "--ensemble", "--cache-dir", str(cache_dir)])
    for k in range(N_FOLDS):
        assert (out / f"fold{k}" / "best.safetensors").read_bytes() == (
            one / f"fold{k}" / "best.safetensors"
        ).read_bytes()
    for name in ("oof.csv", "predictions_test.csv"):
        assert (out / name).read_text() == (one / name).read_text()
    array, single = (json.loads((d / "results.json").read_text()) for d in (out, one))
    assert array["ensemble"] == single["ensemble"] and array["oof"] == single["oof"]
    assert array["folds_done"] == list(range(N_FOLDS))


def test_the_ensemble_step_refuses_a_run_with_unfinished_folds_naming_them(tmp_path):
    out = tmp_path / "partial"
    (out / "fold0").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"folds": 5, "train_folds": None}))
    (out / "fold0" / "result.json").write_text(json.dumps({"fold": 0, "status": "done"}))
    proc = run_cli(["evaluate.py", str(out), "--ensemble"], check=False)
    assert proc.returncode == 2
    assert "fold(s) [1, 2, 3, 4] have no result yet" in proc.stderr and "--train-folds 1 2 3 4" in proc.stderr
    assert not (out / "results.json").exists()


def test_overwrite_is_refused_while_another_launch_trains_a_fold_of_the_run(tiny_data, cache_dir, tmp_path):
    out = tmp_path / "busy"
    (out / "fold0").mkdir(parents=True)
    (out / "config.yaml").write_text(yaml.safe_dump({"folds": 5}))  # a run, as far as --overwrite looks
    (out / "fold0" / "result.json").write_text(json.dumps({"fold": 0, "status": "done"}))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "claim.lock"}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOLD_2, str(out)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = train(tiny_data, out, cache_dir, "--overwrite", check=False)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2
    assert "--overwrite: fold 2 of" in proc.stderr and f"pid {holder.pid}" in proc.stderr
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "claim.lock"}
    assert after == before  # nothing deleted or rewritten


HOLD_FOLD_2 = """
import sys, time
from pathlib import Path
from pneumo.training.claims import FoldClaims
claims = FoldClaims(Path(sys.argv[1]))
assert claims.claim(2) is None
print("held", flush=True)
time.sleep(600)
"""
