"""The StyleGAN2-ADA training loop: phases, EMA, ADA, ticks, stats, snapshots, exact resume, several GPUs.

One iteration (NVlabs' schedule) runs the phases G main, G reg (every G_reg_interval iterations), D main,
D reg (every D_reg_interval); a phase's batch is split into chunks of `batch_gpu` whose gradients accumulate.
Then G_ema follows G, the image count grows by the batch size, and every ADA interval the augmentation
probability p moves toward the target overfitting heuristic r_t. A *tick* is `kimg_per_tick` thousand images:
at its end one stats line is printed and appended to `stats.jsonl`; every `snap` ticks (and at the end) a
snapshot is written (see snapshot.py).

Random draws are keyed, not streamed: the latents of an iteration come from a generator seeded by
(seed, iteration), and before each chunk torch's global generators are seeded by (seed, iteration, phase,
chunk number within the whole batch). The data order comes from one sampler that every process runs in
full. So what a chunk computes does not depend on which process computes it or on what was drawn before, and
the per-phase running statistics (G's w_avg, the path-length mean) are averaged over the chunks instead of
updated chunk after chunk. The result: training depends on the batch and `batch_gpu`, not on how the chunks
are spread over processes.

Multi-GPU (`torchrun --nproc_per_node N -m mura_aug train ...`, or `train()` inside an initialised
torch.distributed process group): each rank takes its own slice of every batch (batch / N images), the
initial weights are broadcast from rank 0, each phase's gradients (and running statistics) are summed over
the ranks in one flat all_reduce (NVlabs' way, which works with the lazy regularisation phases, unlike
DistributedDataParallel), and the ADA sign statistic and the stop decision are summed once per iteration.
So every rank holds the same G, D, G_ema, optimizer moments and ADA p. Only rank 0 writes files and prints.

Exact resume: a state holds everything the next iteration depends on (weights, optimizer moments, ADA p and
its accumulator, image count, iteration and tick counters, path-length mean, grad scaler, the data sampler's
state, and the global RNG states although keyed draws no longer depend on them). Nothing between the end of
a tick and the next iteration draws from anything the training reads (the fakes grid and metrics run inside
`torch.random.fork_rng`), so on CPU a run cut into pieces reproduces the uninterrupted run bit for bit. With
several ranks the state is the same on every rank (rank 0 writes it, every rank reads it), and because no
draw depends on a per-rank stream there are no per-rank RNG states to keep: a run resumed on the same number
of ranks continues bit for bit (CPU), and on another number of ranks (same `batch_gpu`) it continues the same
training up to the order in which the ranks' gradients are summed.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import re
import signal
import threading
import time
import urllib.error
import urllib.request
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import numpy as np
import torch

from mura_aug.devices import resolve_device, reuse_freed_cpu_memory
from mura_aug.errors import UserError
from mura_aug.gan import snapshot as snapshots
from mura_aug.gan.dataset import (CLASS_NAMES, DataSampler, batch_tensors, check_resolution, choose_source,
                                  classes_of, load_training_images)
from mura_aug.workspace import RunFolder, Workspace, atomic_path, atomic_write_json, kimg_tag, resolve_workspace

PathLike = Union[str, os.PathLike]

CFG_NAMES = ("auto", "paper256", "stylegan2", "tiny")
# Keys of a stats line that depend on the machine or the wall clock (left out when comparing runs).
TIMING_KEYS = ("sec_per_tick", "sec_per_kimg", "total_sec", "eta_sec", "timestamp", "cpu_mem_gb", "gpu_mem_gb",
               "stop_reason", "metrics_seconds")
# Names the loss may give its statistics -> the names of the stats line (docs: issue 3, item 5).
STAT_ALIASES = {
    "Loss/G/loss": "loss_G", "G_loss": "loss_G", "loss_G_main": "loss_G",
    "Loss/D/loss": "loss_D", "D_loss": "loss_D",
    "Loss/r1_penalty": "r1_penalty",
    "Loss/pl_penalty": "pl_penalty",
    "Loss/signs/real": "D_real_sign",
}
TRANSFER_SOURCES = {  # names accepted by --transfer, downloaded once into workspace.weights_cache
    "ffhq256": "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/"
               "ffhq-res256-mirror-paper256-noaug.pkl",
}
# Options that a resumed run takes from the call, not from the state (everything else comes from the state).
RUN_CONTROL_OPTIONS = ("kimg", "snap", "max_minutes", "keep_states", "keep_networks_every", "metrics_every",
                       "metrics_fakes", "device", "progress", "compile", "channels_last", "world_size")


def run_name(body_part: str, label: str, cfg: str, resolution: int) -> str:
    """`BODY-<label>-<cfg>-<res>` (docs/contracts.md)."""
    return f"{body_part}-{label}-{cfg}-{resolution}"


# --- small helpers -----------------------------------------------------------------------------------

def _cfg_get(config, name: str, default=None):
    if isinstance(config, dict):
        return config.get(name, default)
    return getattr(config, name, default)


def _quiet(text: str) -> None:
    """The log of ranks other than 0."""


def _amp_dtype(amp, device: torch.device) -> Optional[torch.dtype]:
    """None = full fp32. amp=None picks bf16 on GPUs that have it, fp16 (with a grad scaler) on older ones."""
    if device.type != "cuda" or amp in (False, "off", "no", "fp32"):
        return None
    if amp in (None, True, "auto"):
        # Native bf16 needs compute capability 8.0 (Ampere) or newer; torch reports it as "supported" on a
        # T4 (7.5) too, where it is only emulated and slower than fp16.
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    if amp in ("bf16", "bfloat16"):
        return torch.bfloat16
    if amp in ("fp16", "float16"):
        return torch.float16
    raise UserError(f"Unknown mixed-precision setting amp={amp!r}.", "Use auto, bf16, fp16 or off.")


def _memory_stats(device: torch.device) -> Dict[str, float]:
    stats = {}
    try:
        import resource

        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stats["cpu_mem_gb"] = round(peak_kb / 2 ** 20, 3)
    except (ImportError, OSError):
        pass
    if device.type == "cuda":
        stats["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
    return stats


def _rng_state() -> Dict[str, Any]:
    numpy_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), int(numpy_state[2]),
                       int(numpy_state[3]), float(numpy_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, *rest = state["python"]
    random.setstate((version, tuple(rest[0]), rest[1]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class _StopRequest:
    """The first Ctrl-C (SIGINT; the notebook's stop button) or SIGTERM asks the loop to finish the current
    iteration and write a final state; a second one interrupts at once.

    SIGTERM is what `kill`, batch schedulers before their time limit, and torchrun pass on to its workers
    when torchrun itself is told to stop; without a handler it would end the process mid-iteration, with
    no final state. Under torchrun every rank sees the request and the ranks agree to stop after the same
    iteration (the per-iteration all_reduce), so rank 0's final state is a consistent one."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False


# --- keyed random draws and the process group ---------------------------------------------------------

_DRAW_LATENTS, _DRAW_CHUNK = 0, 1  # what a derived seed is for (part of its key)


def _derived_seed(seed: int, *key: int) -> int:
    """A well-mixed 63-bit seed for the draws named by `key` (iteration, purpose, phase, chunk): a draw depends
    on what it is for, not on which process makes it or on what was drawn before it."""
    sequence = np.random.SeedSequence(int(seed) % (1 << 64), spawn_key=tuple(int(k) for k in key))
    return int(sequence.generate_state(1, np.uint64)[0]) & ((1 << 63) - 1)


def _draw_latents(seed: int, batch_idx: int, num_phases: int, batch_size: int, z_dim: int, c_dim: int, labels):
    """Latents [phases, batch, z_dim] and one-hot labels [phases, batch, c_dim] of one iteration, for the whole
    batch (each rank takes its slice), on the CPU. Conditional runs draw classes in the training set's mix."""
    generator = torch.Generator().manual_seed(_derived_seed(seed, batch_idx, _DRAW_LATENTS))
    gen_z = torch.randn([num_phases, batch_size, z_dim], generator=generator)
    gen_c = torch.zeros([num_phases, batch_size, c_dim])
    if c_dim > 0:
        pick = torch.randint(len(labels), (num_phases * batch_size,), generator=generator)
        classes = torch.from_numpy(np.asarray(labels)[pick.numpy()]).long()
        gen_c.view(-1, c_dim)[torch.arange(len(classes)), classes] = 1
    return gen_z, gen_c


def per_rank_batch(batch_size: int, world_size: int, batch_gpu: Optional[int] = None) -> tuple:
    """(images per rank and iteration, images per forward pass) for a batch split over `world_size` ranks;
    UserError when the batch does not split evenly."""
    batch_size, world_size = int(batch_size), int(world_size)
    if batch_size % world_size:
        working = [b for b in range(world_size, 16 * world_size + 1, world_size) if b >= 4][:5]
        raise UserError(f"The batch of {batch_size} images cannot be split evenly over {world_size} processes "
                        f"(GPUs).", f"Use --batch with a multiple of {world_size}, e.g. "
                        f"{', '.join(map(str, working))}.")
    rank_batch = batch_size // world_size
    chunk = min(int(batch_gpu or rank_batch), rank_batch)
    if rank_batch % chunk:
        where = f"Each of the {world_size} processes gets {rank_batch}" if world_size > 1 else \
            f"The batch holds {rank_batch}"
        raise UserError(f"{where} images per iteration, which is not a multiple of --batch-gpu {chunk}.",
                        f"Use a --batch-gpu that divides {rank_batch}: "
                        f"{', '.join(str(d) for d in range(1, rank_batch + 1) if rank_batch % d == 0)}.")
    return rank_batch, chunk


class _Distributed:
    """The torch.distributed process group of a multi-GPU run, or a stand-in that does nothing for one process.

    gloo reduces CPU tensors, nccl CUDA tensors: `comm_device` is where a tensor goes for a collective."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank, self.world_size = int(rank), int(world_size)
        self.enabled = self.world_size > 1
        self.comm_device = torch.device("cpu")
        if self.enabled:
            import torch.distributed as dist

            self.dist = dist
            if "nccl" in str(dist.get_backend()) and device.type == "cuda":
                self.comm_device = device

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over all ranks (a new tensor on the input's device; the input itself when alone)."""
        if not self.enabled:
            return tensor
        work = tensor.detach().to(self.comm_device).clone()
        self.dist.all_reduce(work)
        return work.to(tensor.device)

    def broadcast_modules(self, *modules) -> None:
        """Every parameter and buffer from rank 0, so all ranks start from the same weights."""
        if not self.enabled:
            return
        for module in modules:
            for tensor in module.state_dict().values():
                work = tensor if tensor.device == self.comm_device else tensor.to(self.comm_device)
                self.dist.broadcast(work, src=0)
                if work is not tensor:
                    tensor.copy_(work)

    def gather_objects(self, obj) -> list:
        if not self.enabled:
            return [obj]
        gathered = [None] * self.world_size
        self.dist.all_gather_object(gathered, obj)
        return gathered

    def agree(self, error: Optional[BaseException]) -> None:
        """Called by every rank after a part that may fail on some ranks only (rank 0's file writing): raise
        the error where it happened and stop the other ranks too, instead of leaving them waiting forever."""
        if self.enabled:
            failed = float(self.all_reduce_sum(torch.tensor([1.0 if error is not None else 0.0])).item())
        else:
            failed = 0.0
        if error is not None:
            raise error
        if failed > 0:
            raise UserError("Another process of this multi-GPU run stopped with an error (its message is above), "
                            "so this process stops too.",
                            "Fix what that message says, then start torchrun again (--resume latest continues "
                            "from the last snapshot).")


def _process_group(rank: Optional[int], world_size: Optional[int]) -> tuple:
    """(rank, world_size): given ones checked against torch.distributed, missing ones taken from it."""
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if not initialised:
        if world_size not in (None, 1):
            raise UserError(f"world_size={world_size} was asked for, but no torch.distributed process group is "
                            "initialised in this process.",
                            "Start multi-GPU training with torchrun --nproc_per_node N -m mura_aug train ... "
                            "(it sets up the process group), or pass world_size=1.")
        return int(rank or 0), 1
    group_rank, group_size = dist.get_rank(), dist.get_world_size()
    if (rank is not None and int(rank) != group_rank) or (world_size is not None and int(world_size) != group_size):
        raise UserError(f"rank={rank} / world_size={world_size} disagree with the process group (rank "
                        f"{group_rank} of {group_size}).", "Leave rank and world_size out: they are read from "
                        "the process group.")
    return group_rank, group_size


# --- networks, transfer and NVlabs resume ---------------------------------------------------------------

def _build_networks(G_kwargs: dict, D_kwargs: dict, device: torch.device):
    from mura_aug.gan.networks import Discriminator, Generator

    G = Generator(**G_kwargs).train().requires_grad_(False).to(device)
    D = Discriminator(**D_kwargs).train().requires_grad_(False).to(device)
    G_ema = Generator(**G_kwargs).eval().requires_grad_(False).to(device)
    G_ema.load_state_dict(G.state_dict())
    return G, D, G_ema


def _copy_matching(source: Dict[str, torch.Tensor], target: torch.nn.Module) -> tuple:
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


def _download_transfer_source(name: str, workspace: Workspace, log) -> Path:
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


def _load_transfer_weights(transfer: str, workspace: Workspace, log) -> Dict[str, Dict[str, torch.Tensor]]:
    """State dicts {'G', 'D', 'G_ema'} (D may be missing) from a name, an NVlabs .pkl, or a mura_aug file."""
    if transfer in TRANSFER_SOURCES:
        path = _download_transfer_source(transfer, workspace, log)
    else:
        path = Path(transfer).expanduser()
        if path.is_dir():
            info, state = snapshots.load_newest_state(path, log=log)
            if state is None:
                raise UserError(f"The run folder {path} holds no loadable training state to transfer from.",
                                "Pass a state-*.pt, network-*.pt or NVlabs .pkl file instead.")
            return {key: state[key] for key in ("G", "D", "G_ema")}
        if not path.is_file():
            raise UserError(f"No transfer-learning source at {path}.",
                            f"Pass an existing .pkl / state-*.pt / network-*.pt file, or one of the names "
                            f"{', '.join(TRANSFER_SOURCES)}.")
    if path.suffix == ".pkl":
        from mura_aug.gan import load_nvlabs_pkl

        loaded = load_nvlabs_pkl(path)
        weights = {key: loaded[key].state_dict() for key in ("G", "D", "G_ema") if loaded.get(key) is not None}
        # Transfer pickles may hold only G_ema (or only G): both generators start from what there is.
        for missing, source in (("G", "G_ema"), ("G_ema", "G")):
            if missing not in weights and source in weights:
                weights[missing] = weights[source]
        return weights
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"The transfer source {path} cannot be read ({type(exc).__name__}: {exc}).",
                        "Pass an intact .pkl / state-*.pt / network-*.pt file.") from exc
    if not isinstance(payload, dict) or "G_ema" not in payload:
        raise UserError(f"{path} holds no generator weights (no G_ema inside).",
                        "Pass a mura_aug state-*.pt / network-*.pt or an NVlabs .pkl.")
    weights = {"G_ema": payload["G_ema"], "G": payload.get("G", payload["G_ema"])}
    if "D" in payload:
        weights["D"] = payload["D"]
    return weights


