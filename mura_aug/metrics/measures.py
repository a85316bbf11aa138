"""The fake-image measures: FID / KID, precision / recall, diversity, memorisation and a mode-collapse alarm.

Feature-based measures take feature vectors from an extractor of `mura_aug.metrics.features`. Memorisation
works in pixel space (32 x 32 grey, intensities 0..1) because "this fake is a copy of a training radiograph"
is a statement about pixels, not features: for each fake the nearest real training image and the RMS pixel
difference to it; fakes closer than a threshold are flagged, and ``memorised_fake_paths`` lists such files so
that stage 05 can leave them out.

This package only measures: it draws no figures and knows nothing of the stages. Generating the fakes of a
snapshot and the `python -m mura_aug metrics` command live in `mura_aug.gan.measure`.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from mura_aug.errors import UserError
from mura_aug.metrics.features import Extractor, OfflineExtractor, _as_uint8_nchw, _batches

PathLike = Union[str, os.PathLike]

COLLAPSE_FRACTION = 0.5             # alarm when the fakes' diversity < this fraction of the reals' diversity
MEMORISATION_RATIO = 0.25           # flag a fake closer to a real than this fraction of the typical real-real gap
PIXEL_DESCRIPTOR_SIZE = 32          # px; memorisation and pixel diversity compare 32 x 32 grey images
PR_NEIGHBOURS = 3                   # k of the k-NN manifolds of precision / recall (Kynkaenniemi et al. 2019)
KID_SUBSETS = 100                   # number of random subsets KID is averaged over
KID_SUBSET_SIZE = 1000              # images per subset at most
KID_PRECOMPUTE_MAX = 4000           # images; up to this, KID's kernel matrices are computed once (<= 128 MB each)
DIVERSITY_MAX_IMAGES = 1000         # mean pairwise distance is estimated on at most this many images
PAIRWISE_CHUNK = 1024               # rows of a distance matrix held at once: 1024 x 10,000 float64 = 80 MB
FILE_BATCH = 256                    # image files decoded at once when only their descriptors are kept


# =====================================================================================================
# FID, KID, precision / recall
# =====================================================================================================

def feature_statistics(features: np.ndarray):
    """Mean vector and (unbiased, N-1) covariance matrix of [N, D] features."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise UserError(f"FID needs at least 2 feature vectors; got an array of shape {features.shape}.",
                        "Use more images (--num-fakes, and a dataset with more images).")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2):
    |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    The matrix square root comes from scipy.linalg.sqrtm. With few samples the covariances are singular and
    sqrtm can fail: then `eps` (feature units squared) is added to both diagonals. Tiny imaginary parts from
    rounding are dropped; the result is clamped at 0 (a set against itself can round to -1e-12).
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two sets of statistics have different dimensions")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "matrix is singular" is expected for small sets; handled below
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(sigma1)) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    return float(max(distance, 0.0))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two sets of features [N, D] and [M, D]."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # The KID kernel (Binkowski et al. 2018): k(x, y) = (x.y / d + 1)^3.
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_from_kernels(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    m, n = len(k_xx), len(k_yy)
    within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 with the cubic polynomial kernel (the diagonal terms k(x_i, x_i) left out)."""
    if len(x) < 2 or len(y) < 2:
        raise UserError("KID needs at least 2 images in each set.", "Use more images (--num-fakes).")
    return _mmd2_from_kernels(_polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y))


def kid_from_features(features_a: np.ndarray, features_b: np.ndarray, num_subsets: int = KID_SUBSETS,
                      subset_size: int = KID_SUBSET_SIZE, seed: int = 0):
    """KID: the unbiased MMD^2 averaged over `num_subsets` random subsets of `subset_size` from each set.

    Returns (mean, standard deviation over the subsets). Unbiased, so it can be slightly negative when the
    two sets come from the same distribution. For sets up to KID_PRECOMPUTE_MAX images the kernel matrices
    are computed once and each subset only indexes them (same numbers, several times faster).
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    size = min(len(a), len(b), subset_size)
    if size < 2:
        raise UserError("KID needs at least 2 images in each set.", "Use more images (--num-fakes).")
    rng = np.random.default_rng(seed)
    precomputed = max(len(a), len(b)) <= KID_PRECOMPUTE_MAX
    if precomputed:
        k_aa, k_bb, k_ab = _polynomial_kernel(a, a), _polynomial_kernel(b, b), _polynomial_kernel(a, b)
    values = []
    for _ in range(num_subsets):
        ia, ib = rng.choice(len(a), size, replace=False), rng.choice(len(b), size, replace=False)
        if precomputed:
            values.append(_mmd2_from_kernels(k_aa[np.ix_(ia, ia)], k_bb[np.ix_(ib, ib)], k_ab[np.ix_(ia, ib)]))
        else:
            values.append(mmd2_unbiased(a[ia], b[ib]))
    return float(np.mean(values)), float(np.std(values))


def pairwise_distances(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Euclidean distances [len(a), len(b)], computed in chunks of rows to bound memory."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    b_sq = (b * b).sum(axis=1)
    out = np.empty((len(a), len(b)), dtype=np.float64)
    for start, stop in _batches(len(a), chunk):
        part = a[start:stop]
        sq = (part * part).sum(axis=1)[:, None] + b_sq[None, :] - 2 * part @ b.T
        out[start:stop] = np.sqrt(np.maximum(sq, 0.0))
    return out


def _kth_neighbour_radii(features: np.ndarray, k: int, chunk: Optional[int] = None) -> np.ndarray:
    """Distance of each point to its k-th nearest other point of the same set (rows in chunks of `chunk`,
    None: PAIRWISE_CHUNK; a full 10000 x 10000 matrix would take 800 MB)."""
    chunk = chunk or PAIRWISE_CHUNK
    radii = np.empty(len(features))
    for start, stop in _batches(len(features), chunk):
        distances = pairwise_distances(features[start:stop], features)
        # Column 0 of each sorted row is the point itself (distance 0), so the k-th neighbour is column k.
        radii[start:stop] = np.partition(distances, k, axis=1)[:, k]
    return radii


def precision_recall(real_features: np.ndarray, fake_features: np.ndarray, k: int = PR_NEIGHBOURS):
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each set's manifold is the union of balls around its points with radius = distance to the k-th nearest
    neighbour in the same set. Precision: share of fakes inside the real manifold (realism). Recall: share of
    reals inside the fake manifold (coverage of the real variety).
    """
    real, fake = np.asarray(real_features, np.float64), np.asarray(fake_features, np.float64)
    if len(real) <= k or len(fake) <= k:
        raise UserError(f"Precision/recall with k={k} needs more than {k} images in each set.",
                        "Use more images (--num-fakes).")
    real_radii, fake_radii = _kth_neighbour_radii(real, k), _kth_neighbour_radii(fake, k)
    # Fakes in chunks of rows: the whole fake x real matrix (10,000 x 4,200 float64: 336 MB) is never held.
    inside_real = np.zeros(len(fake), dtype=bool)
    covered_real = np.zeros(len(real), dtype=bool)
    for start, stop in _batches(len(fake), PAIRWISE_CHUNK):
        fake_to_real = pairwise_distances(fake[start:stop], real)
        inside_real[start:stop] = (fake_to_real <= real_radii[None, :]).any(axis=1)
        covered_real |= (fake_to_real <= fake_radii[start:stop, None]).any(axis=0)
    return float(inside_real.mean()), float(covered_real.mean())


# =====================================================================================================
# Diversity, mode collapse, memorisation
# =====================================================================================================

def mean_pairwise_distance(features: np.ndarray, max_items: int = DIVERSITY_MAX_IMAGES, seed: int = 0) -> float:
    """Mean Euclidean distance over all pairs i < j (of a random subset of at most `max_items`)."""
    features = np.asarray(features, np.float64)
    if len(features) < 2:
        raise UserError("Diversity needs at least 2 images.", "Use more images (--num-fakes).")
    if len(features) > max_items:
        features = features[np.random.default_rng(seed).choice(len(features), max_items, replace=False)]
    distances = pairwise_distances(features, features)
    upper = np.triu_indices(len(features), k=1)
    return float(distances[upper].mean())


def diversity(real_features: np.ndarray, fake_features: np.ndarray, collapse_fraction: float = COLLAPSE_FRACTION,
              seed: int = 0) -> Dict[str, float]:
    """Mean pairwise distance among fakes and among reals, their ratio, and the mode-collapse alarm
    (1.0 when fakes are less diverse than `collapse_fraction` of the reals, else 0.0)."""
    among_fakes = mean_pairwise_distance(fake_features, seed=seed)
    among_reals = mean_pairwise_distance(real_features, seed=seed)
    ratio = among_fakes / among_reals if among_reals > 0 else float("nan")
    return {"diversity_fakes": among_fakes, "diversity_reals": among_reals, "diversity_ratio": ratio,
            "collapse_alarm": float(ratio < collapse_fraction)}


def pixel_descriptors(images, size: int = PIXEL_DESCRIPTOR_SIZE, batch_size: int = 512) -> np.ndarray:
    """uint8 NCHW images -> [N, size*size] grey intensities in 0..1 (area-averaged down to size x size)."""
    import torch
    import torch.nn.functional as F

    images = _as_uint8_nchw(images)
    out = np.empty((len(images), size * size), dtype=np.float64)
    for start, stop in _batches(len(images), batch_size):
        # np.array copies: the input may be a read-only memmap, which torch.from_numpy warns about
        x = torch.from_numpy(np.array(images[start:stop])).to(torch.float32).mean(dim=1, keepdim=True) / 255.0
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start:stop] = x.flatten(1).double().numpy()
    return out


def rms_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS pixel difference between every row of `a` and of `b` (0..1 intensity units)."""
    return pairwise_distances(a, b) / math.sqrt(np.asarray(a).shape[1])


def nearest_rows(a: np.ndarray, b: np.ndarray, chunk: Optional[int] = None):
    """(index of the nearest row of `b`, its Euclidean distance) for every row of `a`, `chunk` rows of `a` at a
    time (None: PAIRWISE_CHUNK), so memory is chunk x len(b) whatever len(a) is."""
    chunk = chunk or PAIRWISE_CHUNK
    nearest = np.empty(len(a), dtype=np.int64)
    distance = np.empty(len(a), dtype=np.float64)
    for start, stop in _batches(len(a), chunk):
        block = pairwise_distances(a[start:stop], b, chunk=chunk)
        nearest[start:stop] = block.argmin(axis=1)
        distance[start:stop] = block[np.arange(stop - start), nearest[start:stop]]
    return nearest, distance


def file_pixel_descriptors(paths: Sequence[PathLike], size: int = PIXEL_DESCRIPTOR_SIZE,
                           batch_size: int = FILE_BATCH, progress: bool = False) -> np.ndarray:
    """pixel_descriptors of image files, decoded `batch_size` at a time: 10,000 fakes at 256 px would be 2 GB
    as one array, their descriptors are 80 MB. All files are read at the first file's size, as
    read_image_files does."""
    from tqdm.auto import tqdm

    paths = list(paths)
    if not paths:
        raise UserError("No image files were given.", "Pass at least one fake image path.")
    first = read_image_files(paths[:1])
    shape = (first.shape[-1], first.shape[-2])  # PIL's (width, height)
    out = np.empty((len(paths), size * size), dtype=np.float64)
    for start, stop in tqdm(list(_batches(len(paths), batch_size)), desc="reading images", unit="batch",
                            disable=not progress, leave=False):
        out[start:stop] = pixel_descriptors(read_image_files(paths[start:stop], size=shape), size=size)
    return out


@dataclass
class MemorisationReport:
    """For each fake: the index of the nearest real image and the RMS pixel difference to it (0..1)."""

    nearest_real: np.ndarray          # int [num_fakes]
    distance: np.ndarray              # float [num_fakes], RMS grey-level difference, 0..1
    threshold: float                  # fakes with distance < threshold are flagged
    typical_real_gap: float           # median distance of a real image to its nearest other real image
    flagged: np.ndarray = field(init=False)

    def __post_init__(self):
        self.flagged = self.distance < self.threshold

    @property
    def num_flagged(self) -> int:
        return int(self.flagged.sum())

    def closest(self, count: int = 8) -> np.ndarray:
        """Indices of the `count` fakes closest to a real image, closest first."""
        return np.argsort(self.distance, kind="stable")[:count]

    def summary(self) -> Dict[str, float]:
        return {"memorised_count": float(self.num_flagged), "memorised_fraction": float(self.flagged.mean()),
                "nearest_real_min": float(self.distance.min()),
                "nearest_real_median": float(np.median(self.distance)),
                "memorisation_threshold": float(self.threshold), "real_nn_median": float(self.typical_real_gap)}


def memorisation(fake_images, real_images, threshold: Optional[float] = None,
                 threshold_ratio: float = MEMORISATION_RATIO, max_reference: int = 5000,
                 seed: int = 0) -> MemorisationReport:
    """Nearest real image for each fake, in pixel space, and the flag "too close: likely a copy".

    threshold: RMS grey-level difference (0..1) below which a fake is flagged. None: `threshold_ratio`
    times the median distance between a real image and its nearest other real image (estimated on at most
    `max_reference` reals), so the rule adapts to how alike the training images are.
    """
    return memorisation_of_descriptors(pixel_descriptors(fake_images), pixel_descriptors(real_images),
                                       threshold=threshold, threshold_ratio=threshold_ratio,
                                       max_reference=max_reference, seed=seed)


def memorisation_of_descriptors(fakes: np.ndarray, reals: np.ndarray, threshold: Optional[float] = None,
                                threshold_ratio: float = MEMORISATION_RATIO, max_reference: int = 5000,
                                seed: int = 0) -> MemorisationReport:
    """`memorisation` from pixel_descriptors already made (file_pixel_descriptors streams them from files)."""
    if len(reals) < 2:
        raise UserError("Memorisation needs at least 2 real images.", "Use a dataset with more images.")
    nearest, distance = nearest_rows(fakes, reals)  # in chunks: never the whole fake x real matrix
    distance = distance / math.sqrt(reals.shape[1])  # Euclidean -> RMS per pixel
    reference = reals
    if len(reference) > max_reference:
        reference = reference[np.random.default_rng(seed).choice(len(reference), max_reference, replace=False)]
    # The nearest *other* real is the 2nd nearest point of the set itself (the 1st is the image itself).
    typical_gap = float(np.median(_kth_neighbour_radii(reference, 1))) / math.sqrt(reference.shape[1])
    if threshold is None:
        threshold = threshold_ratio * typical_gap
    return MemorisationReport(nearest_real=nearest, distance=distance, threshold=float(threshold),
                              typical_real_gap=typical_gap)


def read_image_files(paths: Sequence[PathLike], progress: bool = False, size=None) -> np.ndarray:
    """Image files -> uint8 [N, 3, H, W] (all resized to `size` = (width, height) px, by default the first
    file's size). Only reads the files."""
    from PIL import Image
    from tqdm.auto import tqdm

    paths = list(paths)
    if not paths:
        raise UserError("No image files were given.", "Pass at least one fake image path.")
    size = tuple(size) if size is not None else None
    out = None  # filled in place: a list of arrays and np.stack would hold every image twice (2 x 2 GB at 10,000)
    for index, path in enumerate(tqdm(paths, desc="reading images", unit="img", disable=not progress, leave=False)):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                size = size or image.size
                if image.size != size:
                    image = image.resize(size, Image.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        except (OSError, ValueError) as exc:
            raise UserError(f"Cannot read the image {path} ({type(exc).__name__}: {exc}).",
                            "Check that the file exists and is a complete image (regenerate it if truncated).") \
                from exc
        if out is None:
            out = np.empty((len(paths), *pixels.shape), dtype=np.uint8)
        out[index] = pixels
    return out


def memorisation_of_files(fake_paths: Sequence[PathLike], real_images, threshold: Optional[float] = None,
                          threshold_ratio: float = MEMORISATION_RATIO, progress: bool = False) -> MemorisationReport:
    """`memorisation` of fake image files against real images (uint8 NCHW), report.nearest_real[i] and
    report.distance[i] for fake_paths[i]; UserError when no file is given or one cannot be read."""
    # Descriptors streamed from the files: the fakes are never all in memory at full size (10,000 fakes at
    # 256 px would be 2 GB as one array).
    return memorisation_of_descriptors(file_pixel_descriptors(fake_paths, progress=progress),
                                       pixel_descriptors(real_images), threshold=threshold,
                                       threshold_ratio=threshold_ratio)


def memorised_fake_paths(fake_paths: Sequence[PathLike], real_images, threshold: Optional[float] = None,
                         threshold_ratio: float = MEMORISATION_RATIO, progress: bool = False) -> List[Path]:
    """The fake image files that are (near) copies of a real training image: stage 05 leaves these out."""
    fake_paths = [Path(p) for p in fake_paths]
    if not fake_paths:
        return []
    report = memorisation_of_files(fake_paths, real_images, threshold=threshold, threshold_ratio=threshold_ratio,
                                   progress=progress)
    return [path for path, flagged in zip(fake_paths, report.flagged) if flagged]


def compute_metrics(real_images, fake_images, extractor: Optional[Extractor] = None, seed: int = 0,
                    precision_recall_k: int = PR_NEIGHBOURS, collapse_fraction: float = COLLAPSE_FRACTION,
                    memorisation_threshold: Optional[float] = None, real_features: Optional[np.ndarray] = None,
                    real_pixels: Optional[np.ndarray] = None, with_memorisation: bool = True):
    """Every measure for one real and one fake set -> (flat dict of floats, MemorisationReport or None).

    Keys of feature-based measures end in the extractor's name (fid_offline, kid_inception, ...), so numbers
    from different extractors are never confused. real_features / real_pixels: precomputed for real_images
    (the training hook keeps them between calls).
    """
    extractor = extractor or OfflineExtractor()
    name = extractor.name
    if real_features is None:
        real_features = extractor(real_images)
    fake_features = extractor(fake_images)
    kid_mean, kid_std = kid_from_features(real_features, fake_features, seed=seed)
    precision, recall = precision_recall(real_features, fake_features, k=precision_recall_k)
    metrics = {f"fid_{name}": fid_from_features(real_features, fake_features), f"kid_{name}": kid_mean,
               f"kid_{name}_std": kid_std, f"precision_{name}": precision, f"recall_{name}": recall}
    metrics.update(diversity(real_features, fake_features, collapse_fraction=collapse_fraction, seed=seed))
    fake_pixels = pixel_descriptors(fake_images)
    real_pixels = pixel_descriptors(real_images) if real_pixels is None else real_pixels
    pixel_ratio = mean_pairwise_distance(fake_pixels, seed=seed) / max(mean_pairwise_distance(real_pixels, seed=seed),
                                                                       1e-12)
    metrics["pixel_diversity_ratio"] = pixel_ratio
    report = None
    if with_memorisation:
        report = memorisation(fake_images, real_images, threshold=memorisation_threshold, seed=seed)
        metrics.update(report.summary())
    metrics["num_fakes"], metrics["num_reals"] = float(len(fake_features)), float(len(real_features))
    return metrics, report


