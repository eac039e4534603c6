"""Train one cross-validation fold: its own model, optimiser, schedule, data and random streams.

Nothing here talks to other processes: a fold's result depends on the seed and fold index
only. State is checkpointed at the end of every epoch (and when asked to stop), so a killed
fold resumes exactly where it left off.
"""

from __future__ import annotations

import math
import time
from argparse import Namespace
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler

from pneumo import console
from pneumo.augment import AugmentSpec
from pneumo.cache import DecodedImages, norm_stats
from pneumo.checkpoint import load_state, save_state, save_weights
from pneumo.engine import Autocast, EpochTotals, Trainable, predict, train_one_epoch
from pneumo.ensemble import BEST, load_fold_model
from pneumo.errors import NonFiniteLossError, PneumoError
from pneumo.fsutil import atomic_write_json
from pneumo.loader import PixelDataset, eval_batches, make_loader, steps_per_epoch, train_batches
from pneumo.metrics import class_losses, classification_metrics, epoch_metrics
from pneumo.mixing import MixSpec
from pneumo.models import create_model, lr_groups, set_head_only, train_mode
from pneumo.predictions import read_predictions, write_predictions
from pneumo.splits import Splits
from pneumo.tracking import FoldLogger, final_metrics, fold_hparams

STATE = "state.pt"
RESULT = "result.json"
VAL_PREDICTIONS = "val_predictions.csv"
STATE_FORMAT = 1


@dataclass
class FoldEnv:
    """What the process gives each of its folds."""

    cfg: Namespace
    run_dir: Path
    device: torch.device
    autocast: Autocast
    mixed_precision: str
    workers: int


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold{fold}"


def fold_seeds(seed: int, fold: int) -> tuple[int, int, int]:
    """Independent seeds (init and dropout, sampler, augmentation) from (seed, fold) alone."""
    children = np.random.SeedSequence([seed, fold]).spawn(3)
    return tuple(int(c.generate_state(1, np.uint64)[0] >> 1) for c in children)  # type: ignore[return-value]


def build_trainable(
    cfg: Namespace, device: torch.device, mixed_precision: str, class_counts: np.ndarray, n_steps: int
) -> Trainable:
    """A fold's model, optimiser, per-step cosine schedule, grad scaler and loss, from the flags."""
    model = create_model(
        cfg.model,
        dropout=cfg.dropout,
        pretrained=cfg.pretrained,
        pretrained_file=cfg.pretrained_file,
        init=cfg.init,
        zero_init_last=cfg.zero_init_last,
    )
    model.to(device, memory_format=torch.channels_last)
    scale = cfg.backbone_lr_scale
    groups = None if scale == 1 else (lambda m: lr_groups(m, cfg.lr, scale))
    optimizer = create_optimizer_v2(
        model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, filter_bias_and_bn=False, param_group_fn=groups
    )
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision == "fp16")
    weight = None
    if cfg.balance == "loss":
        weight = torch.as_tensor(
            class_counts.sum() / (len(class_counts) * class_counts), dtype=torch.float32, device=device
        )
    forward = torch.compile(model) if cfg.compile else model
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, warmup_power=3 / 4) if cfg.ema_decay else None
    return Trainable(
        model,
        forward,
        optimizer,
        make_scheduler(optimizer, cfg, n_steps),
        scaler,
        nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing),
        AugmentSpec.from_config(cfg),
        MixSpec(cfg.mixup, cfg.cutmix),
        ema,
    )


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: Namespace, n_steps: int) -> LRScheduler:
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


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class Progress:
    """Where a fold stands: `epoch` is the epoch in progress, `totals.step` its steps done."""

    epoch: int
    totals: EpochTotals
    sampler_epoch_start: torch.Tensor
    best_loss: float
    best_epoch: int
    history: list[dict]


def _save(path: Path, fold: int, t: Trainable, p: Progress, aug: torch.Generator, device: torch.device) -> None:
    save_state(
        path,
        {
            "format": STATE_FORMAT,
            "fold": fold,
            "epoch": p.epoch,
            "totals": asdict(p.totals),
            "sampler_epoch_start": p.sampler_epoch_start,
            "augment": aug.get_state(),
            "rng": _rng_state(device),
            "best_loss": p.best_loss,
            "best_epoch": p.best_epoch,
            "history": p.history,
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict(),
            **({"ema": t.ema.module.state_dict()} if t.ema is not None else {}),
        },
    )


