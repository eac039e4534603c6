"""Gradient averaging through shared memory for a CPU fold group on one host.

On a CPU each member has its share of the cores, so nothing can overlap a backward pass: DDP's
bucketing and hooks then only cost time (its reducer alone adds ~40 ms to a ~400 ms resnet18 step on
one core), and gloo all-reduces over TCP loopback even between processes of one machine. A CPU
group on one host therefore trains the plain model and averages after backward: every member
writes its gradients, divided by the group's size, into its own slot of one shared buffer, meets
the others at one barrier, and sums the slots in rank order into its gradients: two memory passes.
Every member computes the same sum in the same order, so the members' weights stay bitwise equal;
for two members it equals gloo's average (halving is exact and a + b is commutative).

Used automatically for CPU groups whose members share a host and a /dev/shm with room for the
buffer; `PNEUMO_SHM_DISABLE=1` (like NCCL_SHM_DISABLE) keeps DDP on gloo's all-reduce.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pneumo.training.group import FoldGroup

SHM_DIR = Path("/dev/shm")
DISABLE_ENV = "PNEUMO_SHM_DISABLE"


class SharedGradients:
    """The shared buffer of one group: [step parity, member, gradient element]. Two parities let one
    barrier per step suffice: a member rewrites a parity's slots only two steps later, after every
    member has passed the next step's barrier, i.e. has finished reading them."""

    def __init__(self, group: FoldGroup, params: list[nn.Parameter]) -> None:
        self.group, self.params = group, params
        numel = sum(p.numel() for p in params)
        path = [str(SHM_DIR / f"pneumo-grad-{uuid.uuid4().hex}")] if group.is_leader else [None]
        torch.distributed.broadcast_object_list(path, src=group.ranks[0], group=group.pg)
        self.path = Path(path[0])
        try:
            flat = torch.from_file(str(self.path), shared=True, size=2 * group.size * numel, dtype=params[0].dtype)
            group.barrier()  # every member has mapped the file: the leader unlinks it, so nothing is left behind
        finally:
            if group.is_leader:
                self.path.unlink(missing_ok=True)
        self.slots = flat.view(2, group.size, numel)
        self.parity = 0

    def average(self) -> None:
        """Average the parameters' gradients over the group, in place; every member calls it after
        backward. Parameters without a gradient (a frozen backbone) are skipped, alike on every member."""
        grads = [p.grad for p in self.params if p.grad is not None]
        slots, size, offset = self.slots[self.parity], self.group.size, 0
        views = []
        for g in grads:
            views.append([_like(slot, g, offset) for slot in slots])
            offset += g.numel()
        # Two memory passes: scale into the own slot, then sum the slots into the gradient. For two
        # members a / 2 + b / 2 is bitwise (a + b) / 2 (halving is exact), i.e. gloo's average.
        for g, v in zip(grads, views, strict=True):
            torch.div(g, size, out=v[self.group.rank])
        self.group.barrier()
        for g, v in zip(grads, views, strict=True):
            torch.add(v[0], v[1], out=g)
            for member in range(2, size):
                g.add_(v[member])
        self.parity = 1 - self.parity


def _like(slot: torch.Tensor, g: torch.Tensor, offset: int) -> torch.Tensor:
    """A view of `slot` at `offset` shaped like `g`, with g's strides when g is dense (channels-last
    convolution weights), so that both passes run straight through memory."""
    if g.is_contiguous() or (g.dim() == 4 and g.is_contiguous(memory_format=torch.channels_last)):
        return slot.as_strided(g.shape, g.stride(), slot.storage_offset() + offset)
    return slot[offset : offset + g.numel()].view(g.shape)


def _local_ok(bytes_needed: int) -> bool:
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0") or not SHM_DIR.is_dir():
        return False
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize >= 2 * bytes_needed  # leave the host at least as much as we take


def shared_gradients(model: nn.Module, group: FoldGroup) -> SharedGradients | None:
    """The shared-memory averaging of `model`'s gradients when every member can use it (decided
    together: some members averaging here and others not would deadlock); None otherwise."""
    if group.size == 1 or group.device.type != "cpu":
        return None
    params = list(model.parameters())  # frozen ones too: a fine-tuning schedule may unfreeze them later
    dtypes = {p.dtype for p in params}
    numel = sum(p.numel() for p in params)
    itemsize = params[0].element_size() if len(dtypes) == 1 else 0
    local = (socket.gethostname(), len(dtypes) == 1 and _local_ok(2 * group.size * numel * itemsize))
    votes = group.gather_objects(local)
    if len({host for host, _ in votes}) != 1 or not all(ok for _, ok in votes):
        return None
    return SharedGradients(group, params)
