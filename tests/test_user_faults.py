"""An unlucky user's faults (issue 15), outside training first, the training side at the end: each ends in a
and nothing the user owns is changed. Faults are injected at the OS call, not by mocking our own code."""
from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from mura_aug import cli
from mura_aug.errors import UserError
from mura_aug.prepare.mura import MuraWarning
from mura_aug.workspace import Workspace

REPO = Path(__file__).resolve().parent.parent


def tree_hashes(root: Path) -> dict:
    """{relative path: sha1} of every file below `root` (links not followed), to prove it unchanged."""
    hashes = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            if not path.is_symlink():
                hashes[path.relative_to(root).as_posix()] = hashlib.sha1(path.read_bytes()).hexdigest()
    return hashes


def prepare(mura, workspace, *extra) -> int:
    return cli.main(["prepare", "--mura", str(mura), "--workspace", str(workspace), "--resolution", "16",
                     "--workers", "1", "--no-progress", *extra])


@pytest.fixture
def mura_copy(demo_mura, tmp_path) -> Path:
    target = tmp_path / "MURA-v1.1"
    shutil.copytree(demo_mura, target)
    return target


# --- containment ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../../escaped", "a/b", ".hidden", ".."])
def test_a_run_name_is_a_name_not_a_path(tmp_path, capsys, name):
    status = cli.main(["train", "--workspace", str(tmp_path / "ws"), "--label", "positive", "--cfg", "tiny",
                       "--run", name, "--device", "cpu", "--no-progress"])
    assert status == 2
    assert "is not a plain name" in capsys.readouterr().err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "ws").exists()


def test_the_workspace_may_not_be_the_mura_folder_or_inside_it(mura_copy, capsys):
    before = tree_hashes(mura_copy)
    for workspace in (mura_copy, mura_copy / "train" / "ws"):
        assert prepare(mura_copy, workspace) == 2
        assert "lies inside the MURA folder" in capsys.readouterr().err
    assert tree_hashes(mura_copy) == before
    assert not (mura_copy / "data").exists() and not (mura_copy / "results").exists()


def test_mura_inside_an_output_folder_of_the_workspace_is_refused(demo_mura, tmp_path, capsys):
    workspace = Workspace(tmp_path / "ws")
    inside = workspace.data / "MURA-v1.1"
    shutil.copytree(demo_mura, inside)
    assert prepare(inside, workspace.root) == 2
    assert "lies inside the workspace's output folder" in capsys.readouterr().err


def test_mura_beside_the_workspaces_folders_is_fine(demo_mura, tmp_path):
    # The README's Colab layout: MyDrive/MURA-v1.1 and the workspace MyDrive itself.
    drive = tmp_path / "MyDrive"
    shutil.copytree(demo_mura, drive / "MURA-v1.1")
    before = tree_hashes(drive / "MURA-v1.1")
    assert prepare(drive / "MURA-v1.1", drive) == 0
    assert tree_hashes(drive / "MURA-v1.1") == before


# --- file-system errors: a message with the path and the fix, in every stage, no traceback ---------------

ERRNOS = [(errno.EROFS, "read-only"), (errno.EACCES, "you may read and write"), (errno.EIO, "force_remount"),
          (errno.ENAMETOOLONG, "shorter"), (errno.ELOOP, "symbolic link"), (errno.ENOENT, "Check the path")]


@pytest.mark.parametrize("code, fix", ERRNOS, ids=[errno.errorcode[code] for code, _ in ERRNOS])
def test_prepare_turns_each_file_system_error_into_a_message(demo_mura, tmp_path, monkeypatch, capsys, code, fix):
    workspace = tmp_path / "ws"
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if str(dst).startswith(str(workspace)):  # only the workspace's writes fail, as on a bad disk
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    assert prepare(demo_mura, workspace) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and os.strerror(code) in err and str(workspace) in err
    assert "while preparing XR_SHOULDER" in err and fix in err


