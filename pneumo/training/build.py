"""What one fold trains with, from its recipe (pneumo.training.recipe): independent seeds from
(seed, fold), the model, optimiser, per-step schedule, grad scaler, loss, augmentation and mixing,
and the weight EMA."""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch
from timm.optim import create_optimizer_v2, get_optimizer_class
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler

from pneumo.data.mixing import MixSpec
from pneumo.models.factory import create_model, lr_groups
from pneumo.models.mixstyle import attach_mixstyle
from pneumo.training.engine import Trainable
from pneumo.training.group import FoldGroup, sync_batchnorm
from pneumo.training.recipe import OptimSpec, TrainSpec


def fold_seeds(seed: int, fold: int) -> tuple[int, int, int]:
    """Independent seeds (init and dropout, sampler, augmentation) from (seed, fold) alone."""
    children = np.random.SeedSequence([seed, fold]).spawn(3)
    return tuple(int(c.generate_state(1, np.uint64)[0] >> 1) for c in children)  # type: ignore[return-value]


def build_trainable(
    spec: TrainSpec,
    device: torch.device,
    mixed_precision: str,
    class_counts: np.ndarray,
    n_steps: int,
    group: FoldGroup | None = None,
) -> Trainable:
    """A fold's model, optimiser, per-step cosine schedule, grad scaler and loss, from its recipe;
    in a `group` of several processes, its forward averages gradients over the group."""
    group = group or FoldGroup((0,))
    net, cfg = spec.model, spec.optim
    model = create_model(
        net.name,
        dropout=net.dropout,
        pretrained=net.pretrained,
        pretrained_file=net.pretrained_file,
        init=net.init,
        zero_init_last=net.zero_init_last,
        drop_path=net.drop_path,
    )
    if net.mixstyle:
        attach_mixstyle(model, net.mixstyle)
    model = sync_batchnorm(model, group)
    model.to(device, memory_format=torch.channels_last)
    scale = cfg.backbone_lr_scale
    groups = None if scale == 1 else (lambda m: lr_groups(m, cfg.lr, scale))
    optimizer = create_optimizer_v2(
        model,
        opt=cfg.opt,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        filter_bias_and_bn=False,
        param_group_fn=groups,
        **fused_kwargs(cfg.opt),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision == "fp16")
    weight = None
    if cfg.balance == "loss":
        weight = torch.as_tensor(
            class_counts.sum() / (len(class_counts) * class_counts), dtype=torch.float32, device=device
        )
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, warmup_power=3 / 4) if cfg.ema_decay else None
    forward, shared = model, None
    if group.size > 1:
        # Frozen backbone epochs leave parameters without gradients, which DDP must be told about.
        # A sharded update cannot serve fp16's grad scaler, which must see every gradient.
        forward, shared = group.data_parallel(
            model, find_unused=cfg.freeze_epochs > 0, ema=ema, shard=not scaler.is_enabled()
        )
    forward = torch.compile(forward) if cfg.compile else forward
    return Trainable(
        model,
        forward,
        optimizer,
        make_scheduler(optimizer, cfg, n_steps),
        scaler,
        nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing),
        spec.augment,
        MixSpec(cfg.mixup, cfg.cutmix),
        ema,
        plain_eval=group.size > 1,
        shared=shared,
    )


def fused_kwargs(opt: str) -> dict[str, bool]:
    """`fused=True` where the optimizer class has a fused kernel (torch's Adam, AdamW, SGD: on
    CPU too since torch 2.4): one kernel over all parameters instead of one op per tensor,
    about 7x faster for a resnet18's AdamW step on one CPU core; other optimizers as timm
    builds them."""
    cls = get_optimizer_class(opt, bind_defaults=False)
    return {"fused": True} if "fused" in inspect.signature(cls).parameters else {}


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimSpec, n_steps: int) -> LRScheduler:
    """Cosine from each group's lr down to --min-lr x (its lr / --lr), after a linear warmup.

    Stepped once per optimizer step. With one learning rate and no warmup this is exactly
    CosineAnnealingLR (kept, so earlier runs resume bitwise); otherwise the same curve as a
    closed form, because CosineAnnealingLR has one floor for all parameter groups.
    """
    total = cfg.epochs * n_steps
    warmup = round(cfg.warmup_epochs * n_steps)
    if not warmup and len({g["lr"] for g in optimizer.param_groups}) == 1:
        return CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.min_lr)
    floor = cfg.min_lr / cfg.lr

    def factor(step: int) -> float:
        if step < warmup:
            return 1 / warmup + (1 - 1 / warmup) * step / warmup
        t = min(step - warmup, total - warmup) / (total - warmup)
        return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2

    return LambdaLR(optimizer, factor)
