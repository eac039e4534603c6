"""Fold plans and data-parallel fold groups: the plan for common process counts, and a fold trained
on a group of processes taking the same steps as the fold trained by one process."""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from pneumo.data.augment import AugmentSpec
from pneumo.data.loader import train_batches
from pneumo.data.mixing import MixSpec, mix_batch
from pneumo.training.engine import EpochTotals, Trainable, batch_loss, train_one_epoch
from pneumo.training.group import FoldGroup
from pneumo.training.plan import fold_time, make_plan
from pneumo.training.shm_reduce import DISABLE_ENV


def _rounds(plan) -> list[list[tuple[int, tuple[int, ...]]]]:
    return [[(g.fold, g.ranks) for g in r] for r in plan.rounds]


def test_two_processes_five_folds_train_four_two_at_a_time_then_the_fifth_on_both():
    plan = make_plan(list(range(5)), 2)
    assert _rounds(plan) == [[(0, (0,)), (1, (1,))], [(2, (0,)), (3, (1,))], [(4, (0, 1))]]


def test_four_processes_five_folds_train_four_then_the_fifth_on_all_four():
    plan = make_plan(list(range(5)), 4)
    assert _rounds(plan) == [[(0, (0,)), (1, (1,)), (2, (2,)), (3, (3,))], [(4, (0, 1, 2, 3))]]


def test_ten_processes_five_folds_train_every_fold_on_a_pair():
    plan = make_plan(list(range(5)), 10)
    assert _rounds(plan) == [[(k, (2 * k, 2 * k + 1)) for k in range(5)]]


def test_eight_processes_five_folds_use_every_process_in_every_round():
    plan = make_plan(list(range(5)), 8)
    assert all(sum(g.size for g in r) == 8 for r in plan.rounds)
    # Four folds on pairs, then the fifth on all eight: 1/(2*0.9) + 1/(8*0.9**3) fold-times.
    assert plan.wall() == pytest.approx(fold_time(2) + fold_time(8))
    assert plan.wall() < make_plan(list(range(5)), 8, grouped=False).wall()


def test_every_fold_is_planned_exactly_once_and_no_process_twice_in_a_round():
    for processes in range(1, 13):
        for n_folds in range(1, 11):
            plan = make_plan(list(range(10, 10 + n_folds)), processes)
            assert sorted(g.fold for g in plan.groups) == list(range(10, 10 + n_folds))
            for r in plan.rounds:
                ranks = [x for g in r for x in g.ranks]
                assert len(ranks) == len(set(ranks)) and set(ranks) <= set(range(processes))


def test_round_robin_plan_is_fold_i_on_process_i_mod_n():
    plan = make_plan([0, 1, 2, 3, 4], 2, grouped=False)
    assert [(g.fold, g.ranks) for g in plan.groups] == [(k, (k % 2,)) for k in range(5)]
    assert plan.wall() == 3 and plan.ideal() == 2.5


def test_group_rows_cover_a_batch_once_in_order():
    for size in (1, 2, 3, 4):
        for n in (7, 8, 32):
            rows = [FoldGroup(tuple(range(size)), r).rows(n) for r in range(size)]
            assert [i for s in rows for i in range(n)[s]] == list(range(n))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("mixing", [False, True])
def test_group_loss_shares_average_to_the_whole_batch_loss(weighted, mixing):
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(9, 2, generator=g), torch.randint(0, 2, (9,), generator=g)
    weight = torch.tensor([2.0, 0.5]) if weighted else None
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)
    mixed = mix_batch(torch.zeros(9, 1, 4, 4), y, MixSpec(0.4, 0.0), g) if mixing else None
    whole = (
        criterion(out, y)
        if mixed is None
        else mixed.lam * criterion(out, y) + (1 - mixed.lam) * criterion(out, mixed.partners)
    )
    for size in (2, 3):
        shares = []
        for r in range(size):
            rows = FoldGroup(tuple(range(size)), r).rows(9)
            shares.append(batch_loss(criterion, out[rows], y, mixed, rows, size))
        assert float(sum(shares) / size) == pytest.approx(float(whole), rel=1e-6)


# A fold trained data-parallel must take the same optimiser steps as the fold alone. Batch norm
# is what makes them differ on CPU (each member normalises over its own rows), so this model has
# GroupNorm: everything else (sampling, augmentation, mixing, loss shares, gradient averaging,
# the shared loss and predictions) must then agree to float rounding.
STEPS, BATCH, SIZE = 4, 8, 24


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def _trainable(model: nn.Module, forward: nn.Module, opt: torch.optim.Optimizer, shared, **kw) -> Trainable:
    """A Trainable on a cosine schedule over STEPS, without a grad scaler."""
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return Trainable(model, forward, opt, schedule, scaler, plain_eval=shared is not None, shared=shared, **kw)


