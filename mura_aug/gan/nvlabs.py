"""Read NVlabs StyleGAN2-ADA pickles (`network-snapshot-*.pkl`, the transfer-learning pickles) safely.

An NVlabs pickle stores each network as a "persistent object": the pickle stream calls
`torch_utils.persistence._reconstruct_persistent_obj(meta)` where `meta` holds the class name, the whole
source code of the module that defined it (`module_src`) and the object's `__dict__` (`state`: its
`_parameters`, `_buffers`, `_modules` and `_init_kwargs`). NVIDIA's own loader executes `module_src`. We
never do: a restricted unpickler replaces that function by one that just keeps `meta`, allows only the
globals needed to rebuild tensors, ordered dicts, sets and numpy scalars, and refuses everything else
with a UserError. The kept records are then turned into `mura_aug.gan.networks` modules built from
their `_init_kwargs`, and the tensors are copied over by name.
"""
from __future__ import annotations

import codecs
import collections
import inspect
import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Union

from mura_aug.errors import UserError
from mura_aug.gan.torch_files import REFUSED, load_weights_only

PathLike = Union[str, os.PathLike]
MAX_NAMES_SHOWN = 8  # how many missing / unexpected tensor names an error message lists


class PersistentRecord:
    """What `_reconstruct_persistent_obj(meta)` leaves of a persistent object: its class name and state
    (the source code is kept only as text and never executed)."""

    def __init__(self, meta):
        if not isinstance(meta, dict) or "class_name" not in meta or "state" not in meta:
            raise UserError("The pickle holds a persistent object without class_name/state; it is not a "
                            "StyleGAN2-ADA network pickle.",
                            "Pass a network-snapshot-*.pkl written by NVlabs' stylegan2-ada-pytorch.")
        self.class_name = str(meta["class_name"])
        self.short_name = self.class_name.rsplit(".", 1)[-1]  # NVlabs stores the bare class name
        self.version = meta.get("version")
        self.module_src = meta.get("module_src")
        self.state = meta["state"] if meta["state"] is not None else {}

    def __repr__(self):
        return f"PersistentRecord({self.class_name})"


class _EasyDictStandIn(dict):
    """Stands in for dnnlib.util.EasyDict (a dict with attribute access); only its items matter."""


def _reconstruct_persistent_obj(meta):
    return PersistentRecord(meta)


def _load_storage_bytes(data):
    """Stand-in for torch.storage._load_from_bytes: a storage pickled inside a pickle is a small torch.save
    file; read it with torch's own restricted loader instead of the unrestricted one."""
    return load_weights_only(io.BytesIO(data), name="a tensor storage inside this pickle")


