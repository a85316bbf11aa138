"""Figures and tables of stage 06, drawn from the files `stage.run_stage` wrote (no retraining).

Every function takes the summary dict (`stage.run_stage(...)` or `stage.load_summary(...)`) and, where
per-image predictions are needed, the experiment folder (`stage.experiment_folder(...)`). Arms keep one colour
throughout.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import numpy as np

from mura_aug.evaluate import study_metrics
from mura_aug.workspace import EvaluationFolder

ARM_COLOURS = {"baseline": "tab:blue", "augmented": "tab:orange"}
METRIC_NAMES = {"kappa": "Cohen's kappa", "auc": "AUC", "accuracy": "accuracy", "sensitivity": "sensitivity",
                "specificity": "specificity"}


def plot_training_curves(summary: Dict[str, object]):
    """Per run: training and internal-validation loss, and internal-validation study AUC, by epoch."""
    import matplotlib.pyplot as plt

    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(11, 3.8))
    for run in summary["runs"]:
        epochs = [h["epoch"] for h in run["history"]]
        colour = ARM_COLOURS.get(run["arm"], "grey")
        loss_axis.plot(epochs, [h["train_loss"] for h in run["history"]], color=colour, linestyle="--", alpha=0.7)
        loss_axis.plot(epochs, [h["val_loss"] for h in run["history"]], color=colour, alpha=0.9,
                       label=f"{run['run']} (best epoch {run['best_epoch']})")
        auc_axis.plot(epochs, [h["val_study_auc"] for h in run["history"]], color=colour, marker=".",
                      label=run["run"])
    loss_axis.set(xlabel="epoch", ylabel="class-balanced BCE", title="loss: training (dashed), internal validation")
    auc_axis.set(xlabel="epoch", ylabel="study AUC", ylim=(0, 1.02), title="internal validation (train patients)")
    loss_axis.legend(fontsize=7)
    figure.tight_layout()
    plt.close(figure)  # display() shows it; left open, Jupyter would show it again
    return figure


def plot_roc_curves(summary: Dict[str, object], experiment: Union[EvaluationFolder, Path]):
    """Study-level ROC on MURA valid: one thin line per seed, coloured by arm; AUC in the legend."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from sklearn.metrics import roc_curve

    figure, axis = plt.subplots(figsize=(5, 5))
    for run in summary["runs"]:
        predictions = pd.read_csv(EvaluationFolder(experiment).run(run["run"]).predictions, dtype={"study_id": str})
        studies = study_metrics.aggregate_studies(predictions[predictions["part"] == "evaluation"])
        false_positive_rate, true_positive_rate, _ = roc_curve(studies["label"], studies["probability"])
        auc = run["metrics"]["study@0.5"]["auc"]
        axis.plot(false_positive_rate, true_positive_rate, color=ARM_COLOURS.get(run["arm"], "grey"), alpha=0.8,
                  label=f"{run['run']}  AUC {auc:.3f}")
    axis.plot([0, 1], [0, 1], color="lightgrey", linestyle=":", label="chance")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
             title=f"{summary['body_part']} MURA valid, study level")
    axis.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    plt.close(figure)  # display() shows it; left open, Jupyter would show it again
    return figure


def plot_confusion_matrices(summary: Dict[str, object], key: str = "study@0.5"):
    """One confusion matrix per arm (studies, summed over seeds) at the given level@threshold."""
    import matplotlib.pyplot as plt

    arms = list(summary["arms"])
    figure, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 3.6), squeeze=False)
    for axis, arm in zip(axes[0], arms):
        confusion = np.asarray(summary["arms"][arm][key]["confusion"], dtype=float)
        axis.imshow(confusion, cmap="Blues", vmin=0)
        for (row, column), count in np.ndenumerate(confusion):
            axis.text(column, row, f"{count:g}", ha="center", va="center",
                      color="white" if count > confusion.max() / 2 else "black")
        axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "abnormal"], yticklabels=["normal", "abnormal"],
                 xlabel="predicted", ylabel="true", title=f"{arm} ({key}, {len(summary['settings']['seeds'])} seed(s))")
    figure.tight_layout()
    plt.close(figure)  # display() shows it; left open, Jupyter would show it again
    return figure


def comparison_table(summary: Dict[str, object], key: str = "study@0.5"):
    """Arms as rows, metrics as columns, each cell 'mean over seeds [95% CI]' (a pandas DataFrame)."""
    import pandas as pd

    rows = {}
    for arm, table in summary["arms"].items():
        rows[arm] = {METRIC_NAMES[m]: _cell(table[key][m]) for m in study_metrics.METRICS}
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = f"{key} (mean over seeds [95% CI])"
    return frame


def _cell(value: Dict[str, object]) -> str:
    low, high = value["ci"]
    return f"{value['mean']:.3f} [{low:.3f}, {high:.3f}]"


def verdict_text(summary: Dict[str, object]) -> str:
    """The plain-language verdict, one sentence per compared metric (or why there is none)."""
    if not summary.get("comparison"):
        return ("Only one arm was evaluated, so there is no comparison: run both ARMS "
                "('baseline' and 'augmented') to see whether synthetic images help.")
    return "\n".join(summary["verdict"])

