"""Measuring the fakes: FID / KID, precision / recall, diversity, memorisation and a mode-collapse alarm.

Every measure works on feature vectors from a pluggable *feature extractor*: a callable
``extractor(images_uint8_NCHW) -> float64 array [N, D]`` with attributes ``name`` and ``dim``.

- ``'inception'``: Inception-v3 pool features (2048-d), as FID is defined. The published FID network is
  NVIDIA's TorchScript port of TensorFlow's inception-2015-12-05 (the file StyleGAN2-ADA's own metrics use):
  downloaded once into the workspace's ``weights/`` folder, or passed with ``inception_file=`` /
  ``--inception-file``; with it the numbers are comparable with published FIDs. Where that download fails
  but torchvision's ImageNet Inception-v3 can be had, that one is used with a warning: close to, but NOT
  identical with published FIDs, so only compare such numbers with each other.
- ``'offline'``: a fixed-seed random conv net plus downsampled pixels. Needs no download, is deterministic,
  fast on a CPU; meant for tests, demos and trends during training. Its numbers compare only with other
  offline numbers (the keys carry the suffix ``_offline``).

Memorisation works in pixel space (32 x 32 grey, intensities 0..1) because "this fake is a copy of a
training radiograph" is a statement about pixels, not features: for each fake the nearest real training
image and the RMS pixel difference to it; fakes closer than a threshold are flagged, and
``memorised_fake_paths`` lists such files so that stage 05 can leave them out.

`training_metrics` is the hook the training loop calls every ``--metrics-every`` snapshots;
``python -m mura_aug metrics`` measures any snapshot and writes ``results/metrics/<run>/<snapshot>.json``.
"""
from __future__ import annotations

import argparse
import io
import math
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np

from mura_aug.devices import resolve_device
from mura_aug.errors import UserError
from mura_aug.workspace import CLASSES, Workspace, atomic_path, atomic_write_csv, atomic_write_json, \
    resolve_workspace

PathLike = Union[str, os.PathLike]

# --- defaults (one place, so the CLI, the training hook and the docs agree) -----------------------------
DEFAULT_NUM_FAKES = 2000            # images generated for `python -m mura_aug metrics`
DEFAULT_TRAINING_NUM_FAKES = 500    # images generated per measurement during training (kept small: it is a trend)
DEFAULT_MAX_REALS = 10000           # real images used at most (a random subset beyond that)
COLLAPSE_FRACTION = 0.5             # alarm when the fakes' diversity < this fraction of the reals' diversity
MEMORISATION_RATIO = 0.25           # flag a fake closer to a real than this fraction of the typical real-real gap
PIXEL_DESCRIPTOR_SIZE = 32          # px; memorisation and pixel diversity compare 32 x 32 grey images
PR_NEIGHBOURS = 3                   # k of the k-NN manifolds of precision / recall (Kynkaenniemi et al. 2019)
KID_SUBSETS = 100                   # number of random subsets KID is averaged over
KID_SUBSET_SIZE = 1000              # images per subset at most
KID_PRECOMPUTE_MAX = 4000           # images; up to this, KID's kernel matrices are computed once (<= 128 MB each)
DIVERSITY_MAX_IMAGES = 1000         # mean pairwise distance is estimated on at most this many images
OFFLINE_INPUT_SIZE = 64             # px; the offline extractor looks at images resized to 64 x 64
INCEPTION_INPUT_SIZE = 299          # px; Inception-v3's input size
INCEPTION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's ImageNet weights
NVIDIA_INCEPTION_FILE = "inception-2015-12-05.pt"  # NVIDIA's TorchScript FID network (about 95 MB)
NVIDIA_INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                        + NVIDIA_INCEPTION_FILE)
EXTRACTOR_NAMES = ("offline", "inception")
LABEL_OF_CLASS = {"positive": 1, "negative": 0}  # the one-hot column of a conditional G (contracts.md)

# The interface every extractor follows (plus the attributes `name` and `dim`): uint8 NCHW -> float64 [N, D].
Extractor = Callable[[np.ndarray], np.ndarray]


# =====================================================================================================
# Images in, uint8 NCHW out
# =====================================================================================================

