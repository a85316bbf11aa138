"""torch.save files of ours: read without running code, written so that a failing disk is named as such.

    load_weights_only(path_or_buffer) -> the object          # UnsafeFileError when torch's check refuses it
    save_torch_file(obj, path)                                # a failed write leaves as the OSError behind it

torch.load(weights_only=True) refuses a file that names anything but tensors and plain values; its own
message then advises re-running with weights_only=False, i.e. running the file's code. A user must never be
told that, and a refused file is no truncated one: UnsafeFileError says what is true (REFUSED) and which
Python global the file names. Every other failure (a cut-off or damaged file) is torch's exception, unchanged,
for the caller to word.

torch's zip writer reports a failed write (ENOSPC, EIO, ...) as `RuntimeError: ... unexpected pos N vs M`, so a
handler of full disks would never see it. save_torch_file gives the OSError back: the one raised inside the
writer where there is one, else ENOSPC when the disk has less room than the object needs.
"""
from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Optional, Union

from mura_aug.errors import UserError

REFUSED = "this file could not be verified as a safe weights-only file; it was not loaded"
# torch's refusal begins with this sentence (torch 2.4 - 2.14); the name it could not allow follows later.
_TORCH_REFUSAL = "Weights only load failed"
_GLOBAL_NAMED = re.compile(r"GLOBAL ([\w.]+)")


class UnsafeFileError(UserError):
    """A file torch's weights-only loader refused: it names code, not only weights."""


def refused(path, global_name: str = "") -> UnsafeFileError:
    """The UserError of a refused file (`global_name`: the Python global it names, when known)."""
    names = f" (it names the Python global {global_name})" if global_name else ""
    return UnsafeFileError(f"{path}: {REFUSED}{names}.",
                           "Use only snapshots written by mura_aug or NVlabs' stylegan2-ada-pytorch, from a source "
                           "you trust; never load this one another way. If it is one of yours, train the run again "
                           "from its previous snapshot.")


def load_weights_only(source: Union[str, os.PathLike, BinaryIO], name: Any = None, mmap: bool = False) -> Any:
    """torch.load(source, CPU, weights_only=True); UnsafeFileError when the file names code (`name`: how to
    call the file in the message, default the path). mmap: map the tensors instead of reading them (to look
    at a large file's plain values cheaply; a file path only)."""
    import torch

    try:
        if mmap:
            return torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if _TORCH_REFUSAL not in text:
            raise
        found = _GLOBAL_NAMED.search(text)
        raise refused(name if name is not None else source, found.group(1) if found else "") from None


def save_torch_file(obj: Any, path: Union[str, os.PathLike]) -> None:
    """torch.save(obj) into the file `path` (normally atomic_path's temporary file); a write that fails raises
    an OSError with errno and path (atomic_path turns ENOSPC into the full-disk message), not torch's
    RuntimeError."""
    import torch

    path = Path(path)
    try:
        with open(path, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
    except RuntimeError as exc:
        behind = _os_error_behind(exc)
        if behind is not None and behind.errno is not None:
            raise OSError(behind.errno, behind.strerror or os.strerror(behind.errno), str(path)) from exc
        if _free_bytes(path.parent) < _tensor_bytes(obj):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise


def _os_error_behind(exc: BaseException) -> Optional[OSError]:
    """The OSError a Python-side write raised inside torch's writer (Python keeps it as the context)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nest of dicts, lists and tuples (what torch.save must write at least)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(value) for value in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(value) for value in obj)
    return 0


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0  # a folder whose disk cannot even be asked: treat it as the failing one
