"""Loading NVlabs StyleGAN2-ADA pickles: the round trip against the independent reference, refused globals,
numpy 1 / numpy 2 scalar paths, partial pickles and damaged files.

The test pickles are written here in NVlabs' format: every network part pickles as
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with meta = dict(type, version, module_src,
class_name, state) and state = the module's __dict__ as torch 1.x had it, `_init_kwargs` as
`dnnlib.util.EasyDict`. Stand-in `torch_utils` / `dnnlib` modules exist in sys.modules only while pickling,
so nothing NVlabs is importable when the loader runs. Expected images come from tests/nvlabs_reference.py
applied to the very tensors that went into the pickle.
"""
from __future__ import annotations

import collections
import contextlib
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from mura_aug.errors import UserError
from mura_aug.gan import load_nvlabs_pkl, networks

sys.path.insert(0, str(Path(__file__).parent))
import nvlabs_reference as ref  # noqa: E402

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


@pytest.fixture(scope="module")
def source_nets():
    """The tensors that go into the test pickles (built with our classes only to get the right shapes)."""
    return dict(G=randomized(networks.Generator(**G_KWARGS), 1), G_ema=randomized(networks.Generator(**G_KWARGS), 2),
                D=randomized(networks.Discriminator(**D_KWARGS), 3))


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


@pytest.fixture(scope="module")
def snapshot(source_nets, tmp_path_factory):
    path = tmp_path_factory.mktemp("nvlabs") / "network-snapshot-000120.pkl"
    write_pickle(path, source_nets)
    return path


def test_round_trip_matches_the_reference(snapshot, source_nets):
    assert "torch_utils" not in sys.modules and "dnnlib" not in sys.modules
    loaded = load_nvlabs_pkl(snapshot)
    assert not (snapshot.parent / MODULE_SRC_MARKER).exists()
    assert "torch_utils" not in sys.modules
    assert isinstance(loaded["G_ema"], networks.Generator) and isinstance(loaded["D"], networks.Discriminator)
    assert loaded["augment_p"] == pytest.approx(0.375)
    assert loaded["training_set_kwargs"] == TRAINING_SET_KWARGS and type(loaded["training_set_kwargs"]) is dict
    G_ema = loaded["G_ema"]
    assert G_ema.init_kwargs == G_KWARGS and G_ema.num_ws == 8
    z = torch.randn(4, Z_DIM, generator=torch.Generator().manual_seed(7))
    c = torch.eye(C_DIM)[[0, 1, 1, 0]]
    params = source_nets["G_ema"].state_dict()
    for psi, cutoff in ((1, None), (0.6, 4)):
        expected = ref.generator(params, z, c, psi, cutoff, conv_clamp=CLAMP)
        got = G_ema(z, c, truncation_psi=psi, truncation_cutoff=cutoff, noise_mode="const")
        assert (got - expected).abs().max().item() < 1e-4
    # G and G_ema are kept apart (different weights, different images).
    assert not torch.allclose(loaded["G"](z, c, noise_mode="const"), got)
    img = torch.tanh(torch.randn(8, 3, RES, RES, generator=torch.Generator().manual_seed(8)))
    c8 = torch.eye(C_DIM)[torch.arange(8) % 2]
    expected_logits = ref.discriminator(source_nets["D"].state_dict(), img, c8, conv_clamp=CLAMP)
    assert (loaded["D"](img, c8) - expected_logits).abs().max().item() < 1e-4


def test_numpy1_and_numpy2_scalar_paths(tmp_path, source_nets):
    payload = write_pickle(tmp_path / "numpy2.pkl", source_nets, parts=("G_ema",))
    numpy2, numpy1 = b"cnumpy._core.multiarray\nscalar\n", b"cnumpy.core.multiarray\nscalar\n"
    assert numpy2 in payload and numpy1 not in payload  # the numpy 2 spelling, as written by this numpy
    (tmp_path / "numpy1.pkl").write_bytes(payload.replace(numpy2, numpy1))
    for name in ("numpy2.pkl", "numpy1.pkl"):
        G = load_nvlabs_pkl(tmp_path / name)["G_ema"]
        assert torch.equal(G.mapping.fc0.weight, source_nets["G_ema"].mapping.fc0.weight)


