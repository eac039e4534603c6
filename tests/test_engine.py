"""The training step loop: with fp16, a step the grad scaler skips does not advance the schedule."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from pneumo.training.engine import EpochTotals, Trainable, train_one_epoch

N_BATCHES, LR, MIN_LR = 8, 1e-3, 1e-4


def _trainable(scaler: torch.amp.GradScaler) -> Trainable:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=N_BATCHES, eta_min=MIN_LR)
    return Trainable(model, model, optimizer, scheduler, scaler, nn.CrossEntropyLoss())


def _epoch(t: Trainable) -> EpochTotals:
    g = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (N_BATCHES * 4, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 2, (N_BATCHES * 4,), generator=g)
    batches = [(pixels[i : i + 4], torch.arange(i, i + 4)) for i in range(0, N_BATCHES * 4, 4)]
    totals = EpochTotals()
    train_one_epoch(t, batches, labels, (128.0, 64.0), g, totals, torch.device("cpu"), nullcontext)
    return totals


def _cosine_lr(steps: int) -> float:
    return MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * steps / N_BATCHES)) / 2


def test_steps_skipped_by_the_fp16_grad_scaler_do_not_step_the_schedule():
    # Gradients of batches 2 and 5 overflow (as fp16 ones do): the scaler finds the infinities,
    # skips those two updates and halves its scale each time.
    t = _trainable(torch.amp.GradScaler("cpu", init_scale=1024.0))
    backward = iter(range(1, N_BATCHES + 1))
    t.model[1].weight.register_hook(lambda grad: grad * math.inf if next(backward) in (2, 5) else grad)
    totals = _epoch(t)
    assert t.scaler.get_scale() == 256.0  # the scaler's own count: two skipped steps
    adam_steps = int(t.optimizer.state[t.model[1].weight]["step"])  # the optimizer's own count
    assert totals.step == N_BATCHES
    assert totals.optimizer_steps == adam_steps == N_BATCHES - 2
    assert t.scheduler.last_epoch == adam_steps
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(_cosine_lr(adam_steps), rel=1e-9)


def test_without_loss_scaling_every_batch_is_an_optimizer_and_a_schedule_step():
    t = _trainable(torch.amp.GradScaler("cpu", enabled=False))
    totals = _epoch(t)
    assert totals.optimizer_steps == totals.step == t.scheduler.last_epoch == N_BATCHES
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(MIN_LR, rel=1e-9)
