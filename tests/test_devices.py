"""One device rule for every stage (mura_aug.devices): the device, mixed precision, and the CPU allocator
setting of a training call and the CUDA libraries' flags of one (each scoped to the call, the start values
restored)."""
import ctypes
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mura_aug.devices import (AMP_MODES, GLIBC_DEFAULT_MMAP_MAX, GLIBC_DEFAULT_TRIM_THRESHOLD,
                              cuda_training_backends, glibc_malloc_start_settings, is_out_of_memory,
                              out_of_memory_line, precision, resolve_device, reuse_freed_cpu_memory)
from mura_aug.errors import UserError


def test_auto_picks_the_gpu_only_when_there_is_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    for spelling in (None, "", "auto"):
        assert resolve_device(spelling).type == expected


def test_named_devices_and_torch_devices_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_unknown_names_say_what_to_pass():
    with pytest.raises(UserError, match="Unknown device 'gpu0'") as caught:
        resolve_device("gpu0")
    assert "cpu" in caught.value.fix


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_user_error_whatever_the_spelling():
    for spelling in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(UserError, match="sees no CUDA GPU") as caught:
            resolve_device(spelling)
        assert "cpu" in caught.value.fix


# --- mixed precision -----------------------------------------------------------------------------------------

def test_mixed_precision_on_a_cpu_only_when_asked_for_by_name_and_only_known_modes():
    for amp in AMP_MODES:
        # the CPU trains in float32 unless bf16 autocast is asked for (tests/test_mixed_precision.py)
        assert precision(amp, "cpu").autocast == (torch.bfloat16 if amp == "bf16" else None)
    with pytest.raises(UserError, match="amp='half'") as caught:
        precision("half", "cpu")
    assert "auto, bf16, fp16, off" in caught.value.fix


# --- the CPU allocator during training ---------------------------------------------------------------------

GLIBC_ONLY = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the allocator setting is glibc's")
REPO = Path(__file__).resolve().parent.parent


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo():
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2()


def _fresh_block_is_mmapped() -> bool:
    """Allocate a block larger than all free heap memory (so no free chunk can serve it: earlier tests may
    have left a big heap behind) and say whether glibc mmap'ed it."""
    info = _mallinfo()
    size = info.fordblks + 64 * 2 ** 20  # bytes
    before = info.hblkhd
    block = torch.empty(size // 4)
    mmapped = _mallinfo().hblkhd - before >= size
    del block
    return mmapped


@GLIBC_ONLY
def test_an_out_of_memory_error_is_quoted_by_its_type_and_first_line_only():
    exc = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total)\n"
                                      "If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF")
    assert is_out_of_memory(exc)
    assert out_of_memory_line(exc) == ("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
                                       "15.77 GiB total)")
    assert out_of_memory_line(RuntimeError()) == "RuntimeError: "


def test_cpu_training_keeps_big_blocks_in_the_heap_and_gives_the_default_back():
    assert _fresh_block_is_mmapped()  # glibc's default: a fresh mmap (zeroed pages every time)
    with reuse_freed_cpu_memory("cpu"):
        assert not _fresh_block_is_mmapped()  # from the heap, whose freed pages are reused
    assert _fresh_block_is_mmapped()  # back to mmap once training ends


@GLIBC_ONLY
def test_the_allocator_setting_is_left_alone_for_other_devices():
    with reuse_freed_cpu_memory("cuda"):
        assert _fresh_block_is_mmapped()


def test_the_start_settings_are_read_where_glibc_reads_them():
    defaults = (GLIBC_DEFAULT_MMAP_MAX, GLIBC_DEFAULT_TRIM_THRESHOLD)
    assert glibc_malloc_start_settings({}) == defaults
    assert glibc_malloc_start_settings({"MALLOC_MMAP_MAX_": "7", "MALLOC_TRIM_THRESHOLD_": "0x100000"}) == \
        (7, 1 << 20)
    # GLIBC_TUNABLES wins over the old variables; a value glibc would not parse counts as unset.
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.check=0:glibc.malloc.trim_threshold=4096:glibc.malloc.mmap_max=x",
                "MALLOC_MMAP_MAX_": "9", "MALLOC_TRIM_THRESHOLD_": "1"}
    assert glibc_malloc_start_settings(tunables) == (9, 4096)
    assert glibc_malloc_start_settings({"MALLOC_MMAP_MAX_": "lots"}) == defaults


# Run in a fresh process started with `environment`: what glibc does after a training call's allocator setting
# ends. mmapped: a 64 MiB block is mmap'ed (glibc's default) or comes from the heap (M_MMAP_MAX 0); trimmed:
# freeing a 64 MiB heap block gives the memory back at once (trim threshold below it) or keeps it.
_AFTER_TRAINING = """
import ctypes, json
from mura_aug.devices import reuse_freed_cpu_memory

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
with reuse_freed_cpu_memory("cpu"):
    pass
size = 64 * 2 ** 20
before = libc.mallinfo2()
block = libc.malloc(size)
during = libc.mallinfo2()
libc.free(block)
after = libc.mallinfo2()
print(json.dumps({"mmapped": during.hblkhd - before.hblkhd >= size,
                  "trimmed": during.arena - after.arena >= size // 2}))
"""


def _after_training(environment) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env.update(environment, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", _AFTER_TRAINING], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@GLIBC_ONLY
@pytest.mark.parametrize("environment", [
    {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 30)},
    {"GLIBC_TUNABLES": f"glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={2 ** 30}"},
])
def test_a_training_call_restores_the_allocator_settings_the_process_started_with(environment):
    # Started without mmap and with a 1 GiB trim threshold, the process has both again afterwards (glibc's
    # nominal defaults instead would mmap the block and give the freed heap back).
    assert _after_training(environment) == {"mmapped": False, "trimmed": False}
    assert _after_training({}) == {"mmapped": True, "trimmed": False}  # the defaults: mmap'ed, so no heap


# --- cuDNN and TF32 during a CUDA training call (the flags are plain process settings: no GPU needed) -------

@pytest.fixture
def backend_flags():
    """torch's cuDNN / TF32 flags as a test found them, put back after it whatever it did."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32
    yield cudnn, matmul
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = before


def test_cuda_training_sets_nvidias_flags_and_restores_the_callers(backend_flags):
    cudnn, matmul = backend_flags
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = False, False, True, True
    with cuda_training_backends("cuda:0") as backends:
        assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (True, False, False)
        assert backends == {"cudnn_benchmark": True, "cudnn_deterministic": False, "tf32": False}
    assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (False, True, True)


def test_a_callers_deterministic_cudnn_keeps_benchmark_off(backend_flags):
    cudnn, _ = backend_flags
    cudnn.benchmark, cudnn.deterministic = False, True
    with cuda_training_backends(torch.device("cuda")) as backends:
        assert cudnn.benchmark is False and cudnn.deterministic is True
        assert backends["cudnn_benchmark"] is False
    assert cudnn.benchmark is False


def test_cuda_flags_are_restored_after_an_error_and_untouched_on_a_cpu(backend_flags):
    cudnn, matmul = backend_flags
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = False, False, True, True
    with pytest.raises(RuntimeError), cuda_training_backends("cuda"):
        raise RuntimeError("CUDA out of memory")
    assert (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (False, True, True)
    with cuda_training_backends("cpu") as backends:
        assert backends is None and (cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32) == (False, True, True)
