"""An independent functional reference of NVlabs StyleGAN2-ADA's generator and discriminator forward
passes, written straight from NVlabs' math for the tests (fp32, noise_mode='const').

It shares no code with mura_aug.gan.networks and is written differently on purpose: resampling by its
definition (zero stuffing, padding, a sum of shifted copies weighted by the filter taps, subsampling), the
convolution-with-resampling by NVlabs' generic fallback order, the modulated convolution one sample at a
time, the minibatch standard deviation group by group. Everything is read from a flat parameter dict with
NVlabs' names ('mapping.fc0.weight', 'synthesis.b8.conv0.affine.bias', 'b4.out.bias', ...).
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def fir_kernel():
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = taps[:, None] * taps[None, :]
    return kernel / kernel.sum()


def lrelu(x, gain=SQRT2, clamp=None):
    x = torch.where(x >= 0, x, 0.2 * x) * gain
    return x if clamp is None else torch.clamp(x, -clamp, clamp)


def fir(x, kernel, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
    """NVlabs' upfirdn2d by its definition. pad = (x_before, x_after, y_before, y_after), negative crops."""
    n, c, h, w = x.shape
    if up > 1:
        stuffed = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
        stuffed[:, :, ::up, ::up] = x
        x = stuffed
    x_before, x_after, y_before, y_after = pad
    x = F.pad(x, [max(x_before, 0), max(x_after, 0), max(y_before, 0), max(y_after, 0)])
    x = x[:, :, max(-y_before, 0):x.shape[2] - max(-y_after, 0), max(-x_before, 0):x.shape[3] - max(-x_after, 0)]
    kh, kw = kernel.shape
    out_h, out_w = x.shape[2] - kh + 1, x.shape[3] - kw + 1
    out = torch.zeros(n, c, out_h, out_w, dtype=x.dtype)
    for a in range(kh):  # true convolution: tap (a, b) meets the pixel (kh-1-a, kw-1-b) places ahead
        for b in range(kw):
            out += kernel[kh - 1 - a, kw - 1 - b] * gain * x[:, :, a:a + out_h, b:b + out_w]
    return out[:, :, ::down, ::down]


def conv_resample(x, weight, up=1, down=1, padding=0, flip_weight=True):
    """NVlabs conv2d_resample in its generic order: [upsample with gain up^2 and pad] -> conv -> [down]."""
    kernel = fir_kernel()
    size = kernel.shape[0]
    before = after = padding
    if up > 1:
        before += (size + up - 1) // 2
        after += (size - up) // 2
    if down > 1:
        before += (size - down + 1) // 2
        after += (size - down) // 2
    if up > 1:
        x = fir(x, kernel, up=up, pad=(before, after, before, after), gain=up * up)
    else:
        x = F.pad(x, [before, after, before, after])
    if not flip_weight:
        weight = weight.flip([2, 3])
    x = F.conv2d(x, weight)
    if down > 1:
        x = fir(x, kernel, down=down)
    return x


def dense(params, name, x, lr_mul=1.0, act=None):
    weight, bias = params[name + ".weight"], params[name + ".bias"]
    y = x @ (weight * (lr_mul / math.sqrt(weight.shape[1]))).t() + bias * lr_mul
    return lrelu(y) if act == "lrelu" else y


def normalize(x):
    return x / torch.sqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def mapping(params, prefix, z, c, lr_mul):
    parts = []
    if z is not None:
        parts.append(normalize(z))
    if c is not None and prefix + "embed.weight" in params:
        parts.append(normalize(dense(params, prefix + "embed", c)))
    x = torch.cat(parts, dim=1)
    layer = 0
    while f"{prefix}fc{layer}.weight" in params:
        x = dense(params, f"{prefix}fc{layer}", x, lr_mul=lr_mul, act="lrelu")
        layer += 1
    return x


