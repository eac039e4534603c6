"""Prediction tables (CSV): one row per image with its label, class probabilities and the class
called at the run's decision threshold (P(positive) >= threshold)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import atomic_write_text


@dataclass
class Predictions:
    files: list[str]
    labels: np.ndarray  # -1 where unknown
    probs: np.ndarray  # (n, n_classes)


PROVISIONAL_THRESHOLD = 0.5  # what a fold's tables say until the run has chosen its operating point


def called(probs: np.ndarray, positive: int, threshold: float) -> np.ndarray:
    """The class called for each row of two-class `probs`: `positive` where P(positive) >= threshold."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, 2)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


def write_predictions(
    path: Path,
    files: Sequence[str],
    labels: Sequence[int] | None,
    probs: np.ndarray,
    classes: Sequence[str],
    extra: dict[str, Sequence] | None = None,
    *,
    positive: int,
    threshold: float,
) -> None:
    """Write file, label, extra columns, prob_<class>..., the class called at `threshold`; atomically."""
    extra = extra or {}
    preds = called(probs, positive, threshold)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label", *extra, *(f"prob_{c}" for c in classes), "pred"])
    for i, f in enumerate(files):
        label = classes[labels[i]] if labels is not None and labels[i] >= 0 else ""
        row = [f, label, *(col[i] for col in extra.values())]
        writer.writerow(row + [repr(float(p)) for p in probs[i]] + [classes[int(preds[i])]])
    atomic_write_text(path, buf.getvalue())


def read_predictions(path: Path, classes: Sequence[str]) -> Predictions:
    """Read a table written by `write_predictions`; a missing or damaged one is a PneumoError naming it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        index = {c: i for i, c in enumerate(classes)}
        return Predictions(
            files=[r["file"] for r in rows],
            labels=np.asarray([index.get(r["label"], -1) for r in rows], dtype=np.int64),
            probs=np.asarray([[float(r[f"prob_{c}"]) for c in classes] for r in rows], dtype=np.float64).reshape(
                -1, len(classes)
            ),
        )
    except OSError as exc:
        raise PneumoError(
            f"{path}: cannot read it ({exc.strerror}); delete that fold's directory and run again"
        ) from exc
    except (KeyError, TypeError, ValueError, csv.Error) as exc:
        raise PneumoError(
            f"{path}: not a predictions table of classes {list(classes)} ({type(exc).__name__}: {exc}); "
            "delete that fold's directory and run again"
        ) from exc


def redecide_table(path: Path, classes: Sequence[str], positive: int, threshold: float) -> None:
    """Rewrite the pred column of a table written by `write_predictions` at `threshold`, keeping
    every other column as it is; atomically."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        header = rows[0]
        prob, pred = header.index(f"prob_{classes[positive]}"), header.index("pred")
    except (OSError, IndexError, ValueError, csv.Error) as exc:
        raise PneumoError(f"{path}: not a predictions table of classes {list(classes)} ({exc})") from exc
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows[1:]:
        row[pred] = classes[positive] if float(row[prob]) >= threshold else classes[1 - positive]
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())
