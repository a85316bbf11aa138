"""Does the `tiny` config learn the demo radiographs at 32x32 on a CPU, and how fast? (issue 3 item 7)

    python bench/bench_quality.py [--kimg 30] [--max-minutes 25] [--threads 1] [--snap-kimg 2]
                                  [--workdir /tmp/mura_aug_quality] [--out bench/results]

1. Generates the demo MURA tree (mura_aug.demo_data.make_demo_mura, 60 patients) and builds the positive
   class's 32 px GAN dataset in NVlabs' layout (`00000/img00000000.png` RGB + `dataset.json`), the file the
   training loop reads (`data/datasets/XR_SHOULDER_positive_32.zip`). Stage 01's prepare is used instead
   when it is installed and --use-prepare is given.
2. Trains the positive class with mura_aug.gan.loop.train (RunSettings cfg='tiny', resolution=32) on the CPU.
3. Copies the reals grid and the fakes grids of a few snapshots into --out (upscaled x2, nearest, so a
   32 px image is visible) and writes quality_tiny32.md: kimg, minutes, CPU seconds, load average per tick.
   What the grids show is judged by eye and written into the report's "Reading" section by hand.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its shared helpers
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

BODY_PART = "XR_SHOULDER"
RESOLUTION = 32  # px
GRID_UPSCALE = 2  # nearest-neighbour factor for the PNGs kept in bench/results (32 px is too small to judge)


def square_and_resize(image, resolution: int):
    """Pad a greyscale radiograph to a square with black (MURA films sit on a dark field), then shrink it
    with an antialiasing filter to resolution x resolution, RGB."""
    from PIL import Image

    side = max(image.size)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(image.convert("L"), ((side - image.width) // 2, (side - image.height) // 2))
    return canvas.resize((resolution, resolution), Image.LANCZOS).convert("RGB")


def build_dataset(workdir: Path, cls: str = "positive", patients: int = 60, resolution: int = RESOLUTION) -> tuple:
    """Demo tree -> workspace with the `cls` train images as an NVlabs-layout zip of resolution px. Returns
    (workspace, image count)."""
    from PIL import Image

    from mura_aug.prepare.demo_data import make_demo_mura
    from mura_aug.workspace import Workspace, atomic_path

    mura = make_demo_mura(workdir / "demo", patients=patients)
    workspace = Workspace(workdir / "ws").ensure()
    pngs = sorted((mura / "train" / BODY_PART).glob(f"patient*/study*_{cls}/*.png"))
    if not pngs:
        raise SystemExit(f"no {cls} training images under {mura}")
    target = workspace.datasets / f"{BODY_PART}_{cls}_{resolution}.zip"
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for index, path in enumerate(pngs):
            with Image.open(path) as image:
                small = square_and_resize(image, resolution)
            buffer = io.BytesIO()
            small.save(buffer, format="PNG")
            archive.writestr(f"{index // 1000:05d}/img{index:08d}.png", buffer.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": None}))
    return workspace, len(pngs)


def upscaled_copy(source: Path, target: Path) -> None:
    from PIL import Image

    with Image.open(source) as image:
        big = image.resize((image.width * GRID_UPSCALE, image.height * GRID_UPSCALE), Image.NEAREST)
    target.parent.mkdir(parents=True, exist_ok=True)
    big.save(target, optimize=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kimg", type=float, default=30, help="training length in thousands of real images")
    parser.add_argument("--max-minutes", type=float, default=25, help="wall-clock limit of the training call")
    parser.add_argument("--snap-kimg", type=float, default=2, help="kimg between fakes grids (one tick each)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gamma", type=float, default=None, help="R1 weight (default: the tiny config's)")
    parser.add_argument("--keep-kimg", default="2,6,10,20,30",
                        help="fakes grids copied into --out: the snapshot nearest each of these kimg")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mura_aug_quality"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--tag", default="quality_tiny32", help="file name stem of the report and grids")
    args = parser.parse_args()

    import torch

    from mura_aug.gan import loop, snapshot
    from mura_aug.gan.settings import RunSettings

    torch.set_num_threads(args.threads)
    workspace, count = build_dataset(args.workdir)
    stale = workspace.experiments / args.tag
    if stale.exists():  # a fresh run each time: resuming an old one would not measure anything
        import shutil

        shutil.rmtree(stale)
    print(f"dataset: {count} positive train images at {RESOLUTION} px")

    ticks = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()

    def on_tick(line):  # CPU seconds and load next to the loop's own stats: the machine is shared
        ticks.append(dict(kimg=line["kimg"], wall_min=(time.perf_counter() - wall_start) / 60,
                          cpu_min=(time.process_time() - cpu_start) / 60, load=os.getloadavg()[0],
                          p=line.get("augment_p", 0.0), sec_per_kimg=line.get("sec_per_kimg"),
                          G=line.get("loss_G"), D=line.get("loss_D")))
        print(f"kimg {line['kimg']:.1f}  wall {ticks[-1]['wall_min']:.1f} min  load {ticks[-1]['load']:.1f}  "
              f"p {ticks[-1]['p']:.3f}", flush=True)

    settings = RunSettings(label="positive", body_part=BODY_PART, cfg="tiny", resolution=RESOLUTION, kimg=args.kimg,
                           kimg_per_tick=args.snap_kimg, snap=1, seed=args.seed, max_minutes=args.max_minutes,
                           device="cpu", progress=False, run=args.tag, keep=1, gamma=args.gamma)
    run_dir = loop.train(workspace.root, settings, on_tick=on_tick, log=lambda text: print(text, flush=True))

    snaps = snapshot.list_snapshots(run_dir)
    kept = []
    upscaled_copy(run_dir / "reals.png", args.out / f"{args.tag}_reals.png")
    for wanted in (float(k) for k in args.keep_kimg.split(",")):
        best = min(snaps, key=lambda s: abs(s.kimg - wanted))
        if best.fakes_path and best.kimg not in (k for k, _ in kept):
            name = f"{args.tag}_fakes_{best.kimg:04.0f}kimg.png"
            upscaled_copy(Path(best.fakes_path), args.out / name)
            kept.append((best.kimg, name))

    load = os.getloadavg()
    lines = [
        "# Tiny config at 32x32 on demo data: does it learn, and how fast (CPU)",
        "",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()}-core CPU, no GPU "
        f"({platform.processor() or platform.machine()}), torch {torch.__version__}, {args.threads} thread(s).",
        f"- Data: demo tree (60 patients), {count} positive train images, padded square, 32 px.",
        "- Command: `python bench/bench_quality.py " + " ".join(sys.argv[1:]) + "`",
        f"- Load average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min; shared machine).",
        f"- R1 gamma: {args.gamma if args.gamma is not None else 'the tiny config default'}.",
        "",
        "| kimg | wall min | CPU min | load (1 min) | s/kimg (loop) | augment p | G loss | D loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in ticks:
        lines.append(f"| {t['kimg']:.1f} | {t['wall_min']:.1f} | {t['cpu_min']:.1f} | {t['load']:.1f} | "
                     f"{t['sec_per_kimg']:.0f} | {t['p']:.3f} | {t['G'] or float('nan'):.2f} | "
                     f"{t['D'] or float('nan'):.2f} |")
    lines += ["", f"Grids (x{GRID_UPSCALE} nearest): reals `{args.tag}_reals.png`; fakes (G_ema, fixed latents) "
              + ", ".join(f"`{name}` ({k:g} kimg)" for k, name in kept) + "."]
    report = args.out / f"{args.tag}.md"
    write_keeping_readings(report, "\n".join(lines))  # the readings written by hand under "## " stay
    print(f"wrote {report}")


if __name__ == "__main__":
    main()
