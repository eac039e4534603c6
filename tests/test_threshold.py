"""The operating point: each policy's threshold, checked against sklearn's ROC curve of the same data."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from pneumo.metrics.threshold import choose_threshold, parse_policy
from pneumo.utils.errors import PneumoError


@pytest.fixture
def oof():
    """Imbalanced scores with ties (rounded to 2 decimals), like a 1:3 NORMAL:PNEUMONIA pool."""
    rng = np.random.default_rng(7)
    positive = rng.random(800) < 0.74
    scores = np.round(np.clip(rng.normal(np.where(positive, 0.7, 0.35), 0.2), 0, 1), 2)
    return positive, scores


def _sens_spec(positive, scores, threshold):
    called = scores >= threshold
    return called[positive].mean(), (~called[~positive]).mean()


def test_youden_threshold_maximises_sensitivity_plus_specificity_on_oof(oof):
    positive, scores = oof
    chosen = choose_threshold(positive, scores, parse_policy("youden"))
    fpr, tpr, _ = roc_curve(positive, scores)
    sens, spec = _sens_spec(positive, scores, chosen["threshold"])
    assert sens + spec - 1 == pytest.approx(np.max(tpr - fpr), abs=1e-12)
    assert (chosen["oof_sensitivity"], chosen["oof_specificity"]) == pytest.approx((sens, spec))


def test_threshold_lies_between_two_observed_scores(oof):
    positive, scores = oof
    t = choose_threshold(positive, scores, parse_policy("youden"))["threshold"]
    below, above = scores[scores < t].max(), scores[scores >= t].min()
    assert t == pytest.approx((below + above) / 2)


def test_sensitivity_target_gives_the_best_specificity_that_meets_it(oof):
    positive, scores = oof
    t = choose_threshold(positive, scores, parse_policy("sensitivity:0.95"))["threshold"]
    fpr, tpr, _ = roc_curve(positive, scores, drop_intermediate=False)
    sens, spec = _sens_spec(positive, scores, t)
    assert sens >= 0.95
    assert spec == pytest.approx(np.max(1 - fpr[tpr >= 0.95]))


def test_specificity_target_gives_the_best_sensitivity_that_meets_it(oof):
    positive, scores = oof
    t = choose_threshold(positive, scores, parse_policy("specificity:0.90"))["threshold"]
    fpr, tpr, _ = roc_curve(positive, scores, drop_intermediate=False)
    sens, spec = _sens_spec(positive, scores, t)
    assert spec >= 0.90
    assert sens == pytest.approx(np.max(tpr[1 - fpr >= 0.90]))


def test_balanced_threshold_makes_sensitivity_closest_to_specificity(oof):
    positive, scores = oof
    t = choose_threshold(positive, scores, parse_policy("balanced"))["threshold"]
    fpr, tpr, _ = roc_curve(positive, scores, drop_intermediate=False)
    sens, spec = _sens_spec(positive, scores, t)
    assert abs(sens - spec) == pytest.approx(np.min(np.abs(tpr - (1 - fpr))))


def test_fixed_policy_uses_its_value(oof):
    positive, scores = oof
    assert choose_threshold(positive, scores, parse_policy("fixed:0.3"))["threshold"] == 0.3


@pytest.mark.parametrize("text", ["yuden", "sensitivity", "specificity:1.5", "fixed:abc", "youden:0.5"])
def test_bad_policy_is_one_clear_error(text):
    with pytest.raises(PneumoError, match="--threshold-policy"):
        parse_policy(text)


def test_prior_policy_is_bayes_minimum_error_at_the_pool_prior():
    # Trained at a 50/50 prior, a pool with 3 positives in 4: P >= 1/4 calls positive (odds 1 : 3).
    positive = np.array([True, True, True, False] * 25)
    scores = np.linspace(0.01, 0.99, 100)
    assert choose_threshold(positive, scores, parse_policy("prior"), 0.5)["threshold"] == pytest.approx(0.25)
    # Trained at the pool's own prior the outputs need no correction: 0.5.
    assert choose_threshold(positive, scores, parse_policy("prior"), 0.75)["threshold"] == pytest.approx(0.5)
