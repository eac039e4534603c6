"""The clinical evaluation end to end: what training writes, evaluate.py's re-choice of the operating
point, --compare, and per-group learning rates. Expected values come from the run's own CSVs."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from conftest import TINY_COUNTS, run_cli
from PIL import Image
from scipy.special import expit, logit
from sklearn.metrics import roc_curve

from pneumo.config import parse_args, validate
from pneumo.training.build import build_trainable
from pneumo.training.recipe import TrainSpec
from pneumo.utils.errors import PneumoError


def _table(path):
    return list(csv.DictReader(path.open()))


N_FOLDS = 5


def _covers(ci: dict) -> bool:
    """The interval holds the estimate (a fold of the tiny data may have one patient of a class: no interval)."""
    return ci["value"] is None or ci["low"] is None or ci["low"] <= ci["value"] <= ci["high"]


def test_training_reports_the_operating_point_chosen_on_oof_with_intervals(run_two):
    out, _ = run_two
    results = json.loads((out / "results.json").read_text())
    clinical = results["clinical"]
    oof = _table(out / "oof.csv")
    positive = np.array([r["label"] == "PNEUMONIA" for r in oof])
    scores = np.array([float(r["prob_PNEUMONIA"]) for r in oof])
    t = clinical["operating_point"]["threshold"]
    assert clinical["operating_point"]["policy"] == "fixed:0.5" and t == 0.5  # the default decision
    youden = clinical["alternatives"]["youden"]["threshold"]
    fpr, tpr, _ = roc_curve(positive, scores)
    at_youden = scores >= youden
    assert at_youden[positive].mean() + (~at_youden[~positive]).mean() - 1 == pytest.approx(np.max(tpr - fpr))
    called = scores >= t
    pooled = clinical["oof"]["pooled"]
    assert pooled["at_threshold"]["sensitivity"]["value"] == pytest.approx(called[positive].mean())
    assert set(clinical["oof"]["folds"]) == {str(k) for k in range(5)}
    test = clinical["splits"]["test"]
    # The run's one decision is the operating point: its headline metrics are at that threshold.
    assert results["decision"]["threshold"] == t and results["ensemble"]["test"]["threshold"] == t
    assert test["ensemble"]["at_threshold"]["accuracy"]["value"] == pytest.approx(
        results["ensemble"]["test"]["accuracy"]
    )
    assert set(clinical["alternatives"]) == {"youden", "balanced", "prior"}
    # balanced: no cut of the OOF scores brings sensitivity closer to specificity (every cut is a ROC point).
    balanced = scores >= clinical["alternatives"]["balanced"]["threshold"]
    gap = abs(balanced[positive].mean() - (~balanced[~positive]).mean())
    every_fpr, every_tpr, _ = roc_curve(positive, scores, drop_intermediate=False)
    assert gap == pytest.approx(np.min(np.abs(every_tpr - (1 - every_fpr))), abs=1e-12)
    # prior: Bayes' rule moves 0.5 to where the odds at the pool's prevalence (oof.csv) equal those at
    # the prior --balance sqrt trains at, sqrt(p) : sqrt(1 - p).
    pool = positive.mean()
    trained = np.sqrt(pool) / (np.sqrt(pool) + np.sqrt(1 - pool))
    assert clinical["alternatives"]["prior"]["threshold"] == pytest.approx(expit(logit(trained) - logit(pool)))
    _assert_shift_is_the_ks_distance_to_the_best_oof_mixture(clinical["shift"], oof, out)
    for path in sorted(out.glob("**/*.csv")):  # every table the run wrote calls PNEUMONIA at P >= t
        for r in _table(path):
            assert r["pred"] == ("PNEUMONIA" if float(r["prob_PNEUMONIA"]) >= t else "NORMAL"), path
    assert set(test["folds"]) == {str(k) for k in range(5)}
    assert all(ci["low"] is not None for ci in pooled["at_threshold"].values() if ci["value"] is not None)
    for section in [pooled, test["ensemble"], *test["folds"].values(), *clinical["oof"]["folds"].values()]:
        for at in ("at_0.5", "at_threshold"):
            assert all(_covers(ci) for ci in section[at].values())


def _ecdf(sample: np.ndarray, at: np.ndarray) -> np.ndarray:
    return (np.sort(sample)[None, :] <= at[:, None]).mean(axis=1)


def _ks_to_mixture(split: np.ndarray, pos: np.ndarray, neg: np.ndarray, w: float) -> float:
    """sup |F_split - (w F_pos + (1 - w) F_neg)|, by brute force over every score and the gaps between them."""
    points = np.unique(np.concatenate([split, pos, neg]))
    at = np.concatenate([points, (points[1:] + points[:-1]) / 2, [points[0] - 1]])  # values and left limits
    return float(np.max(np.abs(_ecdf(split, at) - (w * _ecdf(pos, at) + (1 - w) * _ecdf(neg, at)))))


def _assert_shift_is_the_ks_distance_to_the_best_oof_mixture(shift: dict, oof: list[dict], out) -> None:
    assert set(shift) == {"test"}
    test = shift["test"]
    scores = np.array([float(r["prob_PNEUMONIA"]) for r in oof])
    pos = scores[[r["label"] == "PNEUMONIA" for r in oof]]
    neg = scores[[r["label"] == "NORMAL" for r in oof]]
    split = np.array([float(r["prob_PNEUMONIA"]) for r in _table(out / "predictions_test.csv")])
    assert test["images"] == len(split) == sum(TINY_COUNTS["test"])
    assert test["D"] == pytest.approx(_ks_to_mixture(split, pos, neg, test["mixture_weight"]), abs=1e-6)
    best = min(_ks_to_mixture(split, pos, neg, w) for w in np.linspace(0, 1, 201))
    assert test["D"] <= best + 1e-6  # the fitted weight is the best-fitting one
    assert 0 < test["p_value"] <= 1 and test["shifted"] == (test["p_value"] < test["alpha"])


def _ece(positive: np.ndarray, probs: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error by its definition: equal-width bins (right-closed, as sklearn's
    calibration_curve), each weighted by its share of images."""
    which = np.clip(np.ceil(probs * bins).astype(int) - 1, 0, bins - 1)
    return sum(abs(positive[which == b].sum() - probs[which == b].sum()) for b in range(bins)) / len(probs)


