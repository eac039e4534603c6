"""The fold-parallel trainer end to end: real launches of train.py on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import yaml
from conftest import TRAIN_ARGS, read_jsonl, run_cli
from safetensors.torch import load_file
from sklearn.metrics import classification_report

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


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _report_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """classification_report.txt: each section's title line -> {row name: its cells}."""
    sections: dict[str, dict[str, list[str]]] = {}
    for line in text.splitlines():
        if re.fullmatch(r".+\), threshold [\d.]+", line):  # a section's title
            table = sections[line] = {}
        elif line.strip():
            first, *cells = re.split(r"\s{2,}", line.strip())
            table[first] = cells
    return sections


def _four(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.4f}"


def test_run_directory_holds_the_promised_outputs(run_two):
    out, proc = run_two
    promised = ["results.json", "oof.csv", "config.yaml", "folds.json", "run_info.json", "predictions_test.csv"]
    promised += ["classification_report.txt", "summary.txt"]
    promised += [f"fold{k}/{name}" for k in range(N_FOLDS) for name in ("val_predictions.csv", "result.json")]
    assert [name for name in promised if not (out / name).is_file()] == []  # contents: below and other tests
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert (config["model"], config["image_size"], config["epochs"], config["batch_size"]) == ("test_resnet", 32, 2, 8)
    assert config["mixed_precision"] == "bf16" and config["folds"] == N_FOLDS  # as TRAIN_ARGS asked
    # classification_report.txt: sklearn's report of the out-of-fold and test-ensemble tables at 0.5.
    sections = list(_report_sections((out / "classification_report.txt").read_text()).items())
    assert len(sections) == 2
    assert sections[0][0].startswith("Out-of-fold validation (40 images") and sections[1][0].startswith("Ensemble")
    for (title, table), name in zip(sections, ("oof.csv", "predictions_test.csv")):
        assert title.endswith("threshold 0.500")  # the default decision, fixed:0.5
        rows = _rows(out / name)
        truth = [r["label"] for r in rows]
        called = ["PNEUMONIA" if float(r["prob_PNEUMONIA"]) >= 0.5 else "NORMAL" for r in rows]
        expected = classification_report(
            truth, called, labels=CLASSES, output_dict=True, zero_division=np.nan
        )  # n/a where a class is never called, as the report writes it
        for c in CLASSES:
            want = [_four(expected[c][k]) for k in ("precision", "recall", "f1-score")]
            assert table[c] == [*want, str(len([t for t in truth if t == c]))], (title, c)
        assert table["accuracy"] == [f"{expected['accuracy']:.4f}", str(len(rows))], title
    for k in range(N_FOLDS):
        # best.safetensors is a plain timm test_resnet with a 2-class head: it loads strictly.
        model = timm.create_model("test_resnet", num_classes=2)
        model.load_state_dict(load_file(out / f"fold{k}" / "best.safetensors"), strict=True)
        assert len(read_jsonl(out / f"fold{k}" / "metrics.jsonl")) == 2
        assert json.loads((out / f"fold{k}" / "result.json").read_text())["status"] == "done"
        assert any((out / f"fold{k}" / "tensorboard").iterdir())  # its curves: test_report_site
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
    # The set it trained on is the one generated under $PNEUMO_CACHE, file for file.
    (data,) = cache.glob("synthetic-*/chest_xray")
    on_disk = {p.relative_to(data).as_posix() for p in data.rglob("*.jpeg")}
    pool = json.loads((out / "folds.json").read_text())["files"]
    rows = _rows(out / "predictions_test.csv")
    assert set(pool) | {r["file"] for r in rows} == on_disk and not set(pool) & {r["file"] for r in rows}
    assert all(r["file"].startswith(f"test/{r['label']}/") for r in rows)  # labels are the folders
    train = [f.split("/")[1] for f in pool if f.startswith("train/")]
    assert train.count("PNEUMONIA") == 3 * train.count("NORMAL") > 0  # the README's 1:3 NORMAL:PNEUMONIA
    results = json.loads((out / "results.json").read_text())
    assert results["synthetic"] is True
    # Its headline accuracy is the ensemble's at the run's threshold, recomputed from the saved table.
    t = results["decision"]["threshold"]
    called = [("PNEUMONIA" if float(r["prob_PNEUMONIA"]) >= t else "NORMAL") == r["label"] for r in rows]
    assert results["ensemble"]["test"]["accuracy"] == pytest.approx(np.mean(called))
    assert results["ensemble"]["test"]["n"] == len(rows) > 0


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
