"""The run's report: fold results gathered, out-of-fold and ensemble metrics, written and shown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from pneumo.data.predictions import read_predictions, write_predictions
from pneumo.evaluation.decision import apply_to_folds, decide
from pneumo.evaluation.ensemble import mean_probs
from pneumo.metrics.classification import classification_metrics, mean_std, report_text
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import atomic_write_json, atomic_write_text, read_json
from pneumo.utils.run_files import OOF, REPORT, RESULT, RESULTS, VAL_PREDICTIONS, fold_dir, split_predictions


def read_fold_results(run_dir: Path, folds: Sequence[int]) -> list[dict]:
    """Each listed fold's result.json."""
    return [read_json(fold_dir(run_dir, k) / RESULT) for k in folds]


def evaluate_split(
    files: Sequence[str],
    labels: np.ndarray,
    per_fold: np.ndarray,
    folds: Sequence[int],
    classes: Sequence[str],
    positive: int,
    threshold: float,
) -> dict[str, Any]:
    """Each fold model's metrics on a split at `threshold`, their mean and sample SD (ddof=1), and the ensemble's."""
    fold_metrics = [classification_metrics(labels, p, classes, positive, files, threshold) for p in per_fold]
    return {
        "folds": {str(k): m for k, m in zip(folds, fold_metrics)},
        "fold_mean_std": mean_std(fold_metrics),
        "ensemble": classification_metrics(labels, mean_probs(per_fold), classes, positive, files, threshold),
    }


def write_split_predictions(
    path: Path,
    files: Sequence[str],
    labels: np.ndarray,
    per_fold: np.ndarray,
    folds: Sequence[int],
    classes: Sequence[str],
    positive: int,
    threshold: float,
) -> None:
    """Ensemble predictions (called at `threshold`) with each fold's probability of the positive class beside them."""
    extra = {
        f"fold{k}_prob_{classes[positive]}": [repr(float(v)) for v in p[:, positive]] for k, p in zip(folds, per_fold)
    }
    write_predictions(path, files, labels, mean_probs(per_fold), classes, extra, positive=positive, threshold=threshold)


def gather_split(run_dir: Path, folds: Sequence[int], split: str, classes: Sequence[str]):
    paths = [fold_dir(run_dir, k) / split_predictions(split) for k in folds]
    tables = [read_predictions(path, classes) for path in paths]
    files = tables[0].files
    for path, t in zip(paths, tables):
        if t.files != files or not np.array_equal(t.labels, tables[0].labels):
            raise PneumoError(
                f"{path}: its {split} files or labels differ from {paths[0]}'s (a fold of another run or data "
                "version?); delete that fold's directory and run again to retrain it"
            )
    return files, tables[0].labels, np.stack([t.probs for t in tables])


