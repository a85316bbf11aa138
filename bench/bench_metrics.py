"""How long the fake-image metrics take, for the time estimates in docs/metrics.md.

Measures on random 256 x 256 images (the content does not change the cost): the offline extractor's
throughput, the math (FID, KID, precision/recall, diversity) at realistic set sizes and feature widths, and
pixel-space memorisation. Writes bench/results/metrics.md.

    python bench/bench_metrics.py [--quick]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its shared helpers
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

from mura_aug import metrics as M  # noqa: E402
from mura_aug.gan import measure  # noqa: E402


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sets (a smoke run)")
    args = parser.parse_args()
    import torch

    scale = 4 if args.quick else 1
    rng = np.random.default_rng(0)
    rows = []

    images = rng.integers(0, 256, size=(256 // scale, 3, 256, 256), dtype=np.uint8)
    seconds, _ = timed(M.OfflineExtractor(), images)
    rows.append(("offline features, 256 px images", f"{len(images)} images",
                 f"{seconds:.2f} s", f"{len(images) / seconds:.0f} images/s"))

    for count, dim in ((2000 // scale, 512), (2000 // scale, 2048)):
        reals, fakes = rng.standard_normal((count, dim)), rng.standard_normal((count, dim))
        seconds, _ = timed(M.fid_from_features, reals, fakes)
        rows.append((f"FID (sqrtm), {dim}-d", f"{count} vs {count}", f"{seconds:.2f} s", ""))
        seconds, _ = timed(M.kid_from_features, reals, fakes)
        rows.append((f"KID ({M.KID_SUBSETS} subsets), {dim}-d", f"{count} vs {count}", f"{seconds:.2f} s", ""))
        seconds, _ = timed(M.precision_recall, reals, fakes)
        rows.append((f"precision/recall k={M.PR_NEIGHBOURS}, {dim}-d", f"{count} vs {count}", f"{seconds:.2f} s", ""))

    fakes = rng.integers(0, 256, size=(2000 // scale, 3, 256, 256), dtype=np.uint8)
    reals = rng.integers(0, 256, size=(4000 // scale, 3, 256, 256), dtype=np.uint8)
    seconds, _ = timed(M.memorisation, fakes, reals)
    rows.append(("memorisation (32x32 grey), 256 px images", f"{len(fakes)} fakes vs {len(reals)} reals",
                 f"{seconds:.2f} s", ""))

    try:  # the training hook end to end, with the real tiny generator (32 px)
        from mura_aug.gan.configs import make_config
        from mura_aug.gan.networks import Generator
    except ImportError:
        Generator = None
    if Generator is not None:
        G = Generator(**make_config("tiny", 32).G_kwargs)
        reals = rng.integers(0, 256, size=(1000, 3, 32, 32), dtype=np.uint8)
        num_fakes = measure.DEFAULT_TRAINING_NUM_FAKES // scale
        seconds, _ = timed(measure.training_metrics, G, reals, num_fakes=num_fakes)
        generate_seconds, _ = timed(measure.generate_fakes, G, num_fakes)
        rows.append(("training_metrics, cfg tiny 32 px (first call)", f"{num_fakes} fakes vs 1000 reals",
                     f"{seconds:.1f} s", f"of which generating the fakes ~{generate_seconds:.1f} s"))

    lines = ["# Benchmark: fake-image metrics (mura_aug.metrics)", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
             f"- machine: {os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU, "
             f"torch {torch.__version__} with {torch.get_num_threads()} threads; load average at start "
             f"{os.getloadavg()[0]:.1f} (the machine is shared, so these are upper bounds)",
             f"- command: python bench/bench_metrics.py{' --quick' if args.quick else ''}", "",
             "| what | size | time | throughput |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    out = Path(__file__).resolve().parent / "results" / "metrics.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_keeping_readings(out, "\n".join(lines))  # the readings written by hand under "## " stay
    print("\n".join(lines))


if __name__ == "__main__":
    main()
