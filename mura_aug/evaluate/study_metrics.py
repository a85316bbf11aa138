"""Study-level metrics, bootstrap intervals and the paired comparison of two training arms.

MURA's protocol scores studies, not images: a study's probability is the mean of its images'
probabilities, and Cohen's kappa is computed against the study label. Everything here works on plain
arrays and pandas frames so it can be checked by hand.

Point metrics use scikit-learn. The bootstrap draws studies with replacement (a cluster bootstrap: the
images of a drawn study come along with it) and evaluates every resample through per-study weights, so a
thousand resamples cost a few matrix products plus one weighted AUC each; tests check the weighted path
against scikit-learn on the same data.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from mura_aug.errors import UserError

# The metrics reported for every (level, threshold); AUC does not depend on the threshold.
METRICS = ("accuracy", "kappa", "auc", "sensitivity", "specificity")
CONFIDENCE = 0.95  # coverage of every interval reported


# --- point metrics --------------------------------------------------------------------------------

def binary_metrics(labels: Sequence[int], probabilities: Sequence[float], threshold: float = 0.5,
                   sample_weight: Optional[Sequence[float]] = None) -> Dict[str, object]:
    """Accuracy, Cohen's kappa, AUC, sensitivity, specificity and the confusion matrix.

    labels: 1 = positive (abnormal), 0 = negative. A probability >= threshold predicts positive.
    confusion: [[TN, FP], [FN, TP]] (rows = truth, columns = prediction), as scikit-learn orders it.
    Metrics that are undefined for the data (AUC with one class, sensitivity without positives) are NaN.
    """
    from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

    y_true, y_prob = _as_arrays(labels, probabilities)
    y_pred = (y_prob >= threshold).astype(int)
    confusion = confusion_matrix(y_true, y_pred, labels=[0, 1], sample_weight=sample_weight)
    (tn, fp), (fn, tp) = confusion
    both_classes = len(np.unique(y_true)) == 2
    if len(np.unique(np.concatenate([y_true, y_pred]))) < 2:
        kappa = 1.0 if len(y_true) else math.nan  # perfect agreement on a single class
    else:
        kappa = float(cohen_kappa_score(y_true, y_pred, labels=[0, 1], sample_weight=sample_weight))
    total = tn + fp + fn + tp
    return {
        "n": int(len(y_true)),
        "n_positive": int(y_true.sum()),
        "threshold": float(threshold),
        "accuracy": float((tp + tn) / total) if total else math.nan,
        "kappa": kappa,
        "auc": float(roc_auc_score(y_true, y_prob, sample_weight=sample_weight)) if both_classes else math.nan,
        "sensitivity": float(tp / (tp + fn)) if (tp + fn) else math.nan,
        "specificity": float(tn / (tn + fp)) if (tn + fp) else math.nan,
        "confusion": [[_plain(tn), _plain(fp)], [_plain(fn), _plain(tp)]],
    }


def _plain(value):
    value = float(value)
    return int(value) if value.is_integer() else value


def _as_arrays(labels, probabilities):
    y_true = np.asarray(labels, dtype=np.int64).ravel()
    y_prob = np.asarray(probabilities, dtype=np.float64).ravel()
    if y_true.shape != y_prob.shape:
        raise ValueError(f"{len(y_true)} labels but {len(y_prob)} probabilities")
    if len(y_true) and not np.isin(y_true, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if np.isnan(y_prob).any():
        raise ValueError("probabilities contain NaN (the classifier diverged)")
    return y_true, y_prob


# --- studies --------------------------------------------------------------------------------------

def aggregate_studies(predictions, probability_column: str = "probability"):
    """One row per study: its label, the mean of its images' probabilities and its image count.

    `predictions` is a DataFrame with columns study_id, label and `probability_column` (one row per image).
    A study whose images disagree on the label is a broken table and raises UserError.
    """
    import pandas as pd

    missing = {"study_id", "label", probability_column} - set(predictions.columns)
    if missing:
        raise UserError(f"The prediction table lacks the column(s) {', '.join(sorted(missing))}.",
                        "Pass one row per image with study_id, label and the probability.")
    grouped = predictions.groupby("study_id", sort=True)
    labels_per_study = grouped["label"].nunique()
    mixed = labels_per_study[labels_per_study > 1]
    if len(mixed):
        raise UserError(f"Study {mixed.index[0]} has images with different labels ({len(mixed)} such studies).",
                        "Rebuild the tables with `python -m mura_aug prepare`; a study has one label.")
    return pd.DataFrame({
        "study_id": grouped.size().index,
        "label": grouped["label"].first().to_numpy().astype(int),
        probability_column: grouped[probability_column].mean().to_numpy(),
        "n_images": grouped.size().to_numpy(),
    })


def choose_threshold(labels: Sequence[int], probabilities: Sequence[float]) -> float:
    """The decision threshold with the highest Cohen's kappa on this (internal validation) data.

    Candidates are the midpoints between neighbouring distinct probabilities plus 0.5; ties go to the one
    nearest 0.5, so a validation set that cannot tell thresholds apart keeps MURA's default.
    """
    y_true, y_prob = _as_arrays(labels, probabilities)
    if len(np.unique(y_true)) < 2:
        return 0.5
    distinct = np.unique(y_prob)
    candidates = np.unique(np.concatenate([[0.5], (distinct[:-1] + distinct[1:]) / 2]))
    kappas = _kappa_for_thresholds(y_true, y_prob, candidates)
    best = np.flatnonzero(np.isclose(kappas, kappas.max(), rtol=0, atol=1e-12))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def _kappa_for_thresholds(y_true, y_prob, thresholds):
    predicted = y_prob[None, :] >= thresholds[:, None]  # thresholds x samples
    positive = y_true[None, :] == 1
    tp = (predicted & positive).sum(1).astype(float)
    fp = (predicted & ~positive).sum(1).astype(float)
    fn = (~predicted & positive).sum(1).astype(float)
    tn = (~predicted & ~positive).sum(1).astype(float)
    return _kappa_from_counts(tn, fp, fn, tp)


def _kappa_from_counts(tn, fp, fn, tp):
    total = tn + fp + fn + tp
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = (tp + tn) / total
        expected = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / total ** 2
        kappa = (observed - expected) / (1 - expected)
    # expected == 1: everything in one class, predicted and true alike -> perfect agreement
    return np.where(np.isclose(expected, 1.0), 1.0, kappa)


# --- bootstrap ------------------------------------------------------------------------------------

def bootstrap_weights(n_studies: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """n_boot x n_studies counts: how often each study is drawn in each resample (a multinomial draw).

    Reusing the same weights for two arms pairs them: both are scored on the same resampled studies.
    """
    if n_studies < 2:
        raise UserError(f"Only {n_studies} study to evaluate on; a bootstrap needs at least 2.",
                        "Evaluate on the full MURA valid split of the body part.")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_studies, np.full(n_studies, 1.0 / n_studies), size=n_boot).astype(np.float64)


def weighted_metric_samples(labels, probabilities, threshold: float, weights: np.ndarray,
                            with_auc: bool = True) -> Dict[str, np.ndarray]:
    """Every metric for every resample: weights (n_boot x n) multiply the n samples' contributions.

    For study-level metrics the samples are studies. Returns metric -> array of n_boot values (NaN where a
    resample lacks a class the metric needs). with_auc=False skips AUC (it does not depend on the threshold).
    """
    y_true, y_prob = _as_arrays(labels, probabilities)
    predicted = (y_prob >= threshold)
    positive = y_true == 1
    tp = weights @ (predicted & positive)
    fp = weights @ (predicted & ~positive)
    fn = weights @ (~predicted & positive)
    tn = weights @ (~predicted & ~positive)
    with np.errstate(invalid="ignore", divide="ignore"):
        samples = {
            "accuracy": (tp + tn) / (tp + tn + fp + fn),
            "kappa": _kappa_from_counts(tn, fp, fn, tp),
            "sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
        }
    samples["auc"] = weighted_auc(y_true, y_prob, weights) if with_auc else np.full(len(weights), np.nan)
    return samples


def weighted_auc(labels, probabilities, weights: np.ndarray) -> np.ndarray:
    """AUC of each weighted resample at once (n_boot values), ties counting one half.

    AUC is the chance that a random positive outscores a random negative; with weights, each pair counts
    w_positive * w_negative. All resamples share the pair table, so this is one matrix product instead of
    n_boot calls of roc_auc_score (which it equals; see the tests).
    """
    y_true, y_prob = _as_arrays(labels, probabilities)
    positive, negative = y_prob[y_true == 1], y_prob[y_true == 0]
    pairs = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    weights = np.atleast_2d(weights)
    w_positive, w_negative = weights[:, y_true == 1], weights[:, y_true == 0]
    wins = np.einsum("bi,bi->b", w_positive @ pairs, w_negative)
    with np.errstate(invalid="ignore", divide="ignore"):
        return wins / (w_positive.sum(1) * w_negative.sum(1))


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> List[float]:
    """[low, high] percentile interval of the finite samples ([nan, nan] when there are none)."""
    finite = np.asarray(samples, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return [math.nan, math.nan]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(low), float(high)]


def metrics_with_intervals(labels, probabilities, threshold: float, weights: np.ndarray) -> Dict[str, object]:
    """binary_metrics plus `<metric>_ci` = the bootstrap 95% interval for every metric in METRICS."""
    result = binary_metrics(labels, probabilities, threshold)
    result.update(intervals_of(weighted_metric_samples(labels, probabilities, threshold, weights)))
    return result


def intervals_of(samples: Dict[str, np.ndarray], confidence: float = CONFIDENCE) -> Dict[str, List[float]]:
    """`<metric>_ci` -> [low, high] for every metric of weighted_metric_samples' output."""
    return {f"{name}_ci": percentile_interval(samples[name], confidence) for name in METRICS}


