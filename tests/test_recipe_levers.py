"""Recipe levers beyond augmentation: mixing, schedule, EMA, equalisation, TTA, fold subsets, init."""

from __future__ import annotations

import io
import json
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import train
from PIL import Image, ImageOps
from torch import nn

from pneumo.config import parse_args
from pneumo.data.cache import cache_key
from pneumo.data.images import Preprocess, decode, equalize
from pneumo.data.loader import train_batches
from pneumo.data.mixing import MixSpec, cutmix_box, mix_batch
from pneumo.metrics.calibration import balance_prior
from pneumo.models.checkpoint import load_weights_file
from pneumo.models.factory import create_model
from pneumo.models.inference import predict
from pneumo.training.build import make_scheduler
from pneumo.training.recipe import OptimSpec


def _batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).contiguous()
    return x, torch.tensor([i % 2 for i in range(n)])


def test_mixup_blends_each_image_with_its_reverse_by_lam():
    x, y = _batch()
    m = mix_batch(x, y, MixSpec(mixup=0.4), torch.Generator().manual_seed(0))
    assert 0 < m.lam < 1
    assert torch.allclose(m.x, x * m.lam + x.flip(0) * (1 - m.lam))
    assert torch.equal(m.targets, y) and torch.equal(m.partners, y.flip(0))


def test_cutmix_pastes_a_box_and_lam_is_the_share_left_unpasted():
    x, y = _batch()
    m = mix_batch(x, y, MixSpec(cutmix=1.0), torch.Generator().manual_seed(3))
    pasted = (m.x != x)[0, 0].float().mean().item()  # image 0 differs from its partner everywhere pasted
    assert m.lam == pytest.approx(1 - pasted)


def test_cutmix_box_covers_about_one_minus_lam_when_centred():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(200):
        y0, y1, x0, x1 = cutmix_box((100, 100), 0.64, rng)
        areas.append((y1 - y0) * (x1 - x0) / 1e4)
    assert max(areas) == pytest.approx(0.36, abs=0.01)  # sqrt(0.36) = 0.6 -> a 60x60 box unclipped


def test_mixing_is_reproducible_from_the_generator_and_both_methods_are_used():
    x, y = _batch()
    a = mix_batch(x, y, MixSpec(0.4, 1.0), torch.Generator().manual_seed(5))
    b = mix_batch(x, y, MixSpec(0.4, 1.0), torch.Generator().manual_seed(5))
    assert a.lam == b.lam and torch.equal(a.x, b.x)
    g = torch.Generator().manual_seed(1)
    kinds = {bool(((mix_batch(x, y, MixSpec(0.4, 1.0), g).x - x).abs() > 0).all()) for _ in range(40)}
    assert kinds == {True, False}  # mixup changes every pixel, cutmix only a box


