"""MODEL_CARD.md: written at the end of a run from its files, rebuilt by evaluate.py RUN."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

from pneumo.report.model_card import MODEL_CARD, TRIPOD

SECTIONS = (
    "## Intended use",
    "## Out-of-scope use",
    "## Data",
    "## Model",
    "## Recipe",
    "## Operating point",
    "## Performance",
    "## Calibration",
    "## What the data audit found",
    "## Limitations",
    "## TRIPOD+AI items answered",
)


def _ci(m: dict) -> str:
    return f"{m['value']:.3f} ({m['low']:.3f}–{m['high']:.3f})"


@pytest.fixture(scope="module")
def card(run_one) -> tuple[str, dict]:
    run_dir, _ = run_one
    return (run_dir / MODEL_CARD).read_text(encoding="utf-8"), json.loads((run_dir / "results.json").read_text())


def test_a_finished_run_writes_a_model_card_with_every_section(card):
    text, _ = card
    assert all(s in text for s in SECTIONS)
    assert all(f"| {item} | {topic} |" in text for item, topic, _ in TRIPOD)


def test_the_model_card_states_the_operating_point_from_results(card):
    text, results = card
    d = results["decision"]
    assert f"Policy `{d['policy']}`, threshold {d['threshold']:.4g}" in text
    assert f"specificity {d['oof_specificity']:.3f}" in text


def test_the_model_card_gives_out_of_fold_and_test_metrics_with_their_intervals(card):
    text, results = card
    pooled = results["clinical"]["oof"]["pooled"]["at_threshold"]
    test = results["clinical"]["splits"]["test"]["ensemble"]["at_threshold"]
    oof_row = next(line for line in text.splitlines() if line.startswith("| out-of-fold |"))
    test_row = next(line for line in text.splitlines() if line.startswith("| test | 12 |"))
    for key in ("sensitivity", "roc_auc"):
        assert _ci(pooled[key]) in oof_row and _ci(test[key]) in test_row
    assert f"| out-of-fold | {results['oof']['n']} |" in oof_row


def test_the_model_card_counts_the_data_and_its_patient_grouping(card, run_one):
    text, _ = card
    run_dir, _ = run_one
    folds = json.loads((run_dir / "folds.json").read_text())
    pool = [sum(row[c] for row in folds["val_counts"]) for c in range(2)]
    groups = sum(sum(row) for row in folds["val_groups"])
    assert f"| cross-validation pool | {pool[0]} | {pool[1]} | {sum(pool)} | {groups} patient groups |" in text
    assert "| test | 6 | 6 | 12 | held out |" in text


def test_the_model_card_reports_calibration_and_the_score_shift(card):
    text, results = card
    oof = results["clinical"]["calibration"]["splits"]["oof"]["uncalibrated"]
    assert f"| oof | {oof['ece']:.3f} / {oof['brier']:.3f} |" in text
    assert results["clinical"]["shift"]["test"]["summary"] in text


def test_evaluate_rebuilds_the_model_card(run_one, cache_dir, tmp_path):
    run_dir, _ = run_one
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("state.pt", "tensorboard", "evaluation"))
    (copy / MODEL_CARD).unlink()
    run_cli(["evaluate.py", str(copy), "--cache-dir", str(cache_dir), "--threads", "1", "--saliency-images", "0"])
    assert "## Performance" in (copy / MODEL_CARD).read_text(encoding="utf-8")
