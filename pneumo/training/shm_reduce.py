"""Gradient averaging and a sharded update through shared memory, for a CPU fold group on one host.

On a CPU each member has its share of the cores, so nothing can overlap a backward pass: DDP's
bucketing and hooks then only cost time (its reducer alone adds ~40 ms to a ~400 ms resnet18 step on
one core), and gloo all-reduces over TCP loopback even between processes of one machine. A CPU
group on one host therefore trains the plain model and averages after backward: every member
writes its gradients, divided by the group's size, into its own slot of one shared buffer, meets
the others at one barrier, and sums the slots in rank order into its gradients. Every member
computes the same sum in the same order; for two members it equals gloo's average (halving is exact
and a + b is commutative).

Sharded (the default when no fp16 grad scaler must see every gradient): the weights, and the EMA's,
live in the shared buffer too, and each parameter has one owner. A member sums the gradients of the
parameters it owns only, and the optimiser and the EMA update only those (torch's optimisers skip
parameters without a gradient; a parameter's update is the same whichever others share the call),
then the members meet again and every one reads the whole updated model from the shared memory:
the optimiser step, the EMA update and half the averaging are no longer done twice. Each member
keeps the optimiser state of what it owns; `optimizer_state` gathers it for a checkpoint.

Used automatically for CPU groups whose members share a host and a /dev/shm with room for the
buffer; `PNEUMO_SHM_DISABLE=1` (like NCCL_SHM_DISABLE) keeps DDP on gloo's all-reduce.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from timm.utils import ModelEmaV3

    from pneumo.training.group import FoldGroup

SHM_DIR = Path("/dev/shm")
DISABLE_ENV = "PNEUMO_SHM_DISABLE"


EXCHANGE_ROWS = 65536  # batch rows whose predictions the slots' tail can carry (larger: gloo's all-reduce)


class SharedGradients:
    """The shared memory of one group: the slots [step parity, member, element], each a member's
    gradients followed by room for the step's exchange (loss, predictions, batch-norm statistics),
    and, when sharded, the weights and the EMA's weights, each in a file of its own (a checkpoint of
    their views then holds them alone: torch.save writes a view's whole storage). Two parities let one barrier per step
    suffice for the averaging: a member rewrites a parity's slots only two steps later, after every
    member has passed the next step's barrier, i.e. has finished reading them."""

    def __init__(self, group: FoldGroup, model: nn.Module, ema: ModelEmaV3 | None = None, shard: bool = False) -> None:
        self.group, self.params = group, list(model.parameters())
        numel = sum(p.numel() for p in self.params)
        models = [model, *([ema.module] if ema is not None else [])] if shard else []
        self.numel, self.capacity = numel, 2 + EXCHANGE_ROWS + sum(b.numel() for b in model.buffers())
        slot, dtype = numel + self.capacity, self.params[0].dtype
        self.paths: list[Path] = []  # the /dev/shm files, unlinked as soon as every member has mapped them
        self.slots = self._shared(2 * group.size * slot, dtype).view(2, group.size, slot)
        self.parity = 0
        self.owner = _owners(self.params, group.size) if shard else [group.rank] * len(self.params)
        names = [name for name, _ in model.named_parameters()]
        self.others = {n for n, o in zip(names, self.owner, strict=True) if o != group.rank}  # their owners update them
        for m in models:
            _share_weights(m, self._shared(numel, dtype), group)
        self.sharded = bool(models)

    def _shared(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A 1-d tensor of `numel` elements that every member maps from one /dev/shm file."""
        path = [str(SHM_DIR / f"pneumo-grad-{uuid.uuid4().hex}")] if self.group.is_leader else [None]
        torch.distributed.broadcast_object_list(path, src=self.group.ranks[0], group=self.group.pg)
        self.paths.append(Path(path[0]))
        try:
            flat = torch.from_file(path[0], shared=True, size=numel, dtype=dtype)
            self.group.barrier()  # every member has mapped the file: the leader unlinks it, leaving nothing behind
        finally:
            if self.group.is_leader:
                self.paths[-1].unlink(missing_ok=True)
        return flat

    def average(self, exchange: torch.Tensor | None = None) -> torch.Tensor | None:
        """Average the parameters' gradients over the group, in place; every member calls it after
        backward. Sharded, a member keeps only the averaged gradients of the parameters it owns.
        Parameters without a gradient (a frozen backbone) are skipped, alike on every member.
        `exchange` (1-d), summed over the group at the same meeting, is returned."""
        carried = exchange is not None and len(exchange) <= self.capacity and exchange.dtype == self.slots.dtype
        tail = slice(self.numel, self.numel + (len(exchange) if exchange is not None else 0))
        trained = [(k, p) for k, p in enumerate(self.params) if p.grad is not None]
        slots, size, offset = self.slots[self.parity], self.group.size, 0
        views = []
        for _, p in trained:
            views.append([_like(slot, p.grad, offset) for slot in slots])
            offset += p.numel()
        # Two memory passes: scale into the own slot, then sum the slots into the gradient. For two
        # members a / 2 + b / 2 is bitwise (a + b) / 2 (halving is exact), i.e. gloo's average.
        for (_, p), v in zip(trained, views, strict=True):
            torch.div(p.grad, size, out=v[self.group.rank])
        if carried:
            slots[self.group.rank, tail] = exchange
        self.group.barrier()
        summed = slots[:, tail].sum(0) if carried else None
        for (k, p), v in zip(trained, views, strict=True):
            if self.owner[k] != self.group.rank:
                p.grad = None  # its owner updates it
                continue
            torch.add(v[0], v[1], out=p.grad)
            for member in range(2, size):
                p.grad.add_(v[member])
        self.parity = 1 - self.parity
        if exchange is not None and not carried:
            summed = self.group.sum(exchange)
        return summed

    @torch.no_grad()
    def update_ema(self, ema: ModelEmaV3, model: nn.Module, step: int) -> None:
        """ModelEmaV3.update(model, step) on the parameters this member owns (sharded), and on the
        buffers, which every member holds alike."""
        if not self.sharded:
            ema.update(model, step=step)
            return
        ema_v, model_v = [], []
        for (name, e), m in zip(ema.module.state_dict().items(), model.state_dict().values(), strict=True):
            if name in self.others:
                continue
            if e.is_floating_point():
                ema_v.append(e), model_v.append(m)
            else:
                e.copy_(m)
        ema._foreach_lerp_(ema_v, model_v, weight=1.0 - ema.get_decay(step))

    def publish(self) -> None:
        """Sharded: return once every member has updated what it owns, so every member's next forward
        sees the whole updated model."""
        if self.sharded:
            self.group.barrier()

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """`optimizer.state_dict()` with every parameter's state from its owner (every member calls
        this, between steps; the leader's copy is the whole state, for the checkpoint). Tensors
        shaped like their parameter (Adam's moments, momentum) go through the slots, idle between
        steps; the rest (step counts) through gloo."""
        state = optimizer.state_dict()
        if not self.sharded:
            return state
        index = {id(p): k for k, p in enumerate(self.params)}
        offsets = [0]
        for p in self.params:
            offsets.append(offsets[-1] + p.numel())
        ordered = [p for g in optimizer.param_groups for p in g["params"]]
        store, regions = self.slots.view(-1), self.slots.numel() // self.numel
        mine: dict[int, dict[str, Any]] = {}
        for k, entry in state["state"].items():
            i = index[id(ordered[k])]
            if self.owner[i] != self.group.rank:
                continue
            mine[k] = {}
            for j, (key, v) in enumerate(sorted(entry.items())):
                if j < regions and _slot_shaped(v, self.params[i], store.dtype):
                    at = store.storage_offset() + j * self.numel + offsets[i]
                    store.as_strided(v.shape, v.stride(), at).copy_(v)
                    v = (_IN_SLOTS, at, v.stride())
                mine[k][key] = v
        merged: dict[int, dict[str, Any]] = {}
        for part in self.group.gather_objects(mine):  # sent after each member's copies
            merged.update(part)
        if self.group.is_leader:
            for k, entry in merged.items():
                for key, v in entry.items():
                    if isinstance(v, tuple) and len(v) == 3 and v[0] == _IN_SLOTS:
                        entry[key] = store.as_strided(ordered[k].shape, v[2], v[1]).clone()
        self.group.barrier()  # the leader has read the slots: the next step may write them
        state["state"] = dict(sorted(merged.items()))
        return state


_IN_SLOTS = "pneumo:in-shared-slots"


def _slot_shaped(v: Any, p: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether optimiser state `v` is a dense tensor shaped like `p` that the slots can carry."""
    return torch.is_tensor(v) and v.shape == p.shape and v.dtype == dtype and v.device.type == "cpu" and _dense(v)


def _dense(t: torch.Tensor) -> bool:
    """Contiguous, or a channels-last convolution weight: stored without gaps, in some order."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _owners(params: list[nn.Parameter], size: int) -> list[int]:
    """Each parameter's owning member: the largest first, each to the least loaded member."""
    load, owner = [0] * size, [0] * len(params)
    for k in sorted(range(len(params)), key=lambda k: (-params[k].numel(), k)):
        owner[k] = min(range(size), key=lambda r: (load[r], r))
        load[owner[k]] += params[k].numel()
    return owner


def _share_weights(model: nn.Module, flat: torch.Tensor, group: FoldGroup) -> None:
    """Move `model`'s parameters into `flat` (shared memory), starting from the leader's values."""
    views, offset = [], 0
    for p in model.parameters():
        views.append(_like(flat, p.data, offset))
        offset += p.numel()
    if group.is_leader:
        for p, v in zip(model.parameters(), views, strict=True):
            v.copy_(p.data)
    group.barrier()
    for p, v in zip(model.parameters(), views, strict=True):
        p.data = v


def _like(slot: torch.Tensor, g: torch.Tensor, offset: int) -> torch.Tensor:
    """A view of `slot` at `offset` shaped like `g`, with g's strides when g is dense (channels-last
    convolution weights), so that both passes run straight through memory."""
    if _dense(g):
        return slot.as_strided(g.shape, g.stride(), slot.storage_offset() + offset)
    return slot[offset : offset + g.numel()].view(g.shape)


def _local_ok(bytes_needed: int) -> bool:
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0") or not SHM_DIR.is_dir():
        return False
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize >= 2 * bytes_needed  # leave the host at least as much as we take


def shared_gradients(
    model: nn.Module, group: FoldGroup, ema: ModelEmaV3 | None = None, shard: bool = False
) -> SharedGradients | None:
    """The shared-memory averaging of `model`'s gradients (sharded: and update) when every member can
    use it (decided together: some members averaging here and others not would deadlock); None otherwise."""
    if group.size == 1 or group.device.type != "cpu":
        return None
    params = list(model.parameters())  # frozen ones too: a fine-tuning schedule may unfreeze them later
    dtypes = {p.dtype for p in params}
    numel = sum(p.numel() for p in params)
    itemsize = params[0].element_size() if len(dtypes) == 1 else 0
    copies = 2 * group.size + (1 + (ema is not None) if shard else 0)  # (the slots' exchange tails aside)
    local = (socket.gethostname(), len(dtypes) == 1 and _local_ok(copies * numel * itemsize))
    votes = group.gather_objects(local)
    if len({host for host, _ in votes}) != 1 or not all(ok for _, ok in votes):
        return None
    return SharedGradients(group, model, ema, shard)
