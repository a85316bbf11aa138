"""Metrics against hand-computed cases, study aggregation, bootstrap paths against scikit-learn, the verdict."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from mura_aug.evaluate import study_metrics as em
from mura_aug.errors import UserError

# Six cases worked by hand at threshold 0.5: predictions 1 0 0 1 1 0.
LABELS = [1, 1, 0, 0, 1, 0]
PROBS = [0.9, 0.4, 0.2, 0.6, 0.8, 0.1]


def test_metrics_equal_a_hand_computed_case():
    m = em.binary_metrics(LABELS, PROBS, 0.5)
    # TP = 2 (0.9, 0.8), FN = 1 (0.4), TN = 2 (0.2, 0.1), FP = 1 (0.6)
    assert m["confusion"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(2 / 3)
    # p_observed = 4/6, p_expected = 0.5*0.5 + 0.5*0.5 = 0.5 -> kappa = (2/3 - 1/2) / (1/2) = 1/3
    assert m["kappa"] == pytest.approx(1 / 3)
    # positives 0.9, 0.4, 0.8 against negatives 0.2, 0.6, 0.1: 3 + 2 + 3 = 8 of 9 pairs ordered correctly
    assert m["auc"] == pytest.approx(8 / 9)
    assert (m["n"], m["n_positive"]) == (6, 3)


def test_threshold_changes_predictions_not_auc():
    m = em.binary_metrics(LABELS, PROBS, 0.7)  # predictions 1 0 0 0 1 0: TP 2, FN 1, TN 3, FP 0
    assert m["confusion"] == [[3, 0], [1, 2]]
    # p_o = 5/6; p_e = (2/6)(3/6) + (4/6)(3/6) = 1/2 -> kappa = (5/6 - 1/2) / (1/2) = 2/3
    assert m["kappa"] == pytest.approx(2 / 3)
    assert m["specificity"] == 1.0 and m["auc"] == pytest.approx(8 / 9)


def test_undefined_metrics_are_nan_not_errors():
    m = em.binary_metrics([1, 1], [0.7, 0.2])
    assert math.isnan(m["auc"]) and math.isnan(m["specificity"]) and m["sensitivity"] == 0.5


def test_study_probability_is_the_mean_of_its_images():
    images = pd.DataFrame({"study_id": ["b", "a", "a", "b", "b", "c"], "label": [0, 1, 1, 0, 0, 1],
                           "probability": [0.1, 0.9, 0.5, 0.3, 0.2, 0.4]})
    studies = em.aggregate_studies(images)
    assert studies["study_id"].tolist() == ["a", "b", "c"]
    assert studies["probability"].tolist() == pytest.approx([0.7, 0.2, 0.4])
    assert studies["label"].tolist() == [1, 0, 1] and studies["n_images"].tolist() == [2, 3, 1]
    # at study level, 'c' (0.4) is a missed abnormal study although image-level accuracy differs
    assert em.binary_metrics(studies["label"], studies["probability"])["confusion"] == [[1, 0], [1, 1]]


def test_a_study_with_mixed_labels_is_refused():
    images = pd.DataFrame({"study_id": ["a", "a"], "label": [0, 1], "probability": [0.2, 0.3]})
    with pytest.raises(UserError, match="Study a"):
        em.aggregate_studies(images)


def test_threshold_is_chosen_for_the_best_kappa():
    # Only a threshold between 0.3 and 0.35 separates the classes perfectly.
    labels, probs = [0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.35, 0.4, 0.45]
    threshold = em.choose_threshold(labels, probs)
    assert 0.3 < threshold <= 0.35
    assert em.binary_metrics(labels, probs, threshold)["kappa"] == 1.0
    assert em.choose_threshold([1, 1], [0.2, 0.9]) == 0.5  # one class: keep MURA's default


def test_weighted_bootstrap_equals_sklearn_on_the_resampled_data():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 40)
    probs = np.round(rng.random(40), 1)  # rounded: ties exercise the half-credit rule
    weights = em.bootstrap_weights(40, n_boot=25, seed=2)
    samples = em.weighted_metric_samples(labels, probs, 0.5, weights)
    for row, weight in enumerate(weights):
        repeated = np.repeat(np.arange(40), weight.astype(int))  # the resample written out
        y, p = labels[repeated], probs[repeated]
        assert samples["auc"][row] == pytest.approx(roc_auc_score(y, p))
        assert samples["kappa"][row] == pytest.approx(cohen_kappa_score(y, (p >= 0.5).astype(int)))
        assert samples["accuracy"][row] == pytest.approx(np.mean((p >= 0.5) == y))


def test_image_level_bootstrap_draws_whole_studies():
    weights = np.array([[2.0, 0.0, 1.0]])
    study_of_image = np.array([0, 0, 1, 2])
    assert em.image_weights(weights, study_of_image).tolist() == [[2.0, 2.0, 0.0, 1.0]]


def test_intervals_cover_the_point_and_shrink_with_more_studies():
    rng = np.random.default_rng(0)

    def width(n):
        labels = rng.integers(0, 2, n)
        probs = np.clip(labels * 0.3 + rng.random(n) * 0.7, 0, 1)
        m = em.metrics_with_intervals(labels, probs, 0.5, em.bootstrap_weights(n, 300, seed=0))
        assert m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1]
        return m["auc_ci"][1] - m["auc_ci"][0]

    assert width(400) < width(30)


def test_seed_paired_difference_by_hand():
    paired = em.seed_paired_difference([0.50, 0.60, 0.55], [0.52, 0.65, 0.54])
    assert paired["differences"] == pytest.approx([0.02, 0.05, -0.01])
    assert paired["mean"] == pytest.approx(0.02)
    # sd of (0.02, 0.05, -0.01) = 0.03; t(0.975, 2) = 4.3027; half width = 4.3027 * 0.03 / sqrt(3)
    half = 4.302652729911275 * 0.03 / math.sqrt(3)
    assert paired["ci"] == pytest.approx([0.02 - half, 0.02 + half])
    assert all(math.isnan(v) for v in em.seed_paired_difference([0.5], [0.6])["ci"])


def test_verdict_says_within_noise_when_intervals_overlap():
    overlapping = em.verdict("study-level kappa", 0.50, [0.40, 0.60], 0.55, [0.45, 0.65], [-0.05, 0.15])
    assert "within noise" in overlapping and "+0.050" in overlapping and "hint" not in overlapping
    leaning = em.verdict("AUC", 0.50, [0.40, 0.60], 0.55, [0.45, 0.65], [0.01, 0.09])
    assert "within noise" in leaning and "hint" in leaning
    separated = em.verdict("study-level kappa", 0.30, [0.25, 0.35], 0.60, [0.55, 0.65])
    assert "within noise" not in separated and "better" in separated
    worse = em.verdict("AUC", 0.80, [0.78, 0.82], 0.70, [0.68, 0.72])
    assert "worse" in worse
    assert em.intervals_overlap([0.1, 0.2], [0.2, 0.3]) and not em.intervals_overlap([0.1, 0.2], [0.21, 0.3])


def test_bootstrap_needs_two_studies():
    with pytest.raises(UserError, match="at least 2"):
        em.bootstrap_weights(1)


def test_arm_interval_includes_the_spread_between_seeds():
    # Three seeds scoring 1, 1 and 0 on every study resample: studies alone would give a zero-width interval.
    n_boot = 2000
    per_seed = [np.ones(n_boot), np.ones(n_boot), np.zeros(n_boot)]
    draws = em.seed_draws(3, n_boot, seed=0)
    assert draws.shape == (n_boot, 3) and set(np.unique(draws)) == {0, 1, 2}
    means = em.mean_over_seeds(per_seed, draws)
    assert set(np.round(np.unique(means), 6)) <= {0.0, round(1 / 3, 6), round(2 / 3, 6), 1.0}
    assert em.percentile_interval(means) == [0.0, 1.0]
    # One seed: nothing to draw, the study resamples pass through unchanged.
    study_samples = np.linspace(0, 1, n_boot)
    assert np.array_equal(em.mean_over_seeds([study_samples], em.seed_draws(1, n_boot)), study_samples)