def _as_uint8_nchw(images) -> "np.ndarray":
    """numpy or torch uint8 [N, C, H, W] (C = 1 or 3) -> numpy uint8 [N, 3, H, W]."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserError(f"Images must be an array of shape [N, C, H, W] with C = 1 or 3; got {images.shape}.",
                        "Pass uint8 images in NCHW layout (as dataset.load_training_images returns them).")
    if images.dtype != np.uint8:
        raise UserError(f"Images must be uint8 (0..255); got {images.dtype}.",
                        "Convert generator output with (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).")
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    return images


def _batches(count: int, batch_size: int):
    for start in range(0, count, batch_size):
        yield start, min(start + batch_size, count)


# =====================================================================================================
# Feature extractors
# =====================================================================================================

class OfflineExtractor:
    """Deterministic features without any download: a random conv net with fixed seed, plus pixels.

    The weights come from NumPy's seeded generator, so every machine builds the same net. Features: the
    spatial means of the activations of three conv layers (64 + 128 + 256 values, after a leaky ReLU) and
    the image itself at 8 x 8 grey (64 values) -- 512 values in all.
    """

    name = "offline"

    def __init__(self, seed: int = 0, device="cpu", batch_size: int = 256, progress: bool = False):
        import torch

        self.seed = int(seed)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)  # images per forward pass
        self.progress = progress
        rng = np.random.RandomState(self.seed)
        widths = [3, 32, 64, 128, 256]
        self.weights = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            fan_in = c_in * 3 * 3
            # He initialisation keeps the activation scale about constant from layer to layer.
            w = rng.standard_normal((c_out, c_in, 3, 3)) * math.sqrt(2.0 / fan_in)
            self.weights.append(torch.from_numpy(w.astype(np.float32)).to(self.device))
        self.dim = 64 + 128 + 256 + 64

    def __call__(self, images) -> np.ndarray:
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        images = _as_uint8_nchw(images)
        out = np.empty((len(images), self.dim), dtype=np.float64)
        with torch.no_grad():
            for start, stop in tqdm(list(_batches(len(images), self.batch_size)), desc="offline features",
                                    unit="batch", disable=not self.progress, leave=False):
                # np.array copies: the input may be a read-only memmap, which torch.from_numpy warns about
                x = torch.from_numpy(np.array(images[start:stop])).to(self.device, torch.float32) / 127.5 - 1
                x = F.interpolate(x, size=(OFFLINE_INPUT_SIZE, OFFLINE_INPUT_SIZE), mode="bilinear",
                                  align_corners=False, antialias=True)
                parts = [F.adaptive_avg_pool2d(x.mean(dim=1, keepdim=True), 8).flatten(1)]
                h = x
                for index, w in enumerate(self.weights):
                    h = F.leaky_relu(F.conv2d(h, w, stride=2, padding=1), 0.2)
                    if index >= 1:
                        parts.append(h.mean(dim=(2, 3)))
                out[start:stop] = torch.cat(parts, dim=1).double().cpu().numpy()
        return out


class InceptionExtractor:
    """Inception-v3 pool3 features (2048-d), from NVIDIA's TorchScript FID network or torchvision's weights."""

    name = "inception"
    dim = 2048

    def __init__(self, weights_dir: Optional[PathLike] = None, inception_file: Optional[PathLike] = None,
                 device="cpu", batch_size: int = 64, progress: bool = False):
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)  # images per forward pass
        self.progress = progress
        self.inception_file = Path(inception_file).expanduser() if inception_file else None
        if self.inception_file is not None:
            self.model = self._load_torchscript(self.inception_file)
            self.source = f"TorchScript {self.inception_file.name} (standard FID network if it is NVIDIA's)"
            self.comparable_with_published = True
        else:
            self.model = self._load_torchvision(weights_dir)
            self.source = "torchvision Inception-v3 IMAGENET1K_V1 (not identical to published FIDs)"
            self.comparable_with_published = False

    def _load_torchscript(self, path: Path):
        import torch

        if not path.is_file():
            raise UserError(f"No Inception TorchScript file at {path}.",
                            "Pass the path of inception-2015-12-05.pt (NVIDIA's FID network), or leave "
                            "--inception-file out to use torchvision's Inception-v3.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch >= 2.9 deprecates TorchScript loudly
                model = torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:  # a corrupt or non-TorchScript file: torch raises several types
            raise UserError(f"{path} is not a TorchScript model ({type(exc).__name__}: {exc}).",
                            "Pass NVIDIA's inception-2015-12-05.pt as downloaded, or leave --inception-file "
                            "out.") from exc
        return model.eval()

    def _load_torchvision(self, weights_dir: Optional[PathLike]):
        import torch
        from torchvision.models import Inception_V3_Weights, inception_v3

        model_dir = Path(weights_dir).expanduser() if weights_dir else Path.home() / ".cache" / "mura_aug"
        url = Inception_V3_Weights.IMAGENET1K_V1.url
        try:
            state = torch.hub.load_state_dict_from_url(url, model_dir=str(model_dir), map_location="cpu",
                                                       progress=self.progress, check_hash=True)
        except Exception as exc:  # URLError, HTTPError, socket errors, a bad hash: all mean "no weights"
            raise UserError(
                f"The Inception-v3 weights could not be downloaded from {url} into {model_dir} "
                f"({type(exc).__name__}: {exc}).",
                f"Connect to the internet and rerun, or copy {INCEPTION_WEIGHTS_FILE} into {model_dir}, or "
                "pass --inception-file PATH to NVIDIA's inception-2015-12-05.pt, or use --extractor offline "
                "(no download; its numbers compare only with other offline numbers).") from exc
        # transform_input=False: we feed the [-1, 1] scaling the original Google weights expect directly
        # (torchvision's transform_input=True would undo ImageNet normalisation into the same thing).
        model = inception_v3(weights=None, aux_logits=True, transform_input=False, init_weights=False)
        model.load_state_dict(state)
        model.fc = torch.nn.Identity()  # the 2048-d pool features instead of the 1000 class logits
        return model.eval().requires_grad_(False).to(self.device)

    def __call__(self, images) -> np.ndarray:
        import torch
        import torch.nn.functional as F
        from tqdm.auto import tqdm

        images = _as_uint8_nchw(images)
        out = np.empty((len(images), self.dim), dtype=np.float64)
        with torch.no_grad():
            for start, stop in tqdm(list(_batches(len(images), self.batch_size)), desc="inception features",
                                    unit="batch", disable=not self.progress, leave=False):
                # np.array copies: the input may be a read-only memmap, which torch.from_numpy warns about
                x = torch.from_numpy(np.array(images[start:stop])).to(self.device)
                if self.inception_file is not None:
                    # NVIDIA's network takes uint8 images of any size and resizes and scales them itself
                    # (its own metrics code passes the uint8 batch exactly like this).
                    features = self.model(x, return_features=True)
                else:
                    x = x.to(torch.float32) / 127.5 - 1
                    x = F.interpolate(x, size=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE), mode="bilinear",
                                      align_corners=False)
                    features = self.model(x)
                features = features.reshape(len(x), -1)
                if features.shape[1] != self.dim:
                    raise UserError(f"The Inception network returned {features.shape[1]} features per image, "
                                    f"not {self.dim}.",
                                    "Pass NVIDIA's inception-2015-12-05.pt (2048-d pool features).")
                out[start:stop] = features.double().cpu().numpy()
        return out


def get_extractor(name: str = "offline", workspace: Optional[PathLike] = None, device="cpu",
                  inception_file: Optional[PathLike] = None, progress: bool = False):
    """'offline' or 'inception' -> a feature extractor (inception weights cached in the workspace)."""
    if name == "offline":
        return OfflineExtractor(device=device, progress=progress)
    if name == "inception":
        cache = Workspace(workspace).weights_cache if workspace is not None else Path.home() / ".cache" / "mura_aug"
        if inception_file is None:
            inception_file, download_error = _nvidia_inception_file(cache, progress)
            if inception_file is None:
                try:
                    extractor = InceptionExtractor(weights_dir=cache / "torchvision", device=device,
                                                   progress=progress)
                except UserError as exc:
                    raise UserError(
                        f"Neither NVIDIA's FID network ({NVIDIA_INCEPTION_URL}: {download_error}) nor "
                        f"torchvision's Inception-v3 could be loaded into {cache}.",
                        f"Connect to the internet and rerun, or copy {NVIDIA_INCEPTION_FILE} into {cache}, or "
                        "use --extractor offline (no download; its numbers compare only with other offline "
                        "numbers).") from exc
                warnings.warn(f"NVIDIA's FID network could not be downloaded ({download_error}); using "
                              "torchvision's Inception-v3 instead: its FIDs are not comparable with published "
                              f"ones. Copy {NVIDIA_INCEPTION_FILE} into {cache} for those.", stacklevel=2)
                return extractor
        return InceptionExtractor(inception_file=inception_file, device=device, progress=progress)
    raise UserError(f"Unknown feature extractor {name!r}.", f"Use one of: {', '.join(EXTRACTOR_NAMES)}.")


def _nvidia_inception_file(cache: Path, progress: bool):
    """(path of NVIDIA's FID network in `cache`, None), downloading it on first use; (None, reason) offline."""
    import torch

    target = cache / NVIDIA_INCEPTION_FILE
    if target.is_file():
        return target, None
    try:
        cache.mkdir(parents=True, exist_ok=True)
        # download_url_to_file writes a temporary file and renames it, so a cut download leaves nothing behind
        torch.hub.download_url_to_file(NVIDIA_INCEPTION_URL, str(target), progress=progress)
    except Exception as exc:  # URLError, HTTPError, socket errors, a full disk: all mean "not available"
        return None, f"{type(exc).__name__}: {exc}"
    return target, None


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


def _kth_neighbour_radii(features: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance of each point to its k-th nearest other point of the same set (rows in chunks: a full
    10000 x 10000 matrix would take 800 MB)."""
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
    fake_to_real = pairwise_distances(fake, real)
    precision = (fake_to_real <= real_radii[None, :]).any(axis=1).mean()
    recall = (fake_to_real.T <= fake_radii[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


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
    fakes, reals = pixel_descriptors(fake_images), pixel_descriptors(real_images)
    if len(reals) < 2:
        raise UserError("Memorisation needs at least 2 real images.", "Use a dataset with more images.")
    fake_to_real = rms_distances(fakes, reals)
    nearest = fake_to_real.argmin(axis=1)
    distance = fake_to_real[np.arange(len(fakes)), nearest]
    reference = reals
    if len(reference) > max_reference:
        reference = reference[np.random.default_rng(seed).choice(len(reference), max_reference, replace=False)]
    # The nearest *other* real is the 2nd nearest point of the set itself (the 1st is the image itself).
    typical_gap = float(np.median(_kth_neighbour_radii(reference, 1))) / math.sqrt(reference.shape[1])
    if threshold is None:
        threshold = threshold_ratio * typical_gap
    return MemorisationReport(nearest_real=nearest, distance=distance, threshold=float(threshold),
                              typical_real_gap=typical_gap)


def read_image_files(paths: Sequence[PathLike], progress: bool = False) -> np.ndarray:
    """Image files -> uint8 [N, 3, H, W] (all resized to the first file's size). Only reads the files."""
    from PIL import Image
    from tqdm.auto import tqdm

    arrays, size = [], None
    for path in tqdm(list(paths), desc="reading images", unit="img", disable=not progress, leave=False):
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                size = size or image.size
                if image.size != size:
                    image = image.resize(size, Image.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
        except (OSError, ValueError) as exc:
            raise UserError(f"Cannot read the image {path} ({type(exc).__name__}: {exc}).",
                            "Check that the file exists and is a complete image (regenerate it if truncated).") \
                from exc
    if not arrays:
        raise UserError("No image files were given.", "Pass at least one fake image path.")
    return np.stack(arrays)


def memorised_fake_paths(fake_paths: Sequence[PathLike], real_images, threshold: Optional[float] = None,
                         threshold_ratio: float = MEMORISATION_RATIO, progress: bool = False) -> List[Path]:
    """The fake image files that are (near) copies of a real training image: stage 05 leaves these out."""
    fake_paths = [Path(p) for p in fake_paths]
    if not fake_paths:
        return []
    report = memorisation(read_image_files(fake_paths, progress=progress), real_images, threshold=threshold,
                          threshold_ratio=threshold_ratio)
    return [path for path, flagged in zip(fake_paths, report.flagged) if flagged]


# =====================================================================================================
# Generating fakes and measuring them
# =====================================================================================================

def generate_fakes(G, num_images: int, seed: int = 0, device="cpu", batch_size: int = 32,
                   truncation_psi: float = 1.0, class_index: Optional[Union[int, Sequence[int]]] = None,
                   progress: bool = False) -> np.ndarray:
    """`num_images` uint8 NCHW images from G, image i from seed `seed + i`.

    Each latent is drawn as in NVlabs' generate.py (np.random.RandomState(seed).randn(z_dim)), so image i
    here is the image that seed gives there and in stage 05. class_index: for a conditional G, one class
    for all images or one per image (0 negative, 1 positive); None draws classes uniformly.
    """
    import torch
    from tqdm.auto import tqdm

    device = resolve_device(device)
    c_dim = int(getattr(G, "c_dim", 0))
    seeds = np.arange(seed, seed + num_images)
    if c_dim > 0:
        if class_index is None:
            classes = np.random.RandomState(seed).randint(0, c_dim, size=num_images)
        else:
            classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (num_images,))
    out = []
    with torch.no_grad():
        for start, stop in tqdm(list(_batches(num_images, batch_size)), desc="generating fakes", unit="batch",
                                disable=not progress, leave=False):
            z = np.stack([np.random.RandomState(int(s)).randn(G.z_dim) for s in seeds[start:stop]])
            z = torch.from_numpy(z).to(device, torch.float32)
            c = torch.zeros((stop - start, c_dim), device=device)
            if c_dim > 0:
                c[torch.arange(stop - start), torch.from_numpy(classes[start:stop].copy()).to(device)] = 1
            img = G(z, c, truncation_psi=truncation_psi, noise_mode="const")
            out.append((img * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


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


# The training loop passes the same real array every time: keep its features instead of recomputing them.
_REAL_FEATURE_CACHE: Dict[str, object] = {}


def clear_training_metrics_cache() -> None:
    """Forget the cached real features (and the reference to the real images that keeps them valid): call
    when training ends, so a notebook does not hold the training images in memory."""
    _REAL_FEATURE_CACHE.clear()


def training_metrics(G, real_images_uint8, num_fakes: int = DEFAULT_TRAINING_NUM_FAKES, device="cpu",
                     extractor: Optional[Extractor] = None, seed: int = 0, max_reals: int = DEFAULT_MAX_REALS,
                     real_labels=None, batch_size: int = 32) -> Dict[str, float]:
    """The hook of the training loop: a flat dict of floats to merge into the tick's stats.jsonl line.

    Keys: fid_<extractor>, kid_<extractor>, kid_<extractor>_std, precision_<extractor>, recall_<extractor>,
    diversity_fakes, diversity_reals, diversity_ratio, collapse_alarm (1.0 = alarm), pixel_diversity_ratio,
    num_fakes, num_reals, metrics_seconds. Memorisation is left to `python -m mura_aug metrics` (it needs
    all reals, not a subset). real_labels (int, 0/1 per real image) sets the class mix of a conditional G's
    fakes; without it classes are drawn uniformly.
    """
    import time

    started = time.perf_counter()
    extractor = extractor or OfflineExtractor(device=device)
    reals = _as_uint8_nchw(real_images_uint8)
    if len(reals) > max_reals:
        reals = reals[np.sort(np.random.default_rng(seed).choice(len(reals), max_reals, replace=False))]
    # Keyed on the memory the images live in (np.asarray of a memmap is a new object on every call, but the
    # same memory); the cache holds a reference, so that memory cannot be freed and reused meanwhile.
    source = np.asarray(real_images_uint8)
    key = (source.__array_interface__["data"][0], source.shape, source.strides, str(source.dtype),
           type(extractor).__name__, extractor.name, getattr(extractor, "seed", None), max_reals, seed)
    if _REAL_FEATURE_CACHE.get("key") == key:
        real_features, real_pixels = _REAL_FEATURE_CACHE["features"], _REAL_FEATURE_CACHE["pixels"]
    else:
        real_features, real_pixels = extractor(reals), pixel_descriptors(reals)
        _REAL_FEATURE_CACHE.update(key=key, array=source, features=real_features, pixels=real_pixels)
    class_index = None
    if real_labels is not None and int(getattr(G, "c_dim", 0)) > 0:
        labels = np.asarray(real_labels).astype(np.int64).reshape(-1)
        class_index = labels[np.random.RandomState(seed).randint(0, len(labels), size=num_fakes)]
    was_training = getattr(G, "training", False)
    if hasattr(G, "eval"):
        G.eval()
    try:
        fakes = generate_fakes(G, num_fakes, seed=seed, device=device, batch_size=batch_size,
                               class_index=class_index)
    finally:
        if was_training:
            G.train()
    metrics, _ = compute_metrics(reals, fakes, extractor=extractor, seed=seed, real_features=real_features,
                                 real_pixels=real_pixels, with_memorisation=False)
    metrics["metrics_seconds"] = time.perf_counter() - started
    return {key: float(value) for key, value in metrics.items()}


# =====================================================================================================
# Real images from the workspace
# =====================================================================================================

def dataset_zip_path(workspace: Workspace, body_part: str, cls: str, resolution: int) -> Path:
    """data/datasets/<BODY>_<class>_<res>.zip (stage 01's GAN dataset)."""
    try:
        from mura_aug.prepare import dataset_path
    except ImportError:  # stage 01's module not available: the path the contract names
        return Workspace(workspace).datasets / f"{body_part}_{cls}_{resolution}.zip"
    return Path(dataset_path(workspace, body_part, cls, resolution))


def read_dataset_zip(path: PathLike, max_images: Optional[int] = None, seed: int = 0, progress: bool = False,
                     with_names: bool = False):
    """An NVlabs-layout dataset zip (PNG members) -> uint8 [N, 3, R, R]; a random subset beyond max_images.
    with_names: return (images, member names) instead."""
    from PIL import Image
    from tqdm.auto import tqdm

    path = Path(path)
    if not path.is_file():
        raise UserError(f"No GAN dataset at {path}.",
                        "Run stage 01 (python -m mura_aug prepare, or notebook 01_prepare) with the same body "
                        "part and --resolution as the run.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith(".png"))
            if not names:
                raise UserError(f"The dataset {path} holds no PNG images.",
                                "Rebuild it with stage 01 (python -m mura_aug prepare).")
            if max_images is not None and len(names) > max_images:
                picked = np.sort(np.random.default_rng(seed).choice(len(names), max_images, replace=False))
                names = [names[i] for i in picked]
            images = []
            for name in tqdm(names, desc=f"reading {path.name}", unit="img", disable=not progress, leave=False):
                with Image.open(io.BytesIO(archive.read(name))) as image:
                    images.append(np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"The dataset {path} cannot be read ({type(exc).__name__}: {exc}); it may be truncated.",
                        "Delete it and rebuild it with stage 01 (python -m mura_aug prepare).") from exc
    if len({image.shape for image in images}) != 1:
        raise UserError(f"The images in {path} have different sizes.",
                        "Rebuild the dataset with stage 01 (python -m mura_aug prepare).")
    return (np.stack(images), names) if with_names else np.stack(images)


def load_real_images(workspace, body_part: str, cls: str, resolution: int, max_images: Optional[int] = None,
                     seed: int = 0, progress: bool = False, with_names: bool = False):
    """The real training images of one body part and class at `resolution`, from stage 01's dataset zip
    (with_names: also the zip member names)."""
    return read_dataset_zip(dataset_zip_path(Workspace(workspace), body_part, cls, resolution),
                            max_images=max_images, seed=seed, progress=progress, with_names=with_names)


def parse_run_name(run: str) -> Dict[str, object]:
    """'XR_SHOULDER-positive-paper256-256' -> body_part, label, cfg, resolution."""
    parts = run.split("-")
    if len(parts) < 4 or not parts[-1].isdigit():
        raise UserError(f"The run name {run!r} is not of the form BODY-<label>-<cfg>-<resolution>.",
                        "Pass a run folder name from data/experiments (python -m mura_aug runs lists them).")
    return {"body_part": "-".join(parts[:-3]), "label": parts[-3], "cfg": parts[-2], "resolution": int(parts[-1])}


# =====================================================================================================
# `python -m mura_aug metrics`
# =====================================================================================================

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None,
                        help="workspace folder (default: Drive in Colab, else ./workspace)")
    parser.add_argument("--run", required=True, help="run folder name under data/experiments, e.g. "
                        "XR_SHOULDER-positive-paper256-256")
    parser.add_argument("--snapshot", default=None, help="network-*.pt / state-*.pt / .pkl file (absolute, or a "
                        "name inside the run folder); default: the run's newest network file")
    parser.add_argument("--num-fakes", type=int, default=DEFAULT_NUM_FAKES, help="images to generate (count)")
    parser.add_argument("--max-reals", type=int, default=DEFAULT_MAX_REALS,
                        help="real images used at most (count; a random subset beyond)")
    parser.add_argument("--extractor", choices=EXTRACTOR_NAMES, default="offline",
                        help="feature network: offline (no download) or inception (FID's network)")
    parser.add_argument("--inception-file", default=None,
                        help="NVIDIA's TorchScript inception-2015-12-05.pt, for FIDs comparable with papers")
    parser.add_argument("--class", dest="classes", choices=CLASSES, action="append", default=None,
                        help="class to measure (repeatable); default: the run's label, both for a 'both' run")
    parser.add_argument("--seed", type=int, default=0, help="first seed of the fakes (image i uses seed+i)")
    parser.add_argument("--truncation-psi", type=float, default=1.0, help="truncation (1 = none, as FID is defined)")
    parser.add_argument("--memorisation-threshold", type=float, default=None,
                        help="RMS grey-level difference 0..1 under which a fake counts as a copy (default: "
                        f"{MEMORISATION_RATIO} x the median nearest-neighbour gap among reals)")
    parser.add_argument("--collapse-fraction", type=float, default=COLLAPSE_FRACTION,
                        help="mode-collapse alarm when fake diversity < this fraction of real diversity")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=32, help="images per generator / extractor batch")
    parser.add_argument("--force", action="store_true", help="measure again even when the result file exists")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def _load_generator(path: Path, device):
    from mura_aug.gan.network_file import load_generator

    return load_generator(path, device=device)


def find_snapshot(run_dir: Path, snapshot: Optional[PathLike]) -> Path:
    """The snapshot file to measure: the given one (absolute or inside the run folder), or the newest."""
    if snapshot:
        candidate = Path(snapshot).expanduser()
        for path in (candidate, run_dir / candidate):
            if path.is_file():
                return path
        raise UserError(f"No snapshot file {snapshot} (looked in the current folder and in {run_dir}).",
                        "Pass an existing network-*.pt / state-*.pt file (python -m mura_aug runs lists them), "
                        "or leave --snapshot out for the newest.")
    candidates = sorted(run_dir.glob("network-*kimg.pt"))
    if not candidates:
        raise UserError(f"The run folder {run_dir} holds no network-*kimg.pt snapshot yet.",
                        "Train the run until its first snapshot (see --snap), or pass --snapshot FILE.")
    return candidates[-1]


def result_path(workspace: Workspace, run: str, snapshot: Path) -> Path:
    """results/metrics/<run>/<snapshot file name without suffix>.json"""
    return Workspace(workspace).results / "metrics" / run / f"{snapshot.stem}.json"


def measure_snapshot(workspace, run: str, snapshot: Optional[PathLike] = None, num_fakes: int = DEFAULT_NUM_FAKES,
                     extractor: str = "offline", inception_file: Optional[PathLike] = None,
                     classes: Optional[Sequence[str]] = None, max_reals: int = DEFAULT_MAX_REALS, seed: int = 0,
                     truncation_psi: float = 1.0, memorisation_threshold: Optional[float] = None,
                     collapse_fraction: float = COLLAPSE_FRACTION, device="auto", batch_size: int = 32,
                     force: bool = False, progress: bool = True) -> Dict[str, object]:
    """Measure one snapshot of a run and write results/metrics/<run>/<snapshot>.json (+ nearest-real CSV and a
    closest-pairs figure per class). An existing result with the same settings is returned, not recomputed."""
    import json

    workspace = resolve_workspace(workspace)
    run_dir = workspace.experiments / run
    if not run_dir.is_dir():
        raise UserError(f"No run folder {run_dir}.",
                        "Pass a run name from data/experiments (python -m mura_aug runs lists them).")
    minimum = 2 * (PR_NEIGHBOURS + 1)  # precision/recall need k+1 points per set; KID subsets 2
    for option, value in (("--num-fakes", num_fakes), ("--max-reals", max_reals)):
        if value < minimum:
            raise UserError(f"{option} {value} is too few.", f"Use at least {minimum} (thousands for a "
                            "meaningful FID).")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be at least 1.", "Use e.g. --batch-size 32.")
    if not 0 < collapse_fraction <= 1:
        raise UserError(f"--collapse-fraction {collapse_fraction} is outside (0, 1].",
                        f"Use a fraction such as the default {COLLAPSE_FRACTION}.")
    snapshot_path = find_snapshot(run_dir, snapshot)
    out_path = result_path(workspace, run, snapshot_path)
    run_info = parse_run_name(run)
    if not classes:  # the run's class; both classes for a class-conditional ('both') run
        classes = list(CLASSES) if run_info["label"] not in CLASSES else [run_info["label"]]
    for cls in classes:
        if cls not in CLASSES:
            raise UserError(f"Unknown class {cls!r}.", f"Pass --class with one of {', '.join(CLASSES)}.")
    settings = {"extractor": extractor, "num_fakes": num_fakes, "max_reals": max_reals, "seed": seed,
                "truncation_psi": truncation_psi, "inception_file": str(inception_file) if inception_file else None,
                "memorisation_threshold": memorisation_threshold, "collapse_fraction": collapse_fraction}
    if out_path.is_file() and not force:
        try:
            previous = json.loads(out_path.read_text())
        except (OSError, ValueError):
            previous = {}
        if previous.get("settings") == settings and set(classes) <= set(previous.get("metrics", {})):
            previous.update(reused=True, path=str(out_path))
            return previous

    device = resolve_device(device)
    G = _load_generator(snapshot_path, device)
    meta = getattr(G, "snapshot_meta", {}) or {}
    resolution = int(getattr(G, "img_resolution", run_info["resolution"]))
    feature_net = get_extractor(extractor, workspace=workspace, device=device, inception_file=inception_file,
                                progress=progress)
    result = {"run": run, "snapshot": snapshot_path.name, "kimg": meta.get("kimg"), "resolution": resolution,
              "settings": settings, "extractor_source": getattr(feature_net, "source", "offline random conv net"),
              "comparable_with_published_fid": bool(getattr(feature_net, "comparable_with_published", False)),
              "metrics": {}}
    for cls in classes:
        reals, real_names = load_real_images(workspace, str(run_info["body_part"]), cls, resolution,
                                             max_images=max_reals, seed=seed, progress=progress, with_names=True)
        class_index = LABEL_OF_CLASS[cls]
        fakes = generate_fakes(G, num_fakes, seed=seed, device=device, batch_size=batch_size,
                               truncation_psi=truncation_psi,
                               class_index=class_index if int(getattr(G, "c_dim", 0)) > 0 else None,
                               progress=progress)
        metrics, report = compute_metrics(reals, fakes, extractor=feature_net, seed=seed,
                                          collapse_fraction=collapse_fraction,
                                          memorisation_threshold=memorisation_threshold)
        result["metrics"][cls] = metrics
        _write_memorisation_outputs(out_path, cls, report, fakes, reals, real_names, seed)
    atomic_write_json(out_path, result)
    result["path"] = str(out_path)
    return result


def _write_memorisation_outputs(out_path: Path, cls: str, report: MemorisationReport, fakes, reals,
                                real_names: Sequence[str], seed: int):
    """<snapshot>_<class>_nearest.csv (each fake's seed, nearest real, distance, flag; closest first) and
    <snapshot>_<class>_closest_pairs.png next to the JSON result."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from mura_aug.plots_metrics import plot_closest_pairs

    table = pd.DataFrame({"seed": np.arange(seed, seed + len(report.distance)),
                          "nearest_real": [real_names[i] for i in report.nearest_real],
                          "distance": report.distance, "flagged": report.flagged})
    atomic_write_csv(out_path.with_name(f"{out_path.stem}_{cls}_nearest.csv"),
                     table.sort_values("distance", kind="stable"))
    figure = plot_closest_pairs(report, fakes, reals, fake_labels=[f"seed {s}" for s in table["seed"]],
                                real_labels=[Path(name).name for name in real_names])
    with atomic_path(out_path.with_name(f"{out_path.stem}_{cls}_closest_pairs.png")) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def format_summary(result: Dict[str, object]) -> str:
    """A few human-readable lines for one measure_snapshot result."""
    settings = result["settings"]
    lines = [f"Metrics of run {result['run']}, snapshot {result['snapshot']} (kimg {result.get('kimg')}), "
             f"extractor {settings['extractor']}" + (" (reused the existing result)" if result.get("reused") else "")]
    for cls, m in result["metrics"].items():
        name = settings["extractor"]
        lines.append(f"  {cls}: {int(m['num_fakes'])} fakes vs {int(m['num_reals'])} reals | FID {m[f'fid_{name}']:.2f}"
                     f" | KID {m[f'kid_{name}']:.4f} ± {m[f'kid_{name}_std']:.4f} | precision "
                     f"{m[f'precision_{name}']:.3f} recall {m[f'recall_{name}']:.3f}")
        alarm = "  MODE-COLLAPSE ALARM" if m["collapse_alarm"] else ""
        lines.append(f"      diversity fakes/reals {m['diversity_ratio']:.3f} (pixels {m['pixel_diversity_ratio']:.3f})"
                     f"{alarm} | memorised {int(m['memorised_count'])} of {int(m['num_fakes'])} (nearest real "
                     f"min {m['nearest_real_min']:.4f}, threshold {m['memorisation_threshold']:.4f})")
    if settings["extractor"] == "offline":
        lines.append("  Note: offline-extractor numbers compare only with other offline numbers, not with papers.")
    elif not result.get("comparable_with_published_fid"):
        lines.append("  Note: torchvision's Inception-v3 is not the TF FID network; close to, not equal to, "
                     "published FIDs (pass --inception-file for those).")
    if "path" in result:
        lines.append(f"  Written: {result['path']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    result = measure_snapshot(args.workspace, args.run, snapshot=args.snapshot, num_fakes=args.num_fakes,
                              extractor=args.extractor, inception_file=args.inception_file, classes=args.classes,
                              max_reals=args.max_reals, seed=args.seed, truncation_psi=args.truncation_psi,
                              memorisation_threshold=args.memorisation_threshold,
                              collapse_fraction=args.collapse_fraction, device=args.device,
                              batch_size=args.batch_size, force=args.force, progress=args.progress)
    print(format_summary(result))
    return 0
