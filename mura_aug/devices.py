"""Which torch device a stage runs on: one rule for every stage, so "auto" and the errors read the same."""
from __future__ import annotations

from mura_aug.errors import UserError


def resolve_device(device=None):
    """None / "" / "auto" -> the GPU when torch sees one, else the CPU; "cpu", "cuda", "cuda:1" or a
    torch.device as given. A CUDA device on a machine without one, or a name torch does not know, is a
    UserError saying what to pass instead."""
    import torch

    if isinstance(device, torch.device):
        resolved = device
    elif device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise UserError(f"Unknown device {device!r}.", "Use auto, cpu, cuda or cuda:N.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"The device {str(resolved)!r} was asked for, but PyTorch sees no CUDA GPU on this machine.",
                        "Use device 'auto' or 'cpu' (--device cpu), or in Colab switch to a GPU: "
                        "Runtime > Change runtime type > GPU.")
    return resolved
