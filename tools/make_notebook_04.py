"""Writes notebooks/04_resume.ipynb (run it after changing this file; commit the notebook it writes)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mura_aug.nbtools import NOTEBOOKS_DIR, build_notebook, write_notebook  # noqa: E402

TITLE = """# 04 · Resume a training run exactly where it stopped

Lists the training runs of the workspace and their snapshots, then continues one (the newest by default) from
its newest training state that loads: the image count, tick numbers, stats log, ADA's `p`, the optimizers'
moments and every random state continue as if the run had never stopped. A state cut off by a disconnect is
skipped with a warning naming it. Raise `KIMG` to train a finished run longer."""

PARAMETERS = """WORKSPACE = None  # workspace folder (str); None means Google Drive in Colab, ./workspace elsewhere
BODY_PART = "XR_SHOULDER"  # MURA body part (only used to list the runs of this body part first)
RUN = None  # run name (e.g. "XR_SHOULDER-positive-auto-256") or None for the most recently changed run
KIMG = None  # new target in thousand images; None keeps the run's own target
MAX_MINUTES = 690  # stop with a final snapshot after this many minutes (Colab ends sessions after ~12 h); None = no limit
DEVICE = None  # None = the GPU when there is one; or "cpu", "cuda\""""

CELLS = [
    """from IPython.display import display

from mura_aug import plots_metrics, plots_train
from mura_aug.gan import training_loop
from mura_aug.workspace import resolve_workspace

workspace = resolve_workspace(WORKSPACE)
display(plots_train.runs_table(workspace))""",
    {"markdown": "## The run to continue and its snapshots\nkimg, date and size of each snapshot; `state` "
                 "marks the ones a run can continue from (older states are removed to save space)."},
    """run_dir = training_loop.find_run(workspace, RUN)  # None = the most recently changed run
print(plots_train.progress_summary(run_dir))
display(plots_train.snapshots_table(run_dir))
display(plots_train.plot_training(run_dir))""",
    {"markdown": "## Continue\nStop any time with ■: a final snapshot is written first."},
    """run_dir = training_loop.resume_run(workspace, run=str(run_dir), kimg=KIMG, max_minutes=MAX_MINUTES,
                                   device=DEVICE)""",
    {"markdown": "## Progress so far\nLosses, ADA, time per kimg; FID, KID and diversity where the run measured "
                 "them (`METRICS_EVERY` in notebooks 02 / 03); the newest fakes grid."},
    """print(plots_train.progress_summary(run_dir))
display(plots_train.plot_training(run_dir))
if plots_metrics.read_metric_history(run_dir):
    display(plots_metrics.plot_training_metrics(run_dir))
plots_train.show_latest_fakes(run_dir)""",
]

if __name__ == "__main__":
    print(write_notebook(NOTEBOOKS_DIR / "04_resume.ipynb", build_notebook(TITLE, PARAMETERS, CELLS)))
