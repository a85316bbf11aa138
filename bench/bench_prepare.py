"""Stage 01 throughput: run_stage() on a generated MURA tree of a few thousand images (256-512 px per side).

    python bench/bench_prepare.py [--patients 600] [--resolution 256] [--workers 1 2]

For each worker count, into a fresh workspace: a cold run (decode + copy every image, render both GAN
datasets), a warm rerun (nothing to do), and a run at half the resolution (datasets only, copies kept).
Writes bench/results/prepare.md. CPU-heavy: run it on an otherwise idle machine if you can; the load
average before and after each run is recorded so a busy machine shows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mura_aug.prepare.demo_data import make_demo_mura  # noqa: E402
from mura_aug.prepare.settings import PrepareSettings  # noqa: E402
from mura_aug.prepare.stage import run_stage  # noqa: E402

RESULTS = REPO / "bench" / "results" / "prepare.md"
SHOULDER_TRAIN, SHOULDER_VALID = 8379, 563  # images of XR_SHOULDER in MURA-v1.1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
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


def timed_run(label: str, mura: Path, workspace: Path, resolution: int, workers: int) -> dict:
    load_before = load_average()
    cpu_before = cpu_seconds()
    clock = time.perf_counter()
    settings = PrepareSettings(mura_path=str(mura), resolution=resolution, workers=workers)
    summary = run_stage(workspace, settings, progress=False)
    seconds = time.perf_counter() - clock
    cpu = cpu_seconds() - cpu_before  # unlike wall time, hardly changed by other jobs on the machine
    images = summary["images"]["train"]["total"] + summary["images"]["valid"]["total"]
    row = {"run": label, "workers": workers, "resolution": resolution, "images": images,
           "copied": summary["copies"]["copied"],
           "dataset_images": sum(d["images"] for d in summary["datasets"].values() if d["rebuilt"]),
           "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1),
           "cpu_seconds": round(cpu, 2), "cpu_ms_per_image": round(1000 * cpu / images, 2),
           "steps": summary["seconds"], "load_before": load_before, "load_after": load_average()}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=600, help="demo patients (about 5 images each)")
    parser.add_argument("--resolution", type=int, default=256, help="GAN dataset side in px")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure")
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "mura_aug_bench_prepare"),
                        help="folder for the demo tree (kept between runs) and the workspaces")
    args = parser.parse_args()

    data = Path(args.data)
    clock = time.perf_counter()
    mura = make_demo_mura(data / "mura", patients=args.patients, seed=0, progress=True)
    print(f"demo tree {mura} ready in {time.perf_counter() - clock:.0f} s", flush=True)
    tree_bytes = sum(p.stat().st_size for p in mura.rglob("*.png"))

    rows = []
    for workers in args.workers:
        workspace = data / f"workspace-w{workers}"
        shutil.rmtree(workspace, ignore_errors=True)
        rows.append(timed_run("cold", mura, workspace, args.resolution, workers))
        rows.append(timed_run("warm rerun", mura, workspace, args.resolution, workers))
        rows.append(timed_run("datasets only", mura, workspace, args.resolution // 2, workers))
        shutil.rmtree(workspace, ignore_errors=True)
    write_report(rows, args, mura, tree_bytes)


def write_report(rows, args, mura: Path, tree_bytes: int) -> None:
    images = rows[0]["images"]
    lines = [
        "# Stage 01 (prepare) throughput",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python bench/bench_prepare.py "
        f"--patients {args.patients} --resolution {args.resolution}` on {os.cpu_count()} CPU cores "
        f"({cpu_model()}), {platform.platform()}, Python {platform.python_version()}, local disk. The machine "
        "is shared with other jobs: the load average (1 / 5 / 15 min) before and after each run shows how busy "
        "it was; the timings are upper bounds.",
        "",
        f"Input: a generated MURA tree (`make_demo_mura`, {args.patients} patients): {images} PNG images, "
        f"{tree_bytes / images / 1024:.0f} KiB each on average, 256-512 px per side (real MURA files are larger: "
        "see docs/stage_01_prepare.md for scaling). Output: byte copies of every image and two GAN datasets at "
        f"{args.resolution} px (train split), fit=pad.",
        "",
        "* cold: empty workspace; every image is read, decoded (checked), copied atomically (fsync) and, for "
        "train images, resized and encoded into its dataset zip.",
        "* warm rerun: the same call again; nothing is read (one stat per copy and per source file).",
        f"* datasets only: the resolution halved ({args.resolution // 2} px); copies kept, datasets rendered "
        "from the copies.",
        "",
        "| run | workers | images | copied | dataset images | seconds | images/s | CPU ms/image | index | check | "
        "copy + datasets | tables | load before | load after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        steps = row["steps"]
        lines.append(f"| {row['run']} | {row['workers']} | {row['images']} | {row['copied']} | "
                     f"{row['dataset_images']} | {row['seconds']:.2f} | {row['images_per_s']:.0f} | "
                     f"{row['cpu_ms_per_image']:.1f} | "
                     f"{steps.get('index', 0):.2f} | {steps.get('check', 0):.2f} | "
                     f"{steps.get('copy_and_datasets', 0):.2f} | {steps.get('tables', 0):.2f} | "
                     f"{row['load_before']} | {row['load_after']} |")
    cold = {row["workers"]: row for row in rows if row["run"] == "cold"}
    best = cold[max(cold)]
    total = SHOULDER_TRAIN + SHOULDER_VALID
    lines += [
        "",
        f"Extrapolation (an estimate, not a measurement): XR_SHOULDER has {SHOULDER_TRAIN} train + "
        f"{SHOULDER_VALID} valid images; at the cold rate with {best['workers']} workers "
        f"({best['images_per_s']:.0f} images/s) that is about {total / best['images_per_s'] / 60:.1f} min of "
        "CPU-bound work on this machine. CPU ms/image (user + system, all processes) is the figure to scale "
        "by: it hardly depends on other jobs. See docs/stage_01_prepare.md for Colab.",
        "",
        "Raw: " + json.dumps(rows),
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
