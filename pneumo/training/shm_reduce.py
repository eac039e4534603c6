"""Gradient averaging through shared memory for a CPU fold group on one host.

gloo all-reduces a group's gradients over TCP loopback, even between processes of one machine: on a
2-core CPU that is ~60 ms of a ~450 ms resnet18 step that cannot hide behind a backward pass that
already uses every core. This DDP communication hook instead has every member write each gradient
bucket, divided by the group's size, into its own slot of one shared buffer, meet the others at a
barrier, and sum the slots in rank order into the bucket: two memory passes. Every member computes
the same sum in the same order, so the members' weights stay bitwise equal; for two members it
equals gloo's average (halving is exact and a + b is commutative).

Used automatically for CPU groups whose members share a host and a /dev/shm with room for the
buffer; `PNEUMO_SHM_DISABLE=1` (like NCCL_SHM_DISABLE) keeps gloo's all-reduce.
"""

# No `from __future__ import annotations`: DDP checks the hook's annotations as objects.
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
    barrier per bucket suffice: a member rewrites a parity's slots only two steps later, after every
    member has passed the next step's barrier for that bucket, i.e. has finished reading them."""

    def __init__(self, group: "FoldGroup", numel: int, dtype: torch.dtype) -> None:
        self.group, self.numel, self.dtype = group, numel, dtype
        path = [str(SHM_DIR / f"pneumo-grad-{uuid.uuid4().hex}")] if group.is_leader else [None]
        torch.distributed.broadcast_object_list(path, src=group.ranks[0], group=group.pg)
        self.path = Path(path[0])
        try:
            flat = torch.from_file(str(self.path), shared=True, size=2 * group.size * numel, dtype=dtype)
            group.barrier()  # every member has mapped the file: the leader unlinks it, so nothing is left behind
        finally:
            if group.is_leader:
                self.path.unlink(missing_ok=True)
        self.slots = flat.view(2, group.size, numel)
        self.parity, self.offset = 0, 0

    def hook(self, _state: object, bucket: torch.distributed.GradBucket) -> torch.futures.Future[torch.Tensor]:
        """DDP communication hook: `bucket`'s gradients averaged over the group, in place."""
        buf = bucket.buffer()
        lo, hi = self.offset, self.offset + buf.numel()
        if hi > self.numel or buf.dtype != self.dtype:
            raise RuntimeError(f"gradient bucket {bucket.index()} does not fit the shared buffer ({hi} > {self.numel})")
        slots = self.slots[self.parity, :, lo:hi]
        # Two memory passes: scale into the slot, then sum the slots into the bucket. For two members
        # a / 2 + b / 2 is bitwise (a + b) / 2 (halving is exact), i.e. gloo's average.
        torch.div(buf.reshape(-1), self.group.size, out=slots[self.group.rank])
        self.group.barrier()
        flat = buf.view(-1)
        torch.add(slots[0], slots[1], out=flat)
        for member in range(2, self.group.size):
            flat.add_(slots[member])
        self.offset = hi
        if bucket.is_last():  # DDP reduces buckets in index order; the next bucket starts a new step
            self.parity, self.offset = 1 - self.parity, 0
        fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
        fut.set_result(buf)
        return fut


def _local_ok(bytes_needed: int) -> bool:
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0") or not SHM_DIR.is_dir():
        return False
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize >= 2 * bytes_needed  # leave the host at least as much as we take


def use_shared_memory(ddp: nn.Module, group: "FoldGroup") -> SharedGradients | None:
    """Register the shared-memory hook on `ddp` when every member can use it (decided together:
    a hook on some members only would deadlock); its buffer if registered."""
    if group.size == 1 or group.device.type != "cpu":
        return None
    params = [p for p in ddp.parameters() if p.requires_grad]
    dtypes = {p.dtype for p in params}
    numel = sum(p.numel() for p in params)
    itemsize = torch.empty((), dtype=next(iter(dtypes))).element_size() if len(dtypes) == 1 else 0
    local = (socket.gethostname(), len(dtypes) == 1 and _local_ok(2 * group.size * numel * itemsize))
    votes = group.gather_objects(local)
    if len({host for host, _ in votes}) != 1 or not all(ok for _, ok in votes):
        return None
    shared = SharedGradients(group, numel, params[0].dtype)
    ddp.register_comm_hook(None, shared.hook)
    return shared
