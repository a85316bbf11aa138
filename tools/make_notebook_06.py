"""Writes notebooks/06_densenet_eval.ipynb (run it after changing this file; commit the notebook it writes)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mura_aug.nbtools import build_notebook, write_notebook  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "06_densenet_eval.ipynb"

TITLE = """# 06 · Does synthetic data help? DenseNet-169 baseline vs augmented, measured honestly

Two classifiers per seed, trained on the same real training patients:
* **baseline**: real training X-rays only;
* **augmented**: the same plus `SYNTH_RATIO` synthetic X-rays (notebook 05) per real one.

Both are scored on MURA **valid** the way MURA scores: per **study** (the mean of its images'
probabilities), with Cohen's kappa, AUC, sensitivity and specificity, and 95% bootstrap intervals over the
studies. MURA valid is never used to choose anything: early stopping, the learning-rate decay and the tuned
threshold use an internal split of *training patients*. Synthetic images only ever enter training batches.

Runs are checkpointed after every epoch under `results/evaluation/<BODY>/`: if Colab disconnects, run the
notebook again and it continues; finished runs are skipped. A GPU runtime is strongly recommended for
DenseNet-169 at 224 px (see `docs/stage_06_evaluate.md` for times). For a CPU demo use `ARCH="tiny"`,
`PRETRAINED=False`, `IMAGE_SIZE=64`."""

PARAMETERS = """WORKSPACE = None  # workspace folder (str); None means Google Drive in Colab, ./workspace elsewhere
BODY_PART = "XR_SHOULDER"  # MURA body part prepared in notebook 01
ARCH = "densenet169"  # "densenet169" (MURA paper), "resnet50", or "tiny" (a small CNN for CPU demos)
PRETRAINED = True  # start from ImageNet weights (downloaded once); False trains from scratch (offline, tiny)
IMAGE_SIZE = 224  # px, square input side: 224 default, 320 as in the MURA paper, 64 for CPU demos
EPOCHS = 12  # maximum passes over the training images; early stopping usually ends sooner
SEEDS = 3  # runs per arm (seeds 0, 1, ...): one seed cannot tell an effect from luck
SYNTH_RATIO = 1.0  # synthetic training images per real training image in the augmented arm
BATCH_SIZE = 16  # images per step (lower it if the GPU runs out of memory)
ARMS = ["baseline", "augmented"]  # which arms to train; the comparison needs both
LEARNING_RATE = None  # Adam step size; None = 1e-4 (MURA paper), 1e-3 for ARCH="tiny"
PATIENCE = 3  # epochs without a lower internal-validation loss before a run stops early
N_BOOT = 1000  # bootstrap resamples of the studies for each 95% interval
WORKERS = 2  # image-loading processes (Colab has 2 CPU cores)"""

CELLS = [
    """from IPython.display import display

from mura_aug import classify, plots_eval
from mura_aug.workspace import resolve_workspace

workspace = resolve_workspace(WORKSPACE)
settings = classify.EvalSettings(arch=ARCH, pretrained=PRETRAINED, image_size=IMAGE_SIZE, epochs=EPOCHS,
                                 seeds=classify.seed_list(SEEDS), synth_ratio=SYNTH_RATIO, batch_size=BATCH_SIZE,
                                 arms=tuple(ARMS), learning_rate=LEARNING_RATE, early_stop_patience=PATIENCE,
                                 n_boot=N_BOOT, workers=WORKERS)
out_dir = classify.experiment_dir(workspace, BODY_PART, settings)
print(f"device: {classify.resolve_device(settings.device)}; results in {out_dir}")""",
    {"markdown": "## Train both arms and score them\nOne progress bar per run (arm and seed). Finished runs are "
                 "skipped; an interrupted one continues from its last epoch."},
    """summary = classify.evaluate(workspace, BODY_PART, settings)
print(f"{summary['n_evaluation_studies']} studies ({summary['n_evaluation_images']} images) of MURA valid")""",
    {"markdown": "## Training curves\nLoss on the training batches (dashed) and on the internal validation "
                 "patients (solid); the weights of the epoch with the lowest validation loss are the ones scored."},
    """display(plots_eval.plot_training_curves(summary))""",
    {"markdown": "## ROC curves on MURA valid (study level)\nOne line per seed; blue baseline, orange augmented."},
    """display(plots_eval.plot_roc_curves(summary, out_dir))""",
    {"markdown": "## Confusion matrices\nStudies at MURA's threshold 0.5, summed over seeds. The original work's "
                 "model called many abnormal studies normal: look at the bottom-left cell."},
    """display(plots_eval.plot_confusion_matrices(summary, "study@0.5"))
display(plots_eval.plot_confusion_matrices(summary, "study@tuned"))""",
    {"markdown": "## The comparison\nMean over seeds, with 95% intervals from resampling the studies. Threshold "
                 "0.5 is MURA's; *tuned* is the threshold with the best kappa on the internal validation split."},
    """display(plots_eval.comparison_table(summary, "study@0.5"))
display(plots_eval.comparison_table(summary, "study@tuned"))""",
    {"markdown": "## Verdict\nWhen the intervals of the two arms overlap, the difference is **within noise**: "
                 "this experiment cannot show that the synthetic images help (or hurt)."},
    """print(plots_eval.verdict_text(summary))
print(f"\\nTables: {out_dir / 'comparison.csv'}, {out_dir / 'runs.csv'}; everything: {out_dir / 'summary.json'}")""",
]


def main() -> Path:
    return write_notebook(NOTEBOOK, build_notebook(TITLE, PARAMETERS, CELLS))


if __name__ == "__main__":
    print(f"wrote {main()}")
