"""Training that survives Colab (issue 16): time-based snapshots, ticks on absolute kimg across cuts, staged
snapshots on an unreliable workspace, faults injected at the OS call."""
import builtins
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mura_aug.gan import loop
from mura_aug.gan import snapshot as snap
from mura_aug.gan.loop import without_timings
from mura_aug.gan.staging import COPY_DELAY_ENV, Stager, copy_verified
from mura_aug.workspace import STAGING_ENV, RunFolder, staging_folder

from gan_datasets import make_dataset  # noqa: E402  (tests/ is on sys.path)
from gan_training import TICK_KIMG, tiny_settings, train_tiny  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_snap_minutes_snapshots_between_snap_ticks(tmp_path):
    workspace = make_dataset(tmp_path / "ws")
    messages = []
    # SNAP 100 ticks would snapshot only at the end; 0.0001 minutes (6 ms) passes within every tick.
    said = loop.preflight(workspace, tiny_settings(kimg=3 * TICK_KIMG, snap=100, snap_minutes=0.0001))
    assert "a kill loses at most" in said and "0.0001 minutes" in said
    run_dir = train_tiny(workspace, kimg=3 * TICK_KIMG, snap=100, snap_minutes=0.0001, log=messages.append)
    assert [info.kimg for info in snap.list_snapshots(run_dir)] == pytest.approx([TICK_KIMG * k for k in (1, 2, 3)])
    assert not any("a kill loses at most" in m for m in messages)  # preflight said it; train does not repeat it
    only_ticks = train_tiny(make_dataset(tmp_path / "ws2"), kimg=3 * TICK_KIMG, snap=2, snap_minutes=None)
    assert [info.kimg for info in snap.list_snapshots(only_ticks)] == pytest.approx([2 * TICK_KIMG, 3 * TICK_KIMG])