def test_the_same_error_in_a_notebook_is_a_user_error(demo_mura, tmp_path, monkeypatch):
    from mura_aug.prepare import stage
    from mura_aug.prepare.settings import PrepareSettings

    def read_only(src, dst, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(UserError, match="Read-only file system") as caught:
        stage.run_stage(tmp_path / "ws", PrepareSettings(mura_path=str(demo_mura), resolution=16, workers=1),
                        progress=False)
    assert "writable disk" in caught.value.fix


@pytest.mark.parametrize("command", ["synth", "evaluate"])
def test_a_read_only_workspace_in_stages_05_and_06_is_a_message(prepared_workspace, tmp_path, monkeypatch, capsys,
                                                                command):
    from synth_helpers import add_tiny_run

    workspace = Workspace(tmp_path / "ws")
    shutil.copytree(prepared_workspace.root, workspace.root)
    if command == "synth":
        add_tiny_run(workspace, "positive")
        add_tiny_run(workspace, "negative", torch_seed=1)
        argv = ["synth", "--workspace", str(workspace.root), "--n-per-class", "2", "--device", "cpu",
                "--no-exclude-memorised", "--no-progress"]
    else:
        argv = ["evaluate", "--workspace", str(workspace.root), "--arch", "tiny", "--no-pretrained",
                "--image-size", "32", "--epochs", "1", "--seeds", "1", "--arms", "baseline", "--workers", "0"]

    def read_only(src, dst, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Read-only file system" in err and str(workspace.root) in err


def test_a_symbolic_link_loop_inside_mura_is_skipped_with_a_warning(mura_copy, tmp_path):
    patient = next((mura_copy / "train" / "XR_SHOULDER").iterdir())
    (patient / "loop").symlink_to(patient.parent, target_is_directory=True)  # points back up the tree
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert prepare(mura_copy, tmp_path / "ws") == 0
    assert any(issubclass(w.category, MuraWarning) and "link loop" in str(w.message) for w in caught)
    train = pd.read_csv(Workspace(tmp_path / "ws").table("XR_SHOULDER", "train"))
    assert not train["filename"].str.contains("/loop/").any()


# --- messages that say what is true ----------------------------------------------------------------------

def test_an_image_paths_csv_with_an_extra_column_is_read_by_its_first_column(mura_copy, tmp_path):
    csv = mura_copy / "train_image_paths.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("".join(f"{line},{index}\n" for index, line in enumerate(lines)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert prepare(mura_copy, tmp_path / "with_column") == 0
    assert any("train_image_paths.csv has 2 columns" in str(w.message) for w in caught)
    csv.write_text("".join(f"{line}\n" for line in lines))
    assert prepare(mura_copy, tmp_path / "plain") == 0
    tables = [Workspace(tmp_path / name).table("XR_SHOULDER", "train").read_text() for name in ("with_column",
                                                                                                 "plain")]
    assert tables[0] == tables[1]


# --- nothing left behind by a command that failed; outputs with the user's permissions -------------------

def test_a_failed_command_leaves_no_folder_skeleton(tmp_path, capsys):
    assert prepare(tmp_path / "no-such-mura", tmp_path / "ws") == 2
    assert cli.main(["evaluate", "--workspace", str(tmp_path / "typo"), "--arch", "tiny", "--no-pretrained"]) == 2
    assert cli.main(["synth", "--workspace", str(tmp_path / "typo2"), "--device", "cpu"]) == 2
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_outputs_get_the_users_permissions_not_private_ones(tmp_path, umask, mode):
    code = ("import os, sys; os.umask(int(sys.argv[2], 8)); from mura_aug.workspace import atomic_write_text; "
            "print(oct(os.stat(atomic_write_text(sys.argv[1], 'x')).st_mode & 0o777))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.txt"), oct(umask)], capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == oct(mode)


# =========================================================================================================
# Issue 15, the training side: a run is its folder, a state proves what it is, cached arrays are checked,
# file-system errors in training are messages, refused files are called what they are, an interrupt exits 130.
# =========================================================================================================

class RunsAShellCommand:
    """Unpickling this would create `marker` (a file that must never appear)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_torch_file(path, marker: Path, zip_format: bool = True, **payload):
    import torch

    torch.save({"format": "mura_aug.state", "G_kwargs": {}, "G_ema": {}, **payload,
                "hook": RunsAShellCommand(marker)}, path, _use_new_zipfile_serialization=zip_format)
    return path


def assert_refused_plainly(text: str, path: Path) -> None:
    assert "this file could not be verified as a safe weights-only file; it was not loaded" in text
    assert str(path) in text or path.name in text
    for misleading in ("weights_only=False", "weights_only` set to `False", "truncated", "arbitrary code"):
        assert misleading not in text


# --- refused files: what is true, never torch's advice to switch the check off --------------------------

def test_a_refused_pt_file_is_called_unverifiable_everywhere_it_is_loaded(tmp_path, capsys):
    from mura_aug.gan.network_file import load_generator
    from mura_aug.gan.snapshot import load_state
    from mura_aug.gan.torch_files import UnsafeFileError
    from mura_aug.gan.transfer import load_transfer_weights
    from mura_aug.synth.filters import load_discriminator

    marker = tmp_path / "code-ran"
    evil = evil_torch_file(tmp_path / "network-000001.000kimg.pt", marker)
    loaders = {"load_generator": lambda: load_generator(evil),
               "load_transfer_weights": lambda: load_transfer_weights(str(evil), Workspace(tmp_path / "ws"),
                                                                      log=lambda text: None),
               "load_state": lambda: load_state(evil),
               "load_discriminator": lambda: load_discriminator(evil, device="cpu")}
    for name, load in loaders.items():
        with pytest.raises(UnsafeFileError) as caught:  # the refusal itself, not wrapped as "cannot be read"
            load()
        assert_refused_plainly(str(caught.value), evil)
        assert "cannot be" not in str(caught.value), name
    from gan_datasets import make_dataset

    make_dataset(tmp_path / "ws")  # a dataset to train on, so the command gets as far as loading the file
    status = cli.main(["train", "--workspace", str(tmp_path / "ws"), "--label", "positive", "--cfg", "tiny",
                       "--resume", str(evil), "--device", "cpu", "--no-progress"])
    assert status == 2
    assert_refused_plainly(capsys.readouterr().err, evil)
    assert not marker.exists()


def test_a_cut_off_pt_file_is_called_unreadable_by_each_loader_in_its_own_words(tmp_path):
    from mura_aug.gan.network_file import load_generator
    from mura_aug.gan.snapshot import load_state
    from mura_aug.gan.transfer import load_transfer_weights
    from mura_aug.synth.filters import load_discriminator

    cut = tmp_path / "state-000001.000kimg.pt"
    cut.write_bytes(b"PK\x03\x04 the first bytes of a zip, then a disconnect")
    loaders = [(lambda: load_generator(cut), "The snapshot .* cannot be read", "Use an earlier snapshot"),
               (lambda: load_transfer_weights(str(cut), Workspace(tmp_path / "ws"), log=lambda text: None),
                "The transfer source .* cannot be read", "Pass an intact"),
               (lambda: load_state(cut), "The training state .* cannot be loaded", "--resume latest skips"),
               (lambda: load_discriminator(cut, device="cpu"), "The state file .* cannot be read",
                "Use an earlier state")]
    for load, problem, fix in loaders:
        with pytest.raises(UserError, match=problem) as caught:
            load()
        assert fix in caught.value.fix and str(cut) in caught.value.problem
        assert caught.value.__cause__ is not None  # torch's own error stays behind it, for a traceback


def test_failures_as_user_error_words_other_failures_and_lets_user_errors_through():
    from mura_aug.errors import failures_as_user_error

    with pytest.raises(UserError) as caught:
        with failures_as_user_error(lambda exc: f"cannot read x ({type(exc).__name__}: {exc})", "use y"):
            raise ValueError("bad magic")
    assert caught.value.problem == "cannot read x (ValueError: bad magic)" and caught.value.fix == "use y"
    assert isinstance(caught.value.__cause__, ValueError)
    original = UserError("the file names code", "do not load it")
    with pytest.raises(UserError) as caught:
        with failures_as_user_error(lambda exc: "cannot read x", "use y"):
            raise original
    assert caught.value is original
    with pytest.raises(KeyboardInterrupt):  # not an Exception: an interrupt stays an interrupt
        with failures_as_user_error(lambda exc: "cannot read x", "use y"):
            raise KeyboardInterrupt


def test_a_refused_state_in_a_run_folder_is_skipped_as_unverifiable(tmp_path):
    from mura_aug.gan import snapshot

    marker = tmp_path / "code-ran"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    evil = evil_torch_file(run_dir / "state-000009.000kimg.pt", marker)
    messages = []
    with pytest.warns(RuntimeWarning) as caught:
        info, state = snapshot.load_newest_state(run_dir, log=messages.append)
    assert info is None and state is None
    assert_refused_plainly(str(caught[0].message), evil)
    assert_refused_plainly(messages[0], evil)
    assert not marker.exists()


def test_a_storage_inside_an_nvlabs_pickle_that_names_code_is_refused_plainly(tmp_path):
    import io
    import pickle

    from mura_aug.gan.nvlabs import load_nvlabs_pkl

    marker = tmp_path / "code-ran"
    inner = io.BytesIO()
    evil_torch_file(inner, marker, zip_format=False)  # the storages of NVlabs' pickles are of torch 1.x

    class StorageBytes:  # pickles as torch.storage._load_from_bytes(<a torch.save file>), as NVlabs' do
        def __reduce__(self):
            import torch.storage

            return (torch.storage._load_from_bytes, (inner.getvalue(),))

    path = tmp_path / "network-snapshot-000000.pkl"
    path.write_bytes(pickle.dumps({"G_ema": StorageBytes()}, protocol=4))
    with pytest.raises(UserError) as caught:
        load_nvlabs_pkl(path)
    text = str(caught.value)
    assert "this file could not be verified as a safe weights-only file; it was not loaded" in text
    assert "weights_only` set to `False" not in text and "truncated" not in text
    assert not marker.exists()


# --- an interrupt ends `train` with status 130, whatever was saved ---------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_train_exits_130_after_an_interrupt_so_that_train_and_synth_stops(tmp_path, signum):
    from gan_datasets import make_dataset
    from mura_aug.gan import snapshot

    workspace = make_dataset(tmp_path / "ws")
    run_dir = workspace.experiments / "XR_SHOULDER-positive-tiny-16"
    command = [sys.executable, "-m", "mura_aug", "train", "--workspace", str(workspace.root), "--label", "positive",
               "--cfg", "tiny", "--resolution", "16", "--kimg", "1000", "--kimg-per-tick", "0.008", "--snap", "1000",
               "--batch", "4", "--device", "cpu", "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not snapshot.read_stats(run_dir) and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signum)
    out, err = process.communicate(timeout=180)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "the final state is saved" in err
    newest = snapshot.list_snapshots(run_dir)[-1]
    assert snapshot.load_state(newest.state_path)["stop_reason"] == "interrupted"


# --- file-system errors in training: a message with the path and the fix ----------------------------------

def train_cli(workspace, *extra) -> int:
    return cli.main(["train", "--workspace", str(workspace), "--label", "positive", "--cfg", "tiny", "--resolution",
                     "16", "--kimg", "0.008", "--kimg-per-tick", "0.008", "--batch", "4", "--device", "cpu",
                     "--no-progress", *extra])


TRAIN_ERRNOS = [(errno.EROFS, "read-only"), (errno.EACCES, "you may read and write"), (errno.EIO, "force_remount"),
                (errno.ENAMETOOLONG, "shorter")]


@pytest.mark.parametrize("code, fix", TRAIN_ERRNOS, ids=[errno.errorcode[code] for code, _ in TRAIN_ERRNOS])
def test_train_turns_each_file_system_error_into_a_message(tmp_path, monkeypatch, capsys, code, fix):
    from gan_datasets import make_dataset

    workspace = make_dataset(tmp_path / "ws")
    experiments = str(workspace.experiments)
    real_replace = os.replace

    def failing_replace(src, dst, *args, **kwargs):
        if str(dst).startswith(experiments):  # the run folder's disk fails; the dataset was read
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", failing_replace)
    assert train_cli(workspace.root) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and os.strerror(code) in err and experiments in err
    assert "while training XR_SHOULDER-positive-tiny-16" in err and fix in err


def test_a_read_only_workspace_in_train_is_a_message_from_python_too(tmp_path, monkeypatch):
    from gan_datasets import make_dataset
    from gan_training import train_tiny

    workspace = make_dataset(tmp_path / "ws")
    real_mkdir = os.mkdir

    def read_only_mkdir(path, *args, **kwargs):
        if str(path).startswith(str(workspace.experiments)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", read_only_mkdir)
    with pytest.raises(UserError, match="Read-only file system") as caught:
        train_tiny(workspace, "positive", kimg=0.008)
    assert str(workspace.experiments) in caught.value.problem and "writable disk" in caught.value.fix


class FillsUp(io.FileIO):
    """A file on a disk that is full after `room` bytes: the write raises `error` (as a real full disk would,
    or something torch's writer swallows)."""

    room = 4096
    error: BaseException = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, data):
        if self.tell() + len(data) > self.room:
            type(self).full = True
            raise self.error
        return super().write(data)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), ValueError("lost")],
                         ids=["ENOSPC-raised", "no-errno-but-no-room"])
