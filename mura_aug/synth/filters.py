"""Stage 05's filters: which fakes the augmented table leaves out, and why.

In the order they judge a class's fakes:
- memorisation: a fake that is a (near) copy of a real training image of its class could leak a patient's
  X-ray (`mura_aug.metrics.memorisation` against stage 01's GAN dataset zip, at the fakes' resolution);
- near-duplicates: a fake too close to an earlier kept one (32 px grey thumbnails);
- realism: the lowest-scoring share (DROP_FRACTION) and everything below MIN_SCORE, by a scorer(paths, cls):
  the discriminator of the run that made them (`run_discriminator_scorer`), a given D (`discriminator_scorer`)
  or a classifier's confidence in the class (`classifier_scorer`).
Scorers read the saved grey fakes and feed networks the three channels they expect (grey replicated).

`filter_fakes` starts from scratch each call (so it can be rerun with other thresholds), judges every fake of
the classes in the manifest, and writes the verdicts to the manifest once, after every filter has run: a
failure leaves the previous verdicts. It does not write the augmented table (`stage.run_stage` does, after it).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from mura_aug.devices import resolve_device
from mura_aug.errors import UserError, failures_as_user_error
from mura_aug.gan import sampling
from mura_aug.gan.torch_files import load_weights_only
from mura_aug.synth.generate import open_gray
from mura_aug.synth.manifest import NO_FILTER, read_manifest, write_manifest
from mura_aug.synth.settings import DUPLICATE_THUMB_PX
from mura_aug.synth.snapshots import Snapshot
from mura_aug.workspace import CLASSES, RunFolder, Workspace

PathLike = Union[str, os.PathLike]
Scorer = Callable[[Sequence[Path], str], np.ndarray]  # (fake paths, class) -> scores, higher = more realistic
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation ImageNet-trained classifiers expect
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- reading fakes for networks ---------------------------------------------------------------------------

def load_rgb_batch(paths: Sequence[Path], size: int) -> np.ndarray:
    """Images as N x 3 x size x size uint8 (grey copied to the 3 channels networks expect)."""
    arrays = []
    for path in paths:
        try:
            with Image.open(path) as handle:
                image = handle.convert("RGB")
        except Exception as exc:
            raise UserError(f"The fake {path} cannot be read ({type(exc).__name__}).",
                            "Delete it and rerun synth: it is generated again.") from exc
        if image.size != (size, size):
            image = image.resize((size, size), Image.BICUBIC)
        arrays.append(np.asarray(image).transpose(2, 0, 1))
    return np.stack(arrays) if arrays else np.zeros([0, 3, size, size], np.uint8)


# --- near-duplicates ----------------------------------------------------------------------------------------

DUPLICATE_BLOCK = 256  # fakes judged per step: their distances to every kept fake are one matrix op


def near_duplicates(paths: Sequence[Path], threshold: float, thumb_px: int = DUPLICATE_THUMB_PX
                    ) -> Dict[int, Tuple[int, float]]:
    """Indices of images that are near-duplicates of an earlier one -> (index of that one, distance).

    distance = mean absolute difference of `thumb_px` grey thumbnails, in grey levels (0-255);
    an image closer than `threshold` to an earlier kept image is a duplicate (the nearest kept one, the
    earliest on a tie).

    Every fake is compared with every earlier kept one, so the work grows with the square of the count
    (10,000 fakes: 50 million pairs); it is done DUPLICATE_BLOCK fakes at a time as one distance matrix
    against the kept ones (block x kept floats), then inside the block in order.
    """
    import torch

    dim = thumb_px * thumb_px
    thumbs = np.empty((len(paths), dim), dtype=np.float32)
    for index, path in enumerate(paths):
        thumbs[index] = np.asarray(open_gray(path).resize((thumb_px, thumb_px), Image.BILINEAR),
                                   dtype=np.float32).ravel()
    duplicates: Dict[int, Tuple[int, float]] = {}
    kept = np.empty(len(paths), dtype=np.int64)  # indices of kept images, in order; the first n_kept are valid
    n_kept = 0
    all_thumbs = torch.from_numpy(thumbs)
    for start in range(0, len(paths), DUPLICATE_BLOCK):
        block = all_thumbs[start:start + DUPLICATE_BLOCK]
        if n_kept:
            to_kept = torch.cdist(block, all_thumbs[torch.from_numpy(kept[:n_kept])], p=1).numpy() / dim
            before_best = to_kept.argmin(axis=1)
            before_distance = to_kept[np.arange(len(block)), before_best]
        inside = torch.cdist(block, block, p=1).numpy() / dim
        block_kept: List[int] = []  # positions in the block kept so far
        for row in range(len(block)):
            best, distance = -1, math.inf
            if n_kept:
                best, distance = int(kept[before_best[row]]), float(before_distance[row])
            if block_kept:
                nearest = block_kept[int(np.argmin(inside[row, block_kept]))]
                if inside[row, nearest] < distance:  # strictly nearer: earlier kept images win ties
                    best, distance = start + nearest, float(inside[row, nearest])
            if distance < threshold:
                duplicates[start + row] = (best, distance)
            else:
                block_kept.append(row)
        kept[n_kept:n_kept + len(block_kept)] = [start + row for row in block_kept]
        n_kept += len(block_kept)
    return duplicates


# --- scorers ------------------------------------------------------------------------------------------------

def load_discriminator(path: PathLike, device=None):
    """D from a full training state (`state-*.pt` with `D_kwargs` and `D`) or an NVlabs .pkl."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"No discriminator file at {path}.",
                        "Pass a state-*kimg.pt of the run (network-*.pt files hold only the generator) or an "
                        "NVlabs .pkl.")
    device = resolve_device(device)
    if path.suffix == ".pkl":
        from mura_aug.gan.nvlabs import load_nvlabs_pkl

        D = load_nvlabs_pkl(path)["D"]
    else:
        from mura_aug.gan.networks import Discriminator

        with failures_as_user_error(lambda exc: f"The state file {path} cannot be read ({type(exc).__name__}).",
                                    "Use an earlier state-*kimg.pt of the run."):
            payload = load_weights_only(path)
        D_kwargs = _discriminator_kwargs(payload)
        if D_kwargs is None or not isinstance(payload.get("D"), dict):
            raise UserError(f"{path} holds no discriminator (D weights and its constructor arguments).",
                            "Pass a full training state state-*kimg.pt, not a network-*.pt inference file.")
        D = Discriminator(**D_kwargs)
        D.load_state_dict(payload["D"])
    return D.eval().requires_grad_(False).to(device)


