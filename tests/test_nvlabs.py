"""Loading NVlabs StyleGAN2-ADA pickles: the round trip against the independent reference, refused globals,
numpy 1 / numpy 2 scalar paths, partial pickles and damaged files.

The test pickles are written by tests/nvlabs_pickles.py in NVlabs' format. Expected images come from
tests/nvlabs_reference.py applied to the very tensors that went into the pickle.
"""
from __future__ import annotations

import os
import pickle
import sys

import pytest
import torch

import nvlabs_reference as ref  # noqa: E402  (tests/ is on sys.path)
from mura_aug.errors import UserError
from mura_aug.gan import load_nvlabs_pkl, networks
from nvlabs_pickles import (C_DIM, CLAMP, G_KWARGS, MODULE_SRC_MARKER, RES, TRAINING_SET_KWARGS, Z_DIM,  # noqa: E402
                            nvlabs_networks, write_pickle)


@pytest.fixture(scope="module")
def source_nets():
    """The tensors that go into the test pickles (built with our classes only to get the right shapes)."""
    return nvlabs_networks()


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