def build_results(
    run_dir: Path,
    fold_results: list[dict],
    classes: Sequence[str],
    positive: int,
    header: dict[str, Any],
    config: dict[str, Any],
) -> dict:
    """Gather fold outputs into results.json, oof.csv, predictions_<split>.csv and the text report,
    every prediction and metric at the run's decision (chosen here on the out-of-fold predictions
    by `config`'s threshold policy), which the fold tables are rewritten to as well."""
    done = [r for r in fold_results if r["status"] == "done"]
    folds = [r["fold"] for r in done]
    val_tables = [read_predictions(fold_dir(run_dir, k) / VAL_PREDICTIONS, classes) for k in folds]
    oof_files = [f for t in val_tables for f in t.files]
    oof_labels = np.concatenate([t.labels for t in val_tables])
    oof_probs = np.concatenate([t.probs for t in val_tables])
    oof_folds = [k for k, t in zip(folds, val_tables) for _ in t.files]
    decision = decide(
        oof_labels, oof_probs[:, positive], positive, config.get("threshold_policy"), config.get("balance", "sampler")
    )
    t = decision["threshold"]
    at = {"positive": positive, "threshold": t}
    splits = list(done[0]["splits"]) if done else []
    apply_to_folds(run_dir, folds, splits, classes, positive, t)
    write_predictions(run_dir / OOF, oof_files, oof_labels, oof_probs, classes, {"fold": oof_folds}, **at)
    for r, table in zip(done, val_tables):
        r["val"] = classification_metrics(table.labels, table.probs, classes, positive, table.files, t)
        r["threshold"] = t
    results: dict[str, Any] = {
        **header,
        "classes": list(classes),
        "positive_class": classes[positive],
        "decision": decision,
        "folds_done": folds,
        "folds_failed": [{"fold": r["fold"], "reason": r.get("reason")} for r in fold_results if r["status"] != "done"],
        "folds": fold_results,
        "cross_validation": {"val": mean_std([r["val"] for r in done])},
        "oof": classification_metrics(oof_labels, oof_probs, classes, positive, oof_files, t),
        "ensemble": {},
    }
    oof_title = f"Out-of-fold validation ({len(oof_files)} images, folds {folds}), threshold {t:.3f}"
    texts = [f"{oof_title}\n{report_text(oof_labels, oof_probs, classes, positive, t)}"]
    for split in splits:
        files, labels, per_fold = gather_split(run_dir, folds, split, classes)
        write_split_predictions(run_dir / split_predictions(split), files, labels, per_fold, folds, classes, **at)
        section = evaluate_split(files, labels, per_fold, folds, classes, **at)
        for r in done:
            r["splits"][split] = section["folds"][str(r["fold"])]
        results["cross_validation"][split] = section["fold_mean_std"]
        results["ensemble"][split] = section["ensemble"]
        title = f"Ensemble of {len(folds)} folds on {split} ({len(files)} images), threshold {t:.3f}"
        texts.append(f"{title}\n{report_text(labels, mean_probs(per_fold), classes, positive, t)}")
    for r in done:  # each fold's own record, at the run's decision too
        atomic_write_json(fold_dir(run_dir, r["fold"]) / RESULT, r)
    atomic_write_json(run_dir / RESULTS, results)
    atomic_write_text(run_dir / REPORT, "\n".join(texts))
    return results


KEYS = ("accuracy", "roc_auc", "sensitivity", "specificity")
NAMES = ("acc", "AUC", "sens", "spec")
SPREAD = "mean ± SD (ddof=1)"  # the row of mean_std summaries: sample standard deviation across folds


def number(value: float | None) -> str:
    """A metric to 3 decimals, 'n/a' where undefined."""
    return "n/a" if value is None else f"{value:.3f}"


def _cell(metrics: dict | None, key: str) -> str:
    """A metric, or a mean ± SD summary; "n/a" where undefined, "" where not measured."""
    if metrics is None:
        return ""
    value = metrics.get(key)
    if isinstance(value, dict):
        return "n/a" if value["mean"] is None else f"{value['mean']:.3f} ± {number(value['std'])}"
    return number(value)


def metrics_table(title: str, sections: list[str], rows: list[tuple[str, list[dict | None]]]) -> Table:
    """A table with, per section (val, test, ...), accuracy, AUC, sensitivity and specificity."""
    table = Table(title=title)
    table.add_column("")
    for section in sections:
        for name in NAMES:
            table.add_column(f"{section} {name}", justify="right")
    for label, metrics in rows:
        table.add_row(label, *[_cell(m, k) for m in metrics for k in KEYS])
    return table


def summary_table(results: dict, split: str = "test") -> Table:
    """Per fold, mean ± SD, out-of-fold and ensemble rows, for validation and `split`."""
    sections = ["val"] + ([split] if split in results["ensemble"] else [])
    with_split = len(sections) == 2
    rows: list[tuple[str, list[dict | None]]] = []
    for r in results["folds"]:
        name = f"fold {r['fold']}" if r["status"] == "done" else f"fold {r['fold']} (failed)"
        rows.append((name, [r.get("val"), *([r.get("splits", {}).get(split)] if with_split else [])]))
    cv = results["cross_validation"]
    rows.append((SPREAD, [cv["val"], *([cv[split]] if with_split else [])]))
    rows.append(("out-of-fold", [results["oof"], *([None] if with_split else [])]))
    if with_split:
        rows.append(("ensemble", [None, results["ensemble"][split]]))
    return metrics_table(f"{results['model']} {len(results['folds_done'])}-fold cross-validation", sections, rows)
