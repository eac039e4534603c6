"""The checkpoint-selection study (studies/selection/selection.py) on a real tiny run that kept its states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script, train
from sklearn.metrics import roc_auc_score

from pneumo.data.predictions import read_predictions

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["NORMAL", "PNEUMONIA"]


@pytest.fixture(scope="module")
def selection():
    return load_script(ROOT / "studies" / "selection" / "selection.py", "selection_study")


def test_chosen_and_last_weights_are_scored_on_the_test_split(selection, tiny_data, cache_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_data, run, cache_dir, "--train-folds", "0", "2", "--epochs", "3", "--select", "loss", "--keep-state")
    out = tmp_path / "selection.json"
    assert selection.main([str(run), "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["folds"] == [0, 2] and row["select"] == "loss" and row["last"]["epochs"] == [3, 3]
    for i, k in enumerate((0, 2)):
        result = json.loads((run / f"fold{k}" / "result.json").read_text())
        assert row["chosen"]["epochs"][i] == result["best_epoch"]
        # The run's own test predictions of its chosen checkpoint, through train.py's evaluation path.
        own = read_predictions(run / f"fold{k}" / "predictions_test.csv", CLASSES)
        assert row["chosen"]["fold_auc"][i] == pytest.approx(roc_auc_score(own.labels, own.probs[:, 1]), abs=0.02)
    assert len((tmp_path / "selection.md").read_text().splitlines()) == 3  # header, rule, one row


def test_a_run_that_selected_its_last_epoch_scores_the_same_weights_twice(selection, tiny_data, cache_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_data, run, cache_dir, "--train-folds", "1", "--epochs", "2", "--select", "last", "--keep-state")
    row = selection.compare_run(run)
    assert row["chosen"]["epochs"] == row["last"]["epochs"] == [2]
    assert row["chosen"]["fold_auc"] == row["last"]["fold_auc"]
    assert row["chosen"]["ensemble"] == row["last"]["ensemble"]


def test_a_run_without_kept_states_is_refused(selection, tiny_data, cache_dir, tmp_path):
    run = tmp_path / "run"
    train(tiny_data, run, cache_dir, "--train-folds", "1", "--epochs", "1")
    with pytest.raises(SystemExit, match="--keep-state"):
        selection.compare_run(run)
