"""StyleGAN2Loss: each phase's terms equal a direct autograd computation, on stand-in nets and the real tiny nets."""
import math

import pytest
import torch
import torch.nn.functional as F

from mura_aug.errors import UserError
from mura_aug.gan import networks
from mura_aug.gan.augment import make_augment_pipe
from mura_aug.gan.configs import make_config
from mura_aug.gan.loss import StyleGAN2Loss

RES = 16
Z_DIM = 8


class StandInMapping(torch.nn.Module):
    def __init__(self, num_ws):
        super().__init__()
        self.fc = torch.nn.Linear(Z_DIM, Z_DIM)
        self.num_ws = num_ws
        self.ema_updates = 0

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        self.ema_updates += bool(update_emas)
        w = torch.tanh(self.fc(z))
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)


class StandInSynthesis(torch.nn.Module):
    """Each layer's w paints its own pattern; smooth nonlinearity so that second derivatives exist."""

    def __init__(self, num_ws):
        super().__init__()
        self.layers = torch.nn.Parameter(torch.randn(num_ws, Z_DIM, 3 * RES * RES) * 0.1)
        self.seen_ws = []

    def forward(self, ws, noise_mode="const", update_emas=False):
        assert noise_mode == "random"  # training must use random noise
        self.seen_ws.append(ws.detach().clone())
        x = torch.einsum("nlw,lwp->np", ws, self.layers)
        return torch.tanh(x).reshape(-1, 3, RES, RES)


class StandInG(torch.nn.Module):
    def __init__(self, num_ws=6):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = Z_DIM, 0, Z_DIM, num_ws
        self.img_resolution, self.img_channels = RES, 3
        self.mapping = StandInMapping(num_ws)
        self.synthesis = StandInSynthesis(num_ws)


class StandInD(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * RES * RES, 1)

    def forward(self, img, c):
        return self.fc(F.softplus(self.conv(img)).flatten(1))


def _real_tiny_nets():
    config = make_config("tiny", RES, batch=4)
    return networks.Generator(**config.G_kwargs), networks.Discriminator(**config.D_kwargs)


def _nets(kind):
    torch.manual_seed(0)
    return (StandInG(), StandInD()) if kind == "standin" else _real_tiny_nets()


