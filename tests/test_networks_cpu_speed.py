"""The CPU speed choices of networks.py keep the numbers: channels-last blocks and the contiguous FIR kernel."""
import pytest
import torch
import torch.nn.functional as F

from gan_nets import small_nets
from mura_aug.gan import networks


def _tiny_nets():
    return small_nets(z_dim=16, img_channels=3, channel_base=256, channel_max=16, mbstd_group_size=2)


def _outputs_and_grads(G, D):
    torch.manual_seed(1)
    z = torch.randn(4, 16)
    img = G(z, None, noise_mode="const")
    logits = D(img, None)
    grads = torch.autograd.grad(logits.sum(), list(G.parameters()))
    return img.detach(), logits.detach(), grads


def test_channels_last_blocks_give_the_same_images_logits_and_gradients(monkeypatch):
    G, D = _tiny_nets()
    monkeypatch.setattr(networks, "CPU_CHANNELS_LAST", False)
    img_a, logits_a, grads_a = _outputs_and_grads(G, D)
    monkeypatch.setattr(networks, "CPU_CHANNELS_LAST", True)
    img_b, logits_b, grads_b = _outputs_and_grads(G, D)
    assert img_b.is_contiguous()  # G's contract: NCHW images, whatever the layout inside
    torch.testing.assert_close(img_b, img_a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits_b, logits_a, atol=1e-5, rtol=1e-5)
    for grad_a, grad_b in zip(grads_a, grads_b):
        torch.testing.assert_close(grad_b, grad_a, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("down,padding", [(1, [2, 2, 2, 2]), (2, [1, 1, 1, 1]), (1, [-1, 0, 1, 2])])
def test_fir_matches_a_direct_convolution_with_the_flipped_taps(down, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    f = networks.setup_filter([1, 2, 4, 1])  # asymmetric taps: a flipped kernel would show
    got = networks.upfirdn2d(x, f, down=down, padding=padding, gain=3.0)
    padded = F.pad(x, padding)
    kernel = (f * 3.0).flip([0, 1])[None, None].repeat(3, 1, 1, 1)
    want = F.conv2d(padded, kernel, groups=3)[:, :, ::down, ::down]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("down,padding,size", [(1, [2, 2, 2, 2], 8), (2, [1, 1, 1, 1], 8), (2, [1, 1, 1, 1], 9),
                                               (1, [-1, 0, 1, 2], 7), (2, [2, 1, 2, 1], 8)])
def test_fir_first_and_second_derivatives_are_right(down, padding, size):
    # The FIR has a hand-written backward (and backward of backward) for R1 and path length: check both.
    torch.manual_seed(0)
    x = torch.randn(1, 2, size, size, dtype=torch.float64, requires_grad=True)
    f = networks.setup_filter([1, 2, 4, 1]).double()

    def fir(v):
        return networks.upfirdn2d(v, f, down=down, padding=padding, gain=2.0)

    assert torch.autograd.gradcheck(fir, (x,))
    assert torch.autograd.gradgradcheck(fir, (x,))
