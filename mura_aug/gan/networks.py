"""StyleGAN2-ADA generator and discriminator in plain PyTorch, weight-compatible with NVlabs.

The modules below have the constructor keyword arguments, call signatures, attributes and parameter /
buffer names and shapes of NVlabs' `training/networks.py` (stylegan2-ada-pytorch), so the state of an
official pickle copies over by name (see `mura_aug.gan.nvlabs`). They are written as the paper describes the
model (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN"): mapping network,
modulated and demodulated convolutions, noise inputs, skip generator, residual discriminator with
minibatch standard deviation. How the low-level pieces are computed (FIR resampling, resampling
convolutions, bias + activation + clamp, the CPU's Winograd path, half precision on CUDA) is
`mura_aug.gan.ops`: no custom CUDA ops, the same code on CPU and CUDA and on any torch >= 2.1.

Conventions carried over from NVlabs because the stored weights depend on them:
- Equalised learning rate: weights are stored as N(0, 1) / lr_multiplier and scaled at run time by
  lr_multiplier / sqrt(fan_in); biases by lr_multiplier.
- Resampling filter [1, 3, 3, 1] (outer product, normalised to sum 1), gain up**2 when upsampling.
- Convolutions that upsample use true convolution (flip_weight=False); all others use correlation.
- One difference in the API: like NVlabs' later stylegan3 code, `G.mapping(..., update_emas=True)` is what
  updates `w_avg` (the 2020 code updated it on every training-mode call unless `skip_w_avg_update`).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch

from mura_aug.errors import UserError
from mura_aug.gan import ops
from mura_aug.settings import check_resolution

NOISE_MODES = ("random", "const", "none")


# ----------------------------------------------------------------------------------------------------------
# Constructor-argument bookkeeping


def _plain(value):
    """A JSON-able copy of a constructor argument (tuples -> lists, numpy scalars -> Python numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"constructor argument {value!r} of type {type(value).__name__} is not JSON-able")


# ----------------------------------------------------------------------------------------------------------
# The modulated convolution (the paper's eq. 1-3: modulate, convolve, demodulate)


def modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, resample_filter=None,
                     demodulate=True, flip_weight=True, fused_modconv=True, bias=None, out_gain=1.0):
    """StyleGAN2's modulated convolution, followed by `+ noise + bias` and a final `* out_gain`.
    x [N, I, H, W], weight [O, I, k, k], styles [N, I], bias [O]. out_gain (> 0) lets the caller fold the
    activation gain in here (lrelu(g * x) == g * lrelu(x)), saving passes over the activations.
    fused: one grouped convolution with per-sample weights (fast for inference); not fused: scale the
    activations before and after a shared-weight convolution (fast for training, big batches)."""
    batch = x.shape[0]
    out_channels, in_channels, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        # Pre-normalise so the per-sample weights cannot overflow in half precision (scale cancels out).
        weight = weight * (1 / math.sqrt(in_channels * kh * kw)
                           / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    scale = None  # per-sample, per-output-channel factor after the convolution, [N, O]
    if demodulate:
        # 1 / |w_n,o| of the modulated weight w_n,o,i,k = weight_o,i,k * s_n,i, without building the
        # [N, O, I, k, k] tensor: |w_n,o|^2 = sum_i s_n,i^2 * sum_k weight_o,i,k^2 (a small matmul). With
        # out_gain g inside: g / sqrt(q + eps) = 1 / sqrt(q / g^2 + eps / g^2), one addmm and one rsqrt where
        # matmul, add, rsqrt and multiply were four ops (and four backward nodes) in every layer of every pass.
        inverse_square_gain = 1.0 / (out_gain * out_gain)
        scale = torch.addmm(_constant(1e-8 * inverse_square_gain, styles), styles.square(),
                            weight.square().sum(dim=[2, 3]).t(), alpha=inverse_square_gain).rsqrt()
    # out_gain * (noise + bias), each term scaled while it is small ([N, 1, H, W] and [1, O, 1, 1]); the noise's
    # gain joins its sum with the output below where that is an op fewer.
    noise_gain = 1.0
    if noise is not None:
        noise = noise.to(x.dtype)
        noise_gain = out_gain
    if bias is not None:
        bias = bias.to(x.dtype).reshape(1, -1, 1, 1)
        bias = bias * out_gain if out_gain != 1 else bias
    if scale is None and out_gain != 1:
        styles = styles * out_gain
    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(batch, -1, 1, 1)
        x = ops.conv2d_resample(x, weight.to(x.dtype), f=resample_filter, up=up, padding=padding,
                            flip_weight=flip_weight)
        if scale is not None:
            scale = scale.to(x.dtype).reshape(batch, -1, 1, 1)
            x = x * scale if bias is None else torch.addcmul(bias, x, scale)
        elif bias is not None:
            x = x + bias
        # Two passes over the output (scale-and-bias, noise) where a broadcast sum of noise and bias took three.
        return x if noise is None else torch.add(x, noise, alpha=noise_gain)
    if noise is not None and noise_gain != 1:
        noise = noise * noise_gain
    shift = noise if bias is None else bias if noise is None else noise + bias
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)  # per-sample weights [N, O, I, k, k]
    if scale is not None:
        w = w * scale.reshape(batch, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_channels, kh, kw)
    x = ops.conv2d_resample(x, w.to(x.dtype), f=resample_filter, up=up, padding=padding, groups=batch,
                        flip_weight=flip_weight)
    x = x.reshape(batch, -1, *x.shape[2:])
    return x if shift is None else x + shift



