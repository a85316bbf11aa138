"""What a CPU training step costs per step and per image: the real loop at several batch sizes, fitted.

    python bench/train_step_cost.py [--setting tiny-32] [--threads 2] [--batches 2,4,8,16] [--ticks 6]
                                    [--workdir DIR] [--out bench/results/train_step_cost_tiny32.md]

For each batch size, a fresh run of a bench_train.py setting (its network, its data, every loss phase with
lazy regularisation) trains `--ticks` ticks of 16 steps; the median tick after the first (warm-up) and
before the last (final snapshot) gives ms per step. A least-squares line ms/step = fixed + per_image * batch
then splits a step into what does not grow with the batch (Python, operator dispatch, kernel launches,
optimiser, EMA: per-step overhead) and what does (arithmetic), and says what the setting's own batch costs
per kimg, split the same way.

The multiply-adds per kimg of the setting's own batch are counted too, from the shapes of every
convolution and matrix product the loop dispatches in one tick (torch.utils.flop_counter's formulas), so the
arithmetic per image can be set beside the machine's speed for a bare convolution.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from bench_train import REG_PERIOD_STEPS, SETTINGS, make_run  # noqa: E402  (bench/bench_train.py)
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)


def fit_line(xs, ys):
    """Least-squares (intercept, slope) of ys against xs (at least two distinct xs)."""
    if len(set(xs)) < 2:
        raise ValueError("a line needs at least two different batch sizes")
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
    return mean_y - slope * mean_x, slope


def time_batch(name: str, workdir: Path, batch: int, ticks: int):
    """(median ms per step, median CPU ms per step) of a fresh run of setting `name` at this batch size."""
    from mura_aug.gan import loop

    workspace, _, _, settings, _ = make_run(name, workdir, f"step-cost-{name}-b{batch}", ticks)
    tick_kimg = REG_PERIOD_STEPS * batch / 1000
    settings = dataclasses.replace(settings, batch=batch, kimg=ticks * tick_kimg, kimg_per_tick=tick_kimg)
    walls, cpus = [], []
    clock = [time.perf_counter(), time.process_time()]

    def on_tick(line):
        now = [time.perf_counter(), time.process_time()]
        walls.append(now[0] - clock[0])
        cpus.append(now[1] - clock[1])
        clock[:] = now

    loop.train(workspace.root, settings, on_tick=on_tick, log=lambda text: None)
    timed = slice(1, -1)  # the warm-up tick and the tick that writes the final snapshot are dropped
    return (statistics.median(walls[timed]) / REG_PERIOD_STEPS * 1e3,
            statistics.median(cpus[timed]) / REG_PERIOD_STEPS * 1e3)


def dispatch_counter():
    """A torch dispatch mode that counts the multiply-adds (`.macs`, torch.utils.flop_counter's formulas: FLOPs
    / 2) and the operator calls (`.calls`) of everything dispatched while it is entered. Not FlopCounterMode:
    its module hooks refuse the R1 pass' autograd.grad."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_map
    from torch.utils.flop_counter import flop_registry

    def shape(value):
        return value.shape if isinstance(value, torch.Tensor) else value

    class Counter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.macs, self.calls = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            self.calls += 1
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                flops = formula(*tree_map(shape, args), **tree_map(shape, kwargs), out_val=tree_map(shape, out))
                self.macs += flops // 2
            return out

    return Counter()


