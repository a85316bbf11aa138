"""Issue 16's "Done when": a tiny run with `--snap-minutes 0.2` killed with SIGKILL after a minute has a state
younger than 0.5 minutes. Writes bench/results/kill_age.md.

    python bench/bench_kill_age.py [--seconds 60] [--snap-minutes 0.2]

Starts `python -m mura_aug train --cfg tiny --resolution 32 --snap 100000 --snap-minutes M` (so every snapshot
comes from the clock, none from SNAP), kills it with SIGKILL `seconds` after its first training step (the
start, imports and the dataset cache take from 5 s to most of a minute on a shared 2-core machine, and write
no state), and reports how old the newest state is at the kill (the kill time minus the state file's
modification time), and that it loads.
"""
from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its shared helpers
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

from bench_snapshot import make_dataset  # noqa: E402

from mura_aug.gan import snapshot as snap  # noqa: E402
from mura_aug.workspace import Workspace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds before the SIGKILL")
    parser.add_argument("--snap-minutes", type=float, default=0.2, help="--snap-minutes of the run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Workspace(Path(tmp) / "ws").ensure()
        make_dataset(workspace)
        command = [sys.executable, "-m", "mura_aug", "train", "--workspace", str(workspace.root), "--label",
                   "positive", "--cfg", "tiny", "--resolution", "32", "--kimg", "1000", "--kimg-per-tick", "0.02",
                   "--snap", "100000", "--snap-minutes", str(args.snap_minutes), "--batch", "4", "--device", "cpu",
                   "--no-progress"]
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                                                           "PYTHONUNBUFFERED": "1"},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        started = time.time()
        lines_seen, first_step = [], threading.Event()

        def read():
            for line in process.stdout:
                lines_seen.append(line)
                if "first training step done" in line:
                    first_step.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        if not first_step.wait(timeout=600):
            process.kill()
            raise SystemExit("no training step within 10 minutes:\n" + "".join(lines_seen)[-3000:])
        stepped_at = time.time()
        time.sleep(args.seconds)
        process.send_signal(signal.SIGKILL)
        killed_at = time.time()
        process.wait()
        reader.join(timeout=10)
        output = "".join(lines_seen)
        run_dir = workspace.experiments / "XR_SHOULDER-positive-tiny-32"
        states = [info for info in snap.list_snapshots(run_dir) if info.state_path is not None]
        if not states:
            raise SystemExit("no state was written:\n" + output[-3000:])
        newest = snap.find_resumable(run_dir)
        age_min = (killed_at - newest.state_path.stat().st_mtime) / 60
        snapshot_lines = [line for line in output.splitlines() if line.startswith("snapshot ")]
        kill_line = next((line for line in output.splitlines() if "a kill loses at most" in line), "")
    import torch

    verdict = "yes" if age_min < 0.5 else "NO"
    lines = [
        "# Age of the newest state at a SIGKILL (issue 16, Done when)",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python bench/bench_kill_age.py --seconds "
        f"{args.seconds:g} --snap-minutes {args.snap_minutes:g}` on a 2-core CPU shared with other jobs, torch "
        f"{torch.__version__}, Python {platform.python_version()}, local disk.",
        "",
        f"Command: `{' '.join(command[1:]).replace(str(workspace.root), 'WS')}`; SIGKILL "
        f"{killed_at - stepped_at:.1f} s after its first training step ({killed_at - started:.1f} s after the "
        "process started: interpreter, imports and the dataset cache took the rest).",
        "",
        "| states written before the kill | newest state | its age at the kill | younger than 0.5 min | loads |",
        "|---|---|---|---|---|",
        f"| {len(snapshot_lines)} | {newest.state_path.name} | {age_min:.2f} min | {verdict} | yes |",
        "",
        f"The run's start line: `{kill_line.strip()}`",
        "",
    ]
    out = REPO / "bench" / "results" / "kill_age.md"
    write_keeping_readings(out, "\n".join(lines))  # the readings written by hand under "## " stay
    print("\n".join(lines))


if __name__ == "__main__":
    main()
