"""evaluate.py --adapt-on: label-free site adaptation (AdaBN, the site's prior) of a run's fold models."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TRAIN_ARGS, train
from PIL import Image, ImageFilter
from torch import nn

import pneumo.evaluation.evaluate as evaluate_module
from pneumo.data.synthetic import generate
from pneumo.evaluate_cli import main
from pneumo.evaluation.adapt import MIN_IMAGES, adapt_batchnorm, adapt_decision, batchnorm_layers, site_threshold
from pneumo.models.checkpoint import load_weights_file, save_weights
from pneumo.models.factory import create_model

# Enough test images for BatchNorm statistics (80 >= MIN_IMAGES, and deep-layer estimates that do
# not swing the scores by themselves), a balanced pool so that the sampler's prior is 0.5.
COUNTS = {"train": (40, 40), "val": (2, 2), "test": (40, 40)}
# AdaBN can only give back what training's running statistics held: they must be those of clean
# images of the training distribution, so no weight EMA (it keeps near-initial statistics on so
# short a run), no mixup/CutMix and no intensity augmentation; 48 px keeps the last layers at 2x2.
ADAPT_TRAIN = [
    *("--folds", "2", "--image-size", "48", "--epochs", "10", "--threshold-policy", "prior"),
    *("--ema-decay", "0", "--mixup", "0", "--cutmix", "0", "--aug-gamma", "0", "--aug-contrast", "0"),
    *("--aug-brightness", "0", "--aug-blur-p", "0", "--aug-noise-p", "0"),
]
FAST = ["--threads", "1", "--workers", "0", "--saliency-images", "0", "--bootstrap-resamples", "1000"]
POSITIVE = "prob_PNEUMONIA"


@pytest.fixture(scope="module")
def adapt_run(tmp_path_factory, cache_dir) -> tuple[Path, Path]:
    """A 2-fold test_resnet run whose BatchNorm statistics settled on clean images, and its data."""
    root = tmp_path_factory.mktemp("adapt")
    data = root / "data"
    generate(data, counts=COUNTS, seed=3)
    assert "test_resnet" in TRAIN_ARGS
    train(data, root / "run", cache_dir, *ADAPT_TRAIN)
    return root / "run", data


def _evaluate(capsys, run: Path, cache: Path, *extra: str) -> tuple[int, str, str]:
    """evaluate.py in this process: its exit status, stdout and stderr."""
    capsys.readouterr()
    code = main([str(run), "--cache-dir", str(cache), *FAST, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _scores(path: Path) -> dict[str, float]:
    """P(positive) per image, keyed by its path below the split folder."""
    return {Path(*Path(r["file"]).parts[1:]).as_posix(): float(r[POSITIVE]) for r in csv.DictReader(path.open())}


def _mean_gap(a: dict[str, float], b: dict[str, float]) -> float:
    assert a.keys() == b.keys()
    return float(np.mean([abs(a[k] - b[k]) for k in a]))


def _shifted_copy(src: Path, dst: Path, scale: float, offset: float, blur: float) -> None:
    """Every image of `src` as another scanner might show it: intensity scale and offset, then blur."""
    for f in src.rglob("*.jpeg"):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(f).convert("L").filter(ImageFilter.GaussianBlur(blur))
        image.point(lambda v: min(255, max(0, round(v * scale + offset)))).save(out, quality=95)


def test_adabn_undoes_most_of_a_synthetic_site_shift(adapt_run, cache_dir, tmp_path, capsys):
    run, data = adapt_run
    site = tmp_path / "site"
    _shifted_copy(data / "test", site / "shifted", scale=0.6, offset=60, blur=3)
    # The oracle: the scores training itself wrote for the original test images, unadapted.
    original = _scores(run / "predictions_test.csv")
    on_site = ("--data-dir", str(site))
    assert _evaluate(capsys, run, cache_dir, *on_site, "--split", "shifted")[0] == 0
    unadapted = _scores(run / "evaluation" / "shifted" / "predictions.csv")
    assert _evaluate(capsys, run, cache_dir, *on_site, "--adapt-on", "shifted", "--adapt", "adabn")[0] == 0
    out = run / "evaluation" / "shifted-adapted"
    adapted = _scores(out / "predictions.csv")
    before, after = _mean_gap(unadapted, original), _mean_gap(adapted, original)
    print(f"mean |P - P(original)|: {before:.4f} unadapted, {after:.4f} adapted")
    assert before > 0.1  # the shift matters to these models
    assert after < before / 2
    shift = json.loads((out / "results.json").read_text())["adaptation"]["shift"]
    print(f"score shift D: {shift['before']['D']:.3f} before, {shift['after']['D']:.3f} after")
    assert shift["before"]["shifted"] and not shift["after"]["shifted"]
    assert shift["after"]["D"] < shift["before"]["D"] / 2


def test_adabn_barely_moves_the_scores_of_an_unshifted_split(adapt_run, cache_dir, capsys):
    run, _ = adapt_run
    checkpoints = {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in run.glob("fold*/best.safetensors")}
    code, log, _ = _evaluate(capsys, run, cache_dir, "--adapt-on", "test", "--adapt", "adabn")
    assert code == 0
    out = run / "evaluation" / "test-adapted"
    gap = _mean_gap(_scores(out / "predictions.csv"), _scores(run / "predictions_test.csv"))
    print(f"mean |P(adapted) - P(original)| on the unshifted test split: {gap:.4f}")
    assert gap < 0.05  # the sampling noise of 80 images' statistics, against 0.19 for the site shift above
    record = json.loads((out / "results.json").read_text())["adaptation"]
    assert record["methods"] == ["adabn"] and record["images"] == sum(COUNTS["test"])
    assert record["reads_labels"] is False and record["threshold"] == record["threshold_before"]
    assert {"summary.txt", "classification_report.txt", "predictions.csv"} <= {p.name for p in out.iterdir()}
    assert f"adapted to {record['images']} images from {record['source']}: AdaBN" in " ".join(log.split())
    assert {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in checkpoints} == checkpoints


def _relabelled(src: Path, dst: Path, flat: bool) -> Path:
    """The same image files with their class folders swapped at random, or with none."""
    files = sorted(src.rglob("*.jpeg"))
    rng = np.random.default_rng(0)
    for f in files:
        out = dst / f.name if flat else dst / rng.choice(["NORMAL", "PNEUMONIA"]) / f.name
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, out)
    return dst


def test_adaptation_reads_no_label(adapt_run, cache_dir, tmp_path, capsys, monkeypatch):
    run, data = adapt_run
    seen = []

    def spy(models, *args, **kwargs):
        n = adapt_models(models, *args, **kwargs)
        seen.append([{k: v.clone() for k, v in m.state_dict().items() if "running" in k} for m, _ in models])
        return n

    adapt_models = evaluate_module.adapt_models
    monkeypatch.setattr(evaluate_module, "adapt_models", spy)
    records = []
    for source in (
        data / "test",
        _relabelled(data / "test", tmp_path / "shuffled", flat=False),
        _relabelled(data / "test", tmp_path / "flat", flat=True),
    ):
        assert _evaluate(capsys, run, cache_dir, "--adapt-on", str(source), "--split", "test")[0] == 0
        records.append(json.loads((run / "evaluation" / "test-adapted" / "results.json").read_text())["adaptation"])
    assert {r["methods"] == ["adabn", "prior"] for r in records} == {True}
    for record, stats in zip(records[1:], seen[1:]):
        assert (record["site_prior"], record["threshold"]) == (records[0]["site_prior"], records[0]["threshold"])
        for fold, fold0 in zip(stats, seen[0]):
            assert all(torch.equal(fold[k], fold0[k]) for k in fold0)
    # The run decides by `prior`: the site's prior moves its threshold.
    assert records[0]["threshold"] != records[0]["threshold_before"]


def _calibrated_scores(prior: float, n: int, seed: int) -> np.ndarray:
    """P(positive | x) at a 0.5 training prior for x ~ N(+1, 1) (positive) or N(-1, 1), drawn at `prior`."""
    rng = np.random.default_rng(seed)
    x = rng.normal(np.where(rng.random(n) < prior, 1.0, -1.0), 1.0)
    return 1.0 / (1.0 + np.exp(-2.0 * x))  # log-likelihood ratio 2x


@pytest.mark.parametrize("prior", [0.2, 0.8])
def test_site_prior_and_threshold_from_calibrated_scores(prior):
    adapted = adapt_decision(_calibrated_scores(prior, 20_000, seed=1), "prior", 0.5, 0.5)
    assert adapted["site_prior"] == pytest.approx(prior, abs=0.02)
    # Fewest errors at prior π: positive where the posterior odds s/(1-s) · π/(1-π) >= 1, i.e. s >= 1 - π.
    assert adapted["threshold"] == pytest.approx(1.0 - adapted["site_prior"], abs=1e-12)


def test_only_prior_dependent_policies_move_their_threshold():
    site, trained = 0.8, 0.5
    odds = 0.3 / 0.7 * (1 - site) / site * trained / (1 - trained)  # posterior 0.3 at the site's prior
    assert site_threshold("fixed:0.3", 0.3, trained, site) == pytest.approx(odds / (1 + odds), abs=1e-12)
    for policy in ("youden", "balanced", "sensitivity:0.9", "specificity:0.8"):
        assert site_threshold(policy, 0.42, trained, site) == 0.42


def test_adapt_batchnorm_sets_the_statistics_of_the_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5))
    bn1, bn2 = model[0], model[2]
    for bn in (bn1, bn2):
        nn.init.uniform_(bn.weight, 0.5, 2.0)
        nn.init.uniform_(bn.bias, -1.0, 1.0)
        bn.running_mean.fill_(7.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "tracked" not in k}
    modes = []
    model[4].register_forward_pre_hook(lambda m, _: modes.append(("dropout", m.training)))
    bn2.register_forward_pre_hook(lambda m, _: modes.append(("bn", m.training)))
    batches = [torch.randn(6, 3, 8, 8) * 3 + 2, torch.randn(6, 3, 8, 8) * 0.5 - 1]

    assert adapt_batchnorm(model, batches) == 12

    def stats(xs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean of each batch's mean and unbiased variance per channel (equal weight per batch)."""
        return (
            torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0),
            torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in xs]).mean(0),
        )

    def normalised(x: torch.Tensor) -> torch.Tensor:
        mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + bn1.eps) * bn1.weight.view(1, -1, 1, 1) + bn1.bias.view(1, -1, 1, 1)

    with torch.no_grad():
        inner = [torch.nn.functional.conv2d(normalised(x), weights["1.weight"], weights["1.bias"]) for x in batches]
    for bn, xs in ((bn1, batches), (bn2, inner)):
        mean, var = stats(xs)
        torch.testing.assert_close(bn.running_mean, mean)
        torch.testing.assert_close(bn.running_var, var)
        assert bn.momentum == 0.1  # restored
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())
    assert set(modes) == {("dropout", False), ("bn", True)}
    assert not any(m.training for m in model.modules())
    assert batchnorm_layers(model) == [bn1, bn2]


