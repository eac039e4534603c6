"""Train one cross-validation fold: its own model, optimiser, schedule, data and random streams.

Nothing here talks to other processes: a fold's result depends on the seed and fold index
only. The loop trains, validates and saves the resume state at the end of every epoch (and
when asked to stop), so a killed fold resumes exactly where it left off; everything else it
does (best checkpoint, prediction files, metrics.jsonl, TensorBoard, console lines) is a
handler of its events (pneumo.training.handlers).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumo.data.cache import DecodedImages, norm_stats
from pneumo.data.loader import PixelDataset, eval_batches, make_loader, steps_per_epoch, train_batches
from pneumo.data.splits import Splits
from pneumo.metrics.classification import class_losses, classification_metrics, epoch_metrics
from pneumo.models.factory import set_head_only, train_mode
from pneumo.models.inference import Autocast, predict
from pneumo.training.build import build_trainable, fold_seeds
from pneumo.training.engine import EpochTotals, Trainable, train_one_epoch
from pneumo.training.events import EpochEnd, Handlers
from pneumo.training.group import FoldGroup, member_seed
from pneumo.training.handlers import fold_handlers
from pneumo.training.recipe import TrainSpec
from pneumo.training.state import Progress, restore_progress, save_progress
from pneumo.training.trackers import TrackerRun
from pneumo.utils import console
from pneumo.utils.errors import NonFiniteLossError
from pneumo.utils.fsutil import BackgroundWriter
from pneumo.utils.run_files import STATE, fold_dir


@dataclass
class FoldEnv:
    """What the process gives each of its folds: the training recipe, where and how to run, and
    the run's resolved config (for TensorBoard's HParams)."""

    train: TrainSpec
    run_dir: Path
    device: torch.device
    autocast: Autocast
    mixed_precision: str
    workers: int
    config: dict[str, Any] = field(default_factory=dict)
    group: FoldGroup = field(default_factory=lambda: FoldGroup((0,)))
    trackers: tuple[str, ...] = ()  # --log-with
    tracker_runs: list[TrackerRun] = field(default_factory=list)  # the current fold's (its leader's)


@dataclass
class FoldData:
    """A fold's share of the pool: its indices, labels, training normalisation and pixels."""

    splits: Splits
    train_idx: np.ndarray
    val_idx: np.ndarray
    norm: tuple[float, float]
    dataset: PixelDataset

    @classmethod
    def of(cls, fold: int, splits: Splits, decoded: DecodedImages) -> FoldData:
        train_idx, val_idx = splits.fold_indices(fold)
        return cls(splits, train_idx, val_idx, norm_stats(decoded, train_idx), PixelDataset(decoded))


@dataclass(frozen=True)
class TrainedFold:
    """A fold trained to its last epoch, its best checkpoint on disk (pneumo.evaluation.fold evaluates it)."""

    fold: int
    best_epoch: int
    epochs: int
    started: float  # time.monotonic() when its training (or resume) started


def train_fold(
    fold: int, splits: Splits, decoded: DecodedImages, env: FoldEnv, should_stop=lambda: False
) -> TrainedFold | None:
    """Train `fold` to the end (or until `should_stop()`); None when stopped early with the state
    saved for a resume."""
    spec, cfg, group = env.train, env.train.optim, env.group
    out, started = fold_dir(env.run_dir, fold), time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    data = FoldData.of(fold, splits, decoded)
    n_steps = steps_per_epoch(len(data.train_idx), cfg.batch_size)
    init_seed, sampler_seed, aug_seed = fold_seeds(spec.seed, fold)
    torch.manual_seed(init_seed)
    class_counts = np.bincount(splits.labels[data.train_idx], minlength=len(splits.classes))
    t = build_trainable(spec, env.device, env.mixed_precision, class_counts, n_steps, group)
    if group.size > 1:
        if group.is_leader:
            console.log(f"fold {fold}: gradients averaged over {group.size} processes through {group.averaging}")
        torch.manual_seed(member_seed(init_seed, group))  # each member's own dropout draws for its rows
    sampler, aug = torch.Generator().manual_seed(sampler_seed), torch.Generator().manual_seed(aug_seed)
    if (out / STATE).exists():
        p = restore_progress(out / STATE, t, aug, env.device, group)
        console.log(f"fold {fold}: resuming at epoch {p.epoch + 1}, step {p.totals.step}")
    else:
        p = Progress(0, EpochTotals(), sampler.get_state(), math.inf, -1, [])
    meta = {"fold": fold, **spec.checkpoint_meta(), "classes": list(splits.classes)}
    meta.update(positive=splits.positive, mean=data.norm[0], std=data.norm[1])
    handlers, writer = Handlers([]), BackgroundWriter()  # a group's leader writes the fold's files
    if group.is_leader:
        handlers = fold_handlers(out, spec, splits, data.val_idx, meta, p.history, env.tracker_runs, writer)
    try:
        while p.epoch < cfg.epochs:
            epoch_started = time.monotonic()
            images_per_second = _train_epoch(fold, data, t, p, sampler, aug, env, should_stop)
            if images_per_second is None:
                save_progress(out / STATE, fold, t, p, aug, env.device, group, writer)
                return None
            train_seconds = time.monotonic() - epoch_started
            val_probs = _predict(data, data.val_idx, t.eval_model, env)
            head_only = p.epoch < cfg.freeze_epochs
            record = _epoch_record(p, t, data, val_probs, head_only, images_per_second, train_seconds)
            record["seconds"] = round(time.monotonic() - epoch_started, 3)
            record["processes"] = group.size
            weights = t.ema.module if t.ema is not None else t.model
            event = EpochEnd(fold, record, val_probs, weights, p.totals.indices)
            score = selection_score(cfg.select, record)
            if score < p.best_score:
                p.best_score, p.best_epoch = score, record["epoch"]
                handlers.new_best(event)
            handlers.epoch_end(event)
            p.history.append(record)
            p.epoch, p.totals, p.sampler_epoch_start = p.epoch + 1, EpochTotals(), sampler.get_state()
            save_progress(out / STATE, fold, t, p, aug, env.device, group, writer)
            if _group_stops(group, should_stop):
                return None
        writer.wait()
        group.barrier()  # the leader's best checkpoint is on disk for every member
        return TrainedFold(fold, p.best_epoch, len(p.history), started)
    finally:
        try:
            writer.close()  # a stopped or failed fold's last state and best weights land too
        finally:
            handlers.close()


