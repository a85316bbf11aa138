"""The StyleGAN2 loss: non-saturating logistic GAN loss, lazy R1 and path-length regularisation, style mixing.

The training loop calls `accumulate_gradients(phase, ...)` once per phase and batch slice; this module runs the
networks, computes the loss and calls backward itself (scaled by `gain`, which the loop uses for gradient
accumulation and for the lazy-regularisation intervals), and returns the numbers worth logging.

Phases (NVlabs' names): 'Gmain' / 'Dmain' are the adversarial terms; 'Greg' / 'Dreg' the path-length / R1
regularisers, run every G_reg_interval / D_reg_interval steps ("lazy" regularisation); 'Gboth' / 'Dboth' do
both in one pass (used when a regulariser runs every step).

Only the network of the current phase receives gradients: during G phases D's parameters are frozen for the
duration of the call (their requires_grad flags restored afterwards), during D phases G runs under no_grad.
All randomness (style-mixing choices, path-length noise, augmentation) comes from torch's global generators,
so a loop that saves and restores their states resumes bit for bit.

Mixed precision: the loop may call this inside torch.autocast; the R1 and path-length terms, which square
gradients and are easily swamped by rounding, are always computed with autocast switched off (fp32).
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from mura_aug.errors import UserError

PHASES = ("Gmain", "Greg", "Gboth", "Dmain", "Dreg", "Dboth")


@contextlib.contextmanager
def _frozen(params):
    """Temporarily stop these parameters from collecting gradients (gradients still flow through them)."""
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def _scalar(tensor) -> float:
    return float(tensor.detach())


def _full_precision(device):
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def _fake_stats(gen_logits, loss_D_fake) -> dict:
    """What D main logs about the fakes."""
    return {"loss_D_fake": _scalar(loss_D_fake.mean()), "D_fake_score": _scalar(gen_logits.mean())}


def _real_stats(real_logits, loss_D_real) -> dict:
    """What D main logs about the reals; D_real_sign over D_real_count logits is ADA's statistic."""
    return {"loss_D_real": _scalar(loss_D_real.mean()), "D_real_score": _scalar(real_logits.mean()),
            "D_real_sign": float(real_logits.detach().sign().float().mean()),
            "D_real_count": float(real_logits.numel())}


