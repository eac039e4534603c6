"""Label-free prior estimation (EM, Saerens et al. 2002) against the prior that generated each site,
and the prior-shift correction and its threshold against closed-form values."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from pneumo.metrics.prior import adjust_scores, em_prior, prior_threshold
from pneumo.utils.errors import PneumoError

# Scores of a model calibrated at prior 0.5: positives ~ Beta(A + 1, A), negatives ~ Beta(A, A + 1).
# Their density ratio is s / (1 - s), so P(positive | s) = s on a 50/50 pool.
A = 0.5
SITE = 4000


def _pool(seed: int = 0, per_class: int = 20_000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.concatenate([rng.beta(A + 1, A, per_class), rng.beta(A, A + 1, per_class)])
    positive = np.arange(2 * per_class) < per_class
    return scores, positive


def _site(prior: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """SITE images drawn without replacement from the pool, exactly round(prior * SITE) of them positive."""
    scores, positive = _pool()
    rng = np.random.default_rng(seed)
    n_pos = round(prior * SITE)
    rows = np.concatenate(
        [
            rng.choice(np.flatnonzero(positive), n_pos, replace=False),
            rng.choice(np.flatnonzero(~positive), SITE - n_pos, replace=False),
        ]
    )
    rng.shuffle(rows)
    return scores[rows], positive[rows]


def test_the_synthetic_scores_are_calibrated_at_the_training_prior():
    scores, positive = _pool()
    bins = np.digitize(scores, np.linspace(0, 1, 11)[1:-1])
    for b in range(10):
        rows = bins == b
        assert positive[rows].mean() == pytest.approx(scores[rows].mean(), abs=0.03)


@pytest.mark.parametrize(("prior", "seed"), [(0.2, 1), (0.8, 2)])
def test_em_recovers_a_shifted_site_prior(prior, seed):
    scores, _ = _site(prior, seed)
    result = em_prior(scores, train_prior=0.5)
    assert result["converged"]
    assert result["prior"] == pytest.approx(prior, abs=0.03)
    assert result["images"] == SITE
    assert result["train_prior"] == 0.5
    assert 1 <= result["iterations"] < 1000


def test_em_under_no_shift_returns_the_training_prior():
    scores, _ = _site(0.5, 3)
    result = em_prior(scores, train_prior=0.5)
    assert result["converged"]
    assert result["prior"] == pytest.approx(0.5, abs=0.03)


def test_em_takes_no_labels():
    assert list(inspect.signature(em_prior).parameters) == ["scores", "train_prior", "tol", "max_iter"]


def test_em_output_is_identical_whatever_the_labels():
    scores, positive = _site(0.2, 4)
    before = em_prior(scores, 0.5)
    np.random.default_rng(5).shuffle(positive)  # the labels we generated, permuted; the scores untouched
    assert em_prior(scores, 0.5) == before
    del positive
    assert em_prior(scores, 0.5) == before


def test_em_stops_at_max_iter_without_claiming_convergence():
    scores, _ = _site(0.2, 6)
    result = em_prior(scores, 0.5, tol=1e-15, max_iter=2)
    assert result["iterations"] == 2
    assert not result["converged"]


def test_em_first_step_is_the_mean_score():
    # From π = π_t the correction is the identity, so one step gives mean(score).
    scores = np.array([0.1, 0.4, 0.9, 0.7])
    assert em_prior(scores, 0.3, max_iter=1)["prior"] == pytest.approx(0.525, abs=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda: em_prior(np.array([]), 0.5),
        lambda: em_prior(np.array([0.2, np.nan]), 0.5),
        lambda: em_prior(np.array([0.2, 1.5]), 0.5),
        lambda: em_prior(np.array([0.2, 0.4]), 0.0),
        lambda: em_prior(np.array([0.2, 0.4]), 1.0),
        lambda: em_prior(np.array([0.2, 0.4]), float("nan")),
        lambda: em_prior(np.array([0.2, 0.4]), 0.5, max_iter=0),
        lambda: adjust_scores(np.array([0.2]), 0.5, 1.0),
        lambda: prior_threshold(1.2, 0.5, 0.3),
    ],
)
def test_bad_inputs_raise_a_one_line_pneumo_error(call):
    with pytest.raises(PneumoError) as info:
        call()
    assert "\n" not in str(info.value)


def test_adjusted_scores_match_closed_form_values():
    # Even odds at π_t = 0.5 become the new prior's odds; odds scale by (π/π_t) / ((1-π)/(1-π_t)).
    s = np.array([0.0, 0.5, 0.75, 1.0])
    assert adjust_scores(s, 0.5, 0.2) == pytest.approx([0.0, 0.2, 3 * 0.25 / (3 * 0.25 + 1), 1.0], abs=1e-12)
    assert adjust_scores(s, 0.3, 0.3) == pytest.approx(s, abs=1e-12)


def test_adjusting_there_and_back_is_the_identity():
    s = np.random.default_rng(7).random(1000)
    assert adjust_scores(adjust_scores(s, 0.5, 0.2), 0.2, 0.5) == pytest.approx(s, abs=1e-12)


def test_adjusted_scores_are_calibrated_at_the_site_prior():
    scores, positive = _site(0.2, 8)
    adjusted = adjust_scores(scores, 0.5, 0.2)
    bins = np.digitize(adjusted, np.linspace(0, 1, 6)[1:-1])
    for b in range(5):
        rows = bins == b
        assert positive[rows].mean() == pytest.approx(adjusted[rows].mean(), abs=0.06)


@pytest.mark.parametrize(("train", "new"), [(0.5, 0.2), (0.5, 0.8), (0.74, 0.3), (0.1, 0.6), (0.4, 0.4)])
def test_the_prior_threshold_gives_the_same_decisions_as_thresholding_adjusted_scores(train, new):
    rng = np.random.default_rng(9)
    s = rng.random(100_000)
    for t in (0.05, 0.3, 0.5, 0.62, 0.97):
        cut = prior_threshold(t, train, new)
        adjusted = adjust_scores(s, train, new)
        clear = (np.abs(s - cut) > 1e-9) & (np.abs(adjusted - t) > 1e-9)  # no exact ties
        assert clear.sum() > 99_000
        np.testing.assert_array_equal((adjusted >= t)[clear], (s >= cut)[clear])


def test_the_prior_threshold_of_a_half_at_even_training_odds_is_one_minus_the_new_prior():
    # s/(1-s) · π/(1-π) = 1 at s = 1 - π when π_t = 0.5.
    assert prior_threshold(0.5, 0.5, 0.2) == pytest.approx(0.8, abs=1e-12)
    assert prior_threshold(0.5, 0.5, 0.5) == pytest.approx(0.5, abs=1e-12)
    assert prior_threshold(0.0, 0.5, 0.2) == 0.0
    assert prior_threshold(1.0, 0.5, 0.2) == pytest.approx(1.0, abs=1e-12)
