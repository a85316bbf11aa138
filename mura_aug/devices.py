"""Which torch device a stage runs on: one rule for every stage, so "auto" and the errors read the same."""
from __future__ import annotations

import contextlib

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


# glibc malloc parameters (mallopt(3)): M_TRIM_THRESHOLD = -1, M_MMAP_MAX = -4.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULT_MMAP_MAX = 65536  # glibc's default number of mmap'ed blocks
_GLIBC_DEFAULT_TRIM_THRESHOLD = 128 * 1024  # bytes; glibc's default before its dynamic adjustment


def _glibc():
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def reuse_freed_cpu_memory(device):
    """While training on a CPU, keep freed memory in the process instead of handing it back to the system.

    Why: glibc serves blocks over 32 MB (and, until its threshold has adapted, smaller ones) with a fresh
    mmap and unmaps them on free, so every large tensor of every step pays the kernel to zero and map its
    pages again (~2 GB/s). For the `auto` networks at 32 px that was 15-25 % of the CPU time of a training
    step (a 38 MB Winograd weight transform: 18 ms with fresh pages, 3.5 ms with reused ones). The process
    keeps its peak heap while this is in effect; on leaving, glibc's default limits come back and unused memory
    is returned. A no-op on other devices and other C libraries (macOS, musl)."""
    libc = _glibc() if str(device).startswith("cpu") else None
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, _GLIBC_DEFAULT_MMAP_MAX)
        libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
