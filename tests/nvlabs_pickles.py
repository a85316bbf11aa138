"""NVlabs StyleGAN2-ADA pickles written for the tests, in NVlabs' format, without NVlabs' code.

Every network part pickles as `torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta =
dict(type, version, module_src, class_name, state) and state = the module's __dict__ as torch 1.x had it,
`_init_kwargs` as `dnnlib.util.EasyDict`. Stand-in `torch_utils` / `dnnlib` modules exist in sys.modules only
while pickling, so nothing NVlabs is importable when the loader runs. Used by test_nvlabs and test_resume.
"""
from __future__ import annotations

import collections
import contextlib
import pickle
import sys
import types

import numpy as np
import torch

from mura_aug.gan import networks

RES, Z_DIM, C_DIM, CLAMP = 32, 24, 2, 256  # px, latent size, one-hot classes, conv_clamp
G_KWARGS = dict(z_dim=Z_DIM, c_dim=C_DIM, w_dim=Z_DIM, img_resolution=RES, img_channels=3,
                mapping_kwargs=dict(num_layers=2),
                synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=2, conv_clamp=CLAMP))
D_KWARGS = dict(c_dim=C_DIM, img_resolution=RES, img_channels=3, architecture="resnet", channel_base=256,
                channel_max=16, num_fp16_res=2, conv_clamp=CLAMP, block_kwargs={}, mapping_kwargs={},
                epilogue_kwargs=dict(mbstd_group_size=4))
TRAINING_SET_KWARGS = dict(class_name="training.dataset.ImageFolderDataset", path="/data/shoulder.zip",
                           use_labels=True, max_size=120, xflip=False, resolution=RES)
MODULE_SRC_MARKER = "module_src_was_executed"


@contextlib.contextmanager
def fake_nvlabs_modules():
    """torch_utils.persistence and dnnlib.util stand-ins, importable only inside this block."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):
        raise AssertionError("the stand-in is only for pickling")

    class EasyDict(dict):
        pass

    _reconstruct_persistent_obj.__module__ = persistence.__name__
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    EasyDict.__module__, EasyDict.__qualname__ = util.__name__, "EasyDict"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util.EasyDict = EasyDict
    names = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
             "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    assert not any(name in sys.modules for name in names)
    sys.modules.update(names)
    try:
        yield persistence, util
    finally:
        for name in names:
            del sys.modules[name]


class Persistent:
    """Pickles like an NVlabs persistent object."""

    def __init__(self, meta, persistence):
        self.meta, self.persistence = meta, persistence

    def __reduce__(self):
        return self.persistence._reconstruct_persistent_obj, (self.meta,)


def module_state(module, persistence, util, class_prefix, tmp_path, drop=()):
    """An NVlabs-style meta dict for one of our modules (and, recursively, its children)."""
    children = collections.OrderedDict(
        (name, module_state(child, persistence, util, class_prefix, tmp_path,
                            drop=[d.split(".", 1)[1] for d in drop if d.startswith(name + ".")]))
        for name, child in module.named_children())
    state = {
        "training": False,
        "_parameters": collections.OrderedDict((k, v) for k, v in module._parameters.items() if k not in drop),
        "_buffers": collections.OrderedDict((k, v) for k, v in module._buffers.items() if k not in drop),
        "_non_persistent_buffers_set": set(),
        "_backward_hooks": collections.OrderedDict(),
        "_forward_hooks": collections.OrderedDict(),
        "_forward_pre_hooks": collections.OrderedDict(),
        "_state_dict_hooks": collections.OrderedDict(),
        "_load_state_dict_pre_hooks": collections.OrderedDict(),
        "_modules": children,
        "_init_args": (),
        "_init_kwargs": util.EasyDict(getattr(module, "init_kwargs", {})),
    }
    for attr in ("weight_gain", "act_gain", "bias_gain"):  # numpy scalars in NVlabs' modules
        if hasattr(module, attr):
            state[attr] = np.float64(getattr(module, attr))
    # Executing this source would leave a marker file: the loader must never do it.
    source = f"open({str(tmp_path / MODULE_SRC_MARKER)!r}, 'w').close()\n"
    meta = dict(type="class", version=6, module_src=source, class_name=class_prefix + type(module).__name__,
                state=state)
    return Persistent(meta, persistence)


def augment_pipe_state(p, persistence, util):
    state = {"training": False, "_parameters": collections.OrderedDict(),
             "_buffers": collections.OrderedDict(p=torch.tensor(p), Hz_geom=torch.randn(12)),
             "_modules": collections.OrderedDict(), "_init_args": (),
             "_init_kwargs": util.EasyDict(xflip=1, rotate90=1, xint=1, scale=1, rotate=1, aniso=1, xfrac=1)}
    return Persistent(dict(type="class", version=6, module_src="", class_name="AugmentPipe", state=state),
                      persistence)


def randomized(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith(("bias", "noise_strength", "w_avg")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.3)
            elif name.endswith(("weight", "const")):
                tensor.copy_(torch.randn(tensor.shape, generator=gen))
    return module.eval().requires_grad_(False)


def write_pickle(path, nets, parts=("G", "D", "G_ema", "augment_pipe", "training_set_kwargs"), protocol=3,
                 class_prefix="", drop=(), extra=None):
    with fake_nvlabs_modules() as (persistence, util):
        data = {}
        for key in ("G", "D", "G_ema"):
            if key in parts:
                data[key] = module_state(nets[key], persistence, util, class_prefix, path.parent, drop)
        if "augment_pipe" in parts:
            data["augment_pipe"] = augment_pipe_state(0.375, persistence, util)
        if "training_set_kwargs" in parts:
            data["training_set_kwargs"] = util.EasyDict(TRAINING_SET_KWARGS)
        data.update(extra or {})
        payload = pickle.dumps(data, protocol=protocol)
    path.write_bytes(payload)
    return payload


def nvlabs_networks():
    """G (seed 1), G_ema (seed 2) and D (seed 3) with random weights at 32 px, c_dim 2."""
    nets = {key: randomized(networks.Generator(**G_KWARGS), seed) for key, seed in (("G", 1), ("G_ema", 2))}
    nets["D"] = randomized(networks.Discriminator(**D_KWARGS), 3)
    return nets
