"""StyleGAN2-ADA in plain PyTorch (no custom compiled ops), call- and weight-compatible with NVlabs."""


def load_nvlabs_pkl(path):
    """Load an official NVlabs StyleGAN2-ADA pickle into mura_aug modules (see mura_aug.gan.nvlabs)."""
    from mura_aug.gan.nvlabs import load_nvlabs_pkl as _load

    return _load(path)


def load_generator(path, device="cpu"):
    """A generator from an inference file, a training state, an NVlabs .pkl or a run folder."""
    from mura_aug.gan.network_file import load_generator as _load

    return _load(path, device=device)
