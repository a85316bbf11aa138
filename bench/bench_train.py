"""Seconds per kimg of the real training loop on the CPU (mura_aug.gan.loop.train: data, augmentation,
all four loss phases with lazy regularisation, optimiser steps, EMA, ADA, stats).

    python bench/bench_train.py [--settings tiny-32,auto-32,paper256-256] [--threads 2[,1]] [--workdir DIR]
                                [--layouts auto[,nchw,channels-last]] [--out bench/results/train_cpu.md]

Settings (name-resolution): `tiny-32` (batch 8), `auto-32` (batch 4: issue 3's reference, NVIDIA's own code
takes about 900 s/kimg there on a 2-core CPU, goal <= 450) and `paper256-256` (batch 64 in 8 rounds of 8, so
a CPU run is a handful of steps and the figure is an extrapolation, labelled as such).

Each run trains a fresh network on demo radiographs (bench_quality.build_dataset) for a few ticks, one tick =
a whole number of regularisation periods (16 steps: G path length every 4, D R1 every 16, as NVlabs), so a
tick's time is the schedule's average. The first tick also pays oneDNN's kernel selection and is dropped,
and so is the last: it ends with the run's final snapshot (seconds that a real run pays once per `snap`
ticks, not per tick).
paper256 is too slow for even one period: it runs 2 steps (the first with both regularisers, the second
without) and extrapolates s/kimg = (main + (first - main) * share) / kimg_per_step, where the regulariser
share is between 1/16 (all of the extra time is R1) and 1/4 (all path length); both ends are reported.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from bench_networks import NVLABS_AUTO_32_S_PER_KIMG  # noqa: E402  (NVIDIA's reference, issue 3)
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

REG_PERIOD_STEPS = 16  # lcm of NVlabs' G_reg_interval 4 and D_reg_interval 16

# name -> (cfg, resolution px, batch or None for the config's, ticks incl. the dropped first one)
SETTINGS = {
    "tiny-32": ("tiny", 32, None, 4),
    "auto-32": ("auto", 32, 4, 3),
    "paper256-256": ("paper256", 256, None, 2),
}


# --layouts: the CPU memory layout of the float32 blocks (ops.CPU_CHANNELS_LAST); auto = the package's rule
LAYOUTS = {"auto": None, "nchw": False, "channels-last": True}


def make_run(name, workdir: Path, run: str, ticks: int, steps_per_tick: Optional[int] = None):
    """A fresh bench run of setting `name`: (workspace with the demo radiographs, image count, TrainConfig,
    RunSettings training `ticks` ticks, kimg per tick). One tick is one regularisation period (16 steps),
    paper256's a single step, unless `steps_per_tick` says otherwise. Any earlier run of that name is
    deleted: resuming would skip the ticks to time."""
    import shutil

    from bench_quality import build_dataset
    from mura_aug.gan.configs import make_config
    from mura_aug.gan.settings import RunSettings

    cfg, resolution, batch, _ = SETTINGS[name]
    config = make_config(cfg, resolution, batch=batch)
    if steps_per_tick is None:
        steps_per_tick = 1 if cfg == "paper256" else REG_PERIOD_STEPS
    tick_kimg = steps_per_tick * config.batch_size / 1000
    workspace, count = build_dataset(workdir, resolution=resolution)
    stale = workspace.experiments / run
    if stale.exists():
        shutil.rmtree(stale)
    # cpu_ok: the point here is to time a CPU, also where training a full-size network on it takes weeks
    settings = RunSettings(label="positive", cfg=cfg, resolution=resolution, batch=batch, kimg=ticks * tick_kimg,
                           kimg_per_tick=tick_kimg, snap=10_000, device="cpu", progress=False, run=run, keep=1,
                           cpu_ok=True)
    return workspace, count, config, settings, tick_kimg


def run_setting(name, workdir: Path, threads: int, log, layout: str = "auto"):
    import torch

    from mura_aug.gan import loop, ops

    cfg, resolution, batch, ticks_wanted = SETTINGS[name]
    extrapolated = cfg == "paper256"
    ticks_run = ticks_wanted if extrapolated else ticks_wanted + 1  # + the last tick, which writes the snapshot
    workspace, count, config, settings, tick_kimg = make_run(name, workdir, f"bench-{name}", ticks_run)
    batch_size = config.batch_size
    torch.set_num_threads(threads)
    ops.CPU_CHANNELS_LAST = LAYOUTS[layout]
    used_layout = "channels-last" if ops.cpu_channels_last() else "NCHW"
    name_shown = f"{name} ({used_layout})"
    ticks = []
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def on_tick(line):
        nonlocal cpu0, wall0
        cpu, wall = time.process_time(), time.perf_counter()
        ticks.append(dict(wall=wall - wall0, cpu=cpu - cpu0, load=os.getloadavg()[0], kimg=line["kimg"]))
        cpu0, wall0 = cpu, wall
        log(f"{name_shown}: tick {len(ticks)} at {line['kimg']:.3f} kimg: {ticks[-1]['wall']:.1f} s wall, "
            f"{ticks[-1]['cpu']:.1f} CPU-s")

    loop.train(workspace.root, settings, on_tick=on_tick, log=lambda text: None)
    result = dict(name=name, layout=used_layout, cfg=cfg, resolution=resolution, batch=batch_size, threads=threads,
                  images=count, ticks=len(ticks), extrapolated=extrapolated, load=os.getloadavg())
    if extrapolated:
        first, main = ticks[0], ticks[-1]
        for key in ("wall", "cpu"):
            extra = max(first[key] - main[key], 0.0)
            low = (main[key] + extra / 16) / tick_kimg
            high = (main[key] + extra / 4) / tick_kimg
            result[key] = (low, high)
    else:
        # The first tick pays kernel selection and first-touch allocations, the last the final snapshot.
        timed = ticks[1:-1]
        for key in ("wall", "cpu"):
            value = statistics.median(t[key] for t in timed) / tick_kimg
            result[key] = (value, value)
    log(f"{name_shown}: {result['wall'][0]:.0f}-{result['wall'][1]:.0f} s/kimg wall, "
        f"{result['cpu'][0]:.0f}-{result['cpu'][1]:.0f} CPU-s/kimg")
    return result


def write_report(path: Path, results, argv, speed_note=""):
    import torch

    from mura_aug.gan import ops

    load = os.getloadavg()
    lines = [
        "# Training loop on CPU: seconds per kimg (whole pipeline)",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()}-core {ops.cpu_vendor()} "
        "CPU, no GPU "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, fp32.",
        f"- Load average when finished: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min). The machine "
        "is shared: wall times are upper bounds; CPU seconds are less affected.",
        "- Command: `python bench/bench_train.py " + " ".join(argv) + "`",
        f"- {speed_note}." if speed_note else "",
        "- `loop.train(...)` end to end: data sampling, xray augmentation with ADA, Gmain/Dmain every step, path length "
        "every 4 and R1 every 16 steps, Adam, G_ema, stats. One tick = 16 steps; the first tick (warm-up) and "
        "the last (final snapshot) are dropped.",
        "",
        "| setting | CPU layout | batch | threads | ticks timed | s/kimg (wall) | CPU-s/kimg | load (1 min) | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        def cell(key):
            low, high = r[key]
            digits = 1 if high < 20 else 0  # tiny-32's figures are ~10 s/kimg: tenths matter there
            same = abs(high - low) < 0.5 * 10 ** -digits
            return f"{low:.{digits}f}" if same else f"{low:.{digits}f}-{high:.{digits}f}"
        note = ("extrapolated from 2 steps (1 with both regularisers); range = R1 vs path-length share"
                if r["extrapolated"] else "")
        timed = r["ticks"] if r["extrapolated"] else r["ticks"] - 2
        lines.append(f"| {r['name']} | {r['layout']} | {r['batch']} | {r['threads']} | {timed} | {cell('wall')} | {cell('cpu')} | "
                     f"{r['load'][0]:.1f} | {note} |")
    for r in results:
        if r["name"] == "auto-32" and r["threads"] == 2:
            lines += ["", f"auto-32 (batch 4, {r['threads']} threads): {r['wall'][0]:.0f} s/kimg wall; NVIDIA's code "
                      f"about {NVLABS_AUTO_32_S_PER_KIMG:.0f}; goal <= {NVLABS_AUTO_32_S_PER_KIMG / 2:.0f}."]
    write_keeping_readings(path, "\n".join(lines))  # the readings written by hand under "## " headings stay
    print(f"wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated: {', '.join(SETTINGS)}")
    parser.add_argument("--threads", default="2", help="torch CPU thread counts, comma-separated (e.g. 2,1)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mura_aug_bench_train"))
    parser.add_argument("--layouts", default="auto",
                        help=f"CPU layouts of the float32 blocks, comma-separated: {', '.join(LAYOUTS)} (A/B)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "train_cpu.md")
    args = parser.parse_args()
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    layouts = [n.strip() for n in args.layouts.split(",") if n.strip()]
    if any(layout not in LAYOUTS for layout in layouts):
        parser.error(f"unknown layout(s) in {args.layouts!r}; choose from {', '.join(LAYOUTS)}")
    import machine_speed

    speed_before = machine_speed.measure()
    results = [run_setting(name, args.workdir, int(threads), lambda text: print(text, flush=True), layout)
               for name in names for threads in args.threads.split(",") for layout in layouts]
    speed_note = machine_speed.describe(speed_before, machine_speed.measure())
    print(speed_note)
    write_report(args.out, results, sys.argv[1:], speed_note)


if __name__ == "__main__":
    main()
