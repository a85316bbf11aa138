"""Stage 05's generation: N fakes per class from a snapshot's G_ema, each saved as an 8-bit grey PNG, sharpened.

Seeds, latents and G's pixels come from `mura_aug.gan.sampling` (seed 7 is the same image everywhere). G draws
three channels (NVIDIA transfer needs them); every fake is turned into grey by the luma rule stage 01 applies
to its inputs (`mura_aug.imaging.to_grey`), then sharpened (PIL `ImageEnhance.Sharpness`, factor 2 as in the
original work; optional contrast), and saved to
`data/Augmented_Fakes/{positive,negative}/<BODY>/<run>_kimg<K>_seed<seed:06d>.png` (atomically) and listed in
the manifest. Names are deterministic and the manifest is keyed by path, so a rerun skips what is done.
"""
from __future__ import annotations

import io
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance

from mura_aug.devices import resolve_device
from mura_aug.errors import UserError
from mura_aug.gan import sampling
from mura_aug.imaging import grey_image, to_grey
from mura_aug.synth.manifest import SynthResult, is_done, manifest_row, merge_manifest, read_manifest, write_manifest
from mura_aug.synth.settings import SynthSettings
from mura_aug.synth.snapshots import Snapshot
from mura_aug.workspace import Workspace, atomic_write_bytes

PathLike = Union[str, os.PathLike]
SAVE_THREADS = 4  # threads that sharpen, encode and write fakes while the generator runs
SAVE_QUEUE_IMAGES = 256  # generated images waiting to be written, at most (256 px RGB: 50 MB)
MANIFEST_EVERY_IMAGES = 500  # the manifest is rewritten after this many new fakes
DEFAULT = SynthSettings()  # the keyword defaults below are the settings' own


# --- what a fake looks like ------------------------------------------------------------------------------

def open_gray(path: PathLike) -> Image.Image:
    """Any image file (8- or 16-bit grey, RGB, RGBA, palette) as 8-bit grey; UserError when unreadable."""
    try:
        with Image.open(path) as handle:
            handle.load()
            image = handle.copy()
    except Exception as exc:
        raise UserError(f"The image {path} cannot be read ({type(exc).__name__}: {exc}).",
                        "Rerun the stage that wrote it (01 for real images, 05 for fakes) to restore it.") from exc
    # stage 01's rule for every mode: 16-bit / float stretched by its own range, alpha composited on black
    return to_grey(image)


