"""Stage 05: synthetic X-rays at scale.

Two ways to get fakes, both ending in the same place:
- cut a grid PNG (ours `fakes-<K>kimg.png` or NVIDIA's `fakes*.png`) into its tiles (`cut_grid`);
- generate N images per class straight from a snapshot's G_ema with explicit seeds and truncation psi
  (`generate_images`), batched, on GPU or CPU.
Each fake is sharpened (PIL `ImageEnhance.Sharpness`, factor 2 as in the original work; optional contrast),
saved to `data/Augmented_Fakes/{positive,negative}/<BODY>/<run>_kimg<K>_seed<seed:06d>.png`, listed in
`data/Augmented_Fakes/manifest.csv`, and the training table `data/tables/<BODY>_train_augmented.csv` is
rebuilt as the real train table plus every kept fake. Names are deterministic and the manifest is keyed
by path, so a rerun skips what is done and never duplicates a file or a row.

Optional filtering marks fakes as dropped (the files stay, the table leaves them out): near-duplicates, and
the least realistic by a discriminator's score or a classifier's confidence.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance

from mura_aug.devices import resolve_device
from mura_aug.gan import sampling
from mura_aug.imaging import to_grey
from mura_aug.errors import UserError
from mura_aug.workspace import (CLASSES, RunFolder, Workspace, atomic_write_bytes, atomic_write_csv, atomic_write_json,
                                resolve_workspace)

PathLike = Union[str, os.PathLike]

DEFAULT_SHARPEN_FACTOR = 2.0  # PIL Sharpness factor: 1 = unchanged, 2 = the original work's setting
DEFAULT_PSI = 1.0  # truncation psi: 1 = no truncation; smaller trades variety for typical-looking images
MANIFEST_COLUMNS = ["path", "class", "label", "body_part", "run", "kimg", "seed", "psi", "source_grid", "tile",
                    "sharpen_factor", "contrast", "dropped", "drop_reason", "score"]
TABLE_EXTRA_COLUMNS = ["run", "kimg", "seed", "psi"]
TABLE_COLUMNS = ["path", "filename", "class", "label", "patient", "study", "study_id", "body_part", "split",
                 "view", "source"]
MAX_GRID_PADDING_PX = 32  # largest separator width (pixels) that grid cutting looks for
SAVE_THREADS = 4  # threads that sharpen, encode and write fakes while the generator runs
SAVE_QUEUE_IMAGES = 256  # generated images waiting to be written, at most (256 px RGB: 50 MB)
MANIFEST_EVERY_IMAGES = 500  # the manifest is rewritten after this many new fakes


# --- grid cutting --------------------------------------------------------------------------------

@dataclass(frozen=True)
class GridLayout:
    """Where the tiles of a grid image are: `rows` x `cols` tiles of `tile_h` x `tile_w` pixels, separated by
    `padding` pixels, with a `margin` (pixels) around the whole grid."""

    rows: int
    cols: int
    tile_h: int
    tile_w: int
    padding: int = 0
    margin: int = 0

    def boxes(self) -> List[Tuple[int, int, int, int]]:
        """PIL crop boxes (left, top, right, bottom), row-major."""
        boxes = []
        for r in range(self.rows):
            top = self.margin + r * (self.tile_h + self.padding)
            for c in range(self.cols):
                left = self.margin + c * (self.tile_w + self.padding)
                boxes.append((left, top, left + self.tile_w, top + self.tile_h))
        return boxes


def _axis_candidates(length: int, tile: Optional[int], count: Optional[int]) -> List[Tuple[int, int, int, int]]:
    """(count, tile, padding, margin) that tile `length` pixels exactly; margin is 0 or equal to padding
    (torchvision's make_grid pads the outside too, NVIDIA's grids have no padding at all)."""
    found = []
    for padding in range(0, MAX_GRID_PADDING_PX + 1):
        for outer in (False, True):
            if padding == 0 and outer:
                continue
            margin = padding if outer else 0
            if tile is not None:
                # length = n * tile + (n - 1) * padding + 2 * margin
                numerator = length + padding - 2 * margin
                if numerator > 0 and numerator % (tile + padding) == 0:
                    n = numerator // (tile + padding)
                    if (count is None or n == count) and n >= 1:
                        found.append((n, tile, padding, margin))
            else:
                numerator = length - (count - 1) * padding - 2 * margin
                if numerator > 0 and numerator % count == 0:
                    found.append((count, numerator // count, padding, margin))
    return found


def _separators_uniform(pixels: np.ndarray, layout: GridLayout) -> bool:
    """True when every pixel outside the tiles has one value (the padding colour)."""
    if layout.padding == 0 and layout.margin == 0:
        return True
    mask = np.ones(pixels.shape[:2], dtype=bool)
    for left, top, right, bottom in layout.boxes():
        mask[top:bottom, left:right] = False
    outside = pixels[mask]
    return outside.size > 0 and bool((outside == outside[0]).all())


def detect_grid_layout(image: Image.Image, tile_size: Optional[int] = None, rows: Optional[int] = None,
                       cols: Optional[int] = None, padding: Optional[int] = None) -> GridLayout:
    """The tile layout of a grid image, given the tile size (pixels, square tiles) or rows and columns.

    Padding between tiles (and around them) is detected: of the layouts that divide the image exactly, the
    one whose separators are a single colour wins, the narrowest such padding first; no padding otherwise.
    """
    if tile_size is None and (rows is None or cols is None):
        raise UserError("Cutting a grid needs the tile size or both the number of rows and columns.",
                        "Pass tile_size (the run's resolution in pixels, e.g. 256) or rows and cols.")
    for name, value in (("tile_size", tile_size), ("rows", rows), ("cols", cols)):
        if value is not None and int(value) < 1:
            raise UserError(f"{name}={value} is not a positive number.", f"Pass {name} >= 1.")
    width, height = image.size
    across = _axis_candidates(width, tile_size, cols)
    down = _axis_candidates(height, tile_size, rows)
    layouts = [GridLayout(rows=r, cols=c, tile_h=th, tile_w=tw, padding=p, margin=m)
               for c, tw, p, m in across for r, th, p2, m2 in down if p == p2 and m == m2]
    if padding is not None:
        layouts = [layout for layout in layouts if layout.padding == int(padding)]
    if not layouts:
        asked = f"tiles of {tile_size} px" if tile_size else f"{rows} rows x {cols} columns"
        raise UserError(f"A {width}x{height} px grid cannot be cut into {asked}"
                        + (f" with {padding} px padding" if padding is not None else "") + ".",
                        "Check the tile size (the run's resolution) or the rows and columns of the grid.")
    pixels = np.asarray(image)
    uniform = [layout for layout in layouts if layout.padding > 0 and _separators_uniform(pixels, layout)]
    if uniform:
        # The narrowest uniform separator; with equal width, the layout with an outer margin explains more.
        return sorted(uniform, key=lambda layout: (layout.padding, -layout.margin))[0]
    unpadded = [layout for layout in layouts if layout.padding == 0]
    return unpadded[0] if unpadded else layouts[0]


def cut_grid(grid: Union[PathLike, Image.Image], tile_size: Optional[int] = None, rows: Optional[int] = None,
             cols: Optional[int] = None, padding: Optional[int] = None) -> List[Image.Image]:
    """The tiles of a grid image, row-major, as PIL images in the grid's own mode."""
    image = _open_grid(grid) if not isinstance(grid, Image.Image) else grid
    layout = detect_grid_layout(image, tile_size=tile_size, rows=rows, cols=cols, padding=padding)
    return [image.crop(box) for box in layout.boxes()]


