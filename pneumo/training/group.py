"""A fold's process group: the processes that train one fold data-parallel, and what they share.

Every member draws the fold's whole batch (same sampler and augmentation streams as one
process), trains on its own rows of it, and averages gradients inside the group only (DDP on
the group's own `torch.distributed` group; after backward, through shared memory, for CPU members
on one host).
The leader (the group's first rank) writes the fold's files. A group of one is the plain
one-process fold: nothing is wrapped or exchanged.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pneumo.training.plan import FoldPlan
from pneumo.training.shm_reduce import SharedGradients, shared_gradients

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3


@dataclass
class FoldGroup:
    """The global `ranks` training one fold; this process is `ranks[rank]`."""

    ranks: tuple[int, ...]
    rank: int = 0
    pg: Any = None  # the group's torch.distributed ProcessGroup; None for a group of one
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    averaging: str = ""  # how `data_parallel` averages gradients: "shared memory" or the backend's all-reduce

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def rows(self, n: int) -> slice:
        """This member's contiguous share of a batch of `n` rows (shares differ by at most one)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This member's share of an index list (evaluation is split, then gathered)."""
        return idx[self.rows(len(idx))]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the group, in place."""
        if self.size > 1:
            torch.distributed.all_reduce(t, group=self.pg)
        return t

    def barrier(self) -> None:
        """Return once every member has called this."""
        self.sum(torch.zeros(1, device=self.device))

    def gather_rows(self, local: np.ndarray, n: int) -> np.ndarray:
        """Every member's `shard` rows of an (n, ...) array, concatenated in rank order."""
        if self.size == 1:
            return local
        full = torch.zeros((n, *local.shape[1:]), dtype=torch.float64, device=self.device)
        full[self.rows(n)] = torch.as_tensor(local, dtype=torch.float64, device=self.device)
        return self.sum(full).cpu().numpy()

    def gather_objects(self, obj: Any) -> list[Any]:
        """`obj` of every member, in rank order."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        torch.distributed.all_gather_object(out, obj, group=self.pg)
        return out

    def meet(self, should_stop: Callable[[], bool], poll_s: float = 0.05) -> bool:
        """Wait until every member has arrived (they may still be training an earlier fold);
        False if asked to stop first. Polls, so a stop signal is handled while waiting."""
        if self.size == 1:
            return True
        work = torch.distributed.all_reduce(torch.ones(1, device=self.device), group=self.pg, async_op=True)
        while not work.is_completed():
            if should_stop():
                return False
            time.sleep(poll_s)
        work.wait()
        return True

    def data_parallel(
        self, model: nn.Module, find_unused: bool, ema: ModelEmaV3 | None = None, shard: bool = False
    ) -> tuple[nn.Module, SharedGradients | None]:
        """`model` (already on the device) made data-parallel over the group: what to call it through,
        and the shared-memory averaging (and, with `shard`, update of `model` and `ema`) to run after
        backward (None: DDP averages the gradients inside backward)."""
        shared = shared_gradients(model, self, ema, shard)
        if shared is not None:
            # CPU members on one host: the plain model, its gradients averaged through shared memory
            # after backward (nothing to overlap on a CPU), its weights the leader's to start with.
            for m in (model, *([ema.module] if ema is not None else [])):
                # (sharded, the parameters already are the leader's, in the shared memory)
                for t in m.buffers() if shared.sharded else m.state_dict().values():
                    torch.distributed.broadcast(t, src=self.ranks[0], group=self.pg)
            self.averaging = "shared memory" + (", sharded update" if shared.sharded else "")
            return model, shared
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # Buffers are averaged over the group at every step instead (engine), not copied from one member;
        # torch >= 2.13 names that forward_sync_buffers (broadcast_buffers is deprecated).
        no_sync = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        buffers = {"forward_sync_buffers": False} if no_sync else {"broadcast_buffers": False}
        ddp = DistributedDataParallel(
            model, device_ids=ids, process_group=self.pg, find_unused_parameters=find_unused, **buffers
        )
        for t in ema.module.state_dict().values() if ema is not None else ():
            torch.distributed.broadcast(t, src=self.ranks[0], group=self.pg)  # the leader's, as DDP's model is
        self.averaging = f"{torch.distributed.get_backend(self.pg)} all-reduce"
        return ddp, None


def sync_batchnorm(model: nn.Module, group: FoldGroup) -> nn.Module:
    """On CUDA, batch norm over the fold's whole batch (SyncBatchNorm on the group); elsewhere
    unchanged: each member normalises over its own rows (torch has no CPU SyncBatchNorm)."""
    if group.size == 1 or group.device.type != "cuda":
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group.pg)


def member_seed(seed: int, group: FoldGroup) -> int:
    """The global-RNG seed of a member (dropout, drop-path, MixStyle draws for its own rows)."""
    state = np.random.SeedSequence([seed, group.size, group.rank]).generate_state(1, np.uint64)[0]
    return int(state >> 1)


def make_groups(plan: FoldPlan, rank: int, device: torch.device, backend: Callable[[tuple[int, ...]], str]) -> dict:
    """fold -> FoldGroup of this process's folds. Every process must call this with the same plan:
    torch.distributed creates each group collectively, members or not."""
    mine = {}
    for g in plan.groups:
        pg = None
        if g.size > 1:
            pg = torch.distributed.new_group(list(g.ranks), backend=backend(g.ranks))
        if rank in g.ranks:
            mine[g.fold] = FoldGroup(g.ranks, g.ranks.index(rank), pg, device)
    return mine
