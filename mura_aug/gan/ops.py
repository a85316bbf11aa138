"""The low-level operations under StyleGAN2's layers, and the CPU-only speed machinery beside them.

networks.py builds the model from these (it reads like the paper; this module is how its pieces are computed):
- FIR resampling with NVlabs' semantics (`upfirdn2d`, `upsample2d`, `downsample2d`), written with depthwise
  conv2d / conv_transpose2d instead of NVlabs' compiled CUDA op, through a pair of autograd Functions whose
  backward is the adjoint FIR (see `_DepthwiseFIR`);
- convolution with integrated up/downsampling (`conv2d_resample`), with the Winograd switch for the big
  stride-1 3x3 convolutions on a CPU (`CPU_WINOGRAD`, mura_aug.gan.winograd);
- bias + activation + gain + clamp (`bias_act`, `activate`, `clamp_to`) as ordinary tensor ops;
- the dtype and memory format of a block (`block_dtype`, `block_memory_format`, and the CPU layout rule
  `cpu_channels_last`).
Everything runs on CPU and CUDA with any torch >= 2.1; results match NVlabs' ops to float rounding.
"""
from __future__ import annotations

import functools
import math
import platform
import weakref
from typing import Optional

import torch
import torch.nn.functional as F

from mura_aug.gan import winograd


_TORCH_COMPILER = getattr(torch, "compiler", None)  # torch >= 2.1


def _tracing_check():
    check = getattr(_TORCH_COMPILER, "is_compiling", None)  # torch >= 2.3
    return check if check is not None else getattr(torch._dynamo, "is_compiling", lambda: False)


# Whether torch.compile is tracing this call. The caches below are plain Python (dicts keyed by tensor identity,
# version counters, `tolist()` of filter taps): dynamo cannot trace them and breaks the graph at each (72 breaks
# in `tiny`'s synthesis network and D), and after a break it compiles each layer's remaining code apart,
# recompiling per layer shape until its limit (on an H200 it then gave up and ran them eagerly). While tracing,
# the derived tensors are computed inside the graph instead, where the compiler folds them. Looked up once:
# it is asked hundreds of times per training step.
_compiling = _tracing_check()


LRELU_SLOPE = 0.2  # leaky ReLU negative slope, as in NVlabs' bias_act
ACTIVATION_GAINS = {"linear": 1.0, "relu": math.sqrt(2), "lrelu": math.sqrt(2)}  # keeps unit variance


# ----------------------------------------------------------------------------------------------------------
# FIR resampling


def setup_filter(taps=(1, 3, 3, 1)) -> torch.Tensor:
    """The 2-D resampling filter NVlabs stores in every `resample_filter` buffer: outer product of the
    1-D taps, normalised to sum 1 (shape [len, len])."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 1:
        f = torch.outer(f, f)
    return f / f.sum()


def _parse_padding(padding):
    """int or [x0, x1, y0, y1] -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    return tuple(padding)


# The depthwise kernels made from each filter, kept while the filter lives: a filter is a buffer that does not
# change, and building its kernel (scale, expand, copy, flip) was five tensor ops in every resampling of every
# layer of every pass, ~1 ms of a ~60 ms training step of a tiny network on a CPU. Keyed by the filter
# tensor itself (by identity, held weakly, so a freed filter takes its kernels with it; not a WeakKeyDictionary,
# which compares keys with ==, elementwise for tensors) and by its version counter, which any in-place change
# of its values (loading a state) moves on.
_derived: dict = {}  # id(source) -> (weak reference to source, its version, {key: derived tensor})


def _derived_tensor(source: torch.Tensor, key: tuple, make) -> torch.Tensor:
    """make() (a tensor computed from `source` alone), remembered under `key` until `source` changes or dies."""
    if _compiling():
        return make()
    if source.requires_grad or source.is_inference():
        # A tensor being learnt (none of these filters is), or one made under torch.inference_mode (which has
        # no version counter to tell a change by): derived afresh each time.
        return make()
    entry = _derived.get(id(source))
    if entry is None or entry[0]() is not source or entry[1] != source._version:
        ident = id(source)

        def forget(ref, ident=ident, table=_derived):
            # The source is gone, so are its derived tensors (unless its id was reused meanwhile). The table is
            # bound here: at interpreter exit the module's globals are already None when the last filters die.
            if table.get(ident, (None,))[0] is ref:
                del table[ident]

        entry = _derived[ident] = (weakref.ref(source, forget), source._version, {})
    made = entry[2]
    if key not in made:
        made[key] = make()
    return made[key]


