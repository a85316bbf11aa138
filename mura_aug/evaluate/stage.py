"""Stage 06: does synthetic data help? A classifier trained with and without it, scored like MURA.

Two arms are trained per seed on the same patient-level split of the real training images:
  baseline   real training images only
  augmented  the same real images plus SYNTH_RATIO synthetic images per real one (capped by what stage 05
             wrote), synthetic rows only ever in the training batches
Both are scored on MURA valid, which is never used for any choice: early stopping, the learning-rate decay
and the tuned decision threshold all use an internal validation split of training *patients*.

Workspace files (results/evaluation/<BODY>/<arch>-<size>px-<imagenet|scratch>/):
  runs/<run>/checkpoint.pt    full training state after each epoch (a cut-off session continues from it)
  runs/<run>/result.json      written last: the run is finished (the done marker a rerun skips on)
  runs/<run>/predictions.csv  image-level probabilities on MURA valid and on the internal validation split
  summary.json, runs.csv, comparison.csv   metrics with bootstrap intervals, the arm comparison, the verdict
where <run> is `baseline-seed<k>` or `augmented-x<ratio>-seed<k>`.

`python -m mura_aug evaluate --help` lists the options; notebook 06 calls `evaluate()` with the same ones.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mura_aug.evaluate import study_metrics
from mura_aug.devices import resolve_device, reuse_freed_cpu_memory
from mura_aug.errors import UserError
from mura_aug.workspace import EvaluationFolder, EvaluationRun, Workspace, atomic_path, atomic_write_csv, atomic_write_json, resolve_workspace

ARCHS = ("densenet169", "resnet50", "tiny")
ARMS = ("baseline", "augmented")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics the ImageNet weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
TABLE_COLUMNS = ("path", "class", "label", "patient", "study_id")  # plus `source` (absent = every row real)
CHECKPOINT_FORMAT = "mura_aug.classifier_checkpoint"
IMAGE_CACHE_BUDGET_BYTES = 1_500_000_000  # decoded, resized images kept in memory when they fit in this
LEVELS = ("study", "image")
THRESHOLDS = ("0.5", "tuned")  # MURA's fixed threshold, and the one chosen on the internal validation split


@dataclass
class EvalSettings:
    """Every choice of stage 06. The fields that shape training are stored with each run (see `fingerprint`)."""

    arch: str = "densenet169"  # densenet169 | resnet50 | tiny (a small CNN for CPU demos)
    pretrained: bool = True  # ImageNet weights through torchvision's weights API (downloaded once)
    image_size: int = 224  # px, square network input (the MURA paper used 320)
    epochs: int = 12  # upper limit; early stopping usually ends a run sooner
    batch_size: int = 16  # images per step
    learning_rate: Optional[float] = None  # Adam; None = 1e-4 (MURA paper) for densenet/resnet, 1e-3 for tiny
    lr_patience: int = 0  # extra epochs without a lower internal-validation loss before the rate is divided by 10
    # (0 = after every such epoch, as in the MURA paper)
    early_stop_patience: int = 3  # epochs without a lower internal-validation loss before training stops
    val_fraction: float = 0.1  # share of training patients held out for early stopping and the threshold
    rotation_deg: float = 30.0  # training augmentation: random rotation within +- this many degrees
    seeds: List[int] = field(default_factory=lambda: [0, 1, 2])  # one run per arm and seed
    synth_ratio: float = 1.0  # synthetic images per real training image in the augmented arm
    arms: Tuple[str, ...] = ARMS
    n_boot: int = 1000  # bootstrap resamples of the studies for every interval
    workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...

    @property
    def lr(self) -> float:
        """The learning rate in use: a small network trained from scratch needs a larger step than a pretrained one."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return 1e-3 if self.arch == "tiny" else 1e-4

    def fingerprint(self) -> Dict[str, object]:
        """The settings a finished or partial run must share with a rerun that continues it."""
        keys = ("arch", "pretrained", "image_size", "batch_size", "learning_rate", "lr_patience",
                "early_stop_patience", "val_fraction", "rotation_deg")
        return {key: (self.lr if key == "learning_rate" else getattr(self, key)) for key in keys}

    @property
    def experiment_name(self) -> str:
        return f"{self.arch}-{self.image_size}px-{'imagenet' if self.pretrained else 'scratch'}"


