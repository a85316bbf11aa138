"""The low-level ops under the networks (gan.ops): the FIR resampling and its hand-written derivatives."""
import pytest
import torch
import torch.nn.functional as F

from mura_aug.gan import ops


@pytest.mark.parametrize("down,padding", [(1, [2, 2, 2, 2]), (2, [1, 1, 1, 1]), (1, [-1, 0, 1, 2])])
def test_fir_matches_a_direct_convolution_with_the_flipped_taps(down, padding):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 9)
    f = ops.setup_filter([1, 2, 4, 1])  # asymmetric taps: a flipped kernel would show
    got = ops.upfirdn2d(x, f, down=down, padding=padding, gain=3.0)
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
    f = ops.setup_filter([1, 2, 4, 1]).double()

    def fir(v):
        return ops.upfirdn2d(v, f, down=down, padding=padding, gain=2.0)

    assert torch.autograd.gradcheck(fir, (x,))
    assert torch.autograd.gradgradcheck(fir, (x,))
