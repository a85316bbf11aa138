"""Which torch device a stage runs on, which reduced precision it uses there, what running out of GPU memory
looks like, how a CPU training call keeps its freed memory, how a CUDA one sets cuDNN and TF32, and whether
an in-memory array fits (`require_memory`): one rule for every stage, so "auto" and the errors read the same."""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Mapping, Optional, Tuple

from mura_aug.errors import UserError


def resolve_device(device=None):
    """None / "" / "auto" -> the GPU when torch sees one, else the CPU; "cpu", "cuda", "cuda:1" or a
    torch.device as given. A CUDA device on a machine without one, or a name torch does not know, is a
    UserError saying what to pass instead."""
    import torch

    if isinstance(device, torch.device):
        resolved = device
    elif device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise UserError(f"Unknown device {device!r}.", "Use auto, cpu, cuda or cuda:N.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"The device {str(resolved)!r} was asked for, but PyTorch sees no CUDA GPU on this machine.",
                        "Use device 'auto' or 'cpu' (--device cpu), or in Colab switch to a GPU: "
                        "Runtime > Change runtime type > GPU.")
    return resolved


# --- mixed precision ---------------------------------------------------------------------------------------

AMP_MODES = ("auto", "bf16", "fp16", "off")  # the choices of every stage's `amp` setting


@dataclasses.dataclass(frozen=True)
class Precision:
    """How a training step computes: what `amp` means on one device.

    name: 'fp32', 'fp16' or 'bf16' (what a results table and training_options.json call it);
    autocast: the dtype torch.autocast runs in, or None (no autocast);
    fp16_blocks: whether the networks' blocks built with use_fp16 (NVIDIA's top `num_fp16_res` resolutions,
    activations clamped at conv_clamp) run in float16 (only on CUDA: ops.block_dtype keeps them float32 on a
    CPU, which has no fast float16 convolution);
    grad_scaler: whether the losses are scaled (torch.amp.GradScaler), which float16 gradients need to stay
    above float16's smallest number."""
    name: str
    autocast: Optional[object] = None
    fp16_blocks: bool = False
    grad_scaler: bool = False


def precision(amp: str, device) -> Precision:
    """What the `amp` setting means on `device`.

    - off: float32 everywhere (the fp16 blocks too);
    - fp16: NVIDIA's scheme: the fp16 blocks in float16 with conv_clamp, everything else float32, the losses
      scaled by a grad scaler (on a CPU the blocks stay float32, but the scaler runs: the same code path);
    - bf16: torch.autocast in bfloat16 over the whole step, the fp16 blocks off (bfloat16 has float32's range,
      so nothing needs clamping or scaling); also on a CPU when asked for by name (bench/results/
      networks_cpu_bf16.md: slower than float32 on our CPUs, but it runs the GPU's mixed-precision code);
    - auto: on CUDA bfloat16 on GPUs with native bfloat16 (compute capability 8.0, Ampere, or newer) and fp16
      on older ones (torch reports bfloat16 as supported on a T4, 7.5, too, where it is emulated and slow);
      on a CPU float32."""
    import torch

    if amp not in AMP_MODES:
        raise UserError(f"Unknown mixed-precision setting amp={amp!r}.", f"Use one of {', '.join(AMP_MODES)}.")
    device = torch.device(device)
    if amp == "auto":
        if device.type != "cuda":
            amp = "off"
        else:
            amp = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    if amp == "off":
        return Precision("fp32")
    if amp == "fp16":
        return Precision("fp16", fp16_blocks=True, grad_scaler=True)
    return Precision("bf16", autocast=torch.bfloat16)


def grad_scaler(device, enabled: bool = True):
    """A torch GradScaler for `device` (CUDA or CPU; torch.amp.GradScaler since torch 2.3, the CUDA one before).
    Its state_dict() is what a training state stores, load_state_dict() what a resume restores."""
    import torch

    device_type = torch.device(device).type
    scaler_class = getattr(getattr(torch, "amp", None), "GradScaler", None)
    if scaler_class is not None:
        return scaler_class(device_type, enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled and device_type == "cuda")  # torch < 2.3


