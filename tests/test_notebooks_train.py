"""Notebooks 02, 03 and 04: stored clean, one parameters cell, and they run with papermill at tiny settings."""
import io
import json
import zipfile

import nbformat
import numpy as np
import pytest
from PIL import Image

from mura_aug.gan import snapshot as snap
from mura_aug.gan.settings import RunSettings
from mura_aug.notebooks.nbtools import NOTEBOOKS_DIR, execute_notebook, notebook_has_outputs, parse_parameters_source
from mura_aug.workspace import Workspace

NOTEBOOKS = ("02_train_positive", "03_train_negative", "04_resume")
TINY = dict(BODY_PART="XR_SHOULDER", CFG="tiny", RESOLUTION=16, KIMG=0.008, KIMG_PER_TICK=0.008, SNAP=1, BATCH=4,
            MAX_MINUTES=None, DEVICE="cpu", METRICS_EXTRACTOR="offline")  # offline: tests never download


def make_dataset(workspace: Workspace, cls: str, res: int = 16, count: int = 8) -> None:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(workspace.datasets / f"XR_SHOULDER_{cls}_{res}.zip", "w") as archive:
        for index in range(count):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (res, res), dtype=np.uint8)).convert("RGB").save(buffer, "PNG")
            archive.writestr(f"00000/img{index:08d}.png", buffer.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": None}))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_is_clean_with_one_parameters_cell(name):
    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    assert notebook_has_outputs(path) == []
    nb = nbformat.read(str(path), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for line in tagged[0].source.splitlines():
        assert "#" in line, f"parameter without a comment: {line}"
    for cell in nb.cells:
        assert len(cell.source.splitlines()) <= 25, "a cell longer than a screen"
    expected_label = {"02_train_positive": "positive", "03_train_negative": "negative"}
    if name in expected_label:
        parameters = parse_parameters_source(tagged[0].source)
        assert parameters["LABEL"]["default"] == expected_label[name]
        # every parameter but the workspace is a notebook setting of RunSettings, with its default, and every
        # notebook setting is there (the others are command-line only: the docs' table says which)
        assert set(parameters) - {"WORKSPACE"} == set(RunSettings.notebook_names())
        for parameter, info in parameters.items():
            if parameter not in ("WORKSPACE", "LABEL"):
                assert info["default"] == RunSettings.notebook_default_of(parameter.lower()), parameter



def test_train_notebooks_and_resume_notebook_run_with_papermill(tmp_path):
    workspace = Workspace(tmp_path / "ws").ensure()
    make_dataset(workspace, "positive")
    make_dataset(workspace, "negative")
    for name, label, metrics_every in (("02_train_positive", "positive", 1), ("03_train_negative", "negative", 0)):
        execute_notebook(NOTEBOOKS_DIR / f"{name}.ipynb", tmp_path / f"{name}.ipynb",
                         parameters={"WORKSPACE": str(workspace.root), **TINY, "METRICS_EVERY": metrics_every},
                         cwd=tmp_path)
        run_dir = workspace.experiments / f"XR_SHOULDER-{label}-tiny-16"
        stats = snap.read_stats(run_dir)
        assert [line["tick"] for line in stats] == [1]
        assert ("fid_offline" in stats[0]) == bool(metrics_every)  # measured only when asked

    def figures(name):
        executed = nbformat.read(str(tmp_path / f"{name}.ipynb"), as_version=4)
        outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        return sum(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)

    # the positive run measured FID / KID / diversity, so its notebook shows one figure more: the metrics plot
    assert figures("02_train_positive") == figures("03_train_negative") + 1 >= 2

    def printed(name):
        executed = nbformat.read(str(tmp_path / f"{name}.ipynb"), as_version=4)
        return "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", []))

    # both end with the fakes' FID, named as what it is
    for name, label in (("02_train_positive", "positive"), ("03_train_negative", "negative")):
        assert f"XR_SHOULDER-{label}-tiny-16 at 0.008 kimg, {label}: offline FID (not comparable with published " \
               "FIDs) = " in printed(name)
        assert printed(name).count("a kill loses at most") == 1  # said by the preflight cell, not again by train

    # Run again after a disconnect, with TRANSFER still set: RESUME = "latest" wins, the run continues.
    positive_run = workspace.experiments / "XR_SHOULDER-positive-tiny-16"
    execute_notebook(NOTEBOOKS_DIR / "02_train_positive.ipynb", tmp_path / "02_again.ipynb",
                     parameters={"WORKSPACE": str(workspace.root), **TINY, "KIMG": 0.016, "TRANSFER": "ffhq256"},
                     cwd=tmp_path)
    assert [line["tick"] for line in snap.read_stats(positive_run)] == [1, 2]
    assert not list(workspace.weights_cache.glob("*.pkl"))  # nothing was downloaded

    negative_run = workspace.experiments / "XR_SHOULDER-negative-tiny-16"
    execute_notebook(NOTEBOOKS_DIR / "04_resume.ipynb", tmp_path / "04_resume.ipynb",
                     parameters={"WORKSPACE": str(workspace.root), "RUN": negative_run.name, "KIMG": 0.016,
                                 "MAX_MINUTES": None, "DEVICE": "cpu"}, cwd=tmp_path)
    stats = snap.read_stats(negative_run)
    assert [line["tick"] for line in stats] == [1, 2]
    assert stats[-1]["kimg"] == pytest.approx(0.016)
    assert printed("04_resume").count("a kill loses at most") == 1
    assert snap.find_resumable(negative_run).kimg == pytest.approx(0.016)