def _restore(path: Path, t: Trainable, aug: torch.Generator, device: torch.device) -> Progress:
    s = load_state(path)
    if not isinstance(s, dict) or s.get("format") != STATE_FORMAT:
        raise PneumoError(
            f"{path}: not a training state of this pneumo version (format {STATE_FORMAT}); "
            "delete it to train this fold again, or rerun with --overwrite"
        )
    t.model.load_state_dict(s["model"])
    t.optimizer.load_state_dict(s["optimizer"])
    t.scheduler.load_state_dict(s["scheduler"])
    t.scaler.load_state_dict(s["scaler"])
    if t.ema is not None:
        t.ema.module.load_state_dict(s["ema"])
    aug.set_state(s["augment"])
    _set_rng_state(s["rng"], device)
    return Progress(
        s["epoch"], EpochTotals(**s["totals"]), s["sampler_epoch_start"], s["best_loss"], s["best_epoch"], s["history"]
    )


def train_fold(
    fold: int, splits: Splits, decoded: DecodedImages, env: FoldEnv, should_stop=lambda: False
) -> dict | None:
    """Train `fold` to the end (or until `should_stop()`), then evaluate its best checkpoint.

    Returns the fold's result (also written to foldK/result.json), or None when stopped early
    with the state saved for a resume.
    """
    cfg, device = env.cfg, env.device
    out = fold_dir(env.run_dir, fold)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    train_idx, val_idx = splits.fold_indices(fold)
    norm = norm_stats(decoded, train_idx)
    n_classes = len(splits.classes)
    class_counts = np.bincount(splits.labels[train_idx], minlength=n_classes)
    n_steps = steps_per_epoch(len(train_idx), cfg.batch_size)
    init_seed, sampler_seed, aug_seed = fold_seeds(cfg.seed, fold)
    torch.manual_seed(init_seed)
    t = build_trainable(cfg, device, env.mixed_precision, class_counts, n_steps)
    sampler = torch.Generator().manual_seed(sampler_seed)
    aug = torch.Generator().manual_seed(aug_seed)
    if (out / STATE).exists():
        p = _restore(out / STATE, t, aug, device)
        console.log(f"fold {fold}: resuming at epoch {p.epoch + 1}, step {p.totals.step}")
    else:
        p = Progress(0, EpochTotals(), sampler.get_state(), math.inf, -1, [])
    labels = torch.from_numpy(splits.labels)
    dataset = PixelDataset(decoded)
    val_loader_batches = eval_batches(val_idx, cfg.batch_size)
    logger = FoldLogger(out, p.history)
    meta = {
        "fold": fold,
        "model": cfg.model,
        "dropout": cfg.dropout,
        "image_size": cfg.image_size,
        "equalize": cfg.equalize,
        "jpeg_quality": cfg.jpeg_quality,
        "crop": cfg.crop,
        "tta": cfg.tta,
        "classes": list(splits.classes),
        "positive": splits.positive,
        "mean": norm[0],
        "std": norm[1],
    }
    try:
        while p.epoch < cfg.epochs:
            epoch_started = time.monotonic()
            head_only = p.epoch < cfg.freeze_epochs
            set_head_only(t.model, head_only)
            train_mode(t.model, head_only)
            sampler.set_state(p.sampler_epoch_start)
            batches = train_batches(
                train_idx, splits.labels[train_idx], n_classes, cfg.batch_size, sampler, cfg.balance == "sampler"
            )
            loader = make_loader(dataset, batches[p.totals.step :], device, env.workers)
            label = f"fold {fold} epoch {p.epoch + 1}/{cfg.epochs}"
            bar = console.StepProgress(label, len(batches), p.totals.step, cfg.batch_size, lambda: p.totals.loss)
            with bar:
                try:
                    finished = train_one_epoch(
                        t, bar.track(loader), labels, norm, aug, p.totals, device, env.autocast, should_stop
                    )
                except NonFiniteLossError as exc:
                    raise NonFiniteLossError(f"epoch {p.epoch + 1}: {exc}") from exc
            train_seconds = time.monotonic() - epoch_started
            if not finished:
                _save(out / STATE, fold, t, p, aug, device)
                return None
            val_loader = make_loader(dataset, val_loader_batches, device, env.workers)
            val_probs = predict([(t.eval_model, norm)], val_loader, device, env.autocast, cfg.tta)[0]
            val = classification_metrics(splits.labels[val_idx], val_probs, splits.classes, splits.positive)
            record = {
                "epoch": p.epoch + 1,
                "lr": t.optimizer.param_groups[0]["lr"],
                "batches": p.totals.step,
                "optimizer_steps": p.totals.optimizer_steps,
                "skipped_steps": p.totals.step - p.totals.optimizer_steps,
                "scheduler_steps": t.scheduler.last_epoch,
                "train_samples": p.totals.samples,
                "head_only": head_only,
                "lr_steps": list(p.totals.lrs),
                "images_per_second": round(bar.rate(), 2),
                "train_seconds": round(train_seconds, 3),
                "train": {"loss": p.totals.loss, **epoch_metrics(p.totals.labels, p.totals.preds, splits.classes)},
                "val": {
                    "loss": val["loss"],
                    "roc_auc": val["roc_auc"],
                    "accuracy": val["accuracy"],
                    "precision": {c: v["precision"] for c, v in val["per_class"].items()},
                    "recall": {c: v["recall"] for c, v in val["per_class"].items()},
                    "class_loss": class_losses(splits.labels[val_idx], val_probs, splits.classes),
                },
                "seconds": round(time.monotonic() - epoch_started, 3),
            }
            if cfg.audit_samples:
                atomic_write_json(out / f"samples_epoch{p.epoch + 1}.json", [splits.files[i] for i in p.totals.indices])
            if val["loss"] < p.best_loss:
                p.best_loss, p.best_epoch = val["loss"], p.epoch + 1
                best_model = t.ema.module if t.ema is not None else t.model
                save_weights(out / BEST, best_model, {**meta, "epoch": p.best_epoch, "val_loss": val["loss"]})
                write_predictions(
                    out / VAL_PREDICTIONS,
                    [splits.files[i] for i in val_idx],
                    splits.labels[val_idx],
                    val_probs,
                    splits.classes,
                )
            logger.log(record)
            console.log(
                f"fold {fold} epoch {p.epoch + 1}/{cfg.epochs}: train loss {record['train']['loss']:.4f} "
                f"acc {record['train']['accuracy']:.3f} | val loss {val['loss']:.4f} acc {val['accuracy']:.3f} "
                f"auc {_fmt(val['roc_auc'])} | {record['seconds']:.1f}s, {record['images_per_second']:.1f} img/s"
            )
            p.history = logger.history
            p.epoch += 1
            p.totals = EpochTotals()
            p.sampler_epoch_start = sampler.get_state()
            _save(out / STATE, fold, t, p, aug, device)
            if should_stop():
                return None
        result = _finish(fold, splits, decoded, env, p, time.monotonic() - started)
        hparams = fold_hparams({**vars(cfg), "mixed_precision": env.mixed_precision}, fold)
        logger.log_hparams(hparams, final_metrics(result), step=len(p.history))
        return result
    finally:
        logger.close()


