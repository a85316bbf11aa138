"""How fast this (shared) machine is right now: one fixed convolution, timed before and after a benchmark.

The CPU figures in bench/results were taken on a 2-core machine shared with other jobs whose load does not
always show in the load average (neighbours on the same physical cores slow every instruction down). So each
report that depends on it also records this reference: a 512 -> 512 3x3 convolution of 4 x 512 x 32 x 32
(the biggest layer of `auto` at 32 px), forward + backward, best of 3, with one thread and with two. On this
machine, quiet: about 390 ms with one thread (2026-11-29 22:49 UTC), about 210-220 ms with two; with a busy
neighbour 460-600 ms and 290-300 ms were seen. The two-thread figure also catches a neighbour on the second
core, which slows a two-thread run much more than the one-thread reference shows.
"""
from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

QUIET_REFERENCE_MS = 390.0  # ms, 1 thread, on this machine when nothing else ran (see above)
QUIET_REFERENCE_2_THREADS_MS = 210.0  # ms, 2 threads, the best seen on this machine


def cpu_model() -> str:
    """The CPU's model name, for the machine line of every results file."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as written into results files."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the worker processes)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def reference_conv_ms(repeats: int = 3, threads: int = 1) -> float:
    import torch
    import torch.nn.functional as F

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
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
        torch.set_num_threads(previous_threads)


def measure() -> tuple:
    """(1-thread ms, 2-thread ms): the second shows a neighbour on the other core, which the first misses."""
    return reference_conv_ms(threads=1), reference_conv_ms(threads=2)


def describe(before: tuple, after: tuple) -> str:
    return (f"machine speed reference (bench/machine_speed.py: one 512->512 3x3 conv, fwd+bwd, 1 / 2 threads): "
            f"{before[0]:.0f} / {before[1]:.0f} ms before, {after[0]:.0f} / {after[1]:.0f} ms after (quiet machine: "
            f"~{QUIET_REFERENCE_MS:.0f} / ~{QUIET_REFERENCE_2_THREADS_MS:.0f} ms)")