def check_settings(settings: EvalSettings) -> EvalSettings:
    """Reject impossible values with a message naming the parameter."""
    def bad(name, value, fix):
        raise UserError(f"{name}={value!r} is not valid.", fix)

    if settings.arch not in ARCHS:
        bad("ARCH", settings.arch, f"Use one of {', '.join(ARCHS)}.")
    if not 16 <= int(settings.image_size) <= 1024:
        bad("IMAGE_SIZE", settings.image_size, "Use 224 (default), 320 (MURA paper) or 32-64 for CPU demos.")
    if settings.arch in ("densenet169", "resnet50") and settings.image_size < 32:
        bad("IMAGE_SIZE", settings.image_size, f"{settings.arch} needs at least 32 px; use ARCH='tiny' below that.")
    if int(settings.epochs) < 1:
        bad("EPOCHS", settings.epochs, "Use 1 or more.")
    if int(settings.batch_size) < 2:
        bad("BATCH_SIZE", settings.batch_size, "Use 2 or more (batch normalisation needs it).")
    if not settings.seeds:
        bad("SEEDS", settings.seeds, "Use a number of seeds (3 by default) or a list of seeds.")
    if settings.synth_ratio < 0:
        bad("SYNTH_RATIO", settings.synth_ratio, "Use 0 or more synthetic images per real one (1.0 default).")
    if not 0 < settings.val_fraction < 0.5:
        bad("val_fraction", settings.val_fraction, "Use a share of patients such as 0.1.")
    unknown = [arm for arm in settings.arms if arm not in ARMS]
    if unknown or not settings.arms:
        bad("ARMS", settings.arms, f"Use one or both of {', '.join(ARMS)}.")
    if settings.lr <= 0 or settings.n_boot < 10 or settings.workers < 0:
        bad("learning_rate / n_boot / workers", (settings.lr, settings.n_boot, settings.workers),
            "Use a positive learning rate, n_boot >= 10 and workers >= 0.")
    return settings


def seed_list(seeds) -> List[int]:
    """SEEDS may be a count (3 -> [0, 1, 2]) or an explicit list of seeds."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return list(range(int(seeds)))
    return [int(s) for s in seeds]


def run_name(arm: str, seed: int, synth_ratio: float) -> str:
    return f"baseline-seed{seed}" if arm == "baseline" else f"augmented-x{synth_ratio:g}-seed{seed}"


def experiment_dir(workspace: Workspace, body_part: str, settings: EvalSettings) -> Path:
    return workspace.evaluation(body_part, settings.experiment_name).path


# --- tables and splits ----------------------------------------------------------------------------

def load_tables(workspace: Workspace, body_part: str, need_synthetic: bool, check_files: bool = True):
    """(real training rows, MURA valid rows, synthetic rows) of one body part, checked for leaks.

    check_files: also check that every listed image exists (one stat per image: slow-ish on Google Drive).
    """
    train = _read_table(workspace, body_part, "train", "python -m mura_aug prepare (notebook 01)")
    valid = _read_table(workspace, body_part, "valid", "python -m mura_aug prepare (notebook 01)")
    assert_no_synthetic(valid, f"{body_part}_valid.csv (evaluation)")
    train = train[_is_real(train)].reset_index(drop=True)
    synthetic = train.iloc[0:0]
    if need_synthetic:
        augmented = _read_table(workspace, body_part, "train_augmented",
                                "python -m mura_aug synth (notebook 05), or evaluate the baseline arm only")
        synthetic = augmented[~_is_real(augmented)].reset_index(drop=True)
    check_no_patient_overlap(train, valid, "training", "evaluation (MURA valid)")
    if check_files:
        for frame, what in ((train, "training"), (valid, "valid"), (synthetic, "synthetic")):
            _check_images_exist(workspace, frame, what)
    if len(train) == 0 or train["label"].nunique() < 2:
        raise UserError(f"The training table of {body_part} needs images of both classes; it has "
                        f"{len(train)} real images with labels {sorted(train['label'].unique().tolist())}.",
                        "Rerun prepare on the full MURA folder (or more demo patients).")
    if valid["label"].nunique() < 2:
        raise UserError(f"{body_part}_valid.csv holds only one class, so kappa and AUC are undefined.",
                        "Rerun prepare on the full MURA folder (or more demo patients).")
    # Rows in a fixed order, so every run's predictions line up row by row.
    return (train.sort_values("path").reset_index(drop=True), valid.sort_values("path").reset_index(drop=True),
            synthetic.sort_values("path").reset_index(drop=True))


def _read_table(workspace: Workspace, body_part: str, name: str, producer: str):
    import pandas as pd

    path = workspace.tables / f"{body_part}_{name}.csv"
    if not path.is_file():
        raise UserError(f"The table {path} does not exist.", f"Create it with {producer}.")
    try:
        frame = pd.read_csv(path, dtype={"patient": str, "study_id": str, "path": str})
    except (ValueError, OSError) as exc:
        raise UserError(f"Cannot read the table {path}: {exc}.", f"Recreate it with {producer}.") from exc
    if "source" not in frame.columns and name != "train_augmented":
        frame["source"] = "real"  # stage 01 tables list MURA images only
    missing = [column for column in (*TABLE_COLUMNS, "source") if column not in frame.columns]
    if missing:
        raise UserError(f"The table {path} lacks the column(s) {', '.join(missing)}.",
                        f"Recreate it with {producer} (this version of mura_aug).")
    if not frame["label"].isin([0, 1]).all():
        raise UserError(f"The table {path} has labels other than 0 and 1.", f"Recreate it with {producer}.")
    frame["label"] = frame["label"].astype(int)
    return frame


def _is_real(frame):
    return (frame["source"].astype(str) == "real") & (frame["patient"].astype(str) != "synthetic")


def assert_no_synthetic(frame, where: str) -> None:
    """Synthetic images must never be validated or evaluated on: that would score the GAN, not the classifier."""
    fakes = frame[~_is_real(frame)]
    if len(fakes):
        raise UserError(f"{len(fakes)} synthetic image(s) reached {where}, e.g. {fakes['path'].iloc[0]}; "
                        "synthetic images may only be used for training.",
                        "Rebuild the tables with `python -m mura_aug prepare`; evaluation tables hold real "
                        "images only.")


def check_no_patient_overlap(training, evaluation, training_name: str, evaluation_name: str) -> None:
    """A patient seen in training and in evaluation inflates every metric: refuse to go on."""
    shared = sorted(set(training.loc[_is_real(training), "patient"].astype(str))
                    & set(evaluation["patient"].astype(str)))
    if shared:
        raise UserError(f"{len(shared)} patient(s) appear in both {training_name} and {evaluation_name}, "
                        f"e.g. {shared[0]}: the evaluation would reward memorising patients.",
                        "Rebuild the tables with `python -m mura_aug prepare` (it keeps MURA's patient-level "
                        "train/valid split); never move images between the splits by hand.")


def _check_images_exist(workspace: Workspace, frame, what: str) -> None:
    missing = [p for p in frame["path"] if not (workspace.root / p).is_file()]
    if missing:
        producer = "synth (notebook 05)" if what == "synthetic" else "prepare (notebook 01)"
        raise UserError(f"{len(missing)} {what} image(s) listed in the tables are missing under {workspace.root}, "
                        f"e.g. {missing[0]}.", f"Rerun `python -m mura_aug {producer.split()[0]}`; it restores "
                        f"missing files ({producer}).")


def split_patients(train, val_fraction: float, seed: int):
    """(fit rows, internal validation rows): whole patients held out, stratified by 'has an abnormal study'."""
    rng = np.random.default_rng(10_000 + seed)
    per_patient = train.groupby("patient")["label"].max()
    held_out = []
    for label in (0, 1):
        patients = np.array(sorted(per_patient[per_patient == label].index))
        if len(patients) < 2:
            continue
        count = min(len(patients) - 1, max(1, int(round(val_fraction * len(patients)))))
        held_out.extend(rng.choice(patients, size=count, replace=False).tolist())
    in_val = train["patient"].isin(held_out)
    fit, val = train[~in_val].reset_index(drop=True), train[in_val].reset_index(drop=True)
    if val.empty or fit["label"].nunique() < 2:
        raise UserError(f"Too few training patients ({len(per_patient)}) to hold some out for early stopping.",
                        "Use more patients (the full MURA body part, or make-demo-data --patients 24 or more).")
    return fit, val


def choose_synthetic(synthetic, n_real: int, synth_ratio: float, seed: int):
    """SYNTH_RATIO synthetic rows per real training row, drawn at random; fewer when fewer exist."""
    wanted = int(round(synth_ratio * n_real))
    if wanted <= 0 or synthetic.empty:
        return synthetic.iloc[0:0], wanted
    rng = np.random.default_rng(20_000 + seed)
    picked = rng.choice(len(synthetic), size=min(wanted, len(synthetic)), replace=False)
    return synthetic.iloc[np.sort(picked)].reset_index(drop=True), wanted


# --- images and models ----------------------------------------------------------------------------

def open_rgb(path: Path):
    """An image as a PIL RGB image; corrupt or unreadable files raise UserError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        from mura_aug.imaging import open_image  # robust loader of stage 01, when present
    except ImportError:
        open_image = None
    try:
        if open_image is not None:
            image = open_image(path)
        else:
            with Image.open(path) as handle:
                handle.load()
                image = handle.copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"Cannot read the image {path}: {exc}.",
                        "Rerun `python -m mura_aug prepare` to recopy it, or remove its row from the table.") from exc
    return image.convert("RGB")


