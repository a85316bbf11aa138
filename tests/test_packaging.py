"""The package as a user gets it: a wheel installed into a fresh environment, used from outside the repository.

The wheel is built from this checkout and installed without dependencies into a throwaway virtual
environment that borrows the installed ones (a .pth file naming this environment's site-packages), so the
test needs no network.
"""
from __future__ import annotations

import json
import os
import re
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _run(command, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(out: Path) -> Path:
    # Without build isolation when this Python's setuptools can build the project (no download), else with it.
    import setuptools

    isolated = int(setuptools.__version__.split(".")[0]) < 77
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)]
         + ([] if isolated else ["--no-build-isolation"]), cwd=out)
    wheels = sorted(out.glob("mura_aug-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding the wheel, a folder outside the repository to run in, clean env)."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(base)
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=base)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # The environment running the tests lends its installed packages (torch, papermill, ...) to the new one,
    # after the new one's own. Not --system-site-packages: run from a virtual environment (make test's .venv)
    # that would lend the base interpreter's packages instead, which lack them. A .pth line only puts a folder
    # on sys.path, without running that folder's .pth files, so this checkout's editable install stays out.
    own = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=base).stdout.strip())
    lent = [path for path in site.getsitepackages() + [site.getusersitepackages()] if Path(path).is_dir()]
    (own / "lent_packages.pth").write_text("\n".join(lent) + "\n", encoding="utf-8")
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], cwd=base)
    outside = base / "elsewhere"
    outside.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return python, outside, env


def test_the_wheel_carries_the_notebooks_and_the_demo_settings(installed):
    python, outside, env = installed
    found = _run([str(python), "-c", "import json, mura_aug, mura_aug.notebooks.nbtools as nb; "
                  "print(mura_aug.__file__); print(json.dumps(sorted(p.name for p in nb.NOTEBOOKS_DIR.glob('*'))))"],
                 cwd=outside, env=env).stdout.splitlines()
    site = Path(sysconfig.get_paths(vars={"base": str(python.parent.parent),
                                          "platbase": str(python.parent.parent)})["purelib"])
    assert Path(found[0]).resolve().is_relative_to(site.resolve()), f"imported {found[0]}, not the wheel's copy"
    names = json.loads(found[1])
    for expected in ("01_prepare.ipynb", "02_train_positive.ipynb", "03_train_negative.ipynb", "04_resume.ipynb",
                     "05_crop_sharpen.ipynb", "06_densenet_eval.ipynb", "demo_params.yaml"):
        assert expected in names


def test_version_and_help_work_from_outside_the_repository(installed):
    python, outside, env = installed
    version = _run([str(python), "-m", "mura_aug", "--version"], cwd=outside, env=env).stdout.strip()
    assert version == f"mura_aug {_pyproject()['project']['version']}"
    helptext = _run([str(python), "-m", "mura_aug", "notebooks", "--help"], cwd=outside, env=env).stdout
    assert "--only" in helptext and "--params" in helptext


def test_notebook_01_runs_from_the_installed_package_on_demo_data(installed):
    python, outside, env = installed
    params = outside / "params.yaml"
    params.write_text('"01":\n  RESOLUTION: 16\n  DEMO_PATIENTS: 12\n  WORKERS: 1\n', encoding="utf-8")
    workspace = outside / "ws"
    result = _run([str(python), "-m", "mura_aug", "notebooks", "--only", "01", "--params", str(params),
                   "--workspace", str(workspace), "--no-progress"], cwd=outside, env=env, timeout=900)
    assert "01_prepare" in result.stdout
    executed = workspace / "results" / "notebooks" / "01_prepare.ipynb"
    assert executed.is_file()
    assert sorted(p.name for p in (workspace / "data" / "datasets").glob("*.zip")) == [
        "XR_SHOULDER_negative_16.zip", "XR_SHOULDER_positive_16.zip"]


@pytest.mark.parametrize("variable, inside", [("VENV", "bin/python"), ("WORKSPACE", "data/tables/train.csv")])
def test_what_make_creates_in_the_checkout_is_ignored_by_git(variable, inside):
    """`make demo` and `make test` create the Makefile's VENV and WORKSPACE inside the checkout; `git status`
    must not offer either for committing (Python 3.11's venv writes no .gitignore of its own)."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    default = re.search(rf"^{variable} \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert default, f"the Makefile no longer sets a default {variable}"
    path = f"{default.group(1).rstrip('/')}/{inside}"
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    assert ignored.returncode == 0, f"{path} is not ignored by .gitignore"