_constants: dict = {}


def _constant(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor holding `value` on like's device and in its dtype, made once (an addmm's additive term)."""
    key = (value, like.device, like.dtype)
    if key not in _constants:
        _constants[key] = torch.tensor(value, device=like.device, dtype=like.dtype)
    return _constants[key]


# ----------------------------------------------------------------------------------------------------------
# Layers


class FullyConnectedLayer(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1.0,
                 bias_init=0.0):
        super().__init__()
        self.init_kwargs = _plain(dict(in_features=in_features, out_features=out_features, bias=bias,
                                       activation=activation, lr_multiplier=lr_multiplier, bias_init=bias_init))
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)  # equalised learning rate
        self.bias_gain = lr_multiplier

    def forward(self, x, gain=1.0):
        """x @ (weight * weight_gain)^T + bias * bias_gain, activated, all times `gain` (> 0; ToRGB's weight gain
        rides here). The gains are addmm's scalar factors rather than products of their own: a tensor op
        fewer per gain, forward and backward, in every style affine of every training step."""
        w = self.weight.to(x.dtype)
        if self.activation == "linear" and self.bias is not None:
            return torch.addmm(self.bias.to(x.dtype).unsqueeze(0), x, w.t(), beta=self.bias_gain * gain,
                               alpha=self.weight_gain * gain)
        if self.activation == "linear":
            return x.matmul(w.t()) * (self.weight_gain * gain)
        # act(g * y) == g * act(y) for the piecewise-linear activations (g > 0): the activation's gain joins
        # the others, so what is left is the bare activation.
        act_gain = ops.ACTIVATION_GAINS[self.activation] * gain
        if self.bias is None:
            y = x.matmul(w.t()) * (self.weight_gain * act_gain)
        else:
            y = torch.addmm(self.bias.to(x.dtype).unsqueeze(0), x, w.t(), beta=self.bias_gain * act_gain,
                            alpha=self.weight_gain * act_gain)
            if y.dtype != self.bias.dtype:
                # Under autocast addmm answers in half precision; the bias used to be added afterwards, in float32,
                # and the activated output (the mapping network's w) stays float32 as it was.
                y = y.to(torch.promote_types(y.dtype, self.bias.dtype))
        return ops.activate(y, self.activation, None)


class Conv2dLayer(torch.nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        self.init_kwargs = _plain(dict(in_channels=in_channels, out_channels=out_channels,
                                       kernel_size=kernel_size, bias=bias, activation=activation, up=up,
                                       down=down, resample_filter=resample_filter, conv_clamp=conv_clamp,
                                       channels_last=channels_last, trainable=trainable))
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = ops.ACTIVATION_GAINS[activation]
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        bias_value = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias_value) if bias else None
        else:  # frozen layers (transfer learning with freeze_layers) keep their weights as buffers, like NVlabs
            self.register_buffer("weight", weight)
            if bias:
                self.register_buffer("bias", bias_value)
            else:
                self.bias = None

    def forward(self, x, gain=1):
        # The activation gain (times `gain`, > 0) goes into weight and bias: act(g * y) == g * act(y) for the
        # piecewise-linear activations, and the bias rides inside the convolution. Fewer passes over x.
        scale = self.act_gain * gain
        w = self.weight * (self.weight_gain * scale)
        b = self.bias * scale if self.bias is not None else None
        x = ops.conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1),
                            bias=None if b is None else b.to(x.dtype))
        return ops.activate(x, self.activation, self.conv_clamp * gain if self.conv_clamp is not None else None)


# ----------------------------------------------------------------------------------------------------------
# Generator


class MappingNetwork(torch.nn.Module):
    """z (normalised) [+ embedded, normalised c] -> num_layers FC layers -> w, broadcast to num_ws."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.init_kwargs = _plain(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws,
                                       num_layers=num_layers, embed_features=embed_features,
                                       layer_features=layer_features, activation=activation,
                                       lr_multiplier=lr_multiplier, w_avg_beta=w_avg_beta))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if embed_features is None:
            embed_features = w_dim
        if c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        x = None
        if self.z_dim > 0:
            _check_shape(z, self.z_dim, "z")
            x = ops.normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            _check_shape(c, self.c_dim, "c")
            y = ops.normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg_beta is not None:
            # w_avg <- beta * w_avg + (1 - beta) * batch mean; the truncation trick pulls towards it.
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if self.w_avg_beta is None:
                raise ValueError("truncation needs w_avg, but this mapping network was built with w_avg_beta=None")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                head = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
                x = torch.cat([head, x[:, truncation_cutoff:]], dim=1)
        return x