def _epoch(t: Trainable, group: FoldGroup) -> EpochTotals:
    """Train `t` for STEPS steps of a fixed seeded epoch (augmented, mixed when t says so)."""
    rng = np.random.default_rng(1)
    pixels = torch.from_numpy(rng.integers(0, 255, (40, 1, SIZE, SIZE), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, 2, 40))
    batches = train_batches(np.arange(40), labels.numpy(), 2, BATCH, torch.Generator().manual_seed(2), "sqrt")
    totals = EpochTotals()
    aug = torch.Generator().manual_seed(3)
    loader = [(pixels[b], torch.from_numpy(b)) for b in batches[:STEPS]]
    train_one_epoch(
        t, loader, labels, (100.0, 50.0), aug, totals, torch.device("cpu"), contextlib.nullcontext, group=group
    )
    return totals


def _train(group: FoldGroup) -> tuple[dict, EpochTotals]:
    model = _model().to(memory_format=torch.channels_last)
    forward, shared = (model, None) if group.size == 1 else group.data_parallel(model, False, shard=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)  # unlike Adam, sensitive to the gradient scale
    t = _trainable(
        model,
        forward,
        opt,
        shared,
        criterion=nn.CrossEntropyLoss(weight=torch.tensor([1.5, 0.75]), label_smoothing=0.1),
        augment=AugmentSpec(
            scale_min=0.85, scale_max=1.2, gamma=0.6, blur_p=0.5, blur_sigma=1.0, noise_p=0.5, noise_std=0.03
        ),
        mix=MixSpec(0.4, 1.0),
    )
    totals = _epoch(t, group)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, totals


def _member(rank: int, size: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    group = FoldGroup(tuple(range(size)), rank, torch.distributed.new_group(list(range(size))))
    weights, totals = _train(group)
    if rank == 0:
        saved = {"weights": weights, "loss": totals.loss, "preds": totals.preds, "labels": totals.labels}
        torch.save({**saved, "averaging": group.averaging}, out)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("size", [2, 3])
def test_a_fold_on_a_group_takes_the_same_steps_as_the_fold_alone(tmp_path: Path, size: int):
    torch.set_num_threads(1)
    alone, totals = _train(FoldGroup((0,)))
    out = tmp_path / "group.pt"
    mp.spawn(_member, args=(size, str(tmp_path / "store"), str(out)), nprocs=size, join=True)
    grouped = torch.load(out)
    assert grouped["averaging"] == "shared memory, sharded update"
    assert grouped["labels"] == totals.labels and grouped["preds"] == totals.preds
    assert grouped["loss"] == pytest.approx(totals.loss, rel=1e-5)
    for name, w in alone.items():
        torch.testing.assert_close(grouped["weights"][name], w, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(w, _model().state_dict()[n]) for n, w in alone.items())  # it did train


def test_the_docs_table_of_fold_plans_is_what_the_planner_makes():
    readme = (Path(__file__).resolve().parent.parent / "docs" / "scale.md").read_text()
    table = readme.split("<!-- fold-plans -->")[1].split("<!-- /fold-plans -->")[0]
    rows = [line.split(" | ") for line in table.strip().splitlines()[2:]]
    assert [int(r[0].strip("| ")) for r in rows] == [1, 2, 4, 5, 8, 10]
    for processes, text, wall, ideal, robin in rows:
        n = int(processes.strip("| "))
        plan, old = make_plan(list(range(5)), n), make_plan(list(range(5)), n, grouped=False)
        if n > 1:
            assert text.replace("\\|", "|") == plan.describe()
        assert (float(wall), float(ideal), float(robin.strip("| "))) == (
            round(plan.wall(), 3),
            plan.ideal(),
            old.wall(),
        )


# The shared-memory average against gloo's own all-reduce of the same local gradients, over four
# steps (both buffer parities): a channels-last convolution (strided gradients), frozen when the
# model is wrapped and in the third step (parameters without gradients are skipped, alike on every
# member; a parameter frozen at the start is averaged once it trains).
def _average_member(rank: int, size: int, store: str, out: str, disabled_rank: int) -> None:
    torch.set_num_threads(1)
    if rank == disabled_rank:
        os.environ[DISABLE_ENV] = "1"
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    group = FoldGroup(tuple(range(size)), rank, torch.distributed.new_group(list(range(size))))
    torch.manual_seed(rank)  # different weights on each member: the leader's are broadcast
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 36, 64), nn.Linear(64, 2))
    model.to(memory_format=torch.channels_last)
    if disabled_rank < 0:  # (DDP only ever averages the parameters that train when it wraps the model)
        model[0].requires_grad_(False)  # frozen when wrapped, trained from the first step on
    forward, shared = group.data_parallel(model, find_unused=True)
    plain = copy.deepcopy(model)
    left = shared is not None and any(path.exists() for path in shared.paths)
    report = {"shared": shared is not None, "left": left, "steps": [], "conv_grad_stride": None}
    for step in range(4):
        model[0].requires_grad_(step != 2), plain[0].requires_grad_(step != 2)
        x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(100 * step + rank))
        model.zero_grad(set_to_none=True), plain.zero_grad(set_to_none=True)
        forward(x.to(memory_format=torch.channels_last)).square().mean().backward()
        if shared is not None:  # with the step's exchange, carried in the slots or, too long for them, by gloo
            n = 7 if step % 2 == 0 else shared.capacity + 1
            summed = shared.average(torch.arange(float(n)) * (rank + 1))
            report["exchange_ok"] = report.get("exchange_ok", True) and torch.equal(
                summed, torch.arange(float(n)) * sum(range(1, size + 1))
            )
        plain(x.to(memory_format=torch.channels_last)).square().mean().backward()
        oracle = []
        for p in plain.parameters():
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad, group=group.pg)
            oracle.append(None if p.grad is None else p.grad / size)
        got = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
        report["steps"].append(list(zip(got, oracle, strict=True)))
        report["conv_grad_stride"] = report["conv_grad_stride"] or model[0].weight.grad.stride()
    report["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(report, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize(("size", "disabled_rank"), [(2, -1), (3, -1), (2, 1)])
def test_shared_memory_averaging_matches_gloos_all_reduce(tmp_path: Path, size: int, disabled_rank: int):
    out = tmp_path / "average.pt"
    mp.spawn(_average_member, args=(size, str(tmp_path / "store"), str(out), disabled_rank), nprocs=size, join=True)
    reports = [torch.load(f"{out}.{rank}") for rank in range(size)]
    report = reports[0]
    assert report["shared"] == (disabled_rank < 0)  # one member unable: no member uses it
    assert all(r.get("exchange_ok", not r["shared"]) for r in reports)
    assert not report["left"]  # the file behind the buffer is unlinked once mapped
    assert len(report["steps"]) == 4
    assert report["conv_grad_stride"] == (27, 1, 9, 3)  # channels-last: the strided slot views are used
    assert [g is None for g, _ in report["steps"][2]] == [True, True, False, False, False, False]
    for step in report["steps"]:
        for got, want in step:
            if want is None:
                assert got is None
            elif size == 2:  # a + b in either order: bitwise gloo's
                assert torch.equal(got, want)
            else:
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for other in reports[1:]:  # every member ends with the same weights
        for name, w in report["weights"].items():
            assert torch.equal(other["weights"][name], w), name


# The sharded update (each member sums, steps and EMA-updates only the parameters it owns, the weights
# shared in memory) against every member updating everything: AdamW and the EMA are elementwise per
# parameter, so the two must agree bitwise, the optimiser state gathered for a checkpoint included.
def _adam_train(group: FoldGroup, shard: bool) -> dict:
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    ).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05, fused=True)
    ema = ModelEmaV3(model, decay=0.9, use_warmup=True, warmup_power=3 / 4)
    forward, shared = group.data_parallel(model, False, ema=ema, shard=shard)
    t = _trainable(model, forward, opt, shared, criterion=nn.CrossEntropyLoss(), ema=ema)
    _epoch(t, group)
    state = shared.optimizer_state(opt)
    return {
        "sharded": shared.sharded,
        "model": {k: v.clone() for k, v in model.state_dict().items()},
        "ema": {k: v.clone() for k, v in ema.module.state_dict().items()},
        "optimizer": copy.deepcopy(state) if group.is_leader else None,
        "own_state": len(opt.state),
    }


