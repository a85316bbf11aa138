"""How many patients, studies and images real MURA-v1.1 has per body part, and a study layout with those counts.

Used by `make-demo-data --like-mura` (prepare/demo_data.py) to draw a tree of the real data's size, so stages
can be timed and their memory measured at MURA scale without the download (bench/bench_scale.py).

Sources. Studies per body part, split and label: Table 1 of the MURA paper (Rajpurkar et al. 2018,
arXiv:1712.06957), which counts the train and valid splits of the public download. Images per body part and
split: the rows of MURA-v1.1's train_image_paths.csv / valid_image_paths.csv. Patients per body part are not
published; they are derived from the split's overall studies per patient (train: 13,457 studies of 11,184
patients, 1.20 studies each; valid: 1,199 of 783, 1.53 each). The paper's headline totals (40,561 images,
14,863 studies, 12,173 patients) include the hidden test set (556 images, 207 studies, 206 patients), which
the download does not have; the public tree is 36,808 train + 3,197 valid = 40,005 images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from mura_aug.errors import UserError


@dataclass(frozen=True)
class SplitCounts:
    """One body part's share of one split of MURA-v1.1."""

    images: int
    normal_studies: int
    abnormal_studies: int

    @property
    def studies(self) -> int:
        return self.normal_studies + self.abnormal_studies

    @property
    def positive_share(self) -> float:
        """Share (0-1) of the studies that are abnormal."""
        return self.abnormal_studies / self.studies


# body part -> (train, valid). Images from the CSVs, studies from the paper's Table 1.
MURA_COUNTS: Dict[str, Tuple[SplitCounts, SplitCounts]] = {
    "XR_ELBOW": (SplitCounts(4931, 1094, 660), SplitCounts(465, 92, 66)),
    "XR_FINGER": (SplitCounts(5106, 1280, 655), SplitCounts(461, 92, 83)),
    "XR_FOREARM": (SplitCounts(1825, 590, 287), SplitCounts(301, 69, 64)),
    "XR_HAND": (SplitCounts(5543, 1497, 521), SplitCounts(460, 101, 66)),
    "XR_HUMERUS": (SplitCounts(1272, 321, 271), SplitCounts(288, 68, 67)),
    "XR_SHOULDER": (SplitCounts(8379, 1364, 1457), SplitCounts(563, 99, 95)),
    "XR_WRIST": (SplitCounts(9752, 2134, 1326), SplitCounts(659, 140, 97)),
}
PATIENTS = {"train": 11184, "valid": 783}  # patients per split (the paper); studies / patients gives the ratio
STUDIES = {split: sum(c[i].studies for c in MURA_COUNTS.values()) for i, split in enumerate(("train", "valid"))}
STUDIES_PER_PATIENT = {split: STUDIES[split] / PATIENTS[split] for split in PATIENTS}  # train 1.20, valid 1.53


def split_counts(body_part: str, split: str) -> SplitCounts:
    train, valid = MURA_COUNTS[body_part]
    return train if split == "train" else valid


@dataclass(frozen=True)
class PlannedStudy:
    """One study of the layout: its patient (numbered from 0 within the body part's split), number, label."""

    patient: int
    study_number: int  # 1, 2, ... per patient, as MURA's study1, study2
    positive: bool
    views: int  # images in the study


def check_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise UserError(f"scale = {scale!r} is not a share between 0 (exclusive) and 1.",
                        "Use 1 for MURA's full counts, 0.5 for half, 0.125 for an eighth.")
    return float(scale)


def layout_studies(body_part: str, split: str, scale: float, rng: np.random.Generator) -> List[PlannedStudy]:
    """Studies of one body part and split with MURA's counts times `scale` (0-1], in patient order.

    Exact (after rounding): the number of images, of normal and of abnormal studies; the patients follow the
    split's studies per patient. Each patient has at least one study and each study at least one image; the
    rest are spread at random, which gives MURA-like spreads (mostly 1-2 studies per patient, 1-6 images per
    study).
    """
    counts = split_counts(body_part, split)
    normal = max(1, round(counts.normal_studies * scale))
    abnormal = max(1, round(counts.abnormal_studies * scale))
    studies = normal + abnormal
    images = max(studies, round(counts.images * scale))
    patients = max(1, min(studies, round(studies / STUDIES_PER_PATIENT[split])))

    studies_per_patient = 1 + rng.multinomial(studies - patients, np.full(patients, 1 / patients))
    views_per_study = 1 + rng.multinomial(images - studies, np.full(studies, 1 / studies))
    positive = np.zeros(studies, dtype=bool)
    positive[rng.permutation(studies)[:abnormal]] = True
    planned, index = [], 0
    for patient, count in enumerate(studies_per_patient):
        for study_number in range(1, int(count) + 1):
            planned.append(PlannedStudy(patient, study_number, bool(positive[index]), int(views_per_study[index])))
            index += 1
    return planned