def _finish(fold: int, splits: Splits, decoded: DecodedImages, env: FoldEnv, p: Progress, seconds: float) -> dict:
    """Evaluate the fold's best checkpoint on the evaluation splits; write result.json last, then
    delete the resume state unless --keep-state."""
    out = fold_dir(env.run_dir, fold)
    best = load_fold_model(out / BEST, env.device)
    dataset = PixelDataset(decoded)
    _, val_idx = splits.fold_indices(fold)
    val = read_predictions(out / VAL_PREDICTIONS, splits.classes)
    result = {
        "fold": fold,
        "status": "done",
        "best_epoch": p.best_epoch,
        "epochs": len(p.history),
        "train_size": int(len(splits.pool) - len(val_idx)),
        "val_size": len(val_idx),
        "norm": {"mean": best.mean, "std": best.std},
        "val": classification_metrics(val.labels, val.probs, splits.classes, splits.positive, val.files),
        "splits": {},
    }
    for split, idx in splits.evals.items():
        loader = make_loader(dataset, eval_batches(idx, env.cfg.batch_size), env.device, env.workers)
        probs = predict([(best.model, best.norm)], loader, env.device, env.autocast, env.cfg.tta)[0]
        files = [splits.files[i] for i in idx]
        write_predictions(out / f"predictions_{split}.csv", files, splits.labels[idx], probs, splits.classes)
        result["splits"][split] = classification_metrics(
            splits.labels[idx], probs, splits.classes, splits.positive, files
        )
    result["seconds"] = round(seconds, 1)
    atomic_write_json(out / RESULT, result)
    if not env.cfg.keep_state:
        # A done fold is never resumed (its result.json says so): its resume state is dead weight.
        (out / STATE).unlink(missing_ok=True)
    return result
