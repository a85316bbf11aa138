"""A generated MURA-v1.1-shaped tree of bone-like radiographs, for demos, classrooms and tests.

`make_demo_mura(out_dir)` writes `out_dir/MURA-v1.1/` with the same folders and CSVs as the real download
(`train/XR_SHOULDER/patient00001/study1_positive/image1.png`, `train_image_paths.csv`,
`train_labeled_studies.csv`, `valid_*`, no header rows, study paths ending in '/'), or the same members
inside `out_dir/MURA-v1.1.zip`.

Every image is drawn with numpy from a random anatomy: film that often does not fill the frame, black
borders, soft tissue, a long bone with a joint head, a side-marker letter, noise. Positive (abnormal)
studies carry metal hardware: a plate with screws across the shaft, half of them also a displaced fracture
gap.

How hard the tree is to classify is two settings (`difficulty_of` checks them):
- `subtlety` (0-1): the share of positive images whose sign is faint. A full-strength sign is a saturated
  plate about a tenth of the film wide and two fifths long that stays visible after downscaling to 32 px;
  a faint one (strength FAINT_SIGN_STRENGTH of that) is a dim plate half the size and a hairline, hardly
  displaced fracture, or next to nothing, as in real abnormal views that do not show the finding. 0
  (`EASY_SUBTLETY`) draws every sign at full strength: tests that need a learnable sign use it.
- `positive_share` (0-1): the share of studies that are abnormal.
The defaults (`DEFAULT_SUBTLETY`, `DEFAULT_POSITIVE_SHARE`) are chosen so that the demo's baseline
classifier lands at a study kappa between 0.5 and 0.85 on its valid split (bench/results/difficulty.md):
stage 06's comparison then has room to go either way.

Deterministic per seed: the same arguments give byte-identical files.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mura_aug.errors import UserError
from mura_aug.prepare.mura import BODY_PARTS, DEFAULT_BODY_PART

DEFAULT_PATIENTS = 60  # patients per body part: about 300 images, a minute of stage 01 on a laptop
MARKER_FILE = ".mura_aug_demo.json"  # written at the tree's root so a rerun with the same arguments is instant
VALID_FRACTION = 0.2  # share of each body part's patients that go to the valid split
DEFAULT_POSITIVE_SHARE = 0.5  # share of studies that are abnormal (MURA's shoulders: about half)
EASY_SUBTLETY = 0.0  # the abnormal sign at full strength: any small classifier learns it
# Share of positive images whose sign is faint by default, 0 (none) to 1 (all): the demo baseline's study
# kappa sits inside 0.5-0.85 with it (bench/bench_difficulty.py, bench/results/difficulty.md).
DEFAULT_SUBTLETY = 0.25
# Strength of a faint sign (1 = the saturated plate, 0 = nothing): a dim, small plate, a hairline fracture.
FAINT_SIGN_STRENGTH = (0.0, 0.3)
RGB_FRACTION = 0.1  # share of images saved as 3-channel PNG (the real MURA has some)
MIN_SIDE_PX, MAX_SIDE_PX = 256, 512  # image height / width range in pixels
POOL_MIN_IMAGES = 64  # fewer images are drawn in-process: starting spawned workers costs seconds


@dataclass(frozen=True)
class DemoImage:
    """One image to draw: where it goes in the tree and what it shows."""

    split: str
    body_part: str
    patient_id: int
    study_number: int
    positive: bool
    view: int
    seed: int  # per-image seed, so images can be drawn in any order

    @property
    def study_folder(self) -> str:
        label = "positive" if self.positive else "negative"
        return f"MURA-v1.1/{self.split}/{self.body_part}/patient{self.patient_id:05d}/study{self.study_number}_{label}/"

    @property
    def member(self) -> str:
        return f"{self.study_folder}image{self.view}.png"


# --- the tree plan --------------------------------------------------------------------------------

def plan_tree(patients: int, seed: int, body_parts: Sequence[str],
              positive_share: float = DEFAULT_POSITIVE_SHARE) -> List[DemoImage]:
    """Every image of the tree, in CSV order. Train patients are numbered first, valid ones after them.
    positive_share: the chance of a study to be abnormal."""
    rng = np.random.default_rng(seed)
    per_part = []  # (body_part, n_train, n_valid)
    for body_part in body_parts:
        n_valid = max(1, int(round(patients * VALID_FRACTION)))
        per_part.append((body_part, patients - n_valid, n_valid))
    images: List[DemoImage] = []
    next_patient = 1
    for split in ("train", "valid"):
        for body_part, n_train, n_valid in per_part:
            count = n_train if split == "train" else n_valid
            split_images: List[DemoImage] = []
            for _ in range(count):
                for study_number in range(1, int(rng.integers(1, 4)) + 1):  # 1-3 studies per patient
                    positive = bool(rng.random() < positive_share)
                    for view in range(1, int(rng.integers(1, 5)) + 1):  # 1-4 views per study
                        split_images.append(DemoImage(split, body_part, next_patient, study_number, positive,
                                                      view, int(rng.integers(0, 2**31 - 1))))
                next_patient += 1
            images.extend(_ensure_both_classes(split_images))
    return images


def plan_like_mura(seed: int, body_parts: Sequence[str], scale: float = 1.0) -> List[DemoImage]:
    """Every image of a tree with real MURA-v1.1's counts per body part and split, times `scale` (0-1].

    The counts and the study layout come from prepare/mura_counts.py. Patients are numbered as in MURA: all
    train patients first (body part by body part), then the valid ones. Deterministic per seed; each body part
    and split draws from its own stream, so the shoulder images of `all` are those of XR_SHOULDER alone.
    """
    from mura_aug.prepare.mura_counts import check_scale, layout_studies

    scale = check_scale(scale)
    images: List[DemoImage] = []
    next_patient = 1
    for split_number, split in enumerate(("train", "valid")):
        for body_part in body_parts:
            stream = (int(seed), BODY_PARTS.index(body_part), split_number)
            rng = np.random.default_rng(stream)
            studies = layout_studies(body_part, split, scale, rng)
            for study in studies:
                for view in range(1, study.views + 1):
                    images.append(DemoImage(split, body_part, next_patient + study.patient, study.study_number,
                                            study.positive, view, int(rng.integers(0, 2**31 - 1))))
            next_patient += studies[-1].patient + 1
    return images


def _ensure_both_classes(images: List[DemoImage]) -> List[DemoImage]:
    """Make sure a split of a body part holds both classes (tiny trees could draw only one)."""
    studies = sorted({(im.patient_id, im.study_number) for im in images})
    if len(studies) < 2 or len({im.positive for im in images}) == 2:
        return images
    flip = studies[0]  # the first study takes the missing class
    return [DemoImage(im.split, im.body_part, im.patient_id, im.study_number, not im.positive, im.view, im.seed)
            if (im.patient_id, im.study_number) == flip else im for im in images]


# --- drawing --------------------------------------------------------------------------------------

def sign_strength(seed: int, subtlety: float) -> float:
    """How strongly one positive image shows its abnormal sign, 0 (not at all) to 1 (full strength): with
    chance `subtlety` the sign is faint (FAINT_SIGN_STRENGTH), else full.

    Drawn from a stream of its own (not the anatomy's), so the anatomy of an image is the same at every
    subtlety and subtlety 0 draws exactly the easy tree."""
    if subtlety <= 0:
        return 1.0
    rng = np.random.default_rng([seed, 1])
    faint, strength = rng.random() < subtlety, rng.uniform(*FAINT_SIGN_STRENGTH)
    return float(strength) if faint else 1.0


def draw_radiograph(seed: int, positive: bool, subtlety: float = DEFAULT_SUBTLETY) -> Image.Image:
    """One bone-like radiograph ('L' mode, size between MIN_SIDE_PX and MAX_SIDE_PX per side).

    subtlety: how faint a positive image's sign is (module docstring); negative images do not depend on it."""
    rng = np.random.default_rng(seed)
    strength = sign_strength(seed, subtlety) if positive else 0.0
    height = int(rng.integers(MIN_SIDE_PX, MAX_SIDE_PX + 1))
    width = int(rng.integers(MIN_SIDE_PX, MAX_SIDE_PX + 1))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)

    # Film: often smaller than the frame, leaving black borders (as scanned films do).
    film_top, film_bottom, film_left, film_right = 0, height, 0, width
    if rng.random() < 0.6:
        film_top, film_left = (int(rng.uniform(0, 0.12) * n) for n in (height, width))
        film_bottom = height - int(rng.uniform(0, 0.12) * height)
        film_right = width - int(rng.uniform(0, 0.12) * width)
    film_h, film_w = film_bottom - film_top, film_right - film_left
    size = float(min(film_h, film_w))  # anatomy scales with the film's short side

    # Background exposure: dark with a gentle gradient.
    grad_angle = rng.uniform(0, 2 * math.pi)
    gradient = (np.cos(grad_angle) * xs / width + np.sin(grad_angle) * ys / height)
    image = rng.uniform(25, 55) + 15 * gradient

    # Anatomy frame: u along the long bone, v across it.
    cx = film_left + film_w * rng.uniform(0.4, 0.6)
    cy = film_top + film_h * rng.uniform(0.4, 0.6)
    theta = math.pi / 2 + rng.uniform(-0.5, 0.5)  # roughly vertical shaft
    u = (xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta)
    v = -(xs - cx) * math.sin(theta) + (ys - cy) * math.cos(theta)

    # Soft tissue: a broad, faint band around the bone.
    tissue_half_width = size * rng.uniform(0.22, 0.3)
    image += rng.uniform(25, 40) * np.clip(1 - (v / tissue_half_width) ** 2, 0, 1) ** 0.5

    # Long bone (shaft) from the joint head towards the film edge; a positive one may be broken and
    # displaced, by less the fainter its sign.
    shaft_radius = size * rng.uniform(0.055, 0.07)
    shaft_start, shaft_end = -0.15 * size, 0.75 * size
    fracture_at = size * rng.uniform(0.2, 0.35)
    fractured = positive and rng.random() < 0.5
    shift = np.zeros_like(v)
    if fractured:
        displacement = shaft_radius * rng.choice([-1, 1]) * rng.uniform(0.5, 0.9) * strength
        shift = np.where(u > fracture_at, displacement, 0.0)
    v_bone = v - shift
    bone_intensity = rng.uniform(120, 150)
    across = np.clip(np.abs(v_bone) / shaft_radius, 0, 1)
    shaft = (bone_intensity - 25 + 55 * across ** 4) * (np.abs(v_bone) < shaft_radius)  # bright cortex
    shaft *= (u > shaft_start) & (u < shaft_end)
    if fractured:
        gap_half = size * 0.02 * strength
        shaft *= np.abs(u - fracture_at) > gap_half
    # Joint head: a dome at the top of the shaft.
    head_radius = size * rng.uniform(0.12, 0.16)
    head_distance = np.hypot(u - shaft_start, v) / head_radius
    head = (bone_intensity + 10) * np.sqrt(np.clip(1 - head_distance ** 2, 0, 1)) ** 0.3 * (head_distance < 1)
    # A dimmer flat bone (scapula-like) beside the head, and a thin clavicle-like bar across the top.
    flat_u, flat_v = u - shaft_start + 0.05 * size, v + head_radius * 1.6
    flat = (bone_intensity - 45) * ((flat_u / (0.35 * size)) ** 2 + (flat_v / (0.12 * size)) ** 2 < 1)
    clavicle = (bone_intensity - 20) * ((np.abs(u - shaft_start + 1.4 * head_radius) < 0.025 * size)
                                        & (np.abs(v) < 0.45 * size))
    image = image + np.maximum.reduce([shaft, head, flat, clavicle])

    if positive:
        image = _draw_hardware(image, rng, u, v, size, shaft_radius, fracture_at if fractured else None, strength)

    image += rng.normal(0, rng.uniform(3, 7), size=image.shape)
    pil = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L")
    pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.6, 1.4))))
    _draw_side_marker(pil, rng, (film_left, film_top, film_right, film_bottom))

    # Black borders outside the film.
    pixels = np.asarray(pil).copy()
    outside = (ys < film_top) | (ys >= film_bottom) | (xs < film_left) | (xs >= film_right)
    pixels[outside] = rng.integers(0, 8)
    return Image.fromarray(pixels, mode="L")


