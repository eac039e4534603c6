"""Classification metrics as a radiology paper reports them, from labels and probabilities.

A metric that is undefined on the data (specificity without negatives, sensitivity or recall
without positives, precision without predicted positives, ROC-AUC with one class) is None
(`null` in JSON, "n/a" in tables), never 0.0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

from pneumo.data.predictions import PROVISIONAL_THRESHOLD, called

SUMMARY_KEYS = ("accuracy", "roc_auc", "sensitivity", "specificity", "loss")


def _defined(value: Any) -> float | None:
    """A metric as a float, or None where sklearn says it is undefined (NaN)."""
    value = float(value)
    return None if np.isnan(value) else value


def _report(labels: np.ndarray, preds: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """sklearn's classification report as a dict, undefined ratios as None."""
    report = classification_report(
        labels,
        preds,
        labels=list(range(len(classes))),
        target_names=list(classes),
        output_dict=True,
        zero_division=np.nan,
    )
    rows = {name: row for name, row in report.items() if isinstance(row, dict)}
    return {name: {k: int(v) if k == "support" else _defined(v) for k, v in row.items()} for name, row in rows.items()}


def classification_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    positive: int,
    files: Sequence[str] | None = None,
    threshold: float = PROVISIONAL_THRESHOLD,
) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages, confusion
    matrix (rows true, columns predicted), ROC-AUC, sensitivity/specificity of `positive`,
    cross-entropy loss, and the misclassified files. The class called is `positive` where
    P(positive) >= `threshold` (the run's decision; 0.5 while training)."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    preds = called(probs, positive, threshold)
    ids = list(range(len(classes)))
    report = _report(labels, preds, classes)
    negative = 1 - positive
    both = len(np.unique(labels)) == 2
    eps = 1e-12
    n = len(labels)
    out = {
        "n": n,
        "threshold": threshold,
        "accuracy": float((preds == labels).mean()) if n else None,
        "loss": float(-np.log(np.clip(probs[np.arange(n), labels], eps, 1.0)).mean()) if n else None,
        "roc_auc": float(roc_auc_score(labels == positive, probs[:, positive])) if both else None,
        "sensitivity": report[classes[positive]]["recall"],
        "specificity": report[classes[negative]]["recall"],
        "per_class": {c: report[c] for c in classes},
        "macro_avg": report["macro avg"],
        "weighted_avg": report["weighted avg"],
        "confusion_matrix": {"labels": list(classes), "matrix": confusion_matrix(labels, preds, labels=ids).tolist()},
    }
    if files is not None:
        wrong = np.flatnonzero(preds != labels)
        out["misclassified"] = [
            {"file": files[i], "label": classes[labels[i]], f"prob_{classes[positive]}": float(probs[i, positive])}
            for i in wrong
        ]
    return out


def class_losses(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, float | None]:
    """Mean cross-entropy over the samples of each class (None for a class with none)."""
    labels = np.asarray(labels, dtype=np.int64)
    nll = -np.log(np.clip(np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), labels], 1e-12, 1.0))
    return {c: float(nll[labels == k].mean()) if (labels == k).any() else None for k, c in enumerate(classes)}


def report_text(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], positive: int, threshold: float) -> str:
    """sklearn's text classification report of the classes called at `threshold`; undefined ratios read n/a."""
    preds = called(probs, positive, threshold)
    text = classification_report(
        labels, preds, labels=list(range(len(classes))), target_names=list(classes), digits=4, zero_division=np.nan
    )
    return re.sub(r"\bnan\b", "n/a", text)


def mean_std(results: Sequence[dict], keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, dict[str, Any]]:
    """Per metric across folds: the mean and the sample standard deviation (ddof=1) of the folds
    where it is defined (`n` of them); None where there are too few (none, or one for the SD)."""
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        values = [r[key] for r in results if r.get(key) is not None]
        out[key] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values),
        }
    return out


def epoch_metrics(labels: Sequence[int], preds: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy and per-class precision and recall of arg-max predictions (per-epoch logging)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    report = _report(labels, preds, classes)
    return {
        "accuracy": float((labels == preds).mean()) if len(labels) else None,
        "precision": {c: report[c]["precision"] for c in classes},
        "recall": {c: report[c]["recall"] for c in classes},
    }
