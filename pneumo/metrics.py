"""Classification metrics as a radiology paper reports them, from labels and probabilities."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

SUMMARY_KEYS = ("accuracy", "roc_auc", "sensitivity", "specificity", "loss")


def classification_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    positive: int,
    files: Sequence[str] | None = None,
) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted averages, confusion
    matrix (rows true, columns predicted), ROC-AUC, sensitivity/specificity of `positive`,
    cross-entropy loss, and the misclassified files. Prediction is the arg-max class."""
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    preds = probs.argmax(axis=1)
    ids = list(range(len(classes)))
    report = classification_report(
        labels, preds, labels=ids, target_names=list(classes), output_dict=True, zero_division=0
    )
    negative = 1 - positive
    both = len(np.unique(labels)) == 2
    eps = 1e-12
    out = {
        "n": len(labels),
        "accuracy": float((preds == labels).mean()) if len(labels) else float("nan"),
        "loss": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)).mean())
        if len(labels)
        else float("nan"),
        "roc_auc": float(roc_auc_score(labels == positive, probs[:, positive])) if both else None,
        "sensitivity": float(report[classes[positive]]["recall"]),
        "specificity": float(report[classes[negative]]["recall"]),
        "per_class": {c: {k: float(v) if k != "support" else int(v) for k, v in report[c].items()} for c in classes},
        "macro_avg": {k: float(v) for k, v in report["macro avg"].items()},
        "weighted_avg": {k: float(v) for k, v in report["weighted avg"].items()},
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


def report_text(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> str:
    """sklearn's text classification report for arg-max predictions."""
    preds = np.asarray(probs).argmax(axis=1)
    return classification_report(
        labels, preds, labels=list(range(len(classes))), target_names=list(classes), digits=4, zero_division=0
    )


def mean_std(results: Sequence[dict], keys: Sequence[str] = SUMMARY_KEYS) -> dict[str, dict[str, float | None]]:
    """Mean and (population) standard deviation of each metric across folds, skipping None."""
    out: dict[str, dict[str, float | None]] = {}
    for key in keys:
        values = [r[key] for r in results if r.get(key) is not None]
        out[key] = (
            {"mean": float(np.mean(values)), "std": float(np.std(values))} if values else {"mean": None, "std": None}
        )
    return out


def epoch_metrics(labels: Sequence[int], preds: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy and per-class precision and recall of arg-max predictions (per-epoch logging)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    report = classification_report(
        labels, preds, labels=list(range(len(classes))), target_names=list(classes), output_dict=True, zero_division=0
    )
    return {
        "accuracy": float((labels == preds).mean()) if len(labels) else float("nan"),
        "precision": {c: float(report[c]["precision"]) for c in classes},
        "recall": {c: float(report[c]["recall"]) for c in classes},
    }
