"""The training data cache, a short training run through the CLI, retention, transfer with Freeze-D,
the class-conditional run, and the clean stops (--max-minutes, Ctrl-C)."""
import json
import math
import signal
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from mura_aug import cli
from mura_aug.errors import UserError
from mura_aug.gan import dataset as dataset_module
from mura_aug.gan import loop, measure
from mura_aug.gan import snapshot as snap
from mura_aug.gan.dataset import DataSampler, load_training_images
from mura_aug.gan.loop import without_timings
from mura_aug.workspace import Workspace

from gan_datasets import make_dataset  # noqa: E402  (tests/ is on sys.path)
from gan_training import TICK_KIMG, tiny_settings, train_tiny  # noqa: E402

RUN = "XR_SHOULDER-positive-tiny-16"


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A 3-tick run started from the command line, keeping 1 state and every 2nd inference file."""
    workspace = make_dataset(tmp_path_factory.mktemp("cli") / "ws")
    status = cli.main(["train", "--workspace", str(workspace.root), "--label", "positive", "--cfg", "tiny",
                       "--resolution", "16", "--kimg", str(3 * TICK_KIMG), "--kimg-per-tick", str(TICK_KIMG),
                       "--snap", "1", "--batch", "4", "--keep", "1", "--keep-networks-every", "2",
                       "--device", "cpu", "--no-progress"])
    assert status == 0
    return workspace, workspace.experiments / RUN


# --- data -------------------------------------------------------------------------------------------------

def test_training_images_are_cached_resized_and_labelled(tmp_path, monkeypatch):
    workspace = make_dataset(tmp_path / "ws", "positive", res=32, count=6)
    make_dataset(tmp_path / "ws", "negative", res=32, count=4)
    images, labels = load_training_images(workspace, "XR_SHOULDER", "both", 16)
    assert images.shape == (10, 3, 16, 16) and images.dtype == np.uint8
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 6
    # The bright bar survives the antialiased 32 -> 16 downsampling: the middle columns are the brightest.
    assert images[:, 0, :, 6:10].mean() > images[:, 0, :, :3].mean() + 50
    cached = list((workspace.cache / "training_arrays").glob("*.npy"))
    assert len(cached) == 2

    def must_not_read(*args, **kwargs):
        raise AssertionError("the zip was read again although the cache is valid")

    monkeypatch.setattr(dataset_module, "read_dataset_zip", must_not_read)
    monkeypatch.setattr(dataset_module, "_stream_npy", must_not_read)
    again, _ = load_training_images(workspace, "XR_SHOULDER", "both", 16)
    assert np.array_equal(np.asarray(again), np.asarray(images))


def test_missing_or_too_small_dataset_says_what_to_do(tmp_path):
    workspace = Workspace(tmp_path / "ws").ensure()
    with pytest.raises(UserError, match="stage 01"):
        load_training_images(workspace, "XR_SHOULDER", "positive", 16)
    make_dataset(tmp_path / "ws", "positive", res=16, count=2)
    with pytest.raises(UserError, match="smaller than the training resolution 32"):
        load_training_images(workspace, "XR_SHOULDER", "positive", 32)
    with pytest.raises(UserError, match="power of two"):
        load_training_images(workspace, "XR_SHOULDER", "positive", 24)


def test_data_sampler_continues_exactly_from_its_state():
    sampler = DataSampler(5, seed=3, mirror=True)
    sampler.next_indices(7)
    saved = sampler.state_dict()
    expected = [sampler.next_indices(4) for _ in range(5)]
    other = DataSampler(5, seed=99, mirror=True)
    other.load_state_dict(saved)
    for indices, flips in expected:
        got_indices, got_flips = other.next_indices(4)
        assert np.array_equal(indices, got_indices) and np.array_equal(flips, got_flips)
    first_epoch = DataSampler(5, seed=0, mirror=True).next_indices(10)
    assert sorted(zip(first_epoch[0].tolist(), first_epoch[1].tolist())) == \
        [(i, f) for i in range(5) for f in (False, True)]  # every image once, once mirrored
    with pytest.raises(UserError, match="training set changed"):
        DataSampler(6, mirror=True).load_state_dict(saved)


# --- a run -----------------------------------------------------------------------------------------------

def test_cli_run_writes_stats_grids_networks_and_keeps_what_it_promises(cli_run):
    workspace, run_dir = cli_run
    stats = snap.read_stats(run_dir)
    assert [line["tick"] for line in stats] == [1, 2, 3]
    assert [line["kimg"] for line in stats] == pytest.approx([0.008, 0.016, 0.024])
    for line in stats:
        for key in ("loss_G", "loss_D", "augment_p", "r_t", "sec_per_kimg"):
            assert math.isfinite(line[key]), key
        assert 0.0 <= line["augment_p"] <= 1.0
    assert any("loss_r1" in line for line in stats) and any("pl_penalty" in line for line in stats)
    options = json.loads((run_dir / "training_options.json").read_text())
    assert options["label"] == "positive" and options["cfg"] == "tiny" and options["config"]["batch_size"] == 4

    infos = snap.list_snapshots(run_dir)
    assert [i.kimg for i in infos] == pytest.approx([0.008, 0.016, 0.024])
    assert [i.state_path is not None for i in infos] == [False, False, True]  # --keep 1
    assert [i.network_path is not None for i in infos] == [False, True, True]  # every 2nd + the newest
    with Image.open(infos[-1].fakes_path) as grid:
        assert grid.size == (8 * 16, 4 * 16)
        assert grid.mode == "L"  # G draws three channels; the grid a person opens is grey, as stage 05 saves
    with Image.open(run_dir / "reals.png") as reals:
        assert reals.mode == "L" and reals.size == (8 * 16, 4 * 16)

    from mura_aug.gan.network_file import load_generator

    G = load_generator(run_dir)
    assert G.snapshot_meta["kimg"] == pytest.approx(0.024) and G.img_resolution == 16
    with torch.no_grad():
        images = G(torch.randn(2, G.z_dim), torch.zeros(2, 0), noise_mode="const")
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_runs_command_lists_runs_and_snapshots(cli_run, capsys):
    workspace, _ = cli_run
    assert cli.main(["runs", "--workspace", str(workspace.root)]) == 0
    out = capsys.readouterr().out
    assert f"{RUN}: 0.024 / 0.024 kimg, 3 snapshots (1 resumable)" in out
    assert "0.016 kimg" in out and "network+fakes" in out and "state+network+fakes" in out


def test_starting_over_an_existing_run_needs_resume(cli_run, capsys):
    workspace, _ = cli_run
    args = ["train", "--workspace", str(workspace.root), "--label", "positive", "--cfg", "tiny",
            "--resolution", "16", "--kimg", "0.024", "--device", "cpu", "--no-progress"]
    assert cli.main(args) == 2
    assert "--resume latest" in capsys.readouterr().err
    # --resume latest at the target trains nothing and changes nothing.
    before = snap.read_stats(workspace.experiments / RUN)
    assert cli.main(args + ["--resume", "latest"]) == 0
    assert snap.read_stats(workspace.experiments / RUN) == before


def test_transfer_with_freeze_d_keeps_frozen_blocks(cli_run, tmp_path):
    source_ws, source_run = cli_run
    source = snap.load_state(snap.list_snapshots(source_run)[-1].state_path)
    workspace = make_dataset(tmp_path / "ws")
    # As the notebooks call it: RESUME = "latest" and TRANSFER set; a run without a state starts from TRANSFER.
    run_dir = train_tiny(workspace, "positive", kimg=TICK_KIMG, transfer=str(source_run), freeze_d=1, run="transfer",
                         resume="latest")
    result = snap.load_state(snap.list_snapshots(run_dir)[-1].state_path)
    assert result["progress"]["cur_nimg"] == 8  # weights only: the image count starts again
    frozen = [name for name in result["D"] if name.startswith("b16.") and "weight" in name]
    trained = [name for name in result["D"] if name.startswith("b4.") and "weight" in name]
    assert frozen and trained
    for name in frozen:
        assert torch.equal(result["D"][name], source["D"][name]), f"{name} changed although frozen"
    assert any(not torch.equal(result["D"][n], source["D"][n]) for n in trained)
    # The same call again once the run has a state (a rerun after a disconnect) continues it.
    messages = []
    train_tiny(workspace, "positive", kimg=2 * TICK_KIMG, transfer=str(source_run), freeze_d=1, run="transfer",
               resume="latest", log=messages.append)
    assert snap.load_state(snap.list_snapshots(run_dir)[-1].state_path)["progress"]["cur_nimg"] == 16
    assert any(m.startswith("resuming transfer") for m in messages)
    assert not any(m.startswith("transfer ") for m in messages)  # no weights copied over the run's


def test_transfer_by_name_without_network_is_a_clear_error(tmp_path, monkeypatch):
    workspace = make_dataset(tmp_path / "ws")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(UserError, match="Cannot download") as info:
        train_tiny(workspace, "positive", kimg=TICK_KIMG, transfer="ffhq256")
    assert "weights" in info.value.fix
    assert not list(workspace.weights_cache.glob("*.pkl"))


def test_both_labels_train_one_conditional_generator(tmp_path):
    workspace = make_dataset(tmp_path / "ws", "positive")
    make_dataset(tmp_path / "ws", "negative")
    run_dir = train_tiny(workspace, "both", kimg=TICK_KIMG)
    assert run_dir.name == "XR_SHOULDER-both-tiny-16"
    from mura_aug.gan.network_file import load_generator

    G = load_generator(run_dir)
    assert G.c_dim == 2 and G.snapshot_meta["class_names"] == ["negative", "positive"]


def test_max_minutes_and_ctrl_c_stop_with_a_final_state(tmp_path):
    workspace = make_dataset(tmp_path / "ws")
    run_dir = train_tiny(workspace, "positive", kimg=1.0, max_minutes=1e-6)
    state = snap.load_state(snap.list_snapshots(run_dir)[-1].state_path)
    assert state["stop_reason"] == "max_minutes" and state["progress"]["cur_nimg"] == 4  # one iteration

    def press_stop(line):  # the notebook's stop button sends SIGINT (once; a second press interrupts at once)
        if line["tick"] == 2:
            signal.raise_signal(signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt, match="the final state is saved"):  # still an interrupt to the caller
        train_tiny(workspace, "positive", kimg=1.0, resume="latest", on_tick=press_stop)
    # Ticks end on multiples of 8 images whatever the cut at 4: tick 1 at 8, tick 2 at 16 presses stop; the
    # loop finishes the next iteration and writes a state in the middle of tick 3 (its line marked partial).
    state = snap.load_state(snap.list_snapshots(run_dir)[-1].state_path)
    assert state["stop_reason"] == "interrupted" and state["progress"]["cur_nimg"] == 20
    lines = snap.read_stats(run_dir)
    assert [(line["tick"], line.get("partial", False)) for line in lines] == [(1, False), (2, False), (3, True)]
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is given back


def test_bad_parameters_are_user_errors(tmp_path):
    workspace = make_dataset(tmp_path / "ws")
    for bad in (dict(kimg=0), dict(kimg_per_tick=-1), dict(snap=0), dict(keep=0), dict(cfg="huge")):
        with pytest.raises(UserError, match=next(iter(bad)).upper()):
            train_tiny(workspace, "positive", **{"kimg": 1.0, **bad})
    with pytest.raises(UserError, match="LABEL = 'abnormal' is not one of"):
        train_tiny(workspace, "abnormal", kimg=1.0)
    with pytest.raises(UserError, match="not both"):
        train_tiny(workspace, "positive", kimg=1.0, resume=str(workspace.experiments / RUN), transfer="ffhq256")
    assert not workspace.experiments.joinpath(RUN).exists()  # refused before anything was written


def test_reads_the_datasets_stage_01_writes(prepared_workspace, copy_workspace):
    workspace = copy_workspace(prepared_workspace)
    images, labels = load_training_images(workspace, "XR_SHOULDER", "both", 16)
    assert images.shape[1:] == (3, 16, 16) and images.dtype == np.uint8
    assert set(labels.tolist()) == {0, 1}
    assert 10 < images.mean() < 245  # real pictures, not an empty array


def test_a_run_being_trained_by_another_process_is_refused(tmp_path):
    import os
    import socket

    workspace = make_dataset(tmp_path / "ws")
    run_dir = workspace.experiments / RUN
    run_dir.mkdir(parents=True)
    lock = run_dir / snap.LOCK_NAME
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier"}))
    with pytest.raises(UserError, match=f"process {os.getppid()}"):
        train_tiny(workspace, "positive", kimg=TICK_KIMG)
    assert lock.exists() and not snap.list_snapshots(run_dir)
    # A lock whose process is gone (killed) is taken over, and given back at the end.
    lock.write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname(), "started": "earlier"}))
    train_tiny(workspace, "positive", kimg=TICK_KIMG)
    assert snap.find_resumable(run_dir) is not None and not lock.exists()


# --- the metrics hook (issue 7, item 3) ------------------------------------------------------------------

METRIC_KEYS = ("fid_offline", "kid_offline", "diversity_ratio", "collapse_alarm", "num_fakes")


def test_metrics_every_snapshot_go_into_the_stats_and_change_nothing_else(tmp_path):
    import random

    workspace = make_dataset(tmp_path / "ws", "positive")
    make_dataset(tmp_path / "ws", "negative", count=8)
    settings = tiny_settings("both", kimg=2 * TICK_KIMG, metrics_every=1, metrics_fakes=8, run="metrics")
    measured = measure.snapshot_metrics(settings)  # what the CLI and the notebooks pass
    calls = []

    def greedy_metrics(G_ema, images, labels, device):
        calls.append(dict(c_dim=G_ema.c_dim, training=G_ema.training, real_labels=np.asarray(labels)))
        # A metric that draws from every global generator must still leave the training untouched.
        torch.randn(1000), np.random.rand(10), random.random()
        return measured(G_ema, images, labels, device)

    with_metrics = loop.train(workspace, settings, on_snapshot=greedy_metrics, log=lambda text: None)
    without = train_tiny(workspace, "both", kimg=2 * TICK_KIMG, run="plain")

    stats = snap.read_stats(with_metrics)
    assert len(calls) == 2 and len(stats) == 2  # snap 1, metrics every snapshot: one measurement per tick
    for line in stats:
        for key in METRIC_KEYS:
            assert key in line and math.isfinite(line[key]), key
        assert line["num_fakes"] == 8
    for call in calls:  # real labels go along, so a conditional G makes fakes in the training set's class mix
        assert call["c_dim"] == 2 and not call["training"]
        assert sorted(call["real_labels"].tolist()) == [0] * 8 + [1] * 12
    assert measure.snapshot_metrics(tiny_settings(metrics_every=0)) is None  # nothing to wire when off

    metric_names = set(stats[0]) - set(snap.read_stats(without)[0])
    assert set(METRIC_KEYS) <= metric_names
    strip = [{k: v for k, v in line.items() if k not in metric_names} for line in without_timings(stats)]
    assert strip == without_timings(snap.read_stats(without))
    states = [snap.load_state(snap.list_snapshots(run)[-1].state_path) for run in (with_metrics, without)]
    for key in ("G_ema", "G", "D"):
        for name, tensor in states[0][key].items():
            assert torch.equal(tensor, states[1][key][name]), f"{key}.{name} changed because metrics ran"


def test_metrics_options_are_documented_and_checked(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--metrics-every METRICS_EVERY compute FID/KID" in help_text and "stats.jsonl" in help_text
    assert "--metrics-fakes" in help_text
    workspace = make_dataset(tmp_path / "ws")
    for bad in (dict(metrics_every=-1), dict(metrics_fakes=1)):
        with pytest.raises(UserError, match="metrics"):
            train_tiny(workspace, "positive", **{"kimg": 1.0, **bad})


def test_the_loop_knows_no_metrics():
    # Metrics reach the loop only as the on_snapshot callback: importing the loop loads no measuring code.
    import subprocess
    import sys

    code = ("import sys, mura_aug.gan.loop; print(sorted(m for m in sys.modules if m.startswith('mura_aug.metrics') "
            "or m == 'mura_aug.gan.measure'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_any_non_finite_finds_nan_and_infinity_and_leaves_the_gradients_as_they_are():
    from mura_aug.gan.loop import any_non_finite

    grads = [torch.randn(3, 3), torch.tensor([-0.0, 1e-40, 3.0e38])]
    before = [g.clone() for g in grads]
    assert not any_non_finite(grads)
    assert all(torch.equal(g, b) and torch.equal(g.signbit(), b.signbit()) for g, b in zip(grads, before))
    for bad in (float("nan"), float("inf"), -float("inf")):
        grads[1][1] = bad
        assert any_non_finite(grads)


def test_seed_chunk_sets_the_cpu_stream_from_the_derived_seed():
    from mura_aug.gan import rng

    rng.seed_chunk(7, 3, 1, 0)
    drawn = torch.rand(5)
    expected = torch.rand(5, generator=torch.Generator().manual_seed(rng.derived_seed(7, 3, rng.DRAW_CHUNK, 1, 0)))
    assert torch.equal(drawn, expected)
    rng.seed_chunk(7, 3, 2, 0)  # another phase: another stream
    assert not torch.equal(torch.rand(5), expected)
