"""CPU cost of the StyleGAN2-ADA networks (mura_aug.gan.networks, ops) per training phase, and the sec/kimg
that follows for NVlabs' training schedule.

    python bench/bench_networks.py [--config auto|tiny|both] [--threads 2,1] [--precision fp32[,bf16]]
                                   [--batch 4] [--repeats 3] [--winograd on|off|both]
                                   [--memory keep|default|both]
                                   [--out bench/results/networks_cpu.md]

Reference point (issue 3): NVIDIA's own code takes about 900 s/kimg at 32x32, `auto` config, batch 4,
fp32, on a 2-core CPU; the goal is half of that or less. This bench times the networks alone, with the
phases NVlabs' loss runs, plain logistic losses and no augmentation:
  Gmain  every step: G forward (random noise, style mixing not included) -> D -> backward into G and D
  Dmain  every step: G forward without grad, D on fakes and reals in one pass, one backward into D
  Greg   every 4 steps: path-length term on batch/2 (double backward through G)
  Dreg   every 16 steps: R1 on reals (double backward through D)
sec/kimg = (1000 / batch) * (Gmain + Dmain + Greg / 4 + Dreg / 16). The whole training loop (augmentation,
EMA, data, logging) is measured by the training loop's own bench.

On a machine shared with other jobs, two OpenMP threads can wait a whole scheduler slice for each other at
every parallel region (a 0.1 ms matmul then takes 40 ms), so the bench also runs with one thread: its CPU
seconds are the arithmetic cost, and about half of them is what two idle cores need.
`--precision bf16` runs the phases under torch.autocast('cpu', bfloat16) (not NVlabs' fp32 numerics; an
option for CPUs with AVX512-BF16 / AMX).
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

import machine_speed  # noqa: E402  (bench/machine_speed.py)

NVLABS_AUTO_32_S_PER_KIMG = 900.0  # NVIDIA's code, auto config, 32 px, batch 4, fp32, 2-core CPU (issue 3)
# NVIDIA's table for its own code (stylegan2-ada-pytorch README, "expected training times", default config =
# auto, 256 px, batch 16) on one Tesla V100 with its custom CUDA kernels: s/kimg, low and high end, and the
# hours per 1000 kimg (6 h 36 min). bench/gpu_check.py compares against it (issue 17).
NVLABS_V100_AUTO_256_S_PER_KIMG = (21.6, 24.2)
NVLABS_V100_AUTO_256_HOURS_PER_1000_KIMG = 6 + 36 / 60

# NVlabs' `auto` spec at 32 px on one GPU: fmaps 0.5 -> channel_base 16384, map 2, mbstd 4, conv_clamp 256.
AUTO_32_G = dict(z_dim=512, c_dim=0, w_dim=512, img_resolution=32, img_channels=3,
                 mapping_kwargs=dict(num_layers=2),
                 synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256))
AUTO_32_D = dict(c_dim=0, img_resolution=32, img_channels=3, channel_base=16384, channel_max=512,
                 num_fp16_res=4, conv_clamp=256, epilogue_kwargs=dict(mbstd_group_size=4))


def tiny_kwargs():
    """The `tiny` config's network kwargs at 32 px, from mura_aug.gan.configs (None if not available)."""
    try:
        from mura_aug.gan.configs import make_config

        config = make_config("tiny", 32)
    except Exception as exc:  # the configs module belongs to another part; the bench still runs `auto`
        print(f"tiny config unavailable ({type(exc).__name__}: {exc}); skipping it")
        return None
    common = dict(c_dim=0, img_resolution=32, img_channels=3)
    G_kwargs = {**dict(config.G_kwargs), **common}
    D_kwargs = {**dict(config.D_kwargs), **common}
    return G_kwargs, D_kwargs


