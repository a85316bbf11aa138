"""Which training recipe shows the demo anatomy soonest: the `tiny` config and a few variants, on the demo's data.

    python bench/bench_demo_recipe.py [--kimg 14] [--grids-at 10,14] [--variants tiny,tiny-before,lr-x2,batch-32]
                                      [--seed 0] [--label positive] [--workdir /tmp/mura_aug_demo_recipe]
                                      [--out bench/results]

1. Makes the demo's own data: `python -m mura_aug demo --only 01` (demo_params.yaml: 40 patients, 32 px).
2. Trains one class (--label, positive unless told) once per variant, for --kimg, two variants at a time side by
   side with one CPU thread each (as the demo runs notebooks 02 and 03), with --seed (0), ticks of 1 kimg.
3. Writes demo_recipe.md (s/kimg of each variant, ADA's p, the losses) and demo_recipe.png: per variant the
   first 8 fakes of the grid at each kimg of --grids-at, enlarged, under the reals. Which recipe shows the
   anatomy is judged by eye and written by hand under "## " headings (kept on a rerun).

Variants: `tiny` as committed in mura_aug/gan/configs.py (lr 0.005, R1 2.56 since 2026-12-03), and changes to
the recipe before that, `tiny-before` (R1, path length, style mixing 0.9, lr 0.0025, R1 weight 0.08, batch 8):
  no-mixing-no-pl   style mixing and path-length regularisation off, as NVlabs' `cifar` config
  lr-x2             learning rate 0.005
  batch-32          32 images per step (the R1 weight stays the config's, set from its batch of 8)
  gamma-x4          R1 weight 0.32; -x8: 0.64, -x16: 1.28, -x32: 2.56
  mapping-lr-0.1    the mapping network's learning-rate multiplier 0.1 (NVlabs: 0.01)
  noaug             no augmentation (ADA off)
  lr-xN-falling     the rate starts at N x and falls linearly to the config's by 12 kimg
and the combinations their names spell (lr-x2-gamma-x32 is the committed recipe).
The variants are applied by wrapping the loop's make_config, so that nothing users see grows an option for it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from results_file import write_keeping_readings  # noqa: E402  (bench/results_file.py)
from mura_aug.notebooks.series import SIDE_BY_SIDE_THREADS  # noqa: E402  (the demo's threads per notebook)
from mura_aug.workspace import Workspace  # noqa: E402

# name -> (make_config keyword arguments, loss_kwargs changes, G mapping_kwargs changes, learning-rate schedule:
# None, or (factor at the start, kimg at which it has fallen linearly to the config's rate))
RECIPE_BEFORE = {"lr": 0.0025, "gamma": 0.08}  # the tiny recipe until 2026-12-03; the variants change it


def _before(**changes) -> dict:
    return {**RECIPE_BEFORE, **changes}


VARIANTS = {
    "tiny": ({}, {}, {}, None),
    "tiny-before": (_before(), {}, {}, None),
    "no-mixing-no-pl": (_before(), {"style_mixing_prob": 0.0, "pl_weight": 0.0}, {}, None),
    "lr-x2": (_before(lr=0.005), {}, {}, None),
    "batch-32": (_before(batch=32), {}, {}, None),
    "gamma-x4": (_before(gamma=0.32), {}, {}, None),
    "lr-x2-gamma-x4": (_before(lr=0.005, gamma=0.32), {}, {}, None),
    "mapping-lr-0.1": (_before(), {}, {"lr_multiplier": 0.1}, None),
    "noaug": (_before(aug="noaug"), {}, {}, None),
    "lr-x2-falling": (_before(), {}, {}, (2.0, 12.0)),
    "lr-x3-falling": (_before(), {}, {}, (3.0, 12.0)),
    "lr-x2-falling-gamma-x4": (_before(gamma=0.32), {}, {}, (2.0, 12.0)),
    "lr-x3-falling-gamma-x4": (_before(gamma=0.32), {}, {}, (3.0, 12.0)),
    "lr-x2-gamma-x8": (_before(lr=0.005, gamma=0.64), {}, {}, None),
    "lr-x2-gamma-x16": (_before(lr=0.005, gamma=1.28), {}, {}, None),
    "lr-x2-gamma-x32": (_before(lr=0.005, gamma=2.56), {}, {}, None),
}
LABELS = ("positive", "negative")  # the demo trains one GAN per class
FAKES_SHOWN = 8  # fakes per grid row in the picture
ENLARGE = 3  # nearest-neighbour factor: 32 px fakes are too small to judge


def run_of(variant: str, seed: int, label: str) -> str:
    """The run folder name of a variant's training of one class with one seed."""
    return f"recipe-{variant}-{label}-seed{seed}"


