"""The training step loop, free of logging and checkpointing."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from pneumo.data.augment import AugmentSpec, prepare_batch, sample_params
from pneumo.data.mixing import Mixed, MixSpec, mix_batch
from pneumo.models.inference import Autocast, Batch
from pneumo.training.group import FoldGroup
from pneumo.training.shm_reduce import SharedGradients
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
    plain_eval: bool = False  # evaluate `model` rather than `forward` (a data-parallel wrapper)
    shared: SharedGradients | None = None  # a CPU group's averaging and update through shared memory (else DDP's)

    @property
    def eval_model(self) -> nn.Module:
        """What validation and checkpoints use: the EMA weights when kept, else the model."""
        if self.ema is not None:
            return self.ema.module
        return self.model if self.plain_eval else self.forward


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
    group: FoldGroup | None = None,
) -> bool:
    """Train on `batches` (one optimizer step each, and one scheduler step per optimizer step
    really taken); False if stopped early.

    Augmentation parameters come from `aug_generator`, so a run is reproducible; a NaN or
    infinite loss raises NonFiniteLossError before the weights are touched. With fp16, the grad
    scaler skips the update of a batch whose gradients overflowed (and lowers its scale): the
    schedule then does not advance either, so the LR follows the updates actually made.
    In a `group`, every member prepares the whole batch and trains on its own rows of it; the
    loss, predictions and the decision to stop are the group's, so members never diverge.
    """
    group = group or FoldGroup((0,))
    for pixels, idx in batches:
        x = pixels.to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        x = prepare_batch(x, *norm, params=sample_params(len(idx), aug_generator, t.augment))
        mixed = mix_batch(x, y, t.mix, aug_generator) if t.mix.enabled else None
        if mixed is not None:
            x = mixed.x
        rows = group.rows(len(idx))
        with autocast():
            logits = t.forward(x if group.size == 1 else x[rows])
        loss = batch_loss(t.criterion, logits.float(), y, mixed, rows, group.size)
        value, preds, stop, settle = loss.item(), logits.argmax(1), None, None
        if group.size == 1:
            _check_finite(value, totals.step)
        t.optimizer.zero_grad(set_to_none=True)
        t.scaler.scale(loss).backward()
        if group.size > 1:
            value, preds, stop, settle = _group_step(loss, logits, rows, len(idx), group, should_stop, t)
            _check_finite(value, totals.step)
        t.scaler.step(t.optimizer)
        scale = t.scaler.get_scale()
        t.scaler.update()
        if settle is not None:
            settle()
        totals.lrs.append(t.optimizer.param_groups[0]["lr"])
        if t.scaler.get_scale() >= scale:  # the scale only drops when the step was skipped
            t.scheduler.step()
            totals.optimizer_steps += 1
            if t.shared is not None and t.ema is not None:
                t.shared.update_ema(t.ema, t.model, t.scheduler.last_epoch)
            elif t.ema is not None:
                t.ema.update(t.model, step=t.scheduler.last_epoch)
        if t.shared is not None:
            t.shared.publish()
        totals.step += 1
        totals.loss_sum += value * len(idx)
        totals.labels.extend(y.tolist())
        totals.preds.extend(preds.tolist())
        totals.indices.extend(idx.tolist())
        if should_stop() if stop is None else stop:
            return False
    return True


def _check_finite(value: float, step: int) -> None:
    """Raise NonFiniteLossError if the batch's training loss `value` is NaN or infinite."""
    if not math.isfinite(value):
        raise NonFiniteLossError(f"training loss became {value} at step {step + 1} of the epoch")


def batch_loss(
    criterion: nn.CrossEntropyLoss, out: torch.Tensor, y: torch.Tensor, mixed: Mixed | None, rows: slice, size: int
) -> torch.Tensor:
    """The loss of `out` (this member's rows of the batch) whose gradient, averaged over a group
    of `size`, is the gradient of the whole batch's mean loss: the member's summed loss over
    the batch's total (class) weight, times `size`. Alone: `criterion` itself."""
    if size == 1:
        if mixed is None:
            return criterion(out, y)
        return mixed.lam * criterion(out, y) + (1 - mixed.lam) * criterion(out, mixed.partners)

    def share(targets: torch.Tensor) -> torch.Tensor:
        w, smoothing = criterion.weight, criterion.label_smoothing
        total = F.cross_entropy(out, targets[rows], weight=w, label_smoothing=smoothing, reduction="sum")
        return total / (len(targets) if w is None else w[targets].sum()) * size

    if mixed is None:
        return share(y)
    return mixed.lam * share(y) + (1 - mixed.lam) * share(mixed.partners)


def _group_step(
    loss: torch.Tensor,
    logits: torch.Tensor,
    rows: slice,
    n: int,
    group: FoldGroup,
    should_stop: Callable[[], bool],
    t: Trainable,
) -> tuple[float, torch.Tensor, bool, Callable[[], None]]:
    """One meeting per step, after backward: the gradients' averaging (through shared memory; DDP's is
    inside backward) and the exchange of the batch's mean loss, every row's prediction, whether any
    member was asked to stop (all stop after the same step), and the group's mean of the floating
    buffers (batch-norm running statistics, just updated from each member's rows), which the
    returned `settle` writes into the model after the update step (not before backward, which may
    still need the buffers as they are), so every member holds the same model."""
    buffers = [b for b in t.model.buffers() if b.is_floating_point()]
    head = torch.zeros(2 + n, device=logits.device, dtype=torch.float32)
    head[0] = loss.detach() / group.size
    head[1] = float(should_stop())
    head[2 + rows.start : 2 + rows.stop] = logits.detach().argmax(1).float()
    exchange = torch.cat([head, *(b.detach().reshape(-1).float() for b in buffers)])
    shared = group.sum(exchange) if t.shared is None else t.shared.average(exchange)

    def settle() -> None:
        offset = 2 + n
        for b in buffers:
            b.copy_(shared[offset : offset + b.numel()].view_as(b) / group.size)
            offset += b.numel()

    return shared[0].item(), shared[2 : 2 + n].long(), bool(shared[1].item() > 0), settle