def _depthwise(f: torch.Tensor, channels: int, dtype, gain: float = 1.0, flip: bool = False) -> torch.Tensor:
    """The [C, 1, kh, kw] depthwise kernel of filter f times gain (flipped: a true convolution by conv2d)."""
    return _derived_tensor(f, ("depthwise", channels, dtype, float(gain), flip),
                           lambda: _make_depthwise(f, channels, dtype, gain, flip))


def _flipped(kernel: torch.Tensor) -> torch.Tensor:
    """kernel with its taps reversed in both axes (the adjoint's kernel), made once per kernel."""
    return _derived_tensor(kernel, ("flipped",), lambda: kernel.flip([2, 3]))


def _make_depthwise(f, channels, dtype, gain, flip):
    # A real (contiguous) [C, 1, kh, kw] tensor, not an expanded view: oneDNN's depthwise kernels take a slow
    # path for the zero-stride view (4x512x32x32, 4x4 taps, padding 2: forward 11.7 -> 2.5 ms on one core).
    kernel = (f.detach() * gain).to(dtype)[None, None].expand(channels, 1, *f.shape).contiguous()
    return kernel.flip([2, 3]) if flip else kernel


def upfirdn2d(x, f, up=1, down=1, padding=0, gain=1.0):
    """NVlabs' upfirdn2d: insert up-1 zeros between pixels, pad (negative = crop) by padding=[x0, x1, y0,
    y1], convolve with f (a true convolution) times gain, keep every down-th pixel. Written with
    conv_transpose2d (upsampling: skips the multiplications with the inserted zeros) or a strided conv2d;
    on a CPU, upsampling with a separable f (every filter these networks use) is two small matrix products
    instead (see _fir_matrices). f must be symmetric-size 2-D; x is NCHW."""
    px0, px1, py0, py1 = _parse_padding(padding)
    if up > 1 and _fir_as_matrices(x):
        operators = _fir_matrices(f, tuple(x.shape[2:]), up, down, (px0, px1, py0, py1), gain, x.dtype)
        if operators is not None:
            rows, cols = operators
            return torch.matmul(rows, torch.matmul(x, cols))
    channels = x.shape[1]
    fh, fw = f.shape
    if up == 1:
        # conv2d is a correlation: flip the taps to get a convolution.
        return _DepthwiseFIR.apply(x, _depthwise(f, channels, x.dtype, gain, flip=True), down, (px0, px1, py0, py1))
    kernel = _depthwise(f, channels, x.dtype, gain)
    if down != 1:
        raise ValueError("upfirdn2d: upsampling and downsampling in one call is not needed here")
    # conv_transpose2d(x, f, stride=up) is the full convolution of the zero-stuffed x with f; NVlabs'
    # output pixel m is full[m + fh - 1 - pad0], so crop/pad the full result accordingly.
    x = F.conv_transpose2d(x, kernel, stride=up, groups=channels)
    return F.pad(x, [px0 - fw + 1, px1 + up - fw, py0 - fh + 1, py1 + up - fh])


def _depthwise_fir(x, kernel, down, pads):
    """Pad x by pads = (x0, x1, y0, y1) (negative = crop), correlate each channel with kernel [C, 1, kh, kw],
    keep every down-th pixel."""
    px0, px1, py0, py1 = pads
    if px0 == px1 == py0 == py1 and px0 >= 0:
        return F.conv2d(x, kernel, stride=down, padding=px0, groups=x.shape[1])  # no padded copy of x
    return F.conv2d(F.pad(x, [px0, px1, py0, py1]), kernel, stride=down, groups=x.shape[1])


