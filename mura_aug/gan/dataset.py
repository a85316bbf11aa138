"""Training images for the GAN: the dataset zip(s) of stage 01, read once into one uint8 array on local disk.

In Colab the workspace is Google Drive, where reading thousands of small PNGs one by one is slow. So the zip
is read once, decoded, resized to the training resolution if needed, and cached as a `.npy` in
`workspace.cache` (the VM's local disk in Colab). Training then memory-maps that array. The cache key holds
the size and modification time of every source zip and the resolution, so a rebuilt dataset is re-read.
Beside the arrays a check file records each one's size and SHA-256, written when they are built and
compared before every use: an array that is cut off, overwritten or replaced by same-size garbage is rebuilt
from the zip (with a message), never trained on.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Tuple

from mura_aug.errors import UserError
from mura_aug.gan.sampling import CLASS_LABEL
from mura_aug.settings import check_resolution
from mura_aug.workspace import Workspace, atomic_path, atomic_write_json, file_sha256

if TYPE_CHECKING:
    import numpy as np

LABELS = ("positive", "negative", "both")
CLASS_NAMES = ["negative", "positive"]  # index = label (sampling.CLASS_LABEL)


def classes_of(label: str) -> List[str]:
    if label not in LABELS:
        raise UserError(f"Unknown label {label!r}.",
                        "Use positive (abnormal), negative (normal) or both (one class-conditional GAN).")
    return ["negative", "positive"] if label == "both" else [label]


def choose_source(workspace: Workspace, body_part: str, cls: str, resolution: Optional[int]) -> Tuple[Path, int]:
    """The dataset zip to train from at `resolution` (None = the largest there is), and its resolution:
    the same resolution, else the smallest larger one (then downsampled)."""
    found = workspace.dataset_resolutions(body_part, cls)
    if not found:
        raise UserError(
            f"No GAN dataset for {body_part} {cls} in {workspace.datasets}.",
            "Run stage 01 first: notebook 01_prepare, or python -m mura_aug prepare --workspace "
            f"{workspace.root} ... (python -m mura_aug prepare --help shows its options).")
    if resolution is None:
        return workspace.dataset_zip(body_part, cls, found[-1]), found[-1]
    larger = [r for r in found if r >= resolution]
    if not larger:
        raise UserError(
            f"The {body_part} {cls} datasets in {workspace.datasets} are {', '.join(map(str, found))} px, "
            f"smaller than the training resolution {resolution} px (upsampling would only blur).",
            f"Train at {found[-1]} px or less, or rerun stage 01 with --resolution {resolution}.")
    return workspace.dataset_zip(body_part, cls, larger[0]), larger[0]


def read_dataset_zip(path: Path, resolution: Optional[int] = None, progress: bool = False,
                     max_images: Optional[int] = None, seed: int = 0) -> Tuple["np.ndarray", List[str]]:
    """Decode the PNGs of an NVlabs-layout dataset zip: (uint8 [N, 3, R, R], member names).

    resolution: resize larger images to it with an antialiasing filter; None keeps their size (which must be
    the same for all). max_images: a random subset (seeded) of that many members, in member order."""
    import numpy as np

    images = None
    with _open_dataset(path) as archive:
        names = _member_names(archive, path, max_images, seed)
        for index, pixels in enumerate(_decoded_members(archive, path, names, resolution, progress)):
            if images is None:
                images = np.empty((len(names), *pixels.shape), dtype=np.uint8)
            images[index] = pixels
    return images, names


def _open_dataset(path: Path) -> zipfile.ZipFile:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No GAN dataset at {path}.",
                        "Run stage 01 (python -m mura_aug prepare, or notebook 01_prepare) with the same body "
                        "part and --resolution as the run.")
    try:
        return zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"The GAN dataset {path} cannot be opened ({exc}); it may be incomplete.",
                        "Delete it and rerun stage 01 (prepare) to rebuild it.") from exc


def _member_names(archive: zipfile.ZipFile, path: Path, max_images: Optional[int] = None,
                  seed: int = 0) -> List[str]:
    import numpy as np

    names = sorted(n for n in archive.namelist() if n.lower().endswith(".png"))
    if not names:
        raise UserError(f"The GAN dataset {path} holds no PNG images.", "Rerun stage 01 (prepare).")
    if max_images is not None and len(names) > max_images:
        picked = np.sort(np.random.default_rng(seed).choice(len(names), max_images, replace=False))
        names = [names[i] for i in picked]
    return names


def _decoded_members(archive: zipfile.ZipFile, path: Path, names: List[str], resolution: Optional[int],
                     progress: bool):
    """uint8 [3, R, R] pixels of each member in turn, all of one size (else a UserError)."""
    import numpy as np
    from PIL import Image
    from tqdm.auto import tqdm

    shape = None
    for name in tqdm(names, desc=f"reading {Path(path).name}", disable=not progress, leave=False):
        try:
            with Image.open(io.BytesIO(archive.read(name))) as image:
                image = image.convert("RGB")
                if resolution is not None and image.size != (resolution, resolution):
                    image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
                pixels = np.asarray(image).transpose(2, 0, 1)
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            raise UserError(f"The image {name} in {path} cannot be decoded ({exc}).",
                            "Delete the dataset zip and rerun stage 01 (prepare) to rebuild it.") from exc
        if shape is None:
            shape = pixels.shape
        elif pixels.shape != shape:
            raise UserError(f"The images in {path} have different sizes ({name}: {pixels.shape[1:]}).",
                            "Rebuild the dataset with stage 01 (python -m mura_aug prepare).")
        yield pixels


def load_real_images(workspace, body_part: str, cls: str, resolution: int, max_images: Optional[int] = None,
                     seed: int = 0, progress: bool = False) -> Tuple["np.ndarray", List[str]]:
    """(uint8 [N, 3, R, R], zip member names) of one class's real training images at `resolution`, from stage
    01's dataset zip; a random subset (seeded) beyond `max_images`.

    Held in memory by design (stage 05's memorisation filter and the metrics compare against all of them):
    N x 3 x R x R bytes, XR_SHOULDER's positive class about 0.8 GB at 256 px and 3.3 GB at 512 px. A machine
    with too little memory gets a UserError before anything is read."""
    from mura_aug.devices import require_memory

    path = Workspace(workspace).dataset_zip(body_part, cls, resolution)
    with _open_dataset(path) as archive:
        count = len(_member_names(archive, path))
    if max_images is not None:
        count = min(count, int(max_images))
    require_memory(count * 3 * int(resolution) ** 2, f"Holding the {count} real {cls} images of {body_part} at "
                   f"{resolution} px", "Use a machine with more memory (a Colab high-RAM runtime), a lower "
                   "resolution, or fewer images (max_images / MAX_REALS where the stage offers it).")
    return read_dataset_zip(path, None, progress=progress, max_images=max_images, seed=seed)


def _cache_key(sources: List[Path], resolution: int) -> str:
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sources]
    return hashlib.sha1(("|".join(parts) + f"|{resolution}").encode()).hexdigest()[:12]


def load_training_images(workspace, body_part: str = "XR_SHOULDER", label: str = "positive",
                         resolution: Optional[int] = None, progress: bool = False, mmap: bool = True,
                         log: Callable[[str], None] = print):
    """(images uint8 [N, 3, R, R], labels int64 [N]) for `label` ('positive', 'negative' or 'both';
    labels 0 = negative, 1 = positive). Cached in workspace.cache after the first call and checked against
    its checksums at every call (a bad cache is rebuilt, `log` says so); memory-mapped (read only) when
    `mmap`."""
    import numpy as np

    workspace = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    classes = classes_of(label)
    if resolution is not None:
        resolution = check_resolution(resolution)
    sources = []
    for cls in classes:
        sources.append(choose_source(workspace, body_part, cls, resolution))
    if resolution is None:
        resolution = min(res for _, res in sources)
    resolution = check_resolution(resolution)
    paths = [path for path, _ in sources]
    key = _cache_key(paths, resolution)
    images_file, labels_file = workspace.training_array(body_part, label, resolution, key)
    check_file = workspace.training_array_check(body_part, label, resolution, key)
    problem = _cache_problem(images_file, labels_file, check_file)
    if problem is not None:
        if problem != NOT_BUILT:
            log(f"The cached training array {images_file} {problem}: rebuilding it from "
                f"{', '.join(path.name for path in paths)}.")
        for stale in workspace.stale_training_arrays(body_part, label, resolution):
            stale.unlink(missing_ok=True)  # an older version of the same dataset, or the bad one
        labels, images_check = _stream_npy(images_file, classes, paths, resolution, progress)
        # The check file comes last: arrays without one (a build cut off in between) are rebuilt next time.
        atomic_write_json(check_file, {"sources": [path.name for path in paths], "resolution": resolution,
                                       "files": {images_file.name: images_check,
                                                 labels_file.name: _save_npy(labels_file, labels)}})
    try:
        images = np.load(images_file, mmap_mode="r" if mmap else None)
        labels = np.load(labels_file)
    except (OSError, ValueError) as exc:
        images_file.unlink(missing_ok=True)
        raise UserError(f"The cached training array {images_file} is unreadable ({exc}); it was removed.",
                        "Run again: it is rebuilt from the dataset zip.") from exc
    return images, labels


def _stream_npy(images_file: Path, classes: List[str], paths: List[Path], resolution: int, progress: bool):
    """Decode the classes' zips image by image straight into the .npy file; returns the labels and the file's
    {"bytes", "sha256"}, hashed as it is written.

    One image in memory at a time: a class of XR_SHOULDER is 0.8 GB at 256 px and 3.3 GB at 512 px, and both
    classes together twice that, which a list of arrays plus np.concatenate held twice over.
    """
    import numpy as np

    archives = [_open_dataset(path) for path in paths]
    try:
        names = [_member_names(archive, path) for archive, path in zip(archives, paths)]
        shape = (sum(len(n) for n in names), 3, resolution, resolution)
        with atomic_path(images_file) as tmp:
            with open(tmp, "wb") as raw:
                handle = _HashingWriter(raw)
                np.lib.format.write_array_header_1_0(
                    handle, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                             "shape": shape})
                for archive, path, members in zip(archives, paths, names):
                    for pixels in _decoded_members(archive, path, members, resolution, progress):
                        if pixels.shape != shape[1:]:
                            raise UserError(f"The images in {path} are {pixels.shape[2]} px, not {resolution}.",
                                            "Rebuild the dataset with stage 01 (python -m mura_aug prepare).")
                        handle.write(np.ascontiguousarray(pixels).tobytes())
                raw.flush()
    finally:
        for archive in archives:
            archive.close()
    labels = np.concatenate([np.full(len(n), CLASS_LABEL[cls], dtype=np.int64) for cls, n in zip(classes, names)])
    return labels, {"bytes": handle.size, "sha256": handle.digest.hexdigest()}


def _save_npy(path: Path, array) -> Dict[str, object]:
    """Write `array` as .npy atomically; returns {"bytes", "sha256"} of the file, hashed as it is written."""
    import numpy as np

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            hashing = _HashingWriter(handle)
            np.save(hashing, array)
            handle.flush()
    return {"bytes": hashing.size, "sha256": hashing.digest.hexdigest()}


class _HashingWriter:
    """A binary file that also hashes what goes through it (np.save writes into it)."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.handle.write(data)


NOT_BUILT = "is not built yet"


def _cache_problem(images_file: Path, labels_file: Path, check_file: Path) -> Optional[str]:
    """None when both cached arrays match their check file; else what is wrong, as words after the file name."""
    missing = [path.name for path in (images_file, labels_file) if not path.is_file()]
    if len(missing) == 2:
        return NOT_BUILT
    if missing:
        return f"is incomplete ({missing[0]} is missing)"
    try:
        recorded = json.loads(check_file.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "has no checksum (made by an older version, or its build was cut off)"
    for path in (images_file, labels_file):
        expected = recorded.get(path.name) if isinstance(recorded, dict) else None
        if not isinstance(expected, dict):
            return f"has no checksum for {path.name}"
        try:
            if path.stat().st_size != expected.get("bytes"):
                return f"has the wrong size ({path.name}: {path.stat().st_size} bytes, {expected.get('bytes')} " \
                       "written)"
            digest = file_sha256(path)
        except OSError as exc:
            return f"cannot be read ({exc.strerror or exc})"
        if digest != expected.get("sha256"):
            return f"does not match its checksum ({path.name} was changed after it was written)"
    return None


class DataSampler:
    """Endless shuffled minibatch indices over N images (and their mirror images when `mirror`).

    Its random state is a numpy PCG64 generator whose state (plain ints) goes into every training state, so
    a resumed run draws exactly the images the uninterrupted run would have drawn.
    """

    def __init__(self, num_images: int, seed: int = 0, mirror: bool = False):
        import numpy as np

        if num_images < 1:
            raise UserError("The training set is empty.", "Rerun stage 01 (prepare) and check its summary.")
        self.num_images = int(num_images)
        self.mirror = bool(mirror)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.order = self.rng.permutation(self.size)
        self.position = 0

    @property
    def size(self) -> int:
        return self.num_images * (2 if self.mirror else 1)

    def next_indices(self, count: int):
        """(image indices, x-flip flags) of the next `count` items, reshuffling at every epoch."""
        import numpy as np

        picked = []
        while len(picked) < count:
            if self.position >= len(self.order):
                self.order = self.rng.permutation(self.size)
                self.position = 0
            take = min(count - len(picked), len(self.order) - self.position)
            picked.extend(self.order[self.position:self.position + take].tolist())
            self.position += take
        picked = np.asarray(picked, dtype=np.int64)
        return picked % self.num_images, picked >= self.num_images

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": [int(i) for i in self.order],
                "position": int(self.position), "num_images": self.num_images, "mirror": self.mirror}

    def load_state_dict(self, state: dict) -> None:
        import numpy as np

        if int(state["num_images"]) != self.num_images or bool(state["mirror"]) != self.mirror:
            raise UserError(
                f"The training set changed since this run started ({state['num_images']} images then, "
                f"{self.num_images} now), so the run cannot continue exactly.",
                "Resume with the dataset the run started with, or start a new run (or use --transfer).")
        self.rng.bit_generator.state = state["rng"]
        self.order = np.asarray(state["order"], dtype=np.int64)
        self.position = int(state["position"])


def batch_tensors(images, labels, indices, flips, c_dim: int, device):
    """(real images float [-1, 1] NCHW, one-hot labels [N, c_dim]) for the sampled indices."""
    import numpy as np
    import torch

    batch = np.array(images[indices])  # a copy: the memory-mapped array is read only
    if flips.any():
        batch[flips] = batch[flips][..., ::-1]  # x-flip: mirror the width axis
    img = torch.from_numpy(batch).to(device).to(torch.float32) / 127.5 - 1
    c = torch.zeros(len(indices), c_dim, device=device)
    if c_dim > 0:
        c[torch.arange(len(indices)), torch.from_numpy(labels[indices]).to(device)] = 1
    return img, c