def _open_grid(path: PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No grid image at {path}.",
                        "Pass a fakes*.png written by training (in data/experiments/<run>/).")
    try:
        with Image.open(path) as handle:
            handle.load()
            image = handle.copy()
    except Exception as exc:
        raise UserError(f"The grid image {path} cannot be read ({type(exc).__name__}: {exc}).",
                        "Use another fakes*.png; this one may be truncated by an interrupted copy.") from exc
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    return image


_OUR_GRID = re.compile(r"fakes-(\d+(?:\.\d+)?)kimg")
_NVIDIA_GRID = re.compile(r"fakes(\d+)$")


def grid_kimg(path: PathLike) -> float:
    """kimg of a grid from its name: ours `fakes-000012.500kimg.png`, NVIDIA's `fakes000480.png`,
    `fakes_init.png` = 0."""
    stem = Path(path).stem
    match = _OUR_GRID.search(stem) or _NVIDIA_GRID.search(stem)
    if match:
        return float(match.group(1))
    return 0.0


def open_gray(path: PathLike) -> Image.Image:
    """Any image file (8- or 16-bit grey, RGB, RGBA, palette) as 8-bit grayscale; UserError when unreadable."""
    try:
        with Image.open(path) as handle:
            handle.load()
            image = handle.copy()
    except Exception as exc:
        raise UserError(f"The image {path} cannot be read ({type(exc).__name__}: {exc}).",
                        "Rerun the stage that wrote it (01 for real images, 05 for fakes) to restore it.") from exc
    # stage 01's rule for every mode: 16-bit / float stretched by its own range, alpha composited on black
    return to_grey(image)


# --- sharpening ------------------------------------------------------------------------------------

def sharpen(image: Image.Image, factor: float = DEFAULT_SHARPEN_FACTOR, contrast: Optional[float] = None
            ) -> Image.Image:
    """PIL's unsharp 'Sharpness' enhancement at `factor` (1 = unchanged), then optional `contrast`
    (PIL Contrast factor, 1 = unchanged)."""
    if factor < 0:
        raise UserError(f"Sharpen factor {factor} is negative.", "Use 1 for none, 2 as in the original work.")
    out = ImageEnhance.Sharpness(image).enhance(float(factor)) if factor != 1 else image.copy()
    if contrast is not None and contrast != 1:
        if contrast < 0:
            raise UserError(f"Contrast factor {contrast} is negative.", "Use 1 for none, e.g. 1.2 for a little more.")
        out = ImageEnhance.Contrast(out).enhance(float(contrast))
    return out


# --- generation --------------------------------------------------------------------------------------

def to_pil(array: np.ndarray) -> Image.Image:
    """HWC uint8 -> PIL ('L' for one channel, 'RGB' for three)."""
    if array.ndim == 3 and array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], "L")
    return Image.fromarray(array, "RGB")


