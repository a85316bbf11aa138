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


def _zero_stuffed_reference(x, f, up, padding, gain):
    """NVlabs' upfirdn2d written out: zero-stuff, pad (negative = crop), true convolution with f * gain."""
    n, c, h, w = x.shape
    stuffed = x.new_zeros(n, c, h * up, w * up)
    stuffed[:, :, ::up, ::up] = x
    kernel = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1).to(x.dtype)
    return F.conv2d(F.pad(stuffed, padding), kernel, groups=c)


@pytest.mark.parametrize("taps,padding,size", [([1, 3, 3, 1], [2, 1, 2, 1], 4), ([1, 3, 3, 1], [3, 2, 3, 2], 3),
                                               ([1, 2, 4, 1], [2, 1, 0, -1], 4), ([1, 2, 4, 1], [0, 0, 0, 0], 3)])
def test_fir_upsampling_as_matrices_is_nvlabs_upfirdn2d(taps, padding, size):
    # On a CPU the upsampling FIR of a separable filter is two matrix products (ops.CPU_SEPARABLE_FIR):
    # same values as the zero-stuffed convolution, first and second derivatives included.
    torch.manual_seed(0)
    f = ops.setup_filter(taps).double()
    x = torch.randn(1, 2, size, size + 1, dtype=torch.float64, requires_grad=True)
    assert ops._fir_as_matrices(x) and ops._fir_matrices(f, (size, size + 1), 2, 1, tuple(padding), 4.0,
                                                         x.dtype) is not None
    got = ops.upfirdn2d(x, f, up=2, padding=padding, gain=4.0)
    torch.testing.assert_close(got, _zero_stuffed_reference(x, f, 2, padding, 4.0), atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda v: ops.upfirdn2d(v, f, up=2, padding=padding, gain=4.0), (x,))
    assert torch.autograd.gradgradcheck(lambda v: ops.upfirdn2d(v, f, up=2, padding=padding, gain=4.0), (x,))


def test_a_filter_that_is_not_separable_keeps_the_convolution():
    torch.manual_seed(0)
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # rank 2: no matrix form
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    assert ops._fir_matrices(f, (5, 5), 2, 1, (1, 0, 1, 0), 4.0, x.dtype) is None
    got = ops.upfirdn2d(x, f, up=2, padding=[1, 0, 1, 0], gain=4.0)
    torch.testing.assert_close(got, _zero_stuffed_reference(x, f, 2, [1, 0, 1, 0], 4.0), atol=1e-12, rtol=1e-12)
