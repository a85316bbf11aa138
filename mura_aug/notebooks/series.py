"""Running the numbered notebooks as a series: the one-command demo and papermill batches.

    python -m mura_aug demo [--workspace DIR] [--only 01,02] [--keep-going]
    python -m mura_aug notebooks [--only 02,04] [--params FILE.yaml] [--workspace DIR] [--output-dir DIR]

Both execute the committed notebooks (mura_aug/notebooks/01_prepare.ipynb ... 06_densenet_eval.ipynb) with papermill,
in order, each with the parameters merged from a YAML file:

    common:            # passed to every notebook whose parameters cell declares the name
      BODY_PART: XR_SHOULDER
    "01":              # or 01_prepare; the section's names must all be in that notebook's parameters cell
      RESOLUTION: 64

A name that no notebook declares, or a section that names no notebook, is refused before anything runs,
with the list of valid names. The executed copies go to `<workspace>/results/notebooks/`; the series stops
at the first failing notebook (unless --keep-going) and shows its cell and error. Every stage skips the work
it finished before, so a rerun after a failure or a disconnect is cheap.

The demo runs the same code with the tiny CPU settings of `demo_params.yaml` (next to this file) on
generated MURA-like data, in a workspace of its own, and ends with the fakes' FID that notebooks 02 / 03
measured (`mura_aug.gan.measure.latest_fid_text`; the demo's are offline FIDs and say so) and the stage-06
comparison, as stage 06 itself reads it from what it wrote (`mura_aug.evaluate.stage.latest_comparison_text`).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from mura_aug.errors import UserError
from mura_aug.notebooks import nbtools
from mura_aug.workspace import CLASSES, Workspace, atomic_write_json, resolve_workspace, run_name

# The series in the order it runs; data flows from each notebook to the later ones.
SERIES = ("01_prepare", "02_train_positive", "03_train_negative", "04_resume", "05_crop_sharpen",
          "06_densenet_eval")
COMMON_SECTION = "common"
# The demo's notebooks that run side by side: each trains one class's GAN into a run folder of its own from
# what 01 wrote, and neither reads what the other writes. On a 2-core CPU the two together at one thread each
# take ~1.4x less time than one after the other at two threads (torch's small convolutions use a second core
# poorly; bench/results/demo.md).
DEMO_SIDE_BY_SIDE = ("02_train_positive", "03_train_negative")
# torch CPU threads of each notebook run side by side. Fixed rather than per machine: the demo's numbers then
# repeat from run to run and across machines with the same CPU and torch (a different thread count sums floats
# in a different order; so do other CPUs' convolution kernels, which no setting here can pin).
SIDE_BY_SIDE_THREADS = 1
DEMO_PARAMS_FILE = Path(__file__).resolve().with_name("demo_params.yaml")
DEFAULT_DEMO_WORKSPACE = "./demo_workspace"
NOTEBOOK_FILE_PATTERN = re.compile(r"^(\d\d)_\w+$")

PathLike = Union[str, os.PathLike]


# --- finding notebooks ------------------------------------------------------------------------------

def find_notebooks(notebooks_dir: Optional[PathLike] = None) -> Dict[str, Path]:
    """Numbered notebooks in a folder (default: the repository's notebooks/), stem -> path, in series order."""
    folder = Path(notebooks_dir) if notebooks_dir else nbtools.NOTEBOOKS_DIR
    if not folder.is_dir():
        raise UserError(f"The notebooks folder {folder} does not exist.",
                        "Pass --notebooks-dir with the folder that holds 01_prepare.ipynb ... (or run from a "
                        "checkout of the repository).")
    found = {path.stem: path for path in sorted(folder.glob("*.ipynb")) if NOTEBOOK_FILE_PATTERN.match(path.stem)}
    if not found:
        raise UserError(f"No numbered notebooks (01_*.ipynb, 02_*.ipynb, ...) in {folder}.",
                        "Pass --notebooks-dir with the folder that holds them.")
    return found


def notebook_key(token: Union[str, int], available: Iterable[str]) -> str:
    """'02', '2', 2, '02_train_positive' or 'train_positive' -> '02_train_positive' (UserError if unknown)."""
    names = list(available)
    text = f"{token:02d}" if isinstance(token, int) else str(token).strip()
    if text.isdigit():
        text = f"{int(text):02d}"
        matches = [name for name in names if name.split("_", 1)[0] == text]
    else:
        text = text.removesuffix(".ipynb")
        matches = [name for name in names if name == text or name.split("_", 1)[1] == text]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UserError(f"There is no notebook {token!r}.",
                        f"Use a number or a name from: {', '.join(names)}.")
    raise UserError(f"{token!r} matches several notebooks: {', '.join(matches)}.", "Use the full name.")


def select_notebooks(available: Mapping[str, Path], only: Optional[Union[str, Sequence[str]]]) -> List[str]:
    """The notebooks to run, in series order: all of them, or those named in `only` ('02,04' or a list)."""
    if not only:
        return list(available)
    tokens = only.split(",") if isinstance(only, str) else list(only)
    wanted = {notebook_key(token, available) for token in tokens if str(token).strip()}
    if not wanted:
        raise UserError(f"--only {only!r} names no notebook.", f"Use numbers such as 02,04 ({', '.join(available)}).")
    return [name for name in available if name in wanted]


# --- parameter files --------------------------------------------------------------------------------

def load_parameter_file(path: PathLike) -> dict:
    """Read a YAML parameter file: a mapping with an optional `common:` section and per-notebook sections."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"The parameter file {path} does not exist.", "Check the path given to --params.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"The parameter file {path} cannot be read ({exc}).",
                        "Pass a UTF-8 YAML text file to --params.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"The parameter file {path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}.",
                        "Fix the YAML (sections like `common:` and `\"02\":`, then `NAME: value` lines "
                        "indented under them).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"The parameter file {path} must be a mapping of sections, not a {type(data).__name__}.",
                        "Write sections like `common:` and `\"02\":` with `NAME: value` lines under them.")
    return data


def declared_parameters(notebooks: Mapping[str, Path]) -> Dict[str, Dict[str, dict]]:
    """stem -> the parameters its `parameters` cell declares (name -> default, comment, line)."""
    return {name: nbtools.read_parameters(path) for name, path in notebooks.items()}


def merge_parameters(spec: Mapping, declared: Mapping[str, Mapping[str, dict]],
                     overrides: Optional[Mapping] = None, source: str = "the parameter file") -> Dict[str, dict]:
    """Per-notebook parameters from a parameter file's sections, validated against the notebooks.

    For each notebook: `common:` values whose name it declares, then its own section, then `overrides`
    (for example WORKSPACE from the command line) for the names it declares. Unknown section keys and names
    a notebook does not declare raise UserError listing the valid ones; so does a value of a clearly wrong
    kind (text where the notebook's default is a number, and so on).
    """
    notebooks = list(declared)
    sections: Dict[str, dict] = {}
    common: dict = {}
    for key, values in (spec or {}).items():
        if values is None:
            values = {}
        if str(key) == COMMON_SECTION:
            label = COMMON_SECTION
        else:
            try:
                label = notebook_key(key, notebooks)
            except UserError:
                raise UserError(f"Section {key!r} of {source} names no notebook.",
                                f"Use `{COMMON_SECTION}` or one of: {', '.join(notebooks)} (or their numbers "
                                f"'01'..)." ) from None
        if not isinstance(values, dict):
            raise UserError(f"Section {key!r} of {source} must be a mapping of NAME: value, not "
                            f"{type(values).__name__}.", "Indent `NAME: value` lines under the section.")
        bad_names = [name for name in values if not isinstance(name, str)]
        if bad_names:
            raise UserError(f"Section {key!r} of {source} has non-text parameter names {bad_names}.",
                            "Parameter names are upper-case words such as KIMG.")
        if label == COMMON_SECTION:
            common.update(values)
        else:
            if label in sections:
                raise UserError(f"{source} has two sections for notebook {label}.", "Merge them into one.")
            sections[label] = dict(values)

    every_name = sorted({name for params in declared.values() for name in params})
    unknown = [name for name in common if name not in every_name]
    if unknown:
        raise UserError(f"{', '.join(unknown)} in the `{COMMON_SECTION}` section of {source} is a parameter of "
                        f"no notebook.{_did_you_mean(unknown, every_name)}", f"Valid names: {', '.join(every_name)}.")
    merged: Dict[str, dict] = {}
    for name in notebooks:
        valid = declared[name]
        unknown = [key for key in sections.get(name, {}) if key not in valid]
        if unknown:
            raise UserError(f"{', '.join(unknown)} in section {name} of {source} is not a parameter of "
                            f"notebook {name}.{_did_you_mean(unknown, valid)}",
                            f"Its parameters are: {', '.join(valid)}.")
        values = {key: value for key, value in common.items() if key in valid}
        values.update(sections.get(name, {}))
        values.update({key: value for key, value in (overrides or {}).items() if key in valid})
        for key, value in values.items():
            _check_kind(name, key, value, valid[key]["default"], source)
        merged[name] = values
    return merged


def _did_you_mean(unknown: Sequence[str], valid: Iterable[str]) -> str:
    import difflib

    guesses = [f"{name} -> {match[0]}" for name in unknown
               for match in [difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)] if match]
    return f" Did you mean: {', '.join(guesses)}?" if guesses else ""


def _kind(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "text"
    return "other"  # lists, mappings: the notebook decides what it accepts


def _check_kind(notebook: str, name: str, value, default, source: str) -> None:
    expected, given = _kind(default), _kind(value)
    if "none" in (expected, given) or "other" in (expected, given) or expected == given:
        return
    raise UserError(f"{name} = {value!r} for notebook {notebook} (from {source}) is {given}, but the notebook "
                    f"expects {expected} (its default is {default!r}).",
                    f"Give {name} a value like {default!r}" + (" (quote paths and names in YAML)."
                                                               if expected == "text" else "."))


# --- running ----------------------------------------------------------------------------------------

@dataclass
class NotebookRun:
    """One notebook of a series run and how it went."""

    name: str
    source: Path
    output: Path
    parameters: dict
    status: str = "not run"  # 'ok', 'FAILED', 'interrupted' or 'not run'
    seconds: Optional[float] = None
    error: Optional[str] = None


@dataclass
class SeriesResult:
    runs: List[NotebookRun] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(run.status == "ok" for run in self.runs)

    @property
    def failed(self) -> List[NotebookRun]:
        return [run for run in self.runs if run.status in ("FAILED", "interrupted")]


def run_series(notebooks: Mapping[str, Path], parameters: Mapping[str, dict], output_dir: PathLike,
               keep_going: bool = False, progress: bool = True, log_output: bool = False,
               cwd: Optional[PathLike] = None, echo: Callable[[str], None] = print,
               side_by_side: Sequence[str] = ()) -> SeriesResult:
    """Execute `notebooks` (stem -> path, in order) with papermill; executed copies in `output_dir`.

    Notebooks named in `side_by_side` run each in a process of its own with SIDE_BY_SIDE_THREADS CPU
    threads, those next to each other in the order at the same time (they must not read what the other
    writes). Stops at the first failure unless `keep_going` (notebooks already running side by side finish).
    Never raises for a failing notebook: the result holds each notebook's status, time (s) and error (which
    names the failing cell).
    """
    output_dir = Path(output_dir)
    result = SeriesResult([NotebookRun(name, Path(path), output_dir / f"{name}.ipynb", dict(parameters.get(name, {})))
                           for name, path in notebooks.items()])
    total = len(result.runs)
    groups: List[List[int]] = []  # indices of the runs that start together, in order
    for index, run in enumerate(result.runs):
        if groups and run.name in side_by_side and result.runs[groups[-1][-1]].name in side_by_side:
            groups[-1].append(index)
        else:
            groups.append([index])
    for group in groups:
        for index in group:
            run = result.runs[index]
            shown = ", ".join(f"{key}={value!r}" for key, value in run.parameters.items() if key != "WORKSPACE")
            echo(f"[{index + 1}/{total}] {run.name}" + (f"  ({shown})" if shown else ""))
        if result.runs[group[0]].name in side_by_side:
            _run_side_by_side([result.runs[index] for index in group], output_dir, log_output, cwd, echo, result)
        else:
            _run_here(result.runs[group[0]], progress, log_output, cwd, echo, result)
        if any(result.runs[index].error for index in group) and not keep_going:
            break
    return result


def _run_here(run: NotebookRun, progress: bool, log_output: bool, cwd, echo, result: SeriesResult) -> None:
    """One notebook, its kernel started from this process."""
    started = time.perf_counter()
    try:
        nbtools.execute_notebook(run.source, run.output, parameters=run.parameters, cwd=cwd,
                                 progress=progress, log_output=log_output)
    except UserError as exc:
        run.status, run.error = "FAILED", str(exc)
    except KeyboardInterrupt:
        run.status, run.seconds = "interrupted", time.perf_counter() - started
        echo(format_status_table(result))
        raise
    else:
        run.status = "ok"
    run.seconds = time.perf_counter() - started
    _echo_end(run, echo)


def _echo_end(run: NotebookRun, echo) -> None:
    echo(f"      {run.name}: {run.status} in {format_seconds(run.seconds)} -> {run.output}")
    if run.error:
        echo(f"error: {run.error}")


def _run_side_by_side(runs: List[NotebookRun], output_dir: Path, log_output: bool, cwd, echo,
                      result: SeriesResult) -> None:
    """Start each of `runs` in its own process (mura_aug.notebooks.own_process) and wait for all of them."""
    threads = str(SIDE_BY_SIDE_THREADS)
    # OMP_NUM_THREADS sets torch's CPU threads in the kernel: one per notebook, so that two notebooks share
    # two cores instead of fighting over them (oversubscribed, torch's threads slow down many times over).
    env = nbtools.environment_importing_this_package({**os.environ, "OMP_NUM_THREADS": threads,
                                                      "MKL_NUM_THREADS": threads})
    names = " and ".join(run.name for run in runs)
    echo(f"      {names} run side by side, {threads} CPU thread(s) each" if len(runs) > 1 else
         f"      {names} runs in its own process, {threads} CPU thread(s)")
    try:
        nbtools.make_output_folder(output_dir)
    except UserError as exc:
        for run in runs:
            run.status, run.error = "FAILED", str(exc)
            _echo_end(run, echo)
        return
    with tempfile.TemporaryDirectory(prefix=".side_by_side-", dir=output_dir) as scratch:
        started = time.perf_counter()
        running = {}
        for run in runs:
            task = Path(scratch) / f"{run.name}.json"
            outcome = Path(scratch) / f"{run.name}.outcome.json"
            task.write_text(json.dumps({"source": str(run.source), "output": str(run.output),
                                        "parameters": run.parameters, "cwd": str(cwd) if cwd else None,
                                        "log_output": log_output, "outcome": str(outcome)}), encoding="utf-8")
            process = subprocess.Popen([sys.executable, "-m", "mura_aug.notebooks.own_process", str(task)], env=env)
            running[run.name] = (run, process, outcome)
        try:
            while running:
                for name, (run, process, outcome) in list(running.items()):
                    if process.poll() is None:
                        continue
                    run.seconds = time.perf_counter() - started
                    run.status, run.error = _outcome(outcome, process.returncode, run)
                    _echo_end(run, echo)
                    del running[name]
                time.sleep(0.2)
        except KeyboardInterrupt:
            for run, process, _ in running.values():
                _stop(process)
                run.status, run.seconds = "interrupted", time.perf_counter() - started
            echo(format_status_table(result))
            raise


def _stop(process) -> None:
    """End a notebook's process after Ctrl-C so that it still saves its executed copy and shuts its kernel down.

    A terminal's Ctrl-C reaches the whole process group, the children included: they stop by themselves. An
    interrupt of this process alone (Jupyter's "interrupt kernel" where run_series runs in a notebook) does
    not, so after a moment they get SIGTERM, which own_process turns into the same orderly stop."""
    for ask, patience_s in ((None, 10), (process.terminate, 20), (process.kill, 5)):  # seconds to wait
        if ask is not None:
            ask()
        try:
            process.wait(timeout=patience_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _outcome(outcome: Path, returncode: int, run: NotebookRun) -> tuple:
    """(status, error) of a notebook run in its own process, from the file it wrote when it ended."""
    try:
        written = json.loads(outcome.read_text(encoding="utf-8"))
        return written["status"], written["error"]
    except (OSError, ValueError, KeyError):
        return "FAILED", (f"The process running {run.source.name} ended (exit status {returncode}) without saying "
                          f"how the notebook ended; see the executed copy {run.output} for the last cell that ran "
                          "(a kill by the system, often for lack of memory, ends it like this).")


SERIES_RECORD = "series_run.json"  # written next to the executed notebooks: what ran, how long, how it ended


def write_series_record(result: SeriesResult, output_dir: PathLike, command: str) -> Path:
    """Save the run's statuses and times (s) as JSON next to the executed notebooks (for scripts and bench/)."""
    record = {
        "command": command,
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "ok": result.ok,
        "notebooks": [{"name": run.name, "status": run.status, "seconds": run.seconds,
                       "executed_copy": str(run.output), "parameters": run.parameters, "error": run.error}
                      for run in result.runs],
    }
    return atomic_write_json(Path(output_dir) / SERIES_RECORD, record)


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def format_status_table(result: SeriesResult) -> str:
    """One line per notebook: name, status, time taken, executed copy."""
    width = max([len("notebook")] + [len(run.name) for run in result.runs])
    lines = [f"{'notebook':<{width}}  {'status':<11}  {'time':>9}  executed copy"]
    for run in result.runs:
        copy = str(run.output) if run.status != "not run" else ""
        lines.append(f"{run.name:<{width}}  {run.status:<11}  {format_seconds(run.seconds):>9}  {copy}")
    return "\n".join(lines)


# --- the `notebooks` command ------------------------------------------------------------------------

def _add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", default=None,
                        help="comma-separated notebooks to run, by number or name (e.g. 02,04); default: all")
    parser.add_argument("--keep-going", action="store_true",
                        help="run the later notebooks even after one fails (default: stop at the first failure)")
    parser.add_argument("--notebooks-dir", default=None,
                        help="folder with the numbered notebooks (default: the repository's notebooks/)")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    parser.add_argument("--show-output", action="store_true",
                        help="print what the notebooks' cells print while they run (long training runs)")


def add_notebooks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default=None,
                        help="YAML parameter file: a `common:` section plus sections '01'..'06' "
                             "(or full notebook names) of NAME: value")
    parser.add_argument("--workspace", default=None,
                        help="workspace folder, passed to every notebook as WORKSPACE (default: WORKSPACE from "
                             "the parameter file, else Google Drive in Colab and ./workspace elsewhere)")
    parser.add_argument("--output-dir", default=None,
                        help="where the executed notebooks go (default: <workspace>/results/notebooks)")
    _add_common_arguments(parser)


