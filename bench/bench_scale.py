"""MURA-scale rehearsal: every stage's data path at 1/8, 1/2 and 1 x XR_SHOULDER, its cost curve and memory.

    python bench/bench_scale.py [--scales 0.125 0.5 1] [--root /tmp/mura_scale] [--stages ...] [--all-parts 0.125]

For each scale it draws (once, kept under --root) a demo tree with real MURA's XR_SHOULDER counts times the
scale (`make_demo_mura(like_mura=True)`, 8,942 images at 1x) and runs each stage in a fresh Python process,
so its peak resident memory is its own:

  prepare_cold / prepare_warm   stage 01 into an empty workspace, then the same call again
  gan_load                      one class's GAN training array at 256 px (read the zip, decode, cache .npy)
  fakes_write                   10,000 x scale fake PNGs of one class at 256 px (real dataset images with noise:
                                the data path of stage 05's saving; the generator's own time is in bench_generate)
  memorisation                  stage 05's filter: every fake against every real of the class (pixel space)
  near_duplicates               stage 05's filter: every fake against every earlier kept fake (32 px thumbs)
  metrics                       FID / KID / precision-recall / diversity on the fakes (offline extractor)
  generate                      stage 05's own run_stage: 10,000 x scale fakes of one class at 256 px from a
                                generator, truncation psi 0.7, greyed, sharpened x2, saved as 8-bit grey PNGs,
                                listed in the manifest, then scored by the run's own D (DROP_FRACTION 0.1) and
                                the augmented table written; memorisation and near-duplicates are off here
                                (their own rows above). The generator and D are a `tiny` config at 256 px
                                trained for one tick by gan.loop.train (its snapshot and state, written by the
                                package, made once per workspace and not timed): a tiny network, so the data
                                path is what is timed (sampling, greying, sharpening, saving, D scoring); the
                                full-size G's speed is in bench/results/generate.md.
  d_scoring                     stage 05's filter pass with only the D scorer on, over the fakes `generate`
                                wrote (reading them back, D on each, the verdicts into the manifest)
  networks                      the same tiny G and D alone on NETWORK_IMAGES images in memory (no files), so
                                the networks' share of the two rows above is known
  eval_epoch                    stage 06's data path: the image cache at 64 px and one pass over the train set
  eval_bootstrap                stage 06's bootstrap: default resamples, 2 arms x 3 seeds of study predictions

Reported per stage and scale: wall and CPU seconds (the process and its workers), peak resident memory (the
largest of the process and any one worker), bytes written into the output folders, and the log-log slope of
CPU time against size. CPU time is the figure to trust on a shared machine. Writes bench/results/scale.md and
bench/results/scale.png. --all-parts S also times stage 01 on all seven body parts at scale S.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_speed import cpu_model, cpu_seconds, load_average  # noqa: E402  (bench/machine_speed.py)
from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS = REPO / "bench" / "results" / "scale.md"
PLOT = REPO / "bench" / "results" / "scale.png"
STAGES = ("prepare_cold", "prepare_warm", "gan_load", "fakes_write", "memorisation", "near_duplicates", "metrics",
          "generate", "d_scoring", "networks", "eval_epoch", "eval_bootstrap")
FAKES_AT_FULL_SCALE = 10_000  # fakes of one class at 1x: stage 05's next step
BODY_PART = "XR_SHOULDER"
GAN_RESOLUTION = 256  # px
EVAL_IMAGE_SIZE = 64  # px: small input, so the data path and not the network is timed
DUPLICATE_THRESHOLD = 3.0  # grey levels, the example value of stage 05's dedupe_threshold
TRUNCATION_PSI = 0.7  # the generate stage's psi: below 1, so G's truncation step runs
SHARPEN_FACTOR = 2.0  # PIL Sharpness factor of the study
DROP_FRACTION = 0.1  # share of the fakes D scores lowest and stage 05 drops: > 0, so the D scorer runs
NETWORK_IMAGES = 512  # images the networks stage runs G and D on (their cost per image does not grow with scale)


# --- one stage in this process (called in a child) ---------------------------------------------------------

def _folder_bytes(*folders: Path) -> int:
    total = 0
    for folder in folders:
        if folder.exists():
            for path in folder.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    total += path.stat().st_size
    return total


def _tree(root: Path, scale: float, parts) -> Path:
    from mura_aug.prepare.demo_data import make_demo_mura

    name = f"mura_{'all' if len(parts) > 1 else 'shoulder'}_{scale:g}"
    return make_demo_mura(root / name, like_mura=True, scale=scale, body_parts=parts, workers=None)


def _fake_paths(root: Path, scale: float):
    folder = root / f"fakes_{scale:g}" / "positive"
    return sorted(folder.glob("*.png"))


def _prepared(workspace: Path, mura: Path) -> None:
    """Stage 01 into `workspace` unless it already ran there (not timed: the stage 05 rows need its tables)."""
    from mura_aug.prepare.settings import PrepareSettings
    from mura_aug.prepare.stage import run_stage
    from mura_aug.workspace import Workspace

    if not Workspace(workspace).dataset_zip(BODY_PART, "positive", GAN_RESOLUTION).is_file():
        run_stage(workspace, PrepareSettings(mura_path=str(mura), body_part=BODY_PART, resolution=GAN_RESOLUTION),
                  progress=False)


def _tiny_run(workspace: Path, train: bool) -> str:
    """The positive class's `tiny` 256 px run, trained for one tick by the package's own training loop (its
    network file and full state with D, as training leaves them) when `train` and it is not there yet."""
    from mura_aug.gan import loop
    from mura_aug.gan.settings import RunSettings
    from mura_aug.workspace import Workspace

    run = f"{BODY_PART}-positive-tiny-{GAN_RESOLUTION}-bench"
    if train and not Workspace(workspace).run(run).state_files():
        # one tick of 8 images (2 steps of batch 4): enough for a snapshot; speed does not depend on the weights
        loop.train(workspace, RunSettings(label="positive", body_part=BODY_PART, cfg="tiny",
                                          resolution=GAN_RESOLUTION, kimg=0.008, kimg_per_tick=0.008, snap=1,
                                          batch=4, device="cpu", progress=False, metrics_extractor="offline",
                                          run=run).check(), log=lambda text: None)
    return run


def set_up_synth(scale: float, root: Path) -> None:
    """What the generate and d_scoring stages start from, made once per workspace and not timed: stage 01's
    tables and GAN dataset, and the tiny run. Run in a process of its own before the measured one, so that
    training's memory does not count as theirs."""
    workspace = root / f"workspace_shoulder_{scale:g}"
    _prepared(workspace, _tree(root, scale, (BODY_PART,)))
    _tiny_run(workspace, train=True)