def _no_batchnorm_run(run: Path, dst: Path) -> Path:
    """A copy of the run whose fold models are a BatchNorm-free architecture (GroupNorm)."""
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns("evaluation"))
    for path in dst.glob("fold*/best.safetensors"):
        _, meta = load_weights_file(path)
        model = create_model("test_efficientnet_gn", num_classes=2, dropout=meta["dropout"], init="timm")
        save_weights(path, model, {**meta, "model": "test_efficientnet_gn"})
    config = yaml.safe_load((dst / "config.yaml").read_text())
    (dst / "config.yaml").write_text(yaml.safe_dump({**config, "model": "test_efficientnet_gn"}))
    return dst


def test_refusals_are_one_line_and_write_nothing(adapt_run, cache_dir, tmp_path, capsys):
    run, data = adapt_run
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted((data / "test").rglob("*.jpeg"))[: MIN_IMAGES - 1]:
        shutil.copy(f, few / f.name)
    empty = tmp_path / "empty"
    (empty / "NORMAL").mkdir(parents=True)
    no_bn = _no_batchnorm_run(run, tmp_path / "no_bn")
    cases = [
        (run, ["--adapt-on", "no_such_split"], "neither a split of"),
        (run, ["--adapt-on", str(empty)], "holds no .dcm/.dicom/.jpeg/.jpg/.png images"),
        (run, ["--adapt-on", str(few), "--split", "test"], f"at least {MIN_IMAGES} needed: BatchNorm statistics"),
        (no_bn, ["--adapt-on", "test", "--adapt", "adabn"], "has no BatchNorm layer for AdaBN"),
        (run, ["--adapt", "prior"], "give --adapt-on too"),
        *((run, ["--adapt-on", "test", *flag], "run --images") for flag in (["--report"], ["--ensemble"])),
        (run, ["--adapt-on", "test", "--threshold-policy", "youden"], "--threshold-policy separately"),
        (run, ["--adapt-on", "test", "--images", str(few)], "run --images"),
    ]
    before = sorted(p for r in (run, no_bn) for p in r.rglob("*"))
    for run_dir, flags, message in cases:
        code, _, err = _evaluate(capsys, run_dir, cache_dir, *flags)
        assert code == 2, flags
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(p for r in (run, no_bn) for p in r.rglob("*")) == before
    assert main(["--compare", str(run), str(no_bn), "--adapt-on", "test"]) == 2
    assert "--compare" in capsys.readouterr().err