def sharpen(image: Image.Image, factor: float = DEFAULT.sharpen_factor, contrast: Optional[float] = None
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


def finish(image: Image.Image, sharpen_factor: float, contrast: Optional[float]) -> Image.Image:
    """A fake as it is saved, the one rule for generated fakes and grid tiles: grey first (so sharpening works on
    the pixels that are kept), then sharpened."""
    return sharpen(to_grey(image), sharpen_factor, contrast)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- generation -----------------------------------------------------------------------------------------

def generate_images(G, seeds: Sequence[int], truncation_psi: float = DEFAULT.truncation_psi,
                    cls: Optional[str] = None, batch_size: int = DEFAULT.batch, device=None,
                    noise_mode: str = "const", progress: bool = True) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield (seed, HWC uint8 image as G draws it, all its channels) for each seed, `batch_size` per G call
    (`mura_aug.gan.sampling.generate`). `grey_image` turns one into what is saved and shown."""
    for chunk, images in sampling.generate(G, seeds, cls, truncation_psi=truncation_psi, noise_mode=noise_mode,
                                           batch_size=batch_size, device=resolve_device(device), progress=progress,
                                           desc=f"generating {cls or ''}".strip()):
        for seed, image in zip(chunk, images):
            yield seed, image.transpose(1, 2, 0)


def synthesize_class(workspace: Workspace, snapshot: Snapshot, cls: str, n: int, seed: int = DEFAULT.seed,
                     truncation_psi: float = DEFAULT.truncation_psi, sharpen_factor: float = DEFAULT.sharpen_factor,
                     contrast: Optional[float] = DEFAULT.contrast, body_part: str = DEFAULT.body_part,
                     batch_size: int = DEFAULT.batch, device=None, progress: bool = True,
                     generator_cache: Optional[dict] = None) -> SynthResult:
    """Generate `n` fakes of `cls` with seeds seed..seed+n-1, grey them, sharpen, save, list in the manifest
    (judged by no filter yet).

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
        row = manifest_row(rel, cls, body_part, snapshot, s, source_grid="", tile=None, **settings)
        rows.append(row)
        if not is_done(known, workspace, rel, **settings):
            todo.append((s, rel, row))
    if todo:
        cache = {} if generator_cache is None else generator_cache
        if snapshot.path not in cache:
            cache[snapshot.path] = load_generator(snapshot.path, device=resolve_device(device))
        _generate_and_save(workspace, cache[snapshot.path], cls, todo, manifest, truncation_psi, sharpen_factor,
                           contrast, batch_size, device, progress)
    return SynthResult(rows=rows, generated=len(todo), skipped=n - len(todo),
                       seconds=time.perf_counter() - started)


def _generate_and_save(workspace: Workspace, G, cls: str, todo: List[Tuple[int, str, dict]], manifest,
                       truncation_psi: float, sharpen_factor: float, contrast: Optional[float], batch_size: int,
                       device, progress: bool) -> None:
    by_seed = {s: (rel, row) for s, rel, row in todo}
    fresh: List[dict] = []
    pending: "deque" = deque()  # (future, manifest row) in generation order

    def finish_oldest():
        future, row = pending.popleft()
        future.result()  # re-raises a failed write (full disk -> UserError) here
        fresh.append(row)

    # Greying, sharpening, PNG encoding and the fsyncs of atomic writes run in threads (they release the GIL),
    # so saving overlaps with generating the next batch instead of adding to it.
    pool = ThreadPoolExecutor(max_workers=SAVE_THREADS)
    try:
        for s, array in generate_images(G, list(by_seed), truncation_psi, cls, batch_size, device,
                                        progress=progress):
            rel, row = by_seed[s]
            pending.append((pool.submit(_save_fake, workspace.absolute(rel), array, sharpen_factor, contrast), row))
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


def _save_fake(path: Path, array: np.ndarray, sharpen_factor: float, contrast: Optional[float]) -> None:
    atomic_write_bytes(path, png_bytes(finish(grey_image(array), sharpen_factor, contrast)))


def synthesize(workspace: Workspace, snapshots: Dict[str, Snapshot], settings: SynthSettings, progress: bool = True
               ) -> Dict[str, SynthResult]:
    """N_PER_CLASS fakes of each class from its snapshot."""
    generators: dict = {}  # snapshot path -> loaded G: a conditional run serves both classes, loaded once
    return {cls: synthesize_class(workspace, snapshot, cls, settings.n_per_class, settings.seed,
                                  settings.truncation_psi, settings.sharpen_factor, settings.contrast,
                                  settings.body_part, settings.batch, settings.device, progress,
                                  generator_cache=generators)
            for cls, snapshot in snapshots.items()}


def sharpening_pairs(snapshot: Snapshot, cls: str, seeds: Sequence[int], settings: SynthSettings
                     ) -> List[Tuple[Image.Image, Image.Image]]:
    """(as generated, as saved) grey image pairs for a few seeds, to show what sharpening does."""
    from mura_aug.gan.network_file import load_generator

    G = load_generator(snapshot.path, device=resolve_device(settings.device))
    pairs = []
    for _, array in generate_images(G, list(seeds), settings.truncation_psi, cls, device=settings.device,
                                    progress=False):
        grey = grey_image(array)
        pairs.append((grey, finish(grey, settings.sharpen_factor, settings.contrast)))
    return pairs
