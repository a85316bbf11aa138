"""Starting a run from other networks: weights only (`--transfer`, with Freeze-D) or an NVlabs pickle to
continue (`--resume network-snapshot-<kimg>.pkl`).

A transfer source is a name (`ffhq256`: NVIDIA's pickle, downloaded once into the workspace's weights
folder), an NVlabs .pkl, a mura_aug state / network file, or a run folder (its newest state). Its tensors are
copied into the new networks by name and shape; the image count, optimizers and ADA start fresh. NVlabs
pickles are read by `mura_aug.gan.nvlabs` without running anything stored in them.
"""
from __future__ import annotations

import re
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Set

import torch

from mura_aug.errors import UserError, failures_as_user_error
from mura_aug.gan import snapshot
from mura_aug.gan.nvlabs import load_nvlabs_pkl
from mura_aug.gan.torch_files import load_weights_only
from mura_aug.workspace import Workspace, atomic_path

TRANSFER_SOURCES = {  # names accepted by --transfer, downloaded once into workspace.weights_cache
    "ffhq256": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/"
               "ffhq-res256-mirror-paper256-noaug.pkl",
}
NETWORKS = ("G", "D", "G_ema")
Log = Callable[[str], None]


def download_transfer_source(name: str, workspace: Workspace, log: Log) -> Path:
    """The local copy of a named transfer source (downloaded on first use)."""
    url = TRANSFER_SOURCES[name]
    target = workspace.weights_cache / Path(url).name
    if target.is_file():
        return target
    log(f"downloading {name} from {url} into {target} (once) ...")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_path(target) as tmp:
            with open(tmp, "wb") as handle:
                while True:
                    chunk = response.read(1 << 20)
                    if not chunk:
                        break
                    handle.write(chunk)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise UserError(f"Cannot download the transfer-learning network {name!r} from {url} ({exc}).",
                        f"Connect to the internet (Colab has it), or download the file yourself, put it at "
                        f"{target} and run again; or pass --transfer PATH to a .pkl / state-*.pt you have.") from exc
    return target


def load_transfer_weights(source: str, workspace: Workspace, log: Log) -> Dict[str, Dict[str, torch.Tensor]]:
    """State dicts {'G', 'D', 'G_ema'} (D may be missing) from a name, an NVlabs .pkl, or a mura_aug file."""
    if source in TRANSFER_SOURCES:
        path = download_transfer_source(source, workspace, log)
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            _, state = snapshot.load_newest_state(path, log=log)
            if state is None:
                raise UserError(f"The run folder {path} holds no loadable training state to transfer from.",
                                "Pass a state-*.pt, network-*.pt or NVlabs .pkl file instead.")
            return {key: state[key] for key in NETWORKS}
        if not path.is_file():
            raise UserError(f"No transfer-learning source at {path}.",
                            f"Pass an existing .pkl / state-*.pt / network-*.pt file, or one of the names "
                            f"{', '.join(TRANSFER_SOURCES)}.")
    if path.suffix == ".pkl":
        loaded = load_nvlabs_pkl(path)
        weights = {key: loaded[key].state_dict() for key in NETWORKS if loaded.get(key) is not None}
        # Transfer pickles may hold only G_ema (or only G): both generators start from what there is.
        for missing, present in (("G", "G_ema"), ("G_ema", "G")):
            if missing not in weights and present in weights:
                weights[missing] = weights[present]
        return weights
    with failures_as_user_error(lambda exc: f"The transfer source {path} cannot be read ({type(exc).__name__}: "
                                            f"{exc}).",
                                "Pass an intact .pkl / state-*.pt / network-*.pt file."):
        payload = load_weights_only(path)
    if not isinstance(payload, dict) or "G_ema" not in payload:
        raise UserError(f"{path} holds no generator weights (no G_ema inside).",
                        "Pass a mura_aug state-*.pt / network-*.pt or an NVlabs .pkl.")
    weights = {"G_ema": payload["G_ema"], "G": payload.get("G", payload["G_ema"])}
    if "D" in payload:
        weights["D"] = payload["D"]
    return weights


def copy_matching(source: Dict[str, torch.Tensor], target: torch.nn.Module) -> tuple:
    """Copy every tensor of `source` whose name and shape match into `target`; (copied, skipped) counts."""
    own = target.state_dict()
    copied = skipped = 0
    with torch.no_grad():
        for name, tensor in own.items():
            if name in source and tuple(source[name].shape) == tuple(tensor.shape):
                tensor.copy_(source[name].to(tensor.device, tensor.dtype))
                copied += 1
            else:
                skipped += 1
    return copied, skipped


def transfer_into(networks: Dict[str, torch.nn.Module], source: str, workspace: Workspace, log: Log) -> None:
    """Copy the matching tensors of `source` into G, D and G_ema (given by name), saying how many matched."""
    weights = load_transfer_weights(source, workspace, log)
    for key, module in networks.items():
        if key in weights:
            copied, skipped = copy_matching(weights[key], module)
            log(f"transfer {key}: {copied} tensors copied from {source}, {skipped} kept (name or shape differs)")


def freeze_d_names(D, freeze_d: int) -> Set[str]:
    """Parameter names of the `freeze_d` highest-resolution blocks of D (b<res>.*), for Freeze-D."""
    if freeze_d <= 0:
        return set()
    resolutions = []
    res = int(D.img_resolution)
    while res > 4:
        resolutions.append(res)
        res //= 2
    frozen_prefixes = tuple(f"b{r}." for r in resolutions[:freeze_d])
    return {name for name, _ in D.named_parameters() if name.startswith(frozen_prefixes)}


def load_nvlabs_resume(path: Path, log: Optional[Log]) -> dict:
    """G, D, G_ema (and augment_p, and the kimg of its file name) of an NVlabs pickle to continue training
    from. A pickle without G (some exports keep only G_ema and D) continues with G = G_ema, with a warning
    (when `log` is given: the writing rank); one without D cannot continue (D would start from scratch
    against a trained G): that is what --transfer is for."""
    loaded = load_nvlabs_pkl(path)
    found = ", ".join(key for key in NETWORKS if loaded.get(key) is not None) or "no network"
    if loaded.get("D") is None:
        raise UserError(f"The NVlabs pickle {path} holds no discriminator D (it holds {found}), so training "
                        "cannot continue from it.",
                        f"Start a new run from its weights with --transfer {path} instead of --resume (D then "
                        "starts from scratch).")
    for missing, present in (("G", "G_ema"), ("G_ema", "G")):
        if loaded.get(missing) is None:
            if loaded.get(present) is None:
                raise UserError(f"The NVlabs pickle {path} holds neither G nor G_ema (it holds {found}).",
                                "Pass a network-snapshot-*.pkl written by NVlabs' train.py.")
            message = (f"The NVlabs pickle {path.name} holds no {missing}; training continues with {missing} = a "
                       f"copy of {present}.")
            if log is not None:
                warnings.warn(message, RuntimeWarning, stacklevel=3)
                log("warning: " + message)
            loaded[missing] = loaded[present]
    match = re.search(r"(\d+)\.pkl$", path.name)
    loaded["kimg"] = int(match.group(1)) if match else 0  # NVlabs names snapshots by the kimg they reached
    return loaded