def generate_images(G, seeds: Sequence[int], truncation_psi: float = DEFAULT_PSI, cls: Optional[str] = None,
                    batch_size: int = 16, device=None, noise_mode: str = "const", progress: bool = True,
                    ) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield (seed, HWC uint8 image) for each seed, generated in batches of `batch_size` images
    (`mura_aug.gan.sampling.generate`: the same seed gives the same image everywhere)."""
    for chunk, images in sampling.generate(G, seeds, cls, truncation_psi=truncation_psi, noise_mode=noise_mode,
                                           batch_size=batch_size, device=resolve_device(device), progress=progress,
                                           desc=f"generating {cls or ''}".strip()):
        for seed, image in zip(chunk, images):
            yield seed, image.transpose(1, 2, 0)


# --- snapshots and runs -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Snapshot:
    """A generator snapshot to draw fakes from."""

    path: Path  # network-*.pt, state-*.pt or an NVlabs .pkl
    run: str  # run name (its folder under data/experiments)
    kimg: float  # thousands of real images shown when it was saved
    label: str  # 'positive', 'negative' or 'both' (class-conditional)


_NETWORK_KIMG = re.compile(r"(?:network|state)-(\d+(?:\.\d+)?)kimg")
_NVIDIA_SNAPSHOT_KIMG = re.compile(r"network-snapshot-(\d+)")


def snapshot_kimg(path: PathLike) -> float:
    stem = Path(path).stem
    match = _NETWORK_KIMG.search(stem) or _NVIDIA_SNAPSHOT_KIMG.search(stem)
    return float(match.group(1)) if match else 0.0


def run_label(run_name: str) -> Optional[str]:
    """Label part of a run name `BODY-<label>-<cfg>-<res>`, or None when the name does not follow it."""
    parts = run_name.split("-")
    return parts[1] if len(parts) >= 2 and parts[1] in ("positive", "negative", "both") else None


def list_run_dirs(workspace: Workspace, body_part: Optional[str] = None) -> List[Path]:
    """Run folders under data/experiments that hold at least one network file (of `body_part`)."""
    runs = [run.path for run in workspace.runs() if run.network_files()]
    if body_part:
        runs = [d for d in runs if d.name.split("-")[0] == body_part]
    return runs


def _file_label(path: Path) -> Optional[str]:
    """The 'label' stored in a mura_aug network/state file (None when absent)."""
    import torch

    if path.suffix == ".pkl":
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    label = payload.get("label") if isinstance(payload, dict) else None
    return label if label in ("positive", "negative", "both") else None


def snapshot_from(spec: PathLike, workspace: Workspace, label: Optional[str] = None) -> Snapshot:
    """A Snapshot from a run name, a run folder or a snapshot file."""
    path = Path(spec).expanduser()
    if not path.exists():
        path = workspace.run(str(spec)).path
    if path.is_dir():
        files = RunFolder(path).network_files()
        if not files:
            raise UserError(f"The run folder {path} holds no network-*kimg.pt snapshot yet.",
                            "Train it until its first snapshot, or name another run (python -m mura_aug runs).")
        run_name, file = path.name, files[-1]
    elif path.is_file():
        run_name, file = path.parent.name, path
    else:
        known = ", ".join(d.name for d in list_run_dirs(workspace)) or "none yet"
        raise UserError(f"No run or snapshot {spec!r} (looked in {workspace.experiments}).",
                        f"Name a run folder under data/experiments (found: {known}) or a snapshot file.")
    label = label or run_label(run_name) or _file_label(file)
    if label is None:
        raise UserError(f"Cannot tell which class the snapshot {file} generates.",
                        "Give it per class, e.g. RUNS={'positive': 'path/to/pos.pkl', 'negative': ...}.")
    return Snapshot(path=file, run=run_name, kimg=snapshot_kimg(file), label=label)


def find_snapshots(workspace: Workspace, body_part: str, runs=None,
                   classes: Sequence[str] = CLASSES) -> Dict[str, Snapshot]:
    """The snapshot to use per class.

    `runs` None: the newest run of each class (a run trained on that class, else a conditional 'both' run);
    a list of run names / folders / snapshot files: each serves the class in its name (or both);
    a dict {class: run}: explicit.
    """
    chosen: Dict[str, Snapshot] = {}
    if isinstance(runs, dict):
        for cls, spec in runs.items():
            if cls not in CLASSES:
                raise UserError(f"Unknown class {cls!r} in RUNS.", f"Use keys from {CLASSES}.")
            snap = snapshot_from(spec, workspace)
            chosen[cls] = Snapshot(snap.path, snap.run, snap.kimg, snap.label if snap.label == "both" else cls)
    else:
        if runs is None:
            specs = sorted(list_run_dirs(workspace, body_part),
                           key=lambda d: RunFolder(d).network_files()[-1].stat().st_mtime)  # oldest first, newest wins
        else:
            specs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
        snapshots = [snapshot_from(spec, workspace) for spec in specs]
        for cls in classes:
            own = [s for s in snapshots if s.label == cls]
            both = [s for s in snapshots if s.label == "both"]
            if own or both:
                chosen[cls] = (own or both)[-1]
    missing = [cls for cls in classes if cls not in chosen]
    if missing:
        raise UserError(f"No trained {body_part} snapshot for class {', '.join(missing)} "
                        f"in {workspace.experiments}.",
                        "Train it first (notebook 02 / 03, or python -m mura_aug train --label ...), or name the "
                        "runs to use (RUNS / --runs).")
    return {cls: chosen[cls] for cls in classes}


# --- manifest and table ---------------------------------------------------------------------------------

def read_manifest(workspace: Workspace):
    """The manifest as a DataFrame (empty with the right columns when there is none yet)."""
    import pandas as pd

    path = workspace.manifest
    if not path.is_file():
        return pd.DataFrame({column: pd.Series(dtype="object") for column in MANIFEST_COLUMNS})
    try:
        frame = pd.read_csv(path, dtype={"path": str, "run": str, "source_grid": str, "drop_reason": str,
                                         "class": str, "body_part": str})
    except Exception as exc:
        raise UserError(f"The manifest {path} cannot be read ({type(exc).__name__}: {exc}).",
                        "Delete it and rerun synth: it is rebuilt, existing fakes are regenerated.") from exc
    for column in MANIFEST_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    for column in ("seed", "tile"):  # whole numbers, empty where they do not apply (tiles have no seed)
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    frame["dropped"] = frame["dropped"].fillna(False).astype(bool)
    frame["drop_reason"] = frame["drop_reason"].fillna("").astype(str)
    return frame


def write_manifest(workspace: Workspace, frame) -> Path:
    """Write the manifest atomically, one row per path (the last wins), sorted by path."""
    frame = frame.drop_duplicates(subset="path", keep="last").sort_values("path").reset_index(drop=True)
    return atomic_write_csv(workspace.manifest, frame[MANIFEST_COLUMNS + [c for c in frame.columns
                                                                                 if c not in MANIFEST_COLUMNS]])


def merge_manifest(old, new_rows: List[dict]):
    import pandas as pd

    if not new_rows:
        return old
    new = pd.DataFrame(new_rows)
    if old.empty:
        return new
    return pd.concat([old[~old["path"].isin(new["path"])], new], ignore_index=True)


def write_augmented_table(workspace: Workspace, body_part: str):
    """`<BODY>_train_augmented.csv` = the real train table + every kept fake of `body_part` in the manifest.

    Rebuilt from both each time, so it never holds a fake twice.
    """
    import pandas as pd

    train_path = workspace.table(body_part, "train")
    if not train_path.is_file():
        raise UserError(f"The training table {train_path} does not exist.",
                        "Run stage 01 first (notebook 01_prepare or python -m mura_aug prepare).")
    real = pd.read_csv(train_path)
    if "source" not in real.columns:
        real["source"] = "real"
    real = real[real["source"] != "synthetic"]
    manifest = read_manifest(workspace)
    fakes = manifest[(manifest["body_part"] == body_part) & (~manifest["dropped"])]
    fakes = fakes[[(workspace.root / p).is_file() for p in fakes["path"]]]
    synthetic = pd.DataFrame({
        "path": fakes["path"].values,
        "filename": fakes["path"].values,
        "class": fakes["class"].values,
        "label": [1 if c == "positive" else 0 for c in fakes["class"]],
        "patient": "synthetic",
        "study": "synthetic",
        "study_id": fakes["path"].values,  # one study per fake: it is an image on its own
        "body_part": body_part,
        "split": "train",
        "view": "image1",
        "source": "synthetic",
        "run": fakes["run"].values,
        "kimg": fakes["kimg"].values,
        "seed": fakes["seed"].values,
        "psi": fakes["psi"].values,
    })
    table = pd.concat([real, synthetic], ignore_index=True) if len(synthetic) else real.copy()
    for column in TABLE_EXTRA_COLUMNS:
        if column not in table.columns:
            table[column] = None
    atomic_write_csv(workspace.augmented_table(body_part), table)
    return table


# --- saving fakes -------------------------------------------------------------------------------------------

def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _is_done(manifest_rows: Dict[str, dict], workspace: Workspace, rel_path: str, **settings) -> bool:
    """A fake counts as done when its file exists and the manifest recorded the same settings."""
    row = manifest_rows.get(rel_path)
    if row is None or not (workspace.root / rel_path).is_file():
        return False
    for key, value in settings.items():
        old = row.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            if not (old is None or (isinstance(old, float) and math.isnan(old)) or old == ""):
                return False
        elif old is None or (isinstance(old, float) and math.isnan(old)) or not math.isclose(float(old), float(value)):
            return False
    return True


@dataclass
class SynthResult:
    """What a synth call did: the manifest rows it covers and the counts."""

    rows: list  # manifest rows (dicts) of the fakes this call is about
    generated: int  # images written now
    skipped: int  # images already done by an earlier run
    seconds: float  # wall time of the call

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=MANIFEST_COLUMNS)


def synthesize_class(workspace: Workspace, snapshot: Snapshot, cls: str, n: int, seed: int = 0,
                     truncation_psi: float = DEFAULT_PSI, sharpen_factor: float = DEFAULT_SHARPEN_FACTOR,
                     contrast: Optional[float] = None, body_part: str = "XR_SHOULDER", batch_size: int = 16,
                     device=None, progress: bool = True, generator_cache: Optional[dict] = None) -> SynthResult:
    """Generate `n` fakes of `cls` with seeds seed..seed+n-1, sharpen, save, record in the manifest.

    Fakes already on disk with the same settings are kept as they are (a rerun continues where it stopped).
    """
    from mura_aug.gan.network_file import load_generator

    if n < 0:
        raise UserError(f"N_PER_CLASS={n} is negative.", "Ask for 0 or more images per class.")
    if not 0 <= seed or seed + n > sampling.SEED_LIMIT:
        raise UserError(f"Seeds {seed}..{seed + n - 1} are out of range.",
                        f"Use seeds from 0 to {sampling.SEED_LIMIT - 1}.")
    started = time.perf_counter()
    manifest = read_manifest(workspace)
    known = {row["path"]: row for row in manifest.to_dict("records")}
    settings = dict(psi=float(truncation_psi), sharpen_factor=float(sharpen_factor),
                    contrast=None if contrast is None else float(contrast))
    rows, todo = [], []
    for s in range(seed, seed + n):
        rel = workspace.relative(workspace.fake_path(cls, body_part, snapshot.run, snapshot.kimg, s))
        row = _manifest_row(rel, cls, body_part, snapshot, s, source_grid="", tile=None, **settings)
        rows.append(row)
        if not _is_done(known, workspace, rel, **settings):
            todo.append((s, rel, row))
    if todo:
        cache = {} if generator_cache is None else generator_cache
        if snapshot.path not in cache:
            cache[snapshot.path] = load_generator(snapshot.path, device=resolve_device(device))
        G = cache[snapshot.path]
        by_seed = {s: (rel, row) for s, rel, row in todo}
        fresh: List[dict] = []
        pending: "deque" = deque()  # (future, manifest row) in generation order

        def finish_oldest():
            future, row = pending.popleft()
            future.result()  # re-raises a failed write (full disk -> UserError) here
            fresh.append(row)

        # Sharpening, PNG encoding and the fsyncs of atomic writes run in threads (they release the GIL),
        # so saving overlaps with generating the next batch instead of adding to it.
        pool = ThreadPoolExecutor(max_workers=SAVE_THREADS)
        try:
            for s, array in generate_images(G, list(by_seed), truncation_psi, cls, batch_size, device,
                                            progress=progress):
                rel, row = by_seed[s]
                pending.append((pool.submit(_save_fake, workspace.root / rel, array, sharpen_factor, contrast), row))
                while len(pending) > SAVE_QUEUE_IMAGES:  # bounds memory: images waiting to be written
                    finish_oldest()
                if len(fresh) >= MANIFEST_EVERY_IMAGES:  # a run cut off keeps most of its work listed
                    manifest = merge_manifest(manifest, fresh)
                    write_manifest(workspace, manifest)
                    fresh.clear()
            while pending:
                finish_oldest()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            # whatever was written before an error or an interrupt is listed, so a rerun skips it
            written = [row for future, row in pending
                       if not future.cancelled() and future.done() and future.exception() is None]
            write_manifest(workspace, merge_manifest(manifest, fresh + written))
    return SynthResult(rows=rows, generated=len(todo), skipped=n - len(todo),
                       seconds=time.perf_counter() - started)


def _save_fake(path: Path, array: np.ndarray, sharpen_factor: float, contrast: Optional[float]) -> None:
    atomic_write_bytes(path, _png_bytes(sharpen(to_pil(array), sharpen_factor, contrast)))


def _manifest_row(rel: str, cls: str, body_part: str, snapshot: Snapshot, seed, source_grid: str, tile, psi,
                  sharpen_factor, contrast) -> dict:
    return {"path": rel, "class": cls, "label": 1 if cls == "positive" else 0, "body_part": body_part,
            "run": snapshot.run, "kimg": float(snapshot.kimg), "seed": seed, "psi": psi,
            "source_grid": source_grid, "tile": tile, "sharpen_factor": sharpen_factor, "contrast": contrast,
            "dropped": False, "drop_reason": "", "score": None}


def cut_grid_to_fakes(workspace: Workspace, grid_path: PathLike, cls: str, body_part: str = "XR_SHOULDER",
                      tile_size: Optional[int] = None, rows: Optional[int] = None, cols: Optional[int] = None,
                      padding: Optional[int] = None, sharpen_factor: float = DEFAULT_SHARPEN_FACTOR,
                      contrast: Optional[float] = None, run: Optional[str] = None,
                      kimg: Optional[float] = None) -> SynthResult:
    """Cut a fakes grid into tiles, sharpen each, save them as fakes of `cls` and list them in the manifest.

    `run` defaults to the grid's folder name, `kimg` to the number in the grid's name.
    """
    started = time.perf_counter()
    grid_path = Path(grid_path).expanduser()
    if tile_size is None and rows is None and cols is None:
        tile_size = _resolution_from_options(grid_path.parent)  # a grid in its run folder: tiles = run resolution
    tiles = cut_grid(grid_path, tile_size=tile_size, rows=rows, cols=cols, padding=padding)
    run = run or grid_path.resolve().parent.name
    kimg = grid_kimg(grid_path) if kimg is None else float(kimg)
    snapshot = Snapshot(path=grid_path, run=run, kimg=kimg, label=cls)
    manifest = read_manifest(workspace)
    known = {row["path"]: row for row in manifest.to_dict("records")}
    settings = dict(psi=None, sharpen_factor=float(sharpen_factor),
                    contrast=None if contrast is None else float(contrast))
    rows_out, fresh = [], []
    for index, tile in enumerate(tiles):
        rel = workspace.relative(workspace.tile_path(cls, body_part, run, kimg, index))
        row = _manifest_row(rel, cls, body_part, snapshot, None, source_grid=str(grid_path), tile=index, **settings)
        rows_out.append(row)
        known_row = known.get(rel)
        same_grid = known_row is not None and known_row.get("source_grid") == str(grid_path)
        if not (same_grid and _is_done(known, workspace, rel, **settings)):
            atomic_write_bytes(workspace.root / rel, _png_bytes(sharpen(tile, sharpen_factor, contrast)))
            fresh.append(row)
    if fresh:
        write_manifest(workspace, merge_manifest(manifest, fresh))
    return SynthResult(rows=rows_out, generated=len(fresh), skipped=len(tiles) - len(fresh),
                       seconds=time.perf_counter() - started)


def synthesize(workspace=None, body_part: str = "XR_SHOULDER", n_per_class: int = 100, seed: int = 0,
               truncation_psi: float = DEFAULT_PSI, sharpen_factor: float = DEFAULT_SHARPEN_FACTOR,
               contrast: Optional[float] = None, runs=None, classes: Sequence[str] = CLASSES,
               batch_size: int = 16, device=None, progress: bool = True) -> Dict[str, SynthResult]:
    """Stage 05 by direct generation: N fakes per class, then the augmented table and a summary JSON."""
    workspace = resolve_workspace(workspace)
    snapshots = find_snapshots(workspace, body_part, runs, classes)
    generators: dict = {}  # snapshot path -> loaded G: a conditional run serves both classes, loaded once
    results = {}
    for cls in classes:
        results[cls] = synthesize_class(workspace, snapshots[cls], cls, n_per_class, seed, truncation_psi,
                                        sharpen_factor, contrast, body_part, batch_size, device, progress,
                                        generator_cache=generators)
    table = write_augmented_table(workspace, body_part)
    write_summary(workspace, body_part, results, table, snapshots)
    return results


def write_summary(workspace: Workspace, body_part: str, results: Dict[str, SynthResult], table,
                  snapshots: Optional[Dict[str, Snapshot]] = None) -> Path:
    """`data/Augmented_Fakes/<BODY>_synth_summary.json`: counts and timings of the last call."""
    snapshots = snapshots or {}
    summary = {
        "body_part": body_part,
        "classes": {cls: {"requested": len(r.rows), "generated": r.generated, "skipped": r.skipped,
                          "seconds": round(r.seconds, 3),
                          "run": snapshots[cls].run if cls in snapshots else None,
                          "kimg": snapshots[cls].kimg if cls in snapshots else None}
                    for cls, r in results.items()},
        "table": workspace.relative(workspace.augmented_table(body_part)),
        "table_rows": {"real": int((table["source"] != "synthetic").sum()),
                       "synthetic": int((table["source"] == "synthetic").sum())},
    }
    return atomic_write_json(workspace.synth_summary(body_part), summary)


# --- notebook helpers ---------------------------------------------------------------------------------------

def sharpening_pairs(snapshot: Snapshot, cls: str, seeds: Sequence[int], truncation_psi: float = DEFAULT_PSI,
                     sharpen_factor: float = DEFAULT_SHARPEN_FACTOR, contrast: Optional[float] = None,
                     device=None) -> List[Tuple[Image.Image, Image.Image]]:
    """(as generated, sharpened) image pairs for a few seeds, to show what sharpening does."""
    from mura_aug.gan.network_file import load_generator

    G = load_generator(snapshot.path, device=resolve_device(device))
    return [(to_pil(array), sharpen(to_pil(array), sharpen_factor, contrast))
            for _, array in generate_images(G, list(seeds), truncation_psi, cls, device=device, progress=False)]


def results_table(results: Dict[str, SynthResult]):
    """One row per class: fakes asked for, generated now, already there, seconds, images per second."""
    import pandas as pd

    return pd.DataFrame([{"class": cls, "fakes": len(r.rows), "generated now": r.generated,
                          "already there": r.skipped, "seconds": round(r.seconds, 1),
                          "images/s": round(r.generated / r.seconds, 1) if r.generated and r.seconds > 0 else None}
                         for cls, r in results.items()])


def _resolution_from_options(run_dir: Path) -> Optional[int]:
    """`resolution` (pixels) from a run folder's training_options.json, None when absent."""
    try:
        options = json.loads(RunFolder(run_dir).options.read_text())
        return int(options["resolution"]) if options.get("resolution") else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def run_resolution(snapshot: Snapshot) -> Optional[int]:
    """The run's image resolution (pixels) from training_options.json or the network file."""
    found = _resolution_from_options(snapshot.path.parent)
    if found:
        return found
    import torch

    try:
        payload = torch.load(snapshot.path, map_location="cpu", weights_only=True)
        return int(payload.get("resolution") or payload["G_kwargs"]["img_resolution"])
    except Exception:
        return None