class _DepthwiseFIR(torch.autograd.Function):
    """_depthwise_fir with a hand-written adjoint as its backward. Autograd's own double backward of a
    depthwise conv also computes the (unused) kernel gradient, one small conv per channel: on a CPU that was
    ~20 % of the path-length and R1 phases. The filter is a constant (a buffer), so no kernel gradient here."""

    @staticmethod
    def forward(ctx, x, kernel, down, pads):
        ctx.save_for_backward(kernel)
        ctx.down, ctx.pads, ctx.size = down, pads, tuple(x.shape[2:])
        return _depthwise_fir(x, kernel, down, pads)

    @staticmethod
    def backward(ctx, grad):
        (kernel,) = ctx.saved_tensors
        px0, px1, py0, py1 = ctx.pads
        if ctx.down == 1:
            # Adjoint of (pad, correlate): correlate with the flipped kernel, padded by (k - 1 - pad).
            kh, kw = kernel.shape[2:]
            pads = (kw - 1 - px0, kw - 1 - px1, kh - 1 - py0, kh - 1 - py1)
            return _DepthwiseFIR.apply(grad, _flipped(kernel), 1, pads), None, None, None
        return _DepthwiseFIRTranspose.apply(grad, kernel, ctx.down, ctx.pads, ctx.size), None, None, None


class _DepthwiseFIRTranspose(torch.autograd.Function):
    """Adjoint of _DepthwiseFIR with down > 1: zero-stuff, full correlation (conv_transpose2d), undo the pads;
    its own backward is _DepthwiseFIR again, so any order of derivatives stays on these two."""

    @staticmethod
    def forward(ctx, grad, kernel, down, pads, size):
        ctx.save_for_backward(kernel)
        ctx.down, ctx.pads = down, pads
        px0, px1, py0, py1 = pads
        full = F.conv_transpose2d(grad, kernel, stride=down, groups=grad.shape[1])
        # Rows/columns of the padded input that no output pixel read (stride remainder) get zero gradient.
        rest_y = size[0] + py0 + py1 - full.shape[2]
        rest_x = size[1] + px0 + px1 - full.shape[3]
        return F.pad(full, [-px0, rest_x - px1, -py0, rest_y - py1])

    @staticmethod
    def backward(ctx, grad):
        (kernel,) = ctx.saved_tensors
        return _DepthwiseFIR.apply(grad, kernel, ctx.down, ctx.pads), None, None, None, None


# FIR upsampling on a CPU as matrices: y = A_rows @ x @ A_cols per image and channel, with A the 1-D
# upfirdn operator of each axis (zero stuffing, padding, the filter taps). Two small matrix products
# replace the depthwise transposed convolution, which has no fast CPU kernel: the generator's skip-image
# upsampling (3 channels, 8x16x16 -> 32x32) took 0.16 ms that way and 0.03 ms as matrices (1 thread).
# Plain (not transposed) depthwise FIR passes stay convolutions: oneDNN runs those faster than the
# matrices. The same linear map, so the same result up to float rounding; its derivatives, of any order,
# are matrix products again. A module-level switch so that benchmarks and tests can compare both.
CPU_SEPARABLE_FIR = True

_fir_cache: dict = {}


def _fir_as_matrices(x) -> bool:
    # Not while torch.compile traces: the matrices' cache reads the filter's taps as Python numbers.
    return CPU_SEPARABLE_FIR and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and \
        not _compiling()


def _fir_1d(taps, size: int, up: int, down: int, pad0: int, pad1: int, gain: float) -> torch.Tensor:
    """[out, size] float64 matrix of 1-D upfirdn: out[o] = gain * sum_i taps[k - 1 - (i*up + pad0 - o*down)] x[i]
    (a true convolution of the zero-stuffed, padded signal, keeping every down-th sample)."""
    k = len(taps)
    out = (size * up + pad0 + pad1 - k) // down + 1
    matrix = torch.zeros(max(out, 0), size, dtype=torch.float64)
    for o in range(max(out, 0)):
        for i in range(size):
            j = i * up + pad0 - o * down
            if 0 <= j < k:
                matrix[o, i] = gain * taps[k - 1 - j]
    return matrix


def _fir_matrices(f, size, up, down, pads, gain, dtype):
    """(A_rows [H', H], A_cols^T [W, W']) for upfirdn2d of an H x W image, or None when f is not separable.
    Built once per filter, size and resampling and kept (a handful per network)."""
    key = (tuple(f.flatten().tolist()), tuple(f.shape), size, up, down, pads, float(gain), dtype)
    if key not in _fir_cache:
        taps = f.detach().to(torch.float64)
        total = taps.sum()
        col_taps, row_taps = taps.sum(dim=1), taps.sum(dim=0)  # f[y, x] = col[y] * row[x] / sum(f) if rank 1
        if total == 0 or not torch.allclose(torch.outer(col_taps, row_taps) / total, taps, rtol=1e-6, atol=1e-9):
            _fir_cache[key] = None
        else:
            px0, px1, py0, py1 = pads
            rows = _fir_1d((col_taps / total).tolist(), size[0], up, down, py0, py1, gain)
            cols = _fir_1d(row_taps.tolist(), size[1], up, down, px0, px1, 1.0)
            _fir_cache[key] = (rows.to(dtype), cols.t().contiguous().to(dtype))
    return _fir_cache[key]