def _allowed_globals():
    """(module, name) -> object for every global an NVlabs network pickle may name."""
    import numpy as np
    import torch
    import torch._utils

    numpy_scalar = np.float64(0).__reduce__()[0]  # numpy's scalar rebuilder, whatever module holds it
    allowed = {
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): _EasyDictStandIn,
        ("dnnlib", "EasyDict"): _EasyDictStandIn,
        ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
        ("collections", "OrderedDict"): collections.OrderedDict,
        # Protocol 2/3 pickles (Python 3.7, what NVlabs ran) spell module sets and bytes with globals.
        ("builtins", "set"): set,
        ("__builtin__", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("_codecs", "encode"): codecs.encode,
        # numpy 1 writes numpy.core.multiarray, numpy 2 numpy._core.multiarray.
        ("numpy.core.multiarray", "scalar"): numpy_scalar,
        ("numpy._core.multiarray", "scalar"): numpy_scalar,
        ("numpy", "dtype"): np.dtype,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"):
        if hasattr(torch._utils, name):
            allowed[("torch._utils", name)] = getattr(torch._utils, name)
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path
        self._allowed = _allowed_globals()

    def find_class(self, module, name):
        found = self._allowed.get((module, name))
        if found is not None:
            return found
        if module.startswith("dnnlib.tflib"):
            raise UserError(f"{self._path} is a TensorFlow StyleGAN/StyleGAN2 pickle (it names {module}.{name}).",
                            "Convert it first with legacy.py of NVlabs' stylegan2-ada-pytorch "
                            "(python legacy.py --source=OLD.pkl --dest=NEW.pkl), then load NEW.pkl.")
        raise UserError(f"{self._path}: {REFUSED} (it names the Python global {module}.{name}, which a "
                        "StyleGAN2-ADA network pickle never contains, and loading it could run code).",
                        "Only load network-snapshot-*.pkl files written by NVlabs' stylegan2-ada-pytorch (or "
                        "mura_aug's network-*.pt files). If this file is one, report the global named here.")

    def persistent_load(self, pid):
        raise UserError(f"{self._path} uses pickle persistent ids ({str(pid)[:60]}); it is not an NVlabs "
                        "network pickle (it may be a torch.save file).",
                        "Pass a .pkl from NVlabs' stylegan2-ada-pytorch, or load .pt files with load_generator.")


def _plain(value):
    """EasyDicts -> dicts, tuples -> lists, numpy scalars -> Python numbers (JSON-able init kwargs)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tensors_of(record: PersistentRecord, prefix: str, out: dict):
    """Flatten a record tree into {'mapping.fc0.weight': tensor, ...} (parameters and persistent buffers)."""
    state = record.state
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    for key in ("_parameters", "_buffers"):
        for name, tensor in (state.get(key) or {}).items():
            if tensor is not None and not (key == "_buffers" and name in skipped):
                out[prefix + name] = tensor
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise UserError(f"Submodule {prefix + name} of {record.class_name} is a {type(child).__name__}, not a "
                            "StyleGAN2-ADA network part.",
                            "This pickle comes from modified NVlabs code; it cannot be loaded by mura_aug.")
        _tensors_of(child, f"{prefix}{name}.", out)
    return out


def _constructor_kwargs(record: PersistentRecord, cls) -> dict:
    """The record's _init_args / _init_kwargs as keyword arguments of our class."""
    args = list(_plain(record.state.get("_init_args") or ()))
    kwargs = _plain(record.state.get("_init_kwargs") or {})
    if args:
        names = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        kwargs.update(zip(names, args))
    return kwargs


def _names_list(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    return shown + (f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else "")


def _module_from_record(record: PersistentRecord, key: str, path: Path):
    """Build our Generator / Discriminator from the record's init kwargs and copy its tensors by name."""
    from mura_aug.gan import networks

    classes = {"Generator": networks.Generator, "Discriminator": networks.Discriminator}
    cls = classes.get(record.short_name)
    if cls is None:
        raise UserError(f"{path}: '{key}' is a {record.class_name}, not a StyleGAN2-ADA Generator/Discriminator.",
                        "Pass a network-snapshot-*.pkl from NVlabs' stylegan2-ada-pytorch.")
    tensors = _tensors_of(record, "", {})
    if cls is networks.Generator and not any(k.startswith("synthesis.b4.") for k in tensors):
        raise UserError(f"{path}: '{key}' is not a StyleGAN2 generator (no synthesis.b4 block); StyleGAN3 "
                        "(alias-free) networks are a different architecture.",
                        "Use a StyleGAN2-ADA pickle (for example NVlabs' transfer-learning ffhq256 pickle).")
    kwargs = _constructor_kwargs(record, cls)
    try:
        module = cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"{path}: '{key}' was built with arguments mura_aug does not know ({exc}); kwargs: {kwargs}.",
                        "This pickle comes from modified NVlabs code; mura_aug reads stock stylegan2-ada-pytorch.") \
            from exc
    ours = module.state_dict()
    missing, unexpected = set(ours) - set(tensors), set(tensors) - set(ours)
    if missing or unexpected:
        raise UserError(f"{path}: the weights of '{key}' do not match its architecture. "
                        f"Missing in the pickle: {_names_list(missing) or 'none'}. "
                        f"Not expected: {_names_list(unexpected) or 'none'}.",
                        "The pickle was written by modified NVlabs code or is damaged; use an official one.")
    wrong_shape = [f"{name} {tuple(tensors[name].shape)} (expected {tuple(ours[name].shape)})"
                   for name in ours if tuple(tensors[name].shape) != tuple(ours[name].shape)]
    if wrong_shape:
        raise UserError(f"{path}: tensors of '{key}' have unexpected shapes: {_names_list(wrong_shape)}.",
                        "The pickle was written by modified NVlabs code or is damaged; use an official one.")
    module.load_state_dict({name: tensors[name].detach().to(ours[name].dtype) for name in ours})
    return module.eval().requires_grad_(False)


def _augment_p(record, path: Path):
    """ADA's augmentation probability from the AugmentPipe's `p` buffer (None when ADA was off)."""
    if record is None:
        return None
    if not isinstance(record, PersistentRecord) or record.short_name != "AugmentPipe":
        raise UserError(f"{path}: 'augment_pipe' is a {type(record).__name__}, not an AugmentPipe.",
                        "Pass a network-snapshot-*.pkl from NVlabs' stylegan2-ada-pytorch.")
    p = (record.state.get("_buffers") or {}).get("p")
    return None if p is None else float(p)


def load_nvlabs_pkl(path: PathLike) -> dict:
    """Load an NVlabs StyleGAN2-ADA pickle without NVlabs code and without running code from the file.

    Returns dict(G, D, G_ema, augment_p, training_set_kwargs): our Generator / Discriminator modules
    (eval mode, requires_grad False, on the CPU), ADA's p as a float and the dataset options as a plain
    dict. Parts missing from the pickle (transfer pickles may hold only G_ema) are None.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"No NVlabs pickle at {path}.",
                        "Check the path (a network-snapshot-*.pkl file; in Colab, mount Drive first).")
    if zipfile.is_zipfile(path):
        raise UserError(f"{path} is a zip archive (a torch.save file or a dataset), not an NVlabs network pickle.",
                        "Load mura_aug's network-*.pt / state-*.pt files with mura_aug.gan.load_generator; "
                        "pass only NVlabs' network-snapshot-*.pkl files here.")
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, path).load()
    except UserError:
        raise
    except Exception as exc:  # any parse failure of a damaged file (EOFError, UnpicklingError, struct errors, ...)
        raise UserError(f"{path} cannot be read as a pickle ({type(exc).__name__}: {exc}); it is probably "
                        "truncated (an interrupted download or copy) or not a pickle.",
                        "Download or copy the file again and compare its size with the original.") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} holds a {type(data).__name__}, not the dict of an NVlabs network snapshot.",
                        "Pass a network-snapshot-*.pkl from NVlabs' stylegan2-ada-pytorch.")
    result = {}
    for key in ("G", "D", "G_ema"):
        record = data.get(key)
        if record is not None and not isinstance(record, PersistentRecord):
            raise UserError(f"{path}: '{key}' is a {type(record).__name__}, not an NVlabs network.",
                            "Pass a network-snapshot-*.pkl from NVlabs' stylegan2-ada-pytorch.")
        result[key] = None if record is None else _module_from_record(record, key, path)
    if result["G"] is None and result["G_ema"] is None and result["D"] is None:
        raise UserError(f"{path} holds none of G, D, G_ema (keys: {sorted(map(str, data))}).",
                        "Pass a network-snapshot-*.pkl from NVlabs' stylegan2-ada-pytorch.")
    result["augment_p"] = _augment_p(data.get("augment_pipe"), path)
    training_set_kwargs = data.get("training_set_kwargs")
    result["training_set_kwargs"] = None if training_set_kwargs is None else _plain(training_set_kwargs)
    return result
