"""Several processes (GPUs) training one run: the process group, the batch split, and how ranks agree.

`torchrun --nproc_per_node N -m mura_aug train ...` starts N copies of the command with RANK, WORLD_SIZE,
LOCAL_RANK (and MASTER_ADDR / MASTER_PORT) in their environment; `process_group_of_torchrun` joins them into
one torch.distributed group (nccl on GPUs, gloo with --device cpu) and leaves it at the end, also after an
error. The training loop then works with a `Distributed`: each rank takes its slice of every batch, the
initial weights are broadcast from rank 0, each phase's gradients are summed over the ranks in one flat
all_reduce (NVlabs' way, which works with the lazy regularisation phases, unlike DistributedDataParallel),
and only rank 0 writes files. Where rank 0 does work that may fail (writing to Drive, a locked run folder),
every rank waits inside `with dist.agreement():`, so that a failure stops all of them instead of leaving the
others waiting forever. With one process every collective is a no-op.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Dict, Iterator, Mapping, Optional, Tuple

import torch

from mura_aug.errors import UserError

# How long a rank waits in a collective for the others. Rank 0 alone writes snapshots (to Google Drive, maybe
# hundreds of MB) and computes metrics while the others wait, so this is far above NCCL's 10-minute default.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


def per_rank_batch(batch_size: int, world_size: int, batch_gpu: Optional[int] = None) -> Tuple[int, int]:
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


def this_rank() -> int:
    """This process' rank in the torch.distributed process group (0 without one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _Agreement:
    """The context manager of `Distributed.agreement`."""

    def __init__(self, dist: "Distributed"):
        self.dist = dist

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, traceback) -> bool:
        failed_here = exc is not None
        failed_anywhere = self.dist.any_rank(failed_here)
        if not failed_here and failed_anywhere:
            raise UserError("Another process of this multi-GPU run stopped with an error (its message is above), "
                            "so this process stops too.",
                            "Fix what that message says, then start torchrun again (--resume latest continues "
                            "from the last snapshot).")
        return False  # this rank's own error goes on as it was


class Distributed:
    """The torch.distributed process group of a multi-GPU run, or a stand-in that does nothing for one process.

    gloo reduces CPU tensors, nccl CUDA tensors: `comm_device` is where a tensor goes for a collective."""

    def __init__(self, device: torch.device):
        import torch.distributed as dist

        grouped = dist.is_available() and dist.is_initialized()
        self.rank = this_rank()
        self.world_size = dist.get_world_size() if grouped else 1
        self.enabled = self.world_size > 1
        self.is_writer = self.rank == 0  # only rank 0 writes files and prints
        self.comm_device = torch.device("cpu")
        self.backend = str(dist.get_backend()) if grouped else None
        if self.enabled:
            self.dist = dist
            if "nccl" in self.backend and device.type == "cuda":
                self.comm_device = device

    def agreement(self) -> _Agreement:
        """`with dist.agreement(): ...`: every rank runs the block (usually `if dist.is_writer:` work); when it
        fails on any rank, the failing rank raises its own error and every other rank a UserError pointing to
        it, instead of waiting forever in the next collective. Also a barrier: no rank leaves before all came."""
        return _Agreement(self)

    def any_rank(self, flag: bool) -> bool:
        """True when `flag` is true on at least one rank (an all_reduce: every rank must call it)."""
        if not self.enabled:
            return bool(flag)
        return float(self.all_reduce_sum(torch.tensor([1.0 if flag else 0.0])).item()) > 0

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

    def sum_gradients(self, params: list, extras: list) -> None:
        """Sum the gradients of `params` and the tensors `extras` over all ranks, in one flat all_reduce. A
        parameter without a gradient on some rank counts as zero there, and keeps no gradient (so Adam skips
        it, as it does on one GPU) only when it has none on every rank."""
        if not self.enabled or not (params or extras):
            return
        device = self.comm_device
        parts = [param.grad.detach().reshape(-1).float().to(device) if param.grad is not None
                 else torch.zeros(param.numel(), device=device) for param in params]
        parts.append(torch.tensor([float(param.grad is not None) for param in params], device=device))
        parts += [extra.detach().reshape(-1).float().to(device) for extra in extras]
        flat = self.all_reduce_sum(torch.cat(parts))
        sizes = [param.numel() for param in params] + [len(params)] + [extra.numel() for extra in extras]
        pieces = flat.split(sizes)
        had_grad = pieces[len(params)]
        for param, piece, count in zip(params, pieces[:len(params)], had_grad.tolist()):
            if count > 0:
                param.grad = piece.reshape(param.shape).to(param.device, param.dtype)
        for extra, piece in zip(extras, pieces[len(params) + 1:]):
            extra.copy_(piece.reshape(extra.shape))

    def merge_sums(self, sums: Dict[str, float], counts: Dict[str, int]) -> Tuple[Dict[str, float], Dict[str, int]]:
        """Per-key sums and counts (a tick's statistics) added up over all ranks."""
        if not self.enabled:
            return sums, counts
        gathered = [None] * self.world_size
        self.dist.all_gather_object(gathered, (sums, counts))
        merged_sums: Dict[str, float] = {}
        merged_counts: Dict[str, int] = {}
        for rank_sums, rank_counts in gathered:
            for key, value in rank_sums.items():
                merged_sums[key] = merged_sums.get(key, 0.0) + value
                merged_counts[key] = merged_counts.get(key, 0) + rank_counts[key]
        return merged_sums, merged_counts


# --- torchrun -----------------------------------------------------------------------------------------------

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


def distributed_device(requested: Optional[str], local_rank: int, cuda_count: int) -> Tuple[str, str]:
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


@contextlib.contextmanager
def process_group_of_torchrun(requested_device: Optional[str]) -> Iterator[int]:
    """Join torchrun's process group for the block and leave it afterwards, also after an error; yields this
    process' rank. Its GPU (cuda:LOCAL_RANK) becomes the current CUDA device, so "cuda" means that one.
    Outside torchrun: rank 0 and no group."""
    import torch.distributed as dist

    environment = torchrun_environment()
    if environment is None:
        yield 0
        return
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
    try:
        yield environment["rank"]
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
