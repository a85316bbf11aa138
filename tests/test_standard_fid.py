"""FID that compares (issue 18, item 4): NVIDIA's FID network by default, the offline one only with a warning,
and every offline number labelled as such.

The network is blocked for every test (conftest.no_network); these tests rely on that, and check it too.
"""
from __future__ import annotations

import json
import socket
import warnings

import numpy as np
import pytest
import torch

from mura_aug import metrics as M
from mura_aug.gan import measure
from mura_aug.gan.plots import plot_snapshot_metrics, plot_training_metrics
from mura_aug.gan.settings import RunSettings
from mura_aug.workspace import Workspace
from metrics_helpers import TinyGenerator, blob_images, metrics_workspace, write_dataset_zip  # noqa: F401

OFFLINE = "offline FID (not comparable with published FIDs)"


@pytest.fixture
def nvidia_file_in(tmp_path):
    """Put a stand-in of NVIDIA's TorchScript FID network (uint8 in, return_features=True) into a workspace."""
    class FakeFidNetwork(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            return x.to(torch.float32).mean(dim=(2, 3)).repeat(1, 683)[:, :2048] / 255.0

    def put(workspace: Workspace):
        workspace.weights_cache.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch deprecates TorchScript loudly
            torch.jit.script(FakeFidNetwork()).save(str(workspace.weights_cache / M.NVIDIA_INCEPTION_FILE))
        return workspace

    return put


def test_the_tests_cannot_reach_the_internet():
    with pytest.raises(OSError):
        socket.create_connection(("nvlabs-fi-cdn.nvidia.com", 443), timeout=1)


def test_standard_features_fall_back_to_offline_with_a_warning_that_says_so(tmp_path):
    workspace = Workspace(tmp_path / "ws")
    with pytest.warns(M.OfflineFidWarning, match=r"offline FID \(not comparable with published FIDs\)") as caught:
        extractor = M.get_extractor(workspace=workspace)  # the default: standard
    assert str(workspace.weights_cache) in str(caught[0].message)  # where to copy the file by hand
    assert isinstance(extractor, M.OfflineExtractor) and extractor.name == "offline"
    assert not (workspace.weights_cache / M.NVIDIA_INCEPTION_FILE).exists()  # no half download left


def test_standard_features_use_nvidias_network_cached_in_the_workspace(tmp_path, nvidia_file_in):
    workspace = nvidia_file_in(Workspace(tmp_path / "ws"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", M.OfflineFidWarning)
        extractor = M.get_extractor("standard", workspace=workspace)
    assert extractor.name == "inception" and extractor.comparable_with_published
    assert extractor(blob_images(2, seed=0)).shape == (2, 2048)


def test_labels_have_one_wording():
    assert M.OFFLINE_FID_LABEL == OFFLINE
    assert M.metric_label("fid_offline") == OFFLINE
    assert M.metric_label("kid_offline") == "offline KID (not comparable with published KIDs)"
    assert M.metric_label("fid_inception") == "FID"
    assert "not the published" in M.metric_label("fid_inception", comparable_with_published=False)
    assert M.metric_label("diversity_ratio") == "diversity_ratio"


def test_training_offers_the_extractors_of_the_metrics_package():
    from mura_aug.gan import settings as gan_settings

    assert gan_settings.METRICS_EXTRACTORS == M.EXTRACTOR_NAMES
    assert RunSettings.default_of("metrics_extractor") == gan_settings.DEFAULT_METRICS_EXTRACTOR == M.DEFAULT_EXTRACTOR


def test_the_training_hook_measures_with_standard_features_by_default(tmp_path):
    settings = RunSettings(cfg="tiny", resolution=32, metrics_every=1, metrics_fakes=16, device="cpu").check()
    assert settings.metrics_extractor == "standard"
    hook = measure.snapshot_metrics(settings, workspace=Workspace(tmp_path / "ws"))
    reals = blob_images(20, seed=1)
    with pytest.warns(M.OfflineFidWarning):
        first = hook(TinyGenerator(), reals, np.zeros(20, dtype=np.int64), torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", M.OfflineFidWarning)  # the network is chosen once per training call
        hook(TinyGenerator(), reals, np.zeros(20, dtype=np.int64), torch.device("cpu"))
    assert np.isfinite(first["fid_offline"]) and first["fid_label"] == OFFLINE


def test_figures_and_printed_lines_label_offline_numbers(metrics_workspace, tmp_path, nvidia_file_in):
    workspace, run = metrics_workspace
    with pytest.warns(M.OfflineFidWarning):
        result = measure.measure_snapshot(workspace, run, num_fakes=16, progress=False)
    assert result["extractor_name"] == "offline" and result["fid_label"] == OFFLINE
    assert f"{OFFLINE} = " in measure.fid_line(result) and f"{OFFLINE} " in measure.format_summary(result)
    assert measure.latest_fid_text(workspace) == measure.fid_line(result)
    assert plot_snapshot_metrics(workspace, run).axes[0].get_title() == OFFLINE

    stats = tmp_path / "stats.jsonl"
    stats.write_text(json.dumps({"kimg": 1.0, "fid_offline": 30.0, "kid_offline": 0.02, "fid_label": OFFLINE}) + "\n")
    figure = plot_training_metrics(stats)
    assert OFFLINE in figure.axes[0].get_title() and figure.axes[0].get_legend().texts[0].get_text() == OFFLINE
    assert "offline KID" in figure.axes[1].get_title()

    # Once NVIDIA's network is in the workspace, the same call measures again with it: not the old result.
    nvidia_file_in(workspace)
    standard = measure.measure_snapshot(workspace, run, num_fakes=16, progress=False)
    assert not standard.get("reused") and standard["extractor_name"] == "inception"
    assert "fid_inception" in standard["metrics"]["positive"] and ": FID = " in measure.fid_line(standard)
