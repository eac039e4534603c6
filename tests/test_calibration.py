"""Calibration: ECE against known values and sklearn's binning, the recalibration maps against the
models that generated the data, and the rule that nothing is fitted on evaluation rows."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve

from pneumo.metrics.calibration import balance_prior, calibrate, expected_calibration_error, fit_calibrator


def test_ece_of_a_perfectly_calibrated_predictor_is_near_zero():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    assert expected_calibration_error(rng.random(p.size) < p, p) < 0.005


def test_ece_of_a_constant_overconfident_predictor_is_its_gap():
    rng = np.random.default_rng(1)
    positive = rng.random(100_000) < 0.5
    assert expected_calibration_error(positive, np.full(positive.size, 0.8)) == pytest.approx(0.3, abs=0.005)


def test_ece_uses_sklearn_calibration_curve_bins():
    rng = np.random.default_rng(2)
    p = rng.random(5000) ** 2
    positive = rng.random(p.size) < np.sqrt(p)
    true, pred = calibration_curve(positive, p, n_bins=15, strategy="uniform")
    counts = np.histogram(p, bins=np.linspace(0, 1, 16))[0]
    expected = np.sum(np.abs(true - pred) * counts[counts > 0]) / p.size
    assert expected_calibration_error(positive, p) == pytest.approx(expected, rel=1e-9)


def _logits(seed: int, n: int = 20_000):
    return np.random.default_rng(seed).normal(0.5, 2.0, n)


def test_temperature_is_the_nll_minimiser_and_never_changes_a_decision_at_half():
    z = _logits(3)
    positive = np.random.default_rng(4).random(z.size) < expit(z / 2.5)  # the model is overconfident by T = 2.5
    probs = expit(z)
    fitted = fit_calibrator("temperature", positive, probs, 0.5)
    grid = np.linspace(1.5, 3.5, 2001)
    nll = [-np.mean(np.where(positive, np.log(expit(z / t)), np.log(expit(-z / t)))) for t in grid]
    assert fitted.params["temperature"] == pytest.approx(grid[int(np.argmin(nll))], abs=2e-3)
    assert np.array_equal(fitted.apply(probs) > 0.5, probs > 0.5)


def test_platt_recovers_the_affine_map_that_generated_the_labels():
    z = _logits(5, 100_000)
    positive = np.random.default_rng(6).random(z.size) < expit(0.5 * z - 1.0)
    fitted = fit_calibrator("platt", positive, expit(z), 0.5)
    assert fitted.params["slope"] == pytest.approx(0.5, abs=0.02)
    assert fitted.params["intercept"] == pytest.approx(-1.0, abs=0.03)


def test_prior_shift_turns_balanced_training_into_pool_calibrated_probabilities():
    rng = np.random.default_rng(7)
    pool = 0.74
    positive = rng.random(200_000) < pool
    x = rng.normal(np.where(positive, 1.0, -1.0), 1.0)
    balanced = expit(2 * x)  # P(positive | x) at a 50/50 prior: the log-likelihood ratio of the two normals is 2x
    fitted = fit_calibrator("prior_shift", positive, balanced, balance_prior("sampler", positive.mean()))
    assert fitted.params["log_odds_shift"] == pytest.approx(logit(pool), abs=0.02)
    np.testing.assert_allclose(fitted.apply(balanced), expit(2 * x + logit(positive.mean())), rtol=1e-6)
    assert expected_calibration_error(positive, balanced) > 0.1
    assert expected_calibration_error(positive, fitted.apply(balanced)) < 0.01


def test_training_prior_of_each_balance_choice():
    assert balance_prior("sampler", 0.74) == balance_prior("loss", 0.74) == 0.5
    assert balance_prior("none", 0.74) == 0.74
    assert balance_prior("sqrt", 0.74) == pytest.approx(0.74**0.5 / (0.74**0.5 + 0.26**0.5))


def _oof_and_test(seed: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(0.8, 2.0, 600)
    positive = rng.random(z.size) < expit(z / 2)
    folds = np.arange(z.size) % 5
    test_z = rng.normal(0.0, 3.0, 200)
    return positive, expit(z), folds, (rng.random(test_z.size) < 0.5, expit(test_z))


def test_calibration_fitted_on_oof_never_sees_test_rows():
    positive, probs, folds, test = _oof_and_test(8)
    numbers, curves = calibrate(positive, probs, folds, {"test": test}, 0.5)
    other_test = (~test[0][:50], np.full(50, 0.99))
    numbers2, _ = calibrate(positive, probs, folds, {"test": other_test}, 0.5)
    assert numbers["methods"] == numbers2["methods"]
    assert numbers["splits"]["oof"] == numbers2["splits"]["oof"]
    for method, params in numbers["methods"].items():
        alone = fit_calibrator(method, positive, probs, 0.5)
        assert alone.params == params
        np.testing.assert_array_equal(curves["test"][method], alone.apply(test[1]))


def test_out_of_fold_rows_are_recalibrated_without_their_own_fold():
    positive, probs, folds, test = _oof_and_test(9)
    _, curves = calibrate(positive, probs, folds, {"test": test}, 0.5)
    flipped = positive.copy()
    flipped[folds == 2] = ~flipped[folds == 2]
    _, curves2 = calibrate(flipped, probs, folds, {"test": test}, 0.5)
    for method in ("temperature", "platt"):
        np.testing.assert_array_equal(curves["oof"][method][folds == 2], curves2["oof"][method][folds == 2])
        assert not np.array_equal(curves["oof"][method][folds != 2], curves2["oof"][method][folds != 2])


def test_a_single_fold_run_calibrates_the_splits_and_leaves_out_of_fold_uncalibrated_only():
    positive, probs, folds, test = _oof_and_test(10)
    one = folds == folds[0]
    numbers, curves = calibrate(positive[one], probs[one], folds[one], {"test": test}, 0.5)
    assert list(curves["oof"]) == ["uncalibrated"] and list(numbers["splits"]["oof"]) == ["uncalibrated"]
    for method, params in numbers["methods"].items():
        alone = fit_calibrator(method, positive[one], probs[one], 0.5)
        assert alone.params == params
        np.testing.assert_array_equal(curves["test"][method], alone.apply(test[1]))
