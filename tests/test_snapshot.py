"""Snapshot files: naming, atomic and verified state writes, skipping broken states, retention, disk space."""
import errno
import json
import os

import pytest
import torch

from mura_aug.errors import UserError
from mura_aug.gan import snapshot as snap
from mura_aug.workspace import RunFolder


def fake_state(value: float) -> dict:
    """A small dict with every key a training state must have (the tensors stand in for the networks)."""
    weights = {"w": torch.full((8, 8), value)}
    return {"G": weights, "D": weights, "G_ema": weights, "G_opt": {}, "D_opt": {}, "G_kwargs": {},
            "progress": {"cur_nimg": int(value * 1000)}, "rng": {"torch": torch.get_rng_state()},
            "config": {"cfg": "tiny"}}


def test_names_sort_by_kimg_and_temporaries_are_ignored(tmp_path):
    for kimg in (12.5, 2.0, 100.0):
        snap.save_state(RunFolder(tmp_path).state(kimg), fake_state(kimg))
    RunFolder(tmp_path).fakes(2.0).write_bytes(b"png")
    (tmp_path / ".state-000200.000kimg.pt.abc.pt.tmp").write_bytes(b"half")  # a killed write
    assert RunFolder(tmp_path).state(12.5).name == "state-000012.500kimg.pt"
    infos = snap.list_snapshots(tmp_path)
    assert [i.kimg for i in infos] == [2.0, 12.5, 100.0]
    assert infos[0].fakes_path is not None and infos[1].fakes_path is None
    assert infos[0].size_bytes > infos[1].size_bytes - 100  # state + fakes counted together
    removed = snap.remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".state-000200.000kimg.pt.abc.pt.tmp"]


def test_state_round_trip_loads_without_running_code(tmp_path):
    path = snap.save_state(RunFolder(tmp_path).state(1.0), fake_state(1.0))
    loaded = torch.load(path, weights_only=True)  # the safe loader accepts it: no pickled code inside
    assert loaded["format"] == snap.STATE_FORMAT
    assert torch.equal(snap.load_state(path)["G_ema"]["w"], torch.full((8, 8), 1.0))


def test_truncated_newest_state_is_skipped_with_a_warning(tmp_path):
    for kimg in (1.0, 2.0):
        snap.save_state(RunFolder(tmp_path).state(kimg), fake_state(kimg))
    newest = RunFolder(tmp_path).state(2.0)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # cut off by a disconnect
    messages = []
    with pytest.warns(RuntimeWarning, match="state-000002.000kimg.pt"):
        info, state = snap.load_newest_state(tmp_path, log=messages.append)
    assert info.kimg == 1.0 and state["progress"]["cur_nimg"] == 1000
    assert "state-000002.000kimg.pt" in messages[0]
    with pytest.warns(RuntimeWarning):
        assert snap.find_resumable(tmp_path).kimg == 1.0
    with pytest.raises(UserError, match="cannot be loaded"):
        snap.load_state(newest)


def test_full_disk_leaves_previous_state_intact(tmp_path, monkeypatch):
    previous = snap.save_state(RunFolder(tmp_path).state(1.0), fake_state(1.0))
    before = previous.read_bytes()
    real_save = torch.save

    def save_until_disk_is_full(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save_until_disk_is_full)
    with pytest.raises(UserError, match="full"):
        snap.save_state(RunFolder(tmp_path).state(2.0), fake_state(2.0))
    monkeypatch.setattr(torch, "save", real_save)
    assert previous.read_bytes() == before
    assert not RunFolder(tmp_path).state(2.0).exists()
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_state_that_does_not_load_back_is_not_renamed(tmp_path, monkeypatch):
    monkeypatch.setattr(snap, "_check_state_file", lambda path: "RuntimeError: bad bytes")
    with pytest.raises(UserError, match="does not load back"):
        snap.save_state(RunFolder(tmp_path).state(1.0), fake_state(1.0))
    assert list(tmp_path.iterdir()) == []


