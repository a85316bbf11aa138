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


def _layer_input_formats(module, monkeypatch):
    """Record, for every 3x3 convolution torch runs, whether its input was channels-last."""
    seen = []
    real_conv2d = torch.nn.functional.conv2d

    def conv2d(x, weight, *args, **kwargs):
        if weight.shape[-2:] == (3, 3) and weight.shape[1] > 1:
            seen.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return real_conv2d(x, weight, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "conv2d", conv2d)
    return seen


def test_cpu_layout_rule_follows_the_vendor_and_the_switch(monkeypatch):
    monkeypatch.setattr(ops, "CPU_CHANNELS_LAST", None)
    cpu = torch.device("cpu")
    monkeypatch.setattr(ops, "cpu_vendor", lambda: "AMD")
    assert ops.block_memory_format(False, torch.float32, cpu) == torch.channels_last
    for vendor in ("Intel", "other"):
        monkeypatch.setattr(ops, "cpu_vendor", lambda: vendor)
        assert ops.block_memory_format(False, torch.float32, cpu) == torch.contiguous_format
    monkeypatch.setattr(ops, "CPU_CHANNELS_LAST", True)
    assert ops.block_memory_format(False, torch.float32, cpu) == torch.channels_last
    monkeypatch.setattr(ops, "CPU_CHANNELS_LAST", False)
    assert ops.block_memory_format(False, torch.float32, cpu) == torch.contiguous_format
    # CUDA's float32 blocks never follow the CPU rule; float16 blocks follow fp16_channels_last alone.
    monkeypatch.setattr(ops, "CPU_CHANNELS_LAST", True)
    assert ops.block_memory_format(False, torch.float32, torch.device("cuda")) == torch.contiguous_format
    assert ops.block_memory_format(True, torch.float16, torch.device("cuda")) == torch.channels_last


def test_cpu_vendor_is_read_from_cpuinfo_else_from_the_platform(tmp_path, monkeypatch):
    read_vendor = ops.cpu_vendor.__wrapped__  # uncached, so each call reads its own file
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Xeon\n")
    assert read_vendor(str(cpuinfo)) == "Intel"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n")
    assert read_vendor(str(cpuinfo)) == "AMD"
    missing = str(tmp_path / "no_cpuinfo")
    monkeypatch.setattr(ops.platform, "processor", lambda: "AMD64 Family 25 Model 1 Stepping 1, AuthenticAMD")
    assert read_vendor(missing) == "AMD"
    monkeypatch.setattr(ops.platform, "processor", lambda: "arm")
    assert read_vendor(missing) == "other"


def test_both_cpu_layouts_compute_the_same_networks(monkeypatch):
    from gan_nets import small_nets

    G, D = small_nets(z_dim=16, img_channels=3, channel_base=256, channel_max=16, mbstd_group_size=2)
    results = {}
    for channels_last in (False, True):
        monkeypatch.setattr(ops, "CPU_CHANNELS_LAST", channels_last)
        formats = _layer_input_formats(G, monkeypatch)
        torch.manual_seed(3)
        z = torch.randn(4, 16)
        img = G(z, None, noise_mode="const")
        logits = D(img, None)
        grads = torch.autograd.grad(logits.sum(), list(G.parameters()) + list(D.parameters()), allow_unused=True)
        monkeypatch.undo()  # back to the real conv2d before the next layout
        # Every 3x3 conv of G and D follows the switch except the last one, D's 4x4 head, which stays NCHW.
        assert len(formats) > 2 and formats[:-1] == [channels_last] * (len(formats) - 1) and not formats[-1]
        assert img.is_contiguous() and logits.is_contiguous()  # what leaves the networks is always NCHW
        results[channels_last] = (img.detach(), logits.detach(), grads)
    (img_a, logits_a, grads_a), (img_b, logits_b, grads_b) = results[False], results[True]
    torch.testing.assert_close(img_b, img_a, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits_b, logits_a, atol=1e-5, rtol=1e-4)
    for grad_a, grad_b in zip(grads_a, grads_b):
        if grad_a is None:
            assert grad_b is None
            continue
        torch.testing.assert_close(grad_b, grad_a, atol=1e-5 * float(grad_a.abs().max().clamp_min(1)), rtol=1e-3)


def test_fir_kernels_are_made_once_per_filter_and_remade_when_it_changes():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    f = ops.setup_filter([1, 3, 3, 1])
    first = ops.upfirdn2d(x, f, padding=2)
    kernel = ops._depthwise(f, 3, torch.float32, 1.0, flip=True)
    assert ops._depthwise(f, 3, torch.float32, 1.0, flip=True) is kernel  # kept, not rebuilt
    assert ops._depthwise(f, 4, torch.float32, 1.0, flip=True) is not kernel  # other channels: another kernel
    with torch.no_grad():
        f.copy_(ops.setup_filter([1, 2, 4, 1]))  # loading a state changes a filter in place
    changed = ops.upfirdn2d(x, f, padding=2)
    want = F.conv2d(F.pad(x, [2, 2, 2, 2]), f.flip([0, 1])[None, None].repeat(3, 1, 1, 1), groups=3)
    torch.testing.assert_close(changed, want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(changed, first)
    ident = id(f)
    del f, kernel
    assert ident not in ops._derived  # a freed filter takes its kernels with it
    with torch.inference_mode():  # tensors without a version counter are not cached, and still work
        g = ops.setup_filter([1, 3, 3, 1])
        torch.testing.assert_close(ops.upfirdn2d(x, g, padding=2), first)
