"""Figures of the fake-image metrics: metrics over training (from stats.jsonl), closest fake/real pairs,
and the metrics of a run's measured snapshots (from results/metrics/<run>/*.json)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from mura_aug.errors import UserError

PathLike = Union[str, os.PathLike]

# Keys the training loop may use for the progress of a tick (ours, NVlabs' stats.jsonl, raw image count).
_KIMG_KEYS = ("kimg", "Progress/kimg", "progress/kimg")
_METRIC_PREFIXES = ("fid_", "kid_", "precision_", "recall_")


def _scalar(value) -> Optional[float]:
    # NVlabs writes {"num": .., "mean": .., "std": ..} per statistic; ours are plain numbers.
    if isinstance(value, dict):
        value = value.get("mean")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def read_metric_history(run_dir_or_stats: PathLike) -> Dict[str, List[tuple]]:
    """stats.jsonl -> {metric key: [(kimg, value), ...]} for the ticks that carry metrics."""
    path = Path(run_dir_or_stats)
    if path.is_dir():
        path = path / "stats.jsonl"
    if not path.is_file():
        raise UserError(f"No stats.jsonl at {path}.", "Pass a run folder under data/experiments that has trained "
                        "at least one tick.")
    history: Dict[str, List[tuple]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by an interrupted run: skip it, the others are fine
            kimg = next((_scalar(record[k]) for k in _KIMG_KEYS if k in record), None)
            if kimg is None and "cur_nimg" in record:
                kimg = (_scalar(record["cur_nimg"]) or 0.0) / 1000
            if kimg is None:
                continue
            for key, value in record.items():
                if key.startswith(_METRIC_PREFIXES) or key in ("diversity_ratio", "collapse_alarm",
                                                               "pixel_diversity_ratio"):
                    number = _scalar(value)
                    if number is not None:
                        history.setdefault(key, []).append((kimg, number))
    return history


def plot_training_metrics(run_dir_or_stats: PathLike, collapse_fraction: Optional[float] = None):
    """FID, KID and diversity ratio over kimg from a run's stats.jsonl (ticks measured with --metrics-every)."""
    import matplotlib.pyplot as plt

    from mura_aug.metrics import COLLAPSE_FRACTION

    history = read_metric_history(run_dir_or_stats)
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    groups = [("FID (lower is better)", ("fid_",)), ("KID (lower is better)", ("kid_",)),
              ("diversity fakes / reals", ("diversity_ratio", "pixel_diversity_ratio"))]
    for ax, (title, prefixes) in zip(axes, groups):
        keys = [k for k in sorted(history) if k.startswith(prefixes) and not k.endswith("_std")]
        for key in keys:
            kimg, values = zip(*history[key])
            ax.plot(kimg, values, marker="o", label=key)
        ax.set_title(title)
        ax.set_xlabel("kimg (thousands of real images shown)")
        if keys:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no measurements yet\n(train with --metrics-every)", ha="center", va="center",
                    transform=ax.transAxes)
    fraction = COLLAPSE_FRACTION if collapse_fraction is None else collapse_fraction
    axes[2].axhline(fraction, color="red", linestyle="--", label=f"collapse alarm below {fraction}")
    axes[2].legend(fontsize=8)
    figure.tight_layout()
    plt.close(figure)  # display() shows it; left open, Jupyter would show it again
    return figure


def plot_closest_pairs(report, fake_images, real_images, count: int = 8,
                       fake_labels: Optional[Sequence[str]] = None, real_labels: Optional[Sequence[str]] = None):
    """The `count` fakes closest to a real training image, each above its nearest real, with the distance;
    flagged pairs (likely copies) titled in red."""
    import matplotlib.pyplot as plt

    order = report.closest(count)
    figure, axes = plt.subplots(2, max(len(order), 1), figsize=(1.8 * max(len(order), 1), 4), squeeze=False)
    for column, fake_index in enumerate(order):
        real_index = int(report.nearest_real[fake_index])
        for row, image in enumerate((fake_images[fake_index], real_images[real_index])):
            ax = axes[row, column]
            ax.imshow(np.asarray(image).transpose(1, 2, 0).mean(axis=2), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        flagged = bool(report.flagged[fake_index])
        name = fake_labels[fake_index] if fake_labels is not None else f"fake {fake_index}"
        axes[0, column].set_title(f"{name}\nd={report.distance[fake_index]:.3f}" + (" COPY?" if flagged else ""),
                                  fontsize=8, color="red" if flagged else "black")
        real_name = real_labels[real_index] if real_labels is not None else f"real #{real_index}"
        axes[1, column].set_xlabel(real_name, fontsize=8)  # below the image: a title would touch the fake
    axes[0, 0].set_ylabel("fake")
    axes[1, 0].set_ylabel("nearest real")
    figure.suptitle(f"Closest fake/real pairs (RMS grey difference d; flagged below {report.threshold:.3f})",
                    fontsize=10)
    figure.tight_layout()
    plt.close(figure)  # display() shows it; left open, Jupyter would show it again
    return figure


def plot_snapshot_metrics(workspace, run: str, extractor: str = "offline"):
    """FID and diversity ratio of each snapshot measured with `python -m mura_aug metrics`, per class."""
    import matplotlib.pyplot as plt

    from mura_aug.workspace import Workspace

    folder = Workspace(workspace).results / "metrics" / run
    points: Dict[str, List[tuple]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if result.get("settings", {}).get("extractor") != extractor or result.get("kimg") is None:
            continue
        for cls, metrics in result.get("metrics", {}).items():
            points.setdefault(cls, []).append((result["kimg"], metrics[f"fid_{extractor}"],
                                               metrics["diversity_ratio"]))
    if not points:
        raise UserError(f"No {extractor} metrics of run {run} in {folder}.",
                        f"Measure a snapshot first: python -m mura_aug metrics --run {run} --extractor {extractor}")
    figure, (ax_fid, ax_div) = plt.subplots(1, 2, figsize=(10, 3.5))
    for cls, rows in points.items():
        rows.sort()
        kimg, fid, ratio = zip(*rows)
        ax_fid.plot(kimg, fid, marker="o", label=cls)
        ax_div.plot(kimg, ratio, marker="o", label=cls)
    ax_fid.set_title(f"FID ({extractor} features)")
    ax_div.set_title("diversity fakes / reals")
    for ax in (ax_fid, ax_div):
        ax.set_xlabel("kimg")
        ax.legend(fontsize=8)
    figure.tight_layout()
    plt.close(figure)  # display() shows it; left open, Jupyter would show it again
    return figure
