"""Checking, building and executing notebooks.

The six notebooks of the series are the source: they are edited as .ipynb files and checked by
`lint_notebook` (the setup cell first, exactly one cell tagged `parameters`, no outputs). `build_notebook`
and `write_notebook` make small notebooks in that shape (tests, scratch series). `execute_notebook` runs one
with papermill and turns a failing cell into a UserError that shows the cell.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

from mura_aug.errors import UserError

NOTEBOOKS_DIR = Path(__file__).resolve().parent  # the .ipynb files are package data beside this module
PACKAGE_PARENT = NOTEBOOKS_DIR.parent.parent  # the folder that holds mura_aug/ (a checkout, or site-packages)
SOURCE_VARIABLE = "MURA_AUG_SOURCE"  # what the setup cell installs instead: a fork, a wheel, a folder on Drive


def package_release() -> tuple:
    """(version, repository address) of this mura_aug, from its metadata (pyproject.toml is their one owner)."""
    from importlib import metadata

    from mura_aug import __version__

    try:
        urls = metadata.metadata("mura_aug").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    repository = next((url.split(",", 1)[1].strip() for url in urls if url.lower().startswith("repository,")), "")
    if not repository or __version__ == "0+unknown":
        raise UserError("This mura_aug has no package metadata (version, repository), so the notebooks' setup cell "
                        "cannot be checked.", "Install it (pip install -e . in a checkout), then run again.")
    return __version__, repository


def setup_cell(version: Optional[str] = None, repository: Optional[str] = None) -> str:
    """The first code cell of every notebook, for this release (version and repository from package_release).

    In Colab it installs the notebook's own version when mura_aug is missing (the repository at the tag
    v<version> while no release is on PyPI), or whatever MURA_AUG_SOURCE names; elsewhere a missing package is
    a clear error saying how to install it: nothing is pip-installed into a user's own kernel unasked."""
    if version is None or repository is None:
        version, repository = package_release()
    return f'''# Setup for mura_aug {version}: Colab installs it when missing (elsewhere the error says how). For a fork,
# a wheel or a folder on Drive, set {SOURCE_VARIABLE} first, e.g. %env {SOURCE_VARIABLE}=/content/drive/MyDrive/mura_aug
import importlib.util, os, subprocess, sys
from typing import Optional, Union  # the annotations of the parameters cell use them
if importlib.util.find_spec("mura_aug") is None:
    source = os.environ.get("{SOURCE_VARIABLE}") or "git+{repository}@v{version}"
    if "google.colab" not in sys.modules:
        raise ModuleNotFoundError(f"mura_aug is not installed for this kernel: {{sys.executable}} -m pip install "
                                  f"'{{source}}' (or pip install -e . in a checkout), then restart the kernel.")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", source], check=True)
    importlib.invalidate_caches()  # so that this running kernel finds the package just installed
import mura_aug
if mura_aug.__version__ != "{version}":
    print(f"Note: this notebook is written for mura_aug {version}; this kernel has {{mura_aug.__version__}}.")
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
    nb.cells.append(nbformat.v4.new_code_cell(setup_cell()))
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


def _kernel_transport() -> dict:
    """Papermill options that run the kernel over local IPC sockets where the OS has them (see ipc_kernel)."""
    if os.name != "posix":
        return {}
    return {"kernel_manager_class": "mura_aug.notebooks.ipc_kernel.IpcKernelManager"}


def make_output_folder(folder: Path) -> None:
    """Create the folder executed notebooks go to; UserError naming it when that is not possible."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the folder {folder} for the executed notebooks: {exc.strerror}.",
                        "Choose an output folder you can write to.") from exc


def execute_notebook(source: Union[str, os.PathLike], output: Union[str, os.PathLike],
                     parameters: Optional[dict] = None, cwd: Optional[Union[str, os.PathLike]] = None,
                     timeout_s: Optional[int] = None, progress: bool = False, log_output: bool = False) -> Path:
    """Run a notebook with papermill; on failure raise UserError naming the failing cell and its error.

    The executed copy is written under a temporary name next to `output` and renamed to `output` when the
    run ends, successfully or not: `output` is always a complete notebook (the failing one shows the error).
    The kernel is started so that it imports this very `mura_aug` package, installed or not.
    `timeout_s` is the longest a single cell may run (seconds; None = no limit); `log_output` streams the
    cells' printed output to the `papermill` logger while they run (for long batch runs).
    """
    import papermill as pm

    output = Path(output)
    make_output_folder(output.parent)
    partial = output.with_name(f".{output.stem}.running{output.suffix}")
    try:
        with _kernel_imports_this_package():
            pm.execute_notebook(str(source), str(partial), parameters=parameters or {},
                                cwd=str(cwd) if cwd else None, kernel_name="python3", progress_bar=progress,
                                execution_timeout=timeout_s, log_output=log_output, **_kernel_transport())
    except pm.PapermillExecutionError as exc:
        _finish_partial(partial, output)
        cell_source = exc.source or _failing_cell_source(output, exc.exec_count)
        if exc.ename == "UserError":  # the error already says what to do: do not bury it under generic advice
            fix = f"Do what the notebook's error above says, then run again (finished work is kept); {output} " \
                  "holds the executed notebook."
        else:
            fix = (f"Open the executed copy {output} to see the full traceback; fix the parameter or input it "
                   "names and run again (finished work is kept).")
        raise UserError(f"Notebook {Path(source).name} failed in cell [{exc.exec_count}]:\n{_indent(cell_source)}\n"
                        f"  {exc.ename}: {exc.evalue}", fix) from None
    except Exception as exc:
        # Not an error inside a cell: the kernel died (often out of memory), a cell ran past timeout_s,
        # or the notebook file itself could not be read.
        _finish_partial(partial, output)
        problem = _describe_execution_failure(exc, timeout_s)
        raise UserError(f"Notebook {Path(source).name} did not finish: {problem}",
                        f"See the executed copy {output} for the last cell that ran; " + _fix_for(exc)) from exc
    except BaseException:
        _finish_partial(partial, output)  # KeyboardInterrupt: keep what ran, so the user can see where it stopped
        raise
    _finish_partial(partial, output)
    return output


def _finish_partial(partial: Path, output: Path) -> None:
    if partial.exists():
        os.replace(partial, output)


def _describe_execution_failure(exc: BaseException, timeout_s: Optional[int]) -> str:
    name = type(exc).__name__
    if name == "DeadKernelError":
        return "the Python kernel died (usually out of memory)."
    if name in ("CellTimeoutError", "TimeoutError"):
        return f"a cell ran longer than the time limit of {timeout_s} s."
    return f"{name}: {exc}"


def _fix_for(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "DeadKernelError":
        return "use smaller settings (BATCH, RESOLUTION, IMAGE_SIZE) or a machine with more memory, then rerun."
    if name in ("CellTimeoutError", "TimeoutError"):
        return "raise the time limit or use smaller settings, then rerun (finished work is kept)."
    return "check that the notebook file is a valid .ipynb (restore it from git if it was damaged)."


def environment_importing_this_package(environ: Mapping[str, str]) -> Dict[str, str]:
    """A copy of `environ` whose PYTHONPATH starts with the folder that holds this package.

    A notebook's kernel, or a notebook run in a process of its own, is a separate process; without this it
    would import whatever `mura_aug` is installed (or, finding none, the setup cell would try to pip-install
    one from the internet).
    """
    env = dict(environ)
    previous = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + ([previous] if previous else []))
    return env


@contextlib.contextmanager
def _kernel_imports_this_package():
    """Put this package's folder first on the kernel's PYTHONPATH while a notebook runs (the kernel manager
    copies this process's environment when it starts the kernel)."""
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = environment_importing_this_package(os.environ)["PYTHONPATH"]
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous


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


# --- the parameters cell ------------------------------------------------------------------------------

PARAMETERS_TAG = "parameters"


def read_notebook(path: Union[str, os.PathLike]):
    """Load a notebook (nbformat v4), or raise UserError saying which file is unreadable."""
    import nbformat

    try:
        return nbformat.read(str(path), as_version=4)
    except FileNotFoundError:
        raise UserError(f"The notebook {path} does not exist.",
                        "Check the path (the series lives in mura_aug/notebooks/).")
    except Exception as exc:
        raise UserError(f"The notebook {path} cannot be read as a Jupyter notebook ({type(exc).__name__}: {exc}).",
                        "Restore it from git (git checkout -- <notebook>), or open and save it again in Jupyter.") \
            from None


def parameters_cells(nb) -> List[int]:
    """Indices of the cells tagged `parameters`."""
    return [i for i, cell in enumerate(nb.cells) if PARAMETERS_TAG in cell.get("metadata", {}).get("tags", [])]


def parse_parameters_source(source: str) -> Dict[str, dict]:
    """Parse a parameters cell: name -> {"default": literal value, "comment": text, "line": 1-based line}.

    The cell may hold only assignments of literals (`NAME = 3  # what it is`), blank lines and comments;
    anything else raises ValueError saying which line is wrong. A comment counts for an assignment when it
    is on one of its lines or on the comment line(s) directly above it.
    """
    import ast
    import io
    import tokenize

    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"line {exc.lineno}: not valid Python ({exc.msg})") from None
    comments: Dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    parameters: Dict[str, dict] = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target, value = statement.targets[0], statement.value
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target, value = statement.target, statement.value
        else:
            raise ValueError(f"line {statement.lineno}: only `NAME = literal  # comment` lines belong here")
        if not isinstance(target, ast.Name):
            raise ValueError(f"line {statement.lineno}: assign to a plain name")
        try:
            default = ast.literal_eval(value)
        except ValueError:
            raise ValueError(f"line {statement.lineno}: {target.id} is not a literal (compute derived values "
                             "in the next cell)") from None
        comment_lines = [n for n in range(statement.lineno, statement.end_lineno + 1) if n in comments]
        above = statement.lineno - 1
        while above >= 1 and above in comments and lines[above - 1].lstrip().startswith("#"):
            comment_lines.insert(0, above)
            above -= 1
        parameters[target.id] = {"default": default, "comment": " ".join(comments[n] for n in comment_lines),
                                 "line": statement.lineno}
    return parameters


def read_parameters(path: Union[str, os.PathLike]) -> Dict[str, dict]:
    """The parameters a notebook declares in its `parameters` cell (see `parse_parameters_source`)."""
    nb = read_notebook(path)
    tagged = parameters_cells(nb)
    if len(tagged) != 1:
        raise UserError(f"The notebook {path} has {len(tagged)} cells tagged 'parameters' (it needs exactly one).",
                        "Tag exactly one code cell `parameters` (in Jupyter: View > Cell toolbar > Tags).")
    try:
        return parse_parameters_source(nb.cells[tagged[0]].source)
    except ValueError as exc:
        raise UserError(f"The parameters cell of {path} is not plain literal assignments: {exc}.",
                        "Keep only `NAME = literal  # comment` lines there.") from None


def lint_notebook(path: Union[str, os.PathLike]) -> List[str]:
    """What is wrong with a notebook meant to be committed (empty list = clean).

    Clean means: no outputs and no execution counts; the first code cell is the setup cell (it installs
    mura_aug when missing); exactly one cell tagged `parameters`, holding only literal assignments, each
    with a comment, and each readable by papermill's own parser too (one '=' per line).
    """
    nb = read_notebook(path)
    problems = []
    for index in notebook_has_outputs(path):
        problems.append(f"cell {index} has outputs or an execution count (strip them: nbtools.write_notebook)")
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    if not code_cells or code_cells[0].source != setup_cell():
        problems.append("the first code cell is not the setup cell of this release (nbtools.setup_cell(): the "
                        "version and repository of pyproject.toml)")
    tagged = parameters_cells(nb)
    if len(tagged) != 1:
        problems.append(f"{len(tagged)} cells are tagged 'parameters' (exactly one is needed)")
    else:
        cell = nb.cells[tagged[0]]
        if cell.cell_type != "code":
            problems.append("the cell tagged 'parameters' is not a code cell")
        else:
            try:
                parameters = parse_parameters_source(cell.source)
            except ValueError as exc:
                problems.append(f"parameters cell: {exc}")
            else:
                if not parameters:
                    problems.append("the parameters cell assigns nothing")
                problems += [f"parameters cell: {name} (line {info['line']}) has no comment"
                             for name, info in parameters.items() if not info["comment"]]
                problems += [f"parameters cell: line {number} holds more than one '=' (papermill then cannot read "
                             "it: write its comment without '=')"
                             for number in _lines_papermill_cannot_read(cell.source)]
    return problems


def _lines_papermill_cannot_read(source: str) -> List[int]:
    """Line numbers (1-based) of code lines with more than one '=': papermill's own reader of the parameters
    cell skips such a line, so `papermill --help-notebook` and its parameter checks miss that name."""
    return [number for number, line in enumerate(source.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#") and line.count("=") > 1]
