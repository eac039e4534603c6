"""Fold models loaded back from their best checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumo.models.checkpoint import load_weights_file
from pneumo.models.factory import create_model, load_weights
from pneumo.utils.errors import PneumoError

# What a fold checkpoint's metadata must hold to rebuild and use the model.
_META_KEYS = ("model", "classes", "dropout", "fold", "mean", "std", "image_size", "positive")


@dataclass
class FoldModel:
    """A trained fold model with the normalisation it was trained with."""

    fold: int
    model: nn.Module
    mean: float
    std: float
    meta: dict[str, Any]

    @property
    def norm(self) -> tuple[float, float]:
        return (self.mean, self.std)


def load_fold_model(path: Path, device: torch.device, expect_model: str | None = None) -> FoldModel:
    """Rebuild a fold model from a `best.safetensors` written by training."""
    state, meta = load_weights_file(path)
    lacking = [k for k in _META_KEYS if k not in meta]
    if lacking:
        raise PneumoError(f"{path}: not a checkpoint written by train.py (its metadata lacks {lacking})")
    if expect_model and meta["model"] != expect_model:
        raise PneumoError(
            f"{path}: checkpoint of {meta['model']}, but this run trains {expect_model}; "
            "it belongs to another run (retrain this fold or restore its own checkpoint)"
        )
    model = create_model(meta["model"], num_classes=len(meta["classes"]), dropout=meta["dropout"], init="timm")
    load_weights(model, state, str(path))
    model.to(device, memory_format=torch.channels_last).eval()
    return FoldModel(int(meta["fold"]), model, float(meta["mean"]), float(meta["std"]), meta)