def cut_run_grids(workspace: Workspace, snapshots: Dict[str, Snapshot], body_part: str = "XR_SHOULDER",
                  sharpen_factor: float = DEFAULT_SHARPEN_FACTOR, contrast: Optional[float] = None
                  ) -> Dict[str, SynthResult]:
    """Cut the fakes grid saved with each class's snapshot into tiles (as the original work did).

    A conditional run's grid mixes both classes and is skipped.
    """
    results = {}
    for cls, snap in snapshots.items():
        if snap.label == "both":
            print(f"{cls}: {snap.run} is class-conditional, its grid mixes classes; not cut.")
            continue
        grid = RunFolder(snap.path.parent).fakes(snap.kimg)
        if not grid.is_file():
            print(f"{cls}: no fakes grid {grid.name} in {snap.run}; nothing to cut.")
            continue
        results[cls] = cut_grid_to_fakes(workspace, grid, cls, body_part, tile_size=run_resolution(snap),
                                         sharpen_factor=sharpen_factor, contrast=contrast, run=snap.run,
                                         kimg=snap.kimg)
    write_augmented_table(workspace, body_part)
    return results


def run_discriminator_scorer(snapshots: Dict[str, Snapshot], device=None
                             ) -> Callable[[Sequence[Path], str], np.ndarray]:
    """A scorer that judges each class's fakes with the discriminator of the run that made them
    (the state file saved with the snapshot, else the run's newest state)."""
    scorers: Dict[str, Callable] = {}
    for cls, snap in snapshots.items():
        if snap.path.suffix == ".pkl":
            scorers[cls] = discriminator_scorer(load_discriminator(snap.path, device), device=device)
            continue
        run = RunFolder(snap.path.parent)
        states = [run.state(snap.kimg)] if run.state(snap.kimg).is_file() else run.state_files()[-1:]
        if not states:
            raise UserError(f"The run {snap.run} keeps no state-*kimg.pt file, so it has no discriminator to "
                            "score realism with.",
                            "Set DROP_FRACTION = 0 (or --drop-fraction 0), or use a run whose states were kept.")
        scorers[cls] = discriminator_scorer(load_discriminator(states[0], device), device=device)

    def score(paths: Sequence[Path], cls: str) -> np.ndarray:
        return scorers[cls](paths, cls)

    return score