def _train_epoch(
    fold: int,
    data: FoldData,
    t: Trainable,
    p: Progress,
    sampler: torch.Generator,
    aug: torch.Generator,
    env: FoldEnv,
    should_stop,
) -> float | None:
    """Train the epoch `p.epoch` from its step `p.totals.step` on; its images/s, or None if stopped."""
    cfg, labels = env.train.optim, data.splits.labels
    head_only = p.epoch < cfg.freeze_epochs
    set_head_only(t.model, head_only)
    train_mode(t.model, head_only)
    sampler.set_state(p.sampler_epoch_start)
    batches = train_batches(
        data.train_idx,
        labels[data.train_idx],
        len(data.splits.classes),
        cfg.batch_size,
        sampler,
        cfg.balance,
    )
    loader = make_loader(data.dataset, batches[p.totals.step :], env.device, env.workers)
    label = f"fold {fold} epoch {p.epoch + 1}/{cfg.epochs}"
    bar = console.StepProgress(label, len(batches), p.totals.step, cfg.batch_size, lambda: p.totals.loss)
    with bar:
        try:
            finished = train_one_epoch(
                t,
                bar.track(loader),
                torch.from_numpy(labels),
                data.norm,
                aug,
                p.totals,
                env.device,
                env.autocast,
                should_stop,
                env.group,
            )
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"epoch {p.epoch + 1}: {exc}") from exc
    return bar.rate() if finished else None


def _predict(data: FoldData, idx: np.ndarray, model: torch.nn.Module, env: FoldEnv) -> np.ndarray:
    """The probabilities of `model` on the pool images `idx`: each member of the fold's group
    predicts its share, and every member gets them all."""
    group, batches = env.group, eval_batches(env.group.shard(idx), env.train.optim.batch_size)
    loader = make_loader(data.dataset, batches, env.device, env.workers)
    probs = predict([(model, data.norm)], loader, env.device, env.autocast, env.train.tta)[0]
    return group.gather_rows(probs, len(idx))


def _group_stops(group: FoldGroup, should_stop) -> bool:
    """Whether any member was asked to stop (all members decide together)."""
    if group.size == 1:
        return should_stop()
    return bool(group.sum(torch.tensor([float(should_stop())], device=group.device)).item() > 0)


def _epoch_record(
    p: Progress,
    t: Trainable,
    data: FoldData,
    val_probs: np.ndarray,
    head_only: bool,
    images_per_second: float,
    train_seconds: float,
) -> dict[str, Any]:
    """The epoch's metrics.jsonl record: schedule and step counts, training and validation metrics."""
    classes, val_labels = data.splits.classes, data.splits.labels[data.val_idx]
    val = classification_metrics(val_labels, val_probs, classes, data.splits.positive)
    return {
        "epoch": p.epoch + 1,
        "lr": t.optimizer.param_groups[0]["lr"],
        "batches": p.totals.step,
        "optimizer_steps": p.totals.optimizer_steps,
        "skipped_steps": p.totals.step - p.totals.optimizer_steps,
        "scheduler_steps": t.scheduler.last_epoch,
        "train_samples": p.totals.samples,
        "head_only": head_only,
        "lr_steps": list(p.totals.lrs),
        "images_per_second": round(images_per_second, 2),
        "train_seconds": round(train_seconds, 3),
        "train": {"loss": p.totals.loss, **epoch_metrics(p.totals.labels, p.totals.preds, classes)},
        "val": {
            "loss": val["loss"],
            "roc_auc": val["roc_auc"],
            "accuracy": val["accuracy"],
            "precision": {c: v["precision"] for c, v in val["per_class"].items()},
            "recall": {c: v["recall"] for c, v in val["per_class"].items()},
            "class_loss": class_losses(val_labels, val_probs, classes),
        },
    }


def selection_score(select: str, record: dict) -> float:
    """The --select criterion of an epoch's record, lower is better: the validation loss, the
    negated validation ROC-AUC (0 when undefined), or the negated epoch (the last one wins)."""
    if select == "auc":
        return -(record["val"]["roc_auc"] or 0.0)
    if select == "last":
        return -float(record["epoch"])
    return record["val"]["loss"]
