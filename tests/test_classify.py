"""Stage 06: leak checks, the experiment end to end on the demo data (CLI), resume, and model building."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mura_aug.evaluate import stage as classify
from mura_aug.errors import UserError
from mura_aug.workspace import Workspace

BODY = "XR_SHOULDER"
SYNTHETIC_PER_CLASS = 12  # fakes added to the test workspace (copies of real training images)


@pytest.fixture(scope="module")
def eval_workspace(prepared_workspace, tmp_path_factory) -> Workspace:
    """A prepared demo workspace (a private copy) plus synthetic rows, as stage 05 would add them."""
    target = tmp_path_factory.mktemp("eval") / "workspace"
    shutil.copytree(prepared_workspace.root, target)
    workspace = Workspace(target)
    train = pd.read_csv(workspace.tables / f"{BODY}_train.csv", dtype={"patient": str})
    fakes = []
    for cls in ("positive", "negative"):
        folder = workspace.augmented_dir(cls, BODY)
        folder.mkdir(parents=True, exist_ok=True)
        for index, source_path in enumerate(train[train["class"] == cls]["path"].head(SYNTHETIC_PER_CLASS)):
            path = folder / f"test-run_kimg000001.000_seed{index:06d}.png"
            shutil.copyfile(workspace.root / source_path, path)
            relative = path.relative_to(workspace.root).as_posix()
            fakes.append({"path": relative, "filename": relative, "class": cls, "label": int(cls == "positive"),
                          "patient": "synthetic", "study": "synthetic", "study_id": relative, "body_part": BODY,
                          "split": "train", "view": "image1", "source": "synthetic", "run": "test-run",
                          "kimg": 1.0, "seed": index, "psi": 1.0})
    pd.concat([train, pd.DataFrame(fakes)]).to_csv(workspace.tables / f"{BODY}_train_augmented.csv", index=False)
    return workspace


@pytest.fixture(scope="module")
def finished_experiment(eval_workspace, tmp_path_factory):
    """Both arms, one seed, tiny CNN at 64 px, run through the CLI on a copy of the workspace."""
    from mura_aug import cli

    workspace = Workspace(tmp_path_factory.mktemp("experiment") / "workspace")
    shutil.copytree(eval_workspace.root, workspace.root)
    status = cli.main(["evaluate", "--workspace", str(workspace.root), "--arch", "tiny", "--image-size", "64",
                       "--epochs", "6", "--seeds", "1", "--synth-ratio", "0.5", "--batch-size", "16",
                       "--val-fraction", "0.2", "--patience", "8", "--n-boot", "200", "--workers", "0"])
    assert status == 0
    return workspace, workspace.results / "evaluation" / BODY / "tiny-64px-scratch"


def _copy(workspace: Workspace, tmp_path: Path) -> Workspace:
    shutil.copytree(workspace.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


# --- leaks ----------------------------------------------------------------------------------------

def test_patient_in_training_and_evaluation_raises(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    valid_path = workspace.tables / f"{BODY}_valid.csv"
    valid = pd.read_csv(valid_path, dtype={"patient": str})
    train = pd.read_csv(workspace.tables / f"{BODY}_train.csv", dtype={"patient": str})
    valid.loc[0, "patient"] = train.loc[0, "patient"]  # one valid image now belongs to a training patient
    valid.to_csv(valid_path, index=False)
    with pytest.raises(UserError, match=f"both training and evaluation.*{train.loc[0, 'patient']}"):
        classify.load_tables(workspace, BODY, need_synthetic=False)
    with pytest.raises(UserError, match="both training and evaluation"):
        classify.evaluate(workspace, BODY, arch="tiny", pretrained=False, image_size=32, epochs=1, seeds=1,
                          arms=("baseline",), workers=0, progress=False)


def test_synthetic_row_in_evaluation_table_raises(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    augmented = pd.read_csv(workspace.tables / f"{BODY}_train_augmented.csv", dtype={"patient": str})
    valid_path = workspace.tables / f"{BODY}_valid.csv"
    fake = augmented[augmented["source"] == "synthetic"].head(1)
    pd.concat([pd.read_csv(valid_path), fake]).to_csv(valid_path, index=False)
    with pytest.raises(UserError, match="synthetic image.*reached"):
        classify.load_tables(workspace, BODY, need_synthetic=True)


def test_internal_validation_is_patient_level_and_real_only(eval_workspace):
    train, valid, synthetic = classify.load_tables(eval_workspace, BODY, need_synthetic=True)
    assert len(synthetic) == 2 * SYNTHETIC_PER_CLASS and (synthetic["source"] == "synthetic").all()
    assert (train["source"] == "real").all() and (valid["source"] == "real").all()
    fit, val = classify.split_patients(train, 0.2, seed=3)
    assert not set(fit["patient"]) & set(val["patient"])
    assert len(fit) + len(val) == len(train)
    assert set(val["label"]) == {0, 1} and set(fit["label"]) == {0, 1}
    with pytest.raises(UserError, match="both training and internal validation"):
        classify.check_no_patient_overlap(fit, pd.concat([val, fit.head(1)]), "training", "internal validation")


def test_synthetic_ratio_is_capped_by_what_exists(eval_workspace):
    _, _, synthetic = classify.load_tables(eval_workspace, BODY, need_synthetic=True)
    few, wanted = classify.choose_synthetic(synthetic, n_real=10, synth_ratio=0.5, seed=0)
    assert wanted == 5 and len(few) == 5
    capped, wanted = classify.choose_synthetic(synthetic, n_real=100, synth_ratio=2.0, seed=0)
    assert wanted == 200 and len(capped) == len(synthetic)


def test_missing_augmented_table_says_run_synth(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    (workspace.tables / f"{BODY}_train_augmented.csv").unlink()
    with pytest.raises(UserError, match="synth"):
        classify.evaluate(workspace, BODY, arch="tiny", pretrained=False, epochs=1, seeds=1, progress=False)


# --- the experiment -------------------------------------------------------------------------------

def test_short_cpu_run_learns_the_positive_sign(finished_experiment):
    _, out_dir = finished_experiment
    summary = json.loads((out_dir / "summary.json").read_text())
    baseline = next(run for run in summary["runs"] if run["arm"] == "baseline")
    study = baseline["metrics"]["study@0.5"]
    # Chance is kappa 0; the hardware that marks abnormal demo studies is easy to see at 64 px.
    assert study["kappa"] >= 0.5, study
    assert study["auc"] >= 0.8, study
    assert study["n"] == summary["n_evaluation_studies"] and study["n"] < summary["n_evaluation_images"]
    low, high = study["kappa_ci"]
    assert low <= study["kappa"] <= high


def test_synthetic_rows_only_in_training(finished_experiment):
    workspace, out_dir = finished_experiment
    runs = {run["run"]: run for run in json.loads((out_dir / "summary.json").read_text())["runs"]}
    augmented, baseline = runs["augmented-x0.5-seed0"], runs["baseline-seed0"]
    assert baseline["n_train_synthetic"] == 0
    assert augmented["n_synthetic_requested"] == round(0.5 * augmented["n_train_real"])
    assert augmented["n_train_synthetic"] == min(augmented["n_synthetic_requested"], 2 * SYNTHETIC_PER_CLASS)
    for name in runs:
        predictions = pd.read_csv(out_dir / "runs" / name / "predictions.csv")
        assert set(predictions["part"]) == {"evaluation", "internal_validation"}
        assert not predictions["path"].str.contains("Augmented_Fakes").any()
    valid = pd.read_csv(workspace.tables / f"{BODY}_valid.csv")
    evaluated = pd.read_csv(out_dir / "runs" / "augmented-x0.5-seed0" / "predictions.csv")
    assert sorted(evaluated.loc[evaluated["part"] == "evaluation", "path"]) == sorted(valid["path"])


def test_results_files_and_comparison(finished_experiment):
    _, out_dir = finished_experiment
    summary = json.loads((out_dir / "summary.json").read_text())
    assert set(summary["arms"]) == {"baseline", "augmented"}
    kappa = next(c for c in summary["comparison"] if c["metric"] == "kappa" and c["threshold_rule"] == "0.5")
    assert kappa["within_noise"] == (kappa["baseline_ci"][0] <= kappa["augmented_ci"][1]
                                     and kappa["augmented_ci"][0] <= kappa["baseline_ci"][1])
    assert ("within noise" in kappa["verdict"]) == kappa["within_noise"]
    table = pd.read_csv(out_dir / "comparison.csv")
    assert {"arm", "metric", "mean_over_seeds", "ci_low", "ci_high"} <= set(table.columns)
    assert (table["ci_low"] <= table["mean_over_seeds"] + 1e-9).all()
    runs_table = pd.read_csv(out_dir / "runs.csv")
    assert set(runs_table["level"]) == {"study", "image"} and set(runs_table["threshold_rule"].astype(str)) == {
        "0.5", "tuned"}
    assert (out_dir.parent / "comparison.csv").is_file()  # the latest experiment, where the series runner looks
    for run in summary["runs"]:
        assert 1 <= run["best_epoch"] <= run["epochs_run"] == len(run["history"]) == 6


def test_rerun_skips_finished_runs_and_more_epochs_continue(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    options = dict(arch="tiny", pretrained=False, image_size=32, seeds=1, arms=("baseline",), workers=0,
                   early_stop_patience=5, n_boot=50, progress=False)
    first = classify.evaluate(workspace, BODY, epochs=1, **options)
    run_dir = workspace.results / "evaluation" / BODY / "tiny-32px-scratch" / "runs" / "baseline-seed0"
    stamp = (run_dir / "result.json").stat().st_mtime_ns
    classify.evaluate(workspace, BODY, epochs=1, **options)
    assert (run_dir / "result.json").stat().st_mtime_ns == stamp  # finished: not trained again
    second = classify.evaluate(workspace, BODY, epochs=2, **options)
    history = second["runs"][0]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first["runs"][0]["history"][0]  # epoch 1 came from the checkpoint
    with pytest.raises(UserError, match="other settings.*batch_size"):
        classify.evaluate(workspace, BODY, epochs=3, batch_size=4, **options)


def test_bad_parameters_are_user_errors(eval_workspace):
    for bad in ({"arch": "vgg"}, {"epochs": 0}, {"synth_ratio": -1}, {"arms": ("both",)}, {"image_size": 8}):
        with pytest.raises(UserError):
            classify.evaluate(eval_workspace, BODY, progress=False, **{"pretrained": False, **bad})


def test_missing_workspace_is_not_created(tmp_path):
    missing = tmp_path / "typo"
    with pytest.raises(UserError, match="no prepared tables"):
        classify.evaluate(missing, BODY, arch="tiny", pretrained=False, progress=False)
    assert not missing.exists()


def test_corrupt_image_names_the_file(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    broken = pd.read_csv(workspace.tables / f"{BODY}_train.csv")["path"].iloc[3]
    (workspace.root / broken).write_bytes(b"not a png")
    with pytest.raises(UserError, match=broken.split("/")[-1]):
        classify.evaluate(workspace, BODY, arch="tiny", pretrained=False, image_size=32, epochs=1, seeds=1,
                          arms=("baseline",), workers=0, progress=False)


# --- models ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["densenet169", "resnet50", "tiny"])
def test_models_have_one_logit(arch):
    import torch

    model = classify.build_model(arch, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1)


def test_offline_pretrained_download_says_what_to_do(monkeypatch):
    import urllib.error

    from torchvision.models import WeightsEnum

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match="--no-pretrained"):
        classify.build_model("densenet169", pretrained=True, progress=False)
