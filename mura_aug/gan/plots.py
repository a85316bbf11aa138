"""Figures and summaries of a training run (notebooks 02, 03, 04), read from its stats.jsonl and snapshots;
figures of the fakes' metrics (over training, closest fake/real pairs, measured snapshots)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from mura_aug.errors import UserError
from mura_aug.imaging import grey_image, to_grey
from mura_aug.metrics.features import metric_label
from mura_aug.workspace import RunFolder

PathLike = Union[str, os.PathLike]

LOSS_KEYS = ("loss_G", "loss_D", "loss_r1", "pl_penalty")


def load_stats(run_dir: PathLike):
    """The run's stats lines as a pandas DataFrame (one row per tick); empty before the first tick."""
    import pandas as pd

    from mura_aug.gan.snapshot import read_stats

    return pd.DataFrame(read_stats(run_dir))


def _format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def progress_summary(run_dir: PathLike) -> str:
    """One line: kimg reached / target, the recent time per kimg and the estimated time to the target."""
    from mura_aug.gan.snapshot import list_snapshots, read_training_options

    stats = load_stats(run_dir)
    options = read_training_options(run_dir)
    target = options.get("kimg")
    if stats.empty:
        return f"{Path(run_dir).name}: no tick finished yet (target {target} kimg)"
    last = stats.iloc[-1]
    recent = stats["sec_per_kimg"].tail(5).median() if "sec_per_kimg" in stats else float("nan")
    text = f"{Path(run_dir).name}: {last['kimg']:.3f} kimg"
    if target:
        remaining_kimg = max(0.0, float(target) - float(last["kimg"]))
        text += f" of {float(target):g} kimg; {recent:.1f} s/kimg (estimate), about " \
                f"{_format_duration(remaining_kimg * recent)} to go"
    snaps = list_snapshots(run_dir)
    if snaps:
        text += f"; newest snapshot {snaps[-1].kimg:.3f} kimg ({snaps[-1].date})"
    return text


def plot_training(run_dir: PathLike, figsize=(14, 3.6)):
    """Three panels over kimg: losses, ADA p and r_t, seconds per kimg. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    stats = load_stats(run_dir)
    fig, (ax_loss, ax_ada, ax_speed) = plt.subplots(1, 3, figsize=figsize)
    if stats.empty:
        for ax in (ax_loss, ax_ada, ax_speed):
            ax.text(0.5, 0.5, "no tick yet", ha="center", va="center", transform=ax.transAxes)
        plt.close(fig)  # display() shows it; left open, Jupyter would show it again
        return fig
    for key in LOSS_KEYS:
        if key in stats and stats[key].notna().any():
            ax_loss.plot(stats["kimg"], stats[key], label=key)
    ax_loss.set(title="losses", xlabel="kimg")
    ax_loss.legend(fontsize=8)
    if "augment_p" in stats:
        ax_ada.plot(stats["kimg"], stats["augment_p"], label="ADA p")
    if "r_t" in stats:
        ax_ada.plot(stats["kimg"], stats["r_t"], label="r_t = E[sign D(real)]")
        ax_ada.axhline(0.6, color="grey", lw=0.8, ls="--", label="target 0.6")
    ax_ada.set(title="augmentation", xlabel="kimg")
    ax_ada.legend(fontsize=8)
    if "sec_per_kimg" in stats:
        ax_speed.plot(stats["kimg"], stats["sec_per_kimg"], marker=".")
    ax_speed.set(title="seconds per kimg", xlabel="kimg")
    fig.tight_layout()
    plt.close(fig)  # display() shows it; left open, Jupyter would show it again
    return fig


def show_latest_fakes(run_dir: PathLike, ax=None, figsize=(10, 5)):
    """Show the newest fakes grid of a run (returns the axes; a note when there is none yet)."""
    import matplotlib.pyplot as plt
    from PIL import Image

    from mura_aug.gan.snapshot import list_snapshots

    grids = [s for s in list_snapshots(run_dir) if s.fakes_path is not None]
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    ax.axis("off")
    if not grids:
        ax.text(0.5, 0.5, "no fakes grid yet", ha="center", va="center", transform=ax.transAxes)
        return ax
    with Image.open(grids[-1].fakes_path) as image:
        # grey by stage 01's luma rule, also for grids saved in colour (older runs, NVIDIA's fakes*.png)
        ax.imshow(np.asarray(to_grey(image)), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_title(f"fakes at {grids[-1].kimg:.3f} kimg")
    return ax


def snapshots_table(run_dir: PathLike):
    """A DataFrame of a run's snapshots: kimg, date, size (MB), which files are present."""
    import pandas as pd

    from mura_aug.gan.snapshot import list_snapshots

    rows = [{"kimg": s.kimg, "date": s.date, "size_MB": round(s.size_bytes / 2 ** 20, 2),
             "state": s.state_path is not None, "network": s.network_path is not None,
             "fakes": s.fakes_path is not None} for s in list_snapshots(run_dir)]
    return pd.DataFrame(rows, columns=["kimg", "date", "size_MB", "state", "network", "fakes"])