def image_weights(study_weights: np.ndarray, study_index_of_image: np.ndarray) -> np.ndarray:
    """Spread study resample counts onto the images: an image counts as often as its study was drawn."""
    return study_weights[:, study_index_of_image]


# --- comparing arms -------------------------------------------------------------------------------

def seed_draws(n_seeds: int, n_boot: int = 1000, seed: int = 1) -> np.ndarray:
    """n_boot x n_seeds seed indices drawn with replacement: the second level of the bootstrap.

    Resampling studies alone would ignore how much a result depends on the training seed (three seeds that
    score 1, 1 and 0 would get a zero-width interval around 0.667). Drawing seeds too puts that spread into
    the interval. With one seed there is nothing to draw and only the studies vary.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds))


def mean_over_seeds(per_seed_samples: Sequence[np.ndarray], draws: np.ndarray) -> np.ndarray:
    """Per resample b: the mean over the seeds drawn in row b of `draws` of their metric at study resample b.

    per_seed_samples: one array of n_boot values per seed (from weighted_metric_samples with shared weights);
    reusing the same `draws` and study weights for two arms pairs them by seed and by study.
    """
    stacked = np.stack([np.asarray(samples, dtype=float) for samples in per_seed_samples])  # seeds x n_boot
    picked = stacked[draws, np.arange(stacked.shape[1])[:, None]]  # n_boot x drawn seeds
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where every drawn value is NaN
        return np.nanmean(picked, axis=1)


def seed_paired_difference(baseline: Sequence[float], augmented: Sequence[float],
                           confidence: float = CONFIDENCE) -> Dict[str, object]:
    """Augmented minus baseline, paired by seed: mean difference and its t interval over the seeds.

    With one seed the interval is undefined (NaN); with three it is wide, which is honest.
    """
    from scipy import stats

    base = np.asarray(baseline, dtype=float)
    aug = np.asarray(augmented, dtype=float)
    if base.shape != aug.shape:
        raise ValueError("the arms need the same seeds to be paired")
    differences = aug - base
    mean = float(np.mean(differences)) if len(differences) else math.nan
    interval = [math.nan, math.nan]
    if len(differences) >= 2:
        spread = float(np.std(differences, ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, len(differences) - 1)) * spread / math.sqrt(len(differences))
        interval = [mean - half, mean + half]
    return {"differences": [float(d) for d in differences], "mean": mean, "ci": interval}


def intervals_overlap(first: Sequence[float], second: Sequence[float]) -> bool:
    """True when two [low, high] intervals share a point (or either is undefined)."""
    if any(not np.isfinite(v) for v in (*first, *second)):
        return True
    return first[0] <= second[1] and second[0] <= first[1]


def verdict(metric: str, baseline_value: float, baseline_ci: Sequence[float], augmented_value: float,
            augmented_ci: Sequence[float], difference_ci: Optional[Sequence[float]] = None) -> str:
    """A plain-language sentence on whether synthetic images changed `metric`.

    "within noise" whenever the arms' intervals overlap: only separated intervals count as a difference.
    """
    name = metric.replace("_", " ")
    numbers = (f"baseline {baseline_value:.3f} [{baseline_ci[0]:.3f}, {baseline_ci[1]:.3f}], "
               f"augmented {augmented_value:.3f} [{augmented_ci[0]:.3f}, {augmented_ci[1]:.3f}]")
    paired = ""
    if difference_ci is not None and all(np.isfinite(difference_ci)):
        paired = (f"; paired difference {augmented_value - baseline_value:+.3f} "
                  f"[{difference_ci[0]:+.3f}, {difference_ci[1]:+.3f}]")
    if intervals_overlap(baseline_ci, augmented_ci):
        hint = ""
        if paired and (difference_ci[0] > 0 or difference_ci[1] < 0):
            hint = (" The paired interval alone excludes 0: a hint worth checking with more seeds or a larger "
                    "evaluation set, not a result.")
        return (f"{name}: the difference is within noise ({numbers}{paired}) — the 95% intervals overlap, "
                f"so this experiment cannot tell whether synthetic images help.{hint}")
    direction = "better" if augmented_value > baseline_value else "worse"
    return (f"{name}: the augmented arm is {direction} than the baseline ({numbers}{paired}) — the 95% "
            "intervals do not overlap.")


def summarise(values: Iterable[float]) -> Dict[str, float]:
    """Mean and sample standard deviation over seeds (std NaN with a single seed)."""
    array = np.asarray(list(values), dtype=float)
    return {"mean": float(np.nanmean(array)) if len(array) else math.nan,
            "std": float(np.nanstd(array, ddof=1)) if len(array) > 1 else math.nan}