def _discriminator_kwargs(payload) -> Optional[dict]:
    """D's constructor arguments in a state file: `D_kwargs` at the top or inside the stored config."""
    if not isinstance(payload, dict):
        return None
    if isinstance(payload.get("D_kwargs"), dict):
        return payload["D_kwargs"]
    config = payload.get("config")
    if isinstance(config, dict) and isinstance(config.get("D_kwargs"), dict):
        return config["D_kwargs"]
    return None


def discriminator_scorer(D, batch_size: int = 32, device=None) -> Scorer:
    """A scorer(paths, cls) -> realism logits (higher = more real) from a discriminator.

    batch_size: fakes per D call (images)."""
    import torch

    device = resolve_device(device)
    group = max([int(m.group_size) for m in D.modules() if getattr(m, "group_size", None)] or [1])

    def score(paths: Sequence[Path], cls: str) -> np.ndarray:
        out = []
        c_row = torch.from_numpy(sampling.class_vectors(D.c_dim, cls, 1)[0]).to(device)
        for start in range(0, len(paths), batch_size):
            batch = load_rgb_batch(paths[start:start + batch_size], int(D.img_resolution))
            if int(D.img_channels) == 1:
                batch = batch[:, :1]
            images = torch.from_numpy(batch).to(device).float() / 127.5 - 1
            n = len(images)
            # D's minibatch-std layer needs the batch in whole groups: repeat images to fill the last group
            # and ignore the scores of the repeats.
            if n > group and n % group:
                images = torch.cat([images, images[:group - n % group]])
            with torch.no_grad():
                logits = D(images, c_row.unsqueeze(0).repeat(len(images), 1))
            out.append(logits.reshape(-1)[:n].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros([0], np.float32)

    return score


def classifier_scorer(model, image_size: int = 224, batch_size: int = 32, device=None) -> Scorer:
    """A scorer(paths, cls) -> the classifier's confidence (0-1) that each fake shows `cls`.

    `model` maps N x 3 x image_size x image_size float images (ImageNet-normalised; image_size in px) to one
    logit (positive = abnormal) or to two logits (index = label); batch_size: fakes per call (images).
    """
    import torch

    device = resolve_device(device)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    model = model.eval().to(device)

    def score(paths: Sequence[Path], cls: str) -> np.ndarray:
        out = []
        for start in range(0, len(paths), batch_size):
            batch = torch.from_numpy(load_rgb_batch(paths[start:start + batch_size], image_size)).to(device)
            with torch.no_grad():
                logits = model((batch.float() / 255 - mean) / std)
            if logits.ndim == 1 or logits.shape[1] == 1:
                p_positive = torch.sigmoid(logits.reshape(-1))
            else:
                p_positive = torch.softmax(logits, dim=1)[:, 1]
            confidence = p_positive if cls == "positive" else 1 - p_positive
            out.append(confidence.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros([0], np.float32)

    return score


def run_discriminator_scorer(snapshots: Dict[str, Snapshot], device=None) -> Scorer:
    """A scorer that judges each class's fakes with the discriminator of the run that made them
    (the state file saved with the snapshot, else the run's newest state)."""
    scorers: Dict[str, Scorer] = {}
    for cls, snap in snapshots.items():
        if snap.path.suffix == ".pkl":
            scorers[cls] = discriminator_scorer(load_discriminator(snap.path, device), device=device)
            continue
        run = RunFolder(snap.path.parent)
        states = [run.state(snap.kimg)] if run.state(snap.kimg).is_file() else run.state_files()[-1:]
        if not states:
            raise UserError(f"The run {snap.run} keeps no state-*kimg.pt file, so it has no discriminator to "
                            "score realism with.",
                            "Set DROP_FRACTION = 0 (or --drop-fraction 0), or pass --discriminator with a state "
                            "file of that run.")
        scorers[cls] = discriminator_scorer(load_discriminator(states[0], device), device=device)

    def score(paths: Sequence[Path], cls: str) -> np.ndarray:
        return scorers[cls](paths, cls)

    return score


def scorer_for(settings, snapshots: Dict[str, Snapshot]) -> Optional[Scorer]:
    """The realism scorer the settings ask for: DISCRIMINATOR when given, else each class's run's own D;
    None when no realism filter is asked (or no run is known: GRIDS without DISCRIMINATOR)."""
    if not settings.needs_scorer:
        return None
    if settings.discriminator:
        return discriminator_scorer(load_discriminator(settings.discriminator, settings.device),
                                    device=settings.device)
    return run_discriminator_scorer(snapshots, device=settings.device) if snapshots else None


def require_scorer(settings, scorer: Optional[Scorer]) -> None:
    """UserError when DROP_FRACTION or MIN_SCORE asks for realism scores and nothing can give them."""
    if settings.needs_scorer and scorer is None:
        raise UserError("Dropping the least realistic fakes needs a scorer.",
                        "Pass a discriminator (DISCRIMINATOR, --discriminator state-*.pt or an NVlabs .pkl) or a "
                        "classifier scorer (run_stage(..., scorer=filters.classifier_scorer(model))).")


# --- memorisation -------------------------------------------------------------------------------------------

def memorised_fakes(workspace: Workspace, body_part: str, cls: str, paths: Sequence[Path],
                    threshold: Optional[float] = None) -> Dict[int, Tuple[str, float, float]]:
    """{index in paths: (nearest real dataset member, its distance, the threshold)} for fakes that copy a real."""
    from mura_aug import metrics
    from mura_aug.gan.dataset import load_real_images

    if not paths:
        return {}
    resolution = int(metrics.read_image_files(paths[:1]).shape[-1])
    check_memorisation_dataset(workspace, body_part, cls, resolution)
    reals, names = load_real_images(workspace, body_part, cls, resolution)
    report = metrics.memorisation_of_files(paths, reals, threshold=threshold)
    return {i: (str(names[report.nearest_real[i]]), float(report.distance[i]), report.threshold)
            for i in np.flatnonzero(report.flagged)}


def check_memorisation_dataset(workspace: Workspace, body_part: str, cls: str, resolution: int) -> None:
    """UserError when stage 01's dataset the memorisation filter compares with is missing."""
    dataset = workspace.dataset_zip(body_part, cls, resolution)
    if not dataset.is_file():
        raise UserError(f"Excluding memorised fakes needs the {cls} GAN dataset at {resolution} px, which is "
                        f"missing ({dataset}).",
                        f"Run stage 01 (prepare) with RESOLUTION = {resolution}, or turn memorisation "
                        "filtering off (EXCLUDE_MEMORISED = False, --no-exclude-memorised).")


# --- the filter pass ------------------------------------------------------------------------------------------

def filter_fakes(workspace: Workspace, settings, scorer: Optional[Scorer] = None, progress: bool = True,
                 classes: Optional[Sequence[str]] = None):
    """Judge every fake of `classes` (default: the settings') of BODY_PART in the manifest; write the verdicts to
    the manifest after all filters ran; return the dropped rows (path, class, drop_reason, score).

    settings (SynthSettings): EXCLUDE_MEMORISED, MEMORISATION_THRESHOLD, DEDUPE_THRESHOLD, DROP_FRACTION,
    MIN_SCORE; `scorer` is needed when DROP_FRACTION or MIN_SCORE asks for realism.
    """
    from tqdm.auto import tqdm

    require_scorer(settings, scorer)
    body_part, classes = settings.body_part, list(classes or settings.classes)
    for cls in classes:
        if cls not in CLASSES:
            raise UserError(f"Unknown class {cls!r}.", f"Use one of {', '.join(CLASSES)}.")
    judged_by = ", ".join(settings.filters_asked()) or NO_FILTER
    manifest = read_manifest(workspace)
    mine = (manifest["body_part"] == body_part) & manifest["class"].isin(classes)
    manifest.loc[mine, "dropped"] = False
    manifest.loc[mine, "drop_reason"] = ""
    manifest["score"] = manifest["score"].astype(object)
    manifest.loc[mine, "score"] = None
    on_disk = np.array([workspace.absolute(p).is_file() for p in manifest["path"]], dtype=bool)
    for cls in tqdm(classes, desc="filtering", disable=not progress):
        index = manifest.index[(mine & (manifest["class"] == cls)).to_numpy() & on_disk]
        _judge_class(workspace, settings, manifest, index, cls, scorer)
    manifest.loc[mine.to_numpy() & on_disk, "filtered_by"] = judged_by
    write_manifest(workspace, manifest)
    dropped = manifest[mine & manifest["dropped"]]
    return dropped[["path", "class", "drop_reason", "score"]].sort_values("path").reset_index(drop=True)


def _drop(manifest, row, reason: str) -> None:
    manifest.loc[row, ["dropped", "drop_reason"]] = [True, reason]


def _judge_class(workspace: Workspace, settings, manifest, index, cls: str, scorer: Optional[Scorer]) -> None:
    paths = [workspace.absolute(p) for p in manifest.loc[index, "path"]]
    if settings.exclude_memorised and paths:
        copies = memorised_fakes(workspace, settings.body_part, cls, paths, settings.memorisation_threshold)
        for i, (real_name, distance, threshold) in copies.items():
            _drop(manifest, index[i], f"memorised: copy of real image {real_name} (distance {distance:.4f} < "
                                      f"{threshold:.4f})")
    if settings.dedupe_threshold is not None and len(paths) > 1:
        for i, (j, distance) in near_duplicates(paths, float(settings.dedupe_threshold)).items():
            if not manifest.at[index[i], "dropped"]:
                _drop(manifest, index[i], f"near-duplicate of {Path(paths[j]).name} (distance {distance:.2f} < "
                                          f"{settings.dedupe_threshold})")
    if scorer is None or not settings.needs_scorer:
        return
    remaining = [k for k in index if not manifest.at[k, "dropped"]]
    scores = scorer([workspace.absolute(manifest.at[k, "path"]) for k in remaining], cls)
    for k, value in zip(remaining, scores):
        manifest.at[k, "score"] = float(value)
    n_drop = int(math.floor(settings.drop_fraction * len(remaining)))
    cutoff = float(np.sort(scores)[n_drop - 1]) if n_drop > 0 else -math.inf
    worst = set(np.argsort(scores, kind="stable")[:n_drop].tolist())
    for position, k in enumerate(remaining):
        value = float(scores[position])
        if position in worst:
            _drop(manifest, k, f"least realistic {settings.drop_fraction:.0%} (score {value:.3f} <= {cutoff:.3f})")
        elif settings.min_score is not None and value < settings.min_score:
            _drop(manifest, k, f"score {value:.3f} < {settings.min_score}")