def test_the_command_line_says_once_what_a_kill_could_cost(tmp_path, capsys):
    from mura_aug import cli

    workspace = make_dataset(tmp_path / "ws")
    status = cli.main(["train", "--workspace", str(workspace.root), "--label", "positive", "--cfg", "tiny",
                       "--resolution", "16", "--kimg", str(TICK_KIMG), "--kimg-per-tick", str(TICK_KIMG),
                       "--batch", "4", "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert status == 0
    assert out.count("a kill loses at most") == 1 and out.index("a kill loses at most") < out.index("tick 1")


def test_a_verified_copy_has_the_sources_bytes_and_no_temporary_left(tmp_path):
    source = tmp_path / "local" / "state-000000.008kimg.pt"
    source.parent.mkdir()
    source.write_bytes(os.urandom(50_000))
    target = tmp_path / "workspace" / source.name
    target.parent.mkdir()
    target.write_bytes(b"an older copy")
    copy_verified(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == [source.name]


def test_stats_lines_that_wait_on_local_disk_are_rewound_on_resume_then_appended_once(tmp_path):
    run = RunFolder(tmp_path / "ws" / "run")
    run.path.mkdir(parents=True)
    run.stats.mkdir()  # a folder in the way: every append to stats.jsonl fails with an OSError
    local = RunFolder(tmp_path / "local")
    local.path.mkdir()
    stager = Stager(run, local, keep=2, keep_networks_every=1, log=print)
    for tick in (1, 2, 3):
        stager.append_stats({"tick": tick, "kimg": tick / 10})
    with open(local.pending_stats, "a") as handle:
        handle.write('{"tick": 4, "ki')  # a line cut off by a kill
    assert [line["tick"] for line in snap.read_stats_file(local.pending_stats)] == [1, 2, 3]
    stager.rewind_pending(2)  # the resumed state is tick 2's: tick 3 is trained again
    run.stats.rmdir()
    stager.append_stats({"tick": 3, "kimg": 0.3})
    assert [line["tick"] for line in snap.read_stats(run.path)] == [1, 2, 3]
    assert not local.pending_stats.exists()


def _same_weights(state_a, state_b, keys=("G_ema", "G", "D")):
    for key in keys:
        for name, tensor in state_a[key].items():
            assert torch.equal(tensor, state_b[key][name]), f"{key}.{name} differs"


def test_a_cut_mid_tick_then_resume_writes_the_straight_runs_lines(tmp_path):
    """Ticks of 3 iterations (0.012 kimg); the first call stops at 0.016 kimg, in the middle of tick 2."""
    tick = 0.012
    straight = train_tiny(make_dataset(tmp_path / "straight"), kimg=3 * tick, kimg_per_tick=tick)
    workspace = make_dataset(tmp_path / "cut")
    cut = train_tiny(workspace, kimg=0.016, kimg_per_tick=tick)
    partial = snap.read_stats(cut)
    assert [(line["tick"], line["kimg"], line.get("partial", False)) for line in partial] == \
        [(1, 0.012, False), (2, 0.016, True)]
    assert snap.load_state(snap.list_snapshots(cut)[-1].state_path)["partial_tick"]["counts"]
    resumed = train_tiny(workspace, kimg=3 * tick, kimg_per_tick=tick, resume="latest")
    lines = snap.read_stats(resumed)
    assert [line["kimg"] for line in lines] == [0.012, 0.024, 0.036]  # on k x 0.012, not 0.016 + k x 0.012
    assert without_timings(lines) == without_timings(snap.read_stats(straight))
    _same_weights(snap.load_state(snap.list_snapshots(straight)[-1].state_path),
                  snap.load_state(snap.list_snapshots(resumed)[-1].state_path))


# --- staged snapshots under faults injected at the OS call ------------------------------------------------

class WorkspaceFaults:
    """Fails writes under `root` at the OS call: open() for writing, os.fsync, os.replace. Armed by the test
    (e.g. from on_tick, once training runs); `rate` of the calls fail, at most `limit` of them in all."""

    WRITE_MODES = set("wax+")

    def __init__(self, monkeypatch, root, errnos, rate, limit, seed=0):
        self.root, self.errnos, self.rate, self.limit = str(root), errnos, rate, limit
        self.random = random.Random(seed)
        self.armed, self.injected = False, 0
        real_open, real_fsync, real_replace = builtins.open, os.fsync, os.replace

        def fail_here(path) -> None:
            path = os.path.abspath(os.fspath(path))
            if self.armed and path.startswith(self.root + os.sep) and self.injected < self.limit and \
                    self.random.random() < self.rate:
                self.injected += 1
                code = self.random.choice(self.errnos)
                raise OSError(code, os.strerror(code), path)

        def fault_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and self.WRITE_MODES & set(mode):
                fail_here(file)
            return real_open(file, mode, *args, **kwargs)

        def fault_fsync(fd):
            try:
                path = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                path = ""
            if path:
                fail_here(path)
            return real_fsync(fd)

        def fault_replace(src, dst, *args, **kwargs):
            fail_here(dst)
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fault_open)
        monkeypatch.setattr(os, "fsync", fault_fsync)
        monkeypatch.setattr(os, "replace", fault_replace)


@pytest.fixture
def local_disk(tmp_path, monkeypatch):
    """The staging folder ('local disk') of these tests, apart from the workspace."""
    folder = tmp_path / "local_disk"
    monkeypatch.setenv(STAGING_ENV, str(folder))
    return folder


def test_twenty_random_drive_errors_cost_nothing(tmp_path, local_disk, monkeypatch):
    ticks = 8
    straight = train_tiny(make_dataset(tmp_path / "straight"), kimg=(ticks + 2) * TICK_KIMG)
    workspace = make_dataset(tmp_path / "drive")
    faults = WorkspaceFaults(monkeypatch, workspace.root, [errno.EIO, errno.ENOTCONN], rate=0.35, limit=20)

    def arm(line):  # from the first tick on: the whole training part of the call
        faults.armed = True

    messages = []
    run_dir = train_tiny(workspace, kimg=ticks * TICK_KIMG, staging="on", keep=ticks, on_tick=arm,
                         log=messages.append)
    assert faults.injected == 20
    faults.armed = False
    folder = RunFolder(run_dir)
    kimgs = [TICK_KIMG * k for k in range(1, ticks + 1)]
    for kimg in kimgs:  # every snapshot landed, whole
        for path in (folder.fakes(kimg), folder.network(kimg), folder.state(kimg)):
            assert path.is_file(), path
    assert not [p for p in local_disk.rglob("*") if p.is_file()], "files left waiting on local disk"
    assert not list(run_dir.glob(".*.tmp"))
    lines = snap.read_stats(run_dir)
    assert [line["tick"] for line in lines] == list(range(1, ticks + 1))
    final = snap.load_state(folder.state(kimgs[-1]))
    assert final["progress"]["cur_tick"] == ticks
    resumed = train_tiny(workspace, kimg=(ticks + 2) * TICK_KIMG, staging="on", resume="latest")
    assert without_timings(snap.read_stats(resumed)) == without_timings(snap.read_stats(straight))
    _same_weights(snap.load_state(snap.list_snapshots(straight)[-1].state_path),
                  snap.load_state(snap.list_snapshots(resumed)[-1].state_path))


def test_a_workspace_gone_for_good_keeps_the_newest_state_local_and_says_where(tmp_path, local_disk,
                                                                              monkeypatch):
    workspace = make_dataset(tmp_path / "drive")
    faults = WorkspaceFaults(monkeypatch, workspace.root, [errno.EIO], rate=1.0, limit=10 ** 9)

    def cut_after_tick_2(line):
        faults.armed = faults.armed or line["tick"] == 2

    messages = []
    run_dir = train_tiny(workspace, kimg=4 * TICK_KIMG, staging="on", on_tick=cut_after_tick_2,
                         log=messages.append)
    faults.armed = False
    local = staging_folder(run_dir)
    newest = local.state(4 * TICK_KIMG)
    assert snap.load_state(newest)["progress"]["cur_tick"] == 4
    assert local.state(3 * TICK_KIMG).exists()  # both wait (KEEP 3 states at most)
    assert [info.kimg for info in snap.list_snapshots(run_dir) if info.state_path] == \
        pytest.approx([TICK_KIMG, 2 * TICK_KIMG])
    warnings_per_snapshot = [m for m in messages if "could not be copied to the workspace" in m]
    assert len(warnings_per_snapshot) == 2 and str(local.state(3 * TICK_KIMG)) in warnings_per_snapshot[0]
    last = [m for m in messages if "did not take the last snapshot" in m]
    assert last and str(newest) in last[-1] and "cp " in last[-1] and "EIO" in last[-1]
    assert any("finished" in m for m in messages)

    messages.clear()
    resumed = train_tiny(workspace, kimg=5 * TICK_KIMG, resume="latest", log=messages.append)
    assert any("on local disk" in m and str(newest) in m for m in messages)
    assert [line["tick"] for line in snap.read_stats(resumed)] == [1, 2, 3, 4, 5]
    assert snap.find_resumable(resumed).state_path.parent == run_dir
    assert not [p for p in local_disk.rglob("*") if p.is_file()]


def test_a_vanished_drive_mount_says_how_to_remount(tmp_path, local_disk, monkeypatch):
    from mura_aug.gan import staging

    workspace = make_dataset(tmp_path / "drive")
    monkeypatch.setattr(staging, "drive_vanished", lambda path: True)  # no /content/drive/MyDrive here
    faults = WorkspaceFaults(monkeypatch, workspace.root, [errno.ENOTCONN], rate=1.0, limit=10 ** 9)
    messages = []
    train_tiny(workspace, kimg=2 * TICK_KIMG, staging="on", log=messages.append,
               on_tick=lambda line: setattr(faults, "armed", True))
    remount = 'drive.mount("/content/drive", force_remount=True)'
    assert any(remount in m and "could not be copied" in m for m in messages)
    assert any(remount in m and "did not take the last snapshot" in m for m in messages)


def test_sigkill_during_the_copy_then_resume_latest_takes_the_local_state(tmp_path, local_disk):
    workspace = make_dataset(tmp_path / "ws")
    run_dir = workspace.experiments / "XR_SHOULDER-positive-tiny-16"
    target = 4 * TICK_KIMG
    command = _train_command(workspace, target) + ["--staging", "on"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           STAGING_ENV: str(local_disk), COPY_DELAY_ENV: "1.5"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # The second state's copy: the workspace holds the first state, the local disk the second.
    while process.poll() is None and time.time() < deadline:
        if list(run_dir.glob("state-*kimg.pt")) and list(run_dir.glob(".state-*.tmp")):
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before the copy of its second state"
    process.send_signal(signal.SIGKILL)
    process.wait()
    local = staging_folder(run_dir)
    waiting = [info.kimg for info in snap.list_snapshots(local.path) if info.state_path]
    on_workspace = [info.kimg for info in snap.list_snapshots(run_dir) if info.state_path]
    assert waiting and max(waiting) > max(on_workspace)
    finish = subprocess.run(command, cwd=REPO, env={**env, COPY_DELAY_ENV: "0"}, capture_output=True, text=True,
                            timeout=300)
    assert finish.returncode == 0, finish.stderr[-2000:]
    assert f"resuming {run_dir.name} from" in finish.stdout and "on local disk" in finish.stdout
    assert f"kimg {max(waiting):g}" in finish.stdout or f"{max(waiting):g} kimg" in finish.stdout
    stats = snap.read_stats(run_dir)
    assert [line["tick"] for line in stats] == [1, 2, 3, 4]
    assert snap.find_resumable(run_dir).kimg == pytest.approx(target)
    assert not list(run_dir.glob(".*.tmp")) and not [p for p in local_disk.rglob("*") if p.is_file()]


def _train_command(workspace, kimg: float):
    return [sys.executable, "-m", "mura_aug", "train", "--workspace", str(workspace.root), "--label", "positive",
            "--cfg", "tiny", "--resolution", "16", "--kimg", str(kimg), "--kimg-per-tick", str(TICK_KIMG),
            "--snap", "1", "--batch", "4", "--resume", "latest", "--device", "cpu", "--no-progress"]


def test_the_most_a_kill_can_cost_at_the_t4_estimate():
    from mura_aug.gan import estimates

    t4 = estimates.seconds_per_kimg("auto", 256, "cuda")
    with_minutes = estimates.most_lost_by_a_kill(10, 4, 30, t4)
    # 30 min at 150 s/kimg = 12 kimg + a tick of 4 = 16 kimg (40 min); at 60 s/kimg 30 + 4 = 34 kimg (34 min),
    # both less than SNAP's 40 kimg (40-100 minutes without SNAP_MINUTES)
    assert "at most 16-34 kimg, about 34-40 minutes" in with_minutes
    assert "at most 40 kimg, about 40-100 minutes" in estimates.most_lost_by_a_kill(10, 4, None, t4)
    assert "0.2 minutes plus one tick" in estimates.most_lost_by_a_kill(100, 0.1, 0.2, None)
