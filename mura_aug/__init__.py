"""mura_aug: synthetic MURA X-rays with StyleGAN2-ADA in plain PyTorch, and an honest evaluation.

Stages (each a notebook and a `python -m mura_aug <stage>` command):
  01 prepare -> 02/03 train -> 04 resume -> 05 synth -> 06 evaluate
"""
from mura_aug.errors import UserError


def _installed_version() -> str:
    # pyproject.toml owns the version; an install (editable or not) carries it in the package metadata.
    from importlib import metadata

    try:
        return metadata.version("mura_aug")
    except metadata.PackageNotFoundError:  # a checkout put on sys.path by hand, never installed
        return "0+unknown"


__version__ = _installed_version()
__all__ = ["UserError", "__version__"]
