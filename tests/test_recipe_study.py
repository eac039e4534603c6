"""The recipe study harness (studies/recipe/recipe.py): its table from a finished run, and resuming a study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import load_script

from pneumo.data.predictions import write_predictions
from pneumo.evaluation.results import write_split_predictions

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["NORMAL", "PNEUMONIA"]


@pytest.fixture(scope="module")
def recipe():
    return load_script(ROOT / "studies" / "recipe" / "recipe.py", "recipe_study")


def probs(p_pneumonia: list[float]) -> np.ndarray:
    p = np.asarray(p_pneumonia)
    return np.stack([1 - p, p], axis=1)


AT = {"positive": 1, "threshold": 0.5}


def finished_run(run: Path, precision: str = "no") -> None:
    """A run directory as train.py leaves it, with predictions whose metrics are worked out by hand below."""
    (run / "fold0").mkdir(parents=True)
    (run / "fold1").mkdir()
    # Out-of-fold: NORMAL 0.1 0.2 0.4, PNEUMONIA 0.3 0.6 0.7 0.9.
    oof = [0.1, 0.2, 0.4, 0.3, 0.6, 0.7, 0.9]
    labels = [0, 0, 0, 1, 1, 1, 1]
    fold = [0, 1, 0, 1, 0, 1, 0]
    write_predictions(
        run / "oof.csv", [f"v{i}.jpeg" for i in range(7)], labels, probs(oof), CLASSES, {"fold": fold}, **AT
    )
    # Test: NORMAL, NORMAL, PNEUMONIA, PNEUMONIA; fold 0 and fold 1 models, ensemble 0.3 0.7 0.6 0.8.
    per_fold = np.stack([probs([0.2, 0.6, 0.4, 0.9]), probs([0.4, 0.8, 0.8, 0.7])])
    write_split_predictions(
        run / "predictions_test.csv",
        [f"t{i}.jpeg" for i in range(4)],
        np.array([0, 0, 1, 1]),
        per_fold,
        [0, 1],
        CLASSES,
        **AT,
    )
    results = {
        "positive_class": "PNEUMONIA",
        "folds_done": [0, 1],
        "folds": [{"fold": 0, "seconds": 70.0}, {"fold": 1, "seconds": 80.0}],
        "wall_seconds": 90.0,
    }
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text(yaml.safe_dump({"mixed_precision": precision}))
    for k, seconds in ((0, [30.0, 30.0]), (1, [60.0, 60.0])):
        (run / f"fold{k}" / "metrics.jsonl").write_text("".join(json.dumps({"seconds": s}) + "\n" for s in seconds))


def test_a_row_holds_the_runs_metrics(tmp_path, recipe):
    finished_run(tmp_path / "strong-screen")
    r = recipe.row("strong", "screen", tmp_path / "strong-screen")
    assert r["precision"] == "no"
    assert r["oof"]["accuracy"] == pytest.approx(6 / 7)  # only PNEUMONIA 0.3 is wrong at 0.5
    assert r["oof"]["roc_auc"] == pytest.approx(11 / 12)  # 0.3 ranks below NORMAL 0.4
    assert r["oof_threshold"] == pytest.approx(0.6)  # Youden: sensitivity 3/4, specificity 1
    assert r["test_auc"] == pytest.approx(3 / 4)  # ensemble PNEUMONIA 0.6 ranks below NORMAL 0.7
    assert r["test_at_0.5"] == pytest.approx({"accuracy": 0.75, "sensitivity": 1.0, "specificity": 0.5})
    assert r["test_at_oof_threshold"] == pytest.approx({"accuracy": 0.75, "sensitivity": 1.0, "specificity": 0.5})
    assert r["test_auc_per_fold"] == pytest.approx([0.75, 0.625])  # fold 1: a tie at 0.8 counts half
    assert r["fold_train_minutes"] == pytest.approx([1.0, 2.0])
    assert r["wall_seconds"] == 90.0


def test_a_row_of_some_folds_is_their_ensemble(tmp_path, recipe):
    finished_run(tmp_path / "strong-final")
    r = recipe.row("strong", "screen", tmp_path / "strong-final", folds=[0])
    # Fold 0's out-of-fold images: NORMAL 0.1 0.4, PNEUMONIA 0.6 0.9; its test predictions alone.
    assert r["oof"]["accuracy"] == 1.0 and r["oof"]["roc_auc"] == 1.0
    assert r["test_auc"] == pytest.approx(0.75) and r["test_auc_per_fold"] == pytest.approx([0.75])
    assert r["wall_seconds"] is None  # the two folds ran side by side: no wall time of its own


def test_a_study_resumes_from_finished_runs_and_keeps_rows_of_other_precisions(tmp_path, recipe, capsys):
    runs, results = tmp_path / "runs", tmp_path / "results"
    finished_run(runs / "strong-screen")  # finished: read back, not trained again
    results.mkdir()
    earlier = {"variant": "strong", "stage": "screen", "precision": "bf16", "description": "an earlier bf16 row"}
    (results / "results.json").write_text(
        json.dumps([{**recipe.row("strong", "screen", runs / "strong-screen"), **earlier}])
    )
    argv = ["--data-dir", str(tmp_path / "none"), "--variants", "strong", "--runs-dir", str(runs)]
    assert recipe.main([*argv, "--results-dir", str(results)]) == 0
    rows = json.loads((results / "results.json").read_text())
    assert sorted(r["precision"] for r in rows) == ["bf16", "no"]
    table = (results / "results.md").read_text()
    assert "| strong | screen | 2 | no | 0.857 | 0.917 | **0.750** |" in table
    assert "| strong | screen | 2 | bf16 |" in table
    first_line = (recipe.RECIPES / "strong.yaml").read_text().splitlines()[0].removeprefix("# ")
    assert f"- **strong**: {first_line}" in table and "an earlier bf16 row" not in table
    assert "training strong" not in capsys.readouterr().out
