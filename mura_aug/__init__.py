"""mura_aug: synthetic MURA X-rays with StyleGAN2-ADA in plain PyTorch, and an honest evaluation.

Stages (each a notebook and a `python -m mura_aug <stage>` command):
  01 prepare -> 02/03 train -> 04 resume -> 05 synth -> 06 evaluate
"""
from mura_aug.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__"]
