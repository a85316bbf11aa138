"""Shared by the stage-05 tests (test_synth, test_widgets, test_notebook_05): tiny generators, run folders as
training leaves them, and grids of known tiles."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mura_aug.workspace import RunFolder

TINY_G = dict(z_dim=32, w_dim=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=256, channel_max=32))
TINY_D = dict(c_dim=0, img_channels=3, channel_base=256, channel_max=32)


def tiny_generator(c_dim=0, torch_seed=0, resolution=32):
    from mura_aug.gan.networks import Generator

    torch.manual_seed(torch_seed)
    return Generator(c_dim=c_dim, img_resolution=resolution, **TINY_G).eval()


def add_tiny_run(workspace, label, kimg=4.0, torch_seed=0, body_part="XR_SHOULDER", resolution=32):
    """A run folder with one inference file of a freshly initialised tiny generator; returns its path."""
    from mura_aug.gan.network_file import save_network_file

    run = f"{body_part}-{label}-tiny-{resolution}"
    G = tiny_generator(c_dim=2 if label == "both" else 0, torch_seed=torch_seed, resolution=resolution)
    path = workspace.run(run).network(kimg)
    save_network_file(path, G, kimg=kimg, run=run, label=label, class_names=["negative", "positive"])
    return path


def add_tiny_run_with_state(workspace, label, torch_seed, kimg=2.0, resolution=32):
    """A run folder as training leaves it: network file, state file with D, and its fakes grid (2 x 4 tiles, in
    colour as older runs and NVIDIA's grids are, so cutting it must turn it grey); returns the RunFolder."""
    from mura_aug.gan.network_file import save_network_file
    from mura_aug.gan.networks import Discriminator
    from mura_aug.synth.generate import generate_images

    run = f"XR_SHOULDER-{label}-tiny-{resolution}"
    folder = workspace.run(run)
    G = tiny_generator(torch_seed=torch_seed, resolution=resolution)
    D = Discriminator(img_resolution=resolution, **TINY_D).eval()
    save_network_file(folder.network(kimg), G, kimg=kimg, run=run, label=label)
    torch.save({"G_kwargs": G.init_kwargs, "G_ema": G.state_dict(), "D_kwargs": D.init_kwargs,
                "D": D.state_dict()}, folder.state(kimg))
    fakes = dict(generate_images(G, range(8), device="cpu", progress=False))
    grid = np.concatenate([np.concatenate([fakes[r * 4 + c] for c in range(4)], axis=1) for r in range(2)])
    Image.fromarray(grid).save(folder.fakes(kimg))
    return RunFolder(folder.path)


def random_tiles(n, size=16, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def compose_grid(tiles, rows, cols, padding=0, margin=0, pad_value=0):
    size = tiles[0].shape[0]
    height = rows * size + (rows - 1) * padding + 2 * margin
    width = cols * size + (cols - 1) * padding + 2 * margin
    grid = np.full((height, width) + tiles[0].shape[2:], pad_value, np.uint8)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, cols)
        top, left = margin + r * (size + padding), margin + c * (size + padding)
        grid[top:top + size, left:left + size] = tile
    return grid


def grey(array) -> np.ndarray:
    """What stage 05 saves of G's pixels before sharpening: stage 01's luma rule (PIL's 'L' conversion)."""
    return np.asarray(Image.fromarray(array).convert("L"))