def _rgb(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


# matplotlib's default colour cycle: the reliability diagram's four curves, uncalibrated first.
CURVE_COLOURS = {"uncalibrated": (31, 119, 180), "temperature": (255, 127, 14), "platt": (44, 160, 44)}
CURVE_COLOURS["prior_shift"] = (214, 39, 40)


def test_training_reports_calibration_with_reliability_diagrams_and_summary(run_two):
    out, _ = run_two
    clinical = json.loads((out / "results.json").read_text())["clinical"]
    cal = clinical["calibration"]["splits"]
    assert set(cal) == {"oof", "test"}
    assert set(cal["test"]) == {"uncalibrated", "temperature", "platt", "prior_shift"}
    assert cal["test"]["temperature"]["positive_at_0.5"] == cal["test"]["uncalibrated"]["positive_at_0.5"]
    rows = _table(out / "predictions_test.csv")
    positive = np.array([r["label"] == "PNEUMONIA" for r in rows], dtype=float)
    probs = np.array([float(r["prob_PNEUMONIA"]) for r in rows])
    raw = cal["test"]["uncalibrated"]
    assert raw["ece"] == pytest.approx(_ece(positive, probs), abs=1e-9)
    assert raw["brier"] == pytest.approx(np.mean((probs - positive) ** 2), abs=1e-9)
    assert raw["positive_at_0.5"] == np.count_nonzero(probs > 0.5)
    # The fitted maps, applied by hand to the test ensemble, give the numbers reported for them.
    methods = clinical["calibration"]["methods"]
    z = logit(probs)
    platt = methods["platt"]
    by_hand = {
        "temperature": expit(z / methods["temperature"]["temperature"]),
        "platt": expit(platt["slope"] * z + platt["intercept"]),
        "prior_shift": expit(z + methods["prior_shift"]["log_odds_shift"]),
    }
    for name, recalibrated in by_hand.items():
        assert cal["test"][name]["ece"] == pytest.approx(_ece(positive, recalibrated), abs=1e-6), name
        assert cal["test"][name]["positive_at_0.5"] == np.count_nonzero(recalibrated > 0.5), name
    n_normal, n_pneumonia = np.sum([TINY_COUNTS[s] for s in ("train", "val")], axis=0)
    assert methods["prior_shift"]["pool_prevalence"] == pytest.approx(n_pneumonia / (n_normal + n_pneumonia))
    for split in ("oof", "test"):
        pixels = _rgb(out / "calibration" / f"reliability_{split}.png")
        assert pixels.shape == (650, 650, 3) and pixels.std() > 10, split  # 6.5 in at 100 dpi, not blank
        for name, colour in CURVE_COLOURS.items():  # a marker of every curve is drawn
            assert (pixels == colour).all(axis=-1).sum() >= 20, (split, name)
    summary = (out / "summary.txt").read_text()
    assert "The run's decision fixed:0.5" in summary and "ECE" in summary


def test_training_draws_grad_cam_figures_of_errors_and_a_sample(run_one):
    out, _ = run_one
    saliency = json.loads((out / "results.json").read_text())["clinical"]["saliency"]["test"]
    rows = {r["file"]: r for r in _table(out / "predictions_test.csv")}
    t = saliency["threshold"]
    assert len(set(saliency["sample"])) == 2 and set(saliency["sample"]) <= set(rows)
    # The errors shown are the most confident ones of the test ensemble at the run's threshold.
    wrong = [f for f, r in rows.items() if (float(r["prob_PNEUMONIA"]) >= t) != (r["label"] == "PNEUMONIA")]
    wrong.sort(key=lambda f: -abs(float(rows[f]["prob_PNEUMONIA"]) - t))
    assert saliency["misclassified"] == wrong[:2]
    for group in (g for g in ("sample", "misclassified") if saliency[g]):
        pixels = _rgb(out / saliency[f"{group}_figure"])
        # A row of four 3-inch panels at 80 dpi: one X-ray per file, tinted by its heat map; the rest blank.
        assert pixels.shape == (288, 960, 3), group
        for q in range(4):
            panel = pixels[60:260, q * 240 + 20 : q * 240 + 220]
            if q < len(saliency[group]):
                assert panel.std() > 10 and np.mean(panel[..., 2] - panel[..., 0] > 20) > 0.5, (group, q)
            else:
                assert panel.min() == 255, (group, q)


def test_changing_the_policy_of_a_finished_run_rewrites_every_decision(run_two, cache_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_two[0], run)
    args = ["--cache-dir", str(cache_dir), "--threads", "1", "--threshold-policy", "fixed:0.3"]
    run_cli(["evaluate.py", str(run), *args])
    results = json.loads((run / "results.json").read_text())
    assert results["decision"]["policy"] == "fixed:0.3" and results["decision"]["threshold"] == 0.3
    assert "threshold_policy: fixed:0.3" in (run / "config.yaml").read_text()
    assert results["clinical"]["operating_point"]["threshold"] == 0.3
    tables = sorted(run.glob("**/*.csv"))
    assert len(tables) == 2 + 2 * N_FOLDS  # oof, test ensemble; each fold's validation and test
    for path in tables:
        for r in _table(path):
            assert r["pred"] == ("PNEUMONIA" if float(r["prob_PNEUMONIA"]) >= 0.3 else "NORMAL"), path
    rows = _table(run / "predictions_test.csv")
    positive = np.array([r["label"] == "PNEUMONIA" for r in rows])
    called = np.array([float(r["prob_PNEUMONIA"]) >= 0.3 for r in rows])
    assert results["ensemble"]["test"]["accuracy"] == pytest.approx((called == positive).mean())
    at = results["clinical"]["splits"]["test"]["ensemble"]["at_threshold"]
    assert at["sensitivity"]["value"] == pytest.approx(called[positive].mean())
    assert at["specificity"]["value"] == pytest.approx((~called[~positive]).mean())
    assert "decision fixed:0.3: threshold 0.300" in (run / "summary.txt").read_text()
    # A split evaluated afterwards uses the run's new decision.
    run_cli(["evaluate.py", str(run), "--split", "test", "--cache-dir", str(cache_dir), "--threads", "1"])
    section = json.loads((run / "evaluation" / "test" / "results.json").read_text())
    assert section["clinical"]["operating_point"]["policy"] == "fixed:0.3"
    for r in _table(run / "evaluation" / "test" / "predictions.csv"):
        assert r["pred"] == ("PNEUMONIA" if float(r["prob_PNEUMONIA"]) >= 0.3 else "NORMAL")


def _train_accuracy_at_best_epoch(run) -> float:
    values = []
    for fold in json.loads((run / "results.json").read_text())["folds"]:
        records = [json.loads(x) for x in (run / f"fold{fold['fold']}" / "metrics.jsonl").read_text().splitlines()]
        values += [r["train"]["accuracy"] for r in records if r["epoch"] == fold["best_epoch"]]
    return float(np.mean(values))


def test_compare_writes_markdown_and_csv_for_any_runs_including_older_ones(run_one, run_two, tmp_path):
    older = tmp_path / "older"  # a run made before the clinical evaluation: computed from its CSVs
    shutil.copytree(run_two[0], older)
    results = json.loads((older / "results.json").read_text())
    clinical = results.pop("clinical")
    (older / "results.json").write_text(json.dumps(results))
    run_cli(["evaluate.py", "--compare", str(run_one[0]), str(older), "--out", str(tmp_path / "cmp")])
    md = (tmp_path / "cmp.md").read_text().splitlines()
    assert len(md) == 4 and "out-of-fold acc" in md[0]
    rows = _table(tmp_path / "cmp.csv")
    assert [r["run"] for r in rows] == ["one", "older"]
    oof_acc = clinical["oof"]["pooled"]["at_threshold"]["accuracy"]
    assert float(rows[1]["oof_accuracy"]) == pytest.approx(oof_acc["value"])
    assert float(rows[1]["oof_accuracy_low"]) == pytest.approx(oof_acc["low"])
    assert float(rows[1]["train_accuracy"]) == pytest.approx(_train_accuracy_at_best_epoch(older))


def test_backbone_lr_scale_gives_the_backbone_a_scaled_cosine_and_the_head_the_usual_one():
    base = ["--model", "test_resnet", "--epochs", "2", "--lr", "1e-3", "--min-lr", "1e-4"]
    scaled = build_trainable(_recipe([*base, "--backbone-lr-scale", "0.1"]), _cpu(), "no", np.ones(2), 5)
    usual = build_trainable(_recipe(base), _cpu(), "no", np.ones(2), 5)
    head, backbone = scaled.optimizer.param_groups
    head_ids = {id(p) for p in scaled.model.get_classifier().parameters()}
    assert {id(p) for p in head["params"]} == head_ids
    assert len(head["params"]) + len(backbone["params"]) == len(list(scaled.model.parameters()))
    for step in range(11):
        cosine = 1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * min(step, 10) / 10)) / 2
        assert head["lr"] == pytest.approx(cosine, rel=1e-9)
        assert backbone["lr"] == pytest.approx(0.1 * cosine, rel=1e-9)
        assert usual.optimizer.param_groups[0]["lr"] == pytest.approx(cosine, rel=1e-9)
        for t in (scaled, usual):
            t.optimizer.step()
            t.scheduler.step()


def _cpu():
    import torch

    return torch.device("cpu")


@pytest.mark.parametrize(
    "flags, option",
    [
        (["--threshold-policy", "sensitivity:2"], "--threshold-policy"),
        (["--backbone-lr-scale", "0"], "--backbone-lr-scale"),
        (["--saliency-images", "-1"], "--saliency-images"),
    ],
)
def test_bad_clinical_flags_are_refused_naming_the_flag(flags, option):
    with pytest.raises(PneumoError, match=option):
        validate(parse_args(["--model", "test_resnet", *flags]))


def _recipe(argv: list[str]) -> TrainSpec:
    return TrainSpec.from_config(vars(parse_args(argv)))
