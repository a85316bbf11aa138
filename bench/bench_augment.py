"""Throughput of the ADA augmentation pipe on this machine (CPU unless --device cuda).

    python bench/bench_augment.py [--device cpu] [--threads 2] [--out bench/results/augment.md]

For each resolution (32, 256 px), preset ('xray', 'bgc') and p (0.2, typical once ADA settles on a small data
set, and 1.0, the worst case), it times the forward pass and forward + backward of a batch and reports images
per second. The images are random; the cost does not depend on their content.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its shared helpers
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)
from mura_aug.gan.augment import make_augment_pipe  # noqa: E402

CASES = [  # (resolution px, batch images)
    (32, 32),
    (256, 16),
]


def _time(fn, repeats):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(device, repeats):
    rows = []
    for resolution, batch in CASES:
        images = torch.rand(batch, 3, resolution, resolution, device=device) * 2 - 1
        for preset in ("xray", "bgc"):
            for p in (0.2, 1.0):
                pipe = make_augment_pipe(preset, p=p).to(device)

                def forward():
                    pipe(images)
                    if device.type == "cuda":
                        torch.cuda.synchronize()

                def forward_backward():
                    x = images.clone().requires_grad_(True)
                    pipe(x).square().sum().backward()
                    if device.type == "cuda":
                        torch.cuda.synchronize()

                torch.manual_seed(0)
                sec_fwd = _time(forward, repeats)
                sec_both = _time(forward_backward, repeats)
                rows.append(dict(resolution=resolution, batch=batch, preset=preset, p=p,
                                 fwd_img_s=batch / sec_fwd, both_img_s=batch / sec_both,
                                 ms_per_batch=sec_both * 1000))
                print(f"{resolution:4d} px batch {batch:3d} {preset:5s} p={p:.1f}: forward {batch / sec_fwd:8.0f} img/s,"
                      f" forward+backward {batch / sec_both:8.0f} img/s", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per case")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "augment.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = measure(device, args.repeats)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU")
    lines = [
        "# ADA augmentation pipe throughput",
        "",
        f"Measured {datetime.date.today().isoformat()} with `python bench/bench_augment.py --device {args.device} "
        f"--threads {args.threads}` on: {machine}; torch {torch.__version__}, {args.threads} threads. "
        "The machine was shared with other jobs, so these are lower bounds.",
        "",
        "| px | batch | preset | p | forward img/s | forward+backward img/s | ms per batch (fwd+bwd) |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['resolution']} | {row['batch']} | {row['preset']} | {row['p']:.1f} | "
                     f"{row['fwd_img_s']:.0f} | {row['both_img_s']:.0f} | {row['ms_per_batch']:.1f} |")
    lines += ["", "Only samples that draw an operation are touched, so the cost grows with p; at p=0 the pipe "
              "returns its input unchanged at no cost."]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_keeping_readings(out, "\n".join(lines))  # the readings written by hand under "## " stay
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
