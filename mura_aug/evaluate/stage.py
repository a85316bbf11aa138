"""Stage 06: does synthetic data help? A classifier trained with and without it, scored like MURA.

    run_stage(workspace, EvalSettings(arch="densenet169", seeds=3, ...))

is the one entry point (notebook 06 and `python -m mura_aug evaluate` both call it). Two arms are trained per
seed on the same patient-level split of the real training images:
  baseline   real training images only
  augmented  the same real images plus SYNTH_RATIO synthetic images per real one (capped by what stage 05
             wrote), synthetic rows only ever in the training batches
Both are scored on MURA valid, which is never used for any choice: early stopping, the learning-rate decay
and the tuned decision threshold all use an internal validation split of training *patients*.

Workspace files (results/evaluation/<BODY>/<arch>-<size>px-<imagenet|scratch>/):
  runs/<run>/checkpoint.pt    full training state after each epoch (a cut-off session continues from it)
  runs/<run>/result.json      written last: the run is finished (the done marker a rerun skips on)
  runs/<run>/predictions.csv  image-level probabilities on MURA valid and on the internal validation split
  summary.json, runs.csv, comparison.csv   metrics with bootstrap intervals, the arm comparison, the verdict
where <run> is `baseline-seed<k>` or `augmented-x<ratio>-seed<k>`; summary.json and comparison.csv of the
latest experiment are copied to results/evaluation/<BODY>/, where `latest_comparison_text` reads them.

The pieces: settings.py (EvalSettings), data.py (tables, split, image cache), classifier.py (models, one run),
study_metrics.py (metrics and intervals), plots.py (figures from the summary), cli.py (the command).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from mura_aug.devices import resolve_device
from mura_aug.errors import UserError, os_errors_as_user_errors
from mura_aug.evaluate import study_metrics
from mura_aug.evaluate.classifier import check_same_settings, train_run
from mura_aug.evaluate.data import ImageCache, check_images_exist, choose_synthetic, concat, load_tables, \
    split_patients
from mura_aug.evaluate.settings import ARMS, EvalSettings
from mura_aug.workspace import EvaluationFolder, EvaluationRun, Workspace, atomic_write_csv, atomic_write_json, \
    resolve_workspace

THRESHOLDS = ("0.5", "tuned")  # MURA's fixed threshold, and the one chosen on the internal validation split


def run_name(arm: str, seed: int, synth_ratio: float) -> str:
    return f"baseline-seed{seed}" if arm == "baseline" else f"augmented-x{synth_ratio:g}-seed{seed}"


def experiment_folder(workspace: Workspace, settings: EvalSettings) -> EvaluationFolder:
    """results/evaluation/<BODY>/<arch>-<size>px-<imagenet|scratch>/ of these settings."""
    return workspace.evaluation(settings.body_part, settings.experiment_name)


def latest_experiment_copy(workspace: Workspace, body_part: str) -> EvaluationFolder:
    """results/evaluation/<BODY>/: the copy of the latest experiment's summary.json and comparison.csv."""
    return EvaluationFolder(workspace.evaluation_dir(body_part))


# --- the experiment -------------------------------------------------------------------------------

def run_stage(workspace, settings: EvalSettings, progress: bool = True) -> Dict[str, object]:
    """Train every (arm, seed) not finished yet, then write and return the summary with intervals.

    workspace: the Workspace (or its folder) that stage 01 prepared; it is never created here, so a mistyped
    path fails instead of growing an empty workspace. progress: progress bars. A file-system error ends in a
    UserError naming the path and the fix.
    """
    with os_errors_as_user_errors(f"evaluating {settings.body_part}"):
        return _evaluate(workspace, settings, progress)


def _evaluate(workspace, settings: EvalSettings, progress: bool) -> Dict[str, object]:
    settings = settings.replace()  # a checked copy: the caller's object stays as it was
    workspace = resolve_workspace(workspace)
    if not workspace.tables.is_dir():
        raise UserError(f"{workspace.root} holds no prepared tables ({workspace.tables} is missing).",
                        "Pass the workspace that notebook 01 / `python -m mura_aug prepare` wrote to.")
    device = resolve_device(settings.device)
    train, valid, synthetic = load_tables(workspace, settings.body_part,
                                          need_synthetic="augmented" in settings.arms, check_files=False)
    experiment = experiment_folder(workspace, settings)
    pending = [(seed, arm, experiment.run(run_name(arm, seed, settings.synth_ratio)).path)
               for seed in settings.seed_values for arm in settings.arms]
    pending = [(seed, arm, run_dir) for seed, arm, run_dir in pending if not _is_finished(run_dir, settings)]
    if pending:
        if "augmented" in settings.arms and synthetic.empty and settings.synth_ratio > 0:
            raise UserError(f"No synthetic images are listed in {workspace.augmented_table(settings.body_part)}.",
                            "Generate some with `python -m mura_aug synth` (notebook 05), or evaluate the "
                            "baseline arm only (ARMS ['baseline'], --arms baseline).")
        for frame, what in ((train, "training"), (valid, "valid"), (synthetic, "synthetic")):
            check_images_exist(workspace, frame, what)
        cache = ImageCache(workspace.root, settings.image_size)
        cache.preload(list(train["path"]) + list(valid["path"]), progress)
    for seed, arm, run_dir in pending:
        fit, val = split_patients(train, settings.val_fraction, seed)
        rows, wanted = fit, 0
        if arm == "augmented":
            extra, wanted = choose_synthetic(synthetic, len(fit), settings.synth_ratio, seed)
            cache.preload(list(extra["path"]), progress)
            rows = concat(fit, extra)
        run_dir.mkdir(parents=True, exist_ok=True)
        train_run(run_dir, rows, val, valid, settings, seed, cache, device, progress, wanted)
    return summarise_experiment(workspace, settings)


