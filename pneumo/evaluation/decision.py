"""A run's decision: one operating point (a policy and the threshold on P(positive) it yields),
chosen on the out-of-fold predictions, recorded in results.json and applied to every prediction
table the run writes. Other policies are computed beside it as labelled alternatives."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumo.data.predictions import redecide_table
from pneumo.metrics.calibration import balance_prior
from pneumo.metrics.threshold import DEFAULT_POLICY, Policy, choose_threshold, parse_policy
from pneumo.utils.errors import PneumoError
from pneumo.utils.fsutil import read_json
from pneumo.utils.run_files import RESULTS, VAL_PREDICTIONS, fold_dir, split_predictions

ALTERNATIVES = ("fixed:0.5", "youden", "balanced", "prior")


def decide(oof_labels: np.ndarray, oof_scores: np.ndarray, positive: int, policy: str | None, balance: str) -> dict:
    """The run's operating point from its out-of-fold labels and P(positive) scores: the policy,
    its threshold, where it was chosen, and the alternatives' thresholds."""
    is_positive = np.asarray(oof_labels) == positive
    train_prior = balance_prior(balance, float(is_positive.mean()))

    def choose(p: Policy) -> dict:
        return choose_threshold(is_positive, oof_scores, p, train_prior)

    chosen = parse_policy(policy or DEFAULT_POLICY)
    decision: dict[str, Any] = {**choose(chosen), "train_prior": train_prior}
    both = bool(is_positive.any() and not is_positive.all())  # data-driven policies need both classes
    others = [parse_policy(name) for name in ALTERNATIVES]
    decision["alternatives"] = {str(p): choose(p) for p in others if p != chosen and (both or p.name == "fixed")}
    return decision


def run_decision(run_dir: Path) -> dict:
    """The decision a finished run recorded in results.json."""
    path = run_dir / RESULTS
    decision = read_json(path).get("decision") if path.exists() else None
    if decision is None:
        raise PneumoError(
            f"{run_dir}: no decision recorded in {RESULTS} (the run has not built its ensemble, or an older "
            f"pneumo wrote it); run `python evaluate.py {run_dir} --ensemble` first"
        )
    return decision


def apply_to_folds(
    run_dir: Path, folds: Sequence[int], splits: Sequence[str], classes: Sequence[str], positive: int, threshold: float
) -> None:
    """Rewrite the pred column of each fold's tables (written while training, before the run had
    its decision) at the run's `threshold`."""
    for k in folds:
        for name in (VAL_PREDICTIONS, *(split_predictions(s) for s in splits)):
            redecide_table(fold_dir(run_dir, k) / name, classes, positive, threshold)