def _draw_hardware(image: np.ndarray, rng: np.random.Generator, u: np.ndarray, v: np.ndarray, size: float,
                   shaft_radius: float, fracture_at, strength: float) -> np.ndarray:
    """Metal hardware across the shaft: a plate with screws. At strength 1 it is saturated, so it stays the
    brightest thing after any downscaling; a fainter sign is smaller (down to half the size) and only part
    of the way from the bone's grey to the metal's."""
    plate_length = size * rng.uniform(0.38, 0.48) * (0.5 + 0.5 * strength)
    plate_centre = fracture_at if fracture_at is not None else size * rng.uniform(0.2, 0.35)
    plate_half_width = size * rng.uniform(0.045, 0.055) * (0.5 + 0.5 * strength)
    plate_offset = shaft_radius * rng.uniform(-0.3, 0.3)
    on_plate = (np.abs(u - plate_centre) < plate_length / 2) & (np.abs(v - plate_offset) < plate_half_width)
    image = np.where(on_plate, (1 - strength) * image + strength * 250.0, image)
    screws = int(rng.integers(3, 6))
    screw_half_width = size * 0.014 * (0.5 + 0.5 * strength)
    for position in np.linspace(-0.4, 0.4, screws) * plate_length:
        on_screw = (np.abs(u - plate_centre - position) < screw_half_width) & (np.abs(v) < shaft_radius * 1.35)
        image = np.where(on_screw, (1 - strength) * image + strength * 240.0, image)
    return image