def _freeze_d_names(D, freeze_d: int) -> set:
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


# --- the fakes grid ------------------------------------------------------------------------------------

def grid_shape(resolution: int) -> tuple:
    """(rows, cols) of the fakes grid: about 1k px wide, 4 to 8 columns, at most 32 images."""
    cols = int(min(8, max(4, 1024 // resolution)))
    return 4, cols


def grid_latents(G, seed: int, resolution: int, label: str):
    rows, cols = grid_shape(resolution)
    generator = torch.Generator().manual_seed(int(seed))
    z = torch.randn(rows * cols, G.z_dim, generator=generator)
    c = torch.zeros(rows * cols, G.c_dim)
    if G.c_dim > 0:  # 'both': the top half negative, the bottom half positive (column index = label)
        c[torch.arange(rows * cols), (torch.arange(rows * cols) >= rows * cols // 2).long()] = 1
    return z, c


def save_image_grid(images_uint8: np.ndarray, rows: int, cols: int, path: Path) -> Path:
    """Tile uint8 NCHW images into one PNG, written atomically."""
    from PIL import Image

    n, channels, height, width = images_uint8.shape
    grid = np.zeros((rows * height, cols * width, channels), dtype=np.uint8)
    for index in range(min(n, rows * cols)):
        r, c = divmod(index, cols)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = images_uint8[index].transpose(1, 2, 0)
    image = Image.fromarray(grid[..., 0] if channels == 1 else grid)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path


@torch.no_grad()
def render_fakes(G, z, c, device, batch: int = 16) -> np.ndarray:
    out = []
    for z_part, c_part in zip(z.split(batch), c.split(batch)):
        img = G(z_part.to(device), c_part.to(device), truncation_psi=1, noise_mode="const")
        out.append((img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


# --- the loop ------------------------------------------------------------------------------------------

def train(workspace: Optional[PathLike] = None,
          label: str = "positive",
          body_part: str = "XR_SHOULDER",
          cfg: str = "auto",
          resolution: Optional[int] = None,  # px; None = the resolution of the prepared dataset
          kimg: float = 1000.0,  # train until this many thousand real images have been shown to D
          kimg_per_tick: float = 4.0,  # thousand images per tick (one stats line per tick)
          snap: int = 10,  # ticks between snapshots
          batch: Optional[int] = None,  # images per iteration (None = the config's)
          seed: int = 0,
          resume: Optional[str] = None,  # None, 'latest' or a path (state file, run folder or NVlabs .pkl)
          transfer: Optional[str] = None,  # weights only: a .pkl / state / network file or 'ffhq256'
          freeze_d: int = 0,  # Freeze-D: number of highest-resolution D blocks left untrained
          max_minutes: Optional[float] = None,  # minutes of training in this call, then a final snapshot
          keep_states: int = 3,  # training states kept (the newest)
          keep_networks_every: int = 1,  # keep the inference file of every N-th snapshot (and the newest)
          metrics_every: int = 0,  # snapshots between metric computations (0 = never)
          device: Optional[str] = None,  # 'cpu', 'cuda', 'cuda:1'; None = CUDA when there is one
          amp: Optional[Union[str, bool]] = None,  # mixed precision on CUDA: auto / bf16 / fp16 / off
          progress: bool = True,
          gamma: Optional[float] = None,  # R1 weight; None = the config's
          mirror: bool = False,  # also train on x-flipped copies of the images
          batch_gpu: Optional[int] = None,  # images per forward/backward pass (gradient accumulation)
          compile: bool = False,  # torch.compile the networks for the loss (CUDA, torch >= 2.1)
          channels_last: bool = False,  # channels-last memory format for D's inputs on CUDA
          run: Optional[str] = None,  # run folder name (default BODY-label-cfg-res)
          on_tick: Optional[Callable[[Dict[str, Any]], None]] = None,  # called with each stats line
          metrics_fakes: Optional[int] = None,  # fakes per metrics measurement (None = mura_aug.gan.measure's 500)
          rank: Optional[int] = None,  # this process' rank; None = from torch.distributed (0 without it)
          world_size: Optional[int] = None,  # processes (GPUs); None = from torch.distributed (1 without it)
          log: Callable[[str], None] = print) -> Path:
    """Train (or continue) a StyleGAN2-ADA run on one class (or both) and return its run folder.

    Inside an initialised torch.distributed process group (torchrun) every rank calls this with the same
    arguments and its own `device`; they train together and only rank 0 writes files and logs."""
    _check_arguments(kimg, kimg_per_tick, snap, keep_states, keep_networks_every, max_minutes, freeze_d,
                     metrics_every, cfg, batch)
    if metrics_fakes is not None and int(metrics_fakes) < 2:
        raise UserError(f"The training parameter metrics_fakes={metrics_fakes} is not valid.",
                        "Use at least 2 fakes per measurement (default 500), or leave it out.")
    rank, world_size = _process_group(rank, world_size)
    if rank != 0:
        log = _quiet  # only rank 0 talks
    if resume is not None and transfer is not None:
        raise UserError("--resume and --transfer were both given.",
                        "Use --resume to continue a run (the whole state), --transfer to start a new run from "
                        "another network's weights; not both.")
    start_time = time.time()
    workspace = resolve_workspace(workspace, create=rank == 0)  # the other ranks only read
    device = resolve_device(device)
    classes_of(label)

    # 1. Which run, and is it a resume?
    state = None
    nvlabs_resume = None
    if resume not in (None, "", "latest", "none"):
        resume_path = Path(resume).expanduser()
        if resume_path.suffix == ".pkl":
            nvlabs_resume = resume_path
        elif resume_path.is_dir():
            info, state = snapshots.load_newest_state(resume_path, log=log)
            if state is None:
                raise UserError(f"The run folder {resume_path} holds no training state that loads.",
                                "Pass another run folder or a state-*kimg.pt file; python -m mura_aug runs "
                                f"--workspace {workspace.root} lists them.")
        else:
            state = snapshots.load_state(resume_path)
    if state is None and nvlabs_resume is None:
        if resolution is None:
            resolution = choose_source(workspace, body_part, classes_of(label)[0], None)[1]
        resolution = check_resolution(resolution)
        run_dir = workspace.experiments / (run or run_name(body_part, label, cfg, resolution))
        if run_dir.is_dir() and resume == "latest":
            info, state = snapshots.load_newest_state(run_dir, log=log)
            if state is None:
                log(f"no training state in {run_dir} yet: starting the run from the beginning")
        elif snapshots.list_snapshots(run_dir) and resume in (None, "", "none"):
            newest = snapshots.list_snapshots(run_dir)[-1]
            raise UserError(f"The run folder {run_dir} already holds snapshots (up to {newest.kimg:g} kimg).",
                            "Pass --resume latest (RESUME = 'latest' in the notebook) to continue it, or "
                            "--run NAME to start a separate run.")
    if state is not None:
        options = dict(state["options"])
        for key, value in dict(kimg=kimg, snap=snap, max_minutes=max_minutes, keep_states=keep_states,
                               keep_networks_every=keep_networks_every, metrics_every=metrics_every,
                               metrics_fakes=metrics_fakes, device=str(device), progress=progress,
                               compile=compile, channels_last=channels_last, world_size=world_size).items():
            options[key] = value
        run_dir = workspace.experiments / options["run"]
        if resume not in (None, "", "latest", "none"):
            # A state file or run folder given by path continues in its own folder (wherever it lies).
            given = Path(resume).expanduser().resolve()
            run_dir = given if given.is_dir() else given.parent
    else:
        if nvlabs_resume is not None:
            resolution = None  # taken from the pickle
        options = dict(label=label, body_part=body_part, cfg=cfg, resolution=resolution, kimg=kimg,
                       kimg_per_tick=kimg_per_tick, snap=snap, batch=batch, seed=seed, transfer=transfer,
                       freeze_d=freeze_d, max_minutes=max_minutes, keep_states=keep_states,
                       keep_networks_every=keep_networks_every, metrics_every=metrics_every,
                       metrics_fakes=metrics_fakes, device=str(device),
                       amp=amp if isinstance(amp, (str, bool, type(None))) else str(amp), gamma=gamma,
                       mirror=mirror, batch_gpu=batch_gpu, progress=progress, compile=compile,
                       channels_last=channels_last, world_size=world_size)
        if nvlabs_resume is None:
            options["run"] = run_dir.name
        else:
            options["run_name"] = run  # None = BODY-label-cfg-res with the pickle's resolution
    return _run(workspace, options, state, nvlabs_resume, device, on_tick, _Distributed(rank, world_size, device),
                log, start_time, run_dir if state is not None or nvlabs_resume is None else None)


def find_run(workspace, run: Optional[str] = None) -> Path:
    """The folder of run `run` (a name under data/experiments or a folder), or the most recently changed run."""
    workspace = resolve_workspace(workspace)
    if run is None:
        runs = snapshots.list_runs(workspace)
        if not runs:
            raise UserError(f"There is no training run in {workspace.experiments} yet.",
                            "Start one with notebook 02 / 03 or python -m mura_aug train.")
        return max(runs, key=lambda r: r.mtime).path
    run_dir = Path(run).expanduser()
    if not run_dir.is_dir():
        run_dir = workspace.experiments / str(run)
    if not run_dir.is_dir():
        names = ", ".join(r.name for r in snapshots.list_runs(workspace)) or "none yet"
        raise UserError(f"No run named {run!r} in {workspace.experiments}.", f"Use one of: {names}.")
    return run_dir


def resume_run(workspace: Optional[PathLike] = None, run: Optional[str] = None, kimg: Optional[float] = None,
               **kwargs) -> Path:
    """Continue a run exactly where its newest loadable state stopped (notebook 04).

    run: a run name under data/experiments, a run folder, or None for the most recently changed run;
    kimg: the new target (None keeps the run's target); other arguments as for `train` (max_minutes, ...)."""
    workspace = resolve_workspace(workspace)
    run_dir = find_run(workspace, run)
    options = snapshots.read_training_options(run_dir)
    target = float(kimg if kimg is not None else options.get("kimg") or 0)
    if target <= 0:
        raise UserError(f"The run {run_dir.name} has no recorded target kimg.", "Pass KIMG (the new target).")
    for key in ("snap", "keep_states", "keep_networks_every", "metrics_every", "kimg_per_tick"):
        if options.get(key) is not None:
            kwargs.setdefault(key, options[key])  # keep the run's own settings unless given
    return train(workspace, label=options.get("label", "positive"), body_part=options.get("body_part",
                 "XR_SHOULDER"), cfg=options.get("cfg", "auto"), kimg=target, resume=str(run_dir), **kwargs)


def _check_arguments(kimg, kimg_per_tick, snap, keep_states, keep_networks_every, max_minutes, freeze_d,
                     metrics_every, cfg, batch) -> None:
    checks = [
        (kimg is not None and kimg > 0, f"kimg={kimg}", "a positive number of thousand images, e.g. 500"),
        (kimg_per_tick > 0, f"kimg_per_tick={kimg_per_tick}", "a positive number, e.g. 4 (or 0.1 on a CPU)"),
        (int(snap) >= 1, f"snap={snap}", "a number of ticks >= 1"),
        (int(keep_states) >= 1, f"keep={keep_states}", "at least 1 training state (default 3)"),
        (int(keep_networks_every) >= 1, f"keep_networks_every={keep_networks_every}", "1 or more"),
        (max_minutes is None or max_minutes > 0, f"max_minutes={max_minutes}", "a positive number of minutes"),
        (int(freeze_d) >= 0, f"freeze_d={freeze_d}", "0 (off) or the number of D blocks to freeze"),
        (int(metrics_every) >= 0, f"metrics_every={metrics_every}", "0 (off) or a number of snapshots"),
        (cfg in CFG_NAMES, f"cfg={cfg!r}", f"one of {', '.join(CFG_NAMES)}"),
        (batch is None or int(batch) >= 1, f"batch={batch}", "a positive number of images"),
    ]
    for ok, what, fix in checks:
        if not ok:
            raise UserError(f"The training parameter {what} is not valid.", f"Use {fix}.")


def _make_config(options: dict, transfer: bool = False, world_size: int = 1):
    from mura_aug.gan.configs import make_config

    kwargs = {}
    for key, cast in (("batch", int), ("gamma", float), ("batch_gpu", int)):
        if options.get(key) is not None:
            kwargs[key] = cast(options[key])
    if options.get("label") == "both":
        kwargs["c_dim"] = 2  # one-hot column = label (0 negative, 1 positive)
    config = make_config(options["cfg"], int(options["resolution"]), transfer=transfer, **kwargs)
    if world_size > 1:
        # NVlabs: a pass holds at most batch / GPUs images; D's minibatch-std group is chosen to tile that pass.
        _, chunk = per_rank_batch(config.batch_size, world_size, config.batch_gpu)
        if chunk != config.batch_gpu:
            config = make_config(options["cfg"], int(options["resolution"]), transfer=transfer,
                                 **{**kwargs, "batch_gpu": chunk})
    return config


def _config_from_dict(data: dict):
    from mura_aug.gan.configs import TrainConfig

    return TrainConfig.from_dict(data)


def _make_augment(config, batch_size: int, device):
    """(augment pipe or None, ADA controller or None) from the config's augment settings."""
    from mura_aug.gan.augment import build_augmentation

    pipe, controller = build_augmentation(batch_size=batch_size, device=device,
                                          **dict(_cfg_get(config, "augment", {}) or {}))
    if pipe is not None:
        pipe.train().requires_grad_(False)
    return pipe, controller


def _load_nvlabs_resume(path: Path, is_writer: bool, log) -> dict:
    """G, D, G_ema (and augment_p) of an NVlabs pickle to continue training from. A pickle without G (some
    exports keep only G_ema and D) continues with G = G_ema; one without D cannot continue (D would start
    from scratch against a trained G): that is what --transfer is for."""
    from mura_aug.gan import load_nvlabs_pkl

    loaded = load_nvlabs_pkl(path)
    found = ", ".join(key for key in ("G", "D", "G_ema") if loaded.get(key) is not None) or "no network"
    if loaded.get("D") is None:
        raise UserError(f"The NVlabs pickle {path} holds no discriminator D (it holds {found}), so training "
                        "cannot continue from it.",
                        f"Start a new run from its weights with --transfer {path} instead of --resume (D then "
                        "starts from scratch).")
    for missing, source in (("G", "G_ema"), ("G_ema", "G")):
        if loaded.get(missing) is None:
            if loaded.get(source) is None:
                raise UserError(f"The NVlabs pickle {path} holds neither G nor G_ema (it holds {found}).",
                                "Pass a network-snapshot-*.pkl written by NVlabs' train.py.")
            message = (f"The NVlabs pickle {path.name} holds no {missing}; training continues with {missing} = a "
                       f"copy of {source}.")
            if is_writer:
                warnings.warn(message, RuntimeWarning, stacklevel=3)
                log("warning: " + message)
            loaded[missing] = loaded[source]
    return loaded


def _run(workspace, options, state, nvlabs_resume, device, *rest) -> Path:
    held = {}  # the run folder's lock, once taken: always given back, whatever ends the run
    try:
        with reuse_freed_cpu_memory(device):
            return _run_locked(workspace, options, state, nvlabs_resume, device, *rest, held)
    finally:
        if "lock" in held:
            held["lock"].release()


class _Step:
    """What every phase of every iteration needs, fixed for the whole call."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def _run_locked(workspace: Workspace, options: dict, state: Optional[dict], nvlabs_resume: Optional[Path],
                device: torch.device, on_tick, dist: _Distributed, log, start_time: float,
                run_dir: Optional[Path], held: dict) -> Path:
    from mura_aug.gan.loss import StyleGAN2Loss

    rank, world_size = dist.rank, dist.world_size
    is_writer = rank == 0
    # 2. Config, networks and their weights.
    error = None
    if state is not None:
        config = _config_from_dict(state["config"])
        G_kwargs, D_kwargs = dict(state["G_kwargs"]), dict(state["D_kwargs"])
        G, D, G_ema = _build_networks(G_kwargs, D_kwargs, device)
    elif nvlabs_resume is not None:
        loaded = _load_nvlabs_resume(nvlabs_resume, is_writer, log)
        G_kwargs, D_kwargs = dict(loaded["G"].init_kwargs), dict(loaded["D"].init_kwargs)
        options["resolution"] = int(G_kwargs["img_resolution"])
        options["run"] = options.get("run_name") or run_name(options["body_part"], options["label"],
                                                             options["cfg"], options["resolution"])
        run_dir = workspace.experiments / options["run"]
        config = _make_config(options, transfer=True, world_size=world_size)
        if snapshots.list_snapshots(run_dir):
            raise UserError(f"The run folder {run_dir} already holds snapshots; continuing from the NVlabs "
                            f"pickle {nvlabs_resume.name} would overwrite them.",
                            "Pass --resume latest to continue that run, or --run NAME for a new folder.")
        G, D, G_ema = _build_networks(G_kwargs, D_kwargs, device)
        for key, module in (("G", G), ("D", D), ("G_ema", G_ema)):
            module.load_state_dict(loaded[key].state_dict())
        match = re.search(r"(\d+)\.pkl$", nvlabs_resume.name)
        options["nvlabs_resume"] = {"path": str(nvlabs_resume), "kimg": int(match.group(1)) if match else 0,
                                    "augment_p": loaded.get("augment_p")}
    else:
        config = _make_config(options, transfer=bool(options.get("transfer")), world_size=world_size)
        G_kwargs, D_kwargs = dict(config.G_kwargs), dict(config.D_kwargs)
        _seed_everything(int(options["seed"]))
        G, D, G_ema = _build_networks(G_kwargs, D_kwargs, device)
        if options.get("transfer") and is_writer:  # rank 0 reads (maybe downloads) them; the broadcast shares them
            try:
                transfer_weights = _load_transfer_weights(options["transfer"], workspace, log)
                for key, module in (("G", G), ("D", D), ("G_ema", G_ema)):
                    if key in transfer_weights:
                        copied, skipped = _copy_matching(transfer_weights[key], module)
                        log(f"transfer {key}: {copied} tensors copied from {options['transfer']}, {skipped} kept "
                            "(name or shape differs)")
            except BaseException as exc:  # noqa: B036 - handed to dist.agree, which raises it again
                error = exc
    dist.agree(error)  # also a barrier: every rank has read what it needs before rank 0 writes anything
    dist.broadcast_modules(G, D, G_ema)

    run_dir = Path(run_dir)
    lock = snapshots.RunLock(run_dir)
    error = None
    if is_writer:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            held["lock"] = lock.acquire()  # before touching anything: another process may own this run
            snapshots.remove_stale_temporaries(run_dir)
        except BaseException as exc:  # noqa: B036
            error = exc
    dist.agree(error)

    batch_size = int(_cfg_get(config, "batch_size"))
    config_batch_gpu = int(_cfg_get(config, "batch_gpu", None) or batch_size)
    rank_batch, batch_gpu = per_rank_batch(batch_size, world_size, config_batch_gpu)
    mbstd_group = int((D_kwargs.get("epilogue_kwargs") or {}).get("mbstd_group_size") or 1)
    if batch_gpu % min(mbstd_group, batch_gpu):
        raise UserError(f"Each forward pass holds {batch_gpu} images, not a multiple of D's minibatch-std group "
                        f"{mbstd_group} (this run's discriminator was built for it).",
                        f"Run on a number of GPUs that leaves a multiple of {mbstd_group} images per GPU "
                        f"(batch {batch_size}), or start a new run.")
    frozen = _freeze_d_names(D, int(options.get("freeze_d") or 0))

    # 3. Data (one uint8 array on local disk). Rank 0 builds the cache first; the others then only read it.
    def load_images():
        return load_training_images(workspace, options["body_part"], options["label"],
                                    int(G_kwargs["img_resolution"]),
                                    progress=options.get("progress", True) and is_writer)

    error = None
    if is_writer:
        try:
            images, labels = load_images()
        except BaseException as exc:  # noqa: B036
            error = exc
    dist.agree(error)
    if not is_writer:
        images, labels = load_images()
    sampler = DataSampler(len(images), seed=int(options["seed"]), mirror=bool(options.get("mirror")))

    # 4. Loss, augmentation, optimizers.
    augment_pipe, ada = _make_augment(config, batch_size, device)
    loss = StyleGAN2Loss(G=G, D=D, augment_pipe=augment_pipe, **dict(_cfg_get(config, "loss_kwargs", {})))
    G_opt = _make_adam(G.parameters(), _adam_kwargs(_cfg_get(config, "G_opt_kwargs")))
    D_opt = _make_adam(D.parameters(), _adam_kwargs(_cfg_get(config, "D_opt_kwargs")))
    phases = []
    for name, module, opt, reg_interval in (("G", G, G_opt, _cfg_get(config, "G_reg_interval")),
                                            ("D", D, D_opt, _cfg_get(config, "D_reg_interval"))):
        if reg_interval is None:
            phases.append(dict(name=name + "both", module=module, opt=opt, interval=1))
        else:
            phases.append(dict(name=name + "main", module=module, opt=opt, interval=1))
            phases.append(dict(name=name + "reg", module=module, opt=opt, interval=int(reg_interval)))
    amp_dtype = _amp_dtype(options.get("amp"), device)
    scaler = None
    if amp_dtype == torch.float16:
        scaler = torch.amp.GradScaler("cuda") if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler") \
            else torch.cuda.amp.GradScaler()

    # 5. Counters; restore everything from a state (every rank reads the same state).
    cur_nimg, cur_tick, batch_idx, tick_start_nimg, total_sec = 0, 0, 0, 0, 0.0
    history = []
    if nvlabs_resume is not None:
        cur_nimg = tick_start_nimg = int(options["nvlabs_resume"]["kimg"]) * 1000
        if augment_pipe is not None and options["nvlabs_resume"]["augment_p"] is not None:
            augment_pipe.p.copy_(torch.as_tensor(float(options["nvlabs_resume"]["augment_p"])))
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        G_opt.load_state_dict(state["G_opt"])
        D_opt.load_state_dict(state["D_opt"])
        if augment_pipe is not None and state.get("augment_p") is not None:
            augment_pipe.p.copy_(torch.as_tensor(float(state["augment_p"])))
        if ada is not None and state.get("ada") is not None:
            ada.load_state_dict(state["ada"])
        if state.get("loss") is not None and hasattr(loss, "load_state_dict"):
            loss.load_state_dict(state["loss"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["data"])
        progress_state = state["progress"]
        cur_nimg, cur_tick = int(progress_state["cur_nimg"]), int(progress_state["cur_tick"])
        batch_idx, tick_start_nimg = int(progress_state["batch_idx"]), int(progress_state["tick_start_nimg"])
        total_sec = float(progress_state.get("total_sec", 0.0))
        history = list(state["options"].get("history", []))
        _set_rng_state(state["rng"])
        log(f"resuming {run_dir.name} from {RunFolder(run_dir).state(cur_nimg / 1000).name}: "
            f"{cur_nimg / 1000:g} kimg, tick {cur_tick}")
    if frozen:
        log(f"Freeze-D: {len(frozen)} parameter tensors of D's highest-resolution blocks stay fixed")
    if world_size > 1:
        log(f"{world_size} processes (GPUs): {rank_batch} images each per iteration, {batch_gpu} per pass, "
            f"{dist.dist.get_backend()} backend")

    total_nimg = int(round(float(options["kimg"]) * 1000))
    tick_nimg = float(options["kimg_per_tick"]) * 1000
    error = None
    if is_writer:
        try:
            # A resumed run's log is cut back to its state's tick; a fresh run starts a fresh log.
            snapshots.rewind_stats(run_dir, cur_tick if state is not None else -1)
        except BaseException as exc:  # noqa: B036
            error = exc
    dist.agree(error)
    if cur_nimg >= total_nimg:
        log(f"{run_dir.name} is already at {cur_nimg / 1000:g} kimg >= the target {total_nimg / 1000:g} kimg; "
            "nothing to train (raise --kimg to train longer)")
        return run_dir

    # 6. Run metadata, disk space check, fixed grid latents.
    error = None
    if is_writer:
        try:
            state_bytes = snapshots.estimate_state_bytes(G, D)
            network_bytes = sum(t.numel() * t.element_size() for t in G_ema.state_dict().values())
            snapshots.check_free_space(run_dir, state_bytes, network_bytes)
            history.append({"started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "from_kimg": cur_nimg / 1000, "target_kimg": total_nimg / 1000,
                            "resumed": state is not None, "world_size": world_size})
            options["history"] = history
            training_options = {**options, "run": run_dir.name, "workspace": str(workspace.root),
                                "config": config.to_dict(), "G_kwargs": G_kwargs, "D_kwargs": D_kwargs,
                                "num_images": int(len(images)), "batch_size": batch_size, "batch_gpu": batch_gpu,
                                "world_size": world_size, "batch_per_rank": rank_batch,
                                "device": str(device), "amp": str(amp_dtype).replace("torch.", "") if amp_dtype
                                else "off", "torch": torch.__version__}
            atomic_write_json(RunFolder(run_dir).options, training_options)
            if not RunFolder(run_dir).reals.exists():
                rows, cols = grid_shape(int(G_kwargs["img_resolution"]))
                pick = np.random.default_rng(0).choice(len(images), size=min(rows * cols, len(images)),
                                                       replace=False)
                save_image_grid(np.asarray(images[np.sort(pick)]), rows, cols, RunFolder(run_dir).reals)
        except BaseException as exc:  # noqa: B036
            error = exc
    dist.agree(error)
    grid_z, grid_c = grid_latents(G, int(options["seed"]), int(G_kwargs["img_resolution"]), options["label"])
    if options.get("compile"):
        compiled_G, compiled_D = torch.compile(G), torch.compile(D)
        loss = StyleGAN2Loss(G=compiled_G, D=compiled_D, augment_pipe=augment_pipe,
                             **dict(_cfg_get(config, "loss_kwargs", {})))
        if state is not None and state.get("loss") is not None and hasattr(loss, "load_state_dict"):
            loss.load_state_dict(state["loss"])

    def write_snapshot(stop_reason: Optional[str]) -> None:
        kimg_now = cur_nimg / 1000
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            fakes = render_fakes(G_ema, grid_z, grid_c, device)
        rows, cols = grid_shape(int(G_kwargs["img_resolution"]))
        save_image_grid(fakes, rows, cols, RunFolder(run_dir).fakes(kimg_now))
        meta = dict(kimg=kimg_now, run=run_dir.name, label=options["label"], class_names=CLASS_NAMES
                    if options["label"] == "both" else [options["label"]])
        from mura_aug.gan.network_file import save_network_file

        save_network_file(RunFolder(run_dir).network(kimg_now), G_ema, **meta)
        snapshot_options = {**options, "run": run_dir.name}
        full_state = {
            "G_kwargs": G_kwargs, "D_kwargs": D_kwargs,
            "G": _cpu_state(G), "D": _cpu_state(D), "G_ema": _cpu_state(G_ema),
            "G_opt": G_opt.state_dict(), "D_opt": D_opt.state_dict(),
            "augment_p": float(augment_pipe.p.item()) if augment_pipe is not None else None,
            "ada": ada.state_dict() if ada is not None else None,
            "loss": loss.state_dict() if hasattr(loss, "state_dict") else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "data": sampler.state_dict(),
            "progress": {"cur_nimg": cur_nimg, "cur_tick": cur_tick, "batch_idx": batch_idx,
                         "tick_start_nimg": cur_nimg, "total_sec": total_sec},  # a state is a tick boundary
            "rng": rng_at_tick_end,
            "config": config.to_dict(), "options": snapshot_options,
            **meta, "resolution": int(G_kwargs["img_resolution"]), "stop_reason": stop_reason,
        }
        try:
            snapshots.save_state(RunFolder(run_dir).state(kimg_now), full_state)
        except UserError as exc:
            previous = [s for s in snapshots.list_snapshots(run_dir) if s.state_path is not None
                        and s.kimg < kimg_now]
            kept = f"the last complete state is {previous[-1].state_path.name}" if previous else \
                "no earlier state exists"
            raise UserError(f"Training stopped at {kimg_now:g} kimg: the snapshot could not be written. "
                            f"{exc.problem} ({kept}.)", exc.fix) from exc
        deleted = snapshots.apply_retention(run_dir, int(options["keep_states"]),
                                            int(options["keep_networks_every"]))
        state_size = RunFolder(run_dir).state(kimg_now).stat().st_size
        from mura_aug.workspace import free_bytes

        log(f"snapshot {kimg_tag(kimg_now)} kimg: state {snapshots.human_bytes(state_size)}"
            f"{f', {len(deleted)} old file(s) removed' if deleted else ''}; run folder "
            f"{snapshots.human_bytes(snapshots.folder_bytes(run_dir))}, "
            f"{snapshots.human_bytes(free_bytes(run_dir))} free")

    # The running statistics that a phase updates chunk by chunk (see _run_phase): G's w_avg in the D main
    # pass (update_emas), the loss' path-length mean in the G regularisation pass.
    w_avg_buffers = [buffer for name, buffer in G.named_buffers() if name.endswith("w_avg")]

    def set_pl_mean(value):
        loss.pl_mean = value.clone()

    running = {"w_avg": [(lambda b=b: b, lambda v, b=b: b.copy_(v)) for b in w_avg_buffers],
               "pl_mean": [(lambda: loss.pl_mean, set_pl_mean)] if getattr(loss, "pl_weight", 0) else []}
    step = _Step(loss=loss, frozen=frozen, amp_dtype=amp_dtype, scaler=scaler, device=device, dist=dist,
                 seed=int(options["seed"]), batch_size=batch_size, batch_gpu=batch_gpu,
                 first_chunk=rank * rank_batch // batch_gpu, total_chunks=batch_size // batch_gpu,
                 running={"Dmain": running["w_avg"], "Dboth": running["w_avg"], "Greg": running["pl_mean"],
                          "Gboth": running["pl_mean"]})

    # 7. The loop.
    from tqdm.auto import tqdm

    bar = tqdm(total=total_nimg / 1000, initial=cur_nimg / 1000, unit="kimg", desc=run_dir.name,
               disable=not options.get("progress", True) or not is_writer,
               bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}]")
    if not is_writer:
        say = _quiet
    else:
        say = (lambda text: bar.write(text)) if options.get("progress", True) else log
    tick_sums: Dict[str, float] = {}
    tick_counts: Dict[str, int] = {}
    tick_start_time = time.time()
    session_start = start_time
    max_seconds = float(options["max_minutes"]) * 60 if options.get("max_minutes") else None
    rng_at_tick_end = None
    first_step_sec = None  # seconds from the call to the end of its first iteration (resume latency)
    done = False
    stop_reason = None
    z_dim, c_dim = G.z_dim, G.c_dim
    mine = slice(rank * rank_batch, (rank + 1) * rank_batch)  # this rank's part of every batch
    try:
        with _StopRequest() as stop:
            while not done:
                idx, flips = sampler.next_indices(batch_size)  # the whole batch: every rank runs the sampler
                real_img, real_c = batch_tensors(images, labels, idx[mine], flips[mine], c_dim, device)
                if options.get("channels_last") and device.type == "cuda":
                    real_img = real_img.contiguous(memory_format=torch.channels_last)
                gen_z, gen_c = _draw_latents(step.seed, batch_idx, len(phases), batch_size, z_dim, c_dim, labels)
                sign_sum = sign_count = 0.0  # sum of sign(D(real)) and its count this iteration, for ADA
                for phase_index, phase in enumerate(phases):
                    if batch_idx % phase["interval"] != 0:
                        continue
                    phase_signs = _run_phase(step, phase, phase_index, batch_idx, real_img, real_c,
                                             gen_z[phase_index, mine].to(device), gen_c[phase_index, mine].to(device),
                                             tick_sums, tick_counts)
                    sign_sum, sign_count = sign_sum + phase_signs[0], sign_count + phase_signs[1]
                with torch.no_grad():
                    ema_beta = config.ema_beta(cur_nimg)  # half-life ema_kimg, ramped up at the start
                    # one fused update of all tensors: p_ema += (1 - beta) * (p - p_ema)
                    torch._foreach_lerp_(list(G_ema.parameters()), list(G.parameters()), 1.0 - ema_beta)
                    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                        b_ema.copy_(b)
                cur_nimg += batch_size
                batch_idx += 1
                elapsed = time.time() - session_start
                # One small all_reduce per iteration: ADA's statistic of the whole batch, and the stop decision
                # (a clock or a Ctrl-C seen by any rank stops all of them after the same iteration).
                shared = torch.tensor([sign_sum, sign_count, float(max_seconds is not None and elapsed >= max_seconds),
                                       float(stop.requested)], dtype=torch.float64)
                sign_sum, sign_count, out_of_time, interrupted = dist.all_reduce_sum(shared).tolist()
                if ada is not None:
                    if sign_count > 0:
                        ada.sign_sum += sign_sum
                        ada.sign_count += sign_count
                    ada.update(augment_pipe)
                bar.update(batch_size / 1000)
                if is_writer:
                    lock.refresh()
                if first_step_sec is None:
                    first_step_sec = time.time() - start_time
                    log(f"first training step done {first_step_sec:.1f} s after the call started")

                if cur_nimg >= total_nimg:
                    done, stop_reason = True, "done"
                elif out_of_time > 0:
                    done, stop_reason = True, "max_minutes"
                elif interrupted > 0:
                    done, stop_reason = True, "interrupted"
                if not done and cur_nimg < tick_start_nimg + tick_nimg:
                    continue

                # End of a tick: stats line (over all ranks' chunks), maybe a snapshot (rank 0).
                cur_tick += 1
                tick_end_time = time.time()
                tick_sec = tick_end_time - tick_start_time
                total_sec += tick_sec
                tick_kimg = (cur_nimg - tick_start_nimg) / 1000
                if dist.enabled:
                    merged_sums, merged_counts = {}, {}
                    for sums, counts in dist.gather_objects((tick_sums, tick_counts)):
                        for key, value in sums.items():
                            merged_sums[key] = merged_sums.get(key, 0.0) + value
                            merged_counts[key] = merged_counts.get(key, 0) + counts[key]
                    tick_sums, tick_counts = merged_sums, merged_counts
                line = {"tick": cur_tick, "kimg": round(cur_nimg / 1000, 6)}
                for key in sorted(tick_sums):
                    line[key] = tick_sums[key] / max(tick_counts[key], 1)
                if "D_real_sign" in line:
                    line["r_t"] = line["D_real_sign"]
                line["augment_p"] = float(augment_pipe.p.item()) if augment_pipe is not None else 0.0
                if ada is not None and hasattr(ada, "r_t") and ada.r_t is not None:
                    line["r_t"] = float(ada.r_t)
                line["sec_per_tick"] = round(tick_sec, 3)
                line["sec_per_kimg"] = round(tick_sec / max(tick_kimg, 1e-9), 3)
                line["total_sec"] = round(total_sec, 1)
                line["eta_sec"] = round((total_nimg - cur_nimg) / 1000 * line["sec_per_kimg"], 1)
                line.update(_memory_stats(device))
                line["timestamp"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
                if stop_reason and stop_reason != "done":
                    line["stop_reason"] = stop_reason
                # Every random draw up to here belongs to this tick; a state written now resumes from here.
                rng_at_tick_end = _rng_state()
                snapshot_now = done or cur_tick % int(options["snap"]) == 0
                metrics_every = int(options.get("metrics_every") or 0)
                error = None
                if is_writer:
                    try:
                        if snapshot_now and metrics_every > 0 and \
                                (cur_tick // int(options["snap"])) % metrics_every == 0:
                            line.update(_training_metrics(G_ema, images, labels, device, say,
                                                          options.get("metrics_fakes")))
                        snapshots.append_stats(run_dir, line)
                        say(_format_line(line))
                        if snapshot_now:
                            write_snapshot(stop_reason)
                    except BaseException as exc:  # noqa: B036
                        error = exc
                dist.agree(error)  # the other ranks wait here while rank 0 writes
                if on_tick is not None:
                    on_tick(line)
                tick_sums, tick_counts = {}, {}
                tick_start_nimg = cur_nimg
                tick_start_time = time.time()
    finally:
        bar.close()
    if stop_reason == "done":
        message = f"finished: {cur_nimg / 1000:g} kimg"
    elif stop_reason == "max_minutes":
        message = (f"stopped after {float(options['max_minutes']):g} minutes at {cur_nimg / 1000:g} kimg "
                   "(--max-minutes); continue with --resume latest")
    else:
        message = (f"interrupted at {cur_nimg / 1000:g} kimg; the final state is saved, continue with "
                   "--resume latest")
    log(f"{run_dir.name}: {message}")
    return run_dir


def _run_phase(step: _Step, phase: dict, phase_index: int, batch_idx: int, real_img, real_c, gen_z, gen_c,
               tick_sums, tick_counts) -> tuple:
    """Run one phase over this rank's chunks, sum the gradients over all ranks, step the optimizer.

    Each chunk's loss is weighted by its share of the whole batch (times the lazy-regularisation interval), so
    the summed gradient is that of the batch mean however the batch is cut into chunks and ranks. Before each
    chunk torch's global generators are seeded from (seed, iteration, phase, chunk number in the whole batch),
    and the running statistics the phase updates (w_avg, pl_mean) are reset to their value at the start of the
    phase; the phase ends with their mean over all chunks. Returns (sum of sign(D(real)), count) of D main."""
    module, opt, loss, device = phase["module"], phase["opt"], step.loss, step.device
    sign_sum = sign_count = 0.0
    opt.zero_grad(set_to_none=True)
    for name, param in module.named_parameters():
        param.requires_grad_(name not in step.frozen if phase["name"].startswith("D") else True)
    trained = [param for param in module.parameters() if param.requires_grad]
    running = step.running.get(phase["name"], [])
    starts = [get().detach().to(device).clone() for get, _ in running]
    totals = [torch.zeros_like(start) for start in starts]
    chunks = list(zip(real_img.split(step.batch_gpu), real_c.split(step.batch_gpu), gen_z.split(step.batch_gpu),
                      gen_c.split(step.batch_gpu)))
    # With several chunks, each chunk's gradient is summed as a whole (chunk 1 + chunk 2 + ...), not term by
    # term as autograd would (a D main chunk has two backward passes), so that 2 chunks in one process add up
    # in the same order as 1 chunk on each of 2 ranks.
    chunk_grads: Dict[int, torch.Tensor] = {}
    for chunk_index, (img, c, z, gc) in enumerate(chunks):
        for (_, put), start in zip(running, starts):
            put(start)
        torch.manual_seed(_derived_seed(step.seed, batch_idx, _DRAW_CHUNK, phase_index,
                                        step.first_chunk + chunk_index))
        gain = float(phase["interval"]) * len(img) / step.batch_size
        mixed = torch.autocast(device_type=device.type, dtype=step.amp_dtype) if step.amp_dtype is not None \
            else contextlib.nullcontext()
        with mixed:
            stats = loss.accumulate_gradients(phase=phase["name"], real_img=img, real_c=c, gen_z=z, gen_c=gc,
                                              gain=gain, **({"scaler": step.scaler} if step.scaler is not None
                                                            else {}))
        for (get, _), total in zip(running, totals):
            total += get().detach()
        if len(chunks) > 1:
            for index, param in enumerate(trained):
                if param.grad is not None:
                    chunk_grads[index] = param.grad if index not in chunk_grads else chunk_grads[index] + param.grad
                    param.grad = None
        for key, value in (stats or {}).items():
            if value is None:
                continue
            name = STAT_ALIASES.get(key, key)
            value = float(value)
            if math.isfinite(value):
                tick_sums[name] = tick_sums.get(name, 0.0) + value
                tick_counts[name] = tick_counts.get(name, 0) + 1
            if name == "D_real_sign" and phase["name"] in ("Dmain", "Dboth") and math.isfinite(value):
                count = float(stats.get("D_real_count", len(img)))
                sign_sum += float(round(value * count))  # a sum of signs: an integer, whatever the rounding
                sign_count += count
    for index, grad in chunk_grads.items():
        trained[index].grad = grad
    module.requires_grad_(False)
    _sum_over_ranks(step.dist, trained, totals)
    for (_, put), total in zip(running, totals):
        put(total / step.total_chunks)
    if step.scaler is not None:
        step.scaler.unscale_(opt)
        step.scaler.step(opt)
        step.scaler.update()
    else:
        for param in module.parameters():
            if param.grad is not None:
                torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
        opt.step()
    return sign_sum, sign_count


def _sum_over_ranks(dist: _Distributed, params: list, extras: list) -> None:
    """Sum the gradients of `params` and the tensors `extras` over all ranks, in one flat all_reduce (NVlabs'
    way). A parameter without a gradient on some rank counts as zero there, and keeps no gradient (so Adam
    skips it, as it does on one GPU) only when it has none on every rank."""
    if not dist.enabled or not (params or extras):
        return
    device = dist.comm_device
    parts = [param.grad.detach().reshape(-1).float().to(device) if param.grad is not None
             else torch.zeros(param.numel(), device=device) for param in params]
    parts.append(torch.tensor([float(param.grad is not None) for param in params], device=device))
    parts += [extra.detach().reshape(-1).float().to(device) for extra in extras]
    flat = dist.all_reduce_sum(torch.cat(parts))
    sizes = [param.numel() for param in params] + [len(params)] + [extra.numel() for extra in extras]
    pieces = flat.split(sizes)
    had_grad = pieces[len(params)]
    for param, piece, count in zip(params, pieces[:len(params)], had_grad.tolist()):
        if count > 0:
            param.grad = piece.reshape(param.shape).to(param.device, param.dtype)
    for extra, piece in zip(extras, pieces[len(params) + 1:]):
        extra.copy_(piece.reshape(extra.shape))


def _training_metrics(G_ema, images, labels, device, say, num_fakes: Optional[int] = None) -> Dict[str, Any]:
    """mura_aug.gan.measure.training_metrics (FID/KID/diversity) of G_ema, without touching the training RNGs.
    A conditional G gets the real labels, so its fakes have the training set's class mix."""
    try:
        from mura_aug.gan.measure import training_metrics
    except ImportError as exc:
        say(f"metrics skipped: mura_aug.gan.measure is not available ({exc})")
        return {}
    extra = {} if num_fakes is None else {"num_fakes": int(num_fakes)}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            result = training_metrics(G_ema, images, device=device,
                                      real_labels=labels if G_ema.c_dim > 0 else None, **extra)
        except UserError as exc:
            say(f"metrics skipped: {exc.problem}")
            return {}
    return {key: (float(value) if isinstance(value, (int, float, np.floating)) else value)
            for key, value in dict(result).items()}


def _make_adam(params, kwargs: dict) -> torch.optim.Optimizer:
    """Adam with the fused kernel where this torch has it for the parameters' device (CPU: torch >= 2.4):
    on a CPU the step of auto-32 drops from ~0.12 s to ~0.03 s (bench/results/networks_cpu.md)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without the fused kernel
        return torch.optim.Adam(params, **kwargs)


def _adam_kwargs(kwargs) -> dict:
    """Adam's arguments from the config (a JSON round trip turns betas into a list of maybe-int numbers)."""
    kwargs = dict(kwargs)
    kwargs.pop("class_name", None)
    if "betas" in kwargs:
        kwargs["betas"] = tuple(float(b) for b in kwargs["betas"])
    for key in ("lr", "eps"):
        if key in kwargs:
            kwargs[key] = float(kwargs[key])
    return kwargs


def _cpu_state(module) -> Dict[str, torch.Tensor]:
    return {key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def _format_line(line: Dict[str, Any]) -> str:
    parts = [f"tick {line['tick']:<5d}", f"kimg {line['kimg']:<9.3f}"]
    for key in ("loss_G", "loss_D", "loss_r1", "pl_penalty", "augment_p", "r_t", "sec_per_kimg"):
        if key in line and isinstance(line[key], (int, float)):
            parts.append(f"{key} {line[key]:.4g}")
    if "fid" in line:
        parts.append(f"fid {line['fid']:.4g}")
    return "  ".join(parts)


def without_timings(lines):
    """Stats lines without the keys that depend on the clock or the machine (to compare two runs)."""
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in lines]


__all__ = ["train", "run_name", "without_timings", "TIMING_KEYS"]
