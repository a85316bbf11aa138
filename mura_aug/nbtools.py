"""Writing and executing the numbered notebooks.

Notebooks are generated from small scripts in `tools/` (one per notebook) with `write_notebook`, so every
notebook has the same first cell and exactly one cell tagged `parameters`, and is stored without outputs.
`execute_notebook` runs one with papermill and turns a failing cell into a UserError that shows the cell.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from mura_aug.errors import UserError

REPO_URL = "https://github.com/mura-aug/mura_aug"
NOTEBOOKS_DIR = Path(__file__).resolve().parent.parent / "notebooks"

# The first cell of every notebook: in Colab it installs the package (from the repository) when missing.
SETUP_CELL = f'''# Setup: works in Colab, local Jupyter and papermill. In Colab it installs mura_aug when it is missing;
# Google Drive is mounted by the first call that needs the workspace.
import importlib.util, subprocess, sys
if importlib.util.find_spec("mura_aug") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+{REPO_URL}"], check=True)
%matplotlib inline'''

Cell = Union[str, Dict[str, str]]  # "code" source, or {"markdown": text} / {"code": src} / {"parameters": src}


def build_notebook(title_markdown: str, parameters_source: str, cells: Sequence[Cell]):
    """A notebook: title, setup cell, the `parameters` cell, then `cells` in order."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["colab"] = {"provenance": []}
    nb.cells.append(nbformat.v4.new_markdown_cell(title_markdown))
    nb.cells.append(nbformat.v4.new_code_cell(SETUP_CELL))
    params = nbformat.v4.new_code_cell(parameters_source)
    params.metadata["tags"] = ["parameters"]
    nb.cells.append(params)
    for cell in cells:
        if isinstance(cell, str):
            nb.cells.append(nbformat.v4.new_code_cell(cell))
        elif "markdown" in cell:
            nb.cells.append(nbformat.v4.new_markdown_cell(cell["markdown"]))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(cell["code"]))
    return strip_outputs(nb)


def strip_outputs(nb):
    """Remove outputs and execution counts (notebooks are committed clean)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    return nb


def write_notebook(path: Union[str, os.PathLike], nb) -> Path:
    import nbformat

    from mura_aug.workspace import atomic_write_text

    return atomic_write_text(path, nbformat.writes(strip_outputs(nb)))


def notebook_path(name: str) -> Path:
    """'01_prepare' or '01' -> the committed notebook's path."""
    matches = sorted(NOTEBOOKS_DIR.glob(f"{name}*.ipynb"))
    if not matches:
        available = ", ".join(p.stem for p in sorted(NOTEBOOKS_DIR.glob("*.ipynb")))
        raise UserError(f"No notebook named {name!r} in {NOTEBOOKS_DIR}.", f"Use one of: {available}.")
    return matches[0]


def execute_notebook(source: Union[str, os.PathLike], output: Union[str, os.PathLike],
                     parameters: Optional[dict] = None, cwd: Optional[Union[str, os.PathLike]] = None,
                     timeout_s: Optional[int] = None, progress: bool = False) -> Path:
    """Run a notebook with papermill; on failure raise UserError naming the failing cell and its error."""
    import papermill as pm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(str(source), str(output), parameters=parameters or {}, cwd=str(cwd) if cwd else None,
                            kernel_name="python3", progress_bar=progress, execution_timeout=timeout_s,
                            log_output=False)
    except pm.PapermillExecutionError as exc:
        cell_source = _failing_cell_source(output, exc.exec_count)
        raise UserError(
            f"Notebook {Path(source).name} failed in cell [{exc.exec_count}]:\n{_indent(cell_source)}\n"
            f"  {exc.ename}: {exc.evalue}",
            f"Open the executed copy {output} to see the full traceback; fix the parameter or input it names "
            "and run again (finished work is kept).") from None
    return output


def _failing_cell_source(executed: Path, exec_count) -> str:
    import nbformat

    try:
        nb = nbformat.read(str(executed), as_version=4)
    except Exception:  # the executed copy may be unreadable if the kernel died
        return "(cell source unavailable)"
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.get("execution_count") == exec_count:
            return cell.source
    return "(cell source unavailable)"


def _indent(text: str, prefix: str = "    | ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def notebook_has_outputs(path: Union[str, os.PathLike]) -> List[int]:
    """Indices of code cells that carry outputs or execution counts (should be empty when committed)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    return [i for i, cell in enumerate(nb.cells)
            if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))]
