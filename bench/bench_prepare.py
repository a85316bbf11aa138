"""Stage 01 throughput: run_stage() on a generated MURA tree of a few thousand images (256-512 px per side).

    python bench/bench_prepare.py [--patients 600] [--resolution 256] [--workers 1 2]
    python bench/bench_prepare.py --compare /tmp/dataset_tool.py --mura TREE/MURA-v1.1

The second form (issue 19) times the PNG codecs (Pillow, pyspng, OpenCV), the encode levels and a resize from
a reduced image on the tree's images, then NVIDIA's dataset_tool.py (a checkout of NVlabs/stylegan2-ada-pytorch,
never part of this repository) against stage 01 on the same images, and writes
bench/results/prepare_vs_dataset_tool.md.

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
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: its shared helpers
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

from machine_speed import cpu_model, cpu_seconds, load_average  # noqa: E402  (bench/machine_speed.py)
from mura_aug.prepare.demo_data import make_demo_mura  # noqa: E402
from mura_aug.prepare.settings import PrepareSettings  # noqa: E402
from mura_aug.prepare.stage import run_stage  # noqa: E402

RESULTS = REPO / "bench" / "results" / "prepare.md"
SHOULDER_TRAIN, SHOULDER_VALID = 8379, 563  # images of XR_SHOULDER in MURA-v1.1


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
    parser.add_argument("--compare", metavar="DATASET_TOOL_PY", help="NVIDIA's dataset_tool.py to compare with")
    parser.add_argument("--mura", help="MURA-v1.1 tree for --compare (e.g. make-demo-data --like-mura output)")
    args = parser.parse_args()
    if args.compare:
        compare_with_dataset_tool(Path(args.compare), Path(args.mura), Path(args.data), args.resolution)
        return

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
    write_keeping_readings(RESULTS, "\n".join(lines))  # the readings written by hand under "## " stay
    print(f"wrote {RESULTS}")


# --- issue 19: codecs, and NVIDIA's dataset_tool on the same images ----------------------------------------

# dataset_tool passes mode='RGB' to Image.fromarray for grey arrays too, which Pillow 10+ refuses; this shim
# drops the mode (the array decides it), so the tool runs unchanged otherwise.
DATASET_TOOL_SHIM = """
import runpy, sys, PIL.Image
_fromarray = PIL.Image.fromarray
PIL.Image.fromarray = lambda obj, mode=None: _fromarray(obj)
path = sys.argv.pop(1)
sys.argv[0] = path
runpy.run_path(path, run_name='__main__')
"""
COMPARE_RESULTS = REPO / "bench" / "results" / "prepare_vs_dataset_tool.md"


def _cpu_ms(function, items) -> float:
    clock = time.process_time()
    for item in items:
        function(item)
    return 1000 * (time.process_time() - clock) / len(items)


def codec_rows(files) -> list:
    """CPU ms per image of each decoder, encoder and resize variant on `files` (in this process)."""
    import io

    import numpy as np
    from PIL import Image

    from mura_aug import imaging

    datas = [f.read_bytes() for f in files]
    rows = []

    def pillow_decode(data):
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    rows.append(("decode", "Pillow", _cpu_ms(pillow_decode, datas), ""))
    try:
        import pyspng

        rows.append(("decode", "pyspng", _cpu_ms(pyspng.load, datas), ""))
    except ImportError:
        rows.append(("decode", "pyspng", float("nan"), "not installed"))
    cv2 = imaging.opencv()
    if cv2 is not None:
        rows.append(("decode", "OpenCV", _cpu_ms(lambda d: cv2.imdecode(np.frombuffer(d, np.uint8),
                                                                        cv2.IMREAD_UNCHANGED), datas), ""))
    greys = [imaging.to_grey(Image.open(io.BytesIO(d))) for d in datas]
    squares = [imaging.resize_pad(g, 256) for g in greys]
    rows.append(("resize to 256 (pad)", "Lanczos from the full image (stage 01)",
                 _cpu_ms(lambda g: imaging.resize_pad(g, 256), greys), ""))

    def from_reduced(grey):
        factor = max(1, int(max(grey.size) / 256))
        return imaging.resize_pad(grey.reduce(factor) if factor > 1 else grey, 256)

    differences = [np.abs(np.asarray(from_reduced(g), np.int16) - np.asarray(s, np.int16)).max()
                   for g, s in zip(greys, squares)]
    rows.append(("resize to 256 (pad)", "box reduce() by the whole factor, then Lanczos",
                 _cpu_ms(from_reduced, greys), f"pixels differ by up to {max(differences)} grey levels"))
    rgb = [s.convert("RGB") for s in squares]
    for level in (0, 1, 4, 6):
        sizes = [len(imaging.encode_png(image, level)) for image in rgb[:50]]
        rows.append(("encode 256 px RGB", f"Pillow level {level}", _cpu_ms(lambda im: imaging.encode_png(im, level), rgb),
                     f"{np.mean(sizes) / 1024:.0f} KiB"))
    if cv2 is not None:
        sizes = [len(imaging.encode_png_fast(image, 4)) for image in rgb[:50]]
        rows.append(("encode 256 px RGB", f"OpenCV level {imaging.FAST_PNG_LEVEL}, 'up' filter",
                     _cpu_ms(lambda im: imaging.encode_png_fast(im, 4), rgb), f"{np.mean(sizes) / 1024:.0f} KiB"))
    return rows


def _timed_child(command, env=None) -> dict:
    """Run a command; its wall seconds and CPU seconds (it and its children), from a wrapper process."""
    wrapper = ("import resource, subprocess, sys, time, json\n"
               "t = time.perf_counter(); rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, "
               "stderr=subprocess.DEVNULL)\n"
               "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
               "print(json.dumps({'rc': rc, 'wall_s': time.perf_counter() - t, 'cpu_s': u.ru_utime + u.ru_stime}))")
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_with_dataset_tool(tool: Path, mura: Path, data: Path, resolution: int) -> None:
    from PIL import Image

    train = sorted((mura / "train").rglob("*.png"))
    grey = data / "dataset_tool_input"  # dataset_tool refuses a mix of grey and RGB images: the grey ones
    shutil.rmtree(grey, ignore_errors=True)
    grey.mkdir(parents=True)
    for path in train:
        with Image.open(path) as image:
            if image.mode == "L":
                (grey / "_".join(path.relative_to(mura).parts)).symlink_to(path)
    grey_count = sum(1 for _ in grey.iterdir())
    codecs = codec_rows(sorted(grey.iterdir())[:300])
    load_before = load_average()
    runs = []
    out = data / "dataset_tool_out.zip"
    out.unlink(missing_ok=True)
    row = _timed_child([sys.executable, "-c", DATASET_TOOL_SHIM, str(tool), "--source", str(grey), "--dest", str(out),
                        "--transform", "center-crop", "--width", str(resolution), "--height", str(resolution)])
    runs.append({"run": "NVIDIA dataset_tool (grey train images, center-crop, level-0 PNGs)", "workers": 1,
                 "images": grey_count, **row})
    stage = ("import sys; from mura_aug.prepare.settings import PrepareSettings; "
             "from mura_aug.prepare.stage import run_stage; "
             "run_stage(sys.argv[1], PrepareSettings(mura_path=sys.argv[2], resolution=int(sys.argv[3]), "
             "workers=int(sys.argv[4])), progress=False)")
    total = sum(1 for _ in mura.rglob("*.png"))
    env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for codec in ("0", "1"):
        for workers in (1, 2):
            workspace = data / f"compare-ws-{codec}-{workers}"
            shutil.rmtree(workspace, ignore_errors=True)
            row = _timed_child([sys.executable, "-c", stage, str(workspace), str(mura), str(resolution), str(workers)],
                               env={**env, "MURA_AUG_OPENCV": codec})
            runs.append({"run": f"stage 01 cold ({'OpenCV' if codec == '1' else 'Pillow'} codec; copies + datasets)",
                         "workers": workers, "images": total, **row})
            shutil.rmtree(workspace, ignore_errors=True)
    write_comparison(codecs, runs, tool, mura, load_before, load_average(), resolution)


def write_comparison(codecs, runs, tool, mura, load_before, load_after, resolution) -> None:
    reference = runs[0]
    reference_rate = reference["images"] / reference["cpu_s"]  # images per CPU second, one process
    cores = os.cpu_count() or 1
    lines = ["# Stage 01 against NVIDIA's dataset_tool (issue 19)", "",
             f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `python bench/bench_prepare.py --compare "
             f"{tool} --mura {mura}` on {cores} CPU cores ({cpu_model()}), Python {platform.python_version()}. The "
             f"machine was shared with other jobs (load average {load_before} before, {load_after} after), so wall "
             "times are upper bounds; CPU seconds (user + system, the process and its workers) hardly depend on "
             "other jobs and are the figure to compare.", "",
             "## Codecs (CPU ms per image, 300 grey train images, one process)", "",
             "| step | how | CPU ms/image | note |", "|---|---|---|---|"]
    lines += [f"| {step} | {how} | {ms:.2f} | {note} |" for step, how, ms, note in codecs]
    lines += ["", f"## Whole runs at {resolution} px", "",
              "`images/s, 2 idle cores` = images / CPU seconds x min(workers, cores): the rate on this machine "
              "without other jobs. dataset_tool only reads the grey train images (it refuses mixed channels) and "
              "writes one dataset; stage 01 also checks and copies every train and valid image and writes two "
              "datasets and the tables.", "",
              "| run | workers | images | wall s | CPU s | CPU ms/image | images/s (wall) | images/s, 2 idle cores | "
              "x dataset_tool |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        idle_rate = run["images"] / run["cpu_s"] * min(run["workers"], cores)
        lines.append(f"| {run['run']} | {run['workers']} | {run['images']} | {run['wall_s']:.1f} | "
                     f"{run['cpu_s']:.1f} | {1000 * run['cpu_s'] / run['images']:.2f} | "
                     f"{run['images'] / run['wall_s']:.0f} | {idle_rate:.0f} | {idle_rate / reference_rate:.2f} |")
    lines += ["", "Raw: " + json.dumps({"codecs": codecs, "runs": runs}), ""]
    COMPARE_RESULTS.write_text("\n".join(lines))
    print(f"wrote {COMPARE_RESULTS}")


if __name__ == "__main__":
    main()