def count_macs(name: str, workdir: Path, steps_per_tick: int = REG_PERIOD_STEPS):
    """(multiply-adds per kimg, operator calls per step) of the second tick of a fresh run at the setting's batch
    (a tick is one regularisation period unless `steps_per_tick` says otherwise)."""
    from mura_aug.gan import loop

    workspace, _, _, settings, tick_kimg = make_run(name, workdir, f"step-cost-{name}-macs", 3,
                                                    steps_per_tick=steps_per_tick)
    counter, marks = dispatch_counter(), []
    with counter:
        loop.train(workspace.root, settings, on_tick=lambda line: marks.append((counter.macs, counter.calls)),
                   log=lambda text: None)
    (macs0, calls0), (macs1, calls1) = marks[0], marks[1]
    return (macs1 - macs0) / tick_kimg, (calls1 - calls0) / steps_per_tick


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", default="tiny-32", choices=sorted(k for k in SETTINGS if k != "paper256-256"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batches", default="2,4,8,16", help="comma-separated batch sizes (at least two)")
    parser.add_argument("--ticks", type=int, default=6, help="ticks of 16 steps per batch size (>= 3)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mura_aug_bench_step_cost"))
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default bench/results/train_step_cost_<setting>.md)")
    args = parser.parse_args()
    batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    if len(batches) < 2 or min(batches) < 1:
        parser.error("--batches needs at least two different sizes >= 1")
    if args.ticks < 3:
        parser.error("--ticks must be >= 3 (the first and last tick are not timed)")
    out = args.out or REPO_ROOT / "bench" / "results" / f"train_step_cost_{args.setting.replace('-', '')}.md"
    import torch

    from mura_aug.gan import ops
    from mura_aug.gan.configs import make_config

    torch.set_num_threads(args.threads)
    cfg, resolution, batch_override, _ = SETTINGS[args.setting]
    own_batch = make_config(cfg, resolution, batch=batch_override).batch_size
    import machine_speed  # bench/machine_speed.py

    speed_before = machine_speed.measure()
    rows = []
    for batch in batches:
        wall, cpu = time_batch(args.setting, args.workdir, batch, args.ticks)
        rows.append((batch, wall, cpu))
        print(f"batch {batch}: {wall:.1f} ms/step wall, {cpu:.1f} CPU-ms/step, {wall / batch:.2f} s/kimg", flush=True)
    fixed, per_image = fit_line([r[0] for r in rows], [r[1] for r in rows])
    speed_note = machine_speed.describe(speed_before, machine_speed.measure())
    macs, calls = count_macs(args.setting, args.workdir)
    steps_per_kimg = 1000 / own_batch
    lines = [
        f"# Cost of a CPU training step: per step and per image ({args.setting})",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()}-core {ops.cpu_vendor()} "
        f"CPU, torch {torch.__version__}, fp32, {args.threads} thread(s). Load average at the end: "
        f"{os.getloadavg()[0]:.1f} (1 min). The machine is shared: the figures move by 10-20 % from run to run.",
        "- Command: `" + " ".join(["python bench/train_step_cost.py", *sys.argv[1:]]) + "`",
        f"- {speed_note}: a busy neighbour slows the per-step (Python-bound) part most.",
        f"- Each batch size: a fresh run, {args.ticks} ticks of {REG_PERIOD_STEPS} steps, median of the ticks "
        "between the first and the last.",
        "",
        "| batch | ms/step (wall) | CPU-ms/step | s/kimg (wall) |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {b} | {wall:.1f} | {cpu:.1f} | {wall / b:.2f} |" for b, wall, cpu in rows]
    lines += [
        "",
        f"Fitted: **{fixed:.1f} ms per step whatever the batch, plus {per_image:.2f} ms per image**. At the "
        f"setting's batch of {own_batch} ({steps_per_kimg:.0f} steps per kimg): {fixed * steps_per_kimg / 1e3:.1f} "
        f"s/kimg of per-step cost and {per_image:.2f} s/kimg of per-image cost, "
        f"{(fixed * steps_per_kimg / 1e3 + per_image):.1f} s/kimg in all.",
        "",
        f"Arithmetic at batch {own_batch}: {macs / 1e9:.0f} G multiply-adds per kimg (convolutions and matrix "
        f"products, forward and backward, all four phases); {calls:.0f} operator calls per step. The per-image "
        f"cost above is {macs / 1e9 / max(per_image, 1e-9):.0f} G multiply-adds per second.",
    ]
    write_keeping_readings(out, "\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
