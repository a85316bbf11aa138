"""Training configurations: NVlabs StyleGAN2-ADA's `auto`, `paper256`, `stylegan2`, and a `tiny` one for CPUs.

`make_config(cfg, resolution, ...)` returns a `TrainConfig`: everything the training loop needs to build the
networks (G_kwargs / D_kwargs, the constructor arguments of networks.Generator / Discriminator), the
optimisers (G_opt_kwargs / D_opt_kwargs, keyword arguments of torch.optim.Adam, *already adjusted for lazy
regularisation*), the loss (loss_kwargs for loss.StyleGAN2Loss), the augmentation (`augment`, the keyword
arguments of augment.build_augmentation except batch_size/device), batch sizes, G_ema and regularisation
intervals. It is stored as JSON in each run's training_options.json (`to_dict` / `from_dict`).

The numbers of `auto`, `paper256` and `stylegan2` follow NVlabs' train.py (cfg_specs) for one GPU. Configs
with a reference GPU count (paper256, stylegan2: 8 GPUs) keep their per-GPU batch (`batch_gpu`), so on one
GPU the loop accumulates gradients over batch/batch_gpu rounds, exactly as NVlabs does.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any, Dict, Optional

from mura_aug.errors import UserError
from mura_aug.settings import check_resolution

CONFIG_NAMES = ("auto", "paper256", "stylegan2", "tiny")
AUG_MODES = ("ada", "fixed", "noaug")

# NVlabs' cfg_specs (per-config reference values). mb: total batch; mbstd: minibatch-stddev group; fmaps:
# channel_base / 32768; lrate: Adam learning rate; gamma: R1 weight; ema: G_ema half-life in kimg; ramp: EMA
# ramp-up (fraction of images seen) or None; map: mapping layers; ref_gpus: GPUs the batch was tuned for.
_SPECS = {
    "stylegan2": dict(ref_gpus=8, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=10, ema=10, ramp=None, map=8),
    "paper256": dict(ref_gpus=8, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None, map=8),
}

# The `tiny` config: small enough that a laptop CPU trains 32 px demo radiographs in minutes, big enough to
# learn their layout (a bright bone-like shape on a dark field). Every part of the real method stays on
# (ADA, R1, path length, style mixing, EMA), so tests and demos that use `tiny` run the same code as `auto`.
TINY = dict(
    z_dim=64, w_dim=64,     # latent sizes; 64 is plenty for a few hundred grey images and makes mapping cheap
    map_layers=2,           # NVlabs' `auto` and `cifar` also use 2: deep mapping pays off only on large data
    channel_base=1024,      # channels = min(channel_base / resolution, channel_max): 32 channels up to 32 px,
    channel_max=32,         #   16 at 64 px -> about 9k weights per 3x3 conv (auto: 2.4M)
    batch=8,                # images per step; mbstd groups of 4 still see 2 groups
    mbstd=4,
    lrate=0.005,            # 2x NVlabs' rate for small resolutions: with 0.0025 a 14-kimg demo run showed only
                            #   blobs or bars (bench/results/demo_recipe.md); small nets tolerate the larger step
    ema_kimg=1.0,           # G_ema half-life: a demo run lasts ~5-30 kimg, so NVlabs' 10 kimg would lag behind
    ema_rampup=0.05,        # and during the first 20 kimg the half-life is 5% of the images seen (NVlabs' auto)
    ada_kimg=20,            # p may go 0 -> 1 in 20 kimg: a 500-kimg speed would barely move p in a demo run,
                            #   while ~100 demo images make D overfit within a few kimg
    gamma_coef=0.02,        # R1 weight = gamma_coef * resolution^2 / batch (px^-2): 2.56 at 32 px, batch 8
)
# The R1 weight has the shape of NVlabs' auto heuristic (0.0002 * resolution^2 / batch) with a 100x larger
# coefficient. With the heuristic's 0.0256 at 32 px, a 30-kimg CPU run on the 114 positive demo images
# turned grainy once ADA's p fell again (20-30 kimg); with 0.08 (same seed, same data) the fakes stayed
# smooth (bench/results/quality_tiny32.md). The doubled learning rate needs a still stronger R1: at lr 0.005
# and 14 kimg (the demo's length) R1 0.32 and 0.64 left speckle on the fakes, 1.28 and 2.56 gave smooth
# fakes with the shaft, the head and the plate across the top, 2.56 the clearest
# (bench/results/demo_recipe.md).


@dataclasses.dataclass
class TrainConfig:
    cfg: str                    # name of the base config
    resolution: int             # px, square images
    G_kwargs: Dict[str, Any]    # networks.Generator(**G_kwargs)
    D_kwargs: Dict[str, Any]    # networks.Discriminator(**D_kwargs)
    G_opt_kwargs: Dict[str, Any]  # torch.optim.Adam(G.parameters(), **G_opt_kwargs), lazy-reg adjusted
    D_opt_kwargs: Dict[str, Any]  # torch.optim.Adam(D.parameters(), **D_opt_kwargs), lazy-reg adjusted
    loss_kwargs: Dict[str, Any]   # loss.StyleGAN2Loss(G, D, augment_pipe, **loss_kwargs)
    augment: Dict[str, Any]       # augment.build_augmentation(batch_size=..., device=..., **augment)
    batch_size: int             # images per optimiser step (all GPUs together)
    batch_gpu: int              # images per forward pass; batch_size / batch_gpu rounds accumulate gradients
    mbstd_group: int            # minibatch-stddev group size of D (divides batch_gpu)
    lr: float                   # base Adam learning rate before the lazy-regularisation adjustment
    ema_kimg: float             # G_ema half-life in thousands of images
    ema_rampup: Optional[float]  # None, or: half-life at most ema_rampup * images seen so far
    G_reg_interval: Optional[int] = 4   # path-length regularisation every this many steps (None: every step)
    D_reg_interval: Optional[int] = 16  # R1 every this many steps (None: every step)

    # Convenience views of the augmentation settings.
    @property
    def aug(self) -> str:
        return self.augment["aug"]

    def ema_beta(self, cur_nimg: int) -> float:
        """G_ema decay per step after `cur_nimg` images (NVlabs: half-life ema_kimg, optionally ramped up)."""
        ema_nimg = self.ema_kimg * 1000
        if self.ema_rampup is not None:
            ema_nimg = min(ema_nimg, cur_nimg * self.ema_rampup)
        return 0.5 ** (self.batch_size / max(ema_nimg, 1e-8))

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = required - set(data)
        if missing:
            raise UserError(f"The training options lack {sorted(missing)}; they were not written by this "
                            "version of mura_aug.",
                            "Start the run again, or pass --cfg to build a fresh config.")
        return cls(**copy.deepcopy({k: v for k, v in data.items() if k in names}))


def _lazy_adjusted(lr: float, reg_interval: Optional[int]) -> dict:
    """Adam kwargs when the regulariser runs every `reg_interval` steps in an extra optimiser step: the
    minibatch ratio c = interval / (interval + 1) keeps the effective step per image the same."""
    betas = [0.0, 0.99]
    if reg_interval is None:
        return dict(lr=lr, betas=betas, eps=1e-8)
    ratio = reg_interval / (reg_interval + 1)
    return dict(lr=lr * ratio, betas=[beta ** ratio for beta in betas], eps=1e-8)


def _check_choice(name, value, choices):
    if value not in choices:
        raise UserError(f"{name}={value!r} is not a valid choice.",
                        f"Use one of: {', '.join(str(c) for c in choices)}.")


def _positive(name, value, kind=float, allow_zero=False):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}={value!r} is not a number.", f"Give {name} as a number.") from None
    if kind is int and number != value:
        raise UserError(f"{name}={value!r} is not a whole number.", f"Give {name} as an integer.")
    if not (number > 0 or (allow_zero and number == 0)) or not math.isfinite(number):
        raise UserError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'}.",
                        f"Give a {'non-negative' if allow_zero else 'positive'} {name}.")
    return number


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def make_config(cfg: str = "auto", resolution: int = 256, batch: Optional[int] = None,
                gamma: Optional[float] = None, map_layers: Optional[int] = None, mbstd_group: Optional[int] = None,
                lr: Optional[float] = None, ema_kimg: Optional[float] = None, aug: str = "ada",
                target: float = 0.6, p: Optional[float] = None, augpipe: str = "xray",
                batch_gpu: Optional[int] = None, ada_kimg: Optional[float] = None, ada_interval: int = 4,
                c_dim: int = 0, img_channels: int = 3, fp32: bool = False, transfer: bool = False,
                ) -> TrainConfig:
    """A TrainConfig for base config `cfg` at `resolution` px with optional overrides.

    batch: images per step; gamma: R1 weight; map_layers: mapping depth; mbstd_group: minibatch-stddev group;
    lr: Adam rate (before the lazy-reg adjustment); ema_kimg: G_ema half-life (kimg); aug: 'ada' | 'fixed' |
    'noaug'; target: ADA target for r_t; p: fixed augmentation probability (aug='fixed') or the starting p;
    augpipe: preset of augment.make_augment_pipe; batch_gpu: images per forward pass (gradient accumulation);
    ada_kimg: kimg for p to go 0 -> 1; c_dim: 2 for a class-conditional GAN; fp32: no reduced precision;
    transfer: starting from pretrained weights (NVlabs: ADA reacts faster, ada_kimg 100, no EMA ramp-up).
    """
    from mura_aug.gan.augment import AUGMENT_PRESETS

    _check_choice("cfg", cfg, CONFIG_NAMES)
    resolution = check_resolution(resolution, "resolution")
    _check_choice("aug", aug, AUG_MODES)
    _check_choice("augpipe", augpipe, tuple(AUGMENT_PRESETS))
    if batch is not None:
        batch = _positive("batch", batch, int)
    if batch_gpu is not None:
        batch_gpu = _positive("batch_gpu", batch_gpu, int)
    if gamma is not None:
        gamma = _positive("gamma", gamma, float, allow_zero=True)
    if lr is not None:
        lr = _positive("lr", lr)
    if ema_kimg is not None:
        ema_kimg = _positive("ema_kimg", ema_kimg)
    if map_layers is not None:
        map_layers = _positive("map_layers", map_layers, int)
    if not 0 < float(target) < 1:
        raise UserError(f"target={target} is outside (0, 1).", "Use an ADA target between 0 and 1 (0.6 usual).")
    if aug == "fixed" and p is None:
        raise UserError("aug='fixed' needs the probability p.", "Pass p between 0 and 1 (e.g. --p 0.2).")
    if p is not None and not 0 <= float(p) <= 1:
        raise UserError(f"p={p} is outside [0, 1].", "Pass an augmentation probability between 0 and 1.")

    z_dim = w_dim = 512
    num_fp16_res, conv_clamp = 4, 256  # NVlabs: top 4 resolutions in fp16 (CUDA), activations clamped
    ramp = None
    default_ada_kimg = 500
    if cfg == "auto":
        # One GPU: NVlabs' formulas with gpus=1.
        spec_mb = max(min(min(4096 // resolution, 32), 64), 1)  # keeps GPU memory in check at high resolution
        mb, mbstd = spec_mb, min(spec_mb, 4)
        fmaps = 1 if resolution >= 512 else 0.5
        base_lr = 0.002 if resolution >= 1024 else 0.0025
        base_gamma = 0.0002 * resolution ** 2 / spec_mb  # NVlabs' heuristic, from the default batch
        base_ema = spec_mb * 10 / 32
        ramp, mapping = 0.05, 2
        channel_base, channel_max = int(fmaps * 32768), 512
        ref_batch_gpu = mb
    elif cfg == "tiny":
        mb, mbstd = TINY["batch"], TINY["mbstd"]
        base_lr = TINY["lrate"]
        base_gamma = TINY["gamma_coef"] * resolution ** 2 / mb
        base_ema, ramp, mapping = TINY["ema_kimg"], TINY["ema_rampup"], TINY["map_layers"]
        channel_base, channel_max = TINY["channel_base"], TINY["channel_max"]
        z_dim, w_dim = TINY["z_dim"], TINY["w_dim"]
        num_fp16_res = 0  # the point of tiny is CPUs, where reduced precision does not help
        default_ada_kimg = TINY["ada_kimg"]
        ref_batch_gpu = mb
    else:
        spec = _SPECS[cfg]
        mb, mbstd = spec["mb"], spec["mbstd"]
        base_lr, base_gamma, base_ema, ramp, mapping = (spec["lrate"], spec["gamma"], spec["ema"], spec["ramp"],
                                                        spec["map"])
        channel_base, channel_max = int(spec["fmaps"] * 32768), 512
        ref_batch_gpu = mb // spec["ref_gpus"]  # NVlabs' per-GPU batch; 1 GPU accumulates the rest

    batch_size = mb if batch is None else batch
    if batch is not None:
        ref_batch_gpu = batch  # NVlabs: --batch sets batch_gpu = batch / gpus
    batch_gpu = min(batch_gpu or ref_batch_gpu, batch_size)
    if batch_size % batch_gpu:
        raise UserError(f"batch={batch_size} is not a multiple of batch_gpu={batch_gpu}.",
                        f"Use a batch_gpu that divides {batch_size}, e.g. "
                        f"{', '.join(str(d) for d in range(1, batch_size + 1) if batch_size % d == 0)}.")
    if mbstd_group is None:
        # D's minibatch-stddev groups must tile the per-pass batch; shrink NVlabs' group size if needed.
        mbstd_group = _largest_divisor_at_most(batch_gpu, mbstd)
    else:
        mbstd_group = _positive("mbstd_group", mbstd_group, int)
        if batch_gpu % min(mbstd_group, batch_gpu):
            raise UserError(f"mbstd_group={mbstd_group} does not divide the per-pass batch {batch_gpu}.",
                            f"Use a divisor of {batch_gpu}: "
                            f"{', '.join(str(d) for d in range(1, batch_gpu + 1) if batch_gpu % d == 0)}.")
    if fp32:
        num_fp16_res, conv_clamp = 0, None

    mapping = mapping if map_layers is None else map_layers
    lr_value = base_lr if lr is None else lr
    ema_value = base_ema if ema_kimg is None else ema_kimg
    ada_kimg_value = default_ada_kimg if ada_kimg is None else _positive("ada_kimg", ada_kimg)
    if transfer:
        # NVlabs with --resume: let ADA react faster at the start and skip the EMA ramp-up.
        ada_kimg_value = 100 if ada_kimg is None else ada_kimg_value
        ramp = None
    G_reg_interval, D_reg_interval = 4, 16

    G_kwargs = dict(z_dim=z_dim, c_dim=int(c_dim), w_dim=w_dim, img_resolution=int(resolution),
                    img_channels=int(img_channels),
                    mapping_kwargs=dict(num_layers=int(mapping)),
                    synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max,
                                          num_fp16_res=num_fp16_res, conv_clamp=conv_clamp))
    D_kwargs = dict(c_dim=int(c_dim), img_resolution=int(resolution), img_channels=int(img_channels),
                    architecture="resnet", channel_base=channel_base, channel_max=channel_max,
                    num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, block_kwargs={}, mapping_kwargs={},
                    epilogue_kwargs=dict(mbstd_group_size=int(mbstd_group)))
    loss_kwargs = dict(r1_gamma=float(base_gamma if gamma is None else gamma), style_mixing_prob=0.9,
                       pl_weight=2.0, pl_batch_shrink=2, pl_decay=0.01)
    augment = dict(aug=aug, preset=augpipe, p=None if p is None else float(p), target=float(target),
                   interval=_positive("ada_interval", ada_interval, int), ada_kimg=float(ada_kimg_value))
    return TrainConfig(
        cfg=cfg, resolution=int(resolution), G_kwargs=G_kwargs, D_kwargs=D_kwargs,
        G_opt_kwargs=_lazy_adjusted(float(lr_value), G_reg_interval),
        D_opt_kwargs=_lazy_adjusted(float(lr_value), D_reg_interval),
        loss_kwargs=loss_kwargs, augment=augment, batch_size=int(batch_size), batch_gpu=int(batch_gpu),
        mbstd_group=int(mbstd_group), lr=float(lr_value), ema_kimg=float(ema_value),
        ema_rampup=None if ramp is None else float(ramp),
        G_reg_interval=G_reg_interval, D_reg_interval=D_reg_interval)
