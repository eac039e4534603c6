"""Failures lose nothing: NaN losses, full disks, unwritable outputs, hostile checkpoints."""

from __future__ import annotations

import errno
import json
import pickle
import resource
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TRAIN_ARGS, cli_env, launch_command, run_cli, train, train_args
from torch import nn

import pneumo.training.trainer
from pneumo.config import parse_args
from pneumo.models.checkpoint import load_state, load_weights_file, save_state
from pneumo.run_config import RunConfig
from pneumo.runner import run_training
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import BackgroundWriter, atomic_write_bytes


class _NanAfter(nn.Module):
    """The wrapped loss, then NaN from call `after + 1` on."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = self.inner(logits, target)
        return loss * float("nan") if self.calls > self.after else loss


def test_nan_loss_stops_only_that_fold_and_keeps_its_last_good_checkpoint(tiny_data, cache_dir, tmp_path, monkeypatch):
    current = {}
    real_seeds, real_build = pneumo.training.trainer.fold_seeds, pneumo.training.trainer.build_trainable

    def seeds(seed: int, fold: int):
        current["fold"] = fold
        return real_seeds(seed, fold)

    def build(cfg, device, mixed_precision, class_counts, n_steps, group):
        t = real_build(cfg, device, mixed_precision, class_counts, n_steps, group)
        if current["fold"] == 1:
            t.criterion = _NanAfter(t.criterion, after=n_steps + 1)  # NaN at step 2 of epoch 2
        return t

    monkeypatch.setattr(pneumo.training.trainer, "fold_seeds", seeds)
    monkeypatch.setattr(pneumo.training.trainer, "build_trainable", build)
    out = tmp_path / "nan"
    # Without mixing the loss is one criterion call per step (mixup/CutMix make it two).
    args = parse_args(train_args(tiny_data, out, cache_dir, "--mixup", "0", "--cutmix", "0")[1:])
    assert run_training(RunConfig.from_config(vars(args))) == 0

    failed = json.loads((out / "fold1" / "result.json").read_text())
    assert failed["status"] == "failed" and "epoch 2" in failed["reason"] and "nan" in failed["reason"]
    assert load_state(out / "fold1" / "state.pt")["epoch"] == 1
    _, meta = load_weights_file(out / "fold1" / "best.safetensors")
    assert meta["epoch"] == 1
    results = json.loads((out / "results.json").read_text())
    assert [f["fold"] for f in results["folds_failed"]] == [1]
    assert sorted(results["folds_done"]) == [0, 2, 3, 4]


def test_every_fold_diverging_is_a_clear_error(tiny_data, cache_dir, tmp_path):
    proc = train(tiny_data, tmp_path / "diverged", cache_dir, "--lr", "1e30", check=False)
    assert proc.returncode == 2
    assert "error: every fold failed" in proc.stderr
    assert proc.stdout.count("training loss became nan") == 5
    assert not (tmp_path / "diverged" / "results.json").exists()


def test_a_grouped_fold_that_diverges_fails_on_every_member_alike(tiny_data, cache_dir, tmp_path):
    out = tmp_path / "diverged-group"
    # Two processes, three folds: folds 0 and 1 alone, then fold 2 on both processes.
    proc = train(tiny_data, out, cache_dir, "--folds", "3", "--lr", "1e30", processes=2, check=False)
    assert proc.returncode != 0 and "error: every fold failed" in proc.stderr
    assert "fold 2: training on processes [0, 1]" in proc.stdout
    assert proc.stdout.count("fold 2 failed: epoch 1: training loss became nan") == 2  # both members, same step
    failed = json.loads((out / "fold2" / "result.json").read_text())
    assert failed["status"] == "failed" and "nan" in failed["reason"]


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize(("limit", "fails_at"), [(1_000_000, "best.safetensors"), (3_000_000, "state.pt")])
def test_a_full_disk_is_a_clear_error_leaving_no_partial_file(tiny_data, cache_dir, tmp_path, limit, fails_at):
    # A file size limit makes a checkpoint write fail like a full disk: the weights file (1.5 MB)
    # or the training state (4.6 MB).
    out = tmp_path / "full"
    cmd = launch_command(train_args(tiny_data, out, cache_dir))
    proc = subprocess.run(
        cmd, cwd=ROOT, env=cli_env(), capture_output=True, text=True, preexec_fn=_file_size_limit(limit), timeout=300
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: cannot write {out / 'fold0' / fails_at}: File too large; nothing was left behind" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(out.rglob("*.tmp"))
    assert not (out / "fold0" / fails_at).exists()


def _full_disk(*_args) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_keeps_the_old_file_when_the_disk_fills(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")

    monkeypatch.setattr("pneumo.utils.fsutil.os.replace", _full_disk)
    with pytest.raises(PneumoError, match="No space left on device"):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _held_fsync(monkeypatch) -> threading.Event:
    """os.fsync in pneumo's writes waits until the returned event is set."""
    release, fsync = threading.Event(), pneumo.utils.fsutil.os.fsync

    def held(fd: int) -> None:
        assert release.wait(30), "fsync never released"
        fsync(fd)

    monkeypatch.setattr("pneumo.utils.fsutil.os.fsync", held)
    return release


def test_the_background_writer_returns_before_the_fsync_and_lands_its_writes_in_order(tmp_path, monkeypatch):
    release, writer = _held_fsync(monkeypatch), BackgroundWriter()
    weights = torch.arange(4.0)
    save_state(tmp_path / "a.pt", {"w": weights}, writer)
    writer.write(tmp_path / "b.bin", b"second")
    weights.add_(1)  # training goes on as soon as save_state returns: the state was serialised already
    assert not (tmp_path / "a.pt").exists()  # still in its fsync, under a temporary name
    release.set()
    writer.close()
    assert torch.equal(load_state(tmp_path / "a.pt")["w"], torch.arange(4.0))
    assert (tmp_path / "b.bin").read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.bin"]


def test_a_failed_background_write_surfaces_at_the_wait_and_drops_the_writes_behind_it(tmp_path, monkeypatch):
    (tmp_path / "best.bin").write_bytes(b"old best")
    release, writer = _held_fsync(monkeypatch), BackgroundWriter()
    monkeypatch.setattr("pneumo.utils.fsutil.os.replace", _full_disk)
    writer.write(tmp_path / "best.bin", b"new best")
    writer.write(tmp_path / "state.bin", b"a state naming the new best")
    release.set()
    with pytest.raises(PneumoError, match=r"cannot write .*best.bin: No space left on device; nothing was left behind"):
        writer.wait()
    writer.close()
    assert [p.name for p in tmp_path.iterdir()] == ["best.bin"] and (tmp_path / "best.bin").read_bytes() == b"old best"


def test_an_output_dir_that_cannot_be_created_fails_before_any_work(tiny_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    cache = tmp_path / "cache"
    args = ["train.py", "--data-dir", str(tiny_data), "--output-dir", str(blocker / "run"), "--cache-dir", str(cache)]
    proc = run_cli([*args, *TRAIN_ARGS], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --output-dir {blocker / 'run'}: {blocker} is a file, not a directory; choose another path"
    ]
    assert not cache.exists()  # refused before decoding anything


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_carrying_a_pickle_payload_is_refused_not_run(tmp_path):
    marker = tmp_path / "payload-ran"
    _Payload.marker = str(marker)
    evil = tmp_path / "state.pt"
    torch.save({"model": {}, "surprise": _Payload()}, evil)
    with pytest.raises(PneumoError, match="refused to load"):
        load_state(evil)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):  # the same file does run code under plain pickle rules
        torch.load(evil, weights_only=True)
