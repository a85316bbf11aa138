"""The StyleGAN2-ADA networks: shapes, NVlabs names, equalised learning rate, noise, truncation, and agreement
with the independent functional reference in tests/nvlabs_reference.py."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mura_aug.errors import UserError
from mura_aug.gan import networks, ops
from mura_aug.gan.networks import Discriminator, Generator

sys.path.insert(0, str(Path(__file__).parent))
import nvlabs_reference as ref  # noqa: E402

# (resolution px, c_dim, channel_base, channel_max, z/w dim, mapping layers, conv_clamp)
CONFIGS = [
    (16, 0, 256, 32, 32, 2, None),
    (32, 2, 512, 16, 24, 3, 256),
    (64, 0, 256, 8, 16, 1, 0.5),
]


def make_pair(res, c_dim, base, cmax, dim, layers, clamp, num_fp16_res=0):
    G = Generator(z_dim=dim, c_dim=c_dim, w_dim=dim, img_resolution=res, img_channels=3,
                  mapping_kwargs=dict(num_layers=layers),
                  synthesis_kwargs=dict(channel_base=base, channel_max=cmax, num_fp16_res=num_fp16_res,
                                        conv_clamp=clamp))
    D = Discriminator(c_dim=c_dim, img_resolution=res, img_channels=3, channel_base=base, channel_max=cmax,
                      num_fp16_res=num_fp16_res, conv_clamp=clamp)
    return G, D


def randomize(module, seed=0):
    """Non-zero biases, noise strengths and w_avg, so every term of the forward pass matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith(("bias", "noise_strength", "w_avg")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.3)
    return module


def labels(n, c_dim):
    return torch.eye(c_dim)[torch.arange(n) % c_dim] if c_dim else None


