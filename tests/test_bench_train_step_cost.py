"""bench/train_step_cost.py: the per-step / per-image split of a training step, and its multiply-add count."""
import pytest
import torch
import torch.nn.functional as F

from bench_scripts import load_bench_script


def test_fit_line_recovers_a_line_and_needs_two_batch_sizes():
    step_cost = load_bench_script("train_step_cost")
    fixed, per_image = step_cost.fit_line([2, 4, 8, 16], [35.0 + 3.5 * b for b in (2, 4, 8, 16)])
    assert fixed == pytest.approx(35.0) and per_image == pytest.approx(3.5)
    with pytest.raises(ValueError, match="two different batch sizes"):
        step_cost.fit_line([8, 8], [60.0, 61.0])


def test_dispatch_counter_counts_the_multiply_adds_of_a_convolution_forward_and_backward():
    step_cost = load_bench_script("train_step_cost")
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    counter = step_cost.dispatch_counter()
    with counter:
        F.conv2d(x, w, padding=1).sum().backward()
    forward = 2 * 4 * 8 * 8 * 3 * 3 * 3  # one multiply-add per output value and tap
    assert counter.macs == 3 * forward  # forward, then the gradients of the input and of the weight
    assert counter.calls >= 3


def test_count_macs_of_a_short_tiny_run(tmp_path):
    step_cost = load_bench_script("train_step_cost")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        macs, calls = step_cost.count_macs("tiny-32", tmp_path / "work", steps_per_tick=4)
    finally:
        torch.set_num_threads(threads)
    # tiny at 32 px: G and D of ~0.1-1 M weights each over 32x32 images, a few hundred operators per step
    assert 20e9 < macs < 2000e9 and 300 < calls < 20000
