"""The operating point: a decision threshold on P(positive), chosen on out-of-fold predictions.

A case is called positive when its probability is >= the threshold. Data-driven policies
pick among the cuts between consecutive distinct out-of-fold scores and report the cut's
midpoint, so the threshold sits between two observed scores rather than on one of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pneumo.metrics.prior import prior_threshold
from pneumo.utils.errors import PneumoError

POLICIES = ("youden", "balanced", "prior", "sensitivity", "specificity", "fixed")
DEFAULT_POLICY = "fixed:0.5"  # studies/decision
_HELP = "youden, balanced, prior, sensitivity:0.95, specificity:0.90 or fixed:0.5"


@dataclass(frozen=True)
class Policy:
    """A threshold policy: its name and, for sensitivity/specificity/fixed, its target value."""

    name: str
    value: float | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value:g}"


def parse_policy(text: str, option: str = "--threshold-policy") -> Policy:
    """Parse 'youden', 'balanced', 'prior', 'sensitivity:X', 'specificity:X' or 'fixed:X' (X in [0, 1])."""
    name, _, raw = str(text).strip().partition(":")
    if name not in POLICIES:
        raise PneumoError(f"{option} {text}: unknown policy; use {_HELP}")
    if name in ("youden", "balanced", "prior"):
        if raw:
            raise PneumoError(f"{option} {text}: {name} takes no value; use {_HELP}")
        return Policy(name)
    try:
        value = float(raw)
    except ValueError:
        raise PneumoError(f"{option} {text}: {name} needs a value in [0, 1], e.g. {name}:0.9") from None
    if not 0.0 <= value <= 1.0:
        raise PneumoError(f"{option} {text}: the value must be in [0, 1]")
    return Policy(name, value)


def operating_curve(positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct way to cut the scores: (thresholds, sensitivity, specificity), thresholds descending.

    Threshold j calls positive the scores above the j-th cut; the first (above the highest
    score) calls nothing positive, the last (at 0) everything.
    """
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    levels = np.unique(scores)[::-1]  # descending
    cuts = np.concatenate(
        [[(1.0 + levels[0]) / 2 if levels[0] < 1 else np.nextafter(1.0, 2.0)], (levels[:-1] + levels[1:]) / 2, [0.0]]
    )
    # Cumulative positives/negatives at or above each level, highest first.
    order = np.searchsorted(-levels, -scores)
    pos_at = np.bincount(order, weights=positive, minlength=len(levels))
    neg_at = np.bincount(order, weights=~positive, minlength=len(levels))
    tp = np.concatenate([[0.0], np.cumsum(pos_at)])
    fp = np.concatenate([[0.0], np.cumsum(neg_at)])
    n_pos, n_neg = max(positive.sum(), 1), max((~positive).sum(), 1)
    return cuts, tp / n_pos, 1.0 - fp / n_neg


def choose_threshold(positive: np.ndarray, scores: np.ndarray, policy: Policy, train_prior: float = 0.5) -> dict:
    """The policy's threshold on these (out-of-fold) scores, with the sensitivity and specificity it gives there.

    youden: maximises sensitivity + specificity - 1 (ties: the highest threshold);
    balanced: sensitivity closest to specificity (ties: the larger sum);
    prior: the fewest errors at the out-of-fold class prior for a model trained at `train_prior`
    (the sampler's prior; Bayes' rule moves 0.5 on its outputs to this threshold);
    sensitivity:X: the highest threshold with sensitivity >= X (the best specificity there);
    specificity:X: the lowest threshold with specificity >= X (the best sensitivity there);
    fixed:X: X.
    """
    positive = np.asarray(positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if policy.name == "fixed":
        threshold = float(policy.value)
    elif policy.name == "prior":
        threshold = prior_threshold(0.5, train_prior, float(positive.mean()))
    else:
        if positive.all() or not positive.any():
            raise PneumoError(f"threshold policy {policy}: needs out-of-fold predictions of both classes")
        cuts, sens, spec = operating_curve(positive, scores)
        if policy.name == "youden":
            j = int(np.argmax(sens + spec))
        elif policy.name == "balanced":
            gap = np.abs(sens - spec)
            tied = np.flatnonzero(gap == gap.min())
            j = int(tied[np.argmax((sens + spec)[tied])])
        elif policy.name == "sensitivity":
            j = int(np.flatnonzero(sens >= policy.value)[0])
        else:
            j = int(np.flatnonzero(spec >= policy.value)[-1])
        threshold = float(cuts[j])
    called = scores >= threshold
    return {
        "policy": str(policy),
        "threshold": threshold,
        "chosen_on": f"out-of-fold predictions ({len(scores)} images)",
        "oof_sensitivity": float(called[positive].mean()) if positive.any() else None,
        "oof_specificity": float((~called[~positive]).mean()) if (~positive).any() else None,
    }
