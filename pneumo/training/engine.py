"""The training step loop, free of logging and checkpointing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from pneumo.data.augment import AugmentSpec, prepare_batch, sample_params
from pneumo.data.mixing import MixSpec, mix_batch
from pneumo.models.inference import Autocast, Batch
from pneumo.utils.errors import NonFiniteLossError


@dataclass
class EpochTotals:
    """Running totals of one training epoch (kept in mid-epoch checkpoints): `step` counts
    batches, `optimizer_steps` the ones whose update was applied (fp16 skips inf/NaN ones)."""

    step: int = 0
    optimizer_steps: int = 0
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
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    mix: MixSpec = field(default_factory=MixSpec)
    ema: nn.Module | None = None  # timm ModelEmaV3, updated after every optimizer step

    @property
    def eval_model(self) -> nn.Module:
        """What validation and checkpoints use: the EMA weights when kept, else the model."""
        return self.ema.module if self.ema is not None else self.forward


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
    """Train on `batches` (one optimizer step each, and one scheduler step per optimizer step
    really taken); False if stopped early.

    Augmentation parameters come from `aug_generator`, so a run is reproducible; a NaN or
    infinite loss raises NonFiniteLossError before the weights are touched. With fp16, the grad
    scaler skips the update of a batch whose gradients overflowed (and lowers its scale): the
    schedule then does not advance either, so the LR follows the updates actually made.
    """
    for pixels, idx in batches:
        x = pixels.to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        x = prepare_batch(x, *norm, params=sample_params(len(idx), aug_generator, t.augment))
        if t.mix.enabled:
            mixed = mix_batch(x, y, t.mix, aug_generator)
            with autocast():
                logits = t.forward(mixed.x)
            out = logits.float()
            loss = mixed.lam * t.criterion(out, y) + (1 - mixed.lam) * t.criterion(out, mixed.partners)
        else:
            with autocast():
                logits = t.forward(x)
            loss = t.criterion(logits.float(), y)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"training loss became {value} at step {totals.step + 1} of the epoch")
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        t.scaler.step(t.optimizer)
        scale = t.scaler.get_scale()
        t.scaler.update()
        totals.lrs.append(t.optimizer.param_groups[0]["lr"])
        if t.scaler.get_scale() >= scale:  # the scale only drops when the step was skipped
            t.scheduler.step()
            totals.optimizer_steps += 1
            if t.ema is not None:
                t.ema.update(t.model, step=t.scheduler.last_epoch)
        totals.step += 1
        totals.loss_sum += value * len(idx)
        totals.labels.extend(y.tolist())
        totals.preds.extend(logits.argmax(1).tolist())
        totals.indices.extend(idx.tolist())
        if should_stop():
            return False
    return True
