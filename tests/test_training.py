"""The fold-parallel trainer end to end: real launches of train.py on tiny synthetic data."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import yaml
from conftest import TRAIN_ARGS, read_jsonl, run_cli

from pneumo.data.predictions import read_predictions
from pneumo.metrics.classification import classification_metrics
from pneumo.models.checkpoint import load_state

N_FOLDS = 5
CLASSES = ["NORMAL", "PNEUMONIA"]


def test_two_processes_train_four_folds_two_at_a_time_then_the_fifth_on_both(run_two):
    out, proc = run_two
    alone = re.findall(r"\[rank (\d)\] fold (\d): training on process \d", proc.stdout)
    assert sorted((int(f), int(r)) for r, f in alone) == [(0, 0), (1, 1), (2, 0), (3, 1)]
    grouped = re.findall(r"\[rank (\d)\] fold (\d): training on processes \[0, 1\]", proc.stdout)
    assert sorted(grouped) == [("0", "4"), ("1", "4")]
    plan = json.loads((out / "plan.json").read_text())
    assert [[(g["fold"], g["ranks"]) for g in r] for r in plan["rounds"]] == [
        [(0, [0]), (1, [1])],
        [(2, [0]), (3, [1])],
        [(4, [0, 1])],
    ]
    for k in range(N_FOLDS):
        records = read_jsonl(out / f"fold{k}" / "metrics.jsonl")
        assert len(records) == 2 and {r["processes"] for r in records} == {2 if k == 4 else 1}


def test_each_fold_trains_only_on_its_own_training_images(run_two):
    out, _ = run_two
    folds = json.loads((out / "folds.json").read_text())["files"]
    for k in range(N_FOLDS):
        own_train = {f for f, fold in folds.items() if fold != k}
        for epoch in (1, 2):
            seen = json.loads((out / f"fold{k}" / f"samples_epoch{epoch}.json").read_text())
            assert set(seen) <= own_train
            assert not any(f.startswith("test/") for f in seen)


def test_fold_data_is_not_sharded_and_scheduler_steps_once_per_optimizer_step(run_two):
    out, _ = run_two
    folds = json.loads((out / "folds.json").read_text())["files"]
    for k in range(N_FOLDS):
        n_train = sum(1 for fold in folds.values() if fold != k)
        steps = n_train // 8
        records = read_jsonl(out / f"fold{k}" / "metrics.jsonl")
        for epoch, r in enumerate(records, start=1):
            assert r["train_samples"] == steps * 8
            assert r["batches"] == r["optimizer_steps"] == steps and r["skipped_steps"] == 0
            assert r["scheduler_steps"] == epoch * steps
            # Cosine from 1e-3 to 1e-4 over 2 epochs of steps: halfway after epoch 1, eta_min at the end.
            expected = 1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * epoch / 2)) / 2
            assert r["lr"] == pytest.approx(expected, rel=1e-6)


def test_folds_trained_alone_on_two_processes_equal_one_process_folds_bitwise(run_two, run_one):
    two, one = run_two[0], run_one[0]
    for k in range(4):
        assert (two / f"fold{k}" / "best.safetensors").read_bytes() == (
            one / f"fold{k}" / "best.safetensors"
        ).read_bytes()
        assert (two / f"fold{k}" / "val_predictions.csv").read_text() == (
            one / f"fold{k}" / "val_predictions.csv"
        ).read_text()
    config = yaml.safe_load((two / "config.yaml").read_text())
    assert (config["mixstyle"], config["drop_path"]) == (0.5, 0.1)  # the model's own random draws are covered


def test_the_grouped_fold_trains_on_the_same_images_and_schedule_as_alone(run_two, run_one):
    two, one = run_two[0], run_one[0]
    for epoch in (1, 2):
        name = f"samples_epoch{epoch}.json"
        assert (two / "fold4" / name).read_text() == (one / "fold4" / name).read_text()
    for grouped, alone in zip(read_jsonl(two / "fold4" / "metrics.jsonl"), read_jsonl(one / "fold4" / "metrics.jsonl")):
        for key in ("batches", "optimizer_steps", "scheduler_steps", "train_samples", "lr_steps"):
            assert grouped[key] == alone[key]
        assert grouped["processes"] == 2 and alone["processes"] == 1


def test_run_directory_holds_the_promised_outputs(run_two):
    out, proc = run_two
    for name in (
        "results.json",
        "oof.csv",
        "config.yaml",
        "folds.json",
        "run_info.json",
        "classification_report.txt",
        "predictions_test.csv",
        "summary.txt",
    ):
        assert (out / name).is_file(), name
    for k in range(N_FOLDS):
        for name in ("best.safetensors", "metrics.jsonl", "val_predictions.csv", "result.json"):
            assert (out / f"fold{k}" / name).is_file(), (k, name)
        assert any((out / f"fold{k}" / "tensorboard").iterdir())
    assert "ensemble" in proc.stdout and "out-of-fold" in proc.stdout


def test_a_done_fold_keeps_no_resume_state_unless_asked(run_two, run_one):
    two, one = run_two[0], run_one[0]  # run_one passed --keep-state
    for k in range(N_FOLDS):
        assert not (two / f"fold{k}" / "state.pt").exists()
        assert load_state(one / f"fold{k}" / "state.pt")["epoch"] == 2


def test_ensemble_metrics_recomputed_from_saved_probabilities_match_results(run_two):
    out, _ = run_two
    results = json.loads((out / "results.json").read_text())
    per_fold = [read_predictions(out / f"fold{k}" / "predictions_test.csv", CLASSES) for k in range(N_FOLDS)]
    mean = np.mean([p.probs for p in per_fold], axis=0)
    recomputed = classification_metrics(per_fold[0].labels, mean, CLASSES, 1, per_fold[0].files)
    assert recomputed == results["ensemble"]["test"]
    saved = read_predictions(out / "predictions_test.csv", CLASSES)
    np.testing.assert_array_equal(saved.probs, mean)


def test_oof_covers_every_pool_image_once_with_its_own_fold(run_two):
    out, _ = run_two
    folds = json.loads((out / "folds.json").read_text())["files"]
    oof = read_predictions(out / "oof.csv", CLASSES)
    assert sorted(oof.files) == sorted(folds)
    results = json.loads((out / "results.json").read_text())
    assert results["oof"] == classification_metrics(oof.labels, oof.probs, CLASSES, 1, oof.files)
    for k in range(N_FOLDS):
        val = read_predictions(out / f"fold{k}" / "val_predictions.csv", CLASSES)
        assert {folds[f] for f in val.files} == {k}


def test_results_report_per_fold_aggregate_and_ensemble_metrics(run_two):
    results = json.loads((run_two[0] / "results.json").read_text())
    assert [f["fold"] for f in results["folds"]] == list(range(N_FOLDS))
    test = results["ensemble"]["test"]
    for key in (
        "accuracy",
        "per_class",
        "macro_avg",
        "weighted_avg",
        "confusion_matrix",
        "roc_auc",
        "sensitivity",
        "specificity",
        "misclassified",
    ):
        assert key in test
    assert sum(map(sum, test["confusion_matrix"]["matrix"])) == test["n"] == 12
    accs = [f["splits"]["test"]["accuracy"] for f in results["folds"]]
    assert results["cross_validation"]["test"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert results["cross_validation"]["test"]["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))


def test_without_data_dir_trains_on_the_builtin_synthetic_set_and_says_so(tmp_path):
    out = tmp_path / "demo"
    cache = tmp_path / "cache"
    args = ["train.py", "--output-dir", str(out), *TRAIN_ARGS, "--epochs", "1", "--folds", "2"]
    proc = run_cli(args, env={"PNEUMO_CACHE": str(cache)})
    assert "USING THE BUILT-IN SYNTHETIC DATASET" in proc.stdout
    info = json.loads((out / "run_info.json").read_text())
    assert info["synthetic"] is True
    results = json.loads((out / "results.json").read_text())
    assert results["synthetic"] is True and results["ensemble"]["test"]["accuracy"] >= 0


def test_epoch_record_holds_the_learning_rate_of_every_optimizer_step(run_two):
    out, _ = run_two
    for k in range(N_FOLDS):
        records = read_jsonl(out / f"fold{k}" / "metrics.jsonl")
        rates = [lr for r in records for lr in r["lr_steps"]]
        total = sum(r["optimizer_steps"] for r in records)
        # CosineAnnealingLR over all steps, from 1e-3 towards eta_min 1e-4; step i runs at the rate of i.
        expected = [1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * i / total)) / 2 for i in range(total)]
        assert rates == pytest.approx(expected, rel=1e-6)
        assert all(r["images_per_second"] > 0 and r["train_seconds"] > 0 for r in records)


def test_epoch_record_holds_the_validation_loss_of_each_class(run_two):
    out, _ = run_two
    for k in range(N_FOLDS):
        records = read_jsonl(out / f"fold{k}" / "metrics.jsonl")
        best_epoch = json.loads((out / f"fold{k}" / "result.json").read_text())["best_epoch"]
        best = next(r for r in records if r["epoch"] == best_epoch)  # its predictions are val_predictions.csv
        val = read_predictions(out / f"fold{k}" / "val_predictions.csv", CLASSES)
        for c, name in enumerate(CLASSES):
            mine = val.labels == c
            expected = -np.log(val.probs[mine, c]).mean()
            assert best["val"]["class_loss"][name] == pytest.approx(expected, rel=1e-9)
