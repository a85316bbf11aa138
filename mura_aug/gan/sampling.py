"""Seeds to images: the one rule for turning a seed into a latent, a class into G's label vector, and G's
output into 8-bit pixels.

Stage 05's fakes, the metrics, the fakes grid of every snapshot and the classroom widgets all draw through
here, so seed 7 is the same image everywhere, and the same image NVIDIA's generate.py draws for seed 7
(z = numpy.random.RandomState(seed).randn(z_dim)).
"""
from __future__ import annotations

from typing import Iterator, Sequence, Tuple, Union

import numpy as np

from mura_aug.errors import UserError

SEED_LIMIT = 2 ** 32  # numpy RandomState seeds must be below this
CLASS_LABEL = {"negative": 0, "positive": 1}  # the one-hot column of a class-conditional G (docs/contracts.md)

ClassSpec = Union[None, str, int, Sequence[Union[str, int]]]


def check_seeds(seeds: Sequence[int]) -> list:
    """The seeds as ints; UserError naming the first one outside 0 .. 2^32 - 1."""
    seeds = [int(seed) for seed in seeds]
    bad = [seed for seed in seeds if not 0 <= seed < SEED_LIMIT]
    if bad:
        raise UserError(f"Seed {bad[0]} is out of range.", f"Use seeds between 0 and {SEED_LIMIT - 1}.")
    return seeds


def seed_latents(z_dim: int, seeds: Sequence[int]) -> np.ndarray:
    """float32 [len(seeds), z_dim]: the latent of each seed, drawn as NVIDIA's generate.py draws it."""
    seeds = check_seeds(seeds)
    if not seeds:
        return np.zeros((0, int(z_dim)), dtype=np.float32)
    return np.stack([np.random.RandomState(seed).randn(int(z_dim)) for seed in seeds]).astype(np.float32)


def class_vectors(c_dim: int, classes: ClassSpec, count: int) -> np.ndarray:
    """float32 [count, c_dim]: one-hot label vectors (column = label: 0 negative, 1 positive).

    `classes`: one class for all images ('positive', 'negative', 0 or 1) or one per image; ignored (an empty
    vector) for an unconditional G (c_dim 0). A conditional G needs them."""
    c_dim, count = int(c_dim), int(count)
    vectors = np.zeros((count, c_dim), dtype=np.float32)
    if c_dim == 0:
        return vectors
    if classes is None:
        raise UserError(f"The generator is class-conditional (c_dim={c_dim}) and needs a class for its images.",
                        "Pass class 'positive' or 'negative'.")
    per_image = [classes] * count if isinstance(classes, (str, int, np.integer)) else list(classes)
    if len(per_image) != count:
        raise UserError(f"{len(per_image)} classes were given for {count} images.", "Give one class per image.")
    for index, cls in enumerate(per_image):
        label = CLASS_LABEL.get(cls, cls) if isinstance(cls, str) else int(cls)
        if label not in (0, 1) or label >= c_dim:
            raise UserError(f"Unknown class {cls!r} for a generator with c_dim={c_dim}.",
                            "Use 'positive' or 'negative' (or the labels 1 and 0).")
        vectors[index, label] = 1.0
    return vectors


def to_uint8(images) -> np.ndarray:
    """NCHW float images in about [-1, 1] (a torch tensor) -> uint8 NCHW numpy (NVIDIA's conversion)."""
    import torch

    return (images.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy()


def generate(G, seeds: Sequence[int], classes: ClassSpec = None, truncation_psi: float = 1.0,
             noise_mode: str = "const", batch_size: int = 16, device=None, progress: bool = False,
             desc: str = "generating") -> Iterator[Tuple[list, np.ndarray]]:
    """Yield (seeds of the batch, uint8 NCHW images) for `seeds`, `batch_size` images per generator call.

    Deterministic per seed: z comes from the seed alone and noise_mode 'const' uses G's fixed noise. G runs in
    eval mode and is left in the mode it was in, on `device` (None: where it is); no random generator of torch,
    numpy or Python is touched."""
    import torch
    from tqdm.auto import tqdm

    from mura_aug.devices import resolve_device

    if int(batch_size) < 1:
        raise UserError(f"batch_size={batch_size} is not positive.", "Use 1 or more (16-64 on a GPU).")
    seeds = check_seeds(seeds)
    if device is not None:
        G.to(resolve_device(device))  # modules move in place: G stays on that device afterwards
    device = next(G.parameters()).device
    labels = class_vectors(G.c_dim, classes, len(seeds))
    was_training = G.training
    G.eval()
    try:
        with tqdm(total=len(seeds), desc=desc, unit="img", disable=not progress, leave=False) as bar, \
                torch.no_grad():
            for start in range(0, len(seeds), int(batch_size)):
                chunk = seeds[start:start + int(batch_size)]
                z = torch.from_numpy(seed_latents(G.z_dim, chunk)).to(device)
                c = torch.from_numpy(labels[start:start + len(chunk)]).to(device)
                yield chunk, to_uint8(G(z, c, truncation_psi=truncation_psi, noise_mode=noise_mode))
                bar.update(len(chunk))
    finally:
        G.train(was_training)


def generate_array(G, seeds: Sequence[int], classes: ClassSpec = None, **kwargs) -> np.ndarray:
    """uint8 NCHW images of all `seeds` in one array (see `generate` for the arguments)."""
    batches = [images for _, images in generate(G, seeds, classes, **kwargs)]
    if not batches:
        return np.zeros((0, int(G.img_channels), int(G.img_resolution), int(G.img_resolution)), dtype=np.uint8)
    return np.concatenate(batches)