def _draw_side_marker(pil: Image.Image, rng: np.random.Generator, film_box: Tuple[int, int, int, int]) -> None:
    """A bright 'L' or 'R' in a corner of the film, drawn with strokes (no font files needed)."""
    left, top, right, bottom = film_box
    letter_h = max(12, int(min(right - left, bottom - top) * 0.07))
    letter_w, stroke = int(letter_h * 0.65), max(2, letter_h // 6)
    margin = letter_h // 2
    x0 = left + margin if rng.random() < 0.5 else right - margin - letter_w
    y0 = top + margin if rng.random() < 0.5 else bottom - margin - letter_h
    draw, ink = ImageDraw.Draw(pil), 235
    draw.rectangle([x0, y0, x0 + stroke, y0 + letter_h], fill=ink)  # the common vertical stroke
    if rng.random() < 0.5:  # 'L'
        draw.rectangle([x0, y0 + letter_h - stroke, x0 + letter_w, y0 + letter_h], fill=ink)
    else:  # 'R': bowl and leg
        draw.rectangle([x0, y0, x0 + letter_w, y0 + letter_h // 2], outline=ink, width=stroke)
        draw.line([x0 + stroke, y0 + letter_h // 2, x0 + letter_w, y0 + letter_h], fill=ink, width=stroke)


def encode_png(plan_item: DemoImage, subtlety: float = DEFAULT_SUBTLETY) -> bytes:
    image = draw_radiograph(plan_item.seed, plan_item.positive, subtlety)
    if np.random.default_rng(plan_item.seed + 1).random() < RGB_FRACTION:
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)  # fast; these are throwaway demo files
    return buffer.getvalue()


# --- writing the tree -----------------------------------------------------------------------------

def csv_texts(images: Sequence[DemoImage]) -> dict:
    """The four CSVs of MURA-v1.1 (no header rows; study paths end in '/'), keyed by file name."""
    texts = {}
    for split in ("train", "valid"):
        in_split = [im for im in images if im.split == split]
        texts[f"{split}_image_paths.csv"] = "".join(f"{im.member}\n" for im in in_split)
        studies = dict.fromkeys((im.study_folder, int(im.positive)) for im in in_split)
        texts[f"{split}_labeled_studies.csv"] = "".join(f"{folder},{label}\n" for folder, label in studies)
    return texts


def make_demo_mura(out_dir: Union[str, os.PathLike], patients: int = DEFAULT_PATIENTS, seed: int = 0,
                   body_parts: Sequence[str] = (DEFAULT_BODY_PART,), as_zip: bool = False,
                   progress: bool = False, subtlety: float = DEFAULT_SUBTLETY,
                   positive_share: float = DEFAULT_POSITIVE_SHARE, like_mura: bool = False, scale: float = 1.0,
                   workers: Optional[int] = 1) -> Path:
    """Write a demo MURA-v1.1 tree into `out_dir` and return the `MURA-v1.1` folder (or the zip file).

    patients: patients per body part (about 20 % of them go to valid); about 5 images per patient.
    subtlety, positive_share: how hard the abnormality is to tell (module docstring; EASY_SUBTLETY for a
    sign any classifier learns).
    like_mura: instead, real MURA-v1.1's counts of patients, studies, images and abnormal studies per body part
        and split (prepare/mura_counts.py), times `scale` (0-1]; `patients` and `positive_share` are then not
        used (MURA's own abnormal share per body part is).
    workers: processes drawing images (None: one per CPU core); the files do not depend on it.
    A rerun with the same arguments returns the existing tree at once. A folder that is not ours is never
    overwritten.
    """
    body_parts = _check_arguments(patients, body_parts)
    subtlety, positive_share = difficulty_of(subtlety, positive_share)
    out_dir = Path(out_dir).expanduser()
    if like_mura:
        from mura_aug.prepare.mura_counts import check_scale

        settings = {"like_mura": True, "scale": check_scale(scale), "seed": int(seed), "body_parts": list(body_parts),
                    "version": 1, "subtlety": subtlety}
    else:
        settings = {"patients": int(patients), "seed": int(seed), "body_parts": list(body_parts), "version": 1,
                    "subtlety": subtlety, "positive_share": positive_share}
    target = out_dir / ("MURA-v1.1.zip" if as_zip else "MURA-v1.1")
    if _is_same_demo(target, settings):
        return target
    if target.exists() and not _is_ours(target):
        raise UserError(f"{target} already exists and was not generated by make-demo-data.",
                        "Choose another --out folder; existing MURA data is never overwritten.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the demo data folder {out_dir}: {exc.strerror}.",
                        "Pass an --out folder you can write to.") from exc

    images = (plan_like_mura(seed, body_parts, scale) if like_mura
              else plan_tree(patients, seed, body_parts, positive_share))
    files = {"MURA-v1.1/" + name: text.encode() for name, text in csv_texts(images).items()}
    from tqdm.auto import tqdm

    marker = json.dumps(settings).encode()
    with _drawn(images, workers, subtlety) as pngs:
        pngs = tqdm(pngs, total=len(images), desc="demo radiographs", unit="img", disable=not progress)
        if as_zip:
            _write_zip(target, files, pngs, marker)
        else:
            _write_folder(target, files, pngs, marker)
    return target


def _member_png(plan_item: DemoImage, subtlety: float) -> Tuple[str, bytes]:
    return plan_item.member, encode_png(plan_item, subtlety)


@contextlib.contextmanager
def _drawn(images: Sequence[DemoImage], workers: Optional[int], subtlety: float
           ) -> Iterator[Iterator[Tuple[str, bytes]]]:
    """(member, PNG bytes) in plan order, drawn in this process or by a pool of `workers` processes."""
    count = (os.cpu_count() or 1) if workers is None else int(workers)
    if count <= 1 or len(images) < POOL_MIN_IMAGES:
        yield (_member_png(im, subtlety) for im in images)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked notebook kernel can deadlock. map() keeps the plan order; writing a PNG is far
    # faster than drawing one, so finished PNGs (about 60 KB each) do not pile up at any tree size.
    with ProcessPoolExecutor(max_workers=count, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor.map(_member_png, images, [subtlety] * len(images), chunksize=16)


def _check_arguments(patients: int, body_parts: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(body_parts, str):
        body_parts = (body_parts,)
    if any(str(bp).lower() == "all" for bp in body_parts):
        body_parts = BODY_PARTS
    parts = tuple(str(bp).upper() for bp in body_parts)
    unknown = [bp for bp in parts if bp not in BODY_PARTS]
    if unknown or not parts:
        raise UserError(f"Unknown body part(s) {', '.join(unknown) or '(none given)'}.",
                        f"Use one or more of {', '.join(BODY_PARTS)}, or 'all'.")
    if int(patients) < 2:
        raise UserError(f"patients={patients} is too few: train and valid each need at least one patient.",
                        f"Use --patients 2 or more ({DEFAULT_PATIENTS} gives about 300 images).")
    return parts


def difficulty_of(subtlety, positive_share, names=("subtlety", "positive_share")) -> Tuple[float, float]:
    """The two difficulty settings as floats, or a UserError naming the one out of range (`names`: what the
    caller calls them, e.g. notebook 01's DEMO_SUBTLETY)."""
    def number(value) -> float:
        if isinstance(value, bool):
            return float("nan")
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("nan")

    if not 0 <= number(subtlety) <= 1:
        raise UserError(f"{names[0]} = {subtlety!r} is not a number from 0 to 1.",
                        f"Use the share of abnormal images with a faint sign, from 0 (every sign at full "
                        f"strength) to 1 (all faint); the default {DEFAULT_SUBTLETY} gives the demo a classifier "
                        "that is good but not perfect.")
    if not 0 < number(positive_share) < 1:
        raise UserError(f"{names[1]} = {positive_share!r} is not a share above 0 and below 1.",
                        f"Use the share of abnormal studies, e.g. {DEFAULT_POSITIVE_SHARE} (the default) or 0.2 "
                        "for rare positives.")
    return number(subtlety), number(positive_share)


def _is_same_demo(target: Path, settings: dict) -> bool:
    try:
        if target.is_dir():
            return json.loads((target / MARKER_FILE).read_text()) == settings
        if target.is_file():
            with zipfile.ZipFile(target) as archive:
                return json.loads(archive.read("MURA-v1.1/" + MARKER_FILE)) == settings
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return False


def _is_ours(target: Path) -> bool:
    if target.is_dir():
        return (target / MARKER_FILE).is_file()
    try:
        with zipfile.ZipFile(target) as archive:
            return ("MURA-v1.1/" + MARKER_FILE) in archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return False


def _write_folder(target: Path, files: dict, pngs, marker: bytes) -> None:
    # Built in a temporary sibling and renamed, so an interrupted run never leaves half a tree behind.
    staging = Path(tempfile.mkdtemp(prefix=".MURA-v1.1.", dir=target.parent))
    try:
        for member, data in itertools.chain(files.items(), pngs):  # one PNG in memory at a time, not the tree
            path = staging / member.removeprefix("MURA-v1.1/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (staging / MARKER_FILE).write_bytes(marker)
        staging.chmod(0o755)  # mkdtemp makes it private; a data tree should be readable like any folder
        if target.exists():  # an older demo tree of ours (checked by the caller)
            shutil.rmtree(target)
        os.replace(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"Could not write the demo tree to {target}: {exc.strerror or exc}.",
                        "Check free space and permissions of the --out folder, then rerun.") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_zip(target: Path, files: dict, pngs, marker: bytes) -> None:
    from mura_aug.workspace import atomic_path

    with atomic_path(target) as tmp:
        # PNGs are already compressed: store them; deflate only the CSVs.
        with zipfile.ZipFile(tmp, "w") as archive:
            for member, data in files.items():
                archive.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED)
            for member, data in pngs:
                archive.writestr(member, data, compress_type=zipfile.ZIP_STORED)
            archive.writestr("MURA-v1.1/" + MARKER_FILE, marker)
        tmp.chmod(0o644)  # the temporary file is private; the finished zip is an ordinary data file
