"""A full-size network at >= 128 px does not start training on a CPU unless asked: the estimate says why."""
from __future__ import annotations

import pytest

from gan_datasets import make_dataset
from mura_aug import cli
from mura_aug.errors import UserError
from mura_aug.gan import estimates, loop
from mura_aug.gan.settings import RunSettings


def test_the_estimate_at_a_measured_resolution_is_the_measurement():
    low, high, source = estimates.cpu_seconds_per_kimg("auto", 256)
    assert (low, high) == estimates.MEASURED_CPU_S_PER_KIMG[("large", 256)][:2]
    assert "bench/results/train_cpu.md" in source
    between = estimates.cpu_seconds_per_kimg("paper256", 128)
    assert estimates.cpu_seconds_per_kimg("auto", 32)[0] < between[0] < low  # interpolated, in between
    assert estimates.cpu_seconds_per_kimg("tiny", 256) is None


def test_a_cpu_run_of_auto_at_256_px_is_stopped_with_the_time_and_the_way_to_a_gpu():
    with pytest.raises(UserError) as caught:
        estimates.refuse_slow_cpu_run("auto", 256, 1000, "cpu", cpu_ok=False)
    assert "days" in caught.value.problem and "1000 kimg" in caught.value.problem
    assert "Change runtime type" in caught.value.fix and "CPU_OK" in caught.value.fix
    assert "training on the CPU as asked" in estimates.refuse_slow_cpu_run("auto", 256, 1000, "cpu", cpu_ok=True)


@pytest.mark.parametrize("cfg, resolution, device", [("tiny", 256, "cpu"), ("auto", 64, "cpu"),
                                                     ("auto", 256, "cuda"), ("paper256", 256, "cuda:1")])
def test_runs_that_are_not_weeks_on_a_cpu_go_ahead_silently(cfg, resolution, device):
    assert estimates.refuse_slow_cpu_run(cfg, resolution, 1000, device, cpu_ok=False) is None


def test_train_and_the_notebooks_preflight_refuse_before_writing_anything(tmp_path):
    workspace = make_dataset(tmp_path / "ws", res=128, count=4)
    settings = RunSettings(label="positive", cfg="auto", kimg=1000, device="cpu", progress=False)
    with pytest.raises(UserError, match="auto at 128 px on a CPU"):
        loop.preflight(workspace, settings)
    with pytest.raises(UserError, match="auto at 128 px on a CPU"):
        loop.train(workspace, settings, log=lambda text: None)
    assert list(workspace.experiments.iterdir()) == []  # no run folder, no lock, no log
    assert "auto at 128 px" in loop.preflight(workspace, settings.replace(cpu_ok=True))


def test_the_command_line_says_the_same_and_exits_2(tmp_path, capsys):
    make_dataset(tmp_path / "ws", res=128, count=4)
    status = cli.main(["train", "--workspace", str(tmp_path / "ws"), "--label", "positive", "--device", "cpu",
                       "--no-progress"])
    assert status == 2
    assert "--cpu-ok" in capsys.readouterr().err


def test_the_cpu_estimate_of_a_run_that_goes_ahead_is_said_once_by_preflight(tmp_path, monkeypatch):
    from gan_training import TICK_KIMG, tiny_settings

    workspace = make_dataset(tmp_path / "ws")
    note = "training on the CPU as asked (CPU_OK): about 3 weeks"
    # A tiny run at 16 px stands in for a full-size one at 256 px with CPU_OK (which would take weeks here).
    monkeypatch.setattr(estimates, "refuse_slow_cpu_run", lambda *args, **kwargs: note)
    settings = tiny_settings(kimg=TICK_KIMG, cpu_ok=True)
    assert loop.preflight(workspace, settings).count(note) == 1
    said = []
    loop.train(workspace, settings, log=said.append)
    assert not any(note in line for line in said)
