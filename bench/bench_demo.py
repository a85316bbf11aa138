"""How long `python -m mura_aug demo` takes: a cold run in a new workspace, then a rerun of the same command.

    python bench/bench_demo.py [--workspace DIR] [--out bench/results/demo.md]

Target (issue 18): the cold run within 6 minutes on a 2-core CPU. The rerun shows what "each stage skips
finished work" is worth. Times per notebook come from the `series_run.json` the demo writes; the report also
keeps what the demo printed at its end (the fakes' offline FID, stage 06's comparison), and
bench/results/demo_fakes_beside_reals.png shows each class's reals grid beside its final fakes grid.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))
import machine_speed  # noqa: E402  (bench/machine_speed.py: how fast the shared host is right now)
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)
from mura_aug.gan.snapshot import list_snapshots  # noqa: E402  (this checkout's package, as the demo runs it)
from mura_aug.notebooks.series import DEMO_SIDE_BY_SIDE, SERIES_RECORD, SIDE_BY_SIDE_THREADS  # noqa: E402
from mura_aug.workspace import Workspace  # noqa: E402

TARGET_S = 360  # the whole cold demo within 6 minutes (issue 18)
GRID_UPSCALE = 3  # nearest-neighbour, so 32 px images stay sharp in the committed picture


def run_demo(workspace: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MPLBACKEND": "Agg"}
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "mura_aug", "demo", "--workspace", str(workspace),
                                "--no-progress"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall_s = time.perf_counter() - started
    record_path = Workspace(workspace).executed_notebooks / SERIES_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {"notebooks": []}
    if completed.returncode != 0:
        print(completed.stdout[-3000:], completed.stderr[-3000:], sep="\n", file=sys.stderr)
    return {"wall_s": wall_s, "returncode": completed.returncode, "notebooks": record["notebooks"],
            "stdout": completed.stdout}


def closing_lines(stdout: str) -> str:
    """What the demo printed after its map of the workspace: the fakes' FID and stage 06's comparison."""
    start = stdout.find("The fakes' FID")
    return stdout[start:].strip() if start >= 0 else "(the demo printed no FID lines)"


def save_grids_beside(workspace: Path, out: Path) -> Path:
    """One row per class: the run's reals grid, then the fakes grid of its newest snapshot."""
    from PIL import Image, ImageDraw

    rows = []
    for run in Workspace(workspace).runs():
        grids = [info for info in list_snapshots(run.path) if info.fakes_path is not None]
        if not run.reals.is_file() or not grids:
            continue
        newest = grids[-1]
        with Image.open(run.reals) as reals, Image.open(newest.fakes_path) as fake:
            pair = [image.convert("L").resize((image.width * GRID_UPSCALE, image.height * GRID_UPSCALE),
                                              Image.NEAREST) for image in (reals, fake)]
        row = Image.new("L", (pair[0].width + pair[1].width + 20, max(p.height for p in pair) + 24), 255)
        row.paste(pair[0], (0, 24))
        row.paste(pair[1], (pair[0].width + 20, 24))
        draw = ImageDraw.Draw(row)
        draw.text((4, 4), f"{run.name}: real training images", fill=0)
        draw.text((pair[0].width + 24, 4), f"fakes at {newest.kimg:g} kimg (G_ema, seeds 0..)", fill=0)
        rows.append(row)
    sheet = Image.new("L", (max(r.width for r in rows), sum(r.height + 10 for r in rows)), 255)
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height + 10
    sheet.save(out)
    return out


def machine() -> str:
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        torch_version = torch.__version__
    except ImportError:
        gpu, torch_version = "no GPU", "not installed"
    return (f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), {gpu}, "
            f"Python {platform.python_version()}, torch {torch_version}")


def report(cold: dict, warm: dict, speed_note: str = "") -> str:
    lines = ["# `python -m mura_aug demo`: time on generated data", "",
             f"Machine: {machine()}. Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.",
             "Settings: `mura_aug/notebooks/demo_params.yaml`. Measured by `bench/bench_demo.py` (wall-clock, the machine "
             "shared with other work, so expect some noise).",
             f"{' and '.join(DEMO_SIDE_BY_SIDE)} run side by side, {SIDE_BY_SIDE_THREADS} CPU thread(s) each: their "
             "times overlap, so the notebooks' times add up to more than the whole command's.",
             f"{speed_note}." if speed_note else "", "",
             "| notebook | cold run (s) | rerun (s) | status (cold / rerun) |", "|---|---:|---:|---|"]
    warm_by_name = {entry["name"]: entry for entry in warm["notebooks"]}
    for entry in cold["notebooks"]:
        again = warm_by_name.get(entry["name"], {})
        seconds = [f"{x['seconds']:.1f}" if x.get("seconds") is not None else "-" for x in (entry, again)]
        lines.append(f"| {entry['name']} | {seconds[0]} | {seconds[1]} | {entry['status']} / "
                     f"{again.get('status', '-')} |")
    lines.append(f"| **whole command** (incl. start-up) | **{cold['wall_s']:.0f}** | **{warm['wall_s']:.0f}** | "
                 f"exit {cold['returncode']} / {warm['returncode']} |")
    verdict = "meets" if cold["returncode"] == 0 and cold["wall_s"] <= TARGET_S else "misses"
    lines += ["", f"The cold run {verdict} the target of 6 minutes ({cold['wall_s'] / 60:.1f} min).", "",
              "What the cold run printed at its end:", "", "```", closing_lines(cold["stdout"]), "```",
              "", "Reals beside fakes: `demo_fakes_beside_reals.png`."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default=None, help="a new folder for the demo (default: a temporary one)")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "demo.md"))
    args = parser.parse_args()
    before = machine_speed.measure()
    with tempfile.TemporaryDirectory() as scratch:
        workspace = Path(args.workspace) if args.workspace else Path(scratch) / "demo"
        cold = run_demo(workspace)
        if cold["returncode"] == 0:
            save_grids_beside(workspace, Path(args.out).with_name("demo_fakes_beside_reals.png"))
        warm = run_demo(workspace)
    text = report(cold, warm, machine_speed.describe(before, machine_speed.measure()))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_keeping_readings(Path(args.out), text)  # the readings written by hand under "## " headings stay
    print(text)
    return 0 if cold["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
