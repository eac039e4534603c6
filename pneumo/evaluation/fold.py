"""A trained fold's final evaluation: its best checkpoint on the evaluation splits, and its result.json.

The runner calls it after the fold's training; a data-parallel group's members each predict a share
of every split, as in training, and the group's leader writes the files.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pneumo.data.cache import DecodedImages
from pneumo.data.loader import PixelDataset, eval_batches, make_loader
from pneumo.data.predictions import PROVISIONAL_THRESHOLD, read_predictions, write_predictions
from pneumo.data.splits import Splits
from pneumo.metrics.classification import classification_metrics
from pneumo.models.fold_model import load_fold_model
from pneumo.models.inference import predict
from pneumo.training.group import FoldGroup
from pneumo.training.tracking import log_final
from pneumo.training.trainer import FoldEnv, TrainedFold
from pneumo.utils.fsutil import atomic_write_json
from pneumo.utils.run_files import BEST, RESULT, STATE, VAL_PREDICTIONS, fold_dir, split_predictions


def evaluate_fold(trained: TrainedFold, splits: Splits, decoded: DecodedImages, env: FoldEnv) -> dict:
    """Evaluate the fold's best checkpoint on the evaluation splits; the leader writes each split's
    predictions and result.json last, then deletes the resume state unless the run keeps it.

    Returns the fold's result (a member that is not the leader: a placeholder)."""
    fold, group = trained.fold, env.group
    out = fold_dir(env.run_dir, fold)
    best = load_fold_model(out / BEST, env.device)
    dataset = PixelDataset(decoded)
    probs = {split: _predict(dataset, idx, best.model, best.norm, env, group) for split, idx in splits.evals.items()}
    if not group.is_leader:
        return {"fold": fold, "status": "trained by the group"}
    val_idx = splits.fold_indices(fold)[1]
    val = read_predictions(out / VAL_PREDICTIONS, splits.classes)
    result = {
        "fold": fold,
        "status": "done",
        "best_epoch": trained.best_epoch,
        "epochs": trained.epochs,
        "train_size": int(len(splits.pool) - len(val_idx)),
        "val_size": len(val_idx),
        "norm": {"mean": best.mean, "std": best.std},
        "val": classification_metrics(val.labels, val.probs, splits.classes, splits.positive, val.files),
        "splits": {},
    }
    for split, idx in splits.evals.items():
        files = [splits.files[i] for i in idx]
        labels = splits.labels[idx]
        at = {"positive": splits.positive, "threshold": PROVISIONAL_THRESHOLD}  # until the run's decision
        write_predictions(out / split_predictions(split), files, labels, probs[split], splits.classes, **at)
        result["splits"][split] = classification_metrics(labels, probs[split], splits.classes, splits.positive, files)
    result["seconds"] = round(time.monotonic() - trained.started, 1)  # the whole fold, its evaluation included
    result["finished_at"] = round(time.time(), 3)  # when (epoch seconds): the scaling benchmark's clock
    result["processes"] = group.size
    log_final(out, env.config, result)
    atomic_write_json(out / RESULT, result)
    if not env.train.keep_state:
        # A done fold is never resumed (its result.json says so): its resume state is dead weight.
        (out / STATE).unlink(missing_ok=True)
    return result


def _predict(
    dataset: PixelDataset,
    idx: np.ndarray,
    model: torch.nn.Module,
    norm: tuple[float, float],
    env: FoldEnv,
    group: FoldGroup,
) -> np.ndarray:
    """The probabilities of `model` on the images `idx`: each member predicts its share, every member gets them all."""
    loader = make_loader(dataset, eval_batches(group.shard(idx), env.train.optim.batch_size), env.device, env.workers)
    probs = predict([(model, norm)], loader, env.device, env.autocast, env.train.tta)[0]
    return group.gather_rows(probs, len(idx))
