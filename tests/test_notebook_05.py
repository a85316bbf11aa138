"""Notebook 05 runs under papermill on a prepared demo workspace with tiny generators, and is stored clean."""
from __future__ import annotations

import json

import nbformat
import numpy as np
import pandas as pd
import torch
from PIL import Image

from mura_aug.notebooks import nbtools
from mura_aug.synth import stage as synth
from mura_aug.workspace import kimg_tag

NOTEBOOK = nbtools.NOTEBOOKS_DIR / "05_crop_sharpen.ipynb"
TINY_G = dict(z_dim=32, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=256, channel_max=32))
TINY_D = dict(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=32)


def add_tiny_run_with_state(workspace, label, torch_seed, kimg=2.0):
    """A run folder as training leaves it: network file, state file with D, fakes grid."""
    from mura_aug.gan.network_file import save_network_file
    from mura_aug.gan.networks import Discriminator, Generator

    run = f"XR_SHOULDER-{label}-tiny-32"
    run_dir = workspace.experiments / run
    torch.manual_seed(torch_seed)
    G, D = Generator(c_dim=0, **TINY_G).eval(), Discriminator(**TINY_D).eval()
    save_network_file(run_dir / f"network-{kimg_tag(kimg)}kimg.pt", G, kimg=kimg, run=run, label=label)
    torch.save({"G_kwargs": G.init_kwargs, "G_ema": G.state_dict(), "D_kwargs": D.init_kwargs,
                "D": D.state_dict()}, run_dir / f"state-{kimg_tag(kimg)}kimg.pt")
    fakes = dict(synth.generate_images(G, range(8), device="cpu", progress=False))
    grid = np.concatenate([np.concatenate([fakes[r * 4 + c] for c in range(4)], axis=1) for r in range(2)])
    Image.fromarray(grid).save(run_dir / f"fakes-{kimg_tag(kimg)}kimg.png")


def test_notebook_is_stored_clean_with_one_parameters_cell():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1 and nbtools.notebook_has_outputs(NOTEBOOK) == []
    for name in ("WORKSPACE", "BODY_PART", "N_PER_CLASS", "TRUNCATION_PSI", "SHARPEN_FACTOR", "SEED", "RUNS"):
        assert f"\n{name} = " in "\n" + tagged[0].source
    assert all(len(c.source.splitlines()) <= 25 for c in nb.cells if c.cell_type == "code")
    assert nbtools.lint_notebook(NOTEBOOK) == []
    # papermill itself must understand every line (a '=' in a comment hides the parameter from it)
    import papermill

    declared = papermill.inspect_notebook(str(NOTEBOOK))
    assert set(nbtools.read_parameters(NOTEBOOK)) == set(declared)
    assert declared["N_PER_CLASS"]["default"] == "100"


def test_papermill_runs_notebook_05(prepared_workspace, copy_workspace, tmp_path, monkeypatch):
    # the kernel imports this checkout even when the package is not pip-installed
    monkeypatch.setenv("PYTHONPATH", str(NOTEBOOK.parent.parent))
    workspace = copy_workspace(prepared_workspace)
    add_tiny_run_with_state(workspace, "positive", torch_seed=1)
    add_tiny_run_with_state(workspace, "negative", torch_seed=2)
    output = tmp_path / "05_executed.ipynb"
    params = dict(WORKSPACE=str(workspace.root), N_PER_CLASS=5, TRUNCATION_PSI=0.8, SEED=3, BATCH=4,
                  DEVICE="cpu", CUT_GRIDS=True, DEDUPE_THRESHOLD=0.01, DROP_FRACTION=0.2)
    nbtools.execute_notebook(NOTEBOOK, output, parameters=params, cwd=tmp_path, timeout_s=300)

    manifest = pd.read_csv(workspace.manifest)
    generated = manifest[manifest["source_grid"].isna()]
    assert sorted(generated["seed"].astype(int).unique()) == [3, 4, 5, 6, 7]
    assert len(manifest) == 2 * 5 + 2 * 8  # 5 generated + 8 tiles cut from each class's grid
    dropped = manifest[manifest["dropped"]]
    assert len(dropped) >= 2 and dropped["drop_reason"].str.contains("least realistic").sum() >= 2
    table = pd.read_csv(workspace.augmented_table("XR_SHOULDER"))
    assert (table["source"] == "synthetic").sum() == len(manifest) - len(dropped)
    executed = nbformat.read(str(output), as_version=4)
    images = sum(1 for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    assert images >= 3  # two before/after figures and the real-vs-fake figure
    summary = json.loads((workspace.data / "Augmented_Fakes" / "XR_SHOULDER_synth_summary.json").read_text())
    assert summary["classes"]["positive"]["requested"] == 5