class ImageCache:
    """Decoded images resized to the input size, loaded once and shared by every run of an experiment.

    Grey images (nearly all X-rays, and RGB fakes whose channels are equal) are kept with one channel, a
    third of the memory; they become RGB only when a batch is built.
    """

    def __init__(self, root: Path, image_size: int, budget_bytes: int = IMAGE_CACHE_BUDGET_BYTES):
        self.root, self.image_size, self.budget_bytes = Path(root), int(image_size), int(budget_bytes)
        self.images: Dict[str, object] = {}
        self.bytes = 0

    def preload(self, paths: Sequence[str], progress: bool = True) -> bool:
        """Load `paths` into memory when they fit the budget (counted as grey); otherwise load them per batch."""
        from tqdm.auto import tqdm

        todo = [p for p in dict.fromkeys(paths) if p not in self.images]
        if self.bytes + len(todo) * self.image_size ** 2 > self.budget_bytes:
            return False
        for path in tqdm(todo, desc="loading images", unit="img", disable=not progress, leave=False):
            image = self._load(path)
            self.images[path] = image
            self.bytes += len(image.getbands()) * self.image_size ** 2
        return True

    def get(self, path: str):
        image = self.images.get(path)
        return image if image is not None else self._load(path)

    def _load(self, path: str):
        from PIL import Image

        image = open_rgb(self.root / path).resize((self.image_size, self.image_size), Image.BILINEAR)
        pixels = np.asarray(image)
        if (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all():
            return Image.fromarray(np.ascontiguousarray(pixels[..., 0]), mode="L")
        return image


class XrayImages:
    """Map-style dataset of (normalised 3 x S x S tensor, float label), augmented when `train`.

    A plain module-level class (not a closure) so DataLoader workers can receive it under the 'spawn'
    start method of macOS and Windows too.
    """

    def __init__(self, cache: ImageCache, frame, train: bool, rotation_deg: float):
        from torchvision import transforms

        steps = []
        if train:
            steps += [transforms.RandomHorizontalFlip(), transforms.RandomRotation(rotation_deg)]
        steps += [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        self.pipeline = transforms.Compose(steps)
        self.cache = cache
        self.paths = list(frame["path"])
        self.labels = frame["label"].to_numpy(dtype=np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import torch

        return self.pipeline(self.cache.get(self.paths[index]).convert("RGB")), torch.tensor(self.labels[index])


def make_dataset(cache: ImageCache, frame, train: bool, rotation_deg: float) -> XrayImages:
    return XrayImages(cache, frame, train, rotation_deg)


def build_model(arch: str, pretrained: bool, progress: bool = True):
    """The classifier with a single-logit head. ImageNet weights are downloaded once into the torch hub cache."""
    import torch
    from torchvision import models

    if arch == "tiny":
        if pretrained:
            raise UserError("ARCH='tiny' has no pretrained weights.", "Pass PRETRAINED=False / --no-pretrained.")
        return TinyCNN()
    constructor, weights_enum, head = {
        "densenet169": (models.densenet169, models.DenseNet169_Weights, "classifier"),
        "resnet50": (models.resnet50, models.ResNet50_Weights, "fc"),
    }[arch]
    weights = weights_enum.IMAGENET1K_V1 if pretrained else None
    try:
        model = constructor(weights=weights, progress=progress)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError; a truncated file a RuntimeError
        raise UserError(f"Could not load the ImageNet weights of {arch} ({type(exc).__name__}: {exc}).",
                        f"Connect to the internet once (Colab downloads them into {torch.hub.get_dir()}/checkpoints"
                        "), or pass pretrained=False / --no-pretrained to train from scratch.") from exc
    old_head = getattr(model, head)
    setattr(model, head, torch.nn.Linear(old_head.in_features, 1))
    return model


def _tiny_cnn_class():
    import torch
    from torch import nn

    class _TinyCNN(nn.Module):
        """Four strided conv blocks and a linear head on average+max pooled features: fast on a laptop CPU."""

        def __init__(self, width: int = 16):
            super().__init__()
            channels = [3, width, 2 * width, 4 * width, 4 * width]
            layers = []
            for c_in, c_out in zip(channels[:-1], channels[1:]):
                layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                           nn.ReLU(inplace=True)]
            self.features = nn.Sequential(*layers)
            # Max pooling lets a small bright object (metal, a fracture line) decide, whatever its size.
            self.head = nn.Linear(2 * channels[-1], 1)

        def forward(self, images):
            features = self.features(images)
            pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
            return self.head(pooled)

    return _TinyCNN


def TinyCNN(width: int = 16):
    """A small CNN (about 60 k parameters) for demos on a CPU; no pretrained weights."""
    return _tiny_cnn_class()(width)


# --- one run --------------------------------------------------------------------------------------

def _grad_scaler(enabled: bool):
    import torch

    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)  # torch < 2.3


def _loader(dataset, batch_size, shuffle, workers, seed, device):
    """Training loaders (shuffle=True) drop a last partial batch: batch norm cannot train on a single image."""
    import torch

    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                                       generator=generator, pin_memory=device.type == "cuda",
                                       drop_last=shuffle and len(dataset) > batch_size)


