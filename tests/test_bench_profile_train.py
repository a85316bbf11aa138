"""bench/profile_train.py: one tick of the real loop under torch.profiler, reported by operator and shape."""
import argparse

import torch

from bench_scripts import load_bench_script
from mura_aug.gan import ops


def test_profile_of_one_tiny_tick_names_the_convolutions_and_their_share(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "CPU_CHANNELS_LAST", None)  # the script sets the layout; restored afterwards
    threads = torch.get_num_threads()
    profile_train = load_bench_script("profile_train")
    try:
        # 4 steps, no input shapes: the profiler's post-processing of a 16-step tick alone takes ~12 s here
        profiler, wall, cpu, layout = profile_train.profile_one_tick("tiny-32", tmp_path / "work", threads=1,
                                                                     layout="nchw", shapes=False, steps=4)
    finally:
        torch.set_num_threads(threads)
    assert layout == "NCHW" and wall > 0 and cpu > 0
    args = argparse.Namespace(setting="tiny-32", threads=1, rows=5, shapes=False, steps=4)
    text = profile_train.report(profiler, wall, cpu, layout, args, ["--layout", "nchw"])
    assert "`python bench/profile_train.py --layout nchw`" in text and "(4 steps, tick 2 of 3)" in text
    operators = [line for line in text.splitlines() if line.startswith(("| aten::", "| _", "| Optimizer"))]
    assert len(operators) >= 5
    share = next(line for line in text.splitlines() if line.startswith("- Convolutions"))
    percent = int(share.rsplit(": ", 1)[1].split(" %")[0])
    assert 10 <= percent <= 95  # a 32-channel GAN step is mostly, but not only, convolutions
    assert "input shapes not recorded" in text  # and the report says why its table by shape is empty