def _batch(G, n=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    real = torch.rand([n, 3, RES, RES], generator=generator) * 2 - 1
    z = torch.randn([n, G.z_dim], generator=generator)
    c = torch.zeros([n, G.c_dim])
    return real, z, c


def _grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def _zero(*modules):
    for module in modules:
        for p in module.parameters():
            p.grad = None


def _assert_grads_close(got, expected, rtol=1e-4, atol=1e-6):
    assert len(got) == len(expected)
    compared = 0
    for a, b in zip(got, expected):
        if b is None:
            assert a is None or a.abs().max() == 0
            continue
        assert a is not None
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
        compared += 1
    assert compared > 0


@pytest.mark.parametrize("kind", ["standin", "real"])
@pytest.mark.parametrize("with_augment", [False, True])
def test_r1_equals_direct_autograd(kind, with_augment):
    G, D = _nets(kind)
    pipe = make_augment_pipe("bgc", p=0.7) if with_augment else None
    gamma, gain = 3.0, 16.0
    loss = StyleGAN2Loss(G, D, augment_pipe=pipe, r1_gamma=gamma)
    real, z, c = _batch(G)

    torch.manual_seed(5)
    stats = loss.accumulate_gradients("Dreg", real, c, z, c, gain=gain)
    got = _grads(D)
    assert all(g is None for g in _grads(G))  # only D learns in a D phase

    _zero(D)
    torch.manual_seed(5)  # the same augmentation as inside the loss
    x = real.clone().requires_grad_(True)
    logits = D(pipe(x) if pipe is not None else x, c)
    (grad_x,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    penalty = grad_x.square().sum(dim=[1, 2, 3])
    (penalty * gamma / 2).mean().mul(gain).backward()

    _assert_grads_close(got, _grads(D))
    assert stats["r1_penalty"] == pytest.approx(penalty.mean().item(), rel=1e-5)
    assert stats["loss_r1"] == pytest.approx(penalty.mean().item() * gamma / 2, rel=1e-5)


@pytest.mark.parametrize("kind", ["standin", "real"])
def test_path_length_equals_direct_autograd_and_tracks_its_mean(kind):
    G, D = _nets(kind)
    weight, decay, gain = 2.0, 0.01, 4.0
    loss = StyleGAN2Loss(G, D, pl_weight=weight, pl_decay=decay, pl_batch_shrink=2, style_mixing_prob=0.0)
    _, z, c = _batch(G, n=6)

    torch.manual_seed(7)
    stats = loss.accumulate_gradients("Greg", None, None, z, c, gain=gain)
    got = _grads(G)
    assert all(g is None for g in _grads(D))

    _zero(G)
    torch.manual_seed(7)
    ws = G.mapping(z[:3], c[:3])
    img = G.synthesis(ws, noise_mode="random")
    noise = torch.randn_like(img) / math.sqrt(RES * RES)
    (grad_w,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = grad_w.square().sum(dim=2).mean(dim=1).sqrt()
    pl_mean = torch.zeros([]).lerp(lengths.mean(), decay)
    penalty = (lengths - pl_mean).square()
    (penalty * weight).mean().mul(gain).backward()

    _assert_grads_close(got, _grads(G))
    assert stats["pl_penalty"] == pytest.approx(penalty.mean().item(), rel=1e-5)
    assert stats["pl_length"] == pytest.approx(lengths.mean().item(), rel=1e-5)
    assert float(loss.pl_mean) == pytest.approx(decay * lengths.mean().item(), rel=1e-5)

    # The running mean is an EMA over regularisation steps, and survives a state round trip.
    first_mean = float(loss.pl_mean)
    restored = StyleGAN2Loss(G, D, pl_decay=decay, style_mixing_prob=0.0)
    restored.load_state_dict(loss.state_dict())
    torch.manual_seed(8)
    second = restored.accumulate_gradients("Greg", None, None, z, c)
    assert float(restored.pl_mean) == pytest.approx(first_mean + (second["pl_length"] - first_mean) * decay,
                                                    rel=1e-5)


@pytest.mark.parametrize("kind", ["standin", "real"])
def test_main_phases_are_the_non_saturating_logistic_loss(kind):
    G, D = _nets(kind)
    loss = StyleGAN2Loss(G, D, style_mixing_prob=0.0)
    real, z, c = _batch(G)
    d_flags = [p.requires_grad for p in D.parameters()]

    torch.manual_seed(9)
    stats = loss.accumulate_gradients("Gmain", real, c, z, c, gain=2.0)
    got = _grads(G)
    assert all(g is None for g in _grads(D)) and [p.requires_grad for p in D.parameters()] == d_flags
    _zero(G)
    torch.manual_seed(9)
    fake_logits = D(G.synthesis(G.mapping(z, c), noise_mode="random"), c)
    F.softplus(-fake_logits).mean().mul(2.0).backward()
    _assert_grads_close(got, _grads(G))
    assert stats["loss_G"] == pytest.approx(F.softplus(-fake_logits).mean().item(), rel=1e-5)
    _zero(G, D)

    torch.manual_seed(10)
    stats = loss.accumulate_gradients("Dmain", real, c, z, c)
    got = _grads(D)
    assert all(g is None for g in _grads(G))
    _zero(D)
    torch.manual_seed(10)
    with torch.no_grad():
        fake = G.synthesis(G.mapping(z, c), noise_mode="random")
    fake_logits, real_logits = D(fake, c), D(real, c)
    (F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()).backward()
    _assert_grads_close(got, _grads(D))
    assert stats["loss_D"] == pytest.approx((F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()).item(),
                                            rel=1e-5)
    assert stats["D_real_sign"] == pytest.approx(real_logits.sign().mean().item())
    assert stats["D_real_count"] == 4


def test_both_phases_do_main_and_regularisation_together():
    G, D = _nets("standin")
    loss = StyleGAN2Loss(G, D, r1_gamma=1.0, style_mixing_prob=0.0)
    real, z, c = _batch(G)
    stats = loss.accumulate_gradients("Dboth", real, c, z, c)
    assert {"loss_D", "loss_r1", "D_real_sign"} <= set(stats)
    stats = loss.accumulate_gradients("Gboth", real, c, z, c)
    assert {"loss_G", "pl_penalty"} <= set(stats)
    assert all(math.isfinite(v) for v in stats.values())


def test_gain_scales_the_gradients():
    G, D = _nets("standin")
    loss = StyleGAN2Loss(G, D, style_mixing_prob=0.0)
    real, z, c = _batch(G)
    torch.manual_seed(11)
    loss.accumulate_gradients("Dmain", real, c, z, c, gain=1.0)
    once = _grads(D)
    _zero(D)
    torch.manual_seed(11)
    loss.accumulate_gradients("Dmain", real, c, z, c, gain=3.0)
    _assert_grads_close(_grads(D), [g * 3 for g in once])


def test_style_mixing_happens_at_its_rate_with_a_random_crossover():
    G, D = _nets("standin")
    loss = StyleGAN2Loss(G, D, style_mixing_prob=0.9)
    _, z, c = _batch(G, n=2)
    torch.manual_seed(12)
    crossovers = []
    with torch.no_grad():
        for _ in range(400):
            loss.run_G(z, c)
    for ws in G.synthesis.seen_ws:
        changes = [i for i in range(1, G.num_ws) if not torch.equal(ws[:, i], ws[:, i - 1])]
        assert len(changes) <= 1  # one crossover point at most
        crossovers += changes
    assert 0.85 * 400 <= len(crossovers) <= 0.95 * 400
    assert set(crossovers) == set(range(1, G.num_ws))  # every layer can be the crossover, never 0


def test_dmain_updates_the_w_average_once_per_step():
    G, D = _nets("standin")
    loss = StyleGAN2Loss(G, D, style_mixing_prob=0.9)
    real, z, c = _batch(G)
    loss.accumulate_gradients("Gmain", real, c, z, c)
    assert G.mapping.ema_updates == 0
    loss.accumulate_gradients("Dmain", real, c, z, c)
    assert G.mapping.ema_updates == 1


def test_r1_stays_in_full_precision_under_autocast():
    G, D = _nets("standin")
    loss = StyleGAN2Loss(G, D, r1_gamma=2.0)
    real, z, c = _batch(G)
    torch.manual_seed(13)
    plain = loss.accumulate_gradients("Dreg", real, c, z, c)
    expected = _grads(D)
    _zero(D)
    torch.manual_seed(13)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        mixed = loss.accumulate_gradients("Dreg", real, c, z, c)
    assert mixed["r1_penalty"] == pytest.approx(plain["r1_penalty"], rel=1e-6)
    _assert_grads_close(_grads(D), expected, rtol=1e-6, atol=1e-8)


def test_bad_arguments_raise_user_errors():
    G, D = _nets("standin")
    with pytest.raises(UserError, match="Gmain"):
        StyleGAN2Loss(G, D).accumulate_gradients("Gfoo", None, None, None, None)
    with pytest.raises(UserError, match="r1_gamma"):
        StyleGAN2Loss(G, D, r1_gamma=-1)
    with pytest.raises(UserError, match="pl_mean"):
        StyleGAN2Loss(G, D).load_state_dict({})


@pytest.mark.parametrize("p", [0.0, 0.6])
def test_dmain_in_one_batch_equals_two_batches_with_the_same_minibatch_std_groups(monkeypatch, p):
    # D main runs fakes and reals through D together; the minibatch-std groups (2 here, of a batch of 4)
    # must hold the same samples as with separate passes, and the augmentation must draw the same.
    torch.manual_seed(0)
    G = networks.Generator(z_dim=Z_DIM, c_dim=0, w_dim=Z_DIM, img_resolution=RES, img_channels=3,
                           mapping_kwargs=dict(num_layers=1), synthesis_kwargs=dict(channel_base=128, channel_max=8))
    D = networks.Discriminator(c_dim=0, img_resolution=RES, img_channels=3, channel_base=128, channel_max=8,
                               epilogue_kwargs=dict(mbstd_group_size=2))
    pipe = make_augment_pipe("xray", p=p)
    loss = StyleGAN2Loss(G, D, augment_pipe=pipe, style_mixing_prob=0.0)
    real, z, c = _batch(G)
    assert loss._pairing_group(4, 4) == 2
    torch.manual_seed(5)
    paired = loss.accumulate_gradients("Dmain", real, c, z, c, gain=3.0)
    paired_grads = _grads(D)
    _zero(D)
    monkeypatch.setattr(StyleGAN2Loss, "_pairing_group", lambda self, fakes, reals: None)
    torch.manual_seed(5)
    separate = loss.accumulate_gradients("Dmain", real, c, z, c, gain=3.0)
    _assert_grads_close(paired_grads, _grads(D), rtol=1e-4, atol=1e-6)
    assert paired.keys() == separate.keys()
    for key in separate:
        assert paired[key] == pytest.approx(separate[key], rel=1e-5, abs=1e-6), key


def test_dmain_keeps_separate_passes_when_one_batch_would_change_the_groups():
    G, D = _real_tiny_nets()
    loss = StyleGAN2Loss(G, D)
    group = D.b4.mbstd.group_size
    assert loss._pairing_group(group, group) == group
    assert loss._pairing_group(group // 2, group // 2) is None  # group > N: groups of the joint batch differ
    assert loss._pairing_group(group, group + 1) is None
    assert StyleGAN2Loss(StandInG(), StandInD())._pairing_group(3, 3) == 1  # no minibatch-std layer
