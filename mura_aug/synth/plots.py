"""Figures of stage 05: sharpening before/after, real and fake grids per class, dropped fakes.

Every image is shown as 8-bit grey, turned grey by stage 01's luma rule (`mura_aug.imaging.to_grey`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
from PIL import Image, ImageOps

from mura_aug.imaging import grey_image, to_grey
from mura_aug.synth.generate import DEFAULT, open_gray

PathLike = Union[str, os.PathLike]


def _gray(image: Union[PathLike, Image.Image, np.ndarray], size: Optional[int] = None) -> np.ndarray:
    if isinstance(image, np.ndarray):
        image = grey_image(image)
    elif not isinstance(image, Image.Image):
        image = open_gray(image)
    image = to_grey(image)
    if size is not None and image.size != (size, size):
        image = ImageOps.fit(image, (size, size), Image.BICUBIC)  # centre crop: real X-rays are not square
    return np.asarray(image)


def plot_before_after(pairs: Sequence[tuple], title: str = "Sharpening (PIL Sharpness)",
                      factor: float = DEFAULT.sharpen_factor):
    """Columns of (before, after) image pairs: the top row as generated, the bottom row sharpened."""
    import matplotlib.pyplot as plt

    n = max(1, len(pairs))
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    for col in range(n):
        for row in range(2):
            ax = axes[row][col]
            ax.axis("off")
            if col < len(pairs):
                ax.imshow(_gray(pairs[col][row]), cmap="gray", vmin=0, vmax=255)
        axes[0][col].set_title("generated" if col == 0 else "")
        axes[1][col].set_title(f"sharpened x{factor:g}" if col == 0 else "")
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)  # display() shows it; left open, Jupyter would show it again
    return fig


def image_grid(images: Sequence, cols: int, size: int) -> np.ndarray:
    """Grayscale images tiled into one array (rows filled left to right), `size` px per tile, black gaps 2 px."""
    rows = max(1, int(np.ceil(len(images) / cols)))
    gap = 2
    canvas = np.zeros([rows * size + (rows - 1) * gap, cols * size + (cols - 1) * gap], np.uint8)
    for index, image in enumerate(images):
        r, c = divmod(index, cols)
        canvas[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = _gray(image, size)
    return canvas


def plot_real_vs_fake(real: Dict[str, Sequence], fake: Dict[str, Sequence], cols: int = 4, size: int = 64,
                      title: str = "Real (left) and synthetic (right) X-rays"):
    """One row per class: a grid of real images next to a grid of fakes, at the same size."""
    import matplotlib.pyplot as plt

    classes = [cls for cls in fake if fake[cls]] or list(fake)
    fig, axes = plt.subplots(len(classes), 2, figsize=(9, 4.5 * len(classes)), squeeze=False)
    for row, cls in enumerate(classes):
        for col, (kind, images) in enumerate((("real", real.get(cls, [])), ("synthetic", fake.get(cls, [])))):
            ax = axes[row][col]
            ax.axis("off")
            ax.set_title(f"{cls}: {kind} ({len(images)})")
            if len(images):
                ax.imshow(image_grid(list(images), cols, size), cmap="gray", vmin=0, vmax=255)
    fig.suptitle(title)
    fig.tight_layout()
    plt.close(fig)  # display() shows it; left open, Jupyter would show it again
    return fig


def plot_dropped(workspace_root: PathLike, dropped, max_images: int = 8):
    """The dropped fakes with why (a table of path, class, drop_reason, score: `StageResult.dropped`)."""
    import matplotlib.pyplot as plt

    shown = dropped.head(max_images)
    n = max(1, len(shown))
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 3.0), squeeze=False)
    for ax in axes[0]:
        ax.axis("off")
    for ax, (_, row) in zip(axes[0], shown.iterrows()):
        ax.imshow(_gray(Path(workspace_root) / row["path"]), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{row['class']}\n{row['drop_reason'].split(' (')[0]}", fontsize=7)
    more = f" (first {len(shown)} shown)" if len(dropped) > len(shown) else ""
    fig.suptitle(f"{len(dropped)} fakes dropped{more}")
    fig.tight_layout()
    plt.close(fig)  # display() shows it; left open, Jupyter would show it again
    return fig
