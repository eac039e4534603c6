"""Per-fold epoch metrics: `metrics.jsonl` (rewritten atomically) and TensorBoard.

TensorBoard gets every numeric field of an epoch record as a scalar (losses, accuracy,
per-class precision/recall/loss, AUC, learning rate, images/s), and at the fold's end its
hyperparameters with final metrics in the HParams tab (`log_final`, once the fold is evaluated),
written into the fold's own run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pneumo.training.events import EpochEnd, Handler
from pneumo.training.trackers import flatten
from pneumo.utils.fsutil import atomic_write_text
from pneumo.utils.run_files import METRICS_LOG, TENSORBOARD

# Flags shown as hyperparameters in TensorBoard's HParams tab.
HPARAMS = (
    "model",
    "image_size",
    "epochs",
    "batch_size",
    "opt",
    "lr",
    "min_lr",
    "weight_decay",
    "dropout",
    "balance",
    "init",
    "pretrained",
    "freeze_epochs",
    "mixed_precision",
    "folds",
    "seed",
)


def fold_hparams(config: dict[str, Any], fold: int) -> dict[str, Any]:
    """The run's main flags and the fold index, as HParams values (None as the string 'none')."""
    values = {k: config.get(k) for k in HPARAMS}
    return {**{k: "none" if v is None else v for k, v in values.items()}, "fold": fold}


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    """A fold's final metrics for HParams: best epoch and its validation and evaluation-split scores."""
    keys = ("loss", "accuracy", "roc_auc", "sensitivity", "specificity")
    sections = {"val": result["val"], **result.get("splits", {})}
    out = {"final/best_epoch": float(result["best_epoch"])}
    for name, metrics in sections.items():
        out.update({f"final/{name}_{k}": float(metrics[k]) for k in keys if metrics.get(k) is not None})
    return out


class FoldLogger(Handler):
    """A fold's metrics.jsonl and TensorBoard run: one record per epoch (on resume it starts from
    the saved history)."""

    def __init__(self, fold_dir: Path, history: list[dict[str, Any]]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = fold_dir / METRICS_LOG
        self.history = list(history)
        # purge_step drops events a killed run logged past its last checkpointed epoch.
        self.writer = SummaryWriter(str(fold_dir / TENSORBOARD), purge_step=len(self.history) + 1)
        self._write_file()

    def _write_file(self) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.history))

    def epoch_end(self, event: EpochEnd) -> None:
        self.log(event.record)

    def log(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self._write_file()
        step = int(record["epoch"])
        for name, value in flatten({k: v for k, v in record.items() if k != "epoch"}).items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def log_final(fold_dir: Path, config: dict[str, Any], result: dict[str, Any]) -> None:
    """A finished fold's hyperparameters (the run's `config`) and final metrics into its own
    TensorBoard run (HParams tab), at its last epoch.

    `SummaryWriter.add_hparams` would open a separate run; the three summaries it makes are
    written here instead, with the metrics as scalars of this run.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    metrics, step = final_metrics(result), int(result["epochs"])
    with SummaryWriter(str(fold_dir / TENSORBOARD)) as writer:
        for summary in hparams_summaries(fold_hparams(config, int(result["fold"])), metrics):
            writer.file_writer.add_summary(summary, step)
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)
