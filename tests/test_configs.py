"""Training configs: NVlabs' derived numbers, lazy-regularisation adjustment, JSON round trip, clear errors."""
import json

import pytest
import torch

from mura_aug.errors import UserError
from mura_aug.gan import networks
from mura_aug.gan.augment import build_augmentation
from mura_aug.gan.configs import CONFIG_NAMES, TrainConfig, make_config


def _lazy(lr, interval):
    ratio = interval / (interval + 1)
    return lr * ratio, 0.99 ** ratio


def _check_optimisers(config, lr):
    for kwargs, interval in ((config.G_opt_kwargs, 4), (config.D_opt_kwargs, 16)):
        expected_lr, expected_beta2 = _lazy(lr, interval)
        assert set(kwargs) == {"lr", "betas", "eps"}  # exactly torch.optim.Adam's keywords
        assert kwargs["lr"] == pytest.approx(expected_lr)
        assert kwargs["betas"][0] == 0 and kwargs["betas"][1] == pytest.approx(expected_beta2)
        assert kwargs["eps"] == 1e-8
    assert config.G_reg_interval == 4 and config.D_reg_interval == 16


def test_auto_at_32_px_derives_nvlabs_numbers():
    config = make_config("auto", 32)
    # NVlabs, 1 GPU: mb = min(4096 // 32, 32) = 32, mbstd = min(32, 4), fmaps 0.5, gamma = 0.0002 * 32^2 / 32.
    assert config.batch_size == 32 and config.batch_gpu == 32 and config.mbstd_group == 4
    assert config.loss_kwargs["r1_gamma"] == pytest.approx(0.0064)
    assert config.ema_kimg == pytest.approx(10.0) and config.ema_rampup == 0.05
    assert config.lr == 0.0025
    _check_optimisers(config, 0.0025)
    synthesis = config.G_kwargs["synthesis_kwargs"]
    assert synthesis["channel_base"] == config.D_kwargs["channel_base"] == 16384
    assert synthesis["channel_max"] == 512 and synthesis["num_fp16_res"] == 4 and synthesis["conv_clamp"] == 256
    assert config.G_kwargs["mapping_kwargs"]["num_layers"] == 2
    assert config.G_kwargs["z_dim"] == config.G_kwargs["w_dim"] == 512
    assert config.G_kwargs["img_resolution"] == config.D_kwargs["img_resolution"] == 32
    assert config.D_kwargs["epilogue_kwargs"]["mbstd_group_size"] == 4
    assert config.D_kwargs["architecture"] == "resnet"
    assert config.loss_kwargs == dict(r1_gamma=pytest.approx(0.0064), style_mixing_prob=0.9, pl_weight=2.0,
                                      pl_batch_shrink=2, pl_decay=0.01)
    assert config.augment == dict(aug="ada", preset="xray", p=None, target=0.6, interval=4, ada_kimg=500.0)


def test_auto_at_256_px_and_above():
    config = make_config("auto", 256)
    assert config.batch_size == 16 and config.mbstd_group == 4
    assert config.loss_kwargs["r1_gamma"] == pytest.approx(0.0002 * 256 ** 2 / 16)  # 0.8192
    assert config.ema_kimg == pytest.approx(5.0)
    assert config.G_kwargs["synthesis_kwargs"]["channel_base"] == 16384
    _check_optimisers(config, 0.0025)
    config = make_config("auto", 512)
    assert config.batch_size == 8 and config.G_kwargs["synthesis_kwargs"]["channel_base"] == 32768
    config = make_config("auto", 1024)
    assert config.batch_size == 4 and config.lr == 0.002


def test_auto_batch_override_keeps_the_heuristics_of_the_default_batch():
    config = make_config("auto", 32, batch=4)
    # NVlabs derives gamma and ema from its own batch before --batch overrides it.
    assert config.batch_size == 4 and config.batch_gpu == 4 and config.mbstd_group == 4
    assert config.loss_kwargs["r1_gamma"] == pytest.approx(0.0064) and config.ema_kimg == pytest.approx(10.0)
    config = make_config("auto", 32, batch=6)
    assert config.mbstd_group == 3  # groups must tile the batch: the largest divisor of 6 up to 4


def test_paper256_and_stylegan2_use_reference_per_gpu_batches():
    config = make_config("paper256", 256)
    assert (config.batch_size, config.batch_gpu, config.mbstd_group) == (64, 8, 8)
    assert config.loss_kwargs["r1_gamma"] == 1 and config.ema_kimg == 20 and config.ema_rampup is None
    assert config.G_kwargs["mapping_kwargs"]["num_layers"] == 8
    assert config.G_kwargs["synthesis_kwargs"]["channel_base"] == 16384
    _check_optimisers(config, 0.0025)
    config = make_config("stylegan2", 256)
    assert (config.batch_size, config.batch_gpu, config.mbstd_group) == (32, 4, 4)
    assert config.loss_kwargs["r1_gamma"] == 10 and config.ema_kimg == 10
    assert config.G_kwargs["synthesis_kwargs"]["channel_base"] == 32768
    _check_optimisers(config, 0.002)


