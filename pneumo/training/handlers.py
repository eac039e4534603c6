"""What happens around a fold's loop, as handlers of its events (MONAI's handlers, Lightning's
callbacks): the best checkpoint and its validation predictions, the epoch's console line and the
`--audit-samples` lists here; metrics.jsonl and TensorBoard in `tracking`. The loop emits the
events and names none of these; a new side concern is one more handler in `fold_handlers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pneumo.data.predictions import PROVISIONAL_THRESHOLD, write_predictions
from pneumo.data.splits import Splits
from pneumo.models.checkpoint import save_weights
from pneumo.training.events import EpochEnd, Handler, Handlers
from pneumo.training.recipe import TrainSpec
from pneumo.training.trackers import TrackerLog, TrackerRun
from pneumo.training.tracking import FoldLogger
from pneumo.utils import console
from pneumo.utils.fsutil import BackgroundWriter, atomic_write_json
from pneumo.utils.run_files import BEST, VAL_PREDICTIONS


class BestCheckpoint(Handler):
    """On a new best epoch: foldK/best.safetensors (weights + what evaluation needs to use them)
    and foldK/val_predictions.csv, the validation fold's probabilities at that epoch. The weights
    go through the fold's background writer, queued before the epoch's resume state."""

    def __init__(
        self, out: Path, meta: dict[str, Any], splits: Splits, val_idx: np.ndarray, writer: BackgroundWriter
    ) -> None:
        self.out, self.meta, self.writer = out, meta, writer
        self.files = [splits.files[i] for i in val_idx]
        self.labels, self.classes, self.positive = splits.labels[val_idx], splits.classes, splits.positive

    def new_best(self, event: EpochEnd) -> None:
        meta = {**self.meta, "epoch": event.record["epoch"], "val_loss": event.record["val"]["loss"]}
        save_weights(self.out / BEST, event.weights, meta, self.writer)
        at = {"positive": self.positive, "threshold": PROVISIONAL_THRESHOLD}  # the run's decision comes at its end
        write_predictions(self.out / VAL_PREDICTIONS, self.files, self.labels, event.val_probs, self.classes, **at)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class EpochLine(Handler):
    """One console line per epoch: losses, accuracies, AUC, time and throughput."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def epoch_end(self, event: EpochEnd) -> None:
        r = event.record
        console.log(
            f"fold {event.fold} epoch {r['epoch']}/{self.epochs}: train loss {r['train']['loss']:.4f} "
            f"acc {r['train']['accuracy']:.3f} | val loss {r['val']['loss']:.4f} acc {r['val']['accuracy']:.3f} "
            f"auc {_fmt(r['val']['roc_auc'])} | {r['seconds']:.1f}s, {r['images_per_second']:.1f} img/s"
        )


class SampleAudit(Handler):
    """`--audit-samples`: foldK/samples_epochN.json, the files trained on in the epoch, in order."""

    def __init__(self, out: Path, files: list[str]) -> None:
        self.out, self.files = out, files

    def epoch_end(self, event: EpochEnd) -> None:
        names = [self.files[i] for i in event.sample_indices]
        atomic_write_json(self.out / f"samples_epoch{event.record['epoch']}.json", names)


def fold_handlers(
    out: Path,
    spec: TrainSpec,
    splits: Splits,
    val_idx: np.ndarray,
    meta: dict[str, Any],
    history: list[dict[str, Any]],
    tracker_runs: list[TrackerRun],
    writer: BackgroundWriter,
) -> Handlers:
    """The handlers of a training fold, in the order they act on each event."""
    handlers: list[Handler] = [SampleAudit(out, splits.files)] if spec.audit_samples else []
    handlers += [BestCheckpoint(out, meta, splits, val_idx, writer), FoldLogger(out, history)]
    handlers += [TrackerLog(tracker_runs, history)] if tracker_runs else []
    return Handlers([*handlers, EpochLine(spec.optim.epochs)])