def sample_real_and_fake(workspace: Workspace, body_part: str = "XR_SHOULDER", n: int = 8, seed: int = 0):
    """Up to `n` real training images and `n` kept fakes per class: ({cls: paths}, {cls: paths})."""
    import pandas as pd

    table_file = workspace.augmented_table(body_part)
    if not table_file.is_file():
        raise UserError(f"No augmented table {table_file}.", "Run the generation step of stage 05 first.")
    table = pd.read_csv(table_file)
    real, fake = {}, {}
    for cls in CLASSES:
        of_class = table[table["class"] == cls]
        for target, rows in ((real, of_class[of_class["source"] != "synthetic"]),
                             (fake, of_class[of_class["source"] == "synthetic"])):
            picked = rows.sample(n=min(n, len(rows)), random_state=seed) if len(rows) else rows
            target[cls] = [workspace.root / p for p in picked["path"]]
    return real, fake


# --- filtering ----------------------------------------------------------------------------------------------

def load_rgb_batch(paths: Sequence[Path], size: int) -> np.ndarray:
    """Images as N x 3 x size x size uint8 (grayscale copied to 3 channels)."""
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


def near_duplicates(paths: Sequence[Path], threshold: float, thumb_px: int = 32) -> Dict[int, Tuple[int, float]]:
    """Indices of images that are near-duplicates of an earlier one -> (index of that one, distance).

    distance = mean absolute difference of `thumb_px` grayscale thumbnails, in grey levels (0-255);
    an image closer than `threshold` to an earlier kept image is a duplicate.
    """
    thumbs = []
    for path in paths:
        thumbs.append(np.asarray(open_gray(path).resize((thumb_px, thumb_px), Image.BILINEAR),
                                 dtype=np.float32).ravel())
    duplicates: Dict[int, Tuple[int, float]] = {}
    kept: List[int] = []
    stack = np.stack(thumbs) if thumbs else np.zeros([0, thumb_px * thumb_px], np.float32)
    for i in range(len(thumbs)):
        if kept:
            distances = np.abs(stack[kept] - stack[i]).mean(axis=1)
            j = int(np.argmin(distances))
            if distances[j] < threshold:
                duplicates[i] = (kept[j], float(distances[j]))
                continue
        kept.append(i)
    return duplicates


