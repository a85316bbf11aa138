"""Stage 06: leak checks, the experiment end to end on the demo data (CLI), resume, and model building."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation_data import BODY, SYNTHETIC_PER_CLASS
from mura_aug import cli
from mura_aug.errors import UserError
from mura_aug.evaluate import classifier, data, stage
from mura_aug.evaluate.settings import EvalSettings
from mura_aug.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


def evaluate(workspace, **settings):
    """Stage 06 through its one entry point, as notebook 06 and the CLI call it."""
    return stage.run_stage(workspace, EvalSettings(**{"body_part": BODY, **settings}), progress=False)


def _copy(workspace: Workspace, tmp_path: Path) -> Workspace:
    shutil.copytree(workspace.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


# --- leaks ----------------------------------------------------------------------------------------

def test_patient_in_training_and_evaluation_raises(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    valid_path = workspace.table(BODY, "valid")
    valid = pd.read_csv(valid_path, dtype={"patient": str})
    train = pd.read_csv(workspace.table(BODY, "train"), dtype={"patient": str})
    valid.loc[0, "patient"] = train.loc[0, "patient"]  # one valid image now belongs to a training patient
    valid.to_csv(valid_path, index=False)
    with pytest.raises(UserError, match=f"both training and evaluation.*{train.loc[0, 'patient']}"):
        data.load_tables(workspace, BODY, need_synthetic=False)
    with pytest.raises(UserError, match="both training and evaluation"):
        evaluate(workspace, arch="tiny", pretrained=False, image_size=32, epochs=1, seeds=1, arms=("baseline",),
                 workers=0)


def test_synthetic_row_in_evaluation_table_raises(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    augmented = pd.read_csv(workspace.augmented_table(BODY), dtype={"patient": str})
    valid_path = workspace.table(BODY, "valid")
    fake = augmented[augmented["source"] == "synthetic"].head(1)
    pd.concat([pd.read_csv(valid_path), fake]).to_csv(valid_path, index=False)
    with pytest.raises(UserError, match="synthetic image.*reached"):
        data.load_tables(workspace, BODY, need_synthetic=True)


def test_internal_validation_is_patient_level_and_real_only(eval_workspace):
    train, valid, synthetic = data.load_tables(eval_workspace, BODY, need_synthetic=True)
    assert len(synthetic) == 2 * SYNTHETIC_PER_CLASS and (synthetic["source"] == "synthetic").all()
    assert (train["source"] == "real").all() and (valid["source"] == "real").all()
    fit, val = data.split_patients(train, 0.2, seed=3)
    assert not set(fit["patient"]) & set(val["patient"])
    assert len(fit) + len(val) == len(train)
    assert set(val["label"]) == {0, 1} and set(fit["label"]) == {0, 1}
    with pytest.raises(UserError, match="both training and internal validation"):
        data.check_no_patient_overlap(fit, pd.concat([val, fit.head(1)]), "training", "internal validation")


def test_synthetic_ratio_is_capped_by_what_exists(eval_workspace):
    _, _, synthetic = data.load_tables(eval_workspace, BODY, need_synthetic=True)
    few, wanted = data.choose_synthetic(synthetic, n_real=10, synth_ratio=0.5, seed=0)
    assert wanted == 5 and len(few) == 5
    capped, wanted = data.choose_synthetic(synthetic, n_real=100, synth_ratio=2.0, seed=0)
    assert wanted == 200 and len(capped) == len(synthetic)


def test_missing_augmented_table_says_run_synth(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    workspace.augmented_table(BODY).unlink()
    with pytest.raises(UserError, match="synth"):
        evaluate(workspace, arch="tiny", pretrained=False, epochs=1, seeds=1)


@pytest.mark.parametrize("damage", ["filters unfinished", "table edited", "no summary"])
def test_a_table_whose_stage_05_filters_did_not_finish_is_refused(eval_workspace, tmp_path, damage):
    workspace = _copy(eval_workspace, tmp_path)
    summary_path = workspace.synth_summary(BODY)
    if damage == "filters unfinished":  # what stage 05 records while (or when) its filters fail
        summary = json.loads(summary_path.read_text())
        summary["filters"].update(finished=False, error="the memorisation filter failed")
        summary_path.write_text(json.dumps(summary))
    elif damage == "table edited":  # a row added by hand after stage 05 wrote the table
        table = workspace.augmented_table(BODY)
        lines = table.read_text(encoding="utf-8").splitlines()
        table.write_text("\n".join(lines + [lines[-1]]) + "\n", encoding="utf-8")
    else:
        summary_path.unlink()
    with pytest.raises(UserError, match="augmented table of XR_SHOULDER cannot be used") as caught:
        evaluate(workspace, arch="tiny", pretrained=False, epochs=1, seeds=1)
    assert "Run stage 05 again" in str(caught.value)
    # The baseline arm needs no fakes: it still runs on such a workspace.
    summary = evaluate(workspace, arch="tiny", pretrained=False, epochs=1, seeds=1, arms=("baseline",),
                       image_size=32)
    assert [run["arm"] for run in summary["runs"]] == ["baseline"]


# --- the experiment -------------------------------------------------------------------------------

def test_short_cpu_run_learns_the_positive_sign(finished_experiment):
    _, experiment = finished_experiment
    summary = json.loads(experiment.summary.read_text())
    baseline = next(run for run in summary["runs"] if run["arm"] == "baseline")
    study = baseline["metrics"]["study@0.5"]
    # Chance is kappa 0; the hardware that marks abnormal demo studies is easy to see at 64 px.
    assert study["kappa"] >= 0.5, study
    assert study["auc"] >= 0.8, study
    assert study["n"] == summary["n_evaluation_studies"] and study["n"] < summary["n_evaluation_images"]
    low, high = study["kappa_ci"]
    assert low <= study["kappa"] <= high


def test_synthetic_rows_only_in_training(finished_experiment):
    workspace, experiment = finished_experiment
    runs = {run["run"]: run for run in json.loads(experiment.summary.read_text())["runs"]}
    augmented, baseline = runs["augmented-x0.5-seed0"], runs["baseline-seed0"]
    assert baseline["n_train_synthetic"] == 0
    assert augmented["n_synthetic_requested"] == round(0.5 * augmented["n_train_real"])
    assert augmented["n_train_synthetic"] == min(augmented["n_synthetic_requested"], 2 * SYNTHETIC_PER_CLASS)
    for name in runs:
        predictions = pd.read_csv(experiment.run(name).predictions)
        assert set(predictions["part"]) == {"evaluation", "internal_validation"}
        assert not predictions["path"].str.contains("Augmented_Fakes").any()
    valid = pd.read_csv(workspace.table(BODY, "valid"))
    evaluated = pd.read_csv(experiment.run("augmented-x0.5-seed0").predictions)
    assert sorted(evaluated.loc[evaluated["part"] == "evaluation", "path"]) == sorted(valid["path"])


def test_results_files_and_comparison(finished_experiment):
    workspace, experiment = finished_experiment
    summary = json.loads(experiment.summary.read_text())
    assert set(summary["arms"]) == {"baseline", "augmented"}
    kappa = next(c for c in summary["comparison"] if c["metric"] == "kappa" and c["threshold_rule"] == "0.5")
    assert kappa["within_noise"] == (kappa["baseline_ci"][0] <= kappa["augmented_ci"][1]
                                     and kappa["augmented_ci"][0] <= kappa["baseline_ci"][1])
    assert ("within noise" in kappa["verdict"]) == kappa["within_noise"]
    table = pd.read_csv(experiment.comparison)
    assert {"arm", "metric", "mean_over_seeds", "ci_low", "ci_high"} <= set(table.columns)
    assert (table["ci_low"] <= table["mean_over_seeds"] + 1e-9).all()
    runs_table = pd.read_csv(experiment.runs_table)
    assert set(runs_table["level"]) == {"study", "image"} and set(runs_table["threshold_rule"].astype(str)) == {
        "0.5", "tuned"}
    latest = stage.latest_experiment_copy(workspace, BODY)  # where the series runner and people look first
    assert json.loads(latest.summary.read_text()) == summary and latest.comparison.is_file()
    for run in summary["runs"]:
        assert 1 <= run["best_epoch"] <= run["epochs_run"] == len(run["history"]) == 6


def test_rerun_skips_finished_runs_and_more_epochs_continue(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    options = dict(arch="tiny", pretrained=False, image_size=32, seeds=1, arms=("baseline",), workers=0,
                   early_stop_patience=5, n_boot=50)
    first = evaluate(workspace, epochs=1, **options)
    result = workspace.evaluation(BODY, "tiny-32px-scratch").run("baseline-seed0").result
    stamp = result.stat().st_mtime_ns
    evaluate(workspace, epochs=1, **options)
    assert result.stat().st_mtime_ns == stamp  # finished: not trained again
    second = evaluate(workspace, epochs=2, **options)
    history = second["runs"][0]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first["runs"][0]["history"][0]  # epoch 1 came from the checkpoint
    with pytest.raises(UserError, match="other settings.*batch_size"):
        evaluate(workspace, epochs=3, batch_size=4, **options)


@pytest.mark.parametrize("bad, named", [
    ({"arch": "vgg"}, "ARCH"), ({"epochs": 0}, "EPOCHS"), ({"synth_ratio": -1}, "SYNTH_RATIO"),
    ({"arms": ("both",)}, "ARMS"), ({"arms": ()}, "ARMS"), ({"image_size": 8}, "IMAGE_SIZE"),
    ({"seeds": 0}, "SEEDS"), ({"seeds": [1, 1]}, "SEEDS"), ({"learning_rate": 0.0}, "LEARNING_RATE"),
    ({"early_stop_patience": 0}, "EARLY_STOP_PATIENCE"), ({"n_boot": 5}, "N_BOOT"),
    ({"body_part": "XR_KNEE"}, "body part"), ({"arch": "tiny", "pretrained": True}, "PRETRAINED"),
])
def test_bad_parameters_are_user_errors_naming_the_setting(eval_workspace, bad, named):
    results = eval_workspace.evaluation_dir(BODY)
    with pytest.raises(UserError, match=named):
        evaluate(eval_workspace, **{"pretrained": False, **bad})
    assert not results.exists()  # refused before anything was written


def test_missing_workspace_is_not_created(tmp_path):
    missing = tmp_path / "typo"
    with pytest.raises(UserError, match="no prepared tables"):
        evaluate(missing, arch="tiny", pretrained=False)
    assert not missing.exists()


def test_corrupt_image_names_the_file(eval_workspace, tmp_path):
    workspace = _copy(eval_workspace, tmp_path)
    broken = pd.read_csv(workspace.table(BODY, "train"))["path"].iloc[3]
    workspace.absolute(broken).write_bytes(b"not a png")
    with pytest.raises(UserError, match=broken.split("/")[-1]):
        evaluate(workspace, arch="tiny", pretrained=False, image_size=32, epochs=1, seeds=1, arms=("baseline",),
                 workers=0)


# --- settings: one name everywhere, stored results still recognised -------------------------------

def test_command_line_and_notebook_parameters_give_the_same_settings():
    parser = cli.build_parser("evaluate")
    typed = ["--arch", "resnet50", "--image-size", "320", "--learning-rate", "3e-4", "--early-stop-patience", "5",
             "--seeds", "2", "--arms", "baseline", "--no-pretrained", "--rotation-deg", "15"]
    from_cli = EvalSettings.from_args(parser.parse_args(typed))
    from_notebook = EvalSettings.from_parameters({
        "ARCH": "resnet50", "IMAGE_SIZE": 320, "LEARNING_RATE": 3e-4, "EARLY_STOP_PATIENCE": 5, "SEEDS": 2,
        "ARMS": ["baseline"], "PRETRAINED": False, "ROTATION_DEG": 15, "WORKSPACE": "not a setting"})
    assert from_cli == from_notebook
    assert from_cli.seed_values == [0, 1] and from_cli.arms == ("baseline",)
    # the older flags are aliases of the same settings
    old = EvalSettings.from_args(parser.parse_args([*typed[:4], "--lr", "3e-4", "--patience", "5", *typed[8:]]))
    assert old == from_cli


def test_a_list_of_seeds_is_used_as_given():
    assert EvalSettings(seeds=[3, 4]).check().seed_values == [3, 4]
    assert EvalSettings().check().seed_values == [0, 1, 2]


def test_the_stored_names_of_a_run_are_those_finished_runs_carry():
    # result.json and checkpoint.pt of every run made so far store exactly these names: a rename would make
    # reruns of existing experiments refuse their runs instead of skipping them.
    assert EvalSettings(arch="tiny", pretrained=False, image_size=64, batch_size=16).fingerprint() == {
        "arch": "tiny", "pretrained": False, "image_size": 64, "batch_size": 16, "learning_rate": 1e-3,
        "lr_patience": 0, "early_stop_patience": 3, "val_fraction": 0.1, "rotation_deg": 30.0}


def test_a_rerun_under_the_new_names_skips_the_finished_runs(finished_experiment, tmp_path, capsys):
    workspace = _copy(finished_experiment[0], tmp_path)
    experiment = workspace.evaluation(BODY, "tiny-64px-scratch")
    results = {name: experiment.run(name).result for name in ("baseline-seed0", "augmented-x0.5-seed0")}
    stamps = {name: path.stat().st_mtime_ns for name, path in results.items()}
    stored = json.loads(results["baseline-seed0"].read_text())["settings"]
    # made by the fixture with --patience 8 and the default learning rate; rerun with the settings' own names
    status = cli.main(["evaluate", "--workspace", str(workspace.root), "--arch", "tiny", "--image-size", "64",
                       "--epochs", "6", "--seeds", "1", "--synth-ratio", "0.5", "--batch-size", "16",
                       "--val-fraction", "0.2", "--early-stop-patience", "8", "--learning-rate", "1e-3",
                       "--n-boot", "200", "--workers", "0"])
    assert status == 0, capsys.readouterr().err
    evaluate(workspace, arch="tiny", pretrained=False, image_size=64, epochs=6, seeds=1, synth_ratio=0.5,
             batch_size=16, val_fraction=0.2, early_stop_patience=8, n_boot=200, workers=0)
    assert {name: path.stat().st_mtime_ns for name, path in results.items()} == stamps  # nothing retrained
    assert stored["early_stop_patience"] == 8 and stored["learning_rate"] == 1e-3


# --- models ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["densenet169", "resnet50", "tiny"])
def test_models_have_one_logit(arch):
    import torch

    model = classifier.build_model(arch, pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1)


def test_offline_pretrained_download_says_what_to_do(monkeypatch):
    import urllib.error

    from torchvision.models import WeightsEnum

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(UserError, match="--no-pretrained"):
        classifier.build_model("densenet169", pretrained=True)


# --- out of GPU memory (issue 17) -----------------------------------------------------------------

def _conv_fits_only(monkeypatch, images_per_pass: int) -> list:
    """torch.nn.functional.conv2d raises CUDA's out-of-memory error on more than `images_per_pass` images
    (as a GPU would that holds that many); returns the batch sizes it refused."""
    import torch

    real_conv2d = torch.nn.functional.conv2d
    refused = []

    def conv2d(x, *args, **kwargs):
        if x.shape[0] > images_per_pass:
            refused.append(int(x.shape[0]))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real_conv2d(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", conv2d)
    return refused


OOM_OPTIONS = dict(arch="tiny", pretrained=False, image_size=32, seeds=1, arms=("baseline",), workers=0,
                   early_stop_patience=5, n_boot=50, epochs=1, batch_size=16)


def test_out_of_memory_in_stage_06_halves_the_passes_says_so_and_finishes(eval_workspace, tmp_path, monkeypatch,
                                                                          capsys):
    workspace = _copy(eval_workspace, tmp_path)
    refused = _conv_fits_only(monkeypatch, 4)
    summary = evaluate(workspace, **OOM_OPTIONS)
    out = capsys.readouterr().out
    said = [line for line in out.splitlines() if "out of GPU memory" in line]
    assert refused[:2] == [16, 8] and set(refused) <= {16, 8}  # 16 and 8 failed once each, then passes of 4
    assert len(said) == 2 and "with 16 images per pass: continuing with 8" in said[0]
    assert "with 8 images per pass: continuing with 4" in said[1] and "same batch of 16" in said[1]
    run = summary["runs"][0]
    assert run["epochs_run"] == 1 and all(np.isfinite(h["train_loss"]) for h in run["history"])
    predictions = pd.read_csv(workspace.evaluation(BODY, "tiny-32px-scratch").run("baseline-seed0").predictions)
    assert predictions["probability"].between(0, 1).all()


def test_out_of_memory_at_one_image_in_stage_06_names_what_would_fit(eval_workspace, tmp_path, monkeypatch):
    workspace = _copy(eval_workspace, tmp_path)
    _conv_fits_only(monkeypatch, 0)
    with pytest.raises(UserError, match="not even one image per pass") as caught:
        evaluate(workspace, **{**OOM_OPTIONS, "image_size": 64})
    assert "tiny at 64 px" in caught.value.problem and "--image-size 32" in caught.value.fix
