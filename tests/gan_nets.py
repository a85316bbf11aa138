"""Small StyleGAN2 networks for the tests: one 16 px G (1-layer mapping) and D pair, sizes as asked."""
import torch

from mura_aug.gan import networks


def small_nets(z_dim: int, img_channels: int, channel_base: int, channel_max: int, mbstd_group_size: int):
    """(G, D) at 16 px in training mode, seeded, with conv_clamp 256; channels = min(base / res, max)."""
    torch.manual_seed(0)
    G = networks.Generator(z_dim=z_dim, c_dim=0, w_dim=z_dim, img_resolution=16, img_channels=img_channels,
                           mapping_kwargs=dict(num_layers=1),
                           synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, conv_clamp=256))
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=img_channels, channel_base=channel_base,
                               channel_max=channel_max, conv_clamp=256,
                               epilogue_kwargs=dict(mbstd_group_size=mbstd_group_size))
    return G.train(), D.train()