def load_discriminator(path: PathLike, device=None):
    """D from a full training state (`state-*.pt` with `D_kwargs` and `D`) or an NVlabs .pkl."""
    import torch

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

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UserError(f"The state file {path} cannot be read ({type(exc).__name__}).",
                            "Use an earlier state-*kimg.pt of the run.") from exc
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


def discriminator_scorer(D, batch_size: int = 32, device=None) -> Callable[[Sequence[Path], str], np.ndarray]:
    """A scorer(paths, cls) -> realism logits (higher = more real) from a discriminator."""
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


def classifier_scorer(model, image_size: int = 224, batch_size: int = 32, device=None
                      ) -> Callable[[Sequence[Path], str], np.ndarray]:
    """A scorer(paths, cls) -> the classifier's confidence (0-1) that each fake shows `cls`.

    `model` maps N x 3 x image_size x image_size float images (ImageNet-normalised) to one logit
    (positive = abnormal) or to two logits (index = label).
    """
    import torch

    device = resolve_device(device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
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


def filter_fakes(workspace=None, body_part: str = "XR_SHOULDER", duplicate_threshold: Optional[float] = None,
                 drop_fraction: float = 0.0, scorer: Optional[Callable] = None, min_score: Optional[float] = None,
                 classes: Sequence[str] = CLASSES, progress: bool = True, exclude_memorised: bool = False,
                 memorisation_threshold: Optional[float] = None):
    """Mark fakes as dropped in the manifest and rebuild the augmented table; return the dropped rows.

    duplicate_threshold: grey levels (0-255, mean absolute difference of 32 px thumbnails) below which a fake
        is a near-duplicate of an earlier one; None = no duplicate check.
    drop_fraction: share (0-1) of each class's remaining fakes with the lowest `scorer` score to drop.
    min_score: drop every fake scoring below this (in the scorer's units) as well.
    scorer: scorer(paths, cls) -> scores, higher = more realistic (`discriminator_scorer`,
        `classifier_scorer`). Filtering starts from scratch each call, so it can be rerun with new thresholds.
    exclude_memorised: drop fakes that are (near) copies of a real training image of their class (they could
        leak a patient's X-ray), judged by `mura_aug.metrics.memorisation` against stage 01's GAN dataset.
    memorisation_threshold: RMS grey-level difference (0-1) below which a fake counts as a copy; None = the
        adaptive rule of `mura_aug.metrics` (a fraction of the typical gap between two real images).
    """
    from tqdm.auto import tqdm

    workspace = resolve_workspace(workspace)
    if not 0 <= drop_fraction < 1:
        raise UserError(f"drop_fraction={drop_fraction} is outside [0, 1).", "Use e.g. 0.1 to drop the worst 10 %.")
    if (drop_fraction > 0 or min_score is not None) and scorer is None:
        raise UserError("Dropping the least realistic fakes needs a scorer.",
                        "Pass a discriminator (--discriminator state-*.pt) or a classifier scorer.")
    manifest = read_manifest(workspace)
    mine = (manifest["body_part"] == body_part) & manifest["class"].isin(list(classes))
    manifest.loc[mine, "dropped"] = False
    manifest.loc[mine, "drop_reason"] = ""
    manifest.loc[mine, "score"] = None
    manifest["score"] = manifest["score"].astype(object)
    for cls in tqdm(list(classes), desc="filtering", disable=not progress):
        on_disk = np.array([(workspace.root / p).is_file() for p in manifest["path"]], dtype=bool)
        index = manifest.index[(mine & (manifest["class"] == cls)).to_numpy() & on_disk]
        paths = [workspace.root / p for p in manifest.loc[index, "path"]]
        if exclude_memorised and paths:
            for i, (real_name, distance, threshold) in _memorised_fakes(workspace, body_part, cls, paths,
                                                                                   memorisation_threshold).items():
                manifest.loc[index[i], ["dropped", "drop_reason"]] = [
                    True, f"memorised: copy of real image {real_name} (distance {distance:.4f} < {threshold:.4f})"]
        if duplicate_threshold is not None and len(paths) > 1:
            for i, (j, distance) in near_duplicates(paths, float(duplicate_threshold)).items():
                manifest.loc[index[i], ["dropped", "drop_reason"]] = [
                    True, f"near-duplicate of {Path(paths[j]).name} (distance {distance:.2f} < "
                          f"{duplicate_threshold})"]
        if scorer is not None:
            remaining = [k for k in index if not manifest.at[k, "dropped"]]
            scores = scorer([workspace.root / manifest.at[k, "path"] for k in remaining], cls)
            for k, value in zip(remaining, scores):
                manifest.at[k, "score"] = float(value)
            n_drop = int(math.floor(drop_fraction * len(remaining)))
            cutoff = float(np.sort(scores)[n_drop - 1]) if n_drop > 0 else -math.inf
            order = np.argsort(scores, kind="stable")
            worst = set(order[:n_drop].tolist())
            for position, k in enumerate(remaining):
                value = float(scores[position])
                if position in worst:
                    manifest.loc[k, ["dropped", "drop_reason"]] = [
                        True, f"least realistic {drop_fraction:.0%} (score {value:.3f} <= {cutoff:.3f})"]
                elif min_score is not None and value < min_score:
                    manifest.loc[k, ["dropped", "drop_reason"]] = [True, f"score {value:.3f} < {min_score}"]
    write_manifest(workspace, manifest)
    write_augmented_table(workspace, body_part)
    return manifest[mine & manifest["dropped"]][["path", "class", "drop_reason", "score"]].reset_index(drop=True)


def _memorised_fakes(workspace: Workspace, body_part: str, cls: str, paths: Sequence[Path],
                     threshold: Optional[float] = None) -> Dict[int, Tuple[str, float, float]]:
    """{index in paths: (nearest real dataset member, its distance, the threshold)} for fakes that copy a real."""
    from mura_aug import metrics
    from mura_aug.gan.dataset import load_real_images

    fakes = metrics.read_image_files(paths)
    resolution = int(fakes.shape[-1])
    dataset = workspace.dataset_zip(body_part, cls, resolution)
    if not dataset.is_file():
        raise UserError(f"Excluding memorised fakes needs the {cls} GAN dataset at {resolution} px, which is "
                        f"missing ({dataset}).",
                        f"Run stage 01 (prepare) with RESOLUTION = {resolution}, or turn memorisation "
                        "filtering off.")
    reals, names = load_real_images(workspace, body_part, cls, resolution)
    report = metrics.memorisation(fakes, reals, threshold=threshold)
    return {i: (str(names[report.nearest_real[i]]), float(report.distance[i]), report.threshold)
            for i in np.flatnonzero(report.flagged)}


# --- CLI ----------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, help="workspace folder (default: Drive in Colab, ./workspace)")
    parser.add_argument("--body-part", default="XR_SHOULDER", help="MURA body part, e.g. XR_SHOULDER")
    parser.add_argument("--n-per-class", type=int, default=100, help="fakes to generate per class")
    parser.add_argument("--seed", type=int, default=0, help="first seed; fakes use seeds SEED..SEED+N-1")
    parser.add_argument("--psi", type=float, default=DEFAULT_PSI, help="truncation psi (1 = none)")
    parser.add_argument("--sharpen", type=float, default=DEFAULT_SHARPEN_FACTOR,
                        help="PIL Sharpness factor (1 = none, 2 = original work)")
    parser.add_argument("--contrast", type=float, default=None, help="optional PIL Contrast factor (1 = none)")
    parser.add_argument("--runs", nargs="+", default=None,
                        help="run names / folders / snapshot files (default: the newest run per class); "
                             "CLASS=RUN pairs pick a run per class")
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=CLASSES, help="classes to make")
    parser.add_argument("--batch", type=int, default=16, help="images per generator call")
    parser.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda' or 'cuda:N'")
    grid = parser.add_argument_group("cut a grid instead of generating")
    grid.add_argument("--grid", nargs="+", default=None, help="fakes*.png grid images to cut into tiles")
    grid.add_argument("--grid-class", choices=CLASSES, default=None, help="class the grid images show")
    grid.add_argument("--tile-size", type=int, default=None,
                      help="tile size in pixels (default: the resolution in the run's training_options.json)")
    grid.add_argument("--rows", type=int, default=None, help="rows of tiles (instead of --tile-size)")
    grid.add_argument("--cols", type=int, default=None, help="columns of tiles (instead of --tile-size)")
    filt = parser.add_argument_group("filtering (optional)")
    filt.add_argument("--dedupe", type=float, default=None,
                      help="drop near-duplicates closer than this (grey levels 0-255 on 32 px thumbnails), e.g. 3")
    filt.add_argument("--drop-fraction", type=float, default=0.0,
                      help="drop this share (0-1) of each class's least realistic fakes by discriminator score")
    filt.add_argument("--exclude-memorised", action=argparse.BooleanOptionalAction, default=True,
                      help="drop fakes that are (near) copies of a real training image, as they could leak a "
                           "patient's X-ray (default: on; --no-exclude-memorised keeps them)")
    filt.add_argument("--discriminator", default=None,
                      help="state-*kimg.pt or NVlabs .pkl whose D scores realism (default: the state file of each "
                           "class's run; required with --grid)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _parse_runs(values: Optional[List[str]]):
    if not values:
        return None
    if all("=" in v for v in values):
        return dict(v.split("=", 1) for v in values)
    if any("=" in v for v in values):
        raise UserError("--runs mixes CLASS=RUN pairs with plain runs.", "Use either form, not both.")
    return values


def run(args: argparse.Namespace) -> int:
    workspace = resolve_workspace(args.workspace)
    progress = not args.no_progress
    if args.grid:
        if args.grid_class is None:
            raise UserError("--grid needs --grid-class (which class the grid images show).",
                            "Add --grid-class positive or --grid-class negative.")
        for grid in args.grid:
            result = cut_grid_to_fakes(workspace, grid, args.grid_class, args.body_part, args.tile_size, args.rows,
                                       args.cols, sharpen_factor=args.sharpen, contrast=args.contrast)
            print(f"{grid}: {len(result.rows)} tiles ({result.generated} written, {result.skipped} already there)")
        table = write_augmented_table(workspace, args.body_part)
    else:
        results = synthesize(workspace, args.body_part, args.n_per_class, args.seed, args.psi, args.sharpen,
                             args.contrast, _parse_runs(args.runs), args.classes, args.batch, args.device, progress)
        for cls, result in results.items():
            rate = result.generated / result.seconds if result.seconds > 0 and result.generated else 0.0
            print(f"{cls}: {len(result.rows)} fakes ({result.generated} generated, {result.skipped} already there"
                  f"{f', {rate:.1f} img/s' if rate else ''})")
    if args.dedupe is not None or args.drop_fraction > 0 or args.exclude_memorised:
        scorer = None
        if args.discriminator:
            scorer = discriminator_scorer(load_discriminator(args.discriminator, args.device), device=args.device)
        elif args.drop_fraction > 0 and not args.grid:  # each class judged by its own run's discriminator
            scorer = run_discriminator_scorer(find_snapshots(workspace, args.body_part, _parse_runs(args.runs),
                                                             args.classes), device=args.device)
        dropped = filter_fakes(workspace, args.body_part, args.dedupe, args.drop_fraction, scorer,
                               classes=args.classes, progress=progress, exclude_memorised=args.exclude_memorised)
        print(f"dropped {len(dropped)} fakes:")
        for row in dropped.itertuples():
            print(f"  {row.path}: {row.drop_reason}")
    table = write_augmented_table(workspace, args.body_part)
    print(f"{workspace.augmented_table(args.body_part)}: {int((table['source'] == 'real').sum())} real + "
          f"{int((table['source'] == 'synthetic').sum())} synthetic rows")
    return 0
