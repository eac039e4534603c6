"""evaluate.py: the ensemble evaluation again from the checkpoints, and predictions for new images."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image


def test_evaluate_reproduces_results_from_checkpoints(run_two, cache_dir):
    out, _ = run_two
    run_cli(["evaluate.py", str(out), "--cache-dir", str(cache_dir), "--threads", "1"])
    results = json.loads((out / "results.json").read_text())
    again = json.loads((out / "evaluation" / "test" / "results.json").read_text())
    ens, ens2 = results["ensemble"]["test"], again["ensemble"]
    assert ens2["confusion_matrix"] == ens["confusion_matrix"]
    assert ens2["accuracy"] == ens["accuracy"]
    assert ens2["roc_auc"] == pytest.approx(ens["roc_auc"], abs=1e-9)
    for fold in results["folds"]:
        assert again["folds"][str(fold["fold"])]["confusion_matrix"] == fold["splits"]["test"]["confusion_matrix"]
    train_probs = np.loadtxt(out / "predictions_test.csv", delimiter=",", skiprows=1, usecols=(7, 8))
    eval_probs = np.loadtxt(out / "evaluation" / "test" / "predictions.csv", delimiter=",", skiprows=1, usecols=(7, 8))
    np.testing.assert_allclose(eval_probs, train_probs, atol=1e-6)


def test_evaluate_predicts_images_and_folders(run_two, tiny_data, tmp_path):
    out, _ = run_two
    odd = tmp_path / "odd.png"
    Image.new("RGBA", (300, 200), (120, 120, 120, 255)).save(odd)
    folder = tiny_data / "test" / "NORMAL"
    csv_path = tmp_path / "preds.csv"
    run_cli(["evaluate.py", str(out), "--images", str(odd), str(folder), "--out", str(csv_path)])
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 1 + len(list(folder.glob("*.jpeg")))
    for row in rows:
        p = float(row["prob_PNEUMONIA"])
        folds = [float(row[f"fold{k}_prob_PNEUMONIA"]) for k in range(5)]
        assert 0 <= p <= 1 and p == pytest.approx(np.mean(folds))
        assert row["pred"] == ("PNEUMONIA" if p > 0.5 else "NORMAL")


def test_evaluate_refuses_unreadable_images_writing_nothing(run_two, tmp_path):
    out, _ = run_two
    bad = tmp_path / "bad.jpeg"
    bad.write_text("not an image")
    csv_path = tmp_path / "preds.csv"
    proc = run_cli(["evaluate.py", str(out), "--images", str(bad), "--out", str(csv_path)], check=False)
    assert proc.returncode == 2
    assert "bad.jpeg" in proc.stderr and "Traceback" not in proc.stderr
    assert not csv_path.exists()
