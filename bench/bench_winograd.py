"""Winograd F(4x4, 3x3) against the direct convolution on the CPU, per layer shape (mura_aug.gan.winograd).

    python bench/bench_winograd.py [--threads 1] [--repeats 5] [--out bench/results/winograd_cpu.md]

For each shape: a 3x3 stride-1 convolution with padding 1, timed as forward + backward (input and weight
gradients, what Gmain / Dmain need) and as a double backward (the gradient w.r.t. the input, with its graph,
then a backward through that: what R1 and path length need). Best of `--repeats`, after one warm-up call.
The process keeps freed memory the way training does (mura_aug.devices.reuse_freed_cpu_memory), since
otherwise both sides pay the kernel for fresh pages on every large tensor. The shapes are those of the
`auto` networks at 32 px (batch 4, path length batch 2) plus smaller ones that show where Winograd stops
paying, which is what winograd.MIN_PIXELS / MIN_CHANNELS are set from.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its shared helpers
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

# (batch, channels, height, width): auto-32's layers first, then the threshold region
SHAPES = [(4, 512, 32, 32), (4, 512, 16, 16), (2, 512, 32, 32), (4, 512, 8, 8),
          (4, 256, 32, 32), (4, 128, 64, 64), (4, 128, 16, 16), (8, 64, 32, 32), (4, 64, 128, 128),
          (8, 32, 32, 32)]


def best_time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(conv, shape, repeats):
    import torch

    torch.manual_seed(0)
    x0 = torch.randn(shape)
    w0 = torch.randn(shape[1], shape[1], 3, 3) / (3 * shape[1] ** 0.5)

    def forward_backward():
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        conv(x, w).square().mean().backward()

    def double_backward():
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        (grad,) = torch.autograd.grad(conv(x, w).square().mean(), x, create_graph=True)
        grad.square().sum().backward()

    return best_time(forward_backward, repeats), best_time(double_backward, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "winograd_cpu.md")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from mura_aug.devices import reuse_freed_cpu_memory
    from mura_aug.gan import winograd

    torch.set_num_threads(args.threads)

    def direct(x, w):
        return F.conv2d(x, w, padding=1)

    sys.path.insert(0, str(REPO_ROOT / "bench"))
    import machine_speed

    speed_before = machine_speed.measure()
    rows = []
    with reuse_freed_cpu_memory("cpu"):
        for shape in SHAPES:
            d_fb, d_dd = measure(direct, shape, args.repeats)
            w_fb, w_dd = measure(winograd.conv3x3, shape, args.repeats)
            used = shape[1] >= winograd.MIN_CHANNELS and shape[2] * shape[3] >= winograd.MIN_PIXELS
            rows.append((shape, d_fb, w_fb, d_dd, w_dd, used))
            print(f"{shape}: fwd+bwd {d_fb * 1e3:.1f} -> {w_fb * 1e3:.1f} ms, double backward "
                  f"{d_dd * 1e3:.1f} -> {w_dd * 1e3:.1f} ms, used by the networks: {used}", flush=True)
    speed_note = machine_speed.describe(speed_before, machine_speed.measure())
    print(speed_note)
    load = os.getloadavg()
    lines = [
        "# Winograd F(4x4, 3x3) vs direct 3x3 convolution on CPU",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()}-core CPU "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, fp32, {args.threads} "
        f"thread(s), best of {args.repeats}.",
        f"- Load average when finished: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.",
        "- Command: `python bench/bench_winograd.py " + " ".join(sys.argv[1:]) + "`",
        f"- {speed_note}.",
        "- fwd+bwd: forward, then input and weight gradients. double: input gradient with its graph, then a "
        "backward through it (R1 / path length).",
        "",
        "| input N x C x H x W | direct fwd+bwd ms | Winograd fwd+bwd ms | speed-up | direct double ms | "
        "Winograd double ms | speed-up | networks use Winograd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for shape, d_fb, w_fb, d_dd, w_dd, used in rows:
        lines.append(f"| {' x '.join(map(str, shape))} | {d_fb * 1e3:.1f} | {w_fb * 1e3:.1f} | {d_fb / w_fb:.2f}x | "
                     f"{d_dd * 1e3:.1f} | {w_dd * 1e3:.1f} | {d_dd / w_dd:.2f}x | {'yes' if used else 'no'} |")
    lines += ["", f"Thresholds in mura_aug/gan/winograd.py: at least {winograd.MIN_CHANNELS} channels and "
              f"{winograd.MIN_PIXELS} output pixels per image."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_keeping_readings(args.out, "\n".join(lines))  # the readings written by hand under "## " stay
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
