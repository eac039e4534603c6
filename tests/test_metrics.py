"""Metrics say what they are: undefined ones are null (never 0.0), spread is the sample SD."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from pneumo.data.predictions import redecide_table, write_predictions
from pneumo.metrics.classification import classification_metrics, epoch_metrics, mean_std, report_text

CLASSES = ("NORMAL", "PNEUMONIA")


def _probs(preds: list[int]) -> np.ndarray:
    """Confident probabilities whose arg-max is `preds`."""
    return np.asarray([[0.9, 0.1] if p == 0 else [0.2, 0.8] for p in preds])


def test_a_split_without_negatives_has_no_specificity_and_no_auc():
    m = classification_metrics(np.array([1, 1, 1, 1]), _probs([1, 1, 0, 1]), CLASSES, positive=1)
    assert m["specificity"] is None and m["roc_auc"] is None
    assert m["sensitivity"] == 0.75
    assert m["per_class"]["NORMAL"]["recall"] is None
    assert m["per_class"]["NORMAL"]["precision"] == 0.0  # one NORMAL predicted, wrongly: defined, and 0


def test_a_split_without_positives_has_no_sensitivity():
    m = classification_metrics(np.array([0, 0, 0]), _probs([0, 1, 0]), CLASSES, positive=1)
    assert m["sensitivity"] is None and m["roc_auc"] is None
    assert m["specificity"] == pytest.approx(2 / 3)


def test_no_predicted_positives_leaves_precision_undefined_but_recall_zero():
    m = classification_metrics(np.array([0, 0, 1, 1]), _probs([0, 0, 0, 0]), CLASSES, positive=1)
    assert m["per_class"]["PNEUMONIA"]["precision"] is None
    assert m["per_class"]["PNEUMONIA"]["recall"] == 0.0 and m["sensitivity"] == 0.0
    assert epoch_metrics([0, 0, 1, 1], [0, 0, 0, 0], CLASSES)["precision"]["PNEUMONIA"] is None


def test_undefined_metrics_are_null_in_json():
    m = classification_metrics(np.array([1, 1]), _probs([1, 0]), CLASSES, positive=1)
    text = json.dumps(m, allow_nan=False)  # a NaN would raise here
    assert json.loads(text)["specificity"] is None


def test_the_text_report_says_n_a_for_an_undefined_recall():
    text = report_text(np.array([1, 1, 1]), _probs([1, 0, 1]), CLASSES, positive=1, threshold=0.5)
    normal = next(line for line in text.splitlines() if line.strip().startswith("NORMAL"))
    assert normal.split()[1:] == ["0.0000", "n/a", "0.0000", "0"]


def test_spread_across_folds_is_the_sample_standard_deviation():
    folds = [{"accuracy": 0.8}, {"accuracy": 0.9}, {"accuracy": 1.0}]
    # ((-0.1)² + 0² + 0.1²) / (3 - 1) = 0.01: SD 0.1 (the population SD would be 0.0816)
    assert mean_std(folds, ["accuracy"])["accuracy"] == {"mean": pytest.approx(0.9), "std": pytest.approx(0.1), "n": 3}


def test_spread_skips_folds_where_the_metric_is_undefined():
    folds = [{"specificity": 0.5}, {"specificity": None}, {"specificity": None}]
    assert mean_std(folds, ["specificity", "roc_auc"]) == {
        "specificity": {"mean": 0.5, "std": None, "n": 1},
        "roc_auc": {"mean": None, "std": None, "n": 0},
    }


def test_metrics_and_tables_call_positive_at_the_given_threshold(tmp_path):
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.65, 0.35], [0.7, 0.3], [0.2, 0.8]])
    m = classification_metrics(labels, probs, CLASSES, positive=1, threshold=0.3)
    assert (m["accuracy"], m["sensitivity"], m["specificity"], m["threshold"]) == (0.75, 1.0, 0.5, 0.3)
    path = tmp_path / "p.csv"
    write_predictions(path, list("abcd"), labels, probs, CLASSES, {"fold": [0, 1, 0, 1]}, positive=1, threshold=0.3)
    assert [r["pred"] for r in csv.DictReader(path.open())] == ["NORMAL", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA"]
    redecide_table(path, CLASSES, 1, 0.5)  # the pred column follows a new threshold; the rest is kept
    rows = list(csv.DictReader(path.open()))
    assert [r["pred"] for r in rows] == ["NORMAL", "NORMAL", "NORMAL", "PNEUMONIA"]
    assert [r["fold"] for r in rows] == ["0", "1", "0", "1"] and rows[1]["prob_PNEUMONIA"] == "0.35"
