"""The positive-class prior of a new site from its unlabelled scores, and the prior-shift correction.

Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs of a classifier to new a priori
probabilities: a simple procedure": if a site differs from the training data only in its class
prior, Bayes' rule turns a calibrated P(positive | x) at the training prior π_t into the posterior
at the site's prior π; EM alternates that correction with π ← the mean corrected posterior. None
of it reads a label of the site.
"""

from __future__ import annotations

import numpy as np

from pneumo.utils.errors import PneumoError

_CLIP = 1e-6


def _prior(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:  # also rejects NaN
        raise PneumoError(f"{name} {value:g}: must be strictly between 0 and 1")
    return value


def _scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise PneumoError("no scores: prior estimation needs at least one image")
    if not np.all((s >= 0.0) & (s <= 1.0)):  # NaN fails both comparisons
        raise PneumoError("scores must be probabilities in [0, 1] (found NaN or a value outside)")
    return s


def adjust_scores(scores: np.ndarray, train_prior: float, new_prior: float) -> np.ndarray:
    """P(positive | x) at `new_prior` from calibrated scores at `train_prior` (Bayes' rule; monotone in the score)."""
    s = _scores(scores)
    up = _prior(new_prior, "new_prior") / _prior(train_prior, "train_prior")
    down = (1.0 - new_prior) / (1.0 - train_prior)
    return s * up / (s * up + (1.0 - s) * down)


def prior_threshold(threshold: float, train_prior: float, new_prior: float) -> float:
    """The threshold on the original scores equivalent to `threshold` on `adjust_scores(..., new_prior)`."""
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise PneumoError(f"threshold {t:g}: must be in [0, 1]")
    up = _prior(new_prior, "new_prior") / _prior(train_prior, "train_prior")
    down = (1.0 - new_prior) / (1.0 - train_prior)
    # s·up / (s·up + (1 − s)·down) ≥ t  ⇔  s·(up·(1 − t) + t·down) ≥ t·down
    return float(t * down / (up * (1.0 - t) + t * down))


def em_prior(scores: np.ndarray, train_prior: float, tol: float = 1e-8, max_iter: int = 1000) -> dict:
    """The site's positive-class prior by EM on its unlabelled scores (Saerens et al. 2002).

    Starts at `train_prior`; stops when the prior moves less than `tol` in one step or after
    `max_iter` steps. Scores are clipped to [1e-6, 1 - 1e-6] so that no image is certain.
    """
    train_prior = _prior(train_prior, "train_prior")
    if not tol > 0:
        raise PneumoError(f"tol {tol:g}: must be positive")
    if int(max_iter) < 1:
        raise PneumoError(f"max_iter {max_iter}: must be at least 1")
    s = np.clip(_scores(scores), _CLIP, 1.0 - _CLIP)
    prior, iterations, converged = train_prior, 0, False
    while iterations < int(max_iter):
        up, down = prior / train_prior, (1.0 - prior) / (1.0 - train_prior)
        new = float(np.mean(s * up / (s * up + (1.0 - s) * down)))
        iterations += 1
        step, prior = abs(new - prior), new
        if step < tol:
            converged = True
            break
    return {
        "prior": prior,
        "iterations": iterations,
        "converged": converged,
        "images": int(s.size),
        "train_prior": train_prior,
    }
