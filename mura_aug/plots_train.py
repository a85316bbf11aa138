"""Figures and summaries of a training run (notebooks 02, 03, 04), read from its stats.jsonl and snapshots."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

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
        ax.imshow(image.convert("RGB"))
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


def newest_run(workspace, label: Optional[str] = None):
    """The most recently changed run folder (of `label` when given); None when there is none."""
    from mura_aug.gan.snapshot import list_runs

    runs = [r for r in list_runs(workspace) if label is None or r.label == label]
    return max(runs, key=lambda r: r.mtime).path if runs else None
