"""A finished run's outputs read back in one object: config, facts, epoch histories, predictions.

What the report draws from; it reads only files train.py and evaluate.py wrote.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import read_json
from pneumo.utils.run_files import (
    EVALUATION,
    FOLDS,
    METRICS_LOG,
    OOF,
    PREDICTIONS,
    RESULTS,
    RUN_INFO,
    fold_dir,
    read_config,
    split_predictions,
)


@dataclass
class Scored:
    """Predictions on one set of images: the ensemble's (pooled, for out-of-fold) and each fold's.

    `fold_scores[k]` is (labels, P(positive)) of the images fold k scored; `metrics` and
    `fold_metrics` are the matching entries of results.json.
    """

    name: str
    files: list[str]
    labels: np.ndarray
    probs: np.ndarray
    preds: np.ndarray  # the class each image was called at the run's decision (the table's pred column)
    fold_scores: dict[int, tuple[np.ndarray, np.ndarray]]
    metrics: dict[str, Any]
    fold_metrics: dict[int, dict[str, Any]]


@dataclass
class RunOutputs:
    run_dir: Path
    config: dict[str, Any]
    info: dict[str, Any]
    folds: dict[str, Any]
    results: dict[str, Any]
    histories: dict[int, list[dict[str, Any]]]
    scored: list[Scored] = field(default_factory=list)  # out-of-fold first, then evaluation splits

    @property
    def classes(self) -> list[str]:
        return list(self.results["classes"])

    @property
    def positive(self) -> int:
        return self.classes.index(self.results["positive_class"])

    @property
    def done_folds(self) -> list[int]:
        return list(self.results["folds_done"])


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _probs(rows: list[dict[str, str]], classes: list[str]) -> np.ndarray:
    return np.asarray([[float(r[f"prob_{c}"]) for c in classes] for r in rows], dtype=float).reshape(-1, len(classes))


def _labels(rows: list[dict[str, str]], classes: list[str]) -> np.ndarray:
    return np.asarray([classes.index(r["label"]) for r in rows], dtype=np.int64)


def _preds(rows: list[dict[str, str]], classes: list[str]) -> np.ndarray:
    return np.asarray([classes.index(r["pred"]) for r in rows], dtype=np.int64)


def _out_of_fold(run_dir: Path, results: dict, classes: list[str], positive: int) -> Scored:
    rows = _read_rows(run_dir / OOF)
    labels, probs = _labels(rows, classes), _probs(rows, classes)
    fold_of = np.asarray([int(r["fold"]) for r in rows])
    by_fold = {int(r["fold"]): r for r in results["folds"] if r["status"] == "done"}
    return Scored(
        name="out-of-fold validation",
        files=[r["file"] for r in rows],
        labels=labels,
        probs=probs,
        preds=_preds(rows, classes),
        fold_scores={k: (labels[fold_of == k] == positive, probs[fold_of == k, positive]) for k in sorted(by_fold)},
        metrics=results["oof"],
        fold_metrics={k: r["val"] for k, r in by_fold.items()},
    )


def _split(path: Path, name: str, section: dict, classes: list[str], positive: int) -> Scored:
    """A split's predictions CSV (ensemble and `foldK_prob_<positive>` columns) with its metrics."""
    rows = _read_rows(path)
    labels = _labels(rows, classes)
    is_pos = labels == positive
    prefix, suffix = "fold", f"_prob_{classes[positive]}"
    fold_cols = [c for c in (rows[0] if rows else {}) if c.startswith(prefix) and c.endswith(suffix)]
    return Scored(
        name=name,
        files=[r["file"] for r in rows],
        labels=labels,
        probs=_probs(rows, classes),
        preds=_preds(rows, classes),
        fold_scores={
            int(c[len(prefix) : -len(suffix)]): (is_pos, np.asarray([float(r[c]) for r in rows])) for c in fold_cols
        },
        metrics=section["ensemble"],
        fold_metrics={int(k): m for k, m in section["folds"].items()},
    )


def load_run(run_dir: Path) -> RunOutputs:
    """Everything the report needs from `run_dir`; a run without results.json is refused."""
    if not (run_dir / RESULTS).exists():
        raise PneumoError(f"{run_dir}: no {RESULTS} yet; finish or resume the run (train.py) before reporting")
    results = read_json(run_dir / RESULTS)
    config = read_config(run_dir)
    histories = {}
    for k in range(int(results["n_folds"])):
        path = fold_dir(run_dir, k) / METRICS_LOG
        if path.exists():
            histories[k] = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    run = RunOutputs(
        run_dir=run_dir,
        config=config,
        info=read_json(run_dir / RUN_INFO) if (run_dir / RUN_INFO).exists() else {},
        folds=read_json(run_dir / FOLDS),
        results=results,
        histories=histories,
    )
    classes, positive = run.classes, run.positive
    if run.done_folds:
        run.scored.append(_out_of_fold(run_dir, results, classes, positive))
    fold_results = {r["fold"]: r for r in results["folds"] if r["status"] == "done"}
    for split, metrics in results["ensemble"].items():
        section = {"ensemble": metrics, "folds": {k: r["splits"][split] for k, r in fold_results.items()}}
        run.scored.append(_split(run_dir / split_predictions(split), split, section, classes, positive))
    for path in sorted((run_dir / EVALUATION).glob(f"*/{RESULTS}")):
        section = read_json(path)
        if section["split"] in results["ensemble"] and section["data_dir"] == results["data_dir"]:
            continue  # the same images as the run's own split
        name = f"{section['split']} of {section['data_dir']} (evaluate.py)"
        run.scored.append(_split(path.parent / PREDICTIONS, name, section, classes, positive))
    return run