def test_retention_keeps_newest_states_and_every_nth_network(tmp_path):
    kimgs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for kimg in kimgs:
        snap.save_state(RunFolder(tmp_path).state(kimg), fake_state(kimg))
        RunFolder(tmp_path).network(kimg).write_bytes(b"net")
        RunFolder(tmp_path).fakes(kimg).write_bytes(b"png")
    deleted = snap.apply_retention(tmp_path, keep_states=2, keep_networks_every=3)
    infos = snap.list_snapshots(tmp_path)
    assert [i.kimg for i in infos if i.state_path] == [5.0, 6.0]
    assert [i.kimg for i in infos if i.network_path] == [3.0, 6.0]  # every 3rd, and the newest
    assert [i.kimg for i in infos if i.fakes_path] == kimgs  # grids are always kept
    assert len(deleted) == 4 + 4
    with pytest.raises(UserError, match="keep_states=0"):
        snap.apply_retention(tmp_path, keep_states=0)


def test_refuses_to_start_without_room_for_two_states(tmp_path, monkeypatch):
    monkeypatch.setattr(snap, "free_bytes", lambda path: 150 * 2 ** 20)
    snap.check_free_space(tmp_path, 50 * 2 ** 20, 10 * 2 ** 20)  # 120 MB needed: fine
    with pytest.raises(UserError) as info:
        snap.check_free_space(tmp_path, 100 * 2 ** 20, 10 * 2 ** 20)
    assert "220.0 MB" in info.value.problem and "150.0 MB" in info.value.problem
    assert "70.0 MB" in info.value.fix


def test_stats_log_skips_cut_line_and_rewinds(tmp_path):
    for tick in (1, 2, 3):
        snap.append_stats(tmp_path, {"tick": tick, "kimg": tick / 10})
    with open(tmp_path / "stats.jsonl", "a") as handle:
        handle.write('{"tick": 4, "ki')  # a line cut off by SIGKILL
    assert [e["tick"] for e in snap.read_stats(tmp_path)] == [1, 2, 3]
    assert snap.rewind_stats(tmp_path, 2) == 2
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["tick"] for line in lines] == [1, 2]


def test_list_runs_reads_options(tmp_path):
    from mura_aug.workspace import RunFolder, Workspace

    workspace = Workspace(tmp_path / "ws").ensure()
    run_dir = workspace.experiments / "XR_SHOULDER-positive-tiny-16"
    run_dir.mkdir()
    (run_dir / "training_options.json").write_text(json.dumps({"label": "positive", "kimg": 5, "cfg": "tiny"}))
    snap.save_state(RunFolder(run_dir).state(1.5), fake_state(1.5))
    (workspace.experiments / "empty").mkdir()
    runs = snap.list_runs(workspace)
    assert [r.name for r in runs] == ["XR_SHOULDER-positive-tiny-16"]
    assert runs[0].label == "positive" and runs[0].kimg == 1.5 and runs[0].states == 1
    assert os.fspath(runs[0]) == str(run_dir)


def test_grids_are_saved_and_shown_grey_by_the_luma_rule(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np
    from PIL import Image

    from mura_aug.gan.plots import show_latest_fakes

    rng = np.random.default_rng(0)
    tinted = rng.integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8)  # four 8x8 images whose channels differ
    saved = snap.save_image_grid(tinted, 2, 2, RunFolder(tmp_path).fakes(1.0))
    with Image.open(saved) as grid:
        assert grid.mode == "L" and grid.size == (16, 16)
        top_left = np.asarray(grid)[:8, :8]
    luma = np.asarray(Image.fromarray(tinted[0].transpose(1, 2, 0), "RGB").convert("L"))
    assert np.array_equal(top_left, luma)

    # A grid saved in colour (an older run, NVIDIA's fakes*.png) is shown grey as well.
    colour = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    Image.fromarray(colour, "RGB").save(RunFolder(tmp_path).fakes(2.0))
    axes = show_latest_fakes(tmp_path)
    shown = np.asarray(axes.images[0].get_array())
    matplotlib.pyplot.close(axes.figure)
    assert shown.shape == (16, 16)
    assert np.array_equal(shown, np.asarray(Image.fromarray(colour, "RGB").convert("L")))
