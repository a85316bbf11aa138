"""Reading a torch.save file (state, inference file, storage inside an NVlabs pickle) without running code.

    load_weights_only(path_or_buffer) -> the object          # UnsafeFileError when torch's check refuses it

torch.load(weights_only=True) refuses a file that names anything but tensors and plain values; its own
message then advises re-running with weights_only=False, i.e. running the file's code. A user must never be
told that, and a refused file is no truncated one: UnsafeFileError says what is true (REFUSED) and which
Python global the file names. Every other failure (a cut-off or damaged file) is torch's exception, unchanged,
for the caller to word.
"""
from __future__ import annotations

import os
import pickle
import re
from typing import Any, BinaryIO, Union

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


def load_weights_only(source: Union[str, os.PathLike, BinaryIO], name: Any = None) -> Any:
    """torch.load(source, CPU, weights_only=True); UnsafeFileError when the file names code (`name`: how to
    call the file in the message, default the path)."""
    import torch

    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if _TORCH_REFUSAL not in text:
            raise
        found = _GLOBAL_NAMED.search(text)
        raise refused(name if name is not None else source, found.group(1) if found else "") from None