def test_a_disk_that_fills_during_torch_save_is_the_full_disk_message(tmp_path, monkeypatch, capsys, error):
    import builtins

    from gan_datasets import make_dataset

    workspace = make_dataset(tmp_path / "ws")
    real_open, real_disk_usage = builtins.open, shutil.disk_usage
    FillsUp.full, FillsUp.error = False, error

    def open_on_a_small_disk(file, mode="r", *args, **kwargs):
        if mode == "wb" and os.path.basename(str(file)).startswith(".state-"):
            return FillsUp(file, "wb")
        return real_open(file, mode, *args, **kwargs)

    def disk_usage(path):  # once the disk filled up, it says so
        usage = real_disk_usage(path)
        return usage._replace(free=0) if FillsUp.full else usage

    monkeypatch.setattr(builtins, "open", open_on_a_small_disk)
    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    assert train_cli(workspace.root) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected pos" not in err
    assert "is full" in err and "Training stopped at 0.008 kimg" in err and "no earlier state exists" in err
    run_dir = workspace.experiments / "XR_SHOULDER-positive-tiny-16"
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


# --- a run is its folder; a state proves what it is --------------------------------------------------------

RUN16 = "XR_SHOULDER-positive-tiny-16"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A workspace with a tiny 16 px run (states at 0.008 and 0.016 kimg) and a tiny 32 px run named 'other'
    (one state), to be copied by tests."""
    from gan_datasets import make_dataset
    from gan_training import TICK_KIMG, train_tiny

    root = tmp_path_factory.mktemp("two_runs") / "ws"
    make_dataset(root, res=32)
    workspace = make_dataset(root, res=16)
    train_tiny(workspace, "positive", kimg=2 * TICK_KIMG)
    train_tiny(workspace, "positive", kimg=TICK_KIMG, resolution=32, run="other")
    return workspace


@pytest.fixture
def runs_copy(two_runs, tmp_path) -> Workspace:
    subprocess.run(["cp", "-a", str(two_runs.root), str(tmp_path / "ws")], check=True)
    return Workspace(tmp_path / "ws")


def resume_cli(workspace, *extra) -> int:
    return cli.main(["train", "--workspace", str(workspace.root), "--label", "positive", "--cfg", "tiny",
                     "--resolution", "16", "--kimg", "0.024", "--device", "cpu", "--no-progress", *extra])


@pytest.mark.parametrize("how", ["--run", "folder", "state file", "name"])
def test_a_copied_run_continues_as_itself_and_the_original_stays_byte_identical(runs_copy, capsys, how):
    import json

    from mura_aug.gan import loop, snapshot
    from mura_aug.gan.settings import RunSettings

    original, backup = runs_copy.experiments / RUN16, runs_copy.experiments / "my-backup"
    subprocess.run(["cp", "-a", str(original), str(backup)], check=True)
    before = tree_hashes(original)
    resume = {"--run": ["--resume", "latest", "--run", "my-backup"], "folder": ["--resume", str(backup)],
              "state file": ["--resume", str(backup / "state-000000.016kimg.pt")], "name": ["--resume", "my-backup"]}[how]
    settings = RunSettings(label="positive", cfg="tiny", resolution=16, kimg=0.024, device="cpu",
                           resume=resume[1], run=resume[3] if how == "--run" else None)
    assert "(resuming my-backup)" in loop.preflight(runs_copy, settings)
    assert resume_cli(runs_copy, *resume, "--keep", "1") == 0
    out = capsys.readouterr().out
    assert "resuming my-backup from state-000000.016kimg.pt" in out and f"resuming {RUN16}" not in out
    assert tree_hashes(original) == before  # not one byte of the original changed
    assert json.loads((backup / "training_options.json").read_text())["run"] == "my-backup"
    # The copy's own earlier states (written under the original's name) are its history: retention counts them.
    assert [s.kimg for s in snapshot.list_snapshots(backup) if s.state_path] == [0.024]
    assert snapshot.load_state(backup / "state-000000.024kimg.pt")["run"] == "my-backup"
    assert loop.settings_to_resume(runs_copy, "my-backup").run == "my-backup"


def test_a_renamed_run_resumes_in_its_new_folder_and_the_old_name_is_not_recreated(runs_copy, capsys):
    from mura_aug.gan import snapshot

    renamed = runs_copy.experiments / "renamed"
    (runs_copy.experiments / RUN16).rename(renamed)
    assert resume_cli(runs_copy, "--resume", "latest") == 0
    assert "resuming renamed from state-000000.016kimg.pt" in capsys.readouterr().out
    assert not (runs_copy.experiments / RUN16).exists()
    assert [s.kimg for s in snapshot.list_snapshots(renamed) if s.state_path] == [0.008, 0.016, 0.024]


def test_a_foreign_state_under_a_newer_name_is_skipped_and_costs_the_run_nothing(runs_copy, capsys):
    from mura_aug.gan import snapshot
    from mura_aug.gan.cli import runs_table

    run_dir, other = runs_copy.experiments / RUN16, runs_copy.experiments / "other"
    foreign = run_dir / "state-000099.000kimg.pt"
    shutil.copy2(other / "state-000000.008kimg.pt", foreign)  # 32 px, another run, a newer-looking name
    other_before, foreign_bytes = tree_hashes(other), foreign.read_bytes()

    listed = next(info for info in snapshot.list_runs(runs_copy) if info.name == RUN16)
    assert listed.kimg == 0.016 and listed.states == 2 and foreign.name in listed.skipped
    table = runs_table(runs_copy, RUN16)
    assert table.startswith(f"{RUN16}: 0.016") and "state skipped: it is not this run's" in table
    with pytest.warns(RuntimeWarning, match="is not this run's") as caught:
        assert resume_cli(runs_copy, "--resume", "latest", "--keep", "2") == 0
    warning = str(caught[0].message)
    assert foreign.name in warning and "run other" in warning and "32 px" in warning and "16 px" in warning
    assert "resuming XR_SHOULDER-positive-tiny-16 from state-000000.016kimg.pt" in capsys.readouterr().out
    # Retention kept the two newest of the run's own states; the foreign one neither counted nor was touched.
    assert [s.kimg for s in snapshot.list_snapshots(run_dir) if s.state_path] == [0.016, 0.024, 99.0]
    assert foreign.read_bytes() == foreign_bytes and tree_hashes(other) == other_before
    assert resume_cli(runs_copy, "--resume", str(foreign)) == 2  # named explicitly: refused, with both sides
    assert "is not this run's" in capsys.readouterr().err


def test_a_state_of_the_original_after_a_copy_is_not_the_copys():
    from mura_aug.gan.snapshot import state_mismatch

    copy = {"run": "my-backup", "run_id": "b" * 32, "cfg": "tiny", "resolution": 16, "label": "positive",
            "lineage": [{"run_id": "a" * 32, "run": RUN16, "until_kimg": 0.016}]}

    def state(run_id, run, kimg):
        return {"kimg": kimg, "options": {"run": run, "run_id": run_id, "cfg": "tiny", "resolution": 16,
                                          "label": "positive"}}

    assert state_mismatch(state("b" * 32, "my-backup", 0.024), copy) is None  # its own
    assert state_mismatch(state("a" * 32, RUN16, 0.016), copy) is None  # the history it shares with the original
    assert "run_id" in state_mismatch(state("a" * 32, RUN16, 0.024), copy)  # the original's later training
    assert "run_id" in state_mismatch(state("c" * 32, "stranger", 0.008), copy)
    legacy = {"kimg": 0.008, "run": RUN16, "options": {"run": RUN16, "cfg": "tiny", "resolution": 16}}
    assert state_mismatch(legacy, copy) is None  # written before run ids: matched by name and kimg
    assert "resolution" in state_mismatch({**legacy, "options": {**legacy["options"], "resolution": 32}}, copy)


# --- cached training arrays are checked before use ------------------------------------------------------

@pytest.mark.parametrize("damage", ["same-size garbage", "cut off", "no check file"])
def test_a_damaged_training_array_cache_is_rebuilt_with_a_message(tmp_path, monkeypatch, damage):
    import numpy as np

    from gan_datasets import make_dataset
    from mura_aug.gan import dataset

    workspace = make_dataset(tmp_path / "ws")
    images, labels = dataset.load_training_images(workspace, "XR_SHOULDER", "positive", 16, log=print)
    good = np.array(images)
    cached = next((workspace.cache / "training_arrays").glob("*.images.npy"))
    header = len(cached.read_bytes()) - good.nbytes  # keep the .npy header: only the pixels turn to noise
    if damage == "same-size garbage":
        cached.write_bytes(cached.read_bytes()[:header] + np.random.default_rng(0).bytes(good.nbytes))
    elif damage == "cut off":
        cached.write_bytes(cached.read_bytes()[: header + good.nbytes // 2])
    else:
        next((workspace.cache / "training_arrays").glob("*.check.json")).unlink()
    read_again = []
    real_read = dataset._decoded_members  # every decode of the dataset zip goes through it
    monkeypatch.setattr(dataset, "_decoded_members", lambda *a, **k: read_again.append(a) or real_read(*a, **k))
    messages = []
    images, _ = dataset.load_training_images(workspace, "XR_SHOULDER", "positive", 16, log=messages.append)
    assert read_again and np.array_equal(np.asarray(images), good)  # rebuilt from the zip, not trained on noise
    assert len(messages) == 1 and str(cached) in messages[0] and "rebuilding it from XR_SHOULDER_positive_16.zip" \
        in messages[0]
    messages.clear()
    read_again.clear()
    dataset.load_training_images(workspace, "XR_SHOULDER", "positive", 16, log=messages.append)
    assert not read_again and not messages  # a good cache is used as it is
