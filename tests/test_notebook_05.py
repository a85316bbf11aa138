"""Notebook 05 runs under papermill on a prepared demo workspace with tiny generators, is stored clean, and its
parameters are SynthSettings'."""
from __future__ import annotations

import json
import re

from pathlib import Path

import nbformat
import pandas as pd
from PIL import Image

import mura_aug
from mura_aug.notebooks import nbtools
from mura_aug.synth import manifest
from mura_aug.synth.settings import SynthSettings
from synth_helpers import add_tiny_run_with_state

NOTEBOOK = nbtools.NOTEBOOKS_DIR / "05_crop_sharpen.ipynb"
SHARED_PARAMETERS = {"WORKSPACE"}  # every notebook's; it picks the workspace, not a setting of stage 05


def test_notebook_is_stored_clean_with_one_parameters_cell():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and nbtools.notebook_has_outputs(NOTEBOOK) == []
    for name in ("WORKSPACE", "BODY_PART", "N_PER_CLASS", "TRUNCATION_PSI", "SHARPEN_FACTOR", "SEED", "RUNS"):
        assert re.search(rf"^{name}: [^=]+ = ", tagged[0].source, re.M)  # annotated literals
    assert all(len(c.source.splitlines()) <= 25 for c in nb.cells if c.cell_type == "code")
    assert nbtools.lint_notebook(NOTEBOOK) == []
    # papermill itself must understand every line (a '=' in a comment hides the parameter from it)
    import papermill

    declared = papermill.inspect_notebook(str(NOTEBOOK))
    assert set(nbtools.read_parameters(NOTEBOOK)) == set(declared)
    assert declared["N_PER_CLASS"]["default"] == "100"


def test_notebook_parameters_are_the_stage_settings():
    declared = nbtools.read_parameters(NOTEBOOK)
    assert set(declared) - SHARED_PARAMETERS == set(SynthSettings.notebook_names())
    for name in SynthSettings.notebook_names():
        field = name.lower()
        default = declared[name]["default"]
        expected = SynthSettings.notebook_default_of(field)
        # a notebook writes a list where the settings hold a tuple
        assert (tuple(default) if isinstance(default, list) else default) == expected, name
    assert " = " not in "".join(info["comment"] for info in declared.values())  # papermill's parser breaks on it


def test_papermill_runs_notebook_05(prepared_workspace, copy_workspace, tmp_path, monkeypatch):
    # the kernel imports this checkout (the folder that holds mura_aug/), not another installed copy
    monkeypatch.setenv("PYTHONPATH", str(Path(mura_aug.__file__).resolve().parent.parent))
    workspace = copy_workspace(prepared_workspace)
    add_tiny_run_with_state(workspace, "positive", torch_seed=1)
    add_tiny_run_with_state(workspace, "negative", torch_seed=2)
    output = tmp_path / "05_executed.ipynb"
    params = dict(WORKSPACE=str(workspace.root), N_PER_CLASS=5, TRUNCATION_PSI=0.8, SEED=3, BATCH=4,
                  DEVICE="cpu", CUT_GRIDS=True, DEDUPE_THRESHOLD=0.01, DROP_FRACTION=0.2)
    nbtools.execute_notebook(NOTEBOOK, output, parameters=params, cwd=tmp_path, timeout_s=300)

    manifest_frame = pd.read_csv(workspace.manifest)
    generated = manifest_frame[manifest_frame["source_grid"].isna()]
    assert sorted(generated["seed"].astype(int).unique()) == [3, 4, 5, 6, 7]
    assert len(manifest_frame) == 2 * 5 + 2 * 8  # 5 generated + 8 tiles cut from each class's grid
    dropped = manifest_frame[manifest_frame["dropped"]]
    assert len(dropped) >= 2 and dropped["drop_reason"].str.contains("least realistic").sum() >= 2
    table = pd.read_csv(workspace.augmented_table("XR_SHOULDER"))
    assert (table["source"] == "synthetic").sum() == len(manifest_frame) - len(dropped)
    executed = nbformat.read(str(output), as_version=4)
    images = sum(1 for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    assert images >= 3  # two before/after figures and the real-vs-fake figure
    # the widgets leave a still picture each (explorer, both runs' grids, quiz) for the notebook opened later
    stills = [o["data"]["text/html"] for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if 'class="mura-aug-still-' in o.get("data", {}).get("text/html", "")]
    assert len(stills) == 4 and all("data:image/png;base64," in html for html in stills)
    summary = json.loads(workspace.synth_summary("XR_SHOULDER").read_text())
    assert summary["classes"]["positive"]["requested"] == 5
    assert summary["filters"]["finished"] and manifest.filters_finished(workspace, "XR_SHOULDER")
    assert set(manifest.read_manifest(workspace)["mode"]) == {"L"}
    assert all(Image.open(workspace.absolute(p)).mode == "L" for p in manifest_frame["path"])