def _check_shape(t, dim, name):
    if t is None or t.ndim != 2 or t.shape[1] != dim:
        shape = None if t is None else tuple(t.shape)
        raise ValueError(f"{name} must have shape [batch, {dim}], got {shape}")


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv (optionally upsampling x2) + per-pixel noise + bias + lrelu + clamp."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False):
        super().__init__()
        self.init_kwargs = _plain(dict(in_channels=in_channels, out_channels=out_channels, w_dim=w_dim,
                                       resolution=resolution, kernel_size=kernel_size, up=up,
                                       use_noise=use_noise, activation=activation,
                                       resample_filter=resample_filter, conv_clamp=conv_clamp,
                                       channels_last=channels_last))
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = ops.ACTIVATION_GAINS[activation]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)  # styles start around 1
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="random", fused_modconv=True, gain=1):
        if noise_mode not in NOISE_MODES:
            raise UserError(f"noise_mode={noise_mode!r} is not one of {NOISE_MODES}.",
                            "Use 'const' for reproducible images, 'random' for fresh noise, 'none' for none.")
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) \
                * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1),
                             fused_modconv=fused_modconv, bias=self.bias, out_gain=self.act_gain * gain)
        return ops.activate(x, self.activation, self.conv_clamp * gain if self.conv_clamp is not None else None)