# --- running out of GPU memory ------------------------------------------------------------------------------

def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is the accelerator running out of memory (torch.OutOfMemoryError, called
    torch.cuda.OutOfMemoryError too; older torch raised a plain RuntimeError saying so)."""
    import torch

    kind = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if kind is not None and isinstance(exc, kind):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower() and "CUDA" in str(exc)


def out_of_memory_line(exc: BaseException) -> str:
    """The one line an out-of-memory message quotes of `exc`: its type and the first line of its text
    ('OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB ...'; CUDA's further lines of
    allocator advice would drown the message that says what we do about it)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def free_accelerator_memory(device) -> None:
    """Give the memory of the tensors freed after an out-of-memory error back to the CUDA allocator's pool,
    so that the next, smaller try can use it (a no-op elsewhere)."""
    import gc

    import torch

    gc.collect()
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def accelerator_memory_text(device) -> str:
    """'the 15.8 GB of GPU cuda:0 (Tesla T4)' or 'this device' (for messages)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(device)
        return f"the {properties.total_memory / 1e9:.1f} GB of GPU {device} ({properties.name})"
    return f"the memory of {device}"


# --- the CPU allocator during training ----------------------------------------------------------------------

# glibc's mallopt(3) parameter numbers, and the values glibc starts with when nothing sets them.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
GLIBC_DEFAULT_MMAP_MAX = 65536  # mmap'ed blocks at most at a time (mallopt(3))
GLIBC_DEFAULT_TRIM_THRESHOLD = 128 * 1024  # bytes of free heap top before glibc gives memory back (mallopt(3))
_KEPT_TRIM_THRESHOLD = 1 << 30  # bytes: while training, never give the heap back between steps
_MALLOPT_LIMIT = 2 ** 31 - 1  # mallopt takes a C int: a larger start value is restored as this
# Where a process can set the two at start (glibc's tunables(7); GLIBC_TUNABLES wins over the old names).
_TUNABLES = {"mmap_max": ("glibc.malloc.mmap_max", "MALLOC_MMAP_MAX_", GLIBC_DEFAULT_MMAP_MAX),
             "trim_threshold": ("glibc.malloc.trim_threshold", "MALLOC_TRIM_THRESHOLD_",
                                GLIBC_DEFAULT_TRIM_THRESHOLD)}
_active_calls = 0  # nested training calls share one setting: only the outermost sets and restores it


def _glibc():
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _number(text: Optional[str]) -> Optional[int]:
    try:
        return int(text.strip(), 0) if text is not None else None  # glibc accepts decimal and 0x... values
    except ValueError:
        return None


def glibc_malloc_start_settings(environ: Optional[Mapping[str, str]] = None) -> Tuple[int, int]:
    """(M_MMAP_MAX, M_TRIM_THRESHOLD) as glibc set them when the process started. glibc has no getter for
    either, so they are read where glibc read them: GLIBC_TUNABLES (glibc.malloc.mmap_max=...:...), else
    the MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ variables, else glibc's documented defaults. A value glibc
    would not parse counts as unset. `environ`: default os.environ, which Python copied from the process'
    environment at start (not /proc/self/environ: glibc cuts GLIBC_TUNABLES short there as it parses it)."""
    environ = os.environ if environ is None else environ
    tunables = {}
    for item in environ.get("GLIBC_TUNABLES", "").split(":"):
        name, _, value = item.partition("=")
        tunables[name.strip()] = value
    values = []
    for tunable, variable, default in _TUNABLES.values():
        value = _number(tunables.get(tunable))
        if value is None:
            value = _number(environ.get(variable))
        values.append(default if value is None or value < 0 else value)
    return values[0], values[1]


@contextlib.contextmanager
def reuse_freed_cpu_memory(device):
    """While training on a CPU, keep freed memory in the process instead of handing it back to the system.

    Why: glibc serves blocks over 32 MB (and, until its threshold has adapted, smaller ones) with a fresh
    mmap and unmaps them on free, so every large tensor of every step pays the kernel to zero and map its
    pages again (~2 GB/s). For the `auto` networks at 32 px that was 15-25 % of the CPU time of a training
    step (a 38 MB Winograd weight transform: 18 ms with fresh pages, 3.5 ms with reused ones).

    glibc's settings belong to the whole process, so this holds them only for the call it wraps: on leaving,
    M_MMAP_MAX and M_TRIM_THRESHOLD go back to the values the process started with (see
    `glibc_malloc_start_settings`; a setting another library made with mallopt meanwhile cannot be read and
    is not restored), and unused memory is returned. What cannot be restored: any mallopt call ends glibc's
    dynamic raising of its mmap and trim thresholds for the rest of the process (they stay where they are).
    A no-op on other devices and C libraries (macOS, musl)."""
    global _active_calls

    libc = _glibc() if str(device).startswith("cpu") else None
    if libc is None or _active_calls:
        yield
        return
    mmap_max, trim_threshold = glibc_malloc_start_settings()
    _active_calls += 1
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, _KEPT_TRIM_THRESHOLD)
    try:
        yield
    finally:
        _active_calls -= 1
        libc.mallopt(_M_MMAP_MAX, min(mmap_max, _MALLOPT_LIMIT))
        libc.mallopt(_M_TRIM_THRESHOLD, min(trim_threshold, _MALLOPT_LIMIT))
        libc.malloc_trim(0)


# --- the CUDA libraries during training ---------------------------------------------------------------------

@contextlib.contextmanager
def cuda_training_backends(device):
    """While training on a CUDA GPU, the CUDA libraries set as NVIDIA's StyleGAN2-ADA training loop sets them.

    - cuDNN's benchmark mode: each convolution shape's fastest algorithm is searched at its first use, so the
      first steps of a run are slower (on an H200 at 256 px the first fp32 step took about a minute,
      bench/results/gpu_NVIDIA_H200.md) and every later one is faster. Left as it is where the caller has
      switched cuDNN's deterministic mode on (a reproducibility choice, as the GPU resume test makes).
    - No TF32 in float32 convolutions and matrix products (torch allows it in convolutions by default):
      NVIDIA turns it off for numerical accuracy (TF32 keeps 10 of float32's 23 mantissa bits), so a float32
      run does the same sums as theirs; reduced precision is the `amp` setting's choice alone.

    The flags belong to the whole process (a notebook's other work too), so they are held for the call it
    wraps and restored on leaving. Yields what was set, for the log; a no-op (yielding None) on other devices."""
    import torch

    if torch.device(device).type != "cuda":
        yield None
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32
    cudnn.benchmark = cudnn.benchmark or not cudnn.deterministic
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield {"cudnn_benchmark": cudnn.benchmark, "cudnn_deterministic": cudnn.deterministic, "tf32": False}
    finally:
        cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = before


# --- memory ------------------------------------------------------------------------------------------------

MEMORY_HEADROOM = 0.8  # share of the available memory one array may take: the notebook and Python need the rest


def available_memory() -> Optional[int]:
    """Bytes of memory the system can give without swapping (Linux: MemAvailable; elsewhere free pages), or
    None where it cannot be told."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def require_memory(needed_bytes: int, what: str, fix: str) -> None:
    """UserError before starting when `what` (needing `needed_bytes`) would not fit the available memory."""
    available = available_memory()
    if available is not None and needed_bytes > MEMORY_HEADROOM * available:
        raise UserError(f"{what} needs about {needed_bytes / 2**30:.1f} GB of memory, but only "
                        f"{available / 2**30:.1f} GB is available.", fix)
