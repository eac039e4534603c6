"""The fold ensemble: the mean of the fold models' softmax probabilities."""

from __future__ import annotations

import numpy as np


def mean_probs(per_fold: np.ndarray) -> np.ndarray:
    """The ensemble: the mean of the fold models' softmax probabilities."""
    return np.asarray(per_fold, dtype=np.float64).mean(axis=0)