def runs_table(workspace):
    """A DataFrame of every run in the workspace: name, label, kimg reached / target, snapshots, size."""
    from datetime import datetime

    import pandas as pd

    from mura_aug.gan.snapshot import list_runs

    rows = [{"run": r.name, "label": r.label, "kimg": r.kimg, "target_kimg": r.target_kimg,
             "snapshots": r.snapshots, "resumable_states": r.states, "size_MB": round(r.size_bytes / 2 ** 20, 2),
             "last_change": datetime.fromtimestamp(r.mtime).strftime("%Y-%m-%d %H:%M")}
            for r in list_runs(workspace)]
    return pd.DataFrame(rows, columns=["run", "label", "kimg", "target_kimg", "snapshots", "resumable_states",
                                       "size_MB", "last_change"])


# --- the fakes' metrics: over training (stats.jsonl), closest fake/real pairs, measured snapshots ---------

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
        path = RunFolder(path).stats
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
    groups = [("FID", ("fid_",)), ("KID", ("kid_",)),
              ("diversity fakes / reals", ("diversity_ratio", "pixel_diversity_ratio"))]
    for ax, (title, prefixes) in zip(axes, groups):
        keys = [k for k in sorted(history) if k.startswith(prefixes) and not k.endswith("_std")]
        for key in keys:
            kimg, values = zip(*history[key])
            ax.plot(kimg, values, marker="o", label=metric_label(key))
        if prefixes != groups[2][1]:  # the measure's name as metric_label gives it: offline numbers say so
            title = "\n".join(dict.fromkeys(metric_label(k) for k in keys)) or title
            title += " (lower is better)"
        ax.set_title(title, fontsize=9)
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
            ax.imshow(np.asarray(grey_image(np.asarray(image).transpose(1, 2, 0))), cmap="gray", vmin=0, vmax=255)
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


def plot_snapshot_metrics(workspace, run: str, extractor: Optional[str] = None):
    """FID and diversity ratio of each snapshot measured with `python -m mura_aug metrics`, per class.
    extractor: the features the FIDs were computed with (offline, inception); None: those of the newest
    measurement (so the plot follows whatever `metrics` used by default on this machine)."""
    import matplotlib.pyplot as plt

    from mura_aug.workspace import Workspace

    folder = Workspace(workspace).metrics_dir(run)
    results = []
    for path in sorted(folder.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        # results name their features (extractor_name); older ones only the requested extractor (gan.measure
        # writes them; importing its reader here would make the two modules import each other)
        features = result.get("extractor_name") or result.get("settings", {}).get("extractor")
        if result.get("kimg") is not None:
            results.append((result["kimg"], features, result))
    if extractor is None and results:
        extractor = max(results, key=lambda item: item[0])[1]
    points: Dict[str, List[tuple]] = {}
    for kimg, features, result in results:
        if features != extractor:
            continue
        comparable = bool(result.get("comparable_with_published_fid", extractor != "offline"))
        for cls, metrics in result.get("metrics", {}).items():
            points.setdefault(cls, []).append((kimg, metrics[f"fid_{extractor}"], metrics["diversity_ratio"]))
    extractor = extractor or "standard"
    if not points:
        raise UserError(f"No {extractor} metrics of run {run} in {folder}.",
                        f"Measure a snapshot first: python -m mura_aug metrics --run {run} --extractor {extractor}")
    figure, (ax_fid, ax_div) = plt.subplots(1, 2, figsize=(10, 3.5))
    for cls, rows in points.items():
        rows.sort()
        kimg, fid, ratio = zip(*rows)
        ax_fid.plot(kimg, fid, marker="o", label=cls)
        ax_div.plot(kimg, ratio, marker="o", label=cls)
    ax_fid.set_title(metric_label(f"fid_{extractor}", comparable), fontsize=9)
    ax_div.set_title("diversity fakes / reals")
    for ax in (ax_fid, ax_div):
        ax.set_xlabel("kimg")
        ax.legend(fontsize=8)
    figure.tight_layout()
    plt.close(figure)  # display() shows it; left open, Jupyter would show it again
    return figure
