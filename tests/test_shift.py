"""The label-free score-shift test: a pure change of class prior passes, moved scores are flagged,
the KS distance against a brute-force oracle; and the score-distribution figure."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from PIL import Image
from scipy.special import expit

from pneumo.metrics.shift import score_shift
from pneumo.report.figures import score_distributions_figure
from pneumo.utils.errors import PneumoError

OOF_PRIOR = 0.74


def _scores(rng: np.random.Generator, prior: float, n: int, push: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """P(positive) of n images, a `prior` share positive: class logits N(±1.5, 1.2) moved by `push`."""
    positive = rng.random(n) < prior
    logits = np.where(positive, rng.normal(1.5, 1.2, n), rng.normal(-1.5, 1.2, n)) + push
    return expit(logits), positive


def _oof(seed: int = 0, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    return _scores(np.random.default_rng(seed), OOF_PRIOR, n)


@pytest.mark.parametrize("resample_oof", [True, False])
def test_a_split_with_only_another_class_prior_is_not_flagged(resample_oof):
    oof, positive = _oof()
    split, _ = _scores(np.random.default_rng(1), 0.3, 600)
    result = score_shift(oof, positive, split, resamples=500, resample_oof=resample_oof)
    assert not result["shifted"]
    assert result["p_value"] >= 0.01
    assert result["mixture_weight"] == pytest.approx(0.3, abs=0.06)


def test_a_split_whose_scores_moved_up_is_flagged():
    oof, positive = _oof()
    split, _ = _scores(np.random.default_rng(2), 0.3, 600, push=1.0)
    result = score_shift(oof, positive, split, resamples=500)
    assert result["shifted"]
    assert result["p_value"] < 0.01
    assert result["summary"].startswith("split: scores differ from what out-of-fold predicts")


def test_the_split_enters_only_through_its_scores():
    parameters = list(inspect.signature(score_shift).parameters)
    assert parameters == [
        "oof_scores",
        "oof_positive",
        "split_scores",
        "resamples",
        "seed",
        "alpha",
        "positive_name",
        "name",
        "resample_oof",
    ]


def test_the_order_of_the_split_does_not_matter():
    oof, positive = _oof()
    split, _ = _scores(np.random.default_rng(3), 0.5, 300)
    shuffled = np.random.default_rng(4).permutation(split)
    assert score_shift(oof, positive, shuffled, resamples=200) == score_shift(oof, positive, split, resamples=200)


def test_the_result_is_deterministic_given_the_seed():
    oof, positive = _oof()
    split, _ = _scores(np.random.default_rng(5), 0.5, 300)
    first = score_shift(oof, positive, split, resamples=200, seed=7)
    assert score_shift(oof, positive, split, resamples=200, seed=7) == first
    other = score_shift(oof, positive, split, resamples=200, seed=8)
    assert (other["D"], other["mixture_weight"]) == (first["D"], first["mixture_weight"])  # the fit draws nothing


def test_the_out_of_fold_pool_itself_fits_exactly_at_its_prevalence():
    # The pool's own ECDF is (n_pos F_pos + n_neg F_neg) / n: D = 0 at w = its prevalence.
    oof, positive = _oof(n=1000)
    result = score_shift(oof, positive, oof, resamples=50)
    assert result["D"] == pytest.approx(0.0, abs=1e-6)
    assert result["mixture_weight"] == pytest.approx(positive.mean(), abs=1e-6)
    assert not result["shifted"]


def _brute_force_ks(split: np.ndarray, pos: np.ndarray, neg: np.ndarray, w: float) -> float:
    """sup |G - M| over x, from every jump point of either step function and just below it."""
    points = np.unique(np.concatenate([split, pos, neg]))
    points = np.concatenate([points, points - 1e-12])

    def ecdf(sample: np.ndarray) -> np.ndarray:
        return (sample[None, :] <= points[:, None]).mean(axis=1)

    return float(np.max(np.abs(ecdf(split) - (w * ecdf(pos) + (1 - w) * ecdf(neg)))))


def test_d_is_the_ks_distance_at_the_best_weight_on_a_grid():
    rng = np.random.default_rng(6)
    oof, positive = _scores(rng, OOF_PRIOR, 200)
    oof = np.round(oof, 2)  # ties within and across the classes and the split
    split = np.round(_scores(rng, 0.4, 60, push=0.3)[0], 2)
    result = score_shift(oof, positive, split, resamples=20)
    pos, neg = oof[positive], oof[~positive]
    assert result["D"] == pytest.approx(_brute_force_ks(split, pos, neg, result["mixture_weight"]), abs=1e-6)
    grid = min(_brute_force_ks(split, pos, neg, w) for w in np.linspace(0, 1, 201))
    assert result["D"] <= grid + 1e-6
    assert result["D"] >= grid - 0.01  # the grid is 0.005 wide; D moves at most 1 per unit of w


def test_the_result_is_json_with_a_one_line_summary():
    oof, positive = _oof()
    split, _ = _scores(np.random.default_rng(9), 0.3, 200)
    result = score_shift(oof, positive, split, resamples=100, positive_name="PNEUMONIA", name="test")
    assert json.loads(json.dumps(result)) == result
    assert set(result) >= {"statistic", "D", "mixture_weight", "p_value", "resamples", "alpha", "shifted"}
    assert result["images"] == 200
    assert "\n" not in result["summary"]
    assert result["summary"].startswith("test: scores consistent with out-of-fold (KS D ")
    assert "PNEUMONIA-like" in result["summary"]
    assert result["median_score"]["split"] == pytest.approx(np.median(split))


@pytest.mark.parametrize(
    "args",
    [
        (np.array([0.2, 0.8]), np.array([True, True]), np.array([0.5])),  # one class out of fold
        (np.array([0.2, 0.8]), np.array([True]), np.array([0.5])),  # lengths differ
        (np.array([0.2, np.nan]), np.array([True, False]), np.array([0.5])),
        (np.array([0.2, 0.8]), np.array([True, False]), np.array([])),
        (np.array([0.2, 0.8]), np.array([True, False]), np.array([1.5])),
    ],
)
def test_bad_inputs_raise_a_one_line_pneumo_error(args):
    with pytest.raises(PneumoError) as info:
        score_shift(*args, resamples=10)
    assert "\n" not in str(info.value)


def test_score_distributions_writes_a_png_with_labelled_and_unlabelled_splits(tmp_path):
    rng = np.random.default_rng(10)
    oof, positive = _oof(n=400)
    test, test_positive = _scores(rng, 0.4, 100)
    site, _ = _scores(rng, 0.2, 80, push=1.0)
    path = tmp_path / "score_distributions.png"
    fig = score_distributions_figure(
        "P(PNEUMONIA) per true class",
        "PNEUMONIA",
        ["NORMAL", "PNEUMONIA"],
        (oof, positive.astype(int)),
        {"test": (test, test_positive.astype(int)), "site": (site, None), "empty": (np.array([]), np.array([]))},
    )
    fig.savefig(path, format="png", dpi=100)
    with Image.open(path) as image:  # 3 columns of 4.6 in, 2 rows of 3.6 in + 0.5 in, at 100 dpi
        assert image.format == "PNG" and image.size == (1380, 770)
        assert np.asarray(image.convert("L")).std() > 10  # drawn on, not blank
    assert len(fig.axes) >= 4 and [ax.get_title() for ax in fig.axes[:4]] == ["out-of-fold", "test", "site", "empty"]
    # Each outline is the density histogram (25 bins on [0, 1]) of its class's scores, or of all unlabelled ones.
    bins = np.linspace(0, 1, 26)
    expected = [
        [oof[~positive], oof[positive]],
        [test[~test_positive], test[test_positive]],
        [site],
        [],
    ]
    for ax, groups in zip(fig.axes[:4], expected):
        assert len(ax.patches) == len(groups), ax.get_title()
        for outline, scores in zip(ax.patches, groups):
            heights = outline.get_xy()[1:51:2, 1]  # a step outline: (left edge, h), (right edge, h) per bin
            np.testing.assert_allclose(heights, np.histogram(scores, bins, density=True)[0], err_msg=ax.get_title())