def upsample2d(x, f, up=2):
    """Upsample by `up` with filter f, keeping the image aligned (NVlabs' upsample2d, gain up**2)."""
    fh, fw = f.shape
    pad = [(fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, gain=up * up)


def downsample2d(x, f, down=2):
    """Downsample by `down` after low-pass filtering with f (NVlabs' downsample2d)."""
    fh, fw = f.shape
    pad = [(fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2]
    return upfirdn2d(x, f, down=down, padding=pad)


# Winograd F(4x4, 3x3) for the big stride-1 3x3 convolutions on CPU: a quarter of the multiply-adds of the
# direct convolution, which on a CPU is the only way left to speed up fp32 training (mura_aug.gan.winograd;
# bench/results/winograd_cpu.md). Same results up to float rounding. A module-level switch so benchmarks
# and tests can compare both (bench_networks.py --winograd off|both).
CPU_WINOGRAD = True


def conv2d(x, w, bias=None, stride=1, padding=0, groups=1, flip_weight=True):
    """conv2d with NVlabs' flip_weight switch: True is a correlation (what torch's conv2d computes), False a
    true convolution. The big stride-1 3x3 convolutions on a CPU go through Winograd (CPU_WINOGRAD)."""
    if not flip_weight:
        w = w.flip([2, 3])
    if (CPU_WINOGRAD and stride == 1 and padding == 1 and groups == 1 and w.shape[2:] == (3, 3)
            and x.device.type == "cpu" and x.dtype == torch.float32 and winograd.worthwhile(x, w)):
        x = winograd.conv3x3(x, w)
        return x if bias is None else x + bias.reshape(1, -1, 1, 1)
    return F.conv2d(x, w, bias, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, bias=None):
    """Convolution with integrated up- or downsampling, with NVlabs' semantics: up: upsample with f and
    gain up**2, pad, convolve with w; down: pad, convolve with w, downsample with f. Each case is executed
    the cheap way (transposed conv for up, strided conv for down). `bias` (per output channel) is added
    at the end, inside the convolution where possible."""
    out_channels, in_per_group, kh, kw = w.shape
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample: up and down together is not used by these networks")
    if up == 1 and down == 1:
        return conv2d(x, w, bias, padding=padding, groups=groups, flip_weight=flip_weight)
    fh, fw = f.shape
    if down > 1:
        p0 = padding + (fw - down + 1) // 2
        p1 = padding + (fw - down) // 2
        if kh == 1 and kw == 1:  # 1x1: downsample first, so the conv runs on 1/down**2 of the pixels
            x = upfirdn2d(x, f, down=down, padding=[p0, p1, p0, p1])
            return conv2d(x, w, bias, groups=groups, flip_weight=flip_weight)
        x = upfirdn2d(x, f, padding=[p0, p1, p0, p1])
        return conv2d(x, w, bias, stride=down, groups=groups, flip_weight=flip_weight)
    # Upsampling: transposed conv with stride `up` (zero stuffing + convolution), then the FIR filter.
    p0 = padding + (fw + up - 1) // 2 - (kw - 1)
    p1 = padding + (fw - up) // 2 - (kw - up)
    if groups == 1:
        wt = w.transpose(0, 1)
    else:
        wt = w.reshape(groups, out_channels // groups, in_per_group, kh, kw).transpose(1, 2)
        wt = wt.reshape(groups * in_per_group, out_channels // groups, kh, kw)
    if flip_weight:  # conv_transpose2d convolves; a correlation needs the flipped kernel
        wt = wt.flip([2, 3])
    pt = max(min(-p0, -p1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=pt, groups=groups)
    x = upfirdn2d(x, f, padding=[p0 + pt, p1 + pt, p0 + pt, p1 + pt], gain=up * up)
    return x if bias is None else x + bias.reshape(1, -1, 1, 1)


def bias_act(x, b=None, act="linear", gain=None, clamp=None):
    """Add a per-channel bias, apply the activation, scale by gain (default: the activation's gain that
    keeps unit variance), clamp to [-clamp, clamp] when clamp is given."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif act == "relu":
        x = F.relu(x)
    elif act != "linear":
        raise ValueError(f"activation {act!r} is not supported (linear, relu, lrelu)")
    gain = ACTIVATION_GAINS[act] if gain is None else float(gain)
    if gain != 1:
        x = x * gain
    return clamp_to(x, clamp)


def clamp_to(x, limit):
    """x clamped to [-limit, limit]; None (or a negative limit) leaves it as it is."""
    # hardtanh == clamp(-c, c) forward; its backward is one fused kernel where clamp's takes four passes.
    if limit is None or limit < 0:
        return x
    return F.hardtanh(x, -float(limit), float(limit))


def normalize_2nd_moment(x, dim=1, eps=1e-8):
    """x / sqrt(mean(x^2)) along `dim` (the mapping network's input normalisation)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def activate(x, act, limit):
    """The activation without its gain (the layers fold the gain into their weights), then the clamp."""
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif act == "relu":
        x = F.relu(x)
    elif act != "linear":
        raise ValueError(f"activation {act!r} is not supported (linear, relu, lrelu)")
    return clamp_to(x, limit)


# ----------------------------------------------------------------------------------------------------------
# Precision and memory layout of a block


def block_dtype(use_fp16: bool, device: torch.device, force_fp32: bool):
    """float16 for the blocks NVlabs runs in half precision, but only on CUDA: on a CPU float16
    convolutions are slow and inexact."""
    return torch.float16 if use_fp16 and not force_fp32 and device.type == "cuda" else torch.float32


def block_memory_format(fp16_channels_last: bool, dtype, device: torch.device):
    """channels-last for float16 blocks built with fp16_channels_last (NVlabs' option for tensor cores); on a
    CPU, channels-last for the float32 blocks where the CPU layout rule says so (cpu_channels_last); NCHW
    otherwise."""
    if dtype == torch.float16 and fp16_channels_last:
        return torch.channels_last
    if device.type == "cpu" and dtype == torch.float32 and cpu_channels_last():
        return torch.channels_last
    return torch.contiguous_format


# Whether channels-last pays for float32 on a CPU depends on the CPU. Measured (bench/results/train_cpu.md): on AMD
# EPYCs tiny-32 training ran faster channels-last, 9-11 % with AVX2 and 6-8 % with AVX-512 (2 threads); on an Intel
# Xeon with AVX-512 the networks ran 5-10 % slower (docs/gan_networks.md). The vector unit alone does not separate
# these (both AVX-512 machines), the vendor does, so the rule is: channels-last on AMD. A fixed rule, not a timing
# probe, so that two runs on one machine compute the same numbers (a probe under load would pick either layout,
# and the layouts round differently). None: that rule; True / False: fixed (tests and benchmarks compare the two).
CPU_CHANNELS_LAST: Optional[bool] = None
_CHANNELS_LAST_CPU_VENDORS = ("AMD",)  # cpu_vendor() values


# torch.compile calls it once while tracing and keeps the answer (it cannot trace cpu_vendor's file read).
_constant_while_compiling = getattr(_TORCH_COMPILER, "assume_constant_result", lambda fn: fn)


@_constant_while_compiling
def cpu_channels_last() -> bool:
    """Whether float32 blocks run channels-last on this CPU (CPU_CHANNELS_LAST, else the vendor rule)."""
    if CPU_CHANNELS_LAST is not None:
        return bool(CPU_CHANNELS_LAST)
    return cpu_vendor() in _CHANNELS_LAST_CPU_VENDORS


@functools.lru_cache(maxsize=1)
def cpu_vendor(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The CPU's maker, "AMD", "Intel" or "other": from Linux's vendor_id line, else (Windows, macOS) from
    platform.processor()'s text. Fixed for the process, so asked once, not once per block."""
    text = ""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("vendor_id"):
                    text = line.partition(":")[2]
                    break
    except OSError:
        pass
    if not text:
        text = platform.processor()  # e.g. "AMD64 Family 25 Model 1 Stepping 1, AuthenticAMD" on Windows
    if "AuthenticAMD" in text:
        return "AMD"
    if "GenuineIntel" in text:
        return "Intel"
    return "other"
