"""Snapshot size and write time at the `tiny` and `auto` configs (32 px), and the time from `--resume latest`
to the first new training step. Writes bench/results/snapshot.md.

    python bench/bench_snapshot.py [--repeats 3]

Each config: a run of one iteration (batch 4) writes its first snapshot; then the state is written again
`repeats` times with snapshot.save_state (temporary file, fsync, load-back check, rename) and timed; then the
same state is written `repeats` times the staged way (issue 16, gan/staging.py: save_state into a staging
folder, then copy_verified into the run folder - copy, fsync, read back, SHA-256 compare, rename - and the
local file deleted), both on the same local disk, which gives the per-snapshot overhead of staging; then the
run is resumed in a fresh process (`python -m mura_aug train ... --resume latest`), which reports when its
first iteration is done.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its shared helpers
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

from mura_aug.gan import loop  # noqa: E402
from mura_aug.gan import snapshot as snap  # noqa: E402
from mura_aug.gan import staging  # noqa: E402
from mura_aug.gan.settings import RunSettings  # noqa: E402
from mura_aug.workspace import Workspace  # noqa: E402

RESOLUTION = 32  # px
BATCH = 4  # images per iteration


def make_dataset(workspace: Workspace, count: int = 16) -> None:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(workspace.datasets / f"XR_SHOULDER_positive_{RESOLUTION}.zip", "w") as archive:
        for index in range(count):
            buffer = io.BytesIO()
            pixels = rng.integers(0, 255, (RESOLUTION, RESOLUTION), dtype=np.uint8)
            Image.fromarray(pixels).convert("RGB").save(buffer, "PNG")
            archive.writestr(f"00000/img{index:08d}.png", buffer.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": None}))


def measure(cfg: str, repeats: int, root: Path) -> dict:
    workspace = Workspace(root / cfg).ensure()
    make_dataset(workspace)
    kimg = BATCH / 1000
    started = time.time()
    settings = RunSettings(label="positive", cfg=cfg, resolution=RESOLUTION, kimg=kimg, kimg_per_tick=kimg, snap=1,
                           batch=BATCH, device="cpu", progress=False)
    run_dir = loop.train(workspace, settings, log=lambda text: None)
    first_run_sec = time.time() - started
    info = snap.list_snapshots(run_dir)[-1]
    t0 = time.perf_counter()
    state = snap.load_state(info.state_path)
    load_sec = time.perf_counter() - t0
    times = []
    for index in range(repeats):
        target = run_dir / f"bench-copy-{index}.pt"
        t0 = time.perf_counter()
        snap.save_state(target, state)
        times.append(time.perf_counter() - t0)
        target.unlink()
    staged_times = []
    local_dir = root / f"{cfg}-local-disk"
    local_dir.mkdir(exist_ok=True)
    for index in range(repeats):
        local, target = local_dir / f"bench-copy-{index}.pt", run_dir / f"bench-copy-{index}.pt"
        t0 = time.perf_counter()
        snap.save_state(local, state)
        staging.copy_verified(local, target)
        local.unlink()
        staged_times.append(time.perf_counter() - t0)
        target.unlink()
    command = [sys.executable, "-m", "mura_aug", "train", "--workspace", str(workspace.root), "--label",
               "positive", "--cfg", cfg, "--resolution", str(RESOLUTION), "--kimg", str(2 * kimg),
               "--kimg-per-tick", str(kimg), "--batch", str(BATCH), "--resume", "latest", "--device", "cpu",
               "--no-progress"]
    t0 = time.time()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    process_sec = time.time() - t0
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    match = re.search(r"first training step done ([\d.]+) s after the call started", result.stdout)
    return {"cfg": cfg, "state_mb": info.state_path.stat().st_size / 2 ** 20,
            "network_mb": info.network_path.stat().st_size / 2 ** 20,
            "write_sec_median": statistics.median(times), "write_sec_all": times, "load_sec": load_sec,
            "staged_sec_median": statistics.median(staged_times), "staged_sec_all": staged_times,
            "resume_to_first_step_sec": float(match.group(1)) if match else float("nan"),
            "resume_process_total_sec": process_sec, "first_run_sec": first_run_sec}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed writes of each state")
    parser.add_argument("--configs", default="tiny,auto", help="comma-separated configs")
    args = parser.parse_args()
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in args.configs.split(","):
            rows.append(measure(cfg, args.repeats, Path(tmp)))
            print(rows[-1], flush=True)
    lines = [
        "# Snapshot size, write time and resume latency",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python bench/bench_snapshot.py` on a "
        f"2-core CPU, no GPU, shared with other jobs (timings are upper bounds), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, Python {platform.python_version()}, local disk.",
        f"Resolution {RESOLUTION} px, batch {BATCH}, fp32. Write time = `snapshot.save_state`: temporary file, "
        "fsync, loading it back as a check, rename (median of the repeats). Resume latency = wall time from the "
        "start of `loop.train` with resume='latest' inside `python -m mura_aug train` (after Python and torch are "
        "imported) to the end of the first new iteration; 'process' adds interpreter start and imports. Staged "
        "write = what a snapshot's state costs with `--staging on` (save_state into a local staging folder, then "
        "staging.copy_verified into the run folder: copy, fsync, read back, SHA-256 compare, rename), here with "
        "both folders on the same local disk; the overhead is per snapshot, i.e. at most once per SNAP_MINUTES "
        "(30) minutes of training.",
        "",
        "| config | state file | network file | state write | staged write (local + copy + verify) | "
        "staging overhead per snapshot | state load | resume -> first step | whole resume process |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        overhead = row["staged_sec_median"] - row["write_sec_median"]
        lines.append(f"| {row['cfg']}-{RESOLUTION} | {row['state_mb']:.2f} MB | {row['network_mb']:.2f} MB | "
                     f"{row['write_sec_median']:.2f} s | {row['staged_sec_median']:.2f} s | "
                     f"{overhead:+.2f} s ({overhead / (30 * 60) * 100:.3f} % of 30 minutes) | "
                     f"{row['load_sec']:.2f} s | "
                     f"{row['resume_to_first_step_sec']:.1f} s | "
                     f"{row['resume_process_total_sec']:.1f} s |")
    lines += ["", "Reading (issue 16): with the default `--staging auto` a local-disk workspace is written directly, "
              "as before. `--staging on` (and Google Drive, detected) adds one copy, one read-back and two SHA-256 "
              "passes of each state, once per snapshot.", "", "Raw: " + json.dumps(rows), ""]
    out = REPO / "bench" / "results" / "snapshot.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_keeping_readings(out, "\n".join(lines))  # the readings written by hand under "## " stay
    print(out)


if __name__ == "__main__":
    main()
