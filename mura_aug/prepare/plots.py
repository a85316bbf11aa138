"""Figures of stage 01: images per split and class, and what each preprocessing option does.

Figures are built with `matplotlib.figure.Figure`, not pyplot, so a notebook shows each one once (where
`display` puts it) and nothing piles up in pyplot's figure list.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mura_aug.workspace import CLASSES

CLASS_COLOURS = {"positive": "#c0392b", "negative": "#2e86c1"}  # abnormal red, normal blue
# The option combinations shown side by side: (column title, fit, crop_borders, contrast)
VARIANTS: Tuple[Tuple[str, str, bool, bool], ...] = (
    ("pad", "pad", False, False),
    ("crop", "crop", False, False),
    ("pad +\ncrop borders", "pad", True, False),
    ("pad +\ncontrast", "pad", False, True),
    ("crop borders +\ncontrast", "pad", True, True),
)


def plot_class_counts(summary: dict):
    """Grouped bars: images per class in train and valid (from prepare's summary), counts on the bars."""
    from matplotlib.figure import Figure

    splits = ("train", "valid")
    fig = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.38
    positions = np.arange(len(splits))
    for offset, cls in zip((-width / 2, width / 2), CLASSES):
        counts = [summary["images"][split][cls] for split in splits]
        meaning = "abnormal" if cls == "positive" else "normal"
        bars = ax.bar(positions + offset, counts, width, label=f"{cls} ({meaning})", color=CLASS_COLOURS[cls])
        ax.bar_label(bars, padding=2, fontsize=8)
    ax.set_xticks(positions, splits)
    ax.set_ylabel("images")
    ax.set_title(f"{summary['body_part']}: images per split and class")
    ax.legend(frameon=False, fontsize=8)
    ax.margins(y=0.15)
    return fig


def example_images(workspace, body_part: str, cls: str, n: int = 3, seed: int = 0) -> List[tuple]:
    """(workspace-relative path, 'L' image) of `n` train images of a class, picked at random by `seed`."""
    from mura_aug.imaging import ImageProblem, open_image
    from mura_aug.prepare.stage import load_table
    from mura_aug.workspace import Workspace

    workspace = Workspace(workspace)
    table = load_table(workspace, body_part, f"train_{cls}")
    picked = np.random.default_rng(seed).permutation(len(table))
    examples = []
    for index in picked:
        path = table["path"].iloc[int(index)]
        try:
            examples.append((path, open_image(workspace.root / path)))
        except ImageProblem:
            continue  # a copy damaged since prepare ran: show another one
        if len(examples) == n:
            break
    return examples


def plot_preprocessing_examples(examples: Sequence[tuple], resolution: int, title: str = "",
                                chosen: Optional[Dict[str, object]] = None):
    """One row per example: the copy as stored, then each option combination of VARIANTS at `resolution` px.

    chosen: {'fit': ..., 'crop_borders': ..., 'contrast': ...}; the matching column title is marked
    '(used)', so the notebook shows which one went into the datasets.
    """
    from matplotlib.figure import Figure

    from mura_aug.imaging import preprocess

    rows = max(1, len(examples))
    cols = 1 + len(VARIANTS)
    fig = Figure(figsize=(1.7 * cols, 1.9 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for row, (path, image) in enumerate(examples):
        axes[row][0].imshow(np.asarray(image), cmap="gray", vmin=0, vmax=255)
        axes[row][0].set_ylabel(path.rsplit("/", 1)[-1].removesuffix(".png").split("_", 3)[-1], fontsize=7)
        for col, (_, fit, crop_borders, contrast) in enumerate(VARIANTS, start=1):
            square = preprocess(image, resolution, fit=fit, crop_borders=crop_borders, contrast=contrast)
            axes[row][col].imshow(np.asarray(square), vmin=0, vmax=255, interpolation="nearest")
    axes[0][0].set_title("copy\n(as stored)", fontsize=8)
    for col, (label, fit, crop_borders, contrast) in enumerate(VARIANTS, start=1):
        used = chosen is not None and (chosen.get("fit"), bool(chosen.get("crop_borders")),
                                       bool(chosen.get("contrast"))) == (fit, crop_borders, contrast)
        axes[0][col].set_title(label + (" (used)" if used else ""), fontsize=8,
                               fontweight="bold" if used else "normal")
    if title:
        fig.suptitle(title)
    return fig
