"""Notebook 06 is stored clean, declares the stage's settings, and runs under papermill at tiny settings."""
from __future__ import annotations

import json
import shutil

import nbformat
import papermill

from evaluation_data import BODY
from mura_aug.evaluate import stage
from mura_aug.evaluate.settings import EvalSettings
from mura_aug.notebooks import nbtools
from mura_aug.workspace import Workspace

NOTEBOOK = nbtools.NOTEBOOKS_DIR / "06_densenet_eval.ipynb"
CONTRACT_PARAMETERS = ("WORKSPACE", "BODY_PART", "ARCH", "PRETRAINED", "IMAGE_SIZE", "EPOCHS", "SEEDS",
                       "SYNTH_RATIO", "BATCH_SIZE")


def test_notebook_is_clean_and_declares_the_contract_parameters():
    assert nbtools.lint_notebook(NOTEBOOK) == []
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    tagged = [cell for cell in nb.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1 and nbtools.notebook_has_outputs(NOTEBOOK) == []
    declared = papermill.inspect_notebook(str(NOTEBOOK))
    assert set(CONTRACT_PARAMETERS) <= set(declared)
    assert declared["ARCH"]["default"] == '"densenet169"' and declared["IMAGE_SIZE"]["default"] == "224"
    assert all(len(cell.source.splitlines()) <= 25 for cell in nb.cells if cell.cell_type == "code")


def test_notebook_parameters_are_the_stage_settings_with_their_defaults():
    parameters = {name: info["default"] for name, info in nbtools.read_parameters(NOTEBOOK).items()}
    assert parameters.pop("WORKSPACE") is None  # the one parameter that is not a setting of the stage
    assert list(parameters) == EvalSettings.notebook_names()
    for name, default in parameters.items():
        expected = EvalSettings.notebook_default_of(name.lower())
        assert default == (list(expected) if isinstance(expected, tuple) else expected), name


def test_papermill_runs_notebook_06_at_tiny_settings(eval_workspace, tmp_path):
    workspace = Workspace(tmp_path / "workspace")
    shutil.copytree(eval_workspace.root, workspace.root)
    output = tmp_path / "06_executed.ipynb"
    nbtools.execute_notebook(NOTEBOOK, output, cwd=tmp_path, parameters=dict(
        WORKSPACE=str(workspace.root), BODY_PART=BODY, ARCH="tiny", PRETRAINED=False, IMAGE_SIZE=32, EPOCHS=2,
        SEEDS=1, SYNTH_RATIO=0.5, BATCH_SIZE=16, N_BOOT=50, WORKERS=0))
    settings = EvalSettings(body_part=BODY, arch="tiny", pretrained=False, image_size=32)
    summary = json.loads(stage.experiment_folder(workspace, settings).summary.read_text())
    assert {run["run"] for run in summary["runs"]} == {"baseline-seed0", "augmented-x0.5-seed0"}
    executed = nbformat.read(str(output), as_version=4)
    printed = "".join(out.get("text", "") for cell in executed.cells if cell.cell_type == "code"
                      for out in cell.get("outputs", []))
    assert summary["verdict"][0] in printed  # the verdict reached the reader
    images = [out for cell in executed.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
              if "image/png" in out.get("data", {})]
    assert len(images) == 4  # training curves, ROC curves, two confusion-matrix figures