def test_overrides_apply():
    config = make_config("auto", 64, batch=8, gamma=0.5, map_layers=4, mbstd_group=2, lr=0.001, ema_kimg=3,
                         batch_gpu=4, c_dim=2, aug="fixed", p=0.3, augpipe="bgc", fp32=True)
    assert config.loss_kwargs["r1_gamma"] == 0.5 and config.G_kwargs["mapping_kwargs"]["num_layers"] == 4
    assert config.mbstd_group == 2 and config.D_kwargs["epilogue_kwargs"]["mbstd_group_size"] == 2
    assert config.batch_gpu == 4 and config.ema_kimg == 3 and config.G_kwargs["c_dim"] == 2
    _check_optimisers(config, 0.001)
    assert config.G_kwargs["synthesis_kwargs"]["num_fp16_res"] == 0
    assert config.D_kwargs["conv_clamp"] is None
    pipe, controller = build_augmentation(batch_size=config.batch_size, **config.augment)
    assert controller is None and float(pipe.p) == pytest.approx(0.3) and pipe.hue == 1
    transfer = make_config("auto", 64, transfer=True)
    assert transfer.augment["ada_kimg"] == 100 and transfer.ema_rampup is None


def test_tiny_is_small_and_builds_real_networks():
    config = make_config("tiny", 32)
    synthesis = config.G_kwargs["synthesis_kwargs"]
    for res in (4, 8, 16, 32):
        assert min(synthesis["channel_base"] // res, synthesis["channel_max"]) <= 32
    assert config.G_kwargs["z_dim"] == config.G_kwargs["w_dim"] == 64
    assert config.G_kwargs["mapping_kwargs"]["num_layers"] == 2
    assert config.batch_size == 8 and config.ema_rampup is not None and config.ema_kimg <= 2
    # The R1 weight has the shape of NVlabs' heuristic, resolution^2 / batch, with the config's own batch: a batch
    # override (the recipe bench's batch-32) keeps the weight of the config's batch of 8.
    assert make_config("tiny", 64).loss_kwargs["r1_gamma"] == pytest.approx(4 * config.loss_kwargs["r1_gamma"])
    assert make_config("tiny", 32, batch=16).loss_kwargs["r1_gamma"] == pytest.approx(config.loss_kwargs["r1_gamma"])
    G = networks.Generator(**config.G_kwargs)
    D = networks.Discriminator(**config.D_kwargs)
    assert sum(p.numel() for p in G.parameters()) < 150_000
    assert sum(p.numel() for p in D.parameters()) < 150_000
    with torch.no_grad():
        img = G(torch.randn(config.batch_gpu, 64), torch.zeros(config.batch_gpu, 0))
        assert img.shape == (8, 3, 32, 32) and D(img, torch.zeros(8, 0)).shape == (8, 1)


@pytest.mark.parametrize("cfg", CONFIG_NAMES)
def test_json_round_trip(cfg):
    config = make_config(cfg, 64)
    data = json.loads(json.dumps(config.to_dict()))
    assert TrainConfig.from_dict(data) == config
    assert TrainConfig.from_dict(data).to_dict() == data


def test_ema_beta_follows_the_ramp_up():
    config = make_config("tiny", 32)
    # Early: half-life is 5% of the images seen; later capped at ema_kimg.
    assert config.ema_beta(10_000) == pytest.approx(0.5 ** (8 / 500))
    assert config.ema_beta(1_000_000) == pytest.approx(0.5 ** (8 / 1000))
    assert 0 <= config.ema_beta(0) < 1e-6


def test_bad_choices_raise_user_errors_listing_valid_ones():
    with pytest.raises(UserError, match="auto, paper256, stylegan2, tiny"):
        make_config("huge", 32)
    with pytest.raises(UserError, match="16, 32, 64"):
        make_config("auto", 48)
    with pytest.raises(UserError, match="batch"):
        make_config("auto", 32, batch=0)
    with pytest.raises(UserError, match="batch_gpu"):
        make_config("auto", 32, batch=8, batch_gpu=3)
    with pytest.raises(UserError, match="mbstd_group"):
        make_config("auto", 32, batch=6, mbstd_group=4)
    with pytest.raises(UserError, match="p"):
        make_config("auto", 32, aug="fixed")
    with pytest.raises(UserError, match="ada, fixed, noaug"):
        make_config("auto", 32, aug="sometimes")
    with pytest.raises(UserError, match="xray"):
        make_config("auto", 32, augpipe="rainbow")
    with pytest.raises(UserError, match="training options lack"):
        TrainConfig.from_dict({"cfg": "auto"})