def run_notebooks(args: argparse.Namespace) -> int:
    available = find_notebooks(args.notebooks_dir)
    chosen = select_notebooks(available, args.only)
    spec = load_parameter_file(args.params) if args.params else {}
    source = str(args.params) if args.params else "the parameter file"
    declared = declared_parameters(available)
    # Validate the whole file (every section, also those of notebooks not chosen) before touching anything.
    merge_parameters(spec, declared, source=source)
    workspace_root = args.workspace or (spec.get(COMMON_SECTION) or {}).get("WORKSPACE")
    workspace = resolve_workspace(workspace_root)
    merged = merge_parameters(spec, declared, overrides={"WORKSPACE": str(workspace.root)}, source=source)
    output_dir = Path(args.output_dir).expanduser().resolve() if args.output_dir else workspace.executed_notebooks
    print(f"Workspace: {workspace.root}\nExecuted notebooks: {output_dir}", flush=True)
    result = run_series({name: available[name] for name in chosen}, merged, output_dir,
                        keep_going=args.keep_going, progress=not args.no_progress,
                        log_output=_enable_output_logging(args.show_output), echo=_echo)
    write_series_record(result, output_dir, "notebooks")
    _echo("\n" + format_status_table(result))
    if not result.ok:
        _echo(f"\n{len(result.failed)} notebook(s) failed: {', '.join(run.name for run in result.failed)}. "
              "Fix what the error names and rerun: finished work is kept.")
        return 1
    return 0


