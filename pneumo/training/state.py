"""A fold's resume state: where it stands (epoch, step, best so far, history) and everything that
trains it (weights, optimiser, schedule, scaler, EMA, sampler and augmentation streams, RNG),
saved so that a resumed fold continues bitwise where it stopped."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pneumo.models.checkpoint import load_state, save_state
from pneumo.training.engine import EpochTotals, Trainable
from pneumo.training.group import FoldGroup
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import BackgroundWriter

STATE_FORMAT = 1


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
    best_score: float  # the --select criterion's value at the best epoch (lower is better)
    best_epoch: int
    history: list[dict]


def save_progress(
    path: Path,
    fold: int,
    t: Trainable,
    p: Progress,
    aug: torch.Generator,
    device: torch.device,
    group: FoldGroup,
    writer: BackgroundWriter | None = None,
) -> None:
    """Write the fold's full training state atomically (a kill leaves the previous one); serialised
    here, written by `writer` in the background when given.

    In a group every member calls this (each one's RNG state is kept); the leader writes.
    """
    rng = _rng_state(device)
    members = group.gather_objects(rng) if group.size > 1 else None
    optimizer = t.shared.optimizer_state(t.optimizer) if t.shared is not None else t.optimizer.state_dict()
    if not group.is_leader:
        return
    model, ema = t.model.state_dict(), t.ema.module.state_dict() if t.ema is not None else None
    save_state(
        path,
        {
            "format": STATE_FORMAT,
            "fold": fold,
            "epoch": p.epoch,
            "totals": asdict(p.totals),
            "sampler_epoch_start": p.sampler_epoch_start,
            "augment": aug.get_state(),
            "rng": rng,
            **({"group_rng": members} if members else {}),
            "best_score": p.best_score,
            "best_epoch": p.best_epoch,
            "history": p.history,
            "model": model,
            "optimizer": optimizer,
            "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict(),
            **({"ema": ema} if ema is not None else {}),
        },
        writer,
    )


def restore_progress(
    path: Path, t: Trainable, aug: torch.Generator, device: torch.device, group: FoldGroup
) -> Progress:
    """Load a state written by save_progress into `t` and `aug`; where the fold stands.

    A member of a group of the size that saved the state takes its own RNG state back; on a
    group of another size every member continues from the leader's.
    """
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
    members = s.get("group_rng") or []
    _set_rng_state(members[group.rank] if len(members) == group.size > 1 else s["rng"], device)
    return Progress(
        s["epoch"],
        EpochTotals(**s["totals"]),
        s["sampler_epoch_start"],
        s.get("best_score", s.get("best_loss")),  # states written before --select held the val loss
        s["best_epoch"],
        s["history"],
    )