def _shard_member(rank: int, size: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    group = FoldGroup(tuple(range(size)), rank, torch.distributed.new_group(list(range(size))))
    torch.save({"full": _adam_train(group, False), "sharded": _adam_train(group, True)}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("size", [2, 3])
def test_a_sharded_update_is_bitwise_every_member_updating_everything(tmp_path: Path, size: int):
    out = tmp_path / "shard.pt"
    mp.spawn(_shard_member, args=(size, str(tmp_path / "store"), str(out)), nprocs=size, join=True)
    runs = [torch.load(f"{out}.{rank}") for rank in range(size)]
    full, sharded = runs[0]["full"], runs[0]["sharded"]
    assert sharded["sharded"] and not full["sharded"]
    n_params = 6
    assert full["own_state"] == n_params and all(r["sharded"]["own_state"] < n_params for r in runs)
    assert sum(r["sharded"]["own_state"] for r in runs) == n_params  # each parameter stepped by one member
    for kind in ("model", "ema"):
        for name, w in full[kind].items():
            assert torch.equal(sharded[kind][name], w), (kind, name)
            assert all(torch.equal(r["sharded"][kind][name], w) for r in runs[1:]), (kind, name)
    assert sharded["optimizer"]["state"].keys() == full["optimizer"]["state"].keys()
    for k, entry in full["optimizer"]["state"].items():
        for key, value in entry.items():
            assert torch.equal(sharded["optimizer"]["state"][k][key], value), (k, key)
    assert any(not torch.equal(w, full["ema"][n]) for n, w in full["model"].items())  # the EMA lags: it did train
