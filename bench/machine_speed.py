"""How fast this (shared) machine is right now: one fixed convolution, timed before and after a benchmark.

The CPU figures in bench/results were taken on a 2-core machine shared with other jobs whose load does not
always show in the load average (neighbours on the same physical cores slow every instruction down). So each
report that depends on it also records this reference: a 512 -> 512 3x3 convolution of 4 x 512 x 32 x 32
(the biggest layer of `auto` at 32 px), forward + backward, one thread, best of 3. On this machine, quiet:
about 390 ms (2026-11-29 22:49 UTC); with a busy neighbour 460-550 ms was seen. Divide a figure by
(reference / 390) to compare runs taken at different times.
"""
from __future__ import annotations

import time

QUIET_REFERENCE_MS = 390.0  # the reference on this machine when nothing else ran (see above)


def reference_conv_ms(repeats: int = 3) -> float:
    import torch
    import torch.nn.functional as F

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        x0 = torch.randn(4, 512, 32, 32, generator=generator)
        w0 = torch.randn(512, 512, 3, 3, generator=generator) / 68
        best = float("inf")
        for _ in range(repeats + 1):  # the first call picks oneDNN's kernels
            x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
            start = time.perf_counter()
            F.conv2d(x, w, padding=1).square().mean().backward()
            best = min(best, time.perf_counter() - start)
        return best * 1000
    finally:
        torch.set_num_threads(threads)


def describe(before_ms: float, after_ms: float) -> str:
    return (f"machine speed reference (bench/machine_speed.py: one 512->512 3x3 conv, fwd+bwd, 1 thread): "
            f"{before_ms:.0f} ms before, {after_ms:.0f} ms after (quiet machine: ~{QUIET_REFERENCE_MS:.0f} ms)")
