"""Adaptive discriminator augmentation (ADA): the augmentation pipeline and the controller of its strength.

`AugmentPipe` augments a batch of NCHW images in about [-1, 1] the way StyleGAN2-ADA does (Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data"): every operation is applied to each sample
independently with probability `p * multiplier`, its parameters drawn at random. Everything is plain, twice
differentiable PyTorch (the R1 penalty differentiates through the pipe), so it runs on CPU and CUDA alike:

* pixel blitting: x-flip, rotation by a multiple of 90 degrees, integer translation. These only move pixels,
  so they are done exactly by indexing (no interpolation, no blur);
* general geometric: isotropic scaling, arbitrary rotation, anisotropic scaling, fractional translation. They
  are composed (together with the blit of the same sample) into one affine map per sample and resampled once,
  bilinearly, with mirrored borders, on a 2x finer grid averaged back down (anti-aliasing when shrinking);
* colour: brightness, contrast, luma flip, hue rotation, saturation, as one 4x4 colour matrix per sample.

A sample that draws no operation comes out bit-identical; only the samples that need resampling are
resampled, so at the small p ADA usually settles at (0.1-0.4) most of the batch costs nothing.

All random numbers come from torch's global generator of the images' device, drawn in the same amounts
whatever p is, so a training loop that saves and restores the RNG state resumes bit for bit.

`AdaController` is the adaptive heuristic: it watches r_t = E[sign(D(real))] and moves p up when the
discriminator is too sure of the real images (overfitting), down otherwise.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from mura_aug.errors import UserError

# --------------------------------------------------------------------------------------------------------------
# Presets. Each value is the multiplier of p for that operation (1 = applied with probability p).

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)

AUGMENT_PRESETS = {
    # NVlabs' default for natural colour photographs.
    "bgc": {**_BLIT, **_GEOM, **_COLOR},
    # Blit + geometric only.
    "bg": {**_BLIT, **_GEOM},
    # Radiographs (the default here). Kept: every blit and geometric operation (mirror images and rotated
    # views are normal in MURA: left and right limbs, hands photographed at any angle, patients positioned
    # differently) and brightness / contrast (exposure and detector settings vary from study to study).
    # Dropped: hue and saturation, which do nothing to a grey pixel (grey lies on the luma axis they rotate
    # around and scale away from), so they only cost time; and luma flip, which turns bone white->black and
    # air black->white. An inverted radiograph is not an X-ray any more, and at the high p that small X-ray
    # sets drive ADA to, the discriminator would spend capacity on negatives (the risk of a "leaking"
    # augmentation grows with p; the ADA paper shows colour ops leak first).
    "xray": {**_BLIT, **_GEOM, "brightness": 1, "contrast": 1},
    # No operation at all (the pipe is the identity); use --aug noaug to skip it completely.
    "none": {},
}
DEFAULT_PRESET = "xray"

# The operations whose probabilities AugmentPipe accepts, and its other (strength) parameters.
_OPERATIONS = tuple(_BLIT) + tuple(_GEOM) + tuple(_COLOR)
# NVlabs operations this pipe does not implement; accepted only with probability 0 (as in NVlabs pickles).
_UNSUPPORTED = ("imgfilter", "noise", "cutout")
_UNSUPPORTED_STRENGTHS = ("imgfilter_bands", "imgfilter_std", "noise_std", "cutout_size")

_LUMA_AXIS = (1 / math.sqrt(3),) * 3  # unit vector of grey in RGB


# The per-sample matrices are a few dozen numbers per image: they are built in float64 numpy on the CPU, where
# each step costs about a microsecond, and only the finished maps go to the images' device. Built from torch
# tensors, the same matrices took ~570 tensor operations per training step of a tiny network, ~15 % of all the
# operators a CPU step dispatched.


def _affine2d(a, b, c, d, tx, ty):
    """[n, 3, 3] matrices [[a, b, tx], [c, d, ty], [0, 0, 1]] from [n] arrays."""
    zero, one = np.zeros_like(a), np.ones_like(a)
    return np.stack([a, b, tx, c, d, ty, zero, zero, one], axis=1).reshape(-1, 3, 3)


def _translate2d(tx, ty):
    zero, one = np.zeros_like(tx), np.ones_like(tx)
    return _affine2d(one, zero, zero, one, tx, ty)


def _scale2d(sx, sy):
    zero = np.zeros_like(sx)
    return _affine2d(sx, zero, zero, sy, zero, zero)


def _rotate2d(theta):
    c, s = np.cos(theta), np.sin(theta)
    zero = np.zeros_like(theta)
    return _affine2d(c, -s, s, c, zero, zero)


def _quarter_turns2d(k):
    """Exact rotation matrices for k * 90 degrees (integers, so pixel centres map onto pixel centres)."""
    c = np.array([1.0, 0.0, -1.0, 0.0])[k]
    s = np.array([0.0, 1.0, 0.0, -1.0])[k]
    zero = np.zeros_like(c)
    return _affine2d(c, -s, s, c, zero, zero)


def _compose(factors, n, size=3):
    """The product factors[0] @ factors[1] @ ... ([n, size, size] each); the identity when there are none.
    Starting from the first factor rather than from an identity gives the same values (I @ A == A exactly)."""
    if not factors:
        return np.broadcast_to(np.eye(size), (n, size, size)).copy()
    product = factors[0]
    for factor in factors[1:]:
        product = product @ factor
    return product


class _Draws:
    """One forward pass' random numbers, drawn from torch's generator of the images' device in two blocks of
    fixed size (whatever p and whichever operations are on), read column by column in a fixed order."""

    UNIFORM, NORMAL = 21, 7  # columns: what all thirteen operations of _geometry and _color_matrix use

    def __init__(self, n, device):
        self.uniform = torch.rand([n, self.UNIFORM], device=device).cpu().double().numpy()
        self.normal = torch.randn([n, self.NORMAL], device=device).cpu().double().numpy()
        self.used_uniform = self.used_normal = 0

    def uniform_column(self):
        self.used_uniform += 1
        return self.uniform[:, self.used_uniform - 1]

    def normal_column(self):
        self.used_normal += 1
        return self.normal[:, self.used_normal - 1]


def _mirror_index(index, size):
    """Fold integer pixel indices into [0, size) by mirroring at the image edges (... C B A | A B C D | D C ...)."""
    period = 2 * size
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - 1 - index, index)


def _mirror_coordinate(coord, size):
    """Fold continuous pixel coordinates (pixel i covers [i-0.5, i+0.5]) into [-0.5, size-0.5] by mirroring."""
    period = 2.0 * size
    folded = torch.remainder(coord + 0.5, period)
    folded = torch.where(folded > size, period - folded, folded)
    return folded - 0.5


def _sample_bilinear(images, coords_x, coords_y):
    """Bilinear lookup of `images` [n, C, H, W] at pixel coordinates [n, h, w] with mirrored borders.

    Written with gather (not grid_sample) because torch < 2.2 cannot differentiate grid_sample's backward,
    which the R1 penalty needs; gather is differentiable to any order.
    """
    n, channels, height, width = images.shape
    out_h, out_w = coords_x.shape[1:]
    x = _mirror_coordinate(coords_x, width)
    y = _mirror_coordinate(coords_y, height)
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = (x - x0).to(images.dtype)
    fy = (y - y0).to(images.dtype)
    # After mirroring, a neighbour outside the image is the edge pixel itself, hence the clamps.
    x0i = x0.long().clamp(0, width - 1)
    x1i = (x0.long() + 1).clamp(0, width - 1)
    y0i = y0.long().clamp(0, height - 1)
    y1i = (y0.long() + 1).clamp(0, height - 1)
    flat = images.reshape(n, channels, height * width)

    def lookup(yi, xi):
        index = (yi * width + xi).reshape(n, 1, out_h * out_w).expand(n, channels, out_h * out_w)
        return flat.gather(2, index).reshape(n, channels, out_h, out_w)

    fx = fx.unsqueeze(1)
    fy = fy.unsqueeze(1)
    top = lookup(y0i, x0i) * (1 - fx) + lookup(y0i, x1i) * fx
    bottom = lookup(y1i, x0i) * (1 - fx) + lookup(y1i, x1i) * fx
    return top * (1 - fy) + bottom * fy


def _output_grid(matrix, height, width, supersample):
    """Input pixel coordinates for every output (sub)pixel, given output->input maps in centred pixel units."""
    device = matrix.device
    step = 1.0 / supersample
    # Centres of the output subpixels, measured from the image centre in pixels.
    xs = (torch.arange(width * supersample, device=device, dtype=torch.float32) + 0.5) * step - width / 2
    ys = (torch.arange(height * supersample, device=device, dtype=torch.float32) + 0.5) * step - height / 2
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=0).reshape(3, -1)
    mapped = matrix.float() @ points  # [n, 3, h*w]
    # Back from centred units to pixel indices (pixel i has its centre at i).
    coords_x = mapped[:, 0].reshape(-1, height * supersample, width * supersample) + width / 2 - 0.5
    coords_y = mapped[:, 1].reshape(-1, height * supersample, width * supersample) + height / 2 - 0.5
    return coords_x, coords_y


def _blit(images, matrix):
    """Exact pixel moves: `matrix` holds only quarter turns, flips and whole-pixel shifts."""
    n, channels, height, width = images.shape
    coords_x, coords_y = _output_grid(matrix, height, width, 1)
    xi = _mirror_index(torch.round(coords_x).long(), width)
    yi = _mirror_index(torch.round(coords_y).long(), height)
    index = (yi * width + xi).reshape(n, 1, height * width).expand(n, channels, height * width)
    return images.reshape(n, channels, height * width).gather(2, index).reshape(n, channels, height, width)


def _resample(images, matrix, supersample):
    n, channels, height, width = images.shape
    coords_x, coords_y = _output_grid(matrix, height, width, supersample)
    fine = _sample_bilinear(images, coords_x, coords_y)
    if supersample == 1:
        return fine
    return torch.nn.functional.avg_pool2d(fine, supersample)


class AugmentPipe(torch.nn.Module):
    """StyleGAN2-ADA augmentation of NCHW image batches in about [-1, 1]; strength in the buffer `p`.

    Each operation's argument is its multiplier of p (0 = off, 1 = applied to a sample with probability p).
    The *_std / *_max arguments set how strong an applied operation is (NVlabs' defaults):
    """

    def __init__(
        self,
        xflip=0.0, rotate90=0.0, xint=0.0,
        xint_max=0.125,       # largest integer translation, fraction of the image size
        scale=0.0, rotate=0.0, aniso=0.0, xfrac=0.0,
        scale_std=0.2,        # std of log2(scale factor)
        rotate_max=1.0,       # largest arbitrary rotation, fraction of 180 degrees
        aniso_std=0.2,        # std of log2(anisotropic scale factor)
        xfrac_std=0.125,      # std of fractional translation, fraction of the image size
        brightness=0.0, contrast=0.0, lumaflip=0.0, hue=0.0, saturation=0.0,
        brightness_std=0.2,   # std of the added brightness, in image units (the range [-1, 1] is 2 wide)
        contrast_std=0.5,     # std of log2(contrast factor)
        hue_max=1.0,          # largest hue rotation, fraction of 180 degrees
        saturation_std=1.0,   # std of log2(saturation factor)
        supersample=2,        # geometric resampling grid is this many times finer than the image (anti-aliasing)
        **unsupported,
    ):
        super().__init__()
        for name, value in unsupported.items():
            if name in _UNSUPPORTED and float(value) != 0:
                raise UserError(f"The augmentation '{name}' (probability multiplier {value}) is not implemented.",
                                f"Use a preset from {sorted(AUGMENT_PRESETS)} or set {name}=0.")
            if name not in _UNSUPPORTED and name not in _UNSUPPORTED_STRENGTHS:
                raise UserError(f"AugmentPipe got an unknown argument '{name}'.",
                                f"Valid operations: {', '.join(_OPERATIONS)} (each a multiplier of p).")
        if int(supersample) < 1:
            raise UserError(f"supersample={supersample} is not a positive integer.", "Use 1 (fast) or 2.")
        self.register_buffer("p", torch.zeros([]))  # overall augmentation probability, 0..1
        self.init_kwargs = dict(
            xflip=float(xflip), rotate90=float(rotate90), xint=float(xint), xint_max=float(xint_max),
            scale=float(scale), rotate=float(rotate), aniso=float(aniso), xfrac=float(xfrac),
            scale_std=float(scale_std), rotate_max=float(rotate_max), aniso_std=float(aniso_std),
            xfrac_std=float(xfrac_std), brightness=float(brightness), contrast=float(contrast),
            lumaflip=float(lumaflip), hue=float(hue), saturation=float(saturation),
            brightness_std=float(brightness_std), contrast_std=float(contrast_std), hue_max=float(hue_max),
            saturation_std=float(saturation_std), supersample=int(supersample))
        for name, value in self.init_kwargs.items():
            setattr(self, name, value)

    def extra_repr(self):
        active = [name for name in _OPERATIONS if getattr(self, name) != 0]
        return f"p={float(self.p):.4f}, ops=[{', '.join(active)}]"

    # ------------------------------------------------------------------------------------------------------
    def _random_rotation(self, geom: list, needs_geom, chance: float, draws: _Draws):
        """Append an arbitrary rotation (up to rotate_max half-turns) to the factors `geom` for each sample with
        probability `chance`; returns which samples now need resampling."""
        theta = (draws.uniform_column() * 2 - 1) * math.pi * self.rotate_max
        applied = draws.uniform_column() < chance
        geom.append(_rotate2d(-np.where(applied, theta, 0.0)))
        return needs_geom | applied

    def _chance(self, multiplier, draws: _Draws):
        """Per-sample booleans: is this operation applied (probability p * multiplier)?"""
        return draws.uniform_column() < self._p * multiplier

    def _geometry(self, n, height, width, draws: _Draws):
        """Output->input maps (in centred pixel units, float64 [n, 3, 3]) of the blit part and of the whole
        transformation, and which samples need each. Operations are composed in NVlabs' order. Every
        operation reads its columns of `draws` whether it is on or not, so the numbers each one gets do not
        depend on the others."""
        blit = []  # factors of the blit map, composed at the end
        needs_blit = np.zeros(n, dtype=bool)
        flip = np.floor(draws.uniform_column() * 2)
        applied = self._chance(self.xflip, draws)
        if self.xflip:
            flip = np.where(applied, flip, 0.0)
            blit.append(_scale2d(1 - 2 * flip, np.ones_like(flip)))
            needs_blit |= flip != 0
        turns = np.floor(draws.uniform_column() * 4).astype(np.int64)
        applied = self._chance(self.rotate90, draws)
        if self.rotate90:
            if height != width:
                raise UserError(f"rotate90 needs square images, got {height}x{width} px.",
                                "Use square training images (prepare makes them square) or set rotate90=0.")
            turns = np.where(applied, turns, 0)
            # Inverse map of a turn by k quarters is a turn by -k quarters.
            blit.append(_quarter_turns2d((4 - turns) % 4))
            needs_blit |= turns != 0
        shift = (np.stack([draws.uniform_column(), draws.uniform_column()], axis=1) * 2 - 1) * self.xint_max
        applied = self._chance(self.xint, draws)
        if self.xint:
            shift = np.where(applied[:, None], shift, 0.0)
            shift_x, shift_y = np.round(shift[:, 0] * width), np.round(shift[:, 1] * height)
            blit.append(_translate2d(-shift_x, -shift_y))
            needs_blit |= (shift_x != 0) | (shift_y != 0)

        geom = []  # factors of the general geometric map
        needs_geom = np.zeros(n, dtype=bool)
        factor = np.exp2(draws.normal_column() * self.scale_std)
        applied = self._chance(self.scale, draws)
        if self.scale:
            factor = np.where(applied, factor, 1.0)
            geom.append(_scale2d(1 / factor, 1 / factor))
            needs_geom |= applied
        # The arbitrary rotation happens twice, before and after the anisotropic scaling, so that the latter
        # stretches along a random axis; each gets the probability that makes "at least one" equal p*rotate.
        rotate_chance = 1 - math.sqrt(max(1 - self.rotate * self._p, 0.0)) if self.rotate else 0.0
        needs_geom = self._random_rotation(geom if self.rotate else [], needs_geom, rotate_chance, draws)
        factor = np.exp2(draws.normal_column() * self.aniso_std)
        applied = self._chance(self.aniso, draws)
        if self.aniso:
            factor = np.where(applied, factor, 1.0)
            geom.append(_scale2d(1 / factor, factor))
            needs_geom |= applied
        needs_geom = self._random_rotation(geom if self.rotate else [], needs_geom, rotate_chance, draws)
        shift = np.stack([draws.normal_column(), draws.normal_column()], axis=1) * self.xfrac_std
        applied = self._chance(self.xfrac, draws)
        if self.xfrac:
            shift = np.where(applied[:, None], shift, 0.0)
            geom.append(_translate2d(-shift[:, 0] * width, -shift[:, 1] * height))
            needs_geom |= applied
        blit, geom = _compose(blit, n), _compose(geom, n)
        return blit, blit @ geom, needs_blit & ~needs_geom, needs_geom

    def _color_matrix(self, n, draws: _Draws):
        """4x4 colour matrices (float64 [n, 4, 4]) acting on homogeneous RGB, and which samples they change."""
        matrix = _compose([], n, 4)
        changed = np.zeros(n, dtype=bool)
        axis = np.array([*_LUMA_AXIS, 0.0])
        axis_outer = np.outer(axis, axis)  # projector onto grey
        offset = draws.normal_column() * self.brightness_std
        applied = self._chance(self.brightness, draws)
        if self.brightness:
            step = _compose([], n, 4)
            step[:, :3, 3] = np.where(applied, offset, 0.0)[:, None]
            matrix = step @ matrix
            changed |= applied
        factor = np.exp2(draws.normal_column() * self.contrast_std)
        applied = self._chance(self.contrast, draws)
        if self.contrast:
            step = _compose([], n, 4)
            step[:, :3, :3] *= np.where(applied, factor, 1.0)[:, None, None]
            matrix = step @ matrix
            changed |= applied
        flip = np.floor(draws.uniform_column() * 2)
        applied = self._chance(self.lumaflip, draws)
        if self.lumaflip:
            flip = np.where(applied, flip, 0.0)
            # Householder reflection through the plane orthogonal to grey: inverts luminance, keeps hue.
            matrix = (np.eye(4) - 2 * axis_outer * flip[:, None, None]) @ matrix
            changed |= flip != 0
        theta = (draws.uniform_column() * 2 - 1) * math.pi * self.hue_max
        applied = self._chance(self.hue, draws)
        if self.hue:
            theta = np.where(applied, theta, 0.0)
            # Rotation about the grey axis (Rodrigues' formula).
            a = _LUMA_AXIS[0]
            cross = np.array([[0.0, -a, a], [a, 0.0, -a], [-a, a, 0.0]])
            cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
            rotation = _compose([], n, 4)
            rotation[:, :3, :3] = cos * np.eye(3) + sin * cross + (1 - cos) * axis_outer[:3, :3]
            matrix = rotation @ matrix
            changed |= applied
        factor = np.exp2(draws.normal_column() * self.saturation_std)
        applied = self._chance(self.saturation, draws)
        if self.saturation:
            factor = np.where(applied, factor, 1.0)
            step = axis_outer + (np.eye(4) - axis_outer) * factor[:, None, None]
            step[:, 3, 3] = 1
            matrix = step @ matrix
            changed |= applied
        return matrix, changed

    @staticmethod
    def _apply_color(images, matrix):
        n, channels = images.shape[:2]
        matrix = matrix.to(images.dtype)
        if channels == 3:
            out = torch.einsum("nij,njhw->nihw", matrix[:, :3, :3], images)
            return out + matrix[:, :3, 3].view(n, 3, 1, 1)
        if channels == 1:
            # One grey channel: the average of what the matrix does to R, G and B of a grey pixel.
            rows = matrix[:, :3, :].mean(dim=1)  # [n, 4]
            return images * rows[:, :3].sum(dim=1).view(n, 1, 1, 1) + rows[:, 3].view(n, 1, 1, 1)
        raise UserError(f"Colour augmentation needs 1 or 3 image channels, got {channels}.",
                        "Use the 'bg' preset for other channel counts.")

    # ------------------------------------------------------------------------------------------------------
    def forward(self, images):
        if images.ndim != 4:
            raise UserError(f"AugmentPipe expects NCHW image batches, got a tensor of shape {list(images.shape)}.",
                            "Pass images as [batch, channels, height, width].")
        # Pixel coordinates must not be rounded to half precision (at 256 px fp16 steps are 0.125 px), so the
        # pipe ignores any surrounding autocast and works in the images' own dtype.
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self._augment(images)

    def _augment(self, images):
        n, _channels, height, width = images.shape
        device = images.device
        geometric, colour = any(getattr(self, name) for name in _OPERATIONS[:7]), \
            any(getattr(self, name) for name in _OPERATIONS[7:])
        if not (geometric or colour):
            return images
        draws = _Draws(n, device)
        self._p = float(self.p)  # one read of the buffer per pass (on a GPU, one sync) for all the chances

        def to_device(array):
            return torch.from_numpy(array).to(device=device, dtype=torch.float32)

        # The maps are drawn whether or not the geometric or colour part is on, so that each part's numbers do
        # not depend on the other.
        blit, full, blit_only, needs_geom = self._geometry(n, height, width, draws)
        matrix, changed = self._color_matrix(n, draws)
        if geometric:
            # Only the samples that change are touched; index_copy keeps the gradient path to the rest.
            index = np.flatnonzero(blit_only)
            if len(index):
                index_t = torch.from_numpy(index).to(device)
                images = images.index_copy(0, index_t, _blit(images.index_select(0, index_t), to_device(blit[index])))
            index = np.flatnonzero(needs_geom)
            if len(index):
                index_t = torch.from_numpy(index).to(device)
                resampled = _resample(images.index_select(0, index_t), to_device(full[index]), self.supersample)
                images = images.index_copy(0, index_t, resampled.to(images.dtype))
        if colour:
            index = np.flatnonzero(changed)
            if len(index):
                index_t = torch.from_numpy(index).to(device)
                images = images.index_copy(0, index_t, self._apply_color(images.index_select(0, index_t),
                                                                         to_device(matrix[index])))
        return images


def make_augment_pipe(preset: str = DEFAULT_PRESET, p: float = 0.0, **overrides) -> AugmentPipe:
    """An AugmentPipe from a preset name ('xray' default, 'bgc' NVlabs' default, 'bg', 'none'), starting at
    probability `p`; `overrides` change single arguments (e.g. rotate90=0)."""
    if preset not in AUGMENT_PRESETS:
        raise UserError(f"Unknown augmentation preset '{preset}'.",
                        f"Choose one of: {', '.join(AUGMENT_PRESETS)} ('xray' suits radiographs).")
    pipe = AugmentPipe(**{**AUGMENT_PRESETS[preset], **overrides})
    set_probability(pipe, p)
    return pipe


def set_probability(pipe: AugmentPipe, p: float) -> None:
    if not 0.0 <= float(p) <= 1.0:
        raise UserError(f"Augmentation probability p={p} is outside [0, 1].", "Pass --p between 0 and 1.")
    pipe.p.copy_(torch.as_tensor(float(p)))


AUGMENT_MODES = ("ada", "fixed", "noaug")


def build_augmentation(aug="ada", preset=DEFAULT_PRESET, p=None, target=0.6, interval=4, ada_kimg=500,
                       batch_size=32, device="cpu"):
    """(pipe, controller) for a training run: 'ada' -> pipe at p=0 (or `p`) and an AdaController; 'fixed' ->
    pipe at the fixed `p`, no controller; 'noaug' -> (None, None)."""
    if aug not in AUGMENT_MODES:
        raise UserError(f"Unknown augmentation mode --aug {aug}.", f"Choose one of: {', '.join(AUGMENT_MODES)}.")
    if aug == "noaug":
        return None, None
    if aug == "fixed" and p is None:
        raise UserError("--aug fixed needs the probability to use.", "Add --p P with P between 0 and 1.")
    pipe = make_augment_pipe(preset, p=0.0 if p is None else p).to(device)
    if aug == "fixed":
        return pipe, None
    return pipe, AdaController(target=target, interval=interval, ada_kimg=ada_kimg, batch_size=batch_size)


class AdaController:
    """The ADA heuristic. Call `accumulate(real_logits)` after each discriminator pass on real images and
    `update(pipe)` once per training step; every `interval`-th call of update computes
    r_t = mean(sign(D(real))) over the steps since the last adjustment and moves p by
    sign(r_t - target) * batch_size * interval / (ada_kimg * 1000), clamped to [0, 1], so that p can go
    from 0 to 1 in `ada_kimg` thousand images. r_t above target means D is sure of the real images: it is
    overfitting, so augment more."""

    def __init__(self, target: float = 0.6, interval: int = 4, ada_kimg: float = 500, batch_size: int = 32):
        if not 0.0 < float(target) < 1.0:
            raise UserError(f"ADA target {target} is outside (0, 1).", "Use --target between 0 and 1 (0.6 usual).")
        if int(interval) < 1 or float(ada_kimg) <= 0 or int(batch_size) < 1:
            raise UserError(f"ADA needs interval>=1, ada_kimg>0 and batch_size>=1 (got {interval}, {ada_kimg}, "
                            f"{batch_size}).", "Use the defaults interval=4, ada_kimg=500.")
        self.target = float(target)          # wanted E[sign(D(real))]
        self.interval = int(interval)        # training steps between adjustments
        self.ada_kimg = float(ada_kimg)      # kimg for p to go from 0 to 1 at full speed
        self.batch_size = int(batch_size)    # images per training step (all GPUs together)
        self.sign_sum = 0.0                  # running sum of sign(D(real)) since the last adjustment
        self.sign_count = 0.0                # how many values are in sign_sum
        self.steps = 0                       # update() calls so far
        self.r_t = None                      # the last r_t used for an adjustment

    @property
    def step_size(self) -> float:
        """Change of p per adjustment."""
        return self.batch_size * self.interval / (self.ada_kimg * 1000)

    def accumulate(self, real_logits, count=None) -> None:
        """Add the discriminator's logits on real images (a tensor), or an already averaged sign (a float,
        e.g. the loss' `D_real_sign` stat, weighted by `count`, default 1)."""
        if torch.is_tensor(real_logits):
            signs = real_logits.detach().sign().float()
            self.sign_sum += float(signs.sum())
            self.sign_count += float(signs.numel())
        else:
            weight = 1.0 if count is None else float(count)
            self.sign_sum += float(real_logits) * weight
            self.sign_count += weight

    def update(self, pipe) -> float | None:
        """Count one training step; on every `interval`-th, adjust pipe.p and return r_t (else None)."""
        self.steps += 1
        if self.steps % self.interval != 0 or self.sign_count == 0:
            return None
        r_t = self.sign_sum / self.sign_count
        self.sign_sum, self.sign_count = 0.0, 0.0
        direction = (r_t > self.target) - (r_t < self.target)
        with torch.no_grad():
            pipe.p.copy_((pipe.p + direction * self.step_size).clamp(0.0, 1.0))
        self.r_t = r_t
        return r_t

    def state_dict(self) -> dict:
        return dict(target=self.target, interval=self.interval, ada_kimg=self.ada_kimg,
                    batch_size=self.batch_size, sign_sum=self.sign_sum, sign_count=self.sign_count,
                    steps=self.steps, r_t=self.r_t)

    def load_state_dict(self, state: dict) -> None:
        missing = {"sign_sum", "sign_count", "steps"} - set(state)
        if missing:
            raise UserError(f"The ADA state lacks {sorted(missing)}; the snapshot is not from this version.",
                            "Resume from a state-*.pt written by mura_aug train, or start with --transfer.")
        for name in ("target", "interval", "ada_kimg", "batch_size", "sign_sum", "sign_count", "steps", "r_t"):
            if name in state:
                setattr(self, name, state[name])