class ToRGBLayer(torch.nn.Module):
    """Modulated (not demodulated) 1x1 conv to img_channels."""

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.init_kwargs = _plain(dict(in_channels=in_channels, out_channels=out_channels, w_dim=w_dim,
                                       kernel_size=kernel_size, conv_clamp=conv_clamp, channels_last=channels_last))
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w, fused_modconv=True):
        styles = self.affine(w, gain=self.weight_gain)
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv, bias=self.bias)
        return ops.clamp_to(x, self.conv_clamp)


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network ('skip' architecture: every block adds its ToRGB output to
    the upsampled image of the block below)."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture="skip",
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 **layer_kwargs):
        super().__init__()
        if architecture != "skip":
            raise UserError(f"Generator architecture {architecture!r} is not supported by mura_aug.",
                            "Use architecture='skip' (the StyleGAN2-ADA default for the generator).")
        self.init_kwargs = _plain(dict(in_channels=in_channels, out_channels=out_channels, w_dim=w_dim,
                                       resolution=resolution, img_channels=img_channels, is_last=is_last,
                                       architecture=architecture, resample_filter=resample_filter,
                                       conv_clamp=conv_clamp, use_fp16=use_fp16,
                                       fp16_channels_last=fp16_channels_last, **layer_kwargs))
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                channels_last=self.channels_last)
        self.num_torgb += 1

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, **layer_kwargs):
        w_iter = iter(ws.unbind(dim=1))
        dtype = ops.block_dtype(self.use_fp16, ws.device, force_fp32)
        memory_format = ops.block_memory_format(self.channels_last, dtype, ws.device)
        if fused_modconv is None:
            # Per-sample weights (one grouped conv) pay off for inference on CUDA, as in NVlabs. Training,
            # and CPU batches (measured 1.5x faster at 128 px, batch 8), run faster with one shared conv.
            batch = ws.shape[0]
            fused_modconv = (not self.training) and (dtype == torch.float32 or batch == 1) \
                and (ws.device.type == "cuda" or batch == 1)
        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = x.contiguous(memory_format=memory_format)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
            x = self.conv1(x, next(w_iter), fused_modconv=fused_modconv, **layer_kwargs)
        if img is not None:
            img = ops.upsample2d(img, self.resample_filter)
        y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
        y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(torch.nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=0,
                 **block_kwargs):
        super().__init__()
        img_resolution = check_resolution(img_resolution, "Generator img_resolution")
        self.init_kwargs = _plain(dict(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                       channel_base=channel_base, channel_max=channel_max,
                                       num_fp16_res=num_fp16_res, **block_kwargs))
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(2, self.img_resolution_log2 + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim,
                                   resolution=res, img_channels=img_channels, is_last=is_last,
                                   use_fp16=(res >= fp16_resolution), **block_kwargs)
            # Consecutive blocks share one w: a block's ToRGB w is the next block's conv0 w.
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws, **block_kwargs):
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"ws must have shape [batch, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, block_ws, **block_kwargs)
        return img


class Generator(torch.nn.Module):
    """StyleGAN2 generator: G(z, c) -> NCHW float images in about [-1, 1]."""

    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs={}, synthesis_kwargs={}):
        super().__init__()
        self.init_kwargs = _plain(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                       img_channels=img_channels, mapping_kwargs=dict(mapping_kwargs),
                                       synthesis_kwargs=dict(synthesis_kwargs)))
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **copy.deepcopy(dict(synthesis_kwargs)))
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws,
                                      **copy.deepcopy(dict(mapping_kwargs)))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, **synthesis_kwargs)


# ----------------------------------------------------------------------------------------------------------
# Discriminator