def predict(model, dataset, device, batch_size: int, workers: int, progress: bool = False,
            description: str = "predicting") -> np.ndarray:
    """Probabilities (sigmoid of the logit), one per image, in the dataset's order."""
    import torch
    from tqdm.auto import tqdm

    model.eval()
    outputs = []
    use_amp = device.type == "cuda"
    with torch.no_grad():
        batches = _loader(dataset, batch_size, False, workers, 0, device)
        for images, _ in tqdm(batches, desc=description, unit="batch", leave=False, disable=not progress):
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(images.to(device, non_blocking=True))
            outputs.append(torch.sigmoid(logits.float()).squeeze(1).cpu().numpy())
    return np.concatenate(outputs) if outputs else np.zeros(0, dtype=np.float32)


def _balanced_loss(labels: np.ndarray, device):
    """BCE whose positive term is weighted by negatives/positives, so both classes count equally."""
    import torch

    positives = float(labels.sum())
    negatives = float(len(labels) - positives)
    if positives == 0 or negatives == 0:
        raise UserError("A training or validation split holds only one class.",
                        "Use more patients (the full MURA body part).")
    return torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([negatives / positives], device=device))


def train_run(run_dir: Path, fit, val, evaluation, settings: EvalSettings, seed: int, cache: ImageCache,
              device, progress: bool = True, synthetic_requested: int = 0) -> Dict[str, object]:
    """Train one (arm, seed), continuing from its checkpoint if there is one; write predictions and result.json.

    synthetic_requested: how many synthetic rows SYNTH_RATIO asked for (fit holds fewer when fewer exist).
    """
    import torch
    from tqdm.auto import tqdm

    assert_no_synthetic(val, f"the internal validation split of {run_dir.name}")
    assert_no_synthetic(evaluation, f"the evaluation of {run_dir.name}")
    check_no_patient_overlap(fit, val, "training", "internal validation")
    check_no_patient_overlap(fit, evaluation, "training", "evaluation (MURA valid)")
    started = time.time()
    torch.manual_seed(seed)
    model = build_model(settings.arch, settings.pretrained, progress).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.1,
                                                           patience=settings.lr_patience)
    use_amp = device.type == "cuda"
    scaler = _grad_scaler(use_amp)
    train_loss_fn = _balanced_loss(fit["label"].to_numpy(), device)
    val_loss_fn = _balanced_loss(val["label"].to_numpy(), device)
    train_set = make_dataset(cache, fit, True, settings.rotation_deg)
    val_set = make_dataset(cache, val, False, settings.rotation_deg)

    checkpoint_path = EvaluationRun(run_dir).checkpoint
    state = {"epoch": 0, "history": [], "best_loss": math.inf, "best_epoch": 0, "bad_epochs": 0,
             "best_model": None, "stopped": None, "train_seconds": 0.0}
    if checkpoint_path.is_file():
        saved = _load_checkpoint(checkpoint_path, settings)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if saved["scaler"] and scaler.is_enabled():  # empty when saved on a CPU run, where AMP is off
            scaler.load_state_dict(saved["scaler"])
        state = saved["state"]
        state["stopped"] = None if state["stopped"] == "epochs" else state["stopped"]

    epochs = tqdm(range(state["epoch"], settings.epochs), desc=run_dir.name, unit="epoch",
                  initial=state["epoch"], total=settings.epochs, disable=not progress)
    for epoch in epochs:
        if state["stopped"] == "early":
            break
        epoch_started = time.time()
        # Seeding per epoch makes a resumed run draw the same batches and augmentations as an uncut one.
        torch.manual_seed(seed * 1000 + epoch)
        model.train()
        total_loss, seen = 0.0, 0
        batches = _loader(train_set, settings.batch_size, True, settings.workers, seed * 1000 + epoch, device)
        for images, labels in tqdm(batches, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                                   disable=not progress):
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = model(images).squeeze(1)
            loss = train_loss_fn(logits.float(), labels)
            if not torch.isfinite(loss):
                raise UserError(f"The training loss of {run_dir.name} became {loss.item()} at epoch {epoch + 1}.",
                                f"Move {run_dir} away (its last good epoch stays in checkpoint.pt) and rerun with "
                                "a lower learning rate (e.g. --lr 1e-5).")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += loss.item() * len(labels)
            seen += len(labels)
        val_prob = predict(model, val_set, device, settings.batch_size, settings.workers)
        val_loss = _probability_loss(val_loss_fn, val_prob, val["label"].to_numpy(), device)
        val_study = study_metrics.aggregate_studies(val.assign(probability=val_prob))
        val_metrics = study_metrics.binary_metrics(val_study["label"], val_study["probability"], 0.5)
        scheduler.step(val_loss)
        state["history"].append({
            "epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), "val_loss": val_loss,
            "val_study_auc": val_metrics["auc"], "val_study_kappa": val_metrics["kappa"],
            "learning_rate": optimizer.param_groups[0]["lr"], "seconds": time.time() - epoch_started})
        if val_loss < state["best_loss"]:
            state.update(best_loss=val_loss, best_epoch=epoch + 1, bad_epochs=0,
                         best_model={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch + 1
        state["train_seconds"] += time.time() - epoch_started
        if state["bad_epochs"] >= settings.early_stop_patience:
            state["stopped"] = "early"
        elif state["epoch"] >= settings.epochs:
            state["stopped"] = "epochs"
        epochs.set_postfix(val_loss=f"{val_loss:.3f}", val_auc=f"{val_metrics['auc']:.3f}")
        _save_checkpoint(checkpoint_path, model, optimizer, scheduler, scaler, state, settings)
    epochs.close()

    model.load_state_dict(state["best_model"])
    eval_set = make_dataset(cache, evaluation, False, settings.rotation_deg)
    eval_prob = predict(model, eval_set, device, settings.batch_size, settings.workers, progress,
                        "scoring MURA valid")
    val_prob = predict(model, val_set, device, settings.batch_size, settings.workers)
    val_study = study_metrics.aggregate_studies(val.assign(probability=val_prob))
    thresholds = {"study": study_metrics.choose_threshold(val_study["label"], val_study["probability"]),
                  "image": study_metrics.choose_threshold(val["label"], val_prob)}
    predictions = _concat(_prediction_frame(evaluation, eval_prob, "evaluation"),
                          _prediction_frame(val, val_prob, "internal_validation"))
    atomic_write_csv(EvaluationRun(run_dir).predictions, predictions)
    result = {
        "run": run_dir.name, "seed": seed, "settings": settings.fingerprint(),
        "epochs_run": state["epoch"], "best_epoch": state["best_epoch"], "stopped": state["stopped"],
        "history": state["history"], "thresholds": thresholds,
        "n_train_real": int((_is_real(fit)).sum()), "n_train_synthetic": int((~_is_real(fit)).sum()),
        "n_synthetic_requested": int(synthetic_requested),
        "n_train_positive": int(fit["label"].sum()), "n_internal_val": len(val), "n_evaluation": len(evaluation),
        "internal_val_patients": sorted(val["patient"].astype(str).unique().tolist()),
        "train_seconds": state["train_seconds"], "seconds_this_session": time.time() - started,
        "device": str(device),
    }
    atomic_write_json(EvaluationRun(run_dir).result, result)  # last: marks the run as finished
    return result


def _concat(first, second):
    import pandas as pd

    return pd.concat([first, second], ignore_index=True)


def _prediction_frame(frame, probabilities, part: str):
    import pandas as pd

    return pd.DataFrame({"part": part, "path": frame["path"].to_numpy(), "patient": frame["patient"].to_numpy(),
                         "study_id": frame["study_id"].to_numpy(), "label": frame["label"].to_numpy(),
                         "probability": np.asarray(probabilities, dtype=float)})


def _probability_loss(loss_fn, probabilities, labels, device) -> float:
    import torch

    clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    logits = torch.tensor(np.log(clipped / (1 - clipped)), dtype=torch.float32, device=device)
    return float(loss_fn(logits, torch.tensor(labels, dtype=torch.float32, device=device)).item())


def _save_checkpoint(path: Path, model, optimizer, scheduler, scaler, state, settings: EvalSettings) -> None:
    import torch

    payload = {"format": CHECKPOINT_FORMAT, "version": 1, "settings": settings.fingerprint(),
               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path, settings: EvalSettings) -> dict:
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated by a disconnect before atomic writes, or not ours
        raise UserError(f"The checkpoint {path} cannot be read ({type(exc).__name__}).",
                        "Move that run folder away (it is never deleted for you) and rerun to train it again.") \
            from exc
    _check_same_settings(path.parent, saved.get("settings", {}), settings)
    return saved


def _check_same_settings(run_dir: Path, stored: dict, settings: EvalSettings) -> None:
    wanted = settings.fingerprint()
    changed = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
    if changed:
        listing = ", ".join(f"{k}: stored {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise UserError(f"The run {run_dir} was made with other settings ({listing}).",
                        "Rerun with the stored settings to continue it, or move that folder away to start over "
                        "(results are never deleted for you).")


# --- the experiment -------------------------------------------------------------------------------

def evaluate(workspace=None, body_part: str = "XR_SHOULDER", settings: Optional[EvalSettings] = None,
             progress: bool = True, **overrides) -> Dict[str, object]:
    """Train every (arm, seed) not finished yet, then write and return the summary with intervals.

    Keyword overrides set EvalSettings fields, e.g. evaluate(ws, arch="tiny", pretrained=False, epochs=3).
    """
    settings = replace(settings) if settings else EvalSettings()  # a copy: the caller's object stays as it was
    for key, value in overrides.items():
        if not hasattr(settings, key):
            raise UserError(f"Unknown parameter {key!r} for evaluate.",
                            f"Use one of {', '.join(EvalSettings.__dataclass_fields__)}.")
        setattr(settings, key, value)
    settings.seeds = seed_list(settings.seeds)
    settings.arms = tuple(settings.arms)
    check_settings(settings)
    workspace = resolve_workspace(workspace, create=False)  # a mistyped path must not grow an empty workspace
    if not workspace.tables.is_dir():
        raise UserError(f"{workspace.root} holds no prepared tables ({workspace.tables} is missing).",
                        "Pass the workspace that notebook 01 / `python -m mura_aug prepare` wrote to.")
    device = resolve_device(settings.device)
    train, valid, synthetic = load_tables(workspace, body_part, need_synthetic="augmented" in settings.arms,
                                          check_files=False)
    out_dir = experiment_dir(workspace, body_part, settings)
    pending = [(seed, arm, EvaluationFolder(out_dir).run(run_name(arm, seed, settings.synth_ratio)).path)
               for seed in settings.seeds for arm in settings.arms]
    pending = [(seed, arm, run_dir) for seed, arm, run_dir in pending if not _is_finished(run_dir, settings)]
    if pending:
        if "augmented" in settings.arms and synthetic.empty and settings.synth_ratio > 0:
            raise UserError(f"No synthetic images are listed in {body_part}_train_augmented.csv.",
                            "Generate some with `python -m mura_aug synth` (notebook 05), or evaluate "
                            "ARMS=('baseline',).")
        for frame, what in ((train, "training"), (valid, "valid"), (synthetic, "synthetic")):
            _check_images_exist(workspace, frame, what)
        cache = ImageCache(workspace.root, settings.image_size)
        cache.preload(list(train["path"]) + list(valid["path"]), progress)
    for seed, arm, run_dir in pending:
        fit, val = split_patients(train, settings.val_fraction, seed)
        rows, wanted = fit, 0
        if arm == "augmented":
            extra, wanted = choose_synthetic(synthetic, len(fit), settings.synth_ratio, seed)
            cache.preload(list(extra["path"]), progress)
            rows = _concat(fit, extra)
        run_dir.mkdir(parents=True, exist_ok=True)
        with reuse_freed_cpu_memory(device):  # DenseNet-169 on a CPU: ~7-10 % faster per step
            train_run(run_dir, rows, val, valid, settings, seed, cache, device, progress, wanted)
    summary = summarise_experiment(out_dir, settings, body_part)
    return summary


def _is_finished(run_dir: Path, settings: EvalSettings) -> bool:
    import json

    result_path = EvaluationRun(run_dir).result
    if not result_path.is_file():
        return False
    try:
        result = json.loads(result_path.read_text())
    except ValueError:
        return False  # written atomically, so only a hand edit gets here: train it again
    _check_same_settings(run_dir, result.get("settings", {}), settings)
    return result.get("stopped") == "early" or int(result.get("epochs_run", 0)) >= settings.epochs


def summarise_experiment(out_dir: Path, settings: EvalSettings, body_part: str) -> Dict[str, object]:
    """Metrics of every finished run with bootstrap intervals, the arms side by side, and the verdict."""
    import json

    import pandas as pd

    runs: Dict[str, List[dict]] = {arm: [] for arm in settings.arms}
    for arm in settings.arms:
        for seed in settings.seeds:
            run_files = EvaluationFolder(out_dir).run(run_name(arm, seed, settings.synth_ratio))
            result = json.loads(run_files.result.read_text())
            predictions = pd.read_csv(run_files.predictions, dtype={"study_id": str, "patient": str})
            result["predictions"] = predictions[predictions["part"] == "evaluation"].reset_index(drop=True)
            result["arm"] = arm
            runs[arm].append(result)
    reference = next(iter(runs.values()))[0]["predictions"]
    studies = study_metrics.aggregate_studies(reference)
    study_index = studies.reset_index().set_index("study_id").loc[reference["study_id"], "index"].to_numpy()
    weights = study_metrics.bootstrap_weights(len(studies), settings.n_boot, seed=0)  # shared: pairs the arms

    samples: Dict[Tuple[str, str, str], List[Dict[str, np.ndarray]]] = {}
    rows = []
    for arm, results in runs.items():
        for result in results:
            predictions = result["predictions"]
            if not predictions["path"].equals(reference["path"]):
                raise UserError(f"The predictions of {result['run']} cover other images than the other runs.",
                                f"Move {EvaluationFolder(out_dir).run(result['run']).path} away and rerun to score it again.")
            per_level = {"study": study_metrics.aggregate_studies(predictions), "image": predictions}
            result["metrics"] = {}
            for level, frame in per_level.items():
                level_weights = weights if level == "study" else study_metrics.image_weights(weights, study_index)
                auc_samples = None  # AUC does not depend on the threshold: computed once per level
                for name in THRESHOLDS:
                    threshold = 0.5 if name == "0.5" else result["thresholds"][level]
                    level_samples = study_metrics.weighted_metric_samples(
                        frame["label"], frame["probability"], threshold, level_weights, with_auc=auc_samples is None)
                    if auc_samples is None:
                        auc_samples = level_samples["auc"]
                    level_samples["auc"] = auc_samples
                    metrics = study_metrics.binary_metrics(frame["label"], frame["probability"], threshold)
                    metrics.update(study_metrics.intervals_of(level_samples))
                    result["metrics"][f"{level}@{name}"] = metrics
                    if level == "study":
                        samples.setdefault((arm, level, name), []).append(level_samples)
                    rows.append({"arm": arm, "seed": result["seed"], "level": level, "threshold_rule": name,
                                 **{k: v for k, v in metrics.items() if k != "confusion"},
                                 "confusion": json.dumps(metrics["confusion"])})
    arms_table, comparison = _compare_arms(runs, samples, settings)
    summary = {
        "body_part": body_part, "experiment": settings.experiment_name, "settings": asdict(settings),
        "n_evaluation_images": len(reference), "n_evaluation_studies": len(studies),
        "arms": arms_table, "comparison": comparison,
        "runs": [{k: v for k, v in r.items() if k != "predictions"} for rs in runs.values() for r in rs],
        "verdict": [c["verdict"] for c in comparison],
    }
    experiment = EvaluationFolder(out_dir)
    atomic_write_json(experiment.summary, summary)
    atomic_write_csv(experiment.runs_table, pd.DataFrame(rows))
    atomic_write_csv(experiment.comparison, comparison_frame(summary))
    # The latest experiment's files also one level up, where the series runner and people look first.
    latest = EvaluationFolder(out_dir.parent)  # results/evaluation/<BODY>/: the latest experiment's copy
    atomic_write_json(latest.summary, summary)
    atomic_write_csv(latest.comparison, comparison_frame(summary))
    return summary


def _compare_arms(runs, samples, settings: EvalSettings):
    """Per arm: metrics averaged over seeds, with intervals from resampling studies *and* seeds; then
    augmented minus baseline on the same resamples (paired by study and by seed)."""
    draws = study_metrics.seed_draws(len(settings.seeds), settings.n_boot)

    def mean_samples_of(arm, name, metric):
        return study_metrics.mean_over_seeds([s[metric] for s in samples[(arm, "study", name)]], draws)

    arms_table = {}
    for arm, results in runs.items():
        arms_table[arm] = {}
        for name in THRESHOLDS:
            key = f"study@{name}"
            entry = {}
            mean_samples = {m: mean_samples_of(arm, name, m) for m in study_metrics.METRICS}
            for metric in study_metrics.METRICS:
                values = [r["metrics"][key][metric] for r in results]
                entry[metric] = {**study_metrics.summarise(values), "per_seed": values,
                                 "ci": study_metrics.percentile_interval(mean_samples[metric])}
            entry["confusion"] = np.sum([r["metrics"][key]["confusion"] for r in results], axis=0).tolist()
            arms_table[arm][key] = entry
    comparison = []
    if set(runs) == set(ARMS):
        for name in THRESHOLDS:
            key = f"study@{name}"
            for metric in ("kappa", "auc"):
                if name == "tuned" and metric == "auc":
                    continue  # AUC does not depend on the threshold
                base, aug = arms_table["baseline"][key][metric], arms_table["augmented"][key][metric]
                difference = mean_samples_of("augmented", name, metric) - mean_samples_of("baseline", name, metric)
                difference_ci = study_metrics.percentile_interval(difference)
                paired = study_metrics.seed_paired_difference(base["per_seed"], aug["per_seed"])
                label = f"study-level {metric} (threshold {name})" if metric != "auc" else "study-level AUC"
                comparison.append({
                    "metric": metric, "threshold_rule": name, "baseline": base["mean"], "augmented": aug["mean"],
                    "baseline_ci": base["ci"], "augmented_ci": aug["ci"], "difference": aug["mean"] - base["mean"],
                    "difference_ci": difference_ci, "seed_paired": paired,
                    "within_noise": study_metrics.intervals_overlap(base["ci"], aug["ci"]),
                    "verdict": study_metrics.verdict(label, base["mean"], base["ci"], aug["mean"], aug["ci"],
                                                    difference_ci)})
    return arms_table, comparison


def comparison_frame(summary: Dict[str, object]):
    """The table a person reads: one row per arm and study-level metric, value (mean over seeds) and 95% CI."""
    import pandas as pd

    rows = []
    for arm, table in summary["arms"].items():
        for key, entry in table.items():
            for metric in study_metrics.METRICS:
                value = entry[metric]
                rows.append({"arm": arm, "level_threshold": key, "metric": metric, "mean_over_seeds": value["mean"],
                             "std_over_seeds": value["std"], "ci_low": value["ci"][0], "ci_high": value["ci"][1],
                             "seeds": len(value["per_seed"])})
    return pd.DataFrame(rows)


def load_summary(workspace=None, body_part: str = "XR_SHOULDER", settings: Optional[EvalSettings] = None,
                 **overrides) -> Dict[str, object]:
    """The summary.json of an experiment (for plotting without retraining)."""
    import json

    settings = settings or EvalSettings(**overrides)
    path = resolve_workspace(workspace, create=False).evaluation(body_part, settings.experiment_name).summary
    if not path.is_file():
        raise UserError(f"No evaluation results at {path}.", "Run `python -m mura_aug evaluate` (notebook 06) first.")
    return json.loads(path.read_text())


# --- CLI ------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EvalSettings()
    parser.add_argument("--workspace", default=None, help="workspace folder (default: Drive in Colab, ./workspace)")
    parser.add_argument("--body-part", default="XR_SHOULDER", help="MURA body part (default XR_SHOULDER)")
    parser.add_argument("--arch", default=defaults.arch, choices=ARCHS, help="classifier (default densenet169)")
    parser.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                        help="train from scratch instead of from ImageNet weights (needed offline, and for tiny)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help="input size in px (default 224; 320 as in the MURA paper; 64 for CPU demos)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="maximum epochs (default 12)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    parser.add_argument("--synth-ratio", type=float, default=defaults.synth_ratio,
                        help="synthetic images per real training image in the augmented arm (default 1.0)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step (default 16)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms to run (default both)")
    parser.add_argument("--lr", type=float, default=None,
                        help="Adam learning rate (default 1e-4; 1e-3 for --arch tiny)")
    parser.add_argument("--patience", type=int, default=defaults.early_stop_patience,
                        help="early stopping patience in epochs (default 3)")
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                        help="share of training patients held out for early stopping (default 0.1)")
    parser.add_argument("--n-boot", type=int, default=defaults.n_boot, help="bootstrap resamples (default 1000)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="data loader processes (default 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")


def run(args: argparse.Namespace) -> int:
    settings = EvalSettings(arch=args.arch, pretrained=args.pretrained and args.arch != "tiny",
                            image_size=args.image_size, epochs=args.epochs, seeds=seed_list(args.seeds),
                            synth_ratio=args.synth_ratio, batch_size=args.batch_size, arms=tuple(args.arms),
                            learning_rate=args.lr, early_stop_patience=args.patience, val_fraction=args.val_fraction,
                            n_boot=args.n_boot, workers=args.workers, device=args.device)
    summary = evaluate(args.workspace, args.body_part, settings, progress=True)
    print(comparison_frame(summary).round(3).to_string(index=False))
    for sentence in summary["verdict"]:
        print(sentence)
    print(f"results: {experiment_dir(resolve_workspace(args.workspace, create=False), args.body_part, settings)}")
    return 0
