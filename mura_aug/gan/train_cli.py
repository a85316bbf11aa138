"""`python -m mura_aug train`: stages 02-04 from the command line (the same code path as the notebooks)."""
from __future__ import annotations

import argparse

from mura_aug.errors import UserError


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, help="workspace folder (default: Drive in Colab, ./workspace)")
    parser.add_argument("--label", required=True, choices=("positive", "negative", "both"),
                        help="class to learn; 'both' trains one class-conditional GAN")
    parser.add_argument("--body-part", default="XR_SHOULDER", help="MURA body part (default XR_SHOULDER)")
    parser.add_argument("--cfg", default="auto", choices=("auto", "paper256", "stylegan2", "tiny"),
                        help="network/optimizer configuration (tiny = CPU demos)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="training resolution in px (default: the prepared dataset's)")
    parser.add_argument("--kimg", type=_positive_float, default=1000.0,
                        help="train until this many thousand images were shown (fractions allowed)")
    parser.add_argument("--kimg-per-tick", type=_positive_float, default=4.0,
                        help="thousand images per tick / stats line (fractions allowed)")
    parser.add_argument("--snap", type=int, default=10, help="ticks between snapshots")
    parser.add_argument("--batch", type=int, default=None, help="images per iteration (default: the config's)")
    parser.add_argument("--batch-gpu", type=int, default=None, help="images per pass (gradient accumulation)")
    parser.add_argument("--gamma", type=float, default=None, help="R1 weight (default: the config's)")
    parser.add_argument("--mirror", action="store_true", help="also train on x-flipped images")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--resume", default=None,
                        help="'latest' (the newest state of this run that loads) or a state / run folder / "
                             "NVlabs .pkl path")
    parser.add_argument("--transfer", default=None,
                        help="start from another network's weights only: a .pkl / state / network file or "
                             "'ffhq256'")
    parser.add_argument("--freeze-d", type=int, default=0, help="Freeze-D: D blocks (highest resolutions) to freeze")
    parser.add_argument("--max-minutes", type=_positive_float, default=None,
                        help="stop with a final snapshot after this many minutes")
    parser.add_argument("--keep", type=int, default=3, help="training states to keep (newest)")
    parser.add_argument("--keep-networks-every", type=int, default=1,
                        help="keep the inference file of every N-th snapshot (and the newest)")
    parser.add_argument("--metrics-every", type=int, default=0, help="snapshots between metrics (0 = never)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when available)")
    parser.add_argument("--amp", default=None, choices=("auto", "bf16", "fp16", "off"),
                        help="mixed precision on CUDA (default auto)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (CUDA)")
    parser.add_argument("--run", default=None, help="run folder name (default BODY-label-cfg-res)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mura_aug.gan.training_loop import train

    if args.snap < 1 or args.keep < 1:
        raise UserError(f"--snap {args.snap} / --keep {args.keep}: both must be at least 1.",
                        "Use e.g. --snap 10 --keep 3.")
    run_dir = train(args.workspace, label=args.label, body_part=args.body_part, cfg=args.cfg,
                    resolution=args.resolution, kimg=args.kimg, kimg_per_tick=args.kimg_per_tick, snap=args.snap,
                    batch=args.batch, batch_gpu=args.batch_gpu, gamma=args.gamma, mirror=args.mirror,
                    seed=args.seed, resume=args.resume, transfer=args.transfer, freeze_d=args.freeze_d,
                    max_minutes=args.max_minutes, keep_states=args.keep,
                    keep_networks_every=args.keep_networks_every, metrics_every=args.metrics_every,
                    device=args.device, amp=args.amp, compile=args.compile, run=args.run,
                    progress=not args.no_progress)
    print(f"run folder: {run_dir}")
    return 0