class DiscriminatorBlock(torch.nn.Module):
    """One resolution of the 'resnet' discriminator: (FromRGB) -> conv0 -> conv1 (down x2), plus a 1x1
    downsampling skip, both halves scaled by sqrt(0.5)."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture="resnet", activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        super().__init__()
        if architecture != "resnet":
            raise UserError(f"Discriminator architecture {architecture!r} is not supported by mura_aug.",
                            "Use architecture='resnet' (the StyleGAN2-ADA default for the discriminator).")
        if in_channels not in (0, tmp_channels):
            raise ValueError("DiscriminatorBlock: in_channels must be 0 or tmp_channels")
        self.init_kwargs = _plain(dict(in_channels=in_channels, tmp_channels=tmp_channels,
                                       out_channels=out_channels, resolution=resolution, img_channels=img_channels,
                                       first_layer_idx=first_layer_idx, architecture=architecture,
                                       activation=activation, resample_filter=resample_filter,
                                       conv_clamp=conv_clamp, use_fp16=use_fp16,
                                       fp16_channels_last=fp16_channels_last, freeze_layers=freeze_layers))
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", ops.setup_filter(resample_filter))
        self.num_layers = 0

        def trainable():  # the first `freeze_layers` layers of D (counted from the image side) stay fixed
            trainable_flag = first_layer_idx + self.num_layers >= freeze_layers
            self.num_layers += 1
            return trainable_flag

        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=trainable(), conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=trainable(), conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=trainable(), resample_filter=resample_filter, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                trainable=trainable(), resample_filter=resample_filter)

    def forward(self, x, img, force_fp32=False):
        device = (x if x is not None else img).device
        dtype = ops.block_dtype(self.use_fp16, device, force_fp32)
        memory_format = ops.block_memory_format(self.channels_last, dtype, device)
        if x is not None:
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0:
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = None
        # Python floats, not numpy's (the same double): torch.compile cannot branch on a numpy number in clamp_to
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x, img


class MinibatchStdLayer(torch.nn.Module):
    """Appends the standard deviation across groups of `group_size` samples as extra feature maps, so D can
    see when G's samples lack variety."""

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.init_kwargs = _plain(dict(group_size=group_size, num_channels=num_channels))
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        group = min(self.group_size, n) if self.group_size is not None else n
        if n % group:
            raise UserError(f"The discriminator got a batch of {n} images, not a multiple of its minibatch-std "
                            f"group size {group}.",
                            f"Use a batch (per GPU) that is a multiple of {group}, or a smaller mbstd_group_size.")
        f = self.num_channels
        y = x.reshape(group, -1, f, c // f, h, w)  # [G, n/G, F, C/F, H, W]
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over each group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n/G, F] mean std over channels and pixels
        y = y.reshape(-1, f, 1, 1).repeat(group, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(torch.nn.Module):
    """The 4x4 head: mbstd -> conv -> fc -> out; projection with the class embedding when conditional."""

    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture="resnet", mbstd_group_size=4,
                 mbstd_num_channels=1, activation="lrelu", conv_clamp=None):
        super().__init__()
        self.init_kwargs = _plain(dict(in_channels=in_channels, cmap_dim=cmap_dim, resolution=resolution,
                                       img_channels=img_channels, architecture=architecture,
                                       mbstd_group_size=mbstd_group_size, mbstd_num_channels=mbstd_num_channels,
                                       activation=activation, conv_clamp=conv_clamp))
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if cmap is not None:  # projection discriminator: score = <features, class embedding> / sqrt(dim)
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(torch.nn.Module):
    """StyleGAN2 'resnet' discriminator: D(img, c) -> logits [N, 1]."""

    def __init__(self, c_dim, img_resolution, img_channels, architecture="resnet", channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs={},
                 mapping_kwargs={}, epilogue_kwargs={}):
        super().__init__()
        img_resolution = check_resolution(img_resolution, "Discriminator img_resolution")
        self.init_kwargs = _plain(dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
                                       architecture=architecture, channel_base=channel_base,
                                       channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
                                       cmap_dim=cmap_dim, block_kwargs=dict(block_kwargs),
                                       mapping_kwargs=dict(mapping_kwargs), epilogue_kwargs=dict(epilogue_kwargs)))
        self.c_dim = c_dim
        self.img_resolution = img_resolution
        self.img_resolution_log2 = int(np.log2(img_resolution))
        self.img_channels = img_channels
        self.block_resolutions = [2 ** i for i in range(self.img_resolution_log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        fp16_resolution = max(2 ** (self.img_resolution_log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if c_dim == 0:
            cmap_dim = 0
        common = dict(img_channels=img_channels, architecture=architecture, conv_clamp=conv_clamp)
        layer_idx = 0
        for res in self.block_resolutions:
            block = DiscriminatorBlock(channels[res] if res < img_resolution else 0, channels[res],
                                       channels[res // 2], resolution=res, first_layer_idx=layer_idx,
                                       use_fp16=(res >= fp16_resolution), **dict(block_kwargs), **common)
            setattr(self, f"b{res}", block)
            layer_idx += block.num_layers
        if c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **dict(mapping_kwargs))
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **dict(epilogue_kwargs),
                                        **common)

    def forward(self, img, c, update_emas=False, **block_kwargs):
        del update_emas  # accepted for call compatibility with NVlabs' stylegan3 code; D has no averages
        if img.ndim != 4 or tuple(img.shape[1:]) != (self.img_channels, self.img_resolution, self.img_resolution):
            raise ValueError(f"D expects images [batch, {self.img_channels}, {self.img_resolution}, "
                             f"{self.img_resolution}], got {tuple(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, **block_kwargs)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)


def set_fp16_blocks(network: torch.nn.Module, enabled: bool) -> int:
    """Let the blocks of `network` built with use_fp16 (NVIDIA's top resolutions) run in float16 on CUDA, or
    keep every block in float32 (`enabled=False`: amp off, or bfloat16 autocast, under which float16 blocks
    would only add casts). The weights are the same either way; returns how many blocks were built fp16."""
    count = 0
    for module in network.modules():
        if isinstance(module, (SynthesisBlock, DiscriminatorBlock)) and module.init_kwargs.get("use_fp16"):
            module.use_fp16 = bool(enabled)
            count += 1
    return count
