"""The clinical evaluation of a run: operating point, patient-bootstrap CIs, calibration, Grad-CAM.

Everything is chosen or fitted on the out-of-fold predictions of the training pool and only
applied to the evaluation splits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from pneumo.data.cache import DecodedImages
from pneumo.data.labels import labelled_patients
from pneumo.data.predictions import read_predictions
from pneumo.evaluation.ensemble import mean_probs
from pneumo.evaluation.results import gather_split, number
from pneumo.metrics.bootstrap import RESAMPLES, bootstrap_metrics, patient_clusters
from pneumo.metrics.calibration import METHODS, balance_prior, calibrate, reliability_diagram
from pneumo.metrics.shift import score_shift
from pneumo.models.fold_model import FoldModel, load_fold_model
from pneumo.utils import console
from pneumo.utils.fsutil import atomic_write_json
from pneumo.utils.run_files import BEST, RESULTS, VAL_PREDICTIONS, fold_dir

SALIENCY_IMAGES = 16
AT = ("at_0.5", "at_threshold")


@dataclass
class SplitPredictions:
    """Every fold model's class probabilities (folds, n, classes) on one split."""

    files: list[str]
    labels: np.ndarray
    per_fold: np.ndarray
    folds: list[int]


def oof_predictions(
    run_dir: Path, folds: Sequence[int], classes: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    tables = [read_predictions(fold_dir(run_dir, k) / VAL_PREDICTIONS, classes) for k in folds]
    files = [f for t in tables for f in t.files]
    fold_of = np.concatenate([np.full(len(t.files), k) for k, t in zip(folds, tables)])
    return files, np.concatenate([t.labels for t in tables]), np.concatenate([t.probs for t in tables]), fold_of


def _saliency(
    out_dir: Path, name: str, split: SplitPredictions, scores: np.ndarray, threshold: float, ctx: dict[str, Any]
) -> dict:
    from pneumo.evaluation.saliency import (  # captum only when drawing
        ensemble_cam,
        load_pixels,
        overlay_figure,
        pick_images,
    )

    started = time.perf_counter()
    positive, classes = ctx["positive"], ctx["classes"]
    picked = pick_images(split.files, split.labels == positive, scores, threshold, ctx["n_images"], ctx["seed"])
    record: dict[str, Any] = {"target_class": classes[positive], "threshold": threshold}
    for group, rows in picked.items():
        files = [split.files[i] for i in rows]
        path = out_dir / "saliency" / f"{name}_{group}.png"
        record[group] = files
        if not rows:
            continue
        pixels = load_pixels(ctx["decoded"], files)
        cams = ensemble_cam(ctx["models"], pixels, positive)
        captions = [
            f"{Path(f).name}\ntrue {classes[split.labels[i]]}, P({classes[positive]}) {scores[i]:.2f}"
            for f, i in zip(files, rows)
        ]
        what = "most confident errors" if group == "misclassified" else "random sample"
        title = f"{name}: {what} at threshold {threshold:.3f}; ensemble Grad-CAM for {classes[positive]}"
        overlay_figure(path, title, pixels[:, 0].numpy(), cams, captions)
        record[f"{group}_figure"] = str(path.relative_to(out_dir))
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def clinical_section(
    run_dir: Path,
    folds: Sequence[int],
    splits: dict[str, SplitPredictions],
    classes: Sequence[str],
    positive: int,
    config: dict[str, Any],
    decision: dict[str, Any],
    *,
    out_dir: Path | None = None,
    resamples: int = RESAMPLES,
    models: list[FoldModel] | None = None,
    decoded: DecodedImages | None = None,
    saliency_images: int = SALIENCY_IMAGES,
) -> dict:
    """The run's `decision` (its operating point) with CIs, the alternative policies' thresholds,
    and calibration, for the out-of-fold predictions of `folds` and `splits`.

    With `out_dir`, reliability diagrams go to out_dir/calibration/ and, given `models` and
    `decoded`, Grad-CAM figures to out_dir/saliency/.
    """
    oof_files, oof_labels, oof_probs, oof_folds = oof_predictions(run_dir, folds, classes)
    oof_pos, oof_scores = oof_labels == positive, oof_probs[:, positive]
    op = {k: v for k, v in decision.items() if k != "alternatives"}
    thresholds = {"at_0.5": 0.5, "at_threshold": op["threshold"]}
    seed = int(config.get("seed", 0))
    started = time.perf_counter()

    patient_of = labelled_patients(config)

    def ci(files: Sequence[str], labels: np.ndarray, scores: np.ndarray) -> dict:
        clusters = patient_clusters(files, labels, classes, patient_of)
        return bootstrap_metrics(labels, scores, positive, thresholds, clusters, resamples=resamples, seed=seed)

    section: dict[str, Any] = {"operating_point": op}
    section["oof"] = {
        "pooled": ci(oof_files, oof_labels, oof_scores),
        "folds": {
            str(k): ci(
                [f for f, j in zip(oof_files, oof_folds) if j == k],
                oof_labels[oof_folds == k],
                oof_scores[oof_folds == k],
            )
            for k in folds
        },
    }
    ensembles = {name: mean_probs(s.per_fold)[:, positive] for name, s in splits.items()}
    scored = {
        "out-of-fold": (oof_pos, oof_scores),
        **{n: (s.labels == positive, ensembles[n]) for n, s in splits.items()},
    }
    section["alternatives"] = {
        policy: {"threshold": alt["threshold"], **{n: rates(y, p, alt["threshold"]) for n, (y, p) in scored.items()}}
        for policy, alt in decision.get("alternatives", {}).items()
    }
    section["splits"] = {
        name: {
            "ensemble": ci(s.files, s.labels, ensembles[name]),
            "folds": {str(k): ci(s.files, s.labels, p[:, positive]) for k, p in zip(s.folds, s.per_fold)},
        }
        for name, s in splits.items()
    }
    section["shift"] = {
        name: score_shift(oof_scores, oof_pos, ensembles[name], seed=seed, positive_name=classes[positive], name=name)
        for name in splits
    }
    section["bootstrap"] = {
        "resamples": resamples,
        "confidence": 0.95,
        "method": "BCa (scipy.stats.bootstrap); percentile where BCa is undefined",
        "unit": "patient (a labels CSV's patient column, else pneumo.data.folds.patient_key), "
        "resampled within each class",
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 2),
    }
    train_prior = balance_prior(str(config.get("balance", "sampler")), float(oof_pos.mean()))
    truths = {name: (s.labels == positive, ensembles[name]) for name, s in splits.items()}
    section["calibration"], curves = calibrate(oof_pos, oof_scores, oof_folds, truths, train_prior)
    if out_dir is not None:
        for name, by_kind in curves.items():
            truth = oof_pos if name == "oof" else truths[name][0]
            label = "out-of-fold (cross-fitted)" if name == "oof" else f"{name}, ensemble"
            reliability_diagram(out_dir / "calibration" / f"reliability_{name}.png", label, truth, by_kind)
        if models and decoded is not None and saliency_images > 0:
            ctx = {
                "positive": positive,
                "classes": classes,
                "n_images": saliency_images,
                "seed": seed,
                "models": models,
                "decoded": decoded,
            }
            section["saliency"] = {
                name: _saliency(out_dir, name, s, ensembles[name], op["threshold"], ctx) for name, s in splits.items()
            }
    return section