def modulated(x, weight, styles, demodulate, up=1, padding=0):
    outs = []
    for i in range(x.shape[0]):
        w = weight * styles[i].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / torch.sqrt(w.pow(2).sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        outs.append(conv_resample(x[i:i + 1], w, up=up, padding=padding, flip_weight=(up == 1)))
    return torch.cat(outs)


def synthesis_layer(params, name, x, w, up, conv_clamp):
    styles = dense(params, name + ".affine", w)
    x = modulated(x, params[name + ".weight"], styles, demodulate=True, up=up, padding=1)
    if name + ".noise_const" in params:
        x = x + params[name + ".noise_const"] * params[name + ".noise_strength"]
    x = x + params[name + ".bias"].reshape(1, -1, 1, 1)
    return lrelu(x, clamp=conv_clamp)


def to_rgb(params, name, x, w, conv_clamp):
    weight = params[name + ".weight"]
    styles = dense(params, name + ".affine", w) / math.sqrt(weight.shape[1])
    x = modulated(x, weight, styles, demodulate=False) + params[name + ".bias"].reshape(1, -1, 1, 1)
    return x if conv_clamp is None else torch.clamp(x, -conv_clamp, conv_clamp)


def generator(params, z, c=None, truncation_psi=1.0, truncation_cutoff=None, conv_clamp=None,
              mapping_lr_mul=0.01):
    """Images [N, C, R, R] of an NVlabs generator with weights `params` (noise_mode='const')."""
    params = {k: v.detach().to(torch.float32) for k, v in params.items()}
    resolutions = sorted({int(m) for m in re.findall(r"^synthesis\.b(\d+)\.", "\n".join(params), re.M)})
    num_ws = 2 * len(resolutions)  # b4: conv1 + torgb; each other block: conv0 + conv1 (torgb shared)
    w = mapping(params, "mapping.", z, c, mapping_lr_mul)
    ws = [w] * num_ws
    if truncation_psi != 1:
        cutoff = num_ws if truncation_cutoff is None else truncation_cutoff
        w_avg = params["mapping.w_avg"]
        ws = [w_avg + truncation_psi * (wi - w_avg) if i < cutoff else wi for i, wi in enumerate(ws)]
    img = None
    for index, res in enumerate(resolutions):
        name = f"synthesis.b{res}"
        if index == 0:
            x = params[name + ".const"].unsqueeze(0).repeat(z.shape[0], 1, 1, 1)
            x = synthesis_layer(params, name + ".conv1", x, ws[0], 1, conv_clamp)
        else:
            x = synthesis_layer(params, name + ".conv0", x, ws[2 * index - 1], 2, conv_clamp)
            x = synthesis_layer(params, name + ".conv1", x, ws[2 * index], 1, conv_clamp)
        rgb = to_rgb(params, name + ".torgb", x, ws[2 * index + 1], conv_clamp)
        img = rgb if img is None else fir(img, fir_kernel(), up=2, pad=(2, 1, 2, 1), gain=4) + rgb
    return img


def conv_layer(params, name, x, down=1, act_gain=SQRT2, clamp=None, lrelu_act=True):
    weight = params[name + ".weight"]
    kernel_size = weight.shape[2]
    weight = weight / math.sqrt(weight.shape[1] * kernel_size * kernel_size)
    x = conv_resample(x, weight, down=down, padding=kernel_size // 2)
    if name + ".bias" in params:
        x = x + params[name + ".bias"].reshape(1, -1, 1, 1)
    if lrelu_act:
        return lrelu(x, gain=act_gain, clamp=clamp)
    x = x * act_gain
    return x if clamp is None else torch.clamp(x, -clamp, clamp)


def minibatch_std(x, group_size=4):
    n = x.shape[0]
    group = min(group_size, n)
    members = n // group  # sample i belongs to the group of all samples with the same i % members
    stds = torch.zeros(n)
    for j in range(members):
        idx = list(range(j, n, members))
        sel = x[idx]
        std = torch.sqrt(((sel - sel.mean(dim=0)) ** 2).mean(dim=0) + 1e-8).mean()
        stds[idx] = std
    return torch.cat([x, stds.reshape(n, 1, 1, 1).expand(n, 1, x.shape[2], x.shape[3])], dim=1)


def discriminator(params, img, c=None, conv_clamp=None, mbstd_group_size=4, mapping_lr_mul=0.01):
    """Logits [N, 1] of an NVlabs 'resnet' discriminator with weights `params`."""
    params = {k: v.detach().to(torch.float32) for k, v in params.items()}
    resolutions = sorted({int(m) for m in re.findall(r"^b(\d+)\.(?:conv0|fromrgb)", "\n".join(params), re.M)},
                         reverse=True)
    half = math.sqrt(0.5)
    x = conv_layer(params, f"b{resolutions[0]}.fromrgb", img, clamp=conv_clamp)
    for res in resolutions:
        skip = conv_layer(params, f"b{res}.skip", x, down=2, act_gain=half, lrelu_act=False)
        x = conv_layer(params, f"b{res}.conv0", x, clamp=conv_clamp)
        x = conv_layer(params, f"b{res}.conv1", x, down=2, act_gain=SQRT2 * half,
                       clamp=None if conv_clamp is None else conv_clamp * half)
        x = skip + x
    x = minibatch_std(x, mbstd_group_size)
    x = conv_layer(params, "b4.conv", x, clamp=conv_clamp)
    x = dense(params, "b4.fc", x.flatten(1), act="lrelu")
    x = dense(params, "b4.out", x)
    if c is not None and "mapping.embed.weight" in params:
        cmap = mapping(params, "mapping.", None, c, mapping_lr_mul)
        x = (x * cmap).sum(dim=1, keepdim=True) / math.sqrt(cmap.shape[1])
    return x