def _is_finished(run_dir: Path, settings: EvalSettings) -> bool:
    result_path = EvaluationRun(run_dir).result
    if not result_path.is_file():
        return False
    try:
        result = json.loads(result_path.read_text())
    except ValueError:
        return False  # written atomically, so only a hand edit gets here: train it again
    check_same_settings(run_dir, result.get("settings", {}), settings)
    return result.get("stopped") == "early" or int(result.get("epochs_run", 0)) >= settings.epochs


def summarise_experiment(workspace: Workspace, settings: EvalSettings) -> Dict[str, object]:
    """Metrics of every finished run with bootstrap intervals, the arms side by side, and the verdict."""
    import pandas as pd

    experiment = experiment_folder(workspace, settings)

    runs: Dict[str, List[dict]] = {arm: [] for arm in settings.arms}
    for arm in settings.arms:
        for seed in settings.seed_values:
            run_files = experiment.run(run_name(arm, seed, settings.synth_ratio))
            result = json.loads(run_files.result.read_text())
            predictions = pd.read_csv(run_files.predictions, dtype={"study_id": str, "patient": str})
            result["predictions"] = predictions[predictions["part"] == "evaluation"].reset_index(drop=True)
            result["arm"] = arm
            runs[arm].append(result)
    reference = next(iter(runs.values()))[0]["predictions"]
    studies = study_metrics.aggregate_studies(reference)
    study_index = studies.reset_index().set_index("study_id").loc[reference["study_id"], "index"].to_numpy()
    weights = study_metrics.bootstrap_weights(len(studies), settings.n_boot, seed=0)  # shared: pairs the arms

    samples: Dict[Tuple[str, str, str], List[Dict[str, np.ndarray]]] = {}
    rows = []
    for arm, results in runs.items():
        for result in results:
            predictions = result["predictions"]
            if not predictions["path"].equals(reference["path"]):
                raise UserError(f"The predictions of {result['run']} cover other images than the other runs.",
                                f"Move {experiment.run(result['run']).path} away and rerun to score it again.")
            per_level = {"study": study_metrics.aggregate_studies(predictions), "image": predictions}
            result["metrics"] = {}
            for level, frame in per_level.items():
                level_weights = weights if level == "study" else study_metrics.image_weights(weights, study_index)
                auc_samples = None  # AUC does not depend on the threshold: computed once per level
                for name in THRESHOLDS:
                    threshold = 0.5 if name == "0.5" else result["thresholds"][level]
                    level_samples = study_metrics.weighted_metric_samples(
                        frame["label"], frame["probability"], threshold, level_weights, with_auc=auc_samples is None)
                    if auc_samples is None:
                        auc_samples = level_samples["auc"]
                    level_samples["auc"] = auc_samples
                    metrics = study_metrics.binary_metrics(frame["label"], frame["probability"], threshold)
                    metrics.update(study_metrics.intervals_of(level_samples))
                    result["metrics"][f"{level}@{name}"] = metrics
                    if level == "study":
                        samples.setdefault((arm, level, name), []).append(level_samples)
                    rows.append({"arm": arm, "seed": result["seed"], "level": level, "threshold_rule": name,
                                 **{k: v for k, v in metrics.items() if k != "confusion"},
                                 "confusion": json.dumps(metrics["confusion"])})
    arms_table, comparison = _compare_arms(runs, samples, settings)
    summary = {
        "body_part": settings.body_part, "experiment": settings.experiment_name,
        "settings": {**settings.to_dict(), "seeds": settings.seed_values},
        "n_evaluation_images": len(reference), "n_evaluation_studies": len(studies),
        "arms": arms_table, "comparison": comparison,
        "runs": [{k: v for k, v in r.items() if k != "predictions"} for rs in runs.values() for r in rs],
        "verdict": [c["verdict"] for c in comparison],
    }
    atomic_write_json(experiment.summary, summary)
    atomic_write_csv(experiment.runs_table, pd.DataFrame(rows))
    atomic_write_csv(experiment.comparison, comparison_frame(summary))
    # The latest experiment's files also one level up, where the series runner and people look first.
    latest = latest_experiment_copy(workspace, settings.body_part)
    atomic_write_json(latest.summary, summary)
    atomic_write_csv(latest.comparison, comparison_frame(summary))
    return summary


