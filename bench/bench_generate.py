"""Images per second of stage 05: generating alone, and generating + greying + sharpening + saving, on this machine.

Networks are freshly initialised (speed does not depend on the weights): a tiny generator at 32 and 64 px
(demo size) and, when mura_aug.gan.configs exists, the `auto` config at 32 px (and 256 px with --full).
Writes bench/results/generate.md with the machine and date, and what 10,000 images would take.

    python bench/bench_generate.py [--images 64] [--batch 16] [--device cpu] [--full]
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from mura_aug.synth import generate, snapshots  # noqa: E402
from mura_aug.workspace import Workspace  # noqa: E402
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

TARGET_IMAGES = 10_000  # the original work's next step


def tiny_kwargs(resolution: int) -> dict:
    return dict(z_dim=32, c_dim=0, w_dim=32, img_resolution=resolution, img_channels=3,
                mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=256, channel_max=32))


def configurations(full: bool):
    yield "tiny 32 px (channel_base 256, max 32, z/w 32)", tiny_kwargs(32)
    yield "tiny 64 px (channel_base 256, max 32, z/w 32)", tiny_kwargs(64)
    try:
        from mura_aug.gan.configs import make_config
    except ImportError:
        return
    for resolution in ((32, 256) if full else (32,)):
        G_kwargs = dict(make_config("auto", resolution).G_kwargs)
        yield f"auto config {resolution} px", G_kwargs


def measure(G_kwargs: dict, images: int, batch: int, device: str) -> dict:
    """img/s generating only, img/s generating + greying + sharpening + saving (stage 05's path), KiB per PNG."""
    from mura_aug.gan.network_file import save_network_file
    from mura_aug.gan.networks import Generator

    torch.manual_seed(0)
    G = Generator(**G_kwargs).eval().to(device)
    list(generate.generate_images(G, range(batch), batch_size=batch, device=device, progress=False))  # warm-up
    started = time.perf_counter()
    for _ in generate.generate_images(G, range(images), batch_size=batch, device=device, progress=False):
        pass  # images are produced lazily: consuming them is the measurement
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    generate_s = time.perf_counter() - started

    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent) as folder:  # the repository's disk
        workspace = Workspace(folder).ensure()
        run = f"XR_SHOULDER-positive-bench-{G_kwargs['img_resolution']}"
        network = workspace.run(run).network(0.0)
        save_network_file(network, G.cpu(), kimg=0.0, run=run, label="positive")
        snapshot = snapshots.Snapshot(path=network, run=run, kimg=0.0, label="positive")
        timed = TimedGenerator(G.to(device), device)
        started = time.perf_counter()
        generate.synthesize_class(workspace, snapshot, "positive", images, seed=0, batch_size=batch, device=device,
                               progress=False, generator_cache={network: timed})
        full_s = time.perf_counter() - started
        saved_bytes = sum(p.stat().st_size for p in workspace.augmented_dir("positive").glob("*.png"))
    return dict(generate_ips=images / generate_s, full_ips=images / full_s, kb_per_image=saved_bytes / images / 1024,
                generator_share=timed.seconds / full_s)


class TimedGenerator:
    """Wraps G and adds up the seconds spent inside its forward calls (the rest is sharpening and saving)."""

    def __init__(self, G, device: str):
        self.G, self.device, self.seconds = G, device, 0.0

    def __getattr__(self, name):
        return getattr(self.G, name)

    def to(self, *args, **kwargs):
        return self

    def __call__(self, *args, **kwargs):
        started = time.perf_counter()
        out = self.G(*args, **kwargs)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - started
        return out


def hms(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256,
                        help="images per measurement of the tiny nets (the auto config gets an eighth)")
    parser.add_argument("--batch", type=int, default=16, help="images per generator call")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--full", action="store_true", help="also the auto config at 256 px (slow on a CPU)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "generate.md"))
    args = parser.parse_args()

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
               + (torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "no GPU used")
               + f", torch {torch.__version__}")
    load_before = os.getloadavg()[0]
    rows = []
    for name, G_kwargs in configurations(args.full):
        count = args.images if name.startswith("tiny") else max(args.batch, args.images // 8)
        result = measure(G_kwargs, count, args.batch, args.device)
        result["images"] = count
        rows.append((name, result))
        print(f"{name}: {result['generate_ips']:.1f} img/s generating, {result['full_ips']:.1f} img/s with "
              f"greying + sharpening + saving ({result['generator_share']:.0%} of it in the generator), "
              f"{result['kb_per_image']:.1f} KiB/image", flush=True)

    lines = [
        "# Stage 05 generation speed",
        "",
        f"Machine: {machine}. Date: {datetime.date.today().isoformat()}. "
        f"Device: {args.device}. Images per measurement in the table, batch {args.batch}, "
        "freshly initialised networks (speed does not depend on the weights). "
        f"1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after: other jobs shared "
        "the CPU, so the img/s columns vary between runs and are lower bounds of an idle machine. The share of "
        "time inside the generator says what bounds a large batch of fakes: the generator (near 100 %) or "
        "sharpening and saving (well below).",
        "",
        "| generator | images | generate only (img/s) | generate + grey + sharpen + save (img/s) "
        f"| share of that time in G | PNG size (KiB) | {TARGET_IMAGES:,} images (generate + save) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in rows:
        lines.append(f"| {name} | {result['images']} | {result['generate_ips']:.1f} | {result['full_ips']:.1f} | "
                     f"{result['generator_share']:.0%} | {result['kb_per_image']:.1f} | "
                     f"{hms(TARGET_IMAGES / result['full_ips'])} |")
    lines += ["", "Greying (stage 01's luma rule), sharpening, PNG encoding and the atomic writes (two fsyncs per "
              "file) run in 4 threads beside the generator; on 2 cores they compete with it for CPU, which is why "
              "the second column is lower. "
              "The share column is the part of the wall time spent inside G's forward calls.", "",
              f"Reproduce: `python bench/bench_generate.py --images {args.images} --batch {args.batch} "
              f"--device {args.device}{' --full' if args.full else ''}`", ""]
    out = write_keeping_readings(Path(args.out), "\n".join(lines))  # the readings under "## " headings stay
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
