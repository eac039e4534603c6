"""What a run directory holds: its file names, where each fold's files go, and its config read back.

Every stage names run files through here (training writes them, evaluation and the report
read them), so no stage reaches into another for a file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pneumo.utils.errors import PneumoError

CONFIG = "config.yaml"
FOLDS = "folds.json"
RUN_INFO = "run_info.json"
SKIPPED = "skipped_images.json"
AUDIT = "audit.json"
OVERLAP = "overlap.json"
RESULTS = "results.json"
REPORT = "classification_report.txt"
SUMMARY = "summary.txt"
OOF = "oof.csv"
PLAN = "plan.json"  # the fold plan of the latest launch into the run
IMAGE_PREDICTIONS = "image_predictions.csv"  # evaluate.py --images without --out
EVALUATION = "evaluation"  # evaluate.py's folder of one directory per evaluated split
PREDICTIONS = "predictions.csv"  # in each evaluation/<split>/
# In each fold's directory:
BEST = "best.safetensors"
STATE = "state.pt"
RESULT = "result.json"
VAL_PREDICTIONS = "val_predictions.csv"
METRICS_LOG = "metrics.jsonl"
TENSORBOARD = "tensorboard"
CLAIM = "claim.lock"  # held (flock) by the launch training the fold


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold{fold}"


def split_predictions(split: str) -> str:
    """The file of a fold's (in its directory) or the ensemble's (in the run's) predictions on `split`."""
    return f"predictions_{split}.csv"


def read_config(run_dir: Path) -> dict[str, Any]:
    """The resolved config a run was started with."""
    path = run_dir / CONFIG
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PneumoError(f"{run_dir} is not a pneumo run directory (no {CONFIG})") from exc
    except yaml.YAMLError as exc:
        raise PneumoError(f"{path}: corrupt ({exc}); rerun with --overwrite") from exc
    if not isinstance(loaded, dict):
        raise PneumoError(f"{path}: corrupt (not a mapping); rerun with --overwrite")
    return loaded


def folds_to_train(config: dict[str, Any]) -> list[int]:
    """The folds a run trains: --train-folds (sorted, once each), or every fold of --folds."""
    chosen = config.get("train_folds")
    return sorted(set(chosen)) if chosen else list(range(int(config["folds"])))
