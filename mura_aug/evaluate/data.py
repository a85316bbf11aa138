"""Stage 06's data: the tables it reads, the patient-level split, the image cache and the training dataset.

Reads (never writes) data/tables/<BODY>_{train,valid}.csv of stage 01, <BODY>_train_augmented.csv of stage
05, and the images they list. Every check that keeps the evaluation honest lives here: synthetic rows never
reach validation or evaluation, no patient is on both sides of a split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence

import numpy as np

from mura_aug.errors import UserError
from mura_aug.imaging import open_image  # stage 01's loader: full decode, EXIF rotation, 16-bit, alpha
from mura_aug.workspace import AUGMENTED_TABLE, Workspace

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics the ImageNet weights were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)
TABLE_COLUMNS = ("path", "class", "label", "patient", "study_id")  # plus `source` (absent = every row real)
IMAGE_CACHE_BUDGET_BYTES = 1_500_000_000  # decoded, resized images kept in memory when they fit in this
PREPARE = "python -m mura_aug prepare (notebook 01)"  # the producer of the real tables, for the messages


# --- tables and splits ----------------------------------------------------------------------------

def load_tables(workspace: Workspace, body_part: str, need_synthetic: bool, check_files: bool = True):
    """(real training rows, MURA valid rows, synthetic rows) of one body part, checked for leaks.

    check_files: also check that every listed image exists (one stat per image: slow-ish on Google Drive).
    """
    train = _read_table(workspace, body_part, "train", PREPARE)
    valid = _read_table(workspace, body_part, "valid", PREPARE)
    assert_no_synthetic(valid, f"{body_part}_valid.csv (evaluation)")
    train = train[is_real(train)].reset_index(drop=True)
    synthetic = train.iloc[0:0]
    if need_synthetic:
        from mura_aug.synth.manifest import require_filters_finished

        require_filters_finished(workspace, body_part)  # never a table whose stage-05 filters did not finish
        augmented = _read_table(workspace, body_part, AUGMENTED_TABLE,
                                "python -m mura_aug synth (notebook 05), or evaluate the baseline arm only")
        synthetic = augmented[~is_real(augmented)].reset_index(drop=True)
    check_no_patient_overlap(train, valid, "training", "evaluation (MURA valid)")
    if check_files:
        for frame, what in ((train, "training"), (valid, "valid"), (synthetic, "synthetic")):
            check_images_exist(workspace, frame, what)
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

    path = workspace.table(body_part, name)
    if not path.is_file():
        raise UserError(f"The table {path} does not exist.", f"Create it with {producer}.")
    try:
        frame = pd.read_csv(path, dtype={"patient": str, "study_id": str, "path": str})
    except (ValueError, OSError) as exc:
        raise UserError(f"Cannot read the table {path}: {exc}.", f"Recreate it with {producer}.") from exc
    if "source" not in frame.columns and name != AUGMENTED_TABLE:
        frame["source"] = "real"  # stage 01 tables list MURA images only
    missing = [column for column in (*TABLE_COLUMNS, "source") if column not in frame.columns]
    if missing:
        raise UserError(f"The table {path} lacks the column(s) {', '.join(missing)}.",
                        f"Recreate it with {producer} (this version of mura_aug).")
    if not frame["label"].isin([0, 1]).all():
        raise UserError(f"The table {path} has labels other than 0 and 1.", f"Recreate it with {producer}.")
    frame["label"] = frame["label"].astype(int)
    return frame


def is_real(frame):
    return (frame["source"].astype(str) == "real") & (frame["patient"].astype(str) != "synthetic")


def assert_no_synthetic(frame, where: str) -> None:
    """Synthetic images must never be validated or evaluated on: that would score the GAN, not the classifier."""
    fakes = frame[~is_real(frame)]
    if len(fakes):
        raise UserError(f"{len(fakes)} synthetic image(s) reached {where}, e.g. {fakes['path'].iloc[0]}; "
                        "synthetic images may only be used for training.",
                        "Rebuild the tables with `python -m mura_aug prepare`; evaluation tables hold real "
                        "images only.")


def check_no_patient_overlap(training, evaluation, training_name: str, evaluation_name: str) -> None:
    """A patient seen in training and in evaluation inflates every metric: refuse to go on."""
    shared = sorted(set(training.loc[is_real(training), "patient"].astype(str))
                    & set(evaluation["patient"].astype(str)))
    if shared:
        raise UserError(f"{len(shared)} patient(s) appear in both {training_name} and {evaluation_name}, "
                        f"e.g. {shared[0]}: the evaluation would reward memorising patients.",
                        "Rebuild the tables with `python -m mura_aug prepare` (it keeps MURA's patient-level "
                        "train/valid split); never move images between the splits by hand.")


def check_images_exist(workspace: Workspace, frame, what: str) -> None:
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


def concat(first, second):
    """The rows of both frames, numbered afresh."""
    import pandas as pd

    return pd.concat([first, second], ignore_index=True)


# --- images ---------------------------------------------------------------------------------------

def open_rgb(path: Path):
    """An image as a PIL RGB image; corrupt or unreadable files raise UserError naming the file."""
    try:
        image = open_image(path)
    except (OSError, ValueError) as exc:  # ImageProblem is a ValueError
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
