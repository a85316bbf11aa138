"""Feature extractors for the fake-image measures: a callable ``extractor(images_uint8_NCHW) -> float64 [N, D]``
with attributes ``name`` and ``dim``.

- ``'standard'`` (the default everywhere: ``metrics``, the training hook, notebooks 02/03): NVIDIA's FID
  network (below) when it is cached in the workspace's ``weights/`` folder or can be downloaded there (Colab:
  the workspace is on Drive, so one download serves every later session); otherwise the offline network,
  with an ``OfflineFidWarning``. Its features are then named ``offline`` like the offline extractor's.
- ``'inception'``: Inception-v3 pool features (2048-d), as FID is defined. The published FID network is
  NVIDIA's TorchScript port of TensorFlow's inception-2015-12-05 (the file StyleGAN2-ADA's own metrics use):
  downloaded once into the workspace's ``weights/`` folder, or passed with ``inception_file=``; with it the
  numbers are comparable with published FIDs. Where that download fails but torchvision's ImageNet
  Inception-v3 can be had, that one is used with a warning: close to, but NOT identical with published FIDs.
- ``'offline'``: a fixed-seed random conv net plus downsampled pixels. Needs no download, is deterministic,
  fast on a CPU; meant for tests, demos and trends during training. Its numbers compare only with other
  offline numbers (the keys carry the suffix ``_offline``).

Every figure, title and line that shows a number of the offline network calls it by `metric_label` (one
owner of the wording): "offline FID (not comparable with published FIDs)".
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from mura_aug.devices import resolve_device
from mura_aug.errors import UserError
from mura_aug.workspace import USER_CACHE, Workspace

PathLike = Union[str, os.PathLike]

OFFLINE_INPUT_SIZE = 64             # px; the offline extractor looks at images resized to 64 x 64
INCEPTION_INPUT_SIZE = 299          # px; Inception-v3's input size
INCEPTION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"  # torchvision's ImageNet weights
NVIDIA_INCEPTION_FILE = "inception-2015-12-05.pt"  # NVIDIA's TorchScript FID network (about 95 MB)
NVIDIA_INCEPTION_URL = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                        + NVIDIA_INCEPTION_FILE)
EXTRACTOR_NAMES = ("standard", "inception", "offline")
DEFAULT_EXTRACTOR = "standard"  # NVIDIA's FID network where it can be had, else offline with a warning
OFFLINE_FID_LABEL = "offline FID (not comparable with published FIDs)"


class OfflineFidWarning(UserWarning):
    """The standard FID network could not be had: the numbers come from the offline network."""

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

        model_dir = Path(weights_dir).expanduser() if weights_dir else USER_CACHE
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


def get_extractor(name: str = DEFAULT_EXTRACTOR, workspace: Optional[PathLike] = None, device="cpu",
                  inception_file: Optional[PathLike] = None, progress: bool = False):
    """'standard', 'inception' or 'offline' -> a feature extractor (network files cached in the workspace's
    weights/ folder; without a workspace in the user's cache)."""
    cache = Workspace(workspace).weights_cache if workspace is not None else USER_CACHE
    if name == "offline":
        return OfflineExtractor(device=device, progress=progress)
    if name == "standard":
        if inception_file is None:
            inception_file, download_error = _nvidia_inception_file(cache, progress)
            if inception_file is None:
                warnings.warn(f"NVIDIA's FID network is not in {cache} and could not be downloaded "
                              f"({download_error}): the fakes are measured with the offline network, so every "
                              f"number is an {OFFLINE_FID_LABEL}. Copy {NVIDIA_INCEPTION_FILE} "
                              f"({NVIDIA_INCEPTION_URL}) into {cache} for the standard FID.",
                              OfflineFidWarning, stacklevel=2)
                return OfflineExtractor(device=device, progress=progress)
        return InceptionExtractor(inception_file=inception_file, device=device, progress=progress)
    if name == "inception":
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


def metric_label(key: str, comparable_with_published: bool = True) -> str:
    """How a figure, title or printed line names a measure key: 'fid_offline' -> "offline FID (not comparable
    with published FIDs)", 'fid_inception' -> "FID" (or "FID (torchvision Inception-v3, not the published
    FID network)" when `comparable_with_published` is False), 'kid_offline_std' -> "offline KID spread (not
    comparable with published KIDs)"; other keys are returned as they are."""
    for measure, shown in (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall")):
        for extractor in EXTRACTOR_NAMES:
            for suffix, extra in (("", ""), ("_std", " spread")):
                if key != f"{measure}_{extractor}{suffix}":
                    continue
                if extractor == "offline":
                    published = f"published {shown}s" if measure in ("fid", "kid") else "published numbers"
                    return OFFLINE_FID_LABEL if key == "fid_offline" else \
                        f"offline {shown}{extra} (not comparable with {published})"
                if not comparable_with_published:
                    return f"{shown}{extra} (torchvision Inception-v3, not the published FID network)"
                return f"{shown}{extra}"
    return key


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


