"""Processes and folds: where each rank runs, fold groups' backend, meeting and waiting for other folds."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from pneumo.utils.processes import gpus_shared


def wait_for_everyone(accelerator) -> None:
    """Every process reaches this point. Accelerate's barrier names the device of local rank i
    (`cuda:i`), which does not exist when processes share GPUs: there, a plain gloo barrier."""
    if gpus_shared():
        torch.distributed.barrier()
    else:
        accelerator.wait_for_everyone()


def group_backend(device: torch.device, world: int) -> Callable[[tuple[int, ...]], str]:
    """The torch.distributed backend of each fold group: NCCL between distinct GPUs, else gloo.

    Every process learns where every rank runs (one exchange, at the call) so that all of
    them pick the same backend for each group.
    """
    here = (platform.node(), str(device))
    where = [here]
    if world > 1:
        where = [None] * world
        torch.distributed.all_gather_object(where, here)

    def backend(ranks: tuple[int, ...]) -> str:
        places = [where[r] for r in ranks]
        on_gpus = device.type == "cuda" and torch.distributed.is_nccl_available()
        return "nccl" if on_gpus and len(set(places)) == len(places) else "gloo"

    return backend


def wait_for(
    paths: list[Path],
    should_stop: Callable[[], bool],
    poll_s: float = 2.0,
    on_wait: Callable[[list[Path]], None] | None = None,
    on_poll: Callable[[list[Path]], None] | None = None,
) -> bool:
    """Wait until every path exists (other processes' folds); False if asked to stop first.

    Polls the (shared) filesystem rather than blocking in a collective, so signals are
    handled and no process-group timeout limits how long another fold may take. `on_wait`
    is called once when waiting starts, `on_poll` at every poll (it may raise).
    """
    announced = False
    while True:
        missing = [p for p in paths if not p.exists()]
        if not missing:
            return True
        if should_stop():
            return False
        if on_wait and not announced:
            on_wait(missing)
            announced = True
        if on_poll:
            on_poll(missing)
        time.sleep(poll_s)