def _echo(text: str) -> None:
    print(text, flush=True)


def _enable_output_logging(show: bool) -> bool:
    # papermill streams cell output through the `papermill` logger at INFO level.
    if show:
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("papermill").setLevel(logging.INFO)
    return show


# --- the `demo` command -----------------------------------------------------------------------------

def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=DEFAULT_DEMO_WORKSPACE,
                        help=f"a new or empty folder for the demo (default: {DEFAULT_DEMO_WORKSPACE}); a folder "
                             "holding other data is refused, so the demo never mixes with real MURA work")
    _add_common_arguments(parser)


def demo_workspace(root: PathLike) -> Workspace:
    """The demo's workspace: a new or empty folder, or one an earlier demo made (it carries the workspace's
    demo marker, so that the demo never writes its generated X-rays into a folder holding a user's real data)."""
    path = Path(root).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"The demo workspace {path} is a file.", "Pass --workspace with a folder (new or empty).")
    marker = Workspace(path).demo_marker
    if path.is_dir() and not marker.exists():
        others = sorted(entry.name for entry in path.iterdir())
        if others:
            shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
            raise UserError(f"The folder {path} already holds files the demo did not make ({shown}); the demo "
                            "writes generated X-rays and tables into it and would mix them with what is there.",
                            f"Pass --workspace with a new or empty folder (default {DEFAULT_DEMO_WORKSPACE}).")
    if not marker.exists():
        atomic_write_json(marker, {"made_by": "python -m mura_aug demo",
                                   "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return resolve_workspace(path)


def demo_parameters(available: Mapping[str, Path], workspace: Workspace) -> Dict[str, dict]:
    """The demo's per-notebook parameters: demo_params.yaml, this workspace, and demo data for stage 01."""
    if not DEMO_PARAMS_FILE.is_file():
        raise UserError(f"The demo's settings file {DEMO_PARAMS_FILE} is missing from the installed package.",
                        "Reinstall mura_aug from the repository (pip install -e . in a checkout).")
    spec = load_parameter_file(DEMO_PARAMS_FILE)
    # Sections of series notebooks that are absent here (a partial checkout run with --only) are skipped.
    absent = {name.split("_", 1)[0] for name in SERIES if name not in available} | {
        name for name in SERIES if name not in available}
    spec = {key: values for key, values in spec.items() if _section_label(key) not in absent}
    merged = merge_parameters(spec, declared_parameters(available), source=DEMO_PARAMS_FILE.name,
                              overrides={"WORKSPACE": str(workspace.root)})
    for name, values in merged.items():
        if name.startswith("01_"):
            values["MURA_PATH"] = ""  # "" = generate the demo MURA tree into the workspace
    resumed, trained_last = "04_resume", DEMO_SIDE_BY_SIDE[-1]
    if resumed in merged and trained_last in merged and merged[resumed].get("RUN") is None:
        # 04 continues "the newest run" when RUN is None. With 02 and 03 side by side, which of them ends last
        # is chance; the demo names the run that one after the other leaves newest (03's), so it always
        # resumes the same one.
        declared = declared_parameters({trained_last: available[trained_last]})[trained_last]
        values = {**{key: spec["default"] for key, spec in declared.items()}, **merged[trained_last]}
        merged[resumed]["RUN"] = run_name(values["BODY_PART"], values["LABEL"], values["CFG"], values["RESOLUTION"])
    return merged


def _section_label(key) -> str:
    return f"{key:02d}" if isinstance(key, int) else str(key)


def run_demo(args: argparse.Namespace) -> int:
    available = find_notebooks(args.notebooks_dir)
    chosen = select_notebooks(available, args.only)
    missing = [name for name in SERIES if name not in available]
    if missing and not args.only:
        folder = next(iter(available.values())).parent
        raise UserError(f"The demo needs the notebooks {', '.join(missing)}, missing from {folder}.",
                        "Restore them from the repository (git checkout notebooks/), or run part of the demo "
                        "with --only.")
    workspace = demo_workspace(args.workspace)
    parameters = demo_parameters(available, workspace)
    output_dir = workspace.executed_notebooks
    _echo(f"Demo workspace: {workspace.root}\nRunning {', '.join(chosen)} on generated X-rays with tiny CPU "
          f"settings ({DEMO_PARAMS_FILE.name}); executed notebooks go to {output_dir}.")
    started = time.perf_counter()
    result = run_series({name: available[name] for name in chosen}, parameters, output_dir,
                        keep_going=args.keep_going, progress=not args.no_progress,
                        log_output=_enable_output_logging(args.show_output), echo=_echo,
                        side_by_side=DEMO_SIDE_BY_SIDE)
    write_series_record(result, output_dir, "demo")
    _echo("\n" + format_status_table(result))
    _echo(f"\nTotal: {format_seconds(time.perf_counter() - started)}.\n")
    body_part = _demo_body_part(parameters)
    _echo(where_everything_is(workspace, body_part, output_dir))
    from mura_aug.gan.measure import latest_fid_text  # what notebooks 02 / 03 measured at their end

    fids = latest_fid_text(workspace)
    if fids:
        _echo(f"\nThe fakes' FID (end of notebooks 02 / 03):\n{fids}")
    from mura_aug.evaluate.stage import latest_comparison_text  # stage 06's own reader of what it wrote

    table = latest_comparison_text(workspace, body_part)
    if table:
        _echo(f"\nBaseline vs augmented (stage 06):\n{table}")
    if not result.ok:
        _echo(f"\n{len(result.failed)} notebook(s) failed: {', '.join(run.name for run in result.failed)}. "
              "Rerun the same command after fixing what the error names: finished work is kept.")
        return 1
    return 0


def _demo_body_part(parameters: Mapping[str, dict]) -> str:
    for values in parameters.values():
        if "BODY_PART" in values:
            return str(values["BODY_PART"])
    return "XR_SHOULDER"


def where_everything_is(workspace: Workspace, body_part: str, notebooks_dir: Path) -> str:
    """A short map of the workspace's outputs (only what exists)."""
    places = [
        ("generated MURA-like data", workspace.demo_source),
        ("copied images", workspace.images),
        ("tables", workspace.tables),
        ("GAN datasets", workspace.datasets),
        ("GAN runs (snapshots, fakes grids)", workspace.experiments),
        ("synthetic X-rays", workspace.augmented),
        ("evaluation results", workspace.evaluation_dir(body_part)),
        ("executed notebooks", notebooks_dir),
    ]
    lines = [f"Everything is in {workspace.root}:"]
    for label, path in places:
        if path.exists():
            lines.append(f"  {label:<34} {path}")
    runs = [run.name for run in workspace.runs()]
    if runs:
        lines.append(f"  {'runs':<34} {', '.join(runs)}")
    if workspace.augmented.is_dir():
        counts = {cls: len(list(workspace.augmented_dir(cls, body_part).glob("*.png"))) for cls in CLASSES}
        lines.append(f"  {'synthetic images per class':<34} {counts}")
    return "\n".join(lines)
