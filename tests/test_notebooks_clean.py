"""Committed notebooks are clean: no outputs, a setup cell first, one `parameters` cell of commented literals."""
from __future__ import annotations

import nbformat
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
    assert "the first code cell is not the setup cell (nbtools.SETUP_CELL)" in problems
    assert "2 cells are tagged 'parameters' (exactly one is needed)" in problems
