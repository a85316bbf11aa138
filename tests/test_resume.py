"""Exact resume, kills at random moments, a truncated newest state, a full disk (issue 4, "Done when")."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mura_aug.errors import UserError
from mura_aug.gan import snapshot as snap
from mura_aug.gan.loop import without_timings
from mura_aug.workspace import RunFolder, Workspace

from gan_datasets import make_dataset  # noqa: E402  (tests/ is on sys.path)
from gan_training import TICK_KIMG, train_tiny  # noqa: E402
from nvlabs_pickles import nvlabs_networks, write_pickle  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def half_run(tmp_path_factory):
    """A run stopped at 2 ticks (states at 0.008 and 0.016 kimg), to be copied by tests."""
    workspace = make_dataset(tmp_path_factory.mktemp("half") / "ws")
    run_dir = train_tiny(workspace, "positive", kimg=2 * TICK_KIMG)
    return workspace, run_dir


def copy_run(half_run, target: Path):
    workspace, run_dir = half_run
    shutil.copytree(workspace.root, target)
    return Workspace(target), target / "data" / "experiments" / run_dir.name


def test_n_ticks_equal_half_plus_resume_plus_half_bitwise(half_run, tmp_path):
    whole_ws = make_dataset(tmp_path / "whole")
    whole = train_tiny(whole_ws, "positive", kimg=4 * TICK_KIMG)
    workspace, _ = copy_run(half_run, tmp_path / "pieces")
    pieces = train_tiny(workspace, "positive", kimg=4 * TICK_KIMG, resume="latest")

    whole_stats, piece_stats = snap.read_stats(whole), snap.read_stats(pieces)
    assert [line["tick"] for line in piece_stats] == [1, 2, 3, 4]  # none twice, none missing
    assert without_timings(whole_stats) == without_timings(piece_stats)
    last_whole = snap.load_state(snap.list_snapshots(whole)[-1].state_path)
    last_piece = snap.load_state(snap.list_snapshots(pieces)[-1].state_path)
    for key in ("G_ema", "G", "D"):
        for name, tensor in last_whole[key].items():
            assert torch.equal(tensor, last_piece[key][name]), f"{key}.{name} differs after resume"
    assert last_whole["augment_p"] == last_piece["augment_p"]
    assert last_whole["ada"] == last_piece["ada"]
    for info_whole, info_piece in zip(snap.list_snapshots(whole), snap.list_snapshots(pieces)):
        assert info_whole.kimg == info_piece.kimg
        assert info_whole.fakes_path.read_bytes() == info_piece.fakes_path.read_bytes()


def test_truncated_newest_state_is_skipped_on_resume(half_run, tmp_path):
    workspace, run_dir = copy_run(half_run, tmp_path / "ws")
    newest = RunFolder(run_dir).state(2 * TICK_KIMG)
    newest.write_bytes(newest.read_bytes()[:1000])
    messages = []
    with pytest.warns(RuntimeWarning, match=newest.name):
        train_tiny(workspace, "positive", kimg=3 * TICK_KIMG, resume="latest", log=messages.append)
    assert any(newest.name in m and "Skipping" in m for m in messages)
    assert any("resuming" in m and "000000.008" in m for m in messages)
    stats = snap.read_stats(run_dir)
    assert [line["tick"] for line in stats] == [1, 2, 3]
    assert snap.load_state(RunFolder(run_dir).state(3 * TICK_KIMG))["progress"]["cur_tick"] == 3


def test_full_disk_keeps_previous_state_and_says_so(half_run, tmp_path, monkeypatch):
    workspace, run_dir = copy_run(half_run, tmp_path / "ws")
    previous = RunFolder(run_dir).state(2 * TICK_KIMG)
    previous_bytes = previous.read_bytes()
    real_save = torch.save

    def save(obj, handle, *args, **kwargs):
        if ".state-" in os.path.basename(getattr(handle, "name", str(handle))):
            handle.write(b"the first bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(UserError) as info:
        train_tiny(workspace, "positive", kimg=3 * TICK_KIMG, resume="latest")
    message = str(info.value)
    assert "full" in message and "0.024 kimg" in message and previous.name in message
    monkeypatch.setattr(torch, "save", real_save)
    assert previous.read_bytes() == previous_bytes
    assert not RunFolder(run_dir).state(3 * TICK_KIMG).exists()
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert snap.find_resumable(run_dir).kimg == pytest.approx(2 * TICK_KIMG)


def test_refuses_to_start_when_two_states_do_not_fit(tmp_path, monkeypatch):
    workspace = make_dataset(tmp_path / "ws")
    monkeypatch.setattr(snap, "free_bytes", lambda path: 1000)
    with pytest.raises(UserError, match="Not enough free space") as info:
        train_tiny(workspace, "positive", kimg=TICK_KIMG)
    assert "Free at least" in info.value.fix
    assert not snap.list_snapshots(workspace.experiments / "XR_SHOULDER-positive-tiny-16")


def _train_command(workspace: Workspace, kimg: float):
    return [sys.executable, "-m", "mura_aug", "train", "--workspace", str(workspace.root), "--label", "positive",
            "--cfg", "tiny", "--resolution", "16", "--kimg", str(kimg), "--kimg-per-tick", str(TICK_KIMG),
            "--snap", "1", "--batch", "4", "--resume", "latest", "--device", "cpu", "--no-progress"]


def test_sigkill_at_random_moments_then_resume_finishes(tmp_path):
    workspace = make_dataset(tmp_path / "ws")
    run_dir = workspace.experiments / "XR_SHOULDER-positive-tiny-16"
    target = 4 * TICK_KIMG
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           snap.WRITE_DELAY_ENV: "0.6"}  # each state write holds its temporary file for 0.6 s
    rng = random.Random(1)
    kills = {"during_write": 0, "random": 0}
    for attempt in range(3):
        process = subprocess.Popen(_train_command(workspace, target), cwd=REPO, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started = time.time()
        deadline = started + (rng.uniform(1.0, 6.0) if attempt == 1 else 120)
        while process.poll() is None and time.time() < deadline:
            if attempt != 1 and run_dir.is_dir() and list(run_dir.glob(".state-*.tmp")):
                break  # a state is being written right now
            time.sleep(0.02)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills["during_write" if attempt != 1 else "random"] += 1
        process.wait()
    assert kills["during_write"] >= 1
    finish = subprocess.run(_train_command(workspace, target), cwd=REPO, env={**env, snap.WRITE_DELAY_ENV: "0"},
                            capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr[-2000:]
    stats = snap.read_stats(run_dir)
    kimgs = [line["kimg"] for line in stats]
    assert kimgs == sorted(set(kimgs)), "the stats log went back in kimg or repeated a tick"
    assert [line["tick"] for line in stats] == list(range(1, len(stats) + 1))
    assert kimgs[-1] == pytest.approx(target)
    assert snap.find_resumable(run_dir).kimg == pytest.approx(target)
    assert not list(run_dir.glob(".*.tmp"))


def test_resume_from_an_nvlabs_pickle_keeps_its_kimg_and_p(tmp_path):
    pickle_path = tmp_path / "network-snapshot-000120.pkl"
    write_pickle(pickle_path, nvlabs_networks())  # augment p 0.375 inside
    workspace = make_dataset(tmp_path / "ws", res=32)
    run_dir = train_tiny(workspace, "positive", resume=str(pickle_path), kimg=120.004, resolution=None,
                         kimg_per_tick=0.004)
    assert run_dir.name == "XR_SHOULDER-positive-tiny-32"
    state = snap.load_state(snap.list_snapshots(run_dir)[-1].state_path)
    assert state["progress"]["cur_nimg"] == 120_004
    assert state["augment_p"] == pytest.approx(0.375, abs=0.01)
    assert snap.read_stats(run_dir)[0]["kimg"] == pytest.approx(120.004)
    with pytest.raises(UserError, match="already holds snapshots"):
        train_tiny(workspace, "positive", resume=str(pickle_path), kimg=121, resolution=None)


def _nvlabs_pickle(tmp_path, parts):
    """An NVlabs-format pickle (32 px, c_dim 2) holding only `parts`, with the networks that went into it."""
    nets = nvlabs_networks()
    path = tmp_path / "network-snapshot-000120.pkl"
    write_pickle(path, nets, parts=parts)
    return path, nets


def test_resume_from_an_nvlabs_pickle_without_G_continues_from_G_ema(tmp_path):
    pickle_path, nets = _nvlabs_pickle(tmp_path, ("G_ema", "D", "augment_pipe"))
    workspace = make_dataset(tmp_path / "ws", res=32)
    messages = []
    with pytest.warns(RuntimeWarning, match="holds no G; training continues with G = a copy of G_ema"):
        run_dir = train_tiny(workspace, "positive", resume=str(pickle_path), kimg=120.004, resolution=None,
                             kimg_per_tick=0.004, log=messages.append)
    assert any(m.startswith("warning:") and "no G;" in m for m in messages)
    state = snap.load_state(snap.list_snapshots(run_dir)[-1].state_path)
    assert state["progress"]["cur_nimg"] == 120_004
    # One Adam step (each weight moves by about the config's learning rate) away from the pickle's G_ema,
    # nowhere near its (absent) G.
    for name in ("mapping.fc0.weight", "synthesis.b32.conv1.weight"):
        start = nets["G_ema"].state_dict()[name]
        assert (state["G"][name] - start).abs().max() < 0.01, name
        assert (nets["G"].state_dict()[name] - start).abs().max() > 1


def test_resume_from_an_nvlabs_pickle_without_D_points_to_transfer(tmp_path):
    pickle_path, _ = _nvlabs_pickle(tmp_path, ("G", "G_ema"))
    workspace = make_dataset(tmp_path / "ws", res=32)
    with pytest.raises(UserError, match="holds no discriminator D") as info:
        train_tiny(workspace, "positive", resume=str(pickle_path), kimg=121, resolution=None)
    assert f"--transfer {pickle_path}" in info.value.fix


def test_load_generator_on_an_nvlabs_pickle_without_G_ema_says_what_it_found(tmp_path):
    from mura_aug.gan.network_file import load_generator

    pickle_path, _ = _nvlabs_pickle(tmp_path, ("G", "D"))
    with pytest.raises(UserError, match="holds no G_ema") as info:
        load_generator(pickle_path)
    assert "holds only G and D" in info.value.problem
    assert f"--resume {pickle_path}" in info.value.fix
    (tmp_path / "only_G").mkdir()
    only_G, _ = _nvlabs_pickle(tmp_path / "only_G", ("G",))
    with pytest.raises(UserError, match="holds only G\\.") as info:
        load_generator(only_G)
    assert f"--transfer {only_G}" in info.value.fix


def test_cli_resume_latest_keeps_the_runs_own_settings(half_run, tmp_path, capsys):
    """`train --label positive --resume latest` alone continues the existing run with its cfg, resolution,
    target and tick length, instead of starting a new `auto` run or taking the CLI's defaults."""
    from mura_aug import cli

    workspace, run_dir = copy_run(half_run, tmp_path / "ws")
    options_path = run_dir / "training_options.json"
    options = json.loads(options_path.read_text())
    options["kimg"] = 3 * TICK_KIMG  # as if the run had been started with --kimg 0.024
    options_path.write_text(json.dumps(options))
    status = cli.main(["train", "--workspace", str(workspace.root), "--label", "positive", "--resume", "latest",
                       "--device", "cpu", "--no-progress"])
    assert status == 0, capsys.readouterr().err
    assert sorted(p.name for p in workspace.experiments.iterdir()) == [run_dir.name]  # no new run folder
    stats = snap.read_stats(run_dir)
    assert [line["tick"] for line in stats] == [1, 2, 3]  # one more tick of the stored length, then the target
    assert stats[-1]["kimg"] == pytest.approx(3 * TICK_KIMG)
    assert json.loads(options_path.read_text())["snap"] == 1  # the stored snapshot interval, not the default 10