def _compare_arms(runs, samples, settings: EvalSettings):
    """Per arm: metrics averaged over seeds, with intervals from resampling studies *and* seeds; then
    augmented minus baseline on the same resamples (paired by study and by seed)."""
    draws = study_metrics.seed_draws(len(settings.seed_values), settings.n_boot)

    def mean_samples_of(arm, name, metric):
        return study_metrics.mean_over_seeds([s[metric] for s in samples[(arm, "study", name)]], draws)

    arms_table = {}
    for arm, results in runs.items():
        arms_table[arm] = {}
        for name in THRESHOLDS:
            key = f"study@{name}"
            entry = {}
            mean_samples = {m: mean_samples_of(arm, name, m) for m in study_metrics.METRICS}
            for metric in study_metrics.METRICS:
                values = [r["metrics"][key][metric] for r in results]
                entry[metric] = {**study_metrics.summarise(values), "per_seed": values,
                                 "ci": study_metrics.percentile_interval(mean_samples[metric])}
            entry["confusion"] = np.sum([r["metrics"][key]["confusion"] for r in results], axis=0).tolist()
            arms_table[arm][key] = entry
    comparison = []
    if set(runs) == set(ARMS):
        for name in THRESHOLDS:
            key = f"study@{name}"
            for metric in ("kappa", "auc"):
                if name == "tuned" and metric == "auc":
                    continue  # AUC does not depend on the threshold
                base, aug = arms_table["baseline"][key][metric], arms_table["augmented"][key][metric]
                difference = mean_samples_of("augmented", name, metric) - mean_samples_of("baseline", name, metric)
                difference_ci = study_metrics.percentile_interval(difference)
                paired = study_metrics.seed_paired_difference(base["per_seed"], aug["per_seed"])
                label = f"study-level {metric} (threshold {name})" if metric != "auc" else "study-level AUC"
                comparison.append({
                    "metric": metric, "threshold_rule": name, "baseline": base["mean"], "augmented": aug["mean"],
                    "baseline_ci": base["ci"], "augmented_ci": aug["ci"], "difference": aug["mean"] - base["mean"],
                    "difference_ci": difference_ci, "seed_paired": paired,
                    "within_noise": study_metrics.intervals_overlap(base["ci"], aug["ci"]),
                    "verdict": study_metrics.verdict(label, base["mean"], base["ci"], aug["mean"], aug["ci"],
                                                    difference_ci)})
    return arms_table, comparison


def comparison_frame(summary: Dict[str, object]):
    """The table a person reads: one row per arm and study-level metric, value (mean over seeds) and 95% CI."""
    import pandas as pd

    rows = []
    for arm, table in summary["arms"].items():
        for key, entry in table.items():
            for metric in study_metrics.METRICS:
                value = entry[metric]
                rows.append({"arm": arm, "level_threshold": key, "metric": metric, "mean_over_seeds": value["mean"],
                             "std_over_seeds": value["std"], "ci_low": value["ci"][0], "ci_high": value["ci"][1],
                             "seeds": len(value["per_seed"])})
    return pd.DataFrame(rows)


def load_summary(workspace, settings: EvalSettings) -> Dict[str, object]:
    """The summary.json of the experiment of these settings (for plotting without retraining)."""
    path = experiment_folder(resolve_workspace(workspace), settings).summary
    if not path.is_file():
        raise UserError(f"No evaluation results at {path}.", "Run `python -m mura_aug evaluate` (notebook 06) first.")
    return json.loads(path.read_text())


# --- the comparison as text (the demo's last words) ------------------------------------------------

def latest_comparison_text(workspace: Workspace, body_part: str) -> Optional[str]:
    """The comparison of the latest experiment of `body_part` as text, headed by the summary's path; None
    when stage 06 has not finished an experiment there, or the experiment had only one arm."""
    path = latest_experiment_copy(workspace, body_part).summary
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"The evaluation summary {path} cannot be read ({exc}).",
                        "Rerun stage 06 (python -m mura_aug evaluate, or notebook 06): finished runs are kept and "
                        "the summary is written again.") from exc
    text = comparison_text(summary)
    return f"({path})\n{text}" if text else None


def comparison_text(summary: Dict[str, object]) -> Optional[str]:
    """Baseline, augmented and their difference with 95% intervals per compared metric, then the verdicts."""
    import pandas as pd

    rows = [{"metric": f"{entry['metric']} (threshold {entry['threshold_rule']})",
             "baseline": _with_interval(entry["baseline"], entry["baseline_ci"]),
             "augmented": _with_interval(entry["augmented"], entry["augmented_ci"]),
             "augmented - baseline": _with_interval(entry["difference"], entry["difference_ci"], signed=True),
             "within noise": "yes" if entry["within_noise"] else "no"}
            for entry in summary["comparison"]]
    if not rows:
        return None
    lines = [pd.DataFrame(rows).to_string(index=False)]
    lines += [f"  - {verdict}" for verdict in summary["verdict"]]
    return "\n".join(lines)


def _with_interval(value: float, interval: List[float], signed: bool = False) -> str:
    number = "{:+.3f}" if signed else "{:.3f}"
    return f"{number.format(value)} [{number.format(interval[0])}, {number.format(interval[1])}]"
