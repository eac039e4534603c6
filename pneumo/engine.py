"""The training step loop and batched inference, free of logging and checkpointing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pneumo.augment import prepare_batch, sample_params
from pneumo.errors import NonFiniteLossError

Autocast = Callable[[], AbstractContextManager]
Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class EpochTotals:
    """Running totals of one training epoch (kept in mid-epoch checkpoints)."""

    step: int = 0
    loss_sum: float = 0.0
    labels: list[int] = field(default_factory=list)
    preds: list[int] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)  # the learning rate each optimizer step used

    @property
    def samples(self) -> int:
        return len(self.labels)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(1, self.samples)


@dataclass
class Trainable:
    """One fold's model and everything that updates it."""

    model: nn.Module
    forward: nn.Module  # the model, or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module


def train_one_epoch(
    t: Trainable,
    batches: Iterable[Batch],
    labels: torch.Tensor,
    norm: tuple[float, float],
    aug_generator: torch.Generator,
    totals: EpochTotals,
    device: torch.device,
    autocast: Autocast,
    should_stop: Callable[[], bool] = lambda: False,
) -> bool:
    """Train on `batches` (one optimizer and one scheduler step each); False if stopped early.

    Augmentation parameters come from `aug_generator`, so a run is reproducible; a NaN or
    infinite loss raises NonFiniteLossError before the weights are touched.
    """
    for pixels, idx in batches:
        x = pixels.to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        angles, flips = sample_params(len(idx), aug_generator)
        x = prepare_batch(x, *norm, angles=angles, flips=flips)
        with autocast():
            logits = t.forward(x)
        loss = t.criterion(logits.float(), y)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"training loss became {value} at step {totals.step + 1} of the epoch")
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        t.scaler.update()
        totals.lrs.append(t.optimizer.param_groups[0]["lr"])
        t.scheduler.step()
        totals.step += 1
        totals.loss_sum += value * len(idx)
        totals.labels.extend(y.tolist())
        totals.preds.extend(logits.argmax(1).tolist())
        totals.indices.extend(idx.tolist())
        if should_stop():
            return False
    return True


@torch.inference_mode()
def predict(
    models: Sequence[tuple[nn.Module, tuple[float, float]]],
    batches: Iterable[Batch],
    device: torch.device,
    autocast: Autocast,
) -> np.ndarray:
    """Softmax probabilities (n_models, n_samples, n_classes) of each (model, normalisation).

    Batch-major: each batch is read and moved once, then given to every model.
    """
    for model, _ in models:
        model.eval()
    chunks: list[torch.Tensor] = []
    for pixels, _ in batches:
        x = pixels.to(device, non_blocking=True)
        outs = []
        for model, norm in models:
            with autocast():
                logits = model(prepare_batch(x, *norm))
            outs.append(torch.softmax(logits.float(), dim=1).cpu())
        chunks.append(torch.stack(outs))
    if not chunks:
        return np.zeros((len(models), 0, 2))
    return torch.cat(chunks, dim=1).double().numpy()
