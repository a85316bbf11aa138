"""Where one tick of CPU training spends its time: torch.profiler over one tick of the real loop.

    python bench/profile_train.py [--setting tiny-32] [--threads 1] [--layout auto|nchw|channels-last]
                                  [--rows 25] [--workdir DIR] [--out bench/results/profile_tiny32.md]

Trains a fresh run of a bench_train.py setting on the demo radiographs for three ticks (one tick = 16 steps,
all four loss phases with lazy regularisation) and profiles the second: the first pays oneDNN's kernel
selection and first-touch allocations, the third ends with the run's final snapshot. The report lists the
operators by self CPU time, the convolutions' share, and the convolution calls by input shape.

The profiler adds a few microseconds to each of a tick's ~230,000 operator calls, so the shares matter, not
the milliseconds; the tick's time without the profiler is in bench/results/train_cpu*.md.
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
sys.path.insert(0, str(REPO_ROOT / "bench"))

from bench_train import LAYOUTS, REG_PERIOD_STEPS, SETTINGS, make_run  # noqa: E402  (bench/bench_train.py)
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

PROFILED_TICK = 2  # of 3: after the warm-up tick, before the tick that writes the final snapshot
# Operators whose self time is convolution arithmetic (forward, backward, transposed, the 1x1 slow path).
CONVOLUTION_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
                   "aten::_slow_conv2d_forward", "aten::_slow_conv2d_backward", "aten::slow_conv_transpose2d")
SHAPE_ROWS = 12  # convolution calls listed by input shape


def profile_one_tick(name: str, workdir: Path, threads: int, layout: str, shapes: bool = True,
                     steps: int = REG_PERIOD_STEPS):
    """(the profiler, tick wall s, tick CPU s, layout used) for tick PROFILED_TICK of a fresh run whose ticks
    are `steps` steps (a whole regularisation period by default); `shapes`: record the operators' input shapes
    (the table by shape; grouping a 16-step tick's events by them takes ~25 s on 2 cores)."""
    import torch

    from mura_aug.gan import loop, ops

    workspace, _, _, settings, _ = make_run(name, workdir, f"profile-{name}", ticks=PROFILED_TICK + 1,
                                         steps_per_tick=steps)
    torch.set_num_threads(threads)
    ops.CPU_CHANNELS_LAST = LAYOUTS[layout]
    used_layout = "channels-last" if ops.cpu_channels_last() else "NCHW"
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=shapes)
    ticks_done, started = 0, None
    timing = {}

    def on_tick(line):
        nonlocal ticks_done, started
        ticks_done += 1
        if ticks_done == PROFILED_TICK - 1:  # the tick before ends here: profile from now
            started = (time.perf_counter(), time.process_time())
            profiler.__enter__()
        elif ticks_done == PROFILED_TICK:
            profiler.__exit__(None, None, None)
            timing["wall"] = time.perf_counter() - started[0]
            timing["cpu"] = time.process_time() - started[1]

    try:
        loop.train(workspace.root, settings, on_tick=on_tick, log=lambda text: None)
    finally:
        if started is not None and not timing:  # training stopped inside the profiled tick
            profiler.__exit__(None, None, None)
    if not timing:
        raise SystemExit(f"training stopped before the end of tick {PROFILED_TICK}; nothing was profiled")
    return profiler, timing["wall"], timing["cpu"], used_layout


def report(profiler, wall: float, cpu: float, used_layout: str, args, argv) -> str:
    import torch

    from mura_aug.gan import ops

    # One pass over the profiler's events (each key_averages call walks all ~230,000 of them): by operator and
    # input shapes, summed here again by operator.
    by_shape = list(profiler.key_averages(group_by_input_shape=args.shapes))
    self_us, calls = {}, {}
    for event in by_shape:
        self_us[event.key] = self_us.get(event.key, 0) + event.self_cpu_time_total
        calls[event.key] = calls.get(event.key, 0) + event.count
    total_us = sum(self_us.values())
    rows = sorted(self_us, key=lambda key: -self_us[key])[:args.rows]
    convolution_us = sum(us for key, us in self_us.items() if key in CONVOLUTION_OPS)
    lines = [
        f"# One tick of CPU training, profiled: {args.setting}",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()}-core {ops.cpu_vendor()} "
        f"CPU ({platform.processor() or platform.machine()}), torch {torch.__version__}, fp32, {args.threads} "
        f"thread(s), {used_layout}. Load average at the end: {os.getloadavg()[0]:.1f} (1 min).",
        "- Command: `" + " ".join(["python bench/profile_train.py", *argv]) + "`",
        f"- Profiled tick ({args.steps} steps, tick {PROFILED_TICK} of 3): {wall:.2f} s wall, {cpu:.2f} CPU-s with "
        f"the profiler on; self CPU of all operators {total_us / 1e6:.2f} s in {sum(calls.values())} operator calls.",
        f"- Convolutions ({', '.join(CONVOLUTION_OPS)}): {100 * convolution_us / total_us:.0f} % of the self CPU time.",
        "",
        "| operator | self CPU % | self CPU (ms) | calls |",
        "|---|---:|---:|---:|",
    ]
    for key in rows:
        lines.append(f"| {key} | {100 * self_us[key] / total_us:.1f} | {self_us[key] / 1e3:.1f} | {calls[key]} |")
    convolutions = sorted((event for event in by_shape if event.key in CONVOLUTION_OPS),
                          key=lambda event: -event.self_cpu_time_total)
    lines += ["", "Convolution calls by input shapes (input, weight, ...), largest self CPU first:", "",
              "| operator | input shapes | calls | self CPU (ms) | per call (ms) |", "|---|---|---:|---:|---:|"]
    if not args.shapes:
        lines.append("| (input shapes not recorded: --no-shapes) | | | | |")
    for event in convolutions[:SHAPE_ROWS] if args.shapes else []:
        shapes = ", ".join(str(list(shape)) for shape in event.input_shapes if shape)
        lines.append(f"| {event.key} | {shapes} | {event.count} | {event.self_cpu_time_total / 1e3:.1f} | "
                     f"{event.self_cpu_time_total / 1e3 / event.count:.2f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", default="tiny-32", choices=sorted(SETTINGS), help="a bench_train.py setting")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--layout", default="auto", choices=sorted(LAYOUTS),
                        help="CPU layout of the float32 blocks; auto = the package's rule")
    parser.add_argument("--rows", type=int, default=25, help="operators listed")
    parser.add_argument("--steps", type=int, default=REG_PERIOD_STEPS,
                        help="steps per tick (default: one period of the lazy regularisers, whose average it is)")
    parser.add_argument("--no-shapes", dest="shapes", action="store_false",
                        help="do not record input shapes (no table by shape; the report takes seconds, not ~30)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mura_aug_profile_train"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "profile_tiny32.md")
    args = parser.parse_args()
    if SETTINGS[args.setting][0] == "paper256":
        parser.error("paper256 runs one step per tick in bench_train.py; profile tiny-32 or auto-32")
    profiler, wall, cpu, used_layout = profile_one_tick(args.setting, args.workdir, args.threads, args.layout,
                                                         args.shapes, args.steps)
    text = report(profiler, wall, cpu, used_layout, args, sys.argv[1:])
    write_keeping_readings(args.out, text)  # the readings written by hand under "## " headings stay
    print(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