def test_notebook_04s_settings_are_the_runs_own_but_for_what_it_changes(half_run, tmp_path):
    from mura_aug.gan import loop

    workspace, run_dir = copy_run(half_run, tmp_path / "ws")
    settings = loop.settings_to_resume(workspace, run_dir.name, kimg=None, max_minutes=None, device="cpu")
    assert settings.kimg == pytest.approx(2 * TICK_KIMG)  # KIMG = None keeps the run's target
    assert (settings.cfg, settings.resolution, settings.snap, settings.kimg_per_tick) == ("tiny", 16, 1, TICK_KIMG)
    assert settings.max_minutes is None and settings.device == "cpu"
    assert settings.resume == str(run_dir)
    assert set(settings.given_values()) == {"max_minutes", "device", "resume"}
    assert loop.settings_to_resume(workspace, None, body_part="XR_SHOULDER").run == run_dir.name  # the newest
    with pytest.raises(UserError, match="kimgs"):
        loop.settings_to_resume(workspace, run_dir.name, kimgs=3)
    with pytest.raises(UserError, match="no training run of XR_ELBOW"):
        loop.settings_to_resume(workspace, None, body_part="XR_ELBOW")


def test_find_run_takes_what_resume_takes_a_runs_name_or_a_folder(tmp_path, monkeypatch):
    from mura_aug.gan import loop

    workspace = Workspace(tmp_path / "ws")
    named = workspace.run("XR_SHOULDER-positive-tiny-16").path
    named.mkdir(parents=True)
    elsewhere = tmp_path / "home" / "backup-run"
    elsewhere.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert loop.find_run(workspace, named.name) == named  # a name: the run of the workspace
    assert loop.find_run(workspace, str(elsewhere)) == elsewhere  # a folder anywhere
    assert loop.find_run(workspace, "~/backup-run") == elsewhere  # '~' is the user's home, as for --resume
    with pytest.raises(UserError, match="No run named 'XR_ELBOW-positive-tiny-16'"):
        loop.find_run(workspace, "XR_ELBOW-positive-tiny-16")
