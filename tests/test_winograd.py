"""Winograd F(4x4, 3x3) convolutions (mura_aug.gan.winograd) and where the networks use them (gan.ops)."""
import pytest
import torch
import torch.nn.functional as F

from gan_nets import small_nets
from mura_aug.gan import ops, winograd


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 9), (3, 4, 1, 1), (1, 5, 4, 13), (2, 1, 6, 5)])
def test_conv3x3_is_the_padded_correlation_of_conv2d(shape):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    weight = torch.randn(6, shape[1], 3, 3, dtype=torch.float64)
    torch.testing.assert_close(winograd.conv3x3(x, weight), F.conv2d(x, weight, padding=1), atol=1e-10, rtol=1e-10)


def test_conv3x3_in_float32_is_within_rounding_of_the_direct_convolution():
    torch.manual_seed(0)
    x = torch.randn(2, 128, 16, 16)
    weight = torch.randn(128, 128, 3, 3) / 34
    got, want = winograd.conv3x3(x, weight), F.conv2d(x, weight, padding=1)
    assert got.shape == want.shape and got.is_contiguous()
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 4, 4)])
def test_first_and_second_derivatives_are_right(shape):
    # R1 and path length differentiate twice through these convolutions.
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, shape[1], 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(winograd.conv3x3, (x, weight))
    assert torch.autograd.gradgradcheck(winograd.conv3x3, (x, weight))


def test_a_weight_that_does_not_fit_the_input_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        winograd.conv3x3(torch.zeros(1, 3, 8, 8), torch.zeros(4, 2, 3, 3))


def _count_winograd_calls(monkeypatch):
    calls = []
    original = winograd.conv3x3

    def counting(x, weight):
        calls.append(tuple(x.shape))
        return original(x, weight)

    monkeypatch.setattr(winograd, "conv3x3", counting)
    return calls


def _nets_big_enough_for_winograd():
    # 128 channels at 16x16: the smallest layers ops.conv2d hands to Winograd (winograd.worthwhile).
    return small_nets(z_dim=32, img_channels=1, channel_base=2048, channel_max=128, mbstd_group_size=2)


def _r1_and_path_length_gradients(G, D):
    torch.manual_seed(1)
    z = torch.randn(2, 32)
    ws = G.mapping(z, None)
    img = G.synthesis(ws, noise_mode="const")
    (grad_ws,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    g_grads = torch.autograd.grad(grad_ws.square().sum(), list(G.synthesis.parameters()), allow_unused=True)
    real = torch.randn(2, 1, 16, 16, requires_grad=True)
    logits = D(real, None)
    (grad_real,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    d_grads = torch.autograd.grad(grad_real.square().sum(), list(D.parameters()), allow_unused=True)
    return img.detach(), logits.detach(), g_grads, d_grads


def test_networks_use_winograd_on_cpu_with_the_same_results_and_double_derivatives(monkeypatch):
    G, D = _nets_big_enough_for_winograd()
    monkeypatch.setattr(ops, "CPU_WINOGRAD", False)
    img_a, logits_a, g_a, d_a = _r1_and_path_length_gradients(G, D)
    calls = _count_winograd_calls(monkeypatch)
    monkeypatch.setattr(ops, "CPU_WINOGRAD", True)
    img_b, logits_b, g_b, d_b = _r1_and_path_length_gradients(G, D)
    # G's stride-1 conv at 16 px (training mode = not fused) and D's first 3x3 conv at 16 px; nothing smaller.
    assert calls and all(shape[1] >= winograd.MIN_CHANNELS and shape[2] * shape[3] >= winograd.MIN_PIXELS
                         for shape in calls)
    torch.testing.assert_close(img_b, img_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits_b, logits_a, atol=1e-4, rtol=1e-4)
    for grad_a, grad_b in zip(g_a + d_a, g_b + d_b):
        if grad_a is None:
            assert grad_b is None
            continue
        # 1 %: some of these double-backward gradients are small sums of large terms, so float rounding alone
        # moves them by up to ~0.5 % (measured on an AMD EPYC: the direct convolution in NCHW against the same
        # in channels-last, no Winograd at all). A wrong transform or a missing term is off by 100 %.
        scale = grad_a.abs().max().clamp_min(1e-6)
        assert (grad_b - grad_a).abs().max() <= 1e-2 * scale


def test_small_layers_and_the_switch_keep_the_direct_convolution(monkeypatch):
    calls = _count_winograd_calls(monkeypatch)
    x, weight = torch.randn(2, 16, 16, 16), torch.randn(16, 16, 3, 3)
    ops.conv2d(x, weight, padding=1)  # 16 channels: below MIN_CHANNELS
    assert calls == []
    x, weight = torch.randn(1, 128, 16, 16), torch.randn(128, 128, 3, 3)
    monkeypatch.setattr(ops, "CPU_WINOGRAD", False)
    ops.conv2d(x, weight, padding=1)
    assert calls == []
    monkeypatch.setattr(ops, "CPU_WINOGRAD", True)
    ops.conv2d(x, weight, padding=1)
    ops.conv2d(x, weight, stride=2, padding=1)  # strided: direct
    assert calls == [(1, 128, 16, 16)]
