"""The light inference file of a snapshot (`network-<K>kimg.pt`) and `load_generator`.

An inference file holds G_ema's constructor arguments and weights, nothing executable: it loads with
`torch.load(weights_only=True)`, so a file from someone else cannot run code on your machine.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from mura_aug.errors import UserError, failures_as_user_error
from mura_aug.gan.torch_files import load_weights_only, save_torch_file
from mura_aug.workspace import RunFolder

FORMAT = "mura_aug.network"
VERSION = 1
PathLike = Union[str, os.PathLike]


def save_network_file(path: PathLike, G, **meta) -> Path:
    """Atomically save G (usually G_ema) with its constructor kwargs and `meta` (kimg, run, label, ...)."""
    from mura_aug.workspace import atomic_path

    payload = {
        "format": FORMAT,
        "version": VERSION,
        "G_kwargs": dict(G.init_kwargs),
        "G_ema": {k: v.detach().cpu() for k, v in G.state_dict().items()},
        "resolution": int(G.img_resolution),
        **meta,
    }
    with atomic_path(path) as tmp:
        save_torch_file(payload, tmp)
    return Path(path)


def _newest_network_in(run_dir: Path) -> Path:
    candidates = RunFolder(run_dir).network_files()
    if not candidates:
        raise UserError(f"The run folder {run_dir} holds no network-*kimg.pt snapshot yet.",
                        "Train the run until its first snapshot (see --snap), or pass a snapshot file.")
    return candidates[-1]


def load_generator(path: PathLike, device="cpu"):
    """A generator in eval mode from: an inference file, a full training state, an NVlabs .pkl, or a run
    folder (its newest inference file)."""
    from mura_aug.gan.networks import Generator

    path = Path(path).expanduser()
    if path.is_dir():
        path = _newest_network_in(path)
    if not path.is_file():
        raise UserError(f"No snapshot at {path}.",
                        "Pass a network-*.pt / state-*.pt file, an NVlabs .pkl, or a run folder under "
                        "data/experiments (python -m mura_aug runs lists them).")
    if path.suffix == ".pkl":
        from mura_aug.gan.nvlabs import load_nvlabs_pkl

        loaded = load_nvlabs_pkl(path)
        G = loaded["G_ema"]
        if G is None:
            found = [key for key in ("G", "D") if loaded.get(key) is not None]
            continue_hint = (f"continue training from it with python -m mura_aug train --resume {path} (G_ema then "
                             "starts as a copy of G)" if "D" in found else
                             f"start a run from it with python -m mura_aug train --transfer {path}")
            raise UserError(f"The NVlabs pickle {path} holds no G_ema, the averaged generator that makes the "
                            f"images; it holds only {' and '.join(found)}.",
                            "Use a network-snapshot-*.pkl written by NVlabs' train.py (they hold G_ema), or "
                            f"{continue_hint}; its network-*.pt files then load here.")
    else:
        with failures_as_user_error(lambda exc: f"The snapshot {path} cannot be read ({type(exc).__name__}: "
                                                f"{exc}); it may be truncated by an interrupted copy.",
                                    "Use an earlier snapshot of the same run (python -m mura_aug runs lists them)."):
            payload = load_weights_only(path)
        if not isinstance(payload, dict) or "G_kwargs" not in payload or "G_ema" not in payload:
            raise UserError(f"{path} is not a mura_aug snapshot (no G_kwargs / G_ema inside).",
                            "Pass a network-*.pt or state-*.pt written by mura_aug, or an NVlabs .pkl.")
        G = Generator(**payload["G_kwargs"])
        G.load_state_dict(payload["G_ema"])
        G.snapshot_meta = {k: v for k, v in payload.items() if k not in ("G_ema", "G", "D", "G_kwargs")
                           and not isinstance(v, dict)}
    return G.eval().requires_grad_(False).to(device)
