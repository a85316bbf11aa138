"""The series runner: parameter files, validation, batches with a failing notebook, --only, the demo's guards."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import mura_aug
from evaluation_data import BODY
from mura_aug import cli
from mura_aug.errors import UserError
from mura_aug.evaluate import stage
from mura_aug.notebooks import nbtools, series
from mura_aug.workspace import Workspace

# Every test notebook records the parameters it ran with into <WORKSPACE>/ran_<name>.json.
# Like a stage, the cell makes the folder it writes into (resolving a workspace creates nothing).
RECORD_CELL = '''import json, pathlib
pathlib.Path(WORKSPACE).mkdir(parents=True, exist_ok=True)
pathlib.Path(WORKSPACE, "ran_{name}.json").write_text(json.dumps(dict(BODY_PART=BODY_PART, STEPS=STEPS, **EXTRA)))'''


def _make_notebook(folder: Path, name: str, extra_parameters: str = "", body: str = "") -> Path:
    parameters = ('WORKSPACE = None  # workspace folder\n'
                  'BODY_PART = "XR_SHOULDER"  # MURA body part\n'
                  'STEPS = 2  # how many steps\n' + extra_parameters)
    extra_names = [line.split("=")[0].strip() for line in extra_parameters.splitlines() if "=" in line]
    cells = [{"markdown": "Some prose."},
             "EXTRA = {" + ", ".join(f"{n!r}: {n}" for n in extra_names) + "}",
             RECORD_CELL.format(name=name)]
    if body:
        cells.append(body)
    nb = nbtools.build_notebook(f"# {name}", parameters, cells)
    return nbtools.write_notebook(folder / f"{name}.ipynb", nb)


@pytest.fixture
def toy_series(tmp_path) -> Path:
    """Three small notebooks: 01 records its parameters, 02 fails when FAIL is true, 03 records too."""
    folder = tmp_path / "notebooks"
    _make_notebook(folder, "01_first", 'RATE = 0.5  # learning rate (1/step)\n')
    _make_notebook(folder, "02_second", 'FAIL = True  # raise in the last cell\n',
                   body='if FAIL:\n    raise ValueError("boom from the second notebook")')
    _make_notebook(folder, "03_third", 'LABEL = "positive"  # class to use\n')
    return folder


def _declared(folder: Path):
    return series.declared_parameters(series.find_notebooks(folder))


# --- parameter files -------------------------------------------------------------------------------

def test_merge_applies_common_then_section_then_overrides_only_where_declared(toy_series):
    spec = {"common": {"STEPS": 7, "BODY_PART": "XR_WRIST", "RATE": 0.1},
            2: {"STEPS": 9},  # YAML reads `02:` as the integer 2
            "03_third": {"LABEL": "negative"}}
    merged = series.merge_parameters(spec, _declared(toy_series), overrides={"WORKSPACE": "/ws"})
    assert merged["01_first"] == {"STEPS": 7, "BODY_PART": "XR_WRIST", "RATE": 0.1, "WORKSPACE": "/ws"}
    # RATE is declared only by 01: common values go only where the notebook declares the name
    assert merged["02_second"] == {"STEPS": 9, "BODY_PART": "XR_WRIST", "WORKSPACE": "/ws"}
    assert merged["03_third"] == {"STEPS": 7, "BODY_PART": "XR_WRIST", "LABEL": "negative", "WORKSPACE": "/ws"}


def test_parameter_file_from_yaml_with_numbered_and_named_sections(toy_series, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text('common:\n  STEPS: 3\n"01":\n  RATE: 0.25\n02:\n  FAIL: false\nthird:\n  LABEL: negative\n')
    merged = series.merge_parameters(series.load_parameter_file(path), _declared(toy_series))
    assert merged["01_first"] == {"STEPS": 3, "RATE": 0.25}
    assert merged["02_second"] == {"STEPS": 3, "FAIL": False}
    assert merged["03_third"] == {"STEPS": 3, "LABEL": "negative"}


@pytest.mark.parametrize("spec, named, listed", [
    ({"07": {"STEPS": 1}}, "'07'", "01_first, 02_second, 03_third"),
    ({"01": {"STEP": 1}}, "STEP", "WORKSPACE, BODY_PART, STEPS, RATE"),
    ({"02": {"RATE": 1.0}}, "RATE", "WORKSPACE, BODY_PART, STEPS, FAIL"),
    ({"common": {"KIMG": 1}}, "KIMG", "BODY_PART, FAIL, LABEL, RATE, STEPS, WORKSPACE"),
])
def test_unknown_sections_and_names_are_refused_listing_the_valid_ones(toy_series, spec, named, listed):
    with pytest.raises(UserError) as info:
        series.merge_parameters(spec, _declared(toy_series))
    assert named in info.value.problem
    assert listed in info.value.fix


def test_a_value_of_the_wrong_kind_is_refused(toy_series):
    with pytest.raises(UserError, match=r"STEPS = 'many'.*01_first.*expects number"):
        series.merge_parameters({"01": {"STEPS": "many"}}, _declared(toy_series))
    # None, and an int where a float is expected, are fine
    merged = series.merge_parameters({"01": {"RATE": 1, "WORKSPACE": None}}, _declared(toy_series))
    assert merged["01_first"] == {"RATE": 1, "WORKSPACE": None}


@pytest.mark.parametrize("text, problem", [
    ("common: [1, 2\n", "not valid YAML at line"),
    ("- 1\n- 2\n", "must be a mapping"),
    ('"01": 5\n', "must be a mapping of NAME: value"),
])
def test_broken_parameter_files_are_explained(toy_series, tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=problem):
        series.merge_parameters(series.load_parameter_file(path), _declared(toy_series), source=str(path))
    with pytest.raises(UserError, match="does not exist"):
        series.load_parameter_file(tmp_path / "absent.yaml")


def test_only_selects_in_series_order_by_number_or_name(toy_series):
    available = series.find_notebooks(toy_series)
    assert series.select_notebooks(available, "3,01") == ["01_first", "03_third"]
    assert series.select_notebooks(available, ["second"]) == ["02_second"]
    assert series.select_notebooks(available, None) == ["01_first", "02_second", "03_third"]
    with pytest.raises(UserError, match="There is no notebook '05'"):
        series.select_notebooks(available, "01,05")


# --- executing batches -----------------------------------------------------------------------------

def test_a_failing_notebook_stops_the_batch_and_is_reported_with_its_cell(toy_series, tmp_path, capsys):
    workspace = tmp_path / "ws"
    status = cli.main(["notebooks", "--notebooks-dir", str(toy_series), "--workspace", str(workspace),
                       "--no-progress"])
    out = capsys.readouterr().out
    assert status == 1
    assert json.loads((workspace / "ran_01_first.json").read_text())["STEPS"] == 2
    assert not (workspace / "ran_03_third.json").exists()  # never started after the failure
    # the error names the notebook, the failing cell's code and the exception
    assert "Notebook 02_second.ipynb failed in cell" in out
    assert 'raise ValueError("boom from the second notebook")' in out
    assert "ValueError: boom from the second notebook" in out
    table = out[out.index("notebook  "):]
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[1:4]}
    assert rows["01_first"][0] == "ok" and rows["02_second"][0] == "FAILED" and rows["03_third"] == ["not", "run"]
    executed = workspace / "results" / "notebooks"
    # the executed copies (no half-written leftovers) and a machine-readable record of the run
    assert sorted(p.name for p in executed.iterdir()) == ["01_first.ipynb", "02_second.ipynb", "series_run.json"]
    record = json.loads((executed / "series_run.json").read_text())
    assert [(n["name"], n["status"]) for n in record["notebooks"]] == [
        ("01_first", "ok"), ("02_second", "FAILED"), ("03_third", "not run")]
    assert record["ok"] is False and record["notebooks"][0]["seconds"] > 0
    assert "boom from the second notebook" in (executed / "02_second.ipynb").read_text()


def test_only_and_a_parameter_file_run_just_those_notebooks_with_those_values(toy_series, tmp_path, capsys):
    workspace, outputs = tmp_path / "ws", tmp_path / "executed"
    params = tmp_path / "params.yaml"
    params.write_text(f'common:\n  WORKSPACE: "{workspace}"\n  BODY_PART: XR_HAND\n'
                      '"02":\n  FAIL: false\n  STEPS: 5\n"03":\n  LABEL: negative\n')
    status = cli.main(["notebooks", "--notebooks-dir", str(toy_series), "--params", str(params),
                       "--only", "02,03", "--output-dir", str(outputs), "--no-progress"])
    assert status == 0, capsys.readouterr()
    assert not (workspace / "ran_01_first.json").exists()
    assert json.loads((workspace / "ran_02_second.json").read_text()) == {"BODY_PART": "XR_HAND", "STEPS": 5,
                                                                          "FAIL": False}
    assert json.loads((workspace / "ran_03_third.json").read_text()) == {"BODY_PART": "XR_HAND", "STEPS": 2,
                                                                         "LABEL": "negative"}
    assert sorted(p.name for p in outputs.glob("*.ipynb")) == ["02_second.ipynb", "03_third.ipynb"]


def test_keep_going_runs_the_notebooks_after_a_failure(toy_series, tmp_path):
    notebooks = series.find_notebooks(toy_series)
    chosen = {name: notebooks[name] for name in ("02_second", "03_third")}
    parameters = {name: {"WORKSPACE": str(tmp_path)} for name in chosen}
    lines = []
    result = series.run_series(chosen, parameters, tmp_path / "out", keep_going=True, progress=False,
                               echo=lines.append)
    assert [run.status for run in result.runs] == ["FAILED", "ok"]
    assert not result.ok and [run.name for run in result.failed] == ["02_second"]
    assert (tmp_path / "ran_03_third.json").exists()
    assert "cell [" in result.runs[0].error


def test_invalid_parameters_are_refused_before_anything_runs(toy_series, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text('"03":\n  LABLE: negative\n')
    status = cli.main(["notebooks", "--notebooks-dir", str(toy_series), "--params", str(params),
                       "--workspace", str(tmp_path / "ws"), "--only", "01"])
    err = capsys.readouterr().err
    assert status == 2
    assert "LABLE in section 03_third" in err and "Did you mean: LABLE -> LABEL?" in err
    assert not (tmp_path / "ws").exists()


# --- the demo --------------------------------------------------------------------------------------

def test_demo_refuses_a_folder_with_other_files_and_reuses_its_own(tmp_path):
    users_folder = tmp_path / "my_workspace"
    (users_folder / "data").mkdir(parents=True)
    with pytest.raises(UserError, match="already holds files the demo did not make"):
        series.demo_workspace(users_folder)
    assert sorted(p.name for p in users_folder.iterdir()) == ["data"]  # untouched
    fresh = series.demo_workspace(tmp_path / "demo")
    (fresh.root / "some_output.txt").write_text("made by a stage")
    assert series.demo_workspace(tmp_path / "demo").root == fresh.root  # a rerun is welcome


def test_demo_parameters_validate_against_the_committed_notebooks(tmp_path):
    available = series.find_notebooks()
    assert set(available) == set(series.SERIES)
    workspace = series.demo_workspace(tmp_path / "demo")
    merged = series.demo_parameters(available, workspace)
    assert set(merged) == set(available)
    for name, values in merged.items():
        assert values.get("WORKSPACE", str(workspace.root)) == str(workspace.root)
    if "01_prepare" in merged:
        assert merged["01_prepare"]["MURA_PATH"] == ""


def test_demo_with_missing_notebooks_says_which(toy_series, tmp_path):
    with pytest.raises(UserError, match="needs the notebooks 01_prepare, 02_train_positive"):
        series.run_demo(cli.build_parser("demo").parse_args(
            ["--notebooks-dir", str(toy_series), "--workspace", str(tmp_path / "demo")]))


def test_the_comparison_is_read_from_what_stage_06_wrote(finished_experiment):
    workspace, _ = finished_experiment
    latest = stage.latest_experiment_copy(workspace, BODY)
    summary = json.loads(latest.summary.read_text())
    lines = stage.latest_comparison_text(workspace, BODY).splitlines()
    assert lines[0] == f"({latest.summary})"
    assert summary["comparison"]
    for entry in summary["comparison"]:
        row = next(line.strip() for line in lines
                   if line.strip().startswith(f"{entry['metric']} (threshold {entry['threshold_rule']})"))
        low, high = entry["baseline_ci"]
        assert f"{entry['baseline']:.3f} [{low:.3f}, {high:.3f}]" in row
        low, high = entry["difference_ci"]
        assert f"{entry['difference']:+.3f} [{low:+.3f}, {high:+.3f}]" in row
        assert row.endswith("yes" if entry["within_noise"] else "no")
    assert lines[-len(summary["verdict"]):] == [f"  - {verdict}" for verdict in summary["verdict"]]


def test_no_comparison_before_stage_06_and_a_damaged_summary_is_named(finished_experiment, tmp_path):
    assert stage.latest_comparison_text(Workspace(tmp_path / "empty"), BODY) is None
    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(finished_experiment[0].root, workspace.root)
    damaged = stage.latest_experiment_copy(workspace, BODY).summary
    damaged.write_text(damaged.read_text()[:100])  # cut short, as a hand edit or a broken copy would
    with pytest.raises(UserError, match="cannot be read") as info:
        stage.latest_comparison_text(workspace, BODY)
    assert str(damaged) in info.value.problem and "python -m mura_aug evaluate" in info.value.fix


def test_a_notebook_kernel_imports_this_very_package(tmp_path, monkeypatch):
    # without PYTHONPATH the kernel would import whatever mura_aug is installed (or try pip in the setup cell)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    nb = nbtools.build_notebook("# Which mura_aug", "WORKSPACE = None  # where to write\n", [
        'import pathlib, mura_aug\npathlib.Path(WORKSPACE, "package.txt").write_text(mura_aug.__file__)'])
    source = nbtools.write_notebook(tmp_path / "01_which.ipynb", nb)
    nbtools.execute_notebook(source, tmp_path / "out.ipynb", parameters={"WORKSPACE": str(tmp_path)})
    imported = Path((tmp_path / "package.txt").read_text()).resolve()
    assert imported == (nbtools.PACKAGE_PARENT / "mura_aug" / "__init__.py").resolve()
    assert imported.parent == Path(mura_aug.__file__).resolve().parent


def test_a_dying_kernel_is_reported_as_such_and_the_executed_copy_kept(tmp_path):
    nb = nbtools.build_notebook("# Dies", "SIZE = 1  # how much\n", ["import os\nos._exit(3)  # as the OOM killer"])
    source = nbtools.write_notebook(tmp_path / "01_dies.ipynb", nb)
    output = tmp_path / "out" / "01_dies.ipynb"
    with pytest.raises(UserError) as info:
        nbtools.execute_notebook(source, output)
    assert "01_dies.ipynb did not finish: the Python kernel died" in info.value.problem
    assert "smaller settings" in info.value.fix
    assert [p.name for p in output.parent.iterdir()] == ["01_dies.ipynb"]


def test_papermill_warns_about_a_name_the_notebook_does_not_declare_and_no_other(tmp_path, caplog):
    # Nothing filters papermill's warnings any more: a declared name passes silently, a typo is reported.
    parameters = 'MAX_MINUTES: Optional[float] = 690  # stop after this many minutes (Colab ends sessions after ~12 h)\n'
    nb = nbtools.build_notebook("# Warnings", parameters, ["assert MAX_MINUTES == 2"])
    source = nbtools.write_notebook(tmp_path / "01_warnings.ipynb", nb)
    with caplog.at_level("WARNING", logger="papermill"):
        nbtools.execute_notebook(source, tmp_path / "out.ipynb", parameters={"MAX_MINUTES": 2, "BOGUS": 1})
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["Passed unknown parameter: BOGUS"]


def test_demo_runs_its_notebooks_in_its_own_workspace_and_ends_with_the_comparison(finished_experiment, tmp_path,
                                                                                   capsys):
    import yaml

    demo_settings = yaml.safe_load(series.DEMO_PARAMS_FILE.read_text())
    real_summary = stage.latest_experiment_copy(finished_experiment[0], BODY).summary
    folder = tmp_path / "notebooks"
    # stand-ins for notebooks 01 and 06 declaring the names demo_params.yaml gives them; 06 puts a real
    # stage-06 summary where stage 06 writes it
    for number, name, body in [
        ("01", "01_prepare", ""),
        ("06", "06_densenet_eval",
         "import shutil\n"
         "from mura_aug.evaluate import stage\n"
         "from mura_aug.workspace import Workspace\n"
         "target = stage.latest_experiment_copy(Workspace(WORKSPACE), BODY_PART).summary\n"
         "target.parent.mkdir(parents=True)\n"
         f"shutil.copyfile({str(real_summary)!r}, target)")]:
        names = [key for key in demo_settings[number] if key not in ("STEPS", "BODY_PART")]
        if number == "01":
            names.append("MURA_PATH")
        extra = "".join(f"{key} = None  # stand-in\n" for key in dict.fromkeys(names))
        _make_notebook(folder, name, extra, body=body)
    workspace = tmp_path / "demo"
    status = cli.main(["demo", "--workspace", str(workspace), "--notebooks-dir", str(folder), "--only", "01,06",
                       "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert Workspace(workspace).demo_marker.is_file()
    prepared = json.loads((workspace / "ran_01_prepare.json").read_text())
    assert prepared["MURA_PATH"] == "" and prepared["RESOLUTION"] == demo_settings["01"]["RESOLUTION"]
    assert json.loads((workspace / "ran_06_densenet_eval.json").read_text())["ARCH"] == demo_settings["06"]["ARCH"]
    assert f"executed notebooks                 {workspace / 'results' / 'notebooks'}" in out
    table = out[out.index("Baseline vs augmented (stage 06):"):]
    kappa = next(entry for entry in json.loads(real_summary.read_text())["comparison"]
                 if entry["metric"] == "kappa" and entry["threshold_rule"] == "0.5")
    assert "kappa (threshold 0.5)" in table and f"{kappa['augmented']:.3f} [" in table
    assert out.index("Baseline vs augmented") > out.index("[2/2] 06_densenet_eval")


# --- notebooks side by side ---------------------------------------------------------------------------

# Each records when it ran (time.time(), s) and the CPU threads its kernel got.
TIMED_CELL = '''import json, os, pathlib, time
started = time.time()
time.sleep(PAUSE_S)
pathlib.Path(WORKSPACE, "timed_{name}.json").write_text(json.dumps(dict(
    started=started, ended=time.time(), omp=os.environ.get("OMP_NUM_THREADS"))))'''


@pytest.fixture
def timed_series(tmp_path) -> Path:
    folder = tmp_path / "notebooks"
    for name in ("01_first", "02_second", "03_third"):
        _make_notebook(folder, name, 'PAUSE_S = 1.5  # seconds to wait\nFAIL = False  # raise at the end\n',
                       body=TIMED_CELL.format(name=name) + '\nif FAIL:\n    raise ValueError("boom from ' + name + '")')
    return folder


def _timed(workspace: Path, name: str) -> dict:
    return json.loads((workspace / f"timed_{name}.json").read_text())


def test_notebooks_side_by_side_overlap_get_their_threads_and_the_next_waits_for_both(timed_series, tmp_path):
    notebooks = series.find_notebooks(timed_series)
    parameters = {name: {"WORKSPACE": str(tmp_path)} for name in notebooks}
    lines = []
    result = series.run_series(notebooks, parameters, tmp_path / "out", progress=False, echo=lines.append,
                               side_by_side=("01_first", "02_second"))
    assert result.ok, lines
    first, second, third = (_timed(tmp_path, name) for name in notebooks)
    assert first["started"] < second["ended"] and second["started"] < first["ended"]  # at the same time
    assert third["started"] > max(first["ended"], second["ended"])  # the next one waits for both
    assert first["omp"] == second["omp"] == str(series.SIDE_BY_SIDE_THREADS)
    assert third["omp"] == os.environ.get("OMP_NUM_THREADS")  # a notebook run here keeps this process's
    assert all(run.seconds >= 1.5 for run in result.runs)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{name}.ipynb" for name in notebooks]
    assert any("01_first and 02_second run side by side" in line for line in lines)


def test_a_failure_side_by_side_lets_the_other_finish_and_stops_the_series(timed_series, tmp_path):
    notebooks = series.find_notebooks(timed_series)
    parameters = {name: {"WORKSPACE": str(tmp_path)} for name in notebooks}
    parameters["01_first"].update(FAIL=True, PAUSE_S=0.1)
    result = series.run_series(notebooks, parameters, tmp_path / "out", progress=False, echo=lambda text: None,
                               side_by_side=("01_first", "02_second"))
    assert [run.status for run in result.runs] == ["FAILED", "ok", "not run"]
    assert "Notebook 01_first.ipynb failed in cell" in result.runs[0].error
    assert "ValueError: boom from 01_first" in result.runs[0].error
    assert "boom from 01_first" in (tmp_path / "out" / "01_first.ipynb").read_text()  # the executed copy kept
    assert not (tmp_path / "timed_03_third.json").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["01_first.ipynb", "02_second.ipynb"]


@pytest.mark.parametrize("side_by_side", [("01_first", "02_second"), ()], ids=["side-by-side", "one-by-one"])
def test_an_output_folder_that_cannot_be_made_fails_with_the_same_message_either_way(timed_series, tmp_path,
                                                                                      side_by_side):
    notebooks = series.find_notebooks(timed_series)
    parameters = {name: {"WORKSPACE": str(tmp_path)} for name in notebooks}
    (tmp_path / "taken").write_text("a file where the output folder should go")
    result = series.run_series(notebooks, parameters, tmp_path / "taken" / "out", progress=False,
                               echo=lambda text: None, side_by_side=side_by_side)
    assert result.runs[0].status == "FAILED" and result.runs[-1].status == "not run"
    assert f"Cannot create the folder {tmp_path / 'taken' / 'out'} for the executed notebooks" in result.runs[0].error
    assert "Choose an output folder you can write to." in result.runs[0].error
    assert not list(tmp_path.glob("timed_*.json"))  # nothing ran
    assert (tmp_path / "taken").read_text() == "a file where the output folder should go"


def test_a_process_that_ends_without_its_outcome_is_a_failure_that_names_the_executed_copy(tmp_path):
    run = series.NotebookRun("02_x", tmp_path / "02_x.ipynb", tmp_path / "out" / "02_x.ipynb", {})
    status, error = series._outcome(tmp_path / "never_written.json", -9, run)
    assert status == "FAILED" and "exit status -9" in error and str(run.output) in error


def test_the_demo_resumes_the_run_that_one_after_the_other_leaves_newest(tmp_path):
    available = series.find_notebooks()
    workspace = series.demo_workspace(tmp_path / "demo")
    parameters = series.demo_parameters(available, workspace)
    trained = parameters["03_train_negative"]
    assert parameters["04_resume"]["RUN"] == f"{trained['BODY_PART']}-negative-{trained['CFG']}-{trained['RESOLUTION']}"
    assert set(series.DEMO_SIDE_BY_SIDE) == {"02_train_positive", "03_train_negative"}


CTRL_C_DRIVER = '''import sys
from mura_aug.notebooks import series
notebooks = series.find_notebooks(sys.argv[1])
parameters = {{name: {{"WORKSPACE": sys.argv[2], "PAUSE_S": 60}} for name in notebooks}}
try:
    series.run_series(notebooks, parameters, sys.argv[3], progress=False, side_by_side=("01_first", "02_second"))
except KeyboardInterrupt:
    sys.exit(130)
'''


@pytest.mark.parametrize("whole_group", [True, False], ids=["terminal-ctrl-c", "this-process-only"])
def test_ctrl_c_side_by_side_keeps_both_executed_copies_and_stops_the_series(timed_series, tmp_path, whole_group):
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    driver = subprocess.Popen([sys.executable, "-c", CTRL_C_DRIVER.format(), str(timed_series), str(tmp_path),
                               str(out)], start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while len(list(out.glob(".*.running.ipynb"))) < 2 and time.time() < deadline:  # both notebooks under way
        time.sleep(0.2)
    time.sleep(3)  # inside the cell that waits
    if whole_group:
        os.killpg(driver.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    else:
        os.kill(driver.pid, signal.SIGINT)  # Jupyter's "interrupt kernel" where run_series runs in a notebook
    printed, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, printed
    table = printed[printed.index("notebook  "):]
    assert "01_first" in table and "interrupted" in table.split("01_first", 1)[1].splitlines()[0]
    assert sorted(p.name for p in out.iterdir()) == ["01_first.ipynb", "02_second.ipynb"]  # no scratch, no .running
    assert not (tmp_path / "timed_03_third.json").exists()