def test_warmup_rises_linearly_then_follows_the_cosine_to_min_lr():
    cfg = parse_args(["--epochs", "4", "--warmup-epochs", "1", "--lr", "1e-3", "--min-lr", "1e-4"])
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = make_scheduler(opt, OptimSpec.from_config(vars(cfg)), n_steps=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for i in range(10):  # from lr / 10 towards lr in 10 steps; the cosine starts at lr
        assert lrs[i] == pytest.approx(1e-3 * (0.1 + 0.9 * i / 10))
    for i in range(10, 40):  # cosine over the remaining 30 steps
        assert lrs[i] == pytest.approx(1e-4 + 0.9e-3 * (1 + math.cos(math.pi * (i - 10) / 30)) / 2)


def test_equalize_hist_is_pillows_global_equalisation_and_clahe_is_local():
    rng = np.random.default_rng(0)
    arr = np.clip(rng.normal(100, 10, (64, 64)), 0, 255).astype(np.uint8)
    arr[:, 32:] += 60  # two regions of different brightness, each low in contrast
    img = Image.fromarray(arr, mode="L")
    assert np.array_equal(np.asarray(equalize(img, "hist")), np.asarray(ImageOps.equalize(img)))
    clahe = np.asarray(equalize(img, "clahe")).astype(float)
    assert np.array_equal(np.asarray(equalize(img, "none")), arr)
    # local equalisation stretches each region's own contrast
    assert clahe[:, :32].std() > 1.5 * arr[:, :32].std() and clahe[:, 32:].std() > 1.5 * arr[:, 32:].std()
    assert not np.array_equal(clahe, np.asarray(equalize(img, "hist")))


def test_preprocessing_is_part_of_the_decode_cache_key(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    pres = [Preprocess(e, q, c) for e in ("none", "hist", "clahe") for q in (0, 75) for c in (1.0, 0.8)]
    assert len({cache_key(tmp_path, ["a.png"], 64, p) for p in pres}) == 12
    assert cache_key(tmp_path, ["a.png"], 64, Preprocess()) == cache_key(tmp_path, ["a.png"], 64)


def test_jpeg_quality_recompresses_at_the_stored_resolution_before_resizing():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    plain = decode(buf.getvalue(), 32)
    squeezed = decode(buf.getvalue(), 32, Preprocess(jpeg_quality=20))
    jpeg = io.BytesIO()
    img.save(jpeg, "JPEG", quality=20)
    expected = np.asarray(Image.open(jpeg).convert("L").resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(squeezed, expected)
    assert not np.array_equal(squeezed, plain)


class _Halves(nn.Module):
    """Logits that say 'class 1' when the left half is brighter: a flip reverses the answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[-1] // 2
        d = x[..., :w].mean(dim=(1, 2, 3)) - x[..., w:].mean(dim=(1, 2, 3))
        return torch.stack([-d, d], dim=1) * 10


def test_flip_tta_averages_the_image_and_its_mirror():
    pixels = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    pixels[0, ..., :4] = 200
    batches = [(pixels, torch.arange(2))]
    plain = predict([(_Halves(), (0.0, 1.0))], batches, torch.device("cpu"), nullcontext)
    tta = predict([(_Halves(), (0.0, 1.0))], batches, torch.device("cpu"), nullcontext, "flip")
    assert plain[0, 0, 1] > 0.99
    np.testing.assert_allclose(tta[0], 0.5, atol=1e-6)  # the mirror says the opposite


def test_zero_init_last_off_keeps_the_last_batchnorm_of_each_block_at_one():
    on = create_model("resnet18", init="timm")
    off = create_model("resnet18", init="timm", zero_init_last=False)
    assert torch.count_nonzero(on.layer1[0].bn2.weight) == 0
    assert torch.all(off.layer1[0].bn2.weight == 1)


@pytest.fixture(scope="module")
def ema_run(tiny_data, cache_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ema"
    args = ("--train-folds", "3", "1", "--ema-decay", "0.9", "--tta", "flip", "--epochs", "1", "--keep-state")
    train(tiny_data, out, cache_dir, *args)
    return out


def test_train_folds_trains_only_those_folds_and_ensembles_them(ema_run):
    assert sorted(p.name for p in ema_run.glob("fold[0-9]")) == ["fold1", "fold3"]
    results = json.loads((ema_run / "results.json").read_text())
    assert results["folds_done"] == [1, 3]
    folds = json.loads((ema_run / "folds.json").read_text())
    assert folds["n_folds"] == 5  # the split is still the 5-fold one


def test_with_ema_the_checkpoint_holds_the_averaged_weights_not_the_last_ones(ema_run):
    state = torch.load(ema_run / "fold1" / "state.pt", weights_only=True)
    best, meta = load_weights_file(ema_run / "fold1" / "best.safetensors")
    assert meta["tta"] == "flip" and meta["epoch"] == 1  # one epoch: the best is the last, saved in state.pt
    for key, value in state["ema"].items():
        assert torch.equal(best[key], value), key
    key = next(iter(state["model"]))
    assert not torch.equal(state["ema"][key], state["model"][key])


def test_crop_keeps_the_central_fraction_before_letterboxing():
    arr = np.zeros((100, 200), np.uint8)
    arr[10:90, 20:180] = 255  # a white box 10 % in from every border
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    out = decode(buf.getvalue(), 80, Preprocess(crop=0.8))  # 160x80 crop: exactly the box, letterboxed
    assert out[20:60, :].min() == 255 and out[:20].max() == 0 and out[60:].max() == 0


def test_select_scores_each_epoch_by_its_criterion_lower_is_better():
    from pneumo.training.trainer import selection_score

    early = {"epoch": 2, "val": {"loss": 0.20, "roc_auc": 0.990}}
    late = {"epoch": 9, "val": {"loss": 0.25, "roc_auc": 0.995}}
    assert selection_score("loss", early) < selection_score("loss", late)
    assert selection_score("auc", late) < selection_score("auc", early)
    assert selection_score("last", late) < selection_score("last", early)


def _records(run: Path, fold: int) -> list[dict]:
    return [json.loads(line) for line in (run / f"fold{fold}" / "metrics.jsonl").read_text().splitlines()]


def test_select_auc_keeps_the_epoch_of_highest_validation_auc(tiny_data, cache_dir, tmp_path):
    out = tmp_path / "auc"
    train(tiny_data, out, cache_dir, "--train-folds", "0", "--epochs", "3", "--select", "auc")
    records = _records(out, 0)
    aucs = [r["val"]["roc_auc"] for r in records]
    result = json.loads((out / "fold0" / "result.json").read_text())
    assert result["best_epoch"] == records[aucs.index(max(aucs))]["epoch"]  # the first of equal maxima
    assert result["val"]["roc_auc"] == pytest.approx(max(aucs), abs=1e-9)


def test_select_last_keeps_the_last_epochs_weights(tiny_data, cache_dir, tmp_path):
    out = tmp_path / "last"
    train(tiny_data, out, cache_dir, "--train-folds", "1", "--epochs", "3", "--select", "last", "--keep-state")
    result = json.loads((out / "fold1" / "result.json").read_text())
    assert result["best_epoch"] == 3
    state = torch.load(out / "fold1" / "state.pt", weights_only=True)
    best, _ = load_weights_file(out / "fold1" / "best.safetensors")
    for key, value in state["ema"].items():
        assert torch.equal(best[key], value), key


@pytest.mark.parametrize(("balance", "expected"), [("sampler", 0.5), ("sqrt", 3**0.5 / (1 + 3**0.5)), ("none", 0.75)])
def test_class_balance_draws_each_class_at_its_prior(balance, expected):
    """A 1:3 pool: the sampler draws 50/50, sqrt sampling sqrt(3):1, no balancing the pool's 3:1
    (a plain shuffle: every image once); balance_prior names the same prevalence."""
    labels = np.array([0] * 1000 + [1] * 3000)
    indices = np.arange(10_000, 14_000)
    batches = train_batches(indices, labels, 2, 100, torch.Generator().manual_seed(0), balance)
    drawn = np.concatenate(batches) - 10_000
    assert len(batches) == 40
    assert labels[drawn].mean() == pytest.approx(expected, abs=0.02)
    assert balance_prior(balance, 0.75) == pytest.approx(expected)
    if balance == "none":
        assert sorted(drawn) == list(range(4000))
    again = train_batches(indices, labels, 2, 100, torch.Generator().manual_seed(0), balance)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
