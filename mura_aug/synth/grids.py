"""Cutting fakes grids into fakes, as the original work did.

A grid is ours (`fakes-<K>kimg.png`, written by training) or NVIDIA's (`fakes<K>.png`), or any
torchvision-`make_grid`-style image. `cut_grid` finds its tiles (given the tile size, or rows and columns;
padding between tiles is detected); `cut_grid_to_fakes` saves each tile as an 8-bit grey, sharpened fake
`data/Augmented_Fakes/{positive,negative}/<BODY>/<run>_kimg<K>_tile<index:06d>.png` and lists it in the
manifest (judged by no filter yet). Grids are only read.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from mura_aug.errors import UserError
from mura_aug.synth.generate import DEFAULT, finish, png_bytes
from mura_aug.synth.manifest import SynthResult, is_done, manifest_row, merge_manifest, read_manifest, write_manifest
from mura_aug.synth.snapshots import Snapshot, resolution_from_options, run_resolution
from mura_aug.workspace import RunFolder, Workspace, atomic_write_bytes

PathLike = Union[str, os.PathLike]
MAX_GRID_PADDING_PX = 32  # largest separator width (pixels) that grid cutting looks for


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
    """The tiles of a grid image, row-major, as PIL images in the grid's own mode (greyed when saved)."""
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


def cut_grid_to_fakes(workspace: Workspace, grid_path: PathLike, cls: str, body_part: str = DEFAULT.body_part,
                      tile_size: Optional[int] = None, rows: Optional[int] = None, cols: Optional[int] = None,
                      padding: Optional[int] = None, sharpen_factor: float = DEFAULT.sharpen_factor,
                      contrast: Optional[float] = DEFAULT.contrast, run: Optional[str] = None,
                      kimg: Optional[float] = None) -> SynthResult:
    """Cut a fakes grid into tiles, grey and sharpen each, save them as fakes of `cls`, list them in the manifest.

    `run` defaults to the grid's folder name, `kimg` to the number in the grid's name; the tile size to the
    resolution in the training_options.json beside the grid.
    """
    started = time.perf_counter()
    grid_path = Path(grid_path).expanduser()
    if tile_size is None and rows is None and cols is None:
        tile_size = resolution_from_options(grid_path.parent)  # a grid in its run folder: tiles = run resolution
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
        row = manifest_row(rel, cls, body_part, snapshot, None, source_grid=str(grid_path), tile=index, **settings)
        rows_out.append(row)
        known_row = known.get(rel)
        same_grid = known_row is not None and known_row.get("source_grid") == str(grid_path)
        if not (same_grid and is_done(known, workspace, rel, **settings)):
            atomic_write_bytes(workspace.absolute(rel), png_bytes(finish(tile, sharpen_factor, contrast)))
            fresh.append(row)
    if fresh:
        write_manifest(workspace, merge_manifest(manifest, fresh))
    return SynthResult(rows=rows_out, generated=len(fresh), skipped=len(tiles) - len(fresh),
                       seconds=time.perf_counter() - started)


def cut_given_grids(workspace: Workspace, settings) -> Dict[str, SynthResult]:
    """{grid path: result} for the GRIDS of `settings` (SynthSettings), all showing GRID_CLASS."""
    return {str(grid): cut_grid_to_fakes(workspace, grid, settings.grid_class, settings.body_part,
                                         settings.tile_size, settings.rows, settings.cols,
                                         sharpen_factor=settings.sharpen_factor, contrast=settings.contrast)
            for grid in settings.grids}


def cut_run_grids(workspace: Workspace, snapshots: Dict[str, Snapshot], settings, log=print
                  ) -> Dict[str, SynthResult]:
    """{grid path: result}: the fakes grid saved with each class's snapshot, cut into tiles.

    A conditional run's grid mixes both classes and is not cut; a snapshot without its grid is reported.
    """
    results = {}
    for cls, snap in snapshots.items():
        if snap.label == "both":
            log(f"{cls}: {snap.run} is class-conditional, its grid mixes classes; not cut.")
            continue
        grid = RunFolder(snap.path.parent).fakes(snap.kimg)
        if not grid.is_file():
            log(f"{cls}: no fakes grid {grid.name} in {snap.run}; nothing to cut.")
            continue
        results[str(grid)] = cut_grid_to_fakes(workspace, grid, cls, settings.body_part,
                                               tile_size=settings.tile_size or run_resolution(snap),
                                               sharpen_factor=settings.sharpen_factor, contrast=settings.contrast,
                                               run=snap.run, kimg=snap.kimg)
    return results
