"""Committed notebooks are clean: no outputs, this release's setup cell first, one `parameters` cell of commented
literals that papermill itself reads completely, and the Colab metadata their users need."""
from __future__ import annotations

import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import papermill
import pytest

from mura_aug.notebooks import nbtools, series

GOOD_PARAMETERS = ('WORKSPACE = None  # workspace folder (None: Drive in Colab, ./workspace elsewhere)\n'
                   '# MURA body part\n'
                   'BODY_PART = "XR_SHOULDER"\n'
                   'KIMG = 2.5  # thousands of images\n')


@pytest.mark.parametrize("name", series.SERIES)
def test_committed_notebook_is_clean(name):
    committed = series.find_notebooks()
    assert name in committed, f"{nbtools.NOTEBOOKS_DIR / name}.ipynb is missing"
    assert nbtools.lint_notebook(committed[name]) == []
    assert "WORKSPACE" in nbtools.read_parameters(committed[name])


def test_the_notebooks_folder_holds_the_series_and_nothing_else():
    stored = sorted(path.stem for path in nbtools.NOTEBOOKS_DIR.glob("*.ipynb"))
    assert stored == sorted(series.SERIES)


def _write(tmp_path, nb, name="check.ipynb"):
    path = tmp_path / name
    nbformat.write(nb, str(path))
    return path


def test_a_freshly_built_notebook_is_clean(tmp_path):
    nb = nbtools.build_notebook("# Title", GOOD_PARAMETERS, ["x = KIMG * 2"])
    path = _write(tmp_path, nb)
    assert nbtools.lint_notebook(path) == []
    assert {name: info["default"] for name, info in nbtools.read_parameters(path).items()} == {
        "WORKSPACE": None, "BODY_PART": "XR_SHOULDER", "KIMG": 2.5}


def test_outputs_and_execution_counts_are_caught(tmp_path):
    nb = nbtools.build_notebook("# Title", GOOD_PARAMETERS, ["print('hello')"])
    last = nb.cells[-1]
    last.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    last.execution_count = 3
    problems = nbtools.lint_notebook(_write(tmp_path, nb))
    assert problems == [f"cell {len(nb.cells) - 1} has outputs or an execution count (strip them: "
                        "nbtools.write_notebook)"]


@pytest.mark.parametrize("parameters, expected", [
    ('KIMG = 2  # thousands of images\nSTEPS = KIMG * 10  # derived\n', "STEPS is not a literal"),
    ('KIMG = 2  # thousands of images\nRES = 32\n', "RES (line 2) has no comment"),
    ('import os  # nope\n', "only `NAME = literal  # comment` lines"),
    ('print("x")  # nope\n', "only `NAME = literal  # comment` lines"),
    ('', "assigns nothing"),
    ('KIMG = 2  # thousands of images; 0 = none\n', "line 1 holds more than one '='"),
])
def test_parameters_cell_must_be_commented_literals(tmp_path, parameters, expected):
    path = _write(tmp_path, nbtools.build_notebook("# Title", parameters, []))
    problems = nbtools.lint_notebook(path)
    assert len(problems) == 1 and expected in problems[0]


def test_two_parameters_cells_and_a_missing_setup_cell_are_caught(tmp_path):
    nb = nbtools.build_notebook("# Title", GOOD_PARAMETERS, ["y = 1"])
    nb.cells[-1].metadata["tags"] = ["parameters"]
    nb.cells.pop(1)  # the setup cell
    problems = nbtools.lint_notebook(_write(tmp_path, nb))
    assert any(problem.startswith("the first code cell is not the setup cell of this release") for problem in problems)
    assert "2 cells are tagged 'parameters' (exactly one is needed)" in problems


# --- what a user of papermill and Colab meets ------------------------------------------------------------

def _pyproject() -> dict:
    return tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", series.SERIES)
def test_the_setup_cell_installs_this_release(name):
    # The version and the repository have one owner, pyproject.toml; every notebook's first cell follows it.
    project = _pyproject()["project"]
    nb = nbtools.read_notebook(series.find_notebooks()[name])
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    expected = nbtools.setup_cell(project["version"], project["urls"]["Repository"])
    assert first.source == expected
    assert f'@v{project["version"]}"' in first.source and "google.colab" in first.source


def test_the_setup_cell_refuses_to_pip_install_outside_colab(tmp_path):
    # Run the cell's Python (the %magic line is IPython's) in a Python that has no mura_aug: a clear error,
    # no pip call.
    code = nbtools.setup_cell("9.9.9", "https://example.invalid/fork").replace("%matplotlib inline", "")
    script = tmp_path / "setup.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run([sys.executable, "-I", "-S", str(script)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "mura_aug is not installed for this kernel" in result.stderr
    assert "pip install 'git+https://example.invalid/fork@v9.9.9'" in result.stderr


@pytest.mark.parametrize("name", series.SERIES)
def test_papermill_reads_every_parameter_with_its_type_and_help(name, caplog):
    path = series.find_notebooks()[name]
    with caplog.at_level(logging.WARNING, logger="papermill"):
        inferred = papermill.inspect_notebook(str(path))
    assert [record.getMessage() for record in caplog.records] == []  # no "Unable to parse line ..."
    assert list(inferred) == list(nbtools.read_parameters(path))
    for parameter, info in inferred.items():
        assert info["inferred_type_name"] not in ("None", ""), f"{name}: {parameter} has no type for papermill"
        assert info["help"], f"{name}: {parameter} has no help text for papermill"


def test_the_readme_papermill_command_passes_a_known_parameter_without_a_warning(tmp_path):
    notebook = series.find_notebooks()["02_train_positive"]
    result = subprocess.run([sys.executable, "-m", "papermill", str(notebook), str(tmp_path / "out.ipynb"),
                             "-p", "MAX_MINUTES", "60", "--prepare-only"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr and "unknown parameter" not in result.stderr.lower()
    injected = nbformat.read(str(tmp_path / "out.ipynb"), as_version=4)
    assert any("MAX_MINUTES = 60" in cell.source for cell in injected.cells
               if "injected-parameters" in cell.metadata.get("tags", []))


@pytest.mark.parametrize("name", series.SERIES)
def test_colab_opens_the_training_and_evaluation_notebooks_on_a_gpu(name):
    metadata = nbtools.read_notebook(series.find_notebooks()[name]).metadata
    wants_gpu = name in ("02_train_positive", "03_train_negative", "06_densenet_eval")
    assert (metadata.get("accelerator") == "GPU") == wants_gpu
    if wants_gpu:
        assert metadata["colab"]["gpuType"] == "T4"