@pytest.mark.parametrize("res,c_dim,base,cmax,dim,layers,clamp", CONFIGS)
def test_shapes_and_attributes(res, c_dim, base, cmax, dim, layers, clamp):
    G, D = make_pair(res, c_dim, base, cmax, dim, layers, clamp)
    assert (G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels) == (dim, c_dim, dim, res, 3)
    assert G.num_ws == 2 * int(math.log2(res)) - 2 == G.mapping.num_ws == G.synthesis.num_ws
    z, c = torch.randn(4, dim), labels(4, c_dim)
    ws = G.mapping(z, c)
    assert ws.shape == (4, G.num_ws, dim)
    img = G.synthesis(ws, noise_mode="const")
    assert img.shape == (4, 3, res, res) and img.dtype == torch.float32 and torch.isfinite(img).all()
    assert torch.equal(img, G(z, c, noise_mode="const"))
    logits = D(img, c)
    assert logits.shape == (4, 1) and torch.isfinite(logits).all()
    assert (D.c_dim, D.img_resolution, D.img_channels) == (c_dim, res, 3)
    # Channel counts follow min(channel_base / res, channel_max).
    assert getattr(G.synthesis, f"b{res}").conv1.weight.shape[0] == min(base // res, cmax)
    assert ("mapping.embed.weight" in D.state_dict()) == (c_dim > 0)


@pytest.mark.parametrize("res,c_dim,base,cmax,dim,layers,clamp", CONFIGS[:2])
def test_init_kwargs_are_json_and_rebuild_the_same_network(res, c_dim, base, cmax, dim, layers, clamp):
    G, D = make_pair(res, c_dim, base, cmax, dim, layers, clamp)
    for module, cls in ((G, Generator), (D, Discriminator)):
        kwargs = json.loads(json.dumps(module.init_kwargs))
        rebuilt = cls(**kwargs)
        assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
               {k: v.shape for k, v in module.state_dict().items()}
        rebuilt.load_state_dict(module.state_dict())
    assert G.init_kwargs["mapping_kwargs"] == {"num_layers": layers}
    assert G.synthesis.b8.conv0.init_kwargs["up"] == 2  # sub-modules keep theirs too


def test_nvlabs_parameter_names_and_shapes():
    G, D = make_pair(32, 2, 512, 64, 48, 2, None)
    g, d = G.state_dict(), D.state_dict()
    expected_g = {
        "mapping.fc0.weight": (48, 48 + 48),  # z + class embedding in, w out
        "mapping.fc1.bias": (48,),
        "mapping.embed.weight": (48, 2),
        "mapping.w_avg": (48,),
        "synthesis.b4.const": (64, 4, 4),
        "synthesis.b4.conv1.weight": (64, 64, 3, 3),
        "synthesis.b4.torgb.weight": (3, 64, 1, 1),
        "synthesis.b8.conv0.affine.weight": (64, 48),
        "synthesis.b8.conv0.noise_const": (8, 8),
        "synthesis.b8.conv0.noise_strength": (),
        "synthesis.b8.conv0.resample_filter": (4, 4),
        "synthesis.b32.conv1.weight": (16, 16, 3, 3),
        "synthesis.b32.torgb.affine.bias": (16,),
    }
    expected_d = {
        "b32.fromrgb.weight": (16, 3, 1, 1),
        "b32.conv0.weight": (16, 16, 3, 3),
        "b32.conv1.weight": (32, 16, 3, 3),
        "b32.skip.weight": (32, 16, 1, 1),
        "b4.conv.weight": (64, 65, 3, 3),  # +1 minibatch-std channel
        "b4.fc.weight": (64, 64 * 16),
        "b4.out.weight": (64, 64),  # projection: cmap_dim outputs when conditional
        "b4.out.bias": (64,),
        "mapping.embed.weight": (64, 2),
        "mapping.fc7.weight": (64, 64),
    }
    for name, shape in expected_g.items():
        assert tuple(g[name].shape) == shape, name
    for name, shape in expected_d.items():
        assert tuple(d[name].shape) == shape, name
    assert "b32.skip.bias" not in d and "mapping.w_avg" not in d
    assert torch.allclose(g["synthesis.b8.conv0.resample_filter"],
                          torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)


def test_equalised_learning_rate_gains():
    torch.manual_seed(0)
    fc = networks.FullyConnectedLayer(400, 300, lr_multiplier=0.01, bias_init=0.5)
    # Stored weights are N(0, 1) / lr_multiplier; weight and bias are scaled by lr_multiplier at run time.
    assert fc.weight.std().item() == pytest.approx(100, rel=0.05)
    x = torch.randn(5, 400)
    expected = x @ (fc.weight * (0.01 / math.sqrt(400))).t() + fc.bias * 0.01
    assert torch.allclose(fc(x), expected, atol=1e-5)
    # Run-time scaling keeps the output at unit scale whatever the fan-in.
    assert fc(x).std().item() == pytest.approx(1.0, rel=0.1)

    # The gains ride in addmm's scalar factors: an extra `gain` scales weight and bias, and the activated
    # layers (the mapping network's) keep the activation's gain of sqrt(2).
    assert torch.allclose(fc(x, gain=0.25), 0.25 * expected, atol=1e-5)
    lrelu = networks.FullyConnectedLayer(400, 300, activation="lrelu", lr_multiplier=0.01, bias_init=0.5)
    expected = F.leaky_relu(x @ (lrelu.weight * (0.01 / math.sqrt(400))).t() + lrelu.bias * 0.01, 0.2) * math.sqrt(2)
    assert torch.allclose(lrelu(x), expected, atol=1e-5) and (expected < 0).any()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert lrelu(x).dtype == torch.float32  # as when the bias was added after the product: w stays float32

    G = Generator(32, 0, 32, 16, 3, mapping_kwargs=dict(num_layers=2))
    assert G.mapping.fc0.weight_gain == pytest.approx(0.01 / math.sqrt(32))  # mapping: lr multiplier 0.01
    assert G.synthesis.b8.conv0.affine.weight_gain == pytest.approx(1 / math.sqrt(32))

    conv = networks.Conv2dLayer(6, 5, kernel_size=3, activation="lrelu", conv_clamp=0.3)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 6, 8, 8)
    pre = F.conv2d(x, conv.weight / math.sqrt(6 * 9), padding=1) + conv.bias.reshape(1, -1, 1, 1)
    expected = (F.leaky_relu(pre, 0.2) * math.sqrt(2)).clamp(-0.3, 0.3)
    assert torch.allclose(conv(x), expected, atol=1e-6)
    assert (conv(x).abs() == 0.3).any()  # the clamp was active


