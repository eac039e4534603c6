"""95% bootstrap confidence intervals that resample patients, not images, stratified by class.

A child often has several X-rays whose predictions are correlated; resampling images would
treat them as independent and give intervals that are too narrow. The resampled unit is
the patient (a cluster of images). `scipy.stats.bootstrap` draws the resamples and forms
the BCa interval: each class's patients are one of its independent samples (so the number
of patients per class is fixed: stratified), and the statistic expands the drawn patients
into per-image weights. Every metric of every threshold comes out of one vectorised pass.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from pneumo.data.folds import patient_key

THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1")
RANKING_METRICS = ("roc_auc", "pr_auc")
METRICS = THRESHOLD_METRICS + RANKING_METRICS
RESAMPLES = 2000
CONFIDENCE = 0.95
_BATCH_CELLS = 4_000_000  # resamples x images per vectorised call (~32 MB of float64 weights)


def patient_clusters(
    files: Sequence[str], labels: np.ndarray, classes: Sequence[str], patient_of: Mapping[str, str] | None = None
) -> np.ndarray:
    """Integer patient id per image: from `patient_of` (a labels CSV's patient column) where it
    names the file, else from the Kermany file names (pneumo.data.folds.patient_key)."""
    patient_of = patient_of or {}
    keys = [patient_of.get(f) or patient_key(f, classes[int(y)]) for f, y in zip(files, labels)]
    return np.unique(keys, return_inverse=True)[1]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def weighted_metrics(
    weights: np.ndarray,
    positive: np.ndarray,
    scores: np.ndarray,
    thresholds: Sequence[float],
    unit_of: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Metrics of every row of `weights` (how often each unit was drawn; image i belongs to
    unit `unit_of[i]`, by default unit i).

    Returns (len(thresholds), 6, rows) THRESHOLD_METRICS (called positive when score >=
    threshold) and (2, rows) ranking metrics: ROC-AUC (ties count half) and PR-AUC as
    average precision (sklearn's definition).
    """
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    pos = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    unit_of = np.arange(len(scores)) if unit_of is None else np.asarray(unit_of)
    levels = np.unique(scores)[::-1]  # distinct scores, highest first
    level_of = np.searchsorted(-levels, -scores)

    def per_level(mask: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(level_of[idx], kind="stable")]
        out = np.zeros((len(w), len(levels)))
        if len(idx):
            starts = np.flatnonzero(np.r_[True, np.diff(level_of[idx]) != 0])
            out[:, level_of[idx][starts]] = np.add.reduceat(w[:, unit_of[idx]], starts, axis=1)
        return out

    p_at, n_at = per_level(pos), per_level(~pos)
    tp_cum, fp_cum = np.cumsum(p_at, axis=1), np.cumsum(n_at, axis=1)
    w_pos, w_neg = tp_cum[:, -1], fp_cum[:, -1]
    out = np.empty((len(thresholds), len(THRESHOLD_METRICS), len(w)))
    for i, t in enumerate(thresholds):
        k = int(np.count_nonzero(levels >= t))  # the levels called positive are the first k
        tp = tp_cum[:, k - 1] if k else np.zeros(len(w))
        fp = fp_cum[:, k - 1] if k else np.zeros(len(w))
        fn, tn = w_pos - tp, w_neg - fp
        out[i] = [
            _ratio(tp + tn, w_pos + w_neg),
            _ratio(tp, w_pos),
            _ratio(tn, w_neg),
            _ratio(tp, tp + fp),
            _ratio(tn, tn + fn),
            _ratio(2 * tp, 2 * tp + fp + fn),
        ]
    neg_below = w_neg[:, None] - fp_cum  # negatives scored strictly lower than each level
    auc = _ratio(np.einsum("ij,ij->i", p_at, neg_below + 0.5 * n_at), w_pos * w_neg)
    called = tp_cum + fp_cum
    precision = np.divide(tp_cum, called, out=np.zeros_like(called), where=called > 0)
    ap = _ratio(np.einsum("ij,ij->i", p_at, precision), w_pos)
    return out, np.stack([auc, ap])


def _counts(drawn: Sequence[np.ndarray], strata: Sequence[np.ndarray], n_clusters: int) -> np.ndarray:
    """How often each cluster was drawn (rows x clusters), from drawn positions within each stratum."""
    rows = int(np.prod(np.shape(drawn[0])[:-1]))
    counts = np.zeros((rows, n_clusters))
    offsets = n_clusters * np.arange(rows)[:, None]
    for d, members in zip(drawn, strata):
        ids = members[np.asarray(d, dtype=np.int64).reshape(rows, -1)]
        counts += np.bincount((ids + offsets).ravel(), minlength=rows * n_clusters).reshape(rows, n_clusters)
    return counts


def _interval(point: float, low: float, high: float, distribution: np.ndarray) -> dict:
    if not np.isfinite(point):
        return {"value": None, "low": None, "high": None}
    if not (np.isfinite(low) and np.isfinite(high)):
        # BCa is undefined when the bootstrap distribution is degenerate (e.g. every resample
        # has specificity 1): fall back to the percentile interval.
        finite = distribution[np.isfinite(distribution)]
        tail = (1 - CONFIDENCE) / 2 * 100
        low, high = np.percentile(finite, [tail, 100 - tail]) if len(finite) else (point, point)
    return {"value": float(point), "low": float(low), "high": float(high)}


def bootstrap_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    positive: int,
    thresholds: dict[str, float],
    clusters: np.ndarray | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict:
    """Point estimates and 95% BCa intervals of METRICS at each named threshold.

    `clusters` gives each image's patient (None: every image its own). Patients are resampled
    with replacement within each class (by the label of their first image). Returns
    {name: {metric: {"value", "low", "high"}}}; ROC-AUC and PR-AUC appear under every name.
    """
    labels = np.asarray(labels, dtype=np.int64)
    pos = labels == positive
    scores = np.asarray(scores, dtype=np.float64)
    cluster_of = np.arange(len(labels)) if clusters is None else np.unique(clusters, return_inverse=True)[1]
    first = np.unique(cluster_of, return_index=True)[1]
    n_clusters = len(first)
    strata = [np.flatnonzero(pos[first] == c) for c in (False, True) if np.any(pos[first] == c)]
    names = list(thresholds)
    values = list(thresholds.values())

    def statistic(*drawn: np.ndarray, axis: int = -1) -> np.ndarray:
        counts = _counts(drawn, strata, n_clusters)
        at, ranking = weighted_metrics(counts, pos, scores, values, cluster_of)
        stacked = np.concatenate([at.reshape(-1, len(counts)), ranking])
        return stacked.reshape(-1, *np.asarray(drawn[0]).shape[:-1])

    point = statistic(*[np.arange(len(s)) for s in strata])
    k = len(THRESHOLD_METRICS)
    if min(len(s) for s in strata) < 2:
        # One patient in a class cannot be resampled into an interval: estimates only.
        cis = [{"value": float(p) if np.isfinite(p) else None, "low": None, "high": None} for p in point]
        ranking = dict(zip(RANKING_METRICS, cis[len(names) * k :]))
        return {n: {**dict(zip(THRESHOLD_METRICS, cis[i * k : (i + 1) * k])), **ranking} for i, n in enumerate(names)}
    samples = tuple(np.arange(len(s)) for s in strata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate outputs are handled in _interval
        res = stats.bootstrap(
            samples,
            statistic,
            n_resamples=resamples,
            batch=max(1, _BATCH_CELLS // max(1, len(labels) + n_clusters)),
            vectorized=True,
            method="BCa",
            confidence_level=CONFIDENCE,
            rng=np.random.default_rng(seed),
        )
    low, high = res.confidence_interval
    cis = [_interval(p, lo, hi, d) for p, lo, hi, d in zip(point, low, high, res.bootstrap_distribution)]
    ranking = dict(zip(RANKING_METRICS, cis[len(names) * k :]))
    return {name: {**dict(zip(THRESHOLD_METRICS, cis[i * k : (i + 1) * k])), **ranking} for i, name in enumerate(names)}


def timed_bootstrap(*args, **kwargs) -> tuple[dict, float]:
    """`bootstrap_metrics` and the seconds it took."""
    started = time.perf_counter()
    return bootstrap_metrics(*args, **kwargs), time.perf_counter() - started