def test_qualified_class_names_and_protocol_4(tmp_path, source_nets):
    path = tmp_path / "qualified.pkl"
    write_pickle(path, source_nets, parts=("G_ema", "D"), protocol=4, class_prefix="training.networks.")
    loaded = load_nvlabs_pkl(path)
    assert isinstance(loaded["G_ema"], networks.Generator) and isinstance(loaded["D"], networks.Discriminator)


def test_transfer_pickle_with_only_G_ema(tmp_path, source_nets):
    path = tmp_path / "transfer.pkl"
    write_pickle(path, source_nets, parts=("G_ema",))
    loaded = load_nvlabs_pkl(path)
    assert loaded["G"] is None and loaded["D"] is None
    assert loaded["augment_p"] is None and loaded["training_set_kwargs"] is None
    assert loaded["G_ema"].synthesis.b32.torgb.bias.tolist() == source_nets["G_ema"].synthesis.b32.torgb.bias.tolist()


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_foreign_global_is_refused(tmp_path, source_nets):
    path = tmp_path / "evil.pkl"
    marker = tmp_path / "shell_ran"
    write_pickle(path, source_nets, parts=("G_ema",), extra={"payload": RunsAShellCommand(marker)})
    with pytest.raises(UserError, match=r"(posix|os|nt)\.system") as info:
        load_nvlabs_pkl(path)
    assert "not loaded" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_tensorflow_pickle_gets_a_conversion_hint(tmp_path):
    path = tmp_path / "tf.pkl"
    path.write_bytes(b"\x80\x03cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01.")
    with pytest.raises(UserError, match="legacy.py"):
        load_nvlabs_pkl(path)


def test_missing_and_unexpected_tensors_are_named(tmp_path, source_nets):
    path = tmp_path / "missing.pkl"
    write_pickle(path, source_nets, parts=("G_ema",), drop=("synthesis.b16.conv0.noise_strength",))
    with pytest.raises(UserError, match=r"synthesis\.b16\.conv0\.noise_strength"):
        load_nvlabs_pkl(path)


def test_damaged_or_wrong_files(tmp_path, snapshot):
    with pytest.raises(UserError, match="No NVlabs pickle"):
        load_nvlabs_pkl(tmp_path / "nope.pkl")
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(snapshot.read_bytes()[: snapshot.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated"):
        load_nvlabs_pkl(truncated)
    not_a_dict = tmp_path / "list.pkl"
    not_a_dict.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UserError, match="list"):
        load_nvlabs_pkl(not_a_dict)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(pickle.dumps({"progress": 1}))
    with pytest.raises(UserError, match="none of G, D, G_ema"):
        load_nvlabs_pkl(empty)
    legacy_torch_file = tmp_path / "state.pkl"
    torch.save({"w": torch.zeros(2)}, legacy_torch_file, _use_new_zipfile_serialization=False)
    with pytest.raises(UserError, match="not the dict of an NVlabs network snapshot"):
        load_nvlabs_pkl(legacy_torch_file)
    zip_torch_file = tmp_path / "network.pkl"
    torch.save({"w": torch.zeros(2)}, zip_torch_file)
    with pytest.raises(UserError, match="load_generator"):
        load_nvlabs_pkl(zip_torch_file)


def test_load_generator_reads_nvlabs_pickles(snapshot, source_nets):
    from mura_aug.gan import load_generator

    G = load_generator(snapshot)
    assert isinstance(G, networks.Generator) and not G.training
    z, c = torch.randn(2, Z_DIM), torch.eye(C_DIM)
    expected = source_nets["G_ema"](z, c, noise_mode="const")
    assert torch.allclose(G(z, c, noise_mode="const"), expected, atol=1e-5)