def test_noise_modes():
    G = randomize(Generator(16, 0, 16, 16, 1, mapping_kwargs=dict(num_layers=1),
                            synthesis_kwargs=dict(channel_base=128, channel_max=16)))
    z = torch.randn(2, 16)
    const_a, const_b = G(z, None, noise_mode="const"), G(z, None, noise_mode="const")
    random_a, random_b = G(z, None, noise_mode="random"), G(z, None, noise_mode="random")
    none = G(z, None, noise_mode="none")
    assert torch.equal(const_a, const_b)
    assert not torch.allclose(random_a, random_b)
    assert not torch.allclose(const_a, none)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.zero_()
    assert torch.allclose(G(z, None, noise_mode="const"), none)
    assert torch.allclose(G(z, None, noise_mode="random"), none)
    with pytest.raises(UserError, match="noise_mode"):
        G(z, None, noise_mode="fixed")


def test_truncation_and_w_avg():
    G = randomize(Generator(16, 0, 16, 16, 3, mapping_kwargs=dict(num_layers=2),
                            synthesis_kwargs=dict(channel_base=128, channel_max=16)))
    z = torch.randn(3, 16)
    plain = G.mapping(z, None)
    # psi = 0: every sample becomes the average w, so all images are the same.
    imgs = G(z, None, truncation_psi=0, noise_mode="const")
    assert torch.allclose(imgs[0], imgs[1], atol=1e-6) and torch.allclose(imgs[0], imgs[2], atol=1e-6)
    w_avg = G.mapping.w_avg
    cut = G.mapping(z, None, truncation_psi=0.5, truncation_cutoff=2)
    assert torch.allclose(cut[:, :2], w_avg + 0.5 * (plain[:, :2] - w_avg), atol=1e-6)
    assert torch.equal(cut[:, 2:], plain[:, 2:])
    full = G.mapping(z, None, truncation_psi=0.5)
    assert torch.allclose(full, w_avg + 0.5 * (plain - w_avg), atol=1e-6)

    before = w_avg.clone()
    G.mapping(z, None)  # no update unless asked
    assert torch.equal(G.mapping.w_avg, before)
    G.mapping(z, None, update_emas=True)
    expected = plain[:, 0].mean(0) + 0.995 * (before - plain[:, 0].mean(0))
    assert torch.allclose(G.mapping.w_avg, expected, atol=1e-6)


@pytest.mark.parametrize("res,c_dim,base,cmax,dim,layers,clamp", CONFIGS[:2])
def test_matches_the_independent_reference(res, c_dim, base, cmax, dim, layers, clamp):
    torch.manual_seed(res)
    G, D = make_pair(res, c_dim, base, cmax, dim, layers, clamp)
    randomize(G), randomize(D)
    z, c = torch.randn(4, dim), labels(4, c_dim)
    for psi, cutoff in ((1, None), (0.7, 3)):
        expected = ref.generator(G.state_dict(), z, c, psi, cutoff, conv_clamp=clamp)
        for fused in (True, False):  # per-sample weights in one grouped conv / one shared-weight conv
            ours = G(z, c, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const", fused_modconv=fused)
            assert (ours - expected).abs().max().item() < 1e-4
    img = torch.randn(8, 3, res, res)
    c8 = labels(8, c_dim)
    expected = ref.discriminator(D.state_dict(), img, c8, conv_clamp=clamp)
    assert (D(img, c8) - expected).abs().max().item() < 1e-4


def test_resampling_matches_definition():
    f = ops.setup_filter()
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(ops.upsample2d(x, f), ref.fir(x, ref.fir_kernel(), up=2, pad=(2, 1, 2, 1), gain=4),
                          atol=1e-6)
    assert torch.allclose(ops.downsample2d(x, f), ref.fir(x, ref.fir_kernel(), down=2, pad=(1, 1, 1, 1)),
                          atol=1e-6)
    w = torch.randn(5, 3, 3, 3)
    for up, down in ((2, 1), (1, 2)):
        ours = ops.conv2d_resample(x, w, f, up=up, down=down, padding=1, flip_weight=(up == 1))
        assert torch.allclose(ours, ref.conv_resample(x, w, up=up, down=down, padding=1, flip_weight=(up == 1)),
                              atol=1e-5)


def test_gradients_reach_every_parameter():
    G, D = make_pair(16, 2, 128, 16, 16, 2, 256)
    z, c = torch.randn(4, 16), labels(4, 2)
    D(G(z, c), c).sum().backward()
    # Noise strengths start at zero: their gradient is the noise correlation, still non-zero.
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_reduced_precision_is_fp32_on_cpu():
    G32, _ = make_pair(32, 0, 256, 16, 16, 1, 256, num_fp16_res=0)
    G16, D16 = make_pair(32, 0, 256, 16, 16, 1, 256, num_fp16_res=4)
    G16.load_state_dict(G32.state_dict())
    assert G16.synthesis.b32.use_fp16 and not G32.synthesis.b32.use_fp16
    z = torch.randn(2, 16)
    img = G16(z, None, noise_mode="const")
    assert img.dtype == torch.float32 and torch.equal(img, G32(z, None, noise_mode="const"))
    assert D16(img, None).dtype == torch.float32


def test_frozen_discriminator_layers_keep_their_names():
    _, D = make_pair(32, 0, 256, 16, 16, 1, None)
    frozen = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=16,
                           block_kwargs=dict(freeze_layers=4))
    assert set(frozen.state_dict()) == set(D.state_dict())
    trainable = {name for name, _ in frozen.named_parameters()}
    assert "b32.fromrgb.weight" not in trainable and "b16.conv0.weight" in trainable


