"""The clinical evaluation end to end: what training writes, evaluate.py's re-choice of the operating
point, --compare, and per-group learning rates. Expected values come from the run's own CSVs."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
from conftest import run_cli
from sklearn.metrics import roc_curve

from pneumo.config import parse_args, validate
from pneumo.training.build import build_trainable
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
    assert set(clinical["shift"]) == {"test"} and 0 < clinical["shift"]["test"]["p_value"] <= 1
    for path in sorted(out.glob("**/*.csv")):  # every table the run wrote calls PNEUMONIA at P >= t
        for r in _table(path):
            assert r["pred"] == ("PNEUMONIA" if float(r["prob_PNEUMONIA"]) >= t else "NORMAL"), path
    assert set(test["folds"]) == {str(k) for k in range(5)}
    assert all(ci["low"] is not None for ci in pooled["at_threshold"].values() if ci["value"] is not None)
    for section in [pooled, test["ensemble"], *test["folds"].values(), *clinical["oof"]["folds"].values()]:
        for at in ("at_0.5", "at_threshold"):
            assert all(_covers(ci) for ci in section[at].values())


def test_training_reports_calibration_with_reliability_diagrams_and_summary(run_two):
    out, _ = run_two
    clinical = json.loads((out / "results.json").read_text())["clinical"]
    cal = clinical["calibration"]["splits"]
    assert set(cal) == {"oof", "test"}
    assert set(cal["test"]) == {"uncalibrated", "temperature", "platt", "prior_shift"}
    assert cal["test"]["temperature"]["positive_at_0.5"] == cal["test"]["uncalibrated"]["positive_at_0.5"]
    assert (out / "calibration" / "reliability_oof.png").stat().st_size > 0
    assert (out / "calibration" / "reliability_test.png").stat().st_size > 0
    summary = (out / "summary.txt").read_text()
    assert "The run's decision fixed:0.5" in summary and "ECE" in summary


def test_training_draws_grad_cam_figures_of_errors_and_a_sample(run_one):
    out, _ = run_one
    saliency = json.loads((out / "results.json").read_text())["clinical"]["saliency"]["test"]
    assert len(saliency["sample"]) == 2 and len(saliency["misclassified"]) <= 2
    assert (out / saliency["sample_figure"]).stat().st_size > 0


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
    scaled = build_trainable(parse_args([*base, "--backbone-lr-scale", "0.1"]), _cpu(), "no", np.ones(2), 5)
    usual = build_trainable(parse_args(base), _cpu(), "no", np.ones(2), 5)
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
