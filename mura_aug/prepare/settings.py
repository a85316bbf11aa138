"""The settings of stage 01 (`PrepareSettings`) and of the demo-data generator (`DemoDataSettings`).

Each default is written once, here; the command line (`prepare/cli.py`), notebook 01's parameters cell and
the parameter table of docs/stage_01_prepare.md are made from these declarations (see mura_aug.settings).
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

from mura_aug.errors import UserError
from mura_aug.imaging import FITS
from mura_aug.prepare.demo_data import DEFAULT_PATIENTS, DEFAULT_POSITIVE_SHARE, DEFAULT_SUBTLETY, difficulty_of
from mura_aug.prepare.mura import BODY_PARTS, DEFAULT_BODY_PART, check_body_part
from mura_aug.settings import StageSettings, check_resolution, flag_name, parameter_name, setting


@dataclasses.dataclass
class PrepareSettings(StageSettings):
    """Every choice of stage 01. A rerun keeps the GAN datasets while the dataset options (resolution, fit,
    crop_borders, contrast) and their input copies are unchanged; `workers` changes only the speed (the
    outputs are byte-identical)."""

    mura_path: Optional[str] = setting(
        None, "MURA-v1.1 folder, the folder above it, or MURA-v1.1.zip; only read, never written. None or empty "
        "(notebooks only; the command line needs a path): generate a MURA-shaped demo tree into <workspace>/demo "
        "first", metavar="PATH", aliases=("--mura",))
    body_part: str = setting(
        DEFAULT_BODY_PART, f"MURA body part, one of {', '.join(BODY_PARTS)} (SHOULDER or xr_shoulder work too)")
    resolution: int = setting(
        256, "side of the square GAN dataset images: a power of two from 16 to 1024 (256 as in the original work, "
        "32 for CPU demos)", unit="px")
    fit: str = setting(
        "pad", "pad: the whole X-ray scaled to fit the square, black bars, centred; crop: scaled to fill it, the "
        "longer side cut", choices=FITS)
    crop_borders: bool = setting(
        False, "cut near-black film borders (rows and columns where the film did not fill the scan) before resizing")
    contrast: bool = setting(
        False, "stretch the 0.5th to 99.5th grey-level percentiles to 0-255 (after the border crop) before resizing")
    workers: Optional[int] = setting(
        None, "processes (spawned) decoding and encoding images; none: one per CPU core; 1: in the calling "
        "process only")
    demo_patients: int = setting(
        DEFAULT_PATIENTS, "patients in the generated demo tree (about 5 images each); used only without a MURA_PATH",
        cli=False)
    demo_subtlety: float = setting(
        DEFAULT_SUBTLETY, "share of positive demo images whose abnormal sign (metal hardware, a fracture) is faint: "
        "0 none, every sign at full strength (any classifier learns it), 1 all; the default leaves the demo "
        "classifier good, not perfect; used only without a MURA_PATH", cli=False)
    demo_positive_share: float = setting(
        DEFAULT_POSITIVE_SHARE, "share of demo studies that are abnormal (above 0, below 1); used only without a "
        "MURA_PATH", cli=False)

    def check(self) -> "PrepareSettings":
        super().check()
        given = "" if self.mura_path is None else os.fspath(self.mura_path).strip()
        self.mura_path = given or None  # "" (a YAML file, an older notebook) means the same as None
        self.body_part = check_body_part(self.body_part)
        self.resolution = check_resolution(self.resolution, parameter_name("resolution"))
        if self.workers is not None:
            self.workers = _whole_number_at_least(1, "workers", self.workers,
                                                  "Use none (one process per CPU core), 1 (no extra processes) "
                                                  f"or another count ({flag_name('workers')} on the command "
                                                  "line).")
        self.demo_patients = _whole_number_at_least(2, "demo_patients", self.demo_patients,
                                                    "Use 2 or more: train and valid each need a patient.")
        self.demo_subtlety, self.demo_positive_share = difficulty_of(
            self.demo_subtlety, self.demo_positive_share,
            names=(parameter_name("demo_subtlety"), parameter_name("demo_positive_share")))
        return self

    def worker_count(self) -> int:
        """The number of processes in use: `workers`, or one per CPU core."""
        return self.workers if self.workers is not None else max(1, os.cpu_count() or 1)


@dataclasses.dataclass
class DemoDataSettings(StageSettings):
    """`python -m mura_aug make-demo-data`: a MURA-v1.1-shaped tree of generated radiographs."""

    out: Optional[str] = setting(None, "folder to write MURA-v1.1/ (or MURA-v1.1.zip) into", metavar="DIR",
                                 notebook=False)
    patients: int = setting(DEFAULT_PATIENTS, "patients per body part, about 5 images each", notebook=False)
    seed: int = setting(0, "random seed: the same seed gives byte-identical files", notebook=False)
    body_parts: List[str] = setting([DEFAULT_BODY_PART], f"body parts to draw ({' '.join(BODY_PARTS)}), or all",
                                    notebook=False)
    as_zip: bool = setting(False, "write MURA-v1.1.zip instead of a folder", notebook=False, aliases=("--zip",))
    subtlety: float = setting(
        DEFAULT_SUBTLETY, "share of positive images whose abnormal sign (metal hardware, a fracture) is faint: 0 "
        "none, every sign at full strength (any classifier learns it), 1 all", notebook=False)
    positive_share: float = setting(DEFAULT_POSITIVE_SHARE, "share of studies that are abnormal (above 0, below 1)",
                                    notebook=False)
    like_mura: Optional[List[str]] = setting(
        None, "draw these body parts (or all) with real MURA-v1.1's counts of patients, studies per patient, images "
        "per study, abnormal studies and train/valid split, instead of --patients per body part (XR_SHOULDER: "
        "8379 train + 563 valid images)", metavar="BODY_PART", notebook=False)
    scale: float = setting(1.0, "share of MURA's counts drawn with --like-mura (0.125: an eighth, for benchmarks)",
                           notebook=False)
    workers: Optional[int] = setting(None, "processes drawing images; none: one per CPU core (the files do not "
                                     "depend on it)", notebook=False)

    def check(self) -> "DemoDataSettings":
        super().check()
        if not self.out:
            raise UserError("No output folder was given for the demo data.",
                            f"Pass {flag_name('out')} DIR (a new folder; existing MURA data is never overwritten).")
        self.subtlety, self.positive_share = difficulty_of(
            self.subtlety, self.positive_share, names=(flag_name("subtlety"), flag_name("positive_share")))
        if self.like_mura is not None:
            self.body_parts = list(self.like_mura)
        elif self.scale != 1.0:
            raise UserError(f"{flag_name('scale')} {self.scale:g} was given without {flag_name('like_mura')}.",
                            f"Add {flag_name('like_mura')} XR_SHOULDER (or all), or leave out {flag_name('scale')}.")
        from mura_aug.prepare.mura_counts import check_scale

        self.scale = check_scale(self.scale)
        if self.workers is not None:
            self.workers = _whole_number_at_least(1, "workers", self.workers,
                                                  f"Use none (one per CPU core) or 1 or more ({flag_name('workers')}).")
        return self


def _whole_number_at_least(low: int, name: str, value, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < low:
        raise UserError(f"{parameter_name(name)} = {value!r} is not a whole number of at least {low}.",
                        fix)
    return int(value)