def test_user_errors():
    with pytest.raises(UserError, match="Generator img_resolution = 48 px is not a power of two"):
        Generator(16, 0, 16, 48, 3)
    with pytest.raises(UserError, match="Discriminator img_resolution = 2048 px"):
        Discriminator(0, 2048, 3)
    _, D = make_pair(16, 0, 128, 16, 16, 1, None)
    with pytest.raises(UserError, match="multiple of 4"):
        D(torch.randn(6, 3, 16, 16), None)


def test_half_precision_blocks_stay_close_to_fp32(monkeypatch):
    """The float16 path (used on CUDA) exercised on the CPU: pre-normalised modulation, casts between blocks."""
    G, D = make_pair(32, 2, 512, 32, 32, 2, 256, num_fp16_res=2)
    z, c = torch.randn(4, 32), labels(4, 2)
    img32 = G(z, c, noise_mode="const")
    logits32 = D(img32, c)
    monkeypatch.setattr(ops, "block_dtype",
                        lambda use_fp16, device, force_fp32: torch.float16 if use_fp16 and not force_fp32
                        else torch.float32)
    try:
        img16 = G(z, c, noise_mode="const")
        logits16 = D(img16, c)
    except RuntimeError as exc:  # older torch builds have no float16 convolution on the CPU
        pytest.skip(f"no float16 CPU convolution in this torch: {exc}")
    assert img16.dtype == torch.float32 and logits16.dtype == torch.float32
    assert (img16 - img32).abs().max().item() < 0.05 * img32.abs().max().item()
    assert (logits16 - logits32).abs().max().item() < 0.05 * (logits32.abs().max().item() + 1)
    assert not torch.equal(img16, img32)  # the float16 blocks really ran
    force32 = G(z, c, noise_mode="const", force_fp32=True)
    assert torch.allclose(force32, img32, atol=1e-5)


@pytest.mark.parametrize("cfg", ["tiny", "auto"])
def test_torch_compile_sees_each_network_whole(cfg):
    """--compile compiles G.mapping, G.synthesis and D as the loss calls them; each must trace into one graph.
    A graph break (the FIR kernel caches, a numpy gain reaching a branch, a file read) makes dynamo compile
    the rest of each layer apart and recompile it per layer shape until its limit, after which it runs
    eagerly: on an H200 that is what --compile did (bench/results/gpu_NVIDIA_H200.md)."""
    import torch._dynamo as dynamo

    from mura_aug.gan.configs import make_config

    config = make_config(cfg, 32)
    G, D = Generator(**config.G_kwargs), Discriminator(**config.D_kwargs)
    z, c = torch.randn(4, G.z_dim), torch.zeros(4, G.c_dim)
    ws = G.mapping(z, c)
    img = G.synthesis(ws, noise_mode="random")
    calls = {"G.mapping": (G.mapping, (z, c), {"update_emas": True}),
             "G.synthesis": (G.synthesis, (ws,), {"noise_mode": "random"}),
             "D": (D, (img.detach().requires_grad_(True), c), {})}
    for name, (network, args, kwargs) in calls.items():
        dynamo.reset()
        explained = dynamo.explain(network)(*args, **kwargs)
        reasons = [reason.reason.splitlines()[0] for reason in explained.break_reasons]
        assert explained.graph_break_count == 0 and explained.graph_count == 1, (name, reasons)
    dynamo.reset()
