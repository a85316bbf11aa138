"""`python -m mura_aug train`: stages 02-04 from the command line (the same code path as the notebooks).

Several GPUs: `torchrun --nproc_per_node N -m mura_aug train ...`. torchrun starts N copies of this command
with RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR / MASTER_PORT) in their environment; each copy joins one
process group (nccl on GPUs, gloo with --device cpu), trains on cuda:LOCAL_RANK, and leaves the group at the
end, also after an error. `--batch` stays the batch of the whole run (split over the processes).
"""
from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path
from typing import Mapping, Optional

from mura_aug.errors import UserError

# How long a rank waits in a collective for the others. Rank 0 alone writes snapshots (to Google Drive, maybe
# hundreds of MB) and computes metrics while the others wait, so this is far above NCCL's 10-minute default.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


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
    parser.add_argument("--cfg", default=None, choices=("auto", "paper256", "stylegan2", "tiny"),
                        help="network/optimizer configuration (tiny = CPU demos; default auto, or the resumed "
                             "run's)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="training resolution in px (default: the prepared dataset's)")
    parser.add_argument("--kimg", type=_positive_float, default=None,
                        help="train until this many thousand images were shown (fractions allowed; default 1000, "
                             "or the resumed run's target)")
    parser.add_argument("--kimg-per-tick", type=_positive_float, default=None,
                        help="thousand images per tick / stats line (fractions allowed; default 4)")
    parser.add_argument("--snap", type=int, default=None, help="ticks between snapshots (default 10)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per iteration, all GPUs together (default: the config's)")
    parser.add_argument("--batch-gpu", type=int, default=None,
                        help="images per forward pass on one GPU (gradient accumulation)")
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
    parser.add_argument("--keep", type=int, default=None, help="training states to keep (newest; default 3)")
    parser.add_argument("--keep-networks-every", type=int, default=None,
                        help="keep the inference file of every N-th snapshot (and the newest; default 1)")
    parser.add_argument("--metrics-every", type=int, default=None,
                        help="compute FID/KID (offline feature net), precision/recall and diversity of G_ema every "
                             "N-th snapshot and add them to that tick's line in stats.jsonl (0 = never, the "
                             "default; each measurement generates --metrics-fakes images while training waits)")
    parser.add_argument("--metrics-fakes", type=int, default=None,
                        help="fakes generated per metrics measurement (default 500)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 (default: CUDA when available); under torchrun: cpu or cuda "
                             "(each process takes cuda:LOCAL_RANK)")
    parser.add_argument("--amp", default=None, choices=("auto", "bf16", "fp16", "off"),
                        help="mixed precision on CUDA (default auto)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (CUDA)")
    parser.add_argument("--run", default=None, help="run folder name (default BODY-label-cfg-res)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def torchrun_environment(environ: Optional[Mapping[str, str]] = None) -> Optional[dict]:
    """{'rank', 'world_size', 'local_rank'} when this process was started by torchrun with more than one
    process, else None."""
    environ = os.environ if environ is None else environ
    try:
        world_size = int(environ.get("WORLD_SIZE", "1") or 1)
        if world_size <= 1:
            return None
        rank = int(environ["RANK"])
        local_rank = int(environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError) as exc:
        raise UserError(f"WORLD_SIZE={environ.get('WORLD_SIZE')!r} is set, but RANK / LOCAL_RANK are missing or "
                        f"not numbers ({exc}).",
                        "Start multi-GPU training with torchrun --nproc_per_node N -m mura_aug train ..., which "
                        "sets them; for one process, unset WORLD_SIZE.") from None
    return {"rank": rank, "world_size": world_size, "local_rank": local_rank}


def distributed_device(requested: Optional[str], local_rank: int, cuda_count: int) -> tuple:
    """(device, backend) of one torchrun process: cuda:LOCAL_RANK with nccl, or cpu with gloo."""
    if requested in (None, "", "auto"):
        requested = "cuda" if cuda_count > 0 else "cpu"
    if requested == "cpu":
        return "cpu", "gloo"
    if requested != "cuda":
        raise UserError(f"--device {requested} was given to a torchrun process; under torchrun each process picks "
                        "its own GPU (cuda:LOCAL_RANK).",
                        "Pass --device cuda (or leave it out), or --device cpu; choose the GPUs with "
                        "CUDA_VISIBLE_DEVICES=0,1 torchrun ...")
    if local_rank >= cuda_count:
        raise UserError(f"torchrun process {local_rank} needs GPU cuda:{local_rank}, but only {cuda_count} GPU(s) "
                        "are visible.",
                        f"Use torchrun --nproc_per_node {max(cuda_count, 1)} (one process per GPU), or "
                        "--device cpu.")
    return f"cuda:{local_rank}", "nccl"


def _join_process_group(environment: dict, requested_device: Optional[str]) -> str:
    import torch
    import torch.distributed as dist

    cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device, backend = distributed_device(requested_device, environment["local_rank"], cuda_count)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)  # nccl and all_gather_object use the current device
    try:
        dist.init_process_group(backend=backend, init_method="env://", rank=environment["rank"],
                                world_size=environment["world_size"], timeout=COLLECTIVE_TIMEOUT)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"Process {environment['rank']} of {environment['world_size']} could not join the "
                        f"{backend} process group ({exc}).",
                        "Start multi-GPU training with torchrun --nproc_per_node N -m mura_aug train ...; if "
                        "the port is taken, add --master_port with a free one.") from exc
    return device


# Defaults of the run settings. They apply to a new run; a resumed run keeps the values it was started with
# (from its training_options.json) unless the command line names them again.
RUN_DEFAULTS = {"cfg": "auto", "kimg": 1000.0, "kimg_per_tick": 4.0, "snap": 10, "keep": 3,
                "keep_networks_every": 1, "metrics_every": 0}
# argparse name -> key in training_options.json
STORED_NAMES = {"cfg": "cfg", "resolution": "resolution", "kimg": "kimg", "kimg_per_tick": "kimg_per_tick",
                "snap": "snap", "keep": "keep_states", "keep_networks_every": "keep_networks_every",
                "metrics_every": "metrics_every", "metrics_fakes": "metrics_fakes"}


def run_to_resume(args: argparse.Namespace) -> Optional[Path]:
    """The existing run folder `--resume` refers to, or None (a new run, or an NVlabs pickle)."""
    from mura_aug.gan import snapshot
    from mura_aug.workspace import RunFolder, resolve_workspace

    if not args.resume:
        return None
    workspace = resolve_workspace(args.workspace, create=False)  # only looks: under torchrun rank 0 alone writes
    if args.resume != "latest":
        path = Path(args.resume).expanduser()
        folder = path if path.is_dir() else path.parent
        return folder if RunFolder(folder).options.is_file() else None
    if args.run:
        folder = workspace.experiments / args.run
        return folder if folder.is_dir() else None
    candidates = []
    for info in snapshot.list_runs(workspace):
        options = snapshot.read_training_options(info.path)
        if (options.get("label") == args.label and options.get("body_part", "XR_SHOULDER") == args.body_part
                and args.cfg in (None, options.get("cfg"))
                and args.resolution in (None, options.get("resolution"))):
            candidates.append(info)
    if not candidates:
        return None
    chosen = max(candidates, key=lambda info: info.mtime)
    if len(candidates) > 1:
        print(f"--resume latest: {len(candidates)} runs of {args.body_part} {args.label} match; continuing the most "
              f"recently changed, {chosen.name} (name another with --run).")
    return chosen.path


def fill_run_settings(args: argparse.Namespace) -> None:
    """Settings not given on the command line: the resumed run's own, else RUN_DEFAULTS (changes args)."""
    from mura_aug.gan import snapshot

    folder = run_to_resume(args)
    if folder is not None:
        stored = snapshot.read_training_options(folder)
        for name, key in STORED_NAMES.items():
            if getattr(args, name, None) is None and stored.get(key) is not None:
                setattr(args, name, stored[key])
        if args.run is None and args.resume == "latest":
            args.run = folder.name
    for name, value in RUN_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def run(args: argparse.Namespace) -> int:
    from mura_aug.gan.training_loop import train

    fill_run_settings(args)
    if args.snap < 1 or args.keep < 1:
        raise UserError(f"--snap {args.snap} / --keep {args.keep}: both must be at least 1.",
                        "Use e.g. --snap 10 --keep 3.")
    environment = torchrun_environment()
    device, rank = args.device, 0
    if environment is not None:
        device, rank = _join_process_group(environment, args.device), environment["rank"]
    try:
        run_dir = train(args.workspace, label=args.label, body_part=args.body_part, cfg=args.cfg,
                        resolution=args.resolution, kimg=args.kimg, kimg_per_tick=args.kimg_per_tick,
                        snap=args.snap, batch=args.batch, batch_gpu=args.batch_gpu, gamma=args.gamma,
                        mirror=args.mirror, seed=args.seed, resume=args.resume, transfer=args.transfer,
                        freeze_d=args.freeze_d, max_minutes=args.max_minutes, keep_states=args.keep,
                        keep_networks_every=args.keep_networks_every, metrics_every=args.metrics_every,
                        metrics_fakes=args.metrics_fakes, device=device, amp=args.amp, compile=args.compile,
                        run=args.run, progress=not args.no_progress)
    finally:
        if environment is not None:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
    if rank == 0:
        print(f"run folder: {run_dir}")
    return 0