def run_splits(run_dir: Path, results: dict) -> dict[str, SplitPredictions]:
    """The run's evaluation splits, from the fold models' prediction tables it wrote."""
    folds, classes = results["folds_done"], results["classes"]
    return {s: SplitPredictions(*gather_split(run_dir, folds, s, classes), folds) for s in results["ensemble"]}


def run_clinical_section(run_dir: Path, results: dict, config: dict[str, Any], **drawing: Any) -> dict:
    """The clinical section of a run's results.json, from its prediction tables and decision (and,
    with `drawing`, out_dir/models/decoded/saliency_images for its figures)."""
    classes = results["classes"]
    positive = classes.index(results["positive_class"])
    splits = run_splits(run_dir, results)
    folds = results["folds_done"]
    return clinical_section(run_dir, folds, splits, classes, positive, config, results["decision"], **drawing)


def warn_shift(section: dict) -> None:
    """One line per evaluated split whose scores sit outside what out-of-fold predicts."""
    for shift in section.get("shift", {}).values():
        if shift["shifted"]:
            console.warn(shift["summary"])


def rates(positive: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Accuracy, sensitivity and specificity of calling P(positive) >= threshold positive."""
    positive, call = np.asarray(positive, dtype=bool), np.asarray(scores) >= threshold
    return {
        "accuracy": float((call == positive).mean()) if len(positive) else None,
        "sensitivity": float(call[positive].mean()) if positive.any() else None,
        "specificity": float((~call[~positive]).mean()) if (~positive).any() else None,
    }


def add_clinical(
    run_dir: Path, results: dict, config: dict[str, Any], decoded: DecodedImages | None, device: torch.device
) -> dict:
    """The end of training: the clinical section with its figures in the run, saved in results.json."""
    started = time.perf_counter()
    n_images = int(config.get("saliency_images", SALIENCY_IMAGES))
    folds = results["folds_done"]
    models = (
        [load_fold_model(fold_dir(run_dir, k) / BEST, device, expect_model=results["model"]) for k in folds]
        if n_images > 0
        else None
    )
    drawing = {"out_dir": run_dir, "models": models, "decoded": decoded, "saliency_images": n_images}
    results = {**results, "clinical": run_clinical_section(run_dir, results, config, **drawing)}
    atomic_write_json(run_dir / RESULTS, results)
    warn_shift(results["clinical"])
    console.log(
        f"clinical evaluation (operating point, CIs, calibration, Grad-CAM): {time.perf_counter() - started:.1f}s"
    )
    return results


# ---- tables -------------------------------------------------------------------------------------------------------


def ci_text(m: dict | None) -> str:
    """'0.912 (0.890-0.931)' for a {value, low, high} record."""
    if not m or m.get("value") is None:
        return "-"
    if m.get("low") is None or m.get("high") is None:
        return f"{m['value']:.3f} (no CI)"
    return f"{m['value']:.3f} ({m['low']:.3f}–{m['high']:.3f})"


TABLE_KEYS = (
    ("accuracy", "accuracy"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("roc_auc", "ROC-AUC"),
)


def clinical_tables(section: dict) -> list[Table]:
    """The operating-point table (with 95% CIs), the alternative policies and the calibration table
    of a clinical section."""
    op, boot = section["operating_point"], section["bootstrap"]
    t = op["threshold"]
    table = Table(
        title=f"The run's decision {op['policy']}: threshold {t:.3f} on P(positive), chosen on out-of-fold, used by "
        "every prediction; "
        f"95% CIs from {boot['resamples']} patient-bootstrap resamples"
    )
    table.add_column("")
    table.add_column("threshold", justify="right")
    for _, name in TABLE_KEYS:
        table.add_column(name, justify="right")
    rows = [("out-of-fold", section["oof"]["pooled"])]
    rows += [(f"{name} ensemble", s["ensemble"]) for name, s in section["splits"].items()]
    for label, by_threshold in rows:
        for at, shown in ((AT[1], f"{t:.3f}"), (AT[0], "0.5 (alternative)")):
            table.add_row(label, shown, *[ci_text(by_threshold[at][k]) for k, _ in TABLE_KEYS])
    tables = [table]
    if section.get("alternatives"):
        sources = list(next(iter(section["alternatives"].values())))[1:]
        alt = Table(title=f"Alternative policies (not this run's decision, {op['policy']}), each chosen on out-of-fold")
        alt.add_column("policy")
        alt.add_column("threshold", justify="right")
        for name in sources:
            for key in ("accuracy", "sensitivity", "specificity"):
                alt.add_column(f"{name} {key}", justify="right")
        for policy, row in section["alternatives"].items():
            cells = [number(row[name][key]) for name in sources for key in ("accuracy", "sensitivity", "specificity")]
            alt.add_row(policy, f"{row['threshold']:.3f}", *cells)
        tables.append(alt)
    cal = section["calibration"]
    calib = Table(
        title=f"Calibration of P(positive): ECE ({cal['ece_bins']}), Brier score, images called positive at 0.5; "
        "maps fitted on out-of-fold (its own rows cross-fitted by fold)"
    )
    calib.add_column("")
    for name in cal["splits"]:
        where = "out-of-fold" if name == "oof" else name
        for column in ("ECE", "Brier", "positive at 0.5"):
            calib.add_column(f"{where} {column}", justify="right")
    for kind in ("uncalibrated", *METHODS):
        cells = []
        for by_kind in cal["splits"].values():
            m = by_kind.get(kind)  # absent: out-of-fold rows of a one-fold run cannot be cross-fitted
            cells += [f"{m['ece']:.3f}", f"{m['brier']:.3f}", str(m["positive_at_0.5"])] if m else ["n/a"] * 3
        calib.add_row(kind, *cells)
    return [*tables, calib]