def phases(G, D, batch):
    """The four training phases as closures, each doing its forward and backward passes."""
    import torch
    import torch.nn.functional as F

    real = torch.rand(batch, 3, G.img_resolution, G.img_resolution) * 2 - 1

    def z(n):
        return torch.randn(n, G.z_dim)

    def train_only(module):  # like NVlabs: each phase computes weight gradients of its own network only
        G.requires_grad_(module is G)
        D.requires_grad_(module is D)

    def g_main():
        train_only(G)
        img = G(z(batch), None, noise_mode="random")
        F.softplus(-D(img, None)).mean().backward()

    def d_main():
        train_only(D)
        with torch.no_grad():
            fake = G(z(batch), None, noise_mode="random")
        # One D pass over fakes and reals, as mura_aug's loss does (StyleGAN2Loss._paired_d_main): with
        # mbstd groups of 4 and a batch of 4, interleaving keeps every group all-fake or all-real.
        logits = D(torch.stack([fake, real], dim=1).flatten(0, 1), None).reshape(batch, 2)
        loss = F.softplus(logits[:, 0]).mean() + F.softplus(-logits[:, 1]).mean()
        loss.backward()

    def g_reg():
        train_only(G)
        n = max(batch // 2, 1)
        ws = G.mapping(z(n), None)
        img = G.synthesis(ws, noise_mode="random")
        noise = torch.randn_like(img) / G.img_resolution
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        grad.square().sum(2).mean(1).sqrt().mean().backward()

    def d_reg():
        train_only(D)
        x = real.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(D(x, None).sum(), x, create_graph=True)
        grad.square().sum([1, 2, 3]).mean().backward()

    return {"Gmain": g_main, "Dmain": d_main, "Greg": g_reg, "Dreg": d_reg}


def time_phase(fn, repeats):
    fn()  # warm-up: oneDNN picks its kernels on the first call
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def time_phases(G, D, batch, repeats, precision, name, threads):
    import contextlib

    import torch

    rows = {}
    for phase, fn in phases(G, D, batch).items():
        context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with context:
            rows[phase] = time_phase(fn, repeats)
        print(f"{name} x{threads} {phase}: {rows[phase][0]:.3f} s wall, {rows[phase][1]:.3f} s CPU per batch")
    return rows


def bench_config(name, G_kwargs, D_kwargs, batch, repeats, threads, precision="fp32", keep_memory=True):
    import contextlib

    import torch

    from mura_aug.devices import reuse_freed_cpu_memory
    from mura_aug.gan.networks import Discriminator, Generator

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    G, D = Generator(**G_kwargs).train(), Discriminator(**D_kwargs).train()
    params = sum(p.numel() for p in G.parameters()) + sum(p.numel() for p in D.parameters())
    memory = reuse_freed_cpu_memory("cpu") if keep_memory else contextlib.nullcontext()
    with memory:
        rows = time_phases(G, D, batch, repeats, precision, name, threads)
    weights = {"Gmain": 1, "Dmain": 1, "Greg": 1 / 4, "Dreg": 1 / 16}
    steps_per_kimg = 1000 / batch
    s_per_kimg = steps_per_kimg * sum(rows[p][0] * w for p, w in weights.items())
    cpu_per_kimg = steps_per_kimg * sum(rows[p][1] * w for p, w in weights.items())
    from mura_aug.gan import ops

    name = (f"{name} {precision}" + ("" if ops.CPU_WINOGRAD else " direct-conv")
            + ("" if keep_memory else " default-malloc"))
    print(f"{name} x{threads}: {s_per_kimg:.0f} s/kimg wall ({cpu_per_kimg:.0f} CPU-s/kimg), "
          f"{params / 1e6:.2f} M parameters")
    return dict(name=name, threads=threads, rows=rows, s_per_kimg=s_per_kimg, cpu_per_kimg=cpu_per_kimg,
                params=params, load=os.getloadavg()[0])


def write_report(path, results, args, speed_note=""):
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    lines = [
        "# StyleGAN2-ADA networks on CPU: time per training phase and sec/kimg",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()}-core CPU, no GPU "
        f"({platform.processor() or platform.machine()}), precision {args.precision}, batch {args.batch}, "
        f"median of {args.repeats}.",
        f"- Load average when finished: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min). Other jobs "
        "shared the two cores, so wall times are upper bounds; CPU seconds are less affected.",
        "- Command: `python bench/bench_networks.py " + " ".join(sys.argv[1:]) + "`",
        f"- {speed_note}." if speed_note else "",
        "- Networks only (plain logistic losses, no augmentation, no EMA, no data loading); schedule as NVlabs: "
        "Gmain + Dmain every step, path length every 4 (batch/2), R1 every 16.",
        "",
        "| config | threads | params (M) | Gmain s | Dmain s | Greg s | Dreg s | s/kimg (wall) | CPU-s/kimg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows = r["rows"]
        phase_cells = " | ".join(f"{rows[p][0]:.2f}" for p in ("Gmain", "Dmain", "Greg", "Dreg"))
        lines.append(f"| {r['name']} | {r['threads']} | {r['params'] / 1e6:.2f} | {phase_cells} | "
                     f"{r['s_per_kimg']:.0f} | {r['cpu_per_kimg']:.0f} |")
    lines += ["", f"torch {__import__('torch').__version__}; load average 1 min at each row's end: "
              + ", ".join(f"{r['name']} x{r['threads']}: {r['load']:.1f}" for r in results) + "."]
    for auto in (r for r in results if r["name"].startswith("auto-32")):
        lines += ["", f"{auto['name']} with {auto['threads']} thread(s): {auto['s_per_kimg']:.0f} s/kimg wall, "
                  f"{auto['cpu_per_kimg']:.0f} CPU-s/kimg; NVIDIA's code, same setting: about "
                  f"{NVLABS_AUTO_32_S_PER_KIMG:.0f} s/kimg (issue 3), goal <= {NVLABS_AUTO_32_S_PER_KIMG / 2:.0f}."]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_keeping_readings(path, "\n".join(lines))  # the readings written by hand under "## " stay
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=("auto", "tiny", "both"), default="both")
    parser.add_argument("--threads", default="2,1", help="torch CPU thread counts to try, comma-separated")
    parser.add_argument("--precision", default="fp32", help="fp32 and/or bf16 (CPU autocast), comma-separated")
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per phase (median)")
    parser.add_argument("--winograd", choices=("on", "off", "both"), default="on",
                        help="Winograd F(4x4,3x3) for the big 3x3 convs (ops.CPU_WINOGRAD); both = A/B")
    parser.add_argument("--memory", choices=("keep", "default", "both"), default="keep",
                        help="keep freed memory in the process as training does (reuse_freed_cpu_memory), "
                             "glibc's default, or both (A/B)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "networks_cpu.md")
    args = parser.parse_args()

    speed_before = machine_speed.measure()
    results = []
    tiny = tiny_kwargs() if args.config in ("tiny", "both") else None
    from mura_aug.gan import ops

    winograd_settings = {"on": [True], "off": [False], "both": [True, False]}[args.winograd]
    memory_settings = {"keep": [True], "default": [False], "both": [True, False]}[args.memory]
    for precision, threads, use_winograd, keep_memory in itertools.product(
            args.precision.split(","), [int(t) for t in args.threads.split(",")], winograd_settings, memory_settings):
        ops.CPU_WINOGRAD = use_winograd
        if args.config in ("auto", "both"):
            results.append(bench_config("auto-32", AUTO_32_G, AUTO_32_D, args.batch, args.repeats, threads,
                                        precision, keep_memory))
        if tiny is not None:
            results.append(bench_config("tiny-32", *tiny, args.batch, args.repeats, threads, precision,
                                        keep_memory))
    speed_note = machine_speed.describe(speed_before, machine_speed.measure())
    print(speed_note)
    write_report(args.out, results, args, speed_note)


if __name__ == "__main__":
    main()