class StyleGAN2Loss:
    """Loss of StyleGAN2-ADA for generator G and discriminator D (NVlabs call interface)."""

    def __init__(self, G, D, augment_pipe=None,
                 r1_gamma=10.0,          # R1 weight gamma; the penalty is gamma/2 * |grad_x D(x)|^2 on real x
                 style_mixing_prob=0.9,  # probability that a batch mixes two latents at a random layer
                 pl_weight=2.0,          # weight of the path-length penalty (0 = off)
                 pl_batch_shrink=2,      # the path-length pass uses batch / pl_batch_shrink samples
                 pl_decay=0.01,          # EMA rate of the running mean path length (per regularisation step)
                 ):
        for name, value in dict(r1_gamma=r1_gamma, pl_weight=pl_weight).items():
            if not float(value) >= 0:
                raise UserError(f"Loss parameter {name}={value} is negative.", f"Use {name} >= 0 (0 = off).")
        if not 0.0 <= float(style_mixing_prob) <= 1.0:
            raise UserError(f"style_mixing_prob={style_mixing_prob} is outside [0, 1].",
                            "Use a probability, 0.9 is StyleGAN2's.")
        if int(pl_batch_shrink) < 1 or not 0.0 <= float(pl_decay) <= 1.0:
            raise UserError(f"pl_batch_shrink={pl_batch_shrink} / pl_decay={pl_decay} out of range.",
                            "Use pl_batch_shrink >= 1 and pl_decay in [0, 1] (defaults 2 and 0.01).")
        self.G = G
        self.D = D
        self._D_params = list(D.parameters())  # listed once: walking D's modules each G phase costs ~0.3 ms
        self.augment_pipe = augment_pipe
        self.r1_gamma = float(r1_gamma)
        self.style_mixing_prob = float(style_mixing_prob)
        self.pl_weight = float(pl_weight)
        self.pl_batch_shrink = int(pl_batch_shrink)
        self.pl_decay = float(pl_decay)
        self.pl_mean = torch.zeros([])  # running mean of path lengths (moved to G's device when used)

    # ------------------------------------------------------------------------------------------------------
    def run_G(self, z, c, update_emas=False):
        """Images and the per-layer latents ws they were made from (after style mixing)."""
        ws = self.G.mapping(z, c, update_emas=update_emas)
        if self.style_mixing_prob > 0:
            num_ws = ws.shape[1]
            # Drawn on the CPU generator: no device sync for these two scalars.
            crossover = int(torch.randint(1, num_ws, [])) if num_ws > 1 else num_ws
            if float(torch.rand([])) < self.style_mixing_prob and crossover < num_ws:
                other = self.G.mapping(torch.randn_like(z), c, update_emas=False)
                ws = torch.cat([ws[:, :crossover], other[:, crossover:]], dim=1)
        img = self.G.synthesis(ws, noise_mode="random")
        return img, ws

    def run_D(self, img, c):
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        return self.D(img, c)

    # ------------------------------------------------------------------------------------------------------
    def accumulate_gradients(self, phase, real_img, real_c, gen_z, gen_c, gain=1.0, scaler=None) -> dict:
        """Run one phase on one batch slice, backward (times `gain`), return floats to log.

        real_img: reals in about [-1, 1], NCHW; real_c / gen_c: conditioning [N, c_dim] (c_dim may be 0);
        gen_z: latents [N, z_dim]. `scaler`: an optional torch GradScaler whose scale multiplies the loss.
        """
        if phase not in PHASES:
            raise UserError(f"Unknown training phase '{phase}'.", f"Use one of: {', '.join(PHASES)}.")
        do_Gmain = phase in ("Gmain", "Gboth")
        do_Dmain = phase in ("Dmain", "Dboth")
        do_Gpl = phase in ("Greg", "Gboth") and self.pl_weight != 0
        do_Dr1 = phase in ("Dreg", "Dboth") and self.r1_gamma != 0
        stats = {}

        def backward(loss):
            loss = loss * gain
            (scaler.scale(loss) if scaler is not None else loss).backward()

        if do_Gmain or do_Gpl:
            with _frozen(self._D_params):
                if do_Gmain:
                    gen_img, _ = self.run_G(gen_z, gen_c)
                    gen_logits = self.run_D(gen_img, gen_c)
                    loss_G = F.softplus(-gen_logits)  # -log(sigmoid(D(G(z)))): non-saturating
                    backward(loss_G.mean())
                    stats["loss_G"] = _scalar(loss_G.mean())
                    stats["G_fake_score"] = _scalar(gen_logits.mean())
                if do_Gpl:
                    stats.update(self._path_length_step(gen_z, gen_c, backward))

        group = self._pairing_group(len(gen_z), len(real_img)) if do_Dmain and not do_Dr1 else None
        if group is not None:
            with torch.no_grad():
                gen_img, _ = self.run_G(gen_z, gen_c, update_emas=True)
            stats.update(self._paired_d_main(gen_img, gen_c, real_img, real_c, group, backward))
            return stats

        if do_Dmain:
            with torch.no_grad():
                # update_emas: w_avg (used for truncation) follows the mapping output once per step.
                gen_img, _ = self.run_G(gen_z, gen_c, update_emas=True)
            gen_logits = self.run_D(gen_img, gen_c)
            loss_D_fake = F.softplus(gen_logits)  # -log(1 - sigmoid(D(G(z))))
            backward(loss_D_fake.mean())
            stats.update(_fake_stats(gen_logits, loss_D_fake))

        if do_Dmain or do_Dr1:
            context = _full_precision(real_img.device) if do_Dr1 else contextlib.nullcontext()
            with context:
                real = real_img.detach()
                real = (real.float() if do_Dr1 else real).requires_grad_(do_Dr1)
                real_logits = self.run_D(real, real_c)
                total = torch.zeros([], device=real_logits.device)
                if do_Dmain:
                    loss_D_real = F.softplus(-real_logits)  # -log(sigmoid(D(x)))
                    total = total + loss_D_real.mean()
                    stats.update(_real_stats(real_logits, loss_D_real))
                    stats["loss_D"] = stats["loss_D_fake"] + stats["loss_D_real"]
                if do_Dr1:
                    r1_penalty = self.r1_penalty(real_logits, real)
                    loss_r1 = r1_penalty * (self.r1_gamma / 2)
                    total = total + loss_r1.mean()
                    stats["r1_penalty"] = _scalar(r1_penalty.mean())
                    stats["loss_r1"] = _scalar(loss_r1.mean())
                backward(total)
        return stats

    def _pairing_group(self, fakes: int, reals: int):
        """The minibatch-std group size with which D may see this phase's fakes and reals in one batch with
        the same result as in two (1 when D has no such layer), or None when it may not.

        The only thing in D that mixes samples is the minibatch-std layer, over groups of min(group_size, N)
        samples; one batch of fakes and reals, ordered so that each group holds the same samples as before
        (see _paired_d_main), gives every sample the same statistics when group_size <= N."""
        if fakes != reals or fakes == 0:
            return None
        mbstd = getattr(getattr(self.D, "b4", None), "mbstd", None)
        if mbstd is None:
            return 1
        group = mbstd.group_size
        return group if group is not None and group <= fakes and fakes % group == 0 else None

    def _paired_d_main(self, gen_img, gen_c, real_img, real_c, group: int, backward) -> dict:
        """D main with fakes and reals in one forward and one backward pass (one of each instead of two:
        on a CPU ~12 % less time for this phase at auto-32, fewer weight transforms and kernel calls). Same
        loss, same gradient (the sum of NVlabs' two backward passes), same augmentation draws (fakes first).

        Minibatch-std groups: a batch of N is viewed as [G, N/G] with the groups along the first axis; fakes
        and reals are viewed that way and joined along the second axis, so every group of the joint batch is
        a group of the fakes or of the reals alone."""
        count = len(gen_img)
        augment = self.augment_pipe if self.augment_pipe is not None else (lambda images: images)
        fake_in, real_in = augment(gen_img), augment(real_img.detach())

        def join(fake, real):
            per_group = [fake.reshape(group, count // group, *fake.shape[1:]),
                         real.reshape(group, count // group, *real.shape[1:])]
            return torch.cat(per_group, dim=1).reshape(2 * count, *fake.shape[1:])

        logits = self.D(join(fake_in, real_in), join(gen_c, real_c))
        logits = logits.reshape(group, 2, count // group, *logits.shape[1:])
        gen_logits = logits[:, 0].reshape(count, *logits.shape[3:])
        real_logits = logits[:, 1].reshape(count, *logits.shape[3:])
        loss_D_fake = F.softplus(gen_logits)  # -log(1 - sigmoid(D(G(z))))
        loss_D_real = F.softplus(-real_logits)  # -log(sigmoid(D(x)))
        backward(loss_D_fake.mean() + loss_D_real.mean())
        stats = {**_fake_stats(gen_logits, loss_D_fake), **_real_stats(real_logits, loss_D_real)}
        stats["loss_D"] = stats["loss_D_fake"] + stats["loss_D_real"]
        return stats

    @staticmethod
    def r1_penalty(real_logits, real):
        """|d sum(D(x)) / dx|^2 per sample, kept in the graph so that its gradient reaches D's weights."""
        (grads,) = torch.autograd.grad(outputs=[real_logits.sum()], inputs=[real], create_graph=True)
        return grads.square().sum(dim=[1, 2, 3])

    def _path_length_step(self, gen_z, gen_c, backward):
        """Path-length regularisation: make |J_w^T y| constant, J the Jacobian of the image w.r.t. w and y
        random image-space noise scaled so that the expected length does not depend on the resolution."""
        batch = max(gen_z.shape[0] // self.pl_batch_shrink, 1)
        with _full_precision(gen_z.device):
            img, ws = self.run_G(gen_z[:batch], gen_c[:batch])
            if not ws.requires_grad:
                # A frozen mapping network: differentiate w.r.t. a copy of ws instead (needs a second pass).
                ws = ws.detach().requires_grad_(True)
                img = self.G.synthesis(ws, noise_mode="random")
            img = img.float()
            noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
            (grads,) = torch.autograd.grad(outputs=[(img * noise).sum()], inputs=[ws], create_graph=True)
            lengths = grads.square().sum(dim=2).mean(dim=1).sqrt()
            self.pl_mean = self.pl_mean.to(lengths.device)
            pl_mean = self.pl_mean.lerp(lengths.mean(), self.pl_decay)
            self.pl_mean.copy_(pl_mean.detach())
            penalty = (lengths - pl_mean).square()
            loss_pl = penalty * self.pl_weight
            backward(loss_pl.mean())
        return {"pl_penalty": _scalar(penalty.mean()), "pl_length": _scalar(lengths.mean()),
                "pl_mean": float(self.pl_mean), "loss_pl": _scalar(loss_pl.mean())}

    # ------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if "pl_mean" not in state:
            raise UserError("The loss state has no 'pl_mean'; the snapshot is incomplete.",
                            "Resume from another state-*.pt (python -m mura_aug runs lists them).")
        device = self.pl_mean.device
        self.pl_mean = torch.as_tensor(state["pl_mean"], dtype=torch.float32).clone().to(device)
