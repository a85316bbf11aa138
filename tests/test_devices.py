"""One device rule for every stage (mura_aug.devices.resolve_device)."""
import pytest
import torch

from mura_aug.devices import resolve_device
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