def _synth_settings(run: str, count: int):
    from mura_aug.synth.settings import SynthSettings

    return SynthSettings(body_part=BODY_PART, n_per_class=count, classes=("positive",), runs=[run],
                         truncation_psi=TRUNCATION_PSI, sharpen_factor=SHARPEN_FACTOR, exclude_memorised=False,
                         dedupe_threshold=None, drop_fraction=DROP_FRACTION, device="cpu").check()


def run_one(stage: str, scale: float, root: Path, parts) -> dict:
    """Do `stage` at `scale`; return its figures (measured inside this process)."""
    workspace = root / f"workspace_{'all' if len(parts) > 1 else 'shoulder'}_{scale:g}"
    mura = _tree(root, scale, parts)
    outputs = [workspace]
    detail: dict = {}
    import numpy as np

    before = 0
    clock, cpu_before = time.perf_counter(), cpu_seconds()
    if stage in ("prepare_cold", "prepare_warm"):
        from mura_aug.prepare.settings import PrepareSettings
        from mura_aug.prepare.stage import run_stage

        if stage == "prepare_cold":
            shutil.rmtree(workspace, ignore_errors=True)
        else:
            before = _folder_bytes(workspace)
        clock, cpu_before = time.perf_counter(), cpu_seconds()
        images = 0
        for part in parts if len(parts) > 1 else [BODY_PART]:
            summary = run_stage(workspace, PrepareSettings(mura_path=str(mura), body_part=part,
                                                           resolution=GAN_RESOLUTION), progress=False)
            images += summary["images"]["train"]["total"] + summary["images"]["valid"]["total"]
        detail = {"images": images}
    elif stage == "gan_load":
        from mura_aug.gan.dataset import load_training_images
        from mura_aug.workspace import Workspace

        cache = Workspace(workspace).cache
        shutil.rmtree(cache, ignore_errors=True)
        outputs = [cache]
        clock, cpu_before = time.perf_counter(), cpu_seconds()
        images, _ = load_training_images(workspace, BODY_PART, "positive", GAN_RESOLUTION)
        detail = {"images": len(images), "array_bytes": int(images.nbytes)}
    elif stage == "fakes_write":
        from PIL import Image

        from mura_aug.gan.dataset import load_real_images

        folder = root / f"fakes_{scale:g}" / "positive"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        outputs = [folder]
        clock, cpu_before = time.perf_counter(), cpu_seconds()
        reals, _ = load_real_images(workspace, BODY_PART, "positive", GAN_RESOLUTION)
        count = round(FAKES_AT_FULL_SCALE * scale)
        rng = np.random.default_rng(0)
        for index in range(count):
            base = reals[index % len(reals)].transpose(1, 2, 0).astype(np.int16)
            noisy = np.clip(base + rng.integers(-12, 13, base.shape[:2])[..., None], 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(folder / f"fake{index:06d}.png", compress_level=1)
        detail = {"images": count}
    elif stage in ("memorisation", "near_duplicates", "metrics"):
        from mura_aug.gan.dataset import load_real_images

        paths = _fake_paths(root, scale)
        outputs = []
        clock, cpu_before = time.perf_counter(), cpu_seconds()
        if stage == "memorisation":
            from mura_aug.metrics.measures import memorised_fake_paths

            reals, _ = load_real_images(workspace, BODY_PART, "positive", GAN_RESOLUTION)
            flagged = memorised_fake_paths(paths, reals)
            detail = {"images": len(paths), "reals": len(reals), "flagged": len(flagged)}
        elif stage == "near_duplicates":
            from mura_aug.synth.filters import near_duplicates

            duplicates = near_duplicates(paths, DUPLICATE_THRESHOLD)
            detail = {"images": len(paths), "duplicates": len(duplicates)}
        else:
            from mura_aug.metrics.measures import compute_metrics, read_image_files

            reals, _ = load_real_images(workspace, BODY_PART, "positive", GAN_RESOLUTION)
            metrics, _ = compute_metrics(reals, read_image_files(paths), with_memorisation=False)
            detail = {"images": len(paths), "reals": len(reals), "fid_offline": round(metrics["fid_offline"], 2)}
    elif stage == "networks":
        import torch

        from mura_aug.gan import sampling
        from mura_aug.gan.network_file import load_generator
        from mura_aug.synth.filters import load_discriminator
        from mura_aug.synth.settings import SynthSettings
        from mura_aug.workspace import Workspace

        outputs = []
        folder = Workspace(workspace).run(_tiny_run(workspace, train=False))
        G = load_generator(folder.network_files()[-1])
        D = load_discriminator(folder.state_files()[-1], "cpu")
        batch, d_batch = SynthSettings.default_of("batch"), 32  # images per G call (stage 05's), per D call
        warm = sampling.generate_array(G, range(d_batch), batch_size=batch)  # first calls set up the conv kernels
        with torch.no_grad():
            D(torch.from_numpy(warm).float() / 127.5 - 1, torch.zeros([len(warm), D.c_dim]))
        clock, cpu_before = time.perf_counter(), cpu_seconds()
        images = sampling.generate_array(G, range(NETWORK_IMAGES), truncation_psi=TRUNCATION_PSI, batch_size=batch)
        g_cpu = cpu_seconds() - cpu_before
        with torch.no_grad():
            for start in range(0, NETWORK_IMAGES, d_batch):
                chunk = torch.from_numpy(images[start:start + d_batch]).float() / 127.5 - 1
                D(chunk, torch.zeros([len(chunk), D.c_dim]))
        d_cpu = cpu_seconds() - cpu_before - g_cpu
        detail = {"images": NETWORK_IMAGES, "G_cpu_ms_per_image": round(1000 * g_cpu / NETWORK_IMAGES, 1),
                  "D_cpu_ms_per_image": round(1000 * d_cpu / NETWORK_IMAGES, 1)}
    elif stage in ("generate", "d_scoring"):
        from mura_aug.synth import filters, snapshots
        from mura_aug.synth.stage import run_stage
        from mura_aug.workspace import Workspace

        run = _tiny_run(workspace, train=False)  # made by set_up_synth in its own process (its memory not ours)
        space = Workspace(workspace)
        settings = _synth_settings(run, round(FAKES_AT_FULL_SCALE * scale))
        outputs = [space.augmented]
        if stage == "generate":
            shutil.rmtree(space.augmented, ignore_errors=True)  # a rerun would keep the fakes already there
            clock, cpu_before = time.perf_counter(), cpu_seconds()
            result = run_stage(workspace, settings, progress=False, log=lambda text: None)
            detail = {"images": result.generated["positive"].generated, "dropped": len(result.dropped)}
        else:
            fakes = sorted(space.augmented_dir("positive", BODY_PART).glob("*.png"))
            if len(fakes) != settings.n_per_class:
                raise SystemExit(f"d_scoring needs the {settings.n_per_class} fakes of `generate` at this scale "
                                 f"({len(fakes)} found): run --stages generate d_scoring")
            before = _folder_bytes(space.augmented)
            clock, cpu_before = time.perf_counter(), cpu_seconds()
            picked = snapshots.find_snapshots(space, BODY_PART, settings.runs, settings.classes)
            dropped = filters.filter_fakes(space, settings, filters.scorer_for(settings, picked), progress=False)
            detail = {"images": len(fakes), "dropped": len(dropped)}
    elif stage == "eval_epoch":
        from mura_aug.evaluate.data import ImageCache, load_tables, make_dataset

        outputs = []
        clock, cpu_before = time.perf_counter(), cpu_seconds()
        from mura_aug.workspace import Workspace

        tables = load_tables(Workspace(workspace), BODY_PART, need_synthetic=False)
        train, valid = tables[0], tables[1]
        cache = ImageCache(Workspace(workspace).root, EVAL_IMAGE_SIZE)
        preloaded = cache.preload(list(train["path"]) + list(valid["path"]), progress=False)
        dataset = make_dataset(cache, train, train=True, rotation_deg=10)
        for index in range(len(dataset)):
            dataset[index]
        detail = {"images": len(train) + len(valid), "preloaded": bool(preloaded), "cache_bytes": cache.bytes}
    elif stage == "eval_bootstrap":
        from mura_aug.evaluate.settings import EvalSettings
        from mura_aug.evaluate.study_metrics import bootstrap_weights, metrics_with_intervals, seed_draws

        outputs = []
        clock, cpu_before = time.perf_counter(), cpu_seconds()
        from mura_aug.evaluate.data import load_tables
        from mura_aug.workspace import Workspace

        valid = load_tables(Workspace(workspace), BODY_PART, need_synthetic=False)[1]
        studies = valid.groupby("study_id")["label"].first()
        n_boot = EvalSettings.default_of("n_boot")
        weights = bootstrap_weights(len(studies), n_boot=n_boot)
        rng = np.random.default_rng(0)
        for _arm in ("baseline", "augmented"):
            for _seed in range(3):
                probabilities = np.clip(studies.to_numpy() * 0.3 + rng.random(len(studies)) * 0.7, 0, 1)
                metrics_with_intervals(studies.to_numpy(), probabilities, 0.5, weights)
        seed_draws(3, n_boot=n_boot)
        detail = {"images": len(valid), "studies": len(studies), "n_boot": n_boot}
    else:
        raise SystemExit(f"unknown stage {stage}")
    wall = time.perf_counter() - clock
    cpu = cpu_seconds() - cpu_before
    return {"stage": stage, "scale": scale, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(_peak_rss_bytes() / 2**20), "written_mb": round(
                (_folder_bytes(*outputs) - before) / 2**20, 1) if outputs else 0.0, **detail}


def _peak_rss_bytes() -> int:
    # ru_maxrss is in KiB on Linux (bytes on macOS); children: the largest single finished worker.
    scale = 1 if sys.platform == "darwin" else 1024
    return scale * max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                       resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


# --- the driver ------------------------------------------------------------------------------------------

def _child(stage: str, scale: float, root: Path, all_parts: bool) -> dict:
    command = [sys.executable, __file__, "--child", stage, "--scales", str(scale), "--root", str(root)]
    if all_parts:
        command.append("--child-all-parts")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if stage in ("generate", "d_scoring", "networks"):
        subprocess.run([sys.executable, __file__, "--child-setup", "--scales", str(scale), "--root", str(root)],
                       env=env, check=True)
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return {"stage": stage, "scale": scale, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def slope(rows) -> float:
    """Least-squares slope of log(CPU s) against log(images) (1: linear, 2: quadratic)."""
    points = [(math.log(r["images"]), math.log(r["cpu_s"])) for r in rows
              if r.get("images") and r.get("cpu_s", 0) > 0.05]
    if len(points) < 2:
        return float("nan")
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else float("nan")


def write_results(rows, args, started: str, load_before: str, load_after: str) -> None:
    by_stage = {}
    for row in rows:
        by_stage.setdefault(row["stage"] + (" (all parts)" if row.get("all_parts") else ""), []).append(row)
    lines = ["# MURA-scale rehearsal (issue 19)", "",
             f"Measured {started} by `python bench/bench_scale.py {' '.join(sys.argv[1:])}` on "
             f"{os.cpu_count()} CPU cores ({cpu_model()}), {platform.platform()}, Python "
             f"{platform.python_version()}, PNG codec {_codec()}. The machine was shared with other jobs (load "
             f"average 1/5/15 min before {load_before}, after {load_after}): wall times are upper bounds, CPU "
             "seconds (the process and its workers) are the figure to scale by.", "",
             "Input: `make_demo_mura(like_mura=True, scale=S)`: real MURA-v1.1 XR_SHOULDER counts times S "
             "(1x = 8,379 train + 563 valid images, 256-512 px per side). Each stage runs in a fresh process; peak "
             "RSS is the largest of that process and any one of its workers. `images` is the stage's input count "
             "(fakes for the stage 05 filters and metrics, whose reals are the positive class's train images). "
             "For fakes_write and the filters and metrics after it, the fakes are real dataset images with noise "
             "written as 256 px PNGs. `generate` is stage 05's own run_stage (truncation psi "
             f"{TRUNCATION_PSI:g}, sharpening x{SHARPEN_FACTOR:g}, 8-bit grey PNGs, the manifest, D scoring with "
             f"DROP_FRACTION {DROP_FRACTION:g}, the augmented table; memorisation and near-duplicates off, they have "
             "their own rows) from a `tiny` 256 px run trained for one tick by gan.loop.train, and `d_scoring` its "
             "filter pass with only the run's D over those fakes: tiny networks, so the data path is what is "
             "timed; the full-size generator's speed is in bench/results/generate.md.", "",
             "| stage | scale | images | wall s | CPU s | CPU ms/image | peak RSS MB | written MB | notes |",
             "|---|---|---|---|---|---|---|---|---|"]
    slopes = {}
    for stage, stage_rows in by_stage.items():
        stage_rows.sort(key=lambda r: r["scale"])
        for r in stage_rows:
            if "error" in r:
                lines.append(f"| {stage} | {r['scale']:g} | | | | | | | error: {r['error']} |")
                continue
            notes = ", ".join(f"{k} {v}" for k, v in r.items() if k not in (
                "stage", "scale", "wall_s", "cpu_s", "peak_rss_mb", "written_mb", "images", "all_parts"))
            per_image = 1000 * r["cpu_s"] / r["images"] if r.get("images") else float("nan")
            lines.append(f"| {stage} | {r['scale']:g} | {r.get('images', '')} | {r['wall_s']} | {r['cpu_s']} | "
                         f"{per_image:.2f} | {r['peak_rss_mb']} | {r['written_mb']} | {notes} |")
        slopes[stage] = slope([r for r in stage_rows if "error" not in r])
    lines += ["", "Log-log slope of CPU seconds against images (1 = linear; pairwise work is 2 when both sets grow):",
              "", "| stage | slope |", "|---|---|"]
    lines += [f"| {stage} | {value:.2f} |" for stage, value in slopes.items()]
    lines += ["", f"Plot: `{PLOT.name}` (CPU seconds and peak RSS against images, log-log)."]
    write_keeping_readings(RESULTS, "\n".join(lines), tail="Raw: " + json.dumps(rows), tail_starts="\nRaw: ")
    _plot(by_stage)
    print(f"wrote {RESULTS}")


def _plot(by_stage) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 5))
    for stage, rows in by_stage.items():
        rows = [r for r in rows if "error" not in r and r.get("images")]
        if not rows:
            continue
        xs = [r["images"] for r in rows]
        time_axis.plot(xs, [max(r["cpu_s"], 0.01) for r in rows], marker="o", label=stage)
        memory_axis.plot(xs, [r["peak_rss_mb"] for r in rows], marker="o", label=stage)
    for axis, label in ((time_axis, "CPU seconds"), (memory_axis, "peak RSS (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("images (input of the stage)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    memory_axis.axhline(8 * 1024, color="red", linestyle="--", label="8 GB budget")
    time_axis.legend(fontsize=7)
    figure.suptitle("MURA-scale rehearsal: 1/8, 1/2, 1 x XR_SHOULDER")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=110)


def _codec() -> str:
    from mura_aug.imaging import png_codec

    return png_codec()


ALL_PARTS_STAGES = ("prepare_cold", "prepare_warm")  # what --all-parts S times at scale S


def _measured_again(row: dict, args) -> bool:
    """Whether this call measures `row`'s stage and scale again (so --append replaces the row, not adds to it)."""
    if row.get("all_parts"):
        return row["stage"] in ALL_PARTS_STAGES and row["scale"] in args.all_parts
    return row["stage"] in args.stages and row["scale"] in args.scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", type=float, nargs="+", default=[0.125, 0.5, 1.0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/mura_scale"), help="trees and workspaces (kept)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--all-parts", type=float, nargs="*", default=[],
                        help="scales at which stage 01 also runs on all seven body parts")
    parser.add_argument("--append", action="store_true", help="add to the rows of an earlier run (raw JSON)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-all-parts", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-setup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_setup:
        set_up_synth(args.scales[0], args.root)
        return
    if args.child:
        from mura_aug.prepare.mura import BODY_PARTS

        parts = BODY_PARTS if args.child_all_parts else (BODY_PART,)
        print(json.dumps({**run_one(args.child, args.scales[0], args.root, parts),
                          **({"all_parts": True} if args.child_all_parts else {})}))
        return
    args.root.mkdir(parents=True, exist_ok=True)
    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = load_average()
    rows = []
    if args.append and RESULTS.is_file():
        raw = RESULTS.read_text().split("Raw: ", 1)[-1].strip()
        rows = [r for r in json.loads(raw) if not _measured_again(r, args)]
    for scale in args.scales:
        for stage in args.stages:
            row = _child(stage, scale, args.root, False)
            print(json.dumps(row), flush=True)
            rows.append(row)
    for scale in args.all_parts:
        for stage in ALL_PARTS_STAGES:
            row = _child(stage, scale, args.root, True)
            print(json.dumps(row), flush=True)
            rows.append(row)
    write_results(rows, args, started, load_before, load_average())


if __name__ == "__main__":
    main()