def demo_data(workdir: Path) -> Path:
    """The demo workspace after notebook 01 (made once; the demo skips it when it is there)."""
    workspace = workdir / "ws"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MPLBACKEND": "Agg"}
    subprocess.run([sys.executable, "-m", "mura_aug", "demo", "--workspace", str(workspace), "--only", "01",
                    "--no-progress"], cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    return workspace


def train_one(workspace: Path, variant: str, kimg: float, seed: int, label: str) -> None:
    """Train one variant in this process (the process's OMP_NUM_THREADS sets its threads)."""
    from mura_aug.gan import configs, loop
    from mura_aug.gan.settings import RunSettings

    config_changes, loss_changes, mapping_changes, schedule = VARIANTS[variant]
    original = configs.make_config
    original_adam = loop._adam

    def make_variant_config(*args, **kwargs):
        config = original(*args, **{**kwargs, **config_changes})
        config.loss_kwargs.update(loss_changes)
        config.G_kwargs["mapping_kwargs"].update(mapping_changes)
        return config

    settings = RunSettings(label=label, cfg="tiny", resolution=32, kimg=kimg, kimg_per_tick=1, snap=1, seed=seed,
                           device="cpu", progress=False, run=run_of(variant, seed, label), keep=1, cpu_ok=True,
                           metrics_every=0)
    run = Workspace(workspace).run(settings.run).path
    if run.exists():  # a fresh run each time: resuming would not measure anything
        import shutil

        shutil.rmtree(run)
    loop.make_config = make_variant_config  # the name the loop calls (mura_aug/gan/loop.py imports it)
    if schedule is not None:
        variant_config = make_variant_config("tiny", 32)
        loop._adam = scheduled_adam(original_adam, *schedule, batch=variant_config.batch_size,
                                    base_lr=variant_config.lr)
    try:
        loop.train(workspace, settings, log=lambda text: None)
    finally:
        loop.make_config, loop._adam = original, original_adam


def scheduled_adam(make_adam, start_factor: float, until_kimg: float, batch: int, base_lr: float):
    """loop._adam whose optimisers start at `start_factor` x their rate and fall linearly to it by `until_kimg`.

    Counted in optimiser steps: a lazily regularised optimiser steps interval + 1 times per interval images
    batches, which its rate's adjustment (lr x interval / (interval + 1)) tells. Fresh runs only (the count
    starts at 0)."""
    def make(params, kwargs):
        optimizer = make_adam(params, kwargs)
        steps_per_image_batch = base_lr / float(kwargs["lr"])  # (interval + 1) / interval
        steps_until = until_kimg * 1000 / batch * steps_per_image_batch
        committed = [group["lr"] for group in optimizer.param_groups]
        step = optimizer.step
        taken = [0]

        def scheduled_step(*args, **kwargs):
            factor = 1 + (start_factor - 1) * max(0.0, 1 - taken[0] / steps_until)
            for group, rate in zip(optimizer.param_groups, committed):
                group["lr"] = rate * factor
            taken[0] += 1
            return step(*args, **kwargs)

        optimizer.step = scheduled_step
        return optimizer
    return make


def run_variants(workspace: Path, variants, kimg: float, seed: int, label: str) -> dict:
    """Two at a time, each in its own process with the demo's CPU threads; returns name -> wall seconds."""
    threads = str(SIDE_BY_SIDE_THREADS)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    seconds = {}
    for start in range(0, len(variants), 2):
        pair = variants[start:start + 2]
        began = time.perf_counter()
        processes = {name: subprocess.Popen([sys.executable, __file__, "--train-one", name, "--kimg", str(kimg),
                                             "--seed", str(seed), "--label", label, "--workspace", str(workspace)],
                                            env=env) for name in pair}
        for name, process in processes.items():
            if process.wait() != 0:
                raise SystemExit(f"variant {name} failed (exit status {process.returncode})")
            seconds[name] = time.perf_counter() - began
        print(f"trained {', '.join(pair)}", flush=True)
    return seconds


def stats_of(run: Path) -> list:
    return [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines() if line.strip()]


def picture(workspace: Path, variants, grids_at, seed: int, label: str, out: Path) -> Path:
    from PIL import Image, ImageDraw

    from mura_aug.gan.snapshot import list_snapshots

    experiments = Workspace(workspace).experiments
    side = 32 * ENLARGE
    label_width = 200
    rows = []  # (label, image of FAKES_SHOWN tiles)
    first_run = experiments / run_of(variants[0], seed, label)
    with Image.open(first_run / "reals.png") as reals:
        rows.append(("reals", reals.convert("L").crop((0, 0, 32 * FAKES_SHOWN, 32))))
    for name in variants:
        snapshots = {round(info.kimg): info for info in list_snapshots(experiments / run_of(name, seed, label))
                     if info.fakes_path is not None}
        for wanted in grids_at:
            info = snapshots.get(round(wanted))
            if info is None:
                continue
            with Image.open(info.fakes_path) as fakes:
                rows.append((f"{name}, {info.kimg:g} kimg", fakes.convert("L").crop((0, 0, 32 * FAKES_SHOWN, 32))))
    sheet = Image.new("L", (label_width + side * FAKES_SHOWN, len(rows) * (side + 6)), 255)
    draw = ImageDraw.Draw(sheet)
    for index, (label, tiles) in enumerate(rows):
        top = index * (side + 6)
        sheet.paste(tiles.resize((side * FAKES_SHOWN, side), Image.NEAREST), (label_width, top))
        draw.text((6, top + side // 2 - 6), label, fill=0)
    sheet.save(out)
    return out


def report(workspace: Path, variants, seconds: dict, kimg: float, seed: int, label: str, argv) -> str:
    import torch

    experiments = Workspace(workspace).experiments
    lines = ["# Which recipe shows the demo anatomy soonest (tiny config and variants, demo data, CPU)", "",
             f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()}-core CPU, torch "
             f"{torch.__version__}; two variants at a time side by side, {SIDE_BY_SIDE_THREADS} CPU thread(s) each "
             "(as the demo's 02 / 03).",
             "- Command: `python bench/bench_demo_recipe.py " + " ".join(argv) + "`",
             f"- Data: the demo's (notebook 01 with demo_params.yaml), class {label}; seed {seed}; {kimg:g} kimg each.",
             "", "| variant | wall s (pair) | s/kimg (loop, last 3 ticks) | ADA p at the end | loss G | loss D |",
             "|---|---|---|---|---|---|"]
    for name in variants:
        stats = stats_of(experiments / run_of(name, seed, label))
        last = stats[-1]
        rate = sorted(entry.get("sec_per_kimg") or 0.0 for entry in stats[-3:])[len(stats[-3:]) // 2]
        lines.append(f"| {name} | {seconds[name]:.0f} | {rate:.1f} | {last.get('augment_p', 0.0):.3f} | "
                     f"{last.get('loss_G', float('nan')):.2f} | {last.get('loss_D', float('nan')):.2f} |")
    lines += ["", "Picture: `demo_recipe.png` (reals, then each variant's first 8 fakes, G_ema, seeds 0-7)."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kimg", type=float, default=14, help="training length of each variant (kimg)")
    parser.add_argument("--grids-at", default="10,14", help="kimg of the fakes grids shown (comma-separated)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every variant")
    parser.add_argument("--label", choices=LABELS, default="positive", help="the class trained")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mura_aug_demo_recipe"))
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--train-one", default=None, help=argparse.SUPPRESS)  # a child process: one variant
    parser.add_argument("--workspace", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_one:
        train_one(args.workspace, args.train_one, args.kimg, args.seed, args.label)
        return 0
    variants = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = [name for name in variants if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    workspace = demo_data(args.workdir)
    seconds = run_variants(workspace, variants, args.kimg, args.seed, args.label)
    args.out.mkdir(parents=True, exist_ok=True)
    picture(workspace, variants, [float(k) for k in args.grids_at.split(",")], args.seed, args.label,
            args.out / "demo_recipe.png")
    text = report(workspace, variants, seconds, args.kimg, args.seed, args.label, sys.argv[1:])
    write_keeping_readings(args.out / "demo_recipe.md", text)  # the readings written by hand under "## " stay
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
