"""Notebook 01 is stored clean and runs under papermill on demo data, as a folder ("" = generated) and a zip."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from mura_aug.notebooks import nbtools
from mura_aug.prepare.settings import PrepareSettings
from mura_aug.prepare.stage import load_table
from mura_aug.workspace import Workspace

NOTEBOOK = nbtools.NOTEBOOKS_DIR / "01_prepare.ipynb"
PARAMETER_NAMES = ("WORKSPACE", "MURA_PATH", "BODY_PART", "RESOLUTION", "FIT", "CROP_BORDERS", "CONTRAST",
                   "WORKERS", "DEMO_PATIENTS", "DEMO_SUBTLETY", "DEMO_POSITIVE_SHARE")


def test_notebook_is_stored_clean_with_the_contract_parameters():
    import papermill

    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    assert nbtools.lint_notebook(NOTEBOOK) == []
    declared = papermill.inspect_notebook(str(NOTEBOOK))  # papermill must parse every line itself
    assert set(declared) == set(PARAMETER_NAMES) == set(nbtools.read_parameters(NOTEBOOK))
    assert declared["MURA_PATH"]["default"] == "None" and declared["RESOLUTION"]["default"] == "256"
    assert all(len(c.source.splitlines()) <= 15 for c in nb.cells if c.cell_type == "code")


def test_notebook_parameters_are_the_stage_settings_with_their_defaults():
    parameters = {name: info["default"] for name, info in nbtools.read_parameters(NOTEBOOK).items()}
    assert parameters.pop("WORKSPACE") is None  # the one parameter that is not a setting of the stage
    assert list(parameters) == PrepareSettings.notebook_names()
    for name, default in parameters.items():
        assert default == PrepareSettings.notebook_default_of(name.lower()), name


def count_images(executed: Path) -> int:
    nb = nbformat.read(str(executed), as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))


@pytest.mark.parametrize("as_zip", [False, True], ids=["generated-folder", "zip"])
def test_papermill_runs_notebook_01_on_demo_data(as_zip, tmp_path):
    workspace = tmp_path / "ws"
    mura_path = ""
    if as_zip:
        from mura_aug.prepare.demo_data import make_demo_mura

        mura_path = str(make_demo_mura(tmp_path / "download", patients=8, seed=1, as_zip=True))
    output = tmp_path / "01_executed.ipynb"
    # the zip run also uses two worker processes, as the demo does (spawned from inside the kernel)
    params = dict(WORKSPACE=str(workspace), MURA_PATH=mura_path, RESOLUTION=16, WORKERS=2 if as_zip else 1,
                  DEMO_PATIENTS=8, CROP_BORDERS=as_zip)
    nbtools.execute_notebook(NOTEBOOK, output, parameters=params, cwd=tmp_path, timeout_s=300)

    assert (workspace / "demo" / "MURA-v1.1").is_dir() != as_zip  # demo data generated only for ""
    summary = json.loads((workspace / "data" / "tables" / "XR_SHOULDER_prepare_summary.json").read_text())
    assert summary["source_kind"] == ("zip" if as_zip else "folder")
    assert summary["parameters"]["resolution"] == 16 and summary["parameters"]["crop_borders"] == as_zip
    assert summary["parameters"]["workers"] == (2 if as_zip else 1)
    for cls in ("positive", "negative"):
        assert Workspace(workspace).dataset_zip("XR_SHOULDER", cls, 16).is_file()
    assert len(load_table(workspace, "XR_SHOULDER", "train")) == summary["images"]["train"]["total"] > 0
    assert count_images(output) == 3  # class counts, and one example grid per class
