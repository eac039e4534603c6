"""Patient-bootstrap confidence intervals, against sklearn and closed-form variances."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pneumo.metrics.bootstrap import METRICS, bootstrap_metrics, patient_clusters, weighted_metrics


def _data(n: int, seed: int = 0, images_per_patient: int = 1):
    """Labels (1 = positive) and scores with ties; each patient's images share label and score."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.7).astype(int)
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * labels, 0.2), 0, 1), 2)
    k = images_per_patient
    return np.repeat(labels, k), np.repeat(scores, k), np.repeat(np.arange(n), k)


def test_weighted_metrics_equal_sklearn_on_the_resampled_images():
    labels, scores, _ = _data(150, seed=1)
    draws = np.random.default_rng(2).integers(0, 3, size=(3, len(labels)))
    at, ranking = weighted_metrics(draws, labels == 1, scores, [0.5, 0.62])
    for r, counts in enumerate(draws):
        y, s = np.repeat(labels, counts), np.repeat(scores, counts)
        for i, t in enumerate([0.5, 0.62]):
            pred = (s >= t).astype(int)
            expected = [
                accuracy_score(y, pred),
                recall_score(y, pred),
                recall_score(y, pred, pos_label=0),
                precision_score(y, pred),
                precision_score(y, pred, pos_label=0),
                f1_score(y, pred),
            ]
            np.testing.assert_allclose(at[i, :, r], expected, rtol=1e-12)
        np.testing.assert_allclose(ranking[:, r], [roc_auc_score(y, s), average_precision_score(y, s)], rtol=1e-12)


def test_intervals_cover_the_point_estimate_and_shrink_as_samples_grow():
    small = bootstrap_metrics(*_data(80)[:2], 1, {"t": 0.5}, seed=3)["t"]
    large = bootstrap_metrics(*_data(800)[:2], 1, {"t": 0.5}, seed=3)["t"]
    for metric in METRICS:
        for ci in (small[metric], large[metric]):
            assert ci["low"] <= ci["value"] <= ci["high"], (metric, ci)
        assert large[metric]["high"] - large[metric]["low"] < 0.6 * (small[metric]["high"] - small[metric]["low"])


def test_accuracy_interval_matches_the_stratified_binomial_width():
    labels, scores, _ = _data(2000, seed=4)
    ci = bootstrap_metrics(labels, scores, 1, {"t": 0.5}, seed=5)["t"]["accuracy"]
    # Class counts are fixed by the stratified resampling: accuracy = sum of two independent binomials.
    pos = labels == 1
    sens, spec = (scores[pos] >= 0.5).mean(), (scores[~pos] < 0.5).mean()
    n, n_pos, n_neg = len(labels), pos.sum(), (~pos).sum()
    sd = np.sqrt(n_pos * sens * (1 - sens) + n_neg * spec * (1 - spec)) / n
    assert ci["high"] - ci["low"] == pytest.approx(2 * 1.959964 * sd, rel=0.12)


def test_patient_bootstrap_is_wider_than_an_image_bootstrap_when_a_patients_images_agree():
    labels, scores, patients = _data(150, seed=6, images_per_patient=4)
    by_patient = bootstrap_metrics(labels, scores, 1, {"t": 0.5}, patients, seed=7)["t"]
    by_image = bootstrap_metrics(labels, scores, 1, {"t": 0.5}, None, seed=7)["t"]
    for metric in ("accuracy", "sensitivity", "roc_auc"):
        ratio = (by_patient[metric]["high"] - by_patient[metric]["low"]) / (
            by_image[metric]["high"] - by_image[metric]["low"]
        )
        assert ratio > 1.6, (metric, ratio)  # 4 identical images per patient: sqrt(4) = 2 in theory


def test_bootstrap_is_seeded():
    labels, scores, _ = _data(100)
    a = bootstrap_metrics(labels, scores, 1, {"t": 0.5}, seed=1)
    assert a == bootstrap_metrics(labels, scores, 1, {"t": 0.5}, seed=1)
    assert a != bootstrap_metrics(labels, scores, 1, {"t": 0.5}, seed=2)


def test_a_degenerate_metric_gets_a_percentile_interval_not_nan():
    labels, scores, _ = _data(60)
    ci = bootstrap_metrics(labels, scores, 1, {"none called": 1.01}, seed=1)["none called"]
    assert ci["specificity"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert ci["ppv"] == {"value": None, "low": None, "high": None}  # nothing called positive


def test_patient_clusters_follow_the_kermany_patient_key():
    files = [
        "test/PNEUMONIA/person1_bacteria_1.jpeg",
        "test/PNEUMONIA/person1_virus_2.jpeg",
        "test/NORMAL/IM-0001-0001.jpeg",
        "test/NORMAL/IM-0001-0002.jpeg",
        "test/NORMAL/IM-0002-0001.jpeg",
    ]
    clusters = patient_clusters(files, np.array([1, 1, 0, 0, 0]), ["NORMAL", "PNEUMONIA"])
    assert clusters[0] == clusters[1] and clusters[2] == clusters[3]
    assert len(set(clusters.tolist())) == 3


def test_patient_clusters_take_a_labels_csv_patients_first():
    files = ["a/1.png", "a/2.png", "b/3.png", "b/4.png"]
    patient_of = {"a/1.png": "p7", "b/3.png": "p7", "a/2.png": "p8"}  # b/4.png not named: its file name
    clusters = patient_clusters(files, np.array([0, 0, 1, 1]), ["x", "y"], patient_of)
    assert clusters[0] == clusters[2] != clusters[1] and len(set(clusters.tolist())) == 3


def test_a_class_with_one_patient_gives_estimates_without_intervals():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.7, 0.8, 0.9])
    out = bootstrap_metrics(labels, scores, 1, {"t": 0.5}, clusters=np.array([0, 0, 1, 2, 3]), resamples=100)
    assert out["t"]["accuracy"] == {"value": 1.0, "low": None, "high": None}
