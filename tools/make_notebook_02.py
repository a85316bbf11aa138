"""Writes notebooks/02_train_positive.ipynb and notebooks/03_train_negative.ipynb: the same notebook with a
different LABEL (run it after changing this file; commit the notebooks it writes)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mura_aug.nbtools import NOTEBOOKS_DIR, build_notebook, write_notebook  # noqa: E402

TITLE = """# {number} · Train StyleGAN2-ADA on the {label} ({meaning}) X-rays

This notebook trains a StyleGAN2-ADA generator on the {label} images prepared by notebook 01
(`data/datasets/<BODY>_{label}_<res>.zip`). The run lives in `data/experiments/<BODY>-{label}-<cfg>-<res>/`:
`stats.jsonl` (one line per tick), a fakes grid per snapshot, full training states (`state-*.pt`, to resume
exactly) and light generator files (`network-*.pt`, for notebook 05).

**Colab sessions end.** Training stops by itself after `MAX_MINUTES` with a final snapshot, and so does the
stop button (■). Run this notebook again (with `RESUME = "latest"`) or notebook 04 to continue exactly where it
stopped. Snapshots are written atomically: a disconnect in the middle of one leaves the previous one intact."""

PARAMETERS = """WORKSPACE = None  # workspace folder (str); None means Google Drive in Colab, ./workspace elsewhere
BODY_PART = "XR_SHOULDER"  # MURA body part prepared in notebook 01
LABEL = "{label}"  # class to learn: "positive" (abnormal), "negative" (normal) or "both" (one conditional GAN)
CFG = "auto"  # network size: "auto" (NVlabs' default), "paper256", "stylegan2", or "tiny" for CPU demos
RESOLUTION = None  # training resolution in px; None = the resolution notebook 01 prepared (256 by default)
KIMG = 1000  # train until this many thousand images were shown to D (NVlabs trains 5000-25000)
KIMG_PER_TICK = 4  # thousand images per tick = per stats line (may be a fraction, e.g. 0.1 on a CPU)
SNAP = 10  # ticks between snapshots (at 256 px a training state is about 630 MB, a generator file about 89 MB)
BATCH = None  # images per step; None = the config's (auto: 16 at 256 px)
SEED = 0  # random seed (also picks the latents of the fakes grid)
MAX_MINUTES = 690  # stop with a final snapshot after this many minutes (Colab ends sessions after ~12 h); None = no limit
RESUME = "latest"  # "latest" continues this run when it has a state (else starts it); None always starts fresh
TRANSFER = None  # start from another network's weights: "ffhq256" (NVIDIA, downloaded once) or a .pkl / .pt path
KEEP = 3  # training states kept (the newest); every snapshot's small generator file is kept
METRICS_EVERY = 0  # snapshots between FID / KID / diversity measurements (0 = off; ~1 min each on a GPU)
DEVICE = None  # None = the GPU when there is one; or "cpu", "cuda\""""

CELLS = [
    """from IPython.display import display

from mura_aug import plots_metrics, plots_train
from mura_aug.gan import dataset, training_loop
from mura_aug.workspace import resolve_workspace

workspace = resolve_workspace(WORKSPACE)
images, labels = dataset.load_training_images(workspace, BODY_PART, LABEL, RESOLUTION, progress=True)
print(f"{len(images)} training images of {LABEL} {BODY_PART}, {images.shape[-1]} px")""",
    {"markdown": "## Train\nOne line per tick: kimg, losses, ADA's augmentation probability `p` and the "
                 "overfitting signal `r_t` (target 0.6), seconds per kimg. Stop any time with ■: the run "
                 "writes a final snapshot first."},
    """run_dir = training_loop.train(
    workspace, LABEL, body_part=BODY_PART, cfg=CFG, resolution=RESOLUTION, kimg=KIMG, kimg_per_tick=KIMG_PER_TICK,
    snap=SNAP, batch=BATCH, seed=SEED, max_minutes=MAX_MINUTES, resume=RESUME if not TRANSFER else None,
    transfer=TRANSFER, keep_states=KEEP, metrics_every=METRICS_EVERY, device=DEVICE)""",
    {"markdown": "## How the run is going\nLosses, ADA (p rises when D overfits, i.e. when r_t is above "
                 "the target), time per kimg; FID, KID and the fakes' diversity when `METRICS_EVERY` is "
                 "on (a falling diversity ratio is the mode-collapse alarm); then the newest fakes grid."},
    """print(plots_train.progress_summary(run_dir))
display(plots_train.plot_training(run_dir))
if plots_metrics.read_metric_history(run_dir):
    display(plots_metrics.plot_training_metrics(run_dir))
plots_train.show_latest_fakes(run_dir)
display(plots_train.snapshots_table(run_dir))""",
]


def write(label: str, number: str, meaning: str) -> Path:
    title = TITLE.format(number=number, label=label, meaning=meaning)
    nb = build_notebook(title, PARAMETERS.replace("{label}", label), CELLS)
    return write_notebook(NOTEBOOKS_DIR / f"{number}_train_{label}.ipynb", nb)


if __name__ == "__main__":
    print(write("positive", "02", "abnormal"))
    print(write("negative", "03", "normal"))
