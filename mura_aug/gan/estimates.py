"""How long a training run takes where it is about to run, from this project's own measurements.

A StyleGAN2 `auto` network at 256 px trains at thousands of seconds per kimg on a CPU: 1000 kimg is weeks.
Colab starts notebooks on a CPU runtime unless the user switches, so before such a run starts on a CPU the
notebooks (and `python -m mura_aug train`) say how long it would take and how to switch, and stop unless the
user insists (`cpu_ok` / CPU_OK / --cpu-ok).

The figures are measured wall seconds per kimg on this project's 2-core benchmark CPU (bench/results/); a
laptop with more cores is faster, not by weeks.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

from mura_aug.errors import UserError

# (cfg family, resolution px) -> (low, high) wall s/kimg measured on the 2-core CPU, and where it is written.
# paper256 and auto share the synthesis network and D at 256 px (auto has 2 mapping layers instead of 8, a
# small share of the time), so paper256's figure stands for both.
MEASURED_CPU_S_PER_KIMG = {
    ("large", 32): (384.0, 455.0, "bench/results/train_cpu.md: auto-32, batch 4, 2 threads"),
    ("large", 256): (4631.0, 5436.0, "bench/results/train_cpu.md (its history): paper256-256, 2 threads"),
}
LARGE_CONFIGS = ("auto", "paper256", "stylegan2")  # the configs with NVIDIA's full-size networks
SLOW_FROM_RESOLUTION = 128  # px; below this a CPU run of a full-size network is slow but not weeks


def cpu_seconds_per_kimg(cfg: str, resolution: int) -> Optional[Tuple[float, float, str]]:
    """(low, high) estimated wall s/kimg of a full-size config at `resolution` on the benchmark CPU, with
    the source; None for `tiny` (its own figures are minutes per run). Between the measured resolutions the
    cost is interpolated on a log-log line through them (it grows about as resolution^1.2 here)."""
    if cfg not in LARGE_CONFIGS:
        return None
    if ("large", int(resolution)) in MEASURED_CPU_S_PER_KIMG:
        return MEASURED_CPU_S_PER_KIMG[("large", int(resolution))]
    (r0, (lo0, hi0, _)), (r1, (lo1, hi1, _)) = sorted(
        (res, value) for (family, res), value in MEASURED_CPU_S_PER_KIMG.items() if family == "large")
    slope_lo = math.log(lo1 / lo0) / math.log(r1 / r0)
    slope_hi = math.log(hi1 / hi0) / math.log(r1 / r0)
    low = lo0 * (resolution / r0) ** slope_lo
    high = hi0 * (resolution / r0) ** slope_hi
    return low, high, f"interpolated from the {r0} px and {r1} px measurements in bench/results/"


def _duration(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.0f} days" if days >= 2 else f"{seconds / 3600:.0f} hours"


def cpu_estimate(cfg: str, resolution: int, kimg: float, start_kimg: float = 0.0) -> Optional[str]:
    """One line: how long the rest of this run would take on a CPU like the benchmark's (None for `tiny`)."""
    rate = cpu_seconds_per_kimg(cfg, resolution)
    if rate is None:
        return None
    low, high, source = rate
    remaining = max(float(kimg) - float(start_kimg), 0.0)
    return (f"{cfg} at {resolution} px on a CPU: about {low:,.0f}-{high:,.0f} s per kimg ({source}), so "
            f"{remaining:g} kimg would take about {_duration(low * remaining)} to {_duration(high * remaining)}")


def refuse_slow_cpu_run(cfg: str, resolution: int, kimg: float, device, cpu_ok: bool,
                        start_kimg: float = 0.0) -> Optional[str]:
    """Stop a full-size network at >= 128 px from training on a CPU unless `cpu_ok`: UserError with the
    estimate and how to get a GPU. Returns the estimate line where the run goes ahead on a CPU anyway."""
    if str(device).split(":")[0] != "cpu" or cfg not in LARGE_CONFIGS or int(resolution) < SLOW_FROM_RESOLUTION:
        return None
    estimate = cpu_estimate(cfg, int(resolution), kimg, start_kimg)
    if cpu_ok:
        return f"training on the CPU as asked (CPU_OK): {estimate}"
    raise UserError(f"This run would train on the CPU: {estimate}.",
                    "Use a GPU: in Colab, Runtime > Change runtime type > T4 GPU (or better), then run the notebook "
                    "again (training continues where it stopped). For a CPU demo use CFG = 'tiny' with RESOLUTION = "
                    "32 (--cfg tiny --resolution 32). To train on this CPU anyway, set CPU_OK = True (--cpu-ok).")


# (cfg family, resolution px) -> (low, high) estimated s/kimg on a Colab T4 and where the figure comes from.
GPU_S_PER_KIMG = {
    ("large", 256): (60.0, 150.0, "the T4 estimate of docs/stage_02_04_train.md for auto-256"),
}


def seconds_per_kimg(cfg: str, resolution: int, device) -> Optional[Tuple[float, float, str]]:
    """(low, high) s/kimg of this run where it is about to run, with the source; None where nothing was
    measured or estimated (tiny; GPU resolutions other than 256 px)."""
    if cfg not in LARGE_CONFIGS:
        return None
    if str(device).split(":")[0] == "cpu":
        return cpu_seconds_per_kimg(cfg, resolution)
    return GPU_S_PER_KIMG.get(("large", int(resolution)))


def most_lost_by_a_kill(snap: int, kimg_per_tick: float, snap_minutes: Optional[float],
                        rate: Optional[Tuple[float, float, str]]) -> str:
    """One line: the most training a kill (a Colab VM ended without warning) can cost between two snapshots.

    A snapshot comes every `snap` ticks of `kimg_per_tick` kimg, and at the first tick boundary after
    `snap_minutes` minutes: so at most snap x kimg_per_tick kimg, and at most snap_minutes plus one tick.
    rate: (low, high, source) s/kimg (seconds_per_kimg, or the run's own recent speed), None if unknown."""
    by_ticks = snap * kimg_per_tick
    what = f"a snapshot every {snap} ticks ({by_ticks:g} kimg)"
    if snap_minutes:
        what += f" or at the first tick after {snap_minutes:g} minutes"
    if rate is None:
        bound = f"{by_ticks:g} kimg" + (f" and at most {snap_minutes:g} minutes plus one tick" if snap_minutes else "")
        return f"a kill loses at most {bound} of training ({what}; the speed shows in the first ticks' lines)"
    low, high, source = rate
    kimgs, minutes = [], []
    for seconds in (low, high):
        lost = by_ticks if not snap_minutes else min(by_ticks, snap_minutes * 60 / seconds + kimg_per_tick)
        kimgs.append(lost)
        minutes.append(lost * seconds / 60)
    kimg_text = f"{kimgs[0]:.3g}" if kimgs[0] == kimgs[1] else f"{min(kimgs):.3g}-{max(kimgs):.3g}"
    minutes_text = _minutes(minutes[0]) if low == high else f"{_minutes(min(minutes))}-{_minutes(max(minutes))}"
    speed = f"{low:.3g}" if low == high else f"{low:.3g}-{high:.3g}"
    return (f"a kill loses at most {kimg_text} kimg, about {minutes_text} minutes of training at {speed} s/kimg "
            f"({source}); {what}")


def _minutes(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"
