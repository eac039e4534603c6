"""Calibration of P(positive): ECE, Brier score, reliability diagrams, and recalibration maps
fitted on out-of-fold predictions only.

All maps work on the logit z = log(p / (1 - p)) and are monotone, so none changes a ranking
(ROC-AUC, PR-AUC):
- temperature scaling, sigmoid(z / T): keeps the sign of z, so never changes a decision at 0.5;
- Platt (affine) scaling, sigmoid(a z + b): moves the 0.5 decision boundary by its intercept;
- prior shift, sigmoid(z + log-odds(pool prevalence) - log-odds(training prevalence)): corrects
  for training at another class balance than the pool's (Saerens et al. 2002); moves the
  0.5 boundary whenever the two differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from pneumo.utils.balance import CLASS_POWER

ECE_BINS = 15
METHODS = ("temperature", "platt", "prior_shift")
_EPS = 1e-7


def expected_calibration_error(positive: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE of P(positive): 15 equal-width bins on [0, 1], sum over bins of (bin share) x
    |observed positive rate - mean predicted probability| (the binning of sklearn's calibration_curve)."""
    positive = np.asarray(positive, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], probs)  # as sklearn's calibration_curve
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, positive, n_bins) - np.bincount(bins, probs, n_bins))
    return float(gap.sum() / max(len(probs), 1)) if count.any() else float("nan")


def to_logit(probs: np.ndarray) -> np.ndarray:
    return logit(np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS))


def balance_prior(balance: str, pool_prevalence: float) -> float:
    """The positive-class prevalence a model is effectively trained at under `--balance`.

    A sampler weighting each image by (count of its class) ** -power draws a class in
    proportion to count ** (1 - power) (pneumo.utils.balance.CLASS_POWER): 50/50 for the
    balanced sampler and the class-weighted loss, the pool's prevalence for `none`.
    """
    keep = 1.0 - CLASS_POWER[balance]
    positive, negative = pool_prevalence**keep, (1.0 - pool_prevalence) ** keep
    return float(positive / (positive + negative))


@dataclass
class Calibrator:
    """A fitted recalibration map of P(positive)."""

    method: str
    params: dict[str, float]

    def apply(self, probs: np.ndarray) -> np.ndarray:
        z = to_logit(probs)
        p = self.params
        if self.method == "temperature":
            return expit(z / p["temperature"])
        if self.method == "platt":
            return expit(p["slope"] * z + p["intercept"])
        return expit(z + p["log_odds_shift"])


def fit_calibrator(method: str, positive: np.ndarray, probs: np.ndarray, train_prior: float) -> Calibrator:
    """Fit `method` on (out-of-fold) labels and probabilities by maximum likelihood.

    `train_prior` (the prevalence the model trained at) is used by prior_shift only, which
    fits nothing else: its shift comes from the prevalence of `positive`.
    """
    positive = np.asarray(positive, dtype=bool)
    z = to_logit(probs)
    if method == "temperature":

        def nll(log_t: float) -> float:
            q = np.clip(expit(z / np.exp(log_t)), _EPS, 1 - _EPS)
            return float(-np.mean(np.where(positive, np.log(q), np.log1p(-q))))

        best = minimize_scalar(nll, bounds=(np.log(0.02), np.log(50.0)), method="bounded", options={"xatol": 1e-6})
        return Calibrator(method, {"temperature": float(np.exp(best.x))})
    if method == "platt":
        model = LogisticRegression(C=np.inf).fit(z[:, None], positive)
        return Calibrator(method, {"slope": float(model.coef_[0, 0]), "intercept": float(model.intercept_[0])})
    if method == "prior_shift":
        pool = float(positive.mean())
        shift = float(logit(pool) - logit(train_prior))
        return Calibrator(method, {"pool_prevalence": pool, "train_prevalence": train_prior, "log_odds_shift": shift})
    raise ValueError(f"unknown calibration method {method!r}")


def calibration_numbers(positive: np.ndarray, probs: np.ndarray) -> dict[str, float | int]:
    """ECE, Brier score and the number of images called positive at 0.5."""
    return {
        "ece": expected_calibration_error(positive, probs),
        "brier": float(brier_score_loss(np.asarray(positive, dtype=int), probs, pos_label=1)),
        "positive_at_0.5": int(np.count_nonzero(np.asarray(probs) > 0.5)),
    }


def cross_fitted(
    method: str, positive: np.ndarray, probs: np.ndarray, folds: np.ndarray, train_prior: float
) -> np.ndarray:
    """Out-of-fold probabilities recalibrated fold by fold, each by a map fitted on the other folds."""
    out = np.empty(len(probs))
    for k in np.unique(folds):
        rows = folds == k
        out[rows] = fit_calibrator(method, positive[~rows], probs[~rows], train_prior).apply(probs[rows])
    return out


def reliability_diagram(path: Path, title: str, positive: np.ndarray, curves: dict[str, np.ndarray]) -> None:
    """A reliability diagram (15 equal-width bins) of each named probability set, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import CalibrationDisplay

    from pneumo.utils.fsutil import atomic_path

    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    for i, (name, probs) in enumerate(curves.items()):
        ece = expected_calibration_error(positive, probs)
        CalibrationDisplay.from_predictions(
            np.asarray(positive, dtype=int),
            probs,
            n_bins=ECE_BINS,
            strategy="uniform",
            name=f"{name} (ECE {ece:.3f})",
            ax=ax,
            ref_line=i == 0,
        )
    ax.set_title(title)
    ax.set_xlabel("mean predicted P(positive)")
    ax.set_ylabel("observed fraction positive")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def calibrate(
    oof_positive: np.ndarray,
    oof_probs: np.ndarray,
    oof_folds: np.ndarray,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    train_prior: float,
    methods: Sequence[str] = METHODS,
) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Fit every method on the out-of-fold predictions and apply it to each split's ensemble.

    Returns (numbers, curves): numbers per method with its parameters and, for out-of-fold
    (cross-fitted by fold) and each split, ECE/Brier before and after; curves hold the
    probabilities before and after, per split, for reliability diagrams. `splits` maps a
    name to (positive, probs) and is never used for fitting. Out-of-fold predictions of a
    single fold have no recalibrated rows (there is no other fold to fit on).
    """
    positive = np.asarray(oof_positive, dtype=bool)
    fitted = {m: fit_calibrator(m, positive, oof_probs, train_prior) for m in methods}
    curves = {"oof": {"uncalibrated": np.asarray(oof_probs, dtype=np.float64)}}
    if len(np.unique(oof_folds)) > 1:  # cross-fitting needs another fold: one fold has no recalibrated rows
        for m in methods:
            curves["oof"][m] = cross_fitted(m, positive, oof_probs, oof_folds, train_prior)
    for name, (_, probs) in splits.items():
        curves[name] = {"uncalibrated": np.asarray(probs, dtype=np.float64)}
        curves[name].update({m: c.apply(probs) for m, c in fitted.items()})
    truth = {"oof": positive, **{name: np.asarray(pos, dtype=bool) for name, (pos, _) in splits.items()}}
    numbers = {
        "ece_bins": f"{ECE_BINS} equal-width bins of P(positive) on [0, 1]",
        "fitted_on": f"out-of-fold predictions ({len(positive)} images); out-of-fold rows are cross-fitted by fold",
        "methods": {m: c.params for m, c in fitted.items()},
        "splits": {
            name: {kind: calibration_numbers(truth[name], probs) for kind, probs in by_kind.items()}
            for name, by_kind in curves.items()
        },
    }
    return numbers, curves
