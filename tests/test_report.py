"""The run report: tables that say what their numbers are, and damaged fold outputs named, not
a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

from pneumo import evaluate_cli
from pneumo.data.augment import AugmentParams
from pneumo.data.predictions import read_predictions, write_predictions
from pneumo.evaluation.results import SPREAD, build_results, metrics_table
from pneumo.metrics.classification import mean_std
from pneumo.report.sections import view_caption
from pneumo.utils.errors import PneumoError

CLASSES = ("NORMAL", "PNEUMONIA")


def _text(table) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_the_spread_row_says_it_is_the_sample_sd_and_undefined_cells_read_n_a():
    folds = [
        {"accuracy": 0.5, "roc_auc": None, "sensitivity": 1.0, "specificity": None},
        {"accuracy": 0.7, "roc_auc": None, "sensitivity": 0.5, "specificity": 0.25},
    ]
    rows = [("fold 0", [folds[0]]), ("fold 1", [folds[1]]), (SPREAD, [mean_std(folds)])]
    text = _text(metrics_table("t", ["test"], rows))
    fold0 = next(line for line in text.splitlines() if "fold 0" in line)
    assert [cell.strip() for cell in fold0.split("│")[2:6]] == ["0.500", "n/a", "1.000", "n/a"]
    spread = next(line for line in text.splitlines() if "mean ± SD (ddof=1)" in line)
    # accuracy: sample SD of 0.5 and 0.7 is 0.141; specificity: one fold defines it, no SD.
    assert "0.600 ± 0.141" in spread and "0.250 ± n/a" in spread and spread.count("n/a") == 2


def _fold_outputs(run: Path, fold: int, test_files: list[str]) -> dict:
    out = run / f"fold{fold}"
    probs = np.tile([[0.3, 0.7]], (len(test_files), 1))
    at = {"positive": 1, "threshold": 0.5}
    write_predictions(out / "val_predictions.csv", [f"train/a{fold}.jpeg"], np.array([1]), probs[:1], CLASSES, **at)
    write_predictions(out / "predictions_test.csv", test_files, np.ones(len(test_files), int), probs, CLASSES, **at)
    return {"fold": fold, "status": "done", "val": {}, "splits": {"test": {}}}


def test_fold_predictions_of_different_files_name_the_file(tmp_path):
    results = [_fold_outputs(tmp_path, 0, ["test/x.jpeg", "test/y.jpeg"]), _fold_outputs(tmp_path, 1, ["test/x.jpeg"])]
    with pytest.raises(PneumoError) as info:
        build_results(tmp_path, results, CLASSES, 1, {}, {"threshold_policy": "fixed:0.5"})
    assert str(info.value).startswith(f"{tmp_path / 'fold1' / 'predictions_test.csv'}: its test files or labels differ")


def test_a_damaged_predictions_table_names_the_file(tmp_path):
    path = tmp_path / "predictions_test.csv"
    path.write_text("file,label,prob_NORMAL\ntest/x.jpeg,NORMAL,0.4\n")
    with pytest.raises(PneumoError, match=rf"^{path}: not a predictions table of classes \['NORMAL', 'PNEUMONIA'\]"):
        read_predictions(path, CLASSES)


def test_evaluate_of_a_run_whose_config_lacks_keys_is_one_line(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model": "resnet18"}))
    assert evaluate_cli.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'config.yaml'}: lacks ['folds', 'data_dir', 'mixed_precision']; " + (
        "not a config written by train.py\n"
    )


def test_augmented_view_captions_name_every_lever_the_view_drew():
    params = AugmentParams(
        angles=torch.tensor([7.63, -2.0]),
        flips=torch.tensor([True, False]),
        zoom=torch.tensor([1.083, 0.9]),
        gamma=torch.tensor([0.871, 1.1]),
        brightness=torch.tensor([-0.04, 0.02]),
        erase=torch.tensor([[0.1, 0.1, 0.3, 0.2], [0.0, 0.0, 0.0, 0.2]]),
    )
    assert view_caption(params, 0) == "rot +7.6°, flip, zoom 1.08\nγ 0.87\nbright -0.04, erased"
    assert view_caption(params, 1) == "rot -2.0°, zoom 0.90\nγ 1.10\nbright +0.02"
    assert view_caption(AugmentParams(angles=torch.tensor([3.0]), flips=torch.tensor([False])), 0) == "rot +3.0°"
