"""Stage 06 throughput: training and evaluation images per second for each classifier and input size.

Measures the network alone (random input tensors, so disk and decoding do not blur the numbers), the way
`classifier.train_run` uses it: Adam step on a class-balanced BCE for training, no_grad forward for
evaluation. Also measures the input pipeline (decode a demo PNG, resize, augment, normalise) per image.

    python bench/bench_classify.py                 # all configurations, writes bench/results/classify.md
    python bench/bench_classify.py --quick         # fewer steps (a smoke test of the script)

Each configuration runs for at least --seconds of timed steps after one warm-up step.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its shared helpers
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

import torch  # noqa: E402

from mura_aug.evaluate import classifier, data  # noqa: E402

CONFIGS = [  # (arch, input px, batch size)
    ("tiny", 64, 32),
    ("densenet169", 64, 16),
    ("resnet50", 64, 16),
    ("densenet169", 224, 8),
    ("resnet50", 224, 8),
]
RESULTS = Path(__file__).resolve().parent / "results" / "classify.md"
MURA_SHOULDER_TRAIN_IMAGES = 8379  # MURA-v1.1 XR_SHOULDER train split
MURA_SHOULDER_VALID_IMAGES = 563  # MURA-v1.1 XR_SHOULDER valid split


def images_per_second(arch: str, size: int, batch: int, train: bool, seconds: float, device: str = "cpu",
                      mixed: bool = False) -> float:
    """Images per second of the network alone. device: where it runs; mixed: float16 autocast with a grad
    scaler, as `classifier.train_run` does on CUDA (bench/gpu_check.py passes both)."""
    from mura_aug.devices import grad_scaler

    torch.manual_seed(0)
    model = classifier.build_model(arch, pretrained=False, progress=False).to(device)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = (torch.arange(batch, device=device) % 2).float()
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0], device=device))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scaler = grad_scaler(device, enabled=mixed)
    model.train(train)
    on_cuda = torch.device(device).type == "cuda"

    def step():
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.float16, enabled=mixed):
            if train:
                loss = loss_fn(model(images).squeeze(1).float(), labels)
            else:
                with torch.no_grad():
                    model(images)
        if train:
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    step()  # warm-up: allocator, kernels
    if on_cuda:
        torch.cuda.synchronize()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or done < 2:
        step()
        done += 1
        if on_cuda:
            torch.cuda.synchronize()
    return done * batch / (time.perf_counter() - started)


def pipeline_images_per_second(size: int, count: int = 40) -> float:
    """Decode + resize + flip/rotate + normalise of generated demo radiographs (what the DataLoader does)."""
    from mura_aug.prepare.demo_data import make_demo_mura

    with tempfile.TemporaryDirectory() as folder:
        mura = make_demo_mura(folder, patients=10, seed=0)
        paths = sorted(p.relative_to(mura).as_posix() for p in mura.rglob("*.png"))[:count]
        import pandas as pd

        frame = pd.DataFrame({"path": paths, "label": [0] * len(paths)})
        cache = data.ImageCache(mura, size)  # not preloaded: every item decodes its PNG
        dataset = data.make_dataset(cache, frame, train=True, rotation_deg=30)
        started = time.perf_counter()
        for index in range(len(dataset)):
            dataset[index]
        return len(dataset) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="timed seconds per configuration (default 8)")
    parser.add_argument("--quick", action="store_true", help="1 s per configuration, for checking the script")
    parser.add_argument("--out", default=str(RESULTS), help="markdown file to write")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    started = datetime.datetime.now(datetime.timezone.utc)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    rows = []
    for arch, size, batch in CONFIGS:
        train = images_per_second(arch, size, batch, True, seconds)
        evaluate = images_per_second(arch, size, batch, False, seconds)
        epoch_minutes = MURA_SHOULDER_TRAIN_IMAGES / train / 60
        rows.append(f"| {arch} | {size} | {batch} | {train:.1f} | {evaluate:.1f} | {epoch_minutes:.0f} |")
        print(rows[-1], flush=True)
    pipeline = {size: pipeline_images_per_second(size) for size in (64, 224)}

    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    text = "\n".join([
        "# Stage 06 classifier throughput",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads. Run {started:%Y-%m-%d %H:%M} to "
        f"{datetime.datetime.now(datetime.timezone.utc):%H:%M} UTC; 1-minute load average {load_start:.1f} at "
        f"the start, {load_end:.1f} at the end: the 2 cores were shared with other jobs, so these numbers are "
        "lower bounds and noisy (compare rows only roughly). Script: `python bench/bench_classify.py`.",
        "",
        "Network only (random input, float32 on CPU); training = forward + backward + Adam step.",
        "",
        "| arch | input px | batch | train img/s | eval img/s | minutes per epoch of MURA shoulder train "
        f"({MURA_SHOULDER_TRAIN_IMAGES} images), this CPU |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Input pipeline (PNG decode + resize + flip/rotate + normalise, one process): "
        f"{pipeline[64]:.0f} img/s at 64 px, {pipeline[224]:.0f} img/s at 224 px. With the image cache "
        "(experiments whose resized images fit in 1.5 GB, the default for a body part) decoding happens once.",
        "",
    ])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_keeping_readings(Path(args.out), text)  # the readings written by hand under "## " stay
    print(text)


if __name__ == "__main__":
    main()
