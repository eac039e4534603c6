"""The built-in synthetic set tells a working pipeline from a broken one (a small, fast demo)."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli

from pneumo.config import parse_args
from pneumo.data.synthetic import generate

ROOT = Path(__file__).resolve().parent.parent
# `make demo` scaled down: its recipe (configs/demo.yaml, float32) on 180 images and 3
# folds, with timm's tiny test_resnet (0.47 M parameters; a higher lr than resnet18's) at 48 px.
# About 50 s per run on one thread; OOF ROC-AUC 0.976-0.989 on three data seeds (with 2 threads),
# shuffled labels 0.52-0.56.
COUNTS = {"train": (60, 120), "test": (10, 10)}
ARGS = [
    *("--config", str(ROOT / "configs" / "demo.yaml")),
    *("--model", "test_resnet", "--lr", "3e-3", "--image-size", "48", "--epochs", "12", "--folds", "3"),
    *("--batch-size", "8", "--mixed-precision", "no", "--threads", "1", "--workers", "0"),
    *("--no-report", "--saliency-images", "0"),
]


def _oof_auc(tmp_path: Path, negative_control: bool) -> float:
    data = tmp_path / "chest_xray"
    generate(data, counts=COUNTS, seed=5, negative_control=negative_control)
    out = tmp_path / "run"
    run_cli(["train.py", "--data-dir", str(data), "--output-dir", str(out), "--cache-dir", str(tmp_path / "c"), *ARGS])
    return json.loads((out / "results.json").read_text())["oof"]["roc_auc"]


def test_a_working_pipeline_learns_the_synthetic_pathology(tmp_path):
    assert _oof_auc(tmp_path, negative_control=False) >= 0.95


def test_labels_independent_of_the_pathology_are_not_learned(tmp_path):
    assert _oof_auc(tmp_path, negative_control=True) == pytest.approx(0.5, abs=0.2)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_trains_the_reference_recipe_from_the_demo_config(monkeypatch):
    monkeypatch.chdir(ROOT)  # make runs the command from the repository root
    dry_run = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    (command,) = [shlex.split(line) for line in dry_run.splitlines() if " train.py " in line]
    demo = vars(parse_args(command[command.index("train.py") + 1 :]))
    reference = vars(parse_args(["--config", str(ROOT / "configs" / "reference.yaml"), "--output-dir", "runs/demo"]))
    assert demo.pop("config") == "configs/demo.yaml"  # the file these tests scale down
    assert demo == {k: v for k, v in reference.items() if k != "config"}
