"""Shared by the metrics tests: tiny blob images, a stand-in generator with NVlabs' interface, an
NVlabs-layout dataset zip and a workspace holding one run of that generator."""
from __future__ import annotations

import io
import json
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from mura_aug.workspace import Workspace

RES = 32  # px


def blob_images(count: int, seed: int, res: int = RES) -> np.ndarray:
    """uint8 [count, 3, res, res]: 3 Gaussian blobs of random place, width and brightness per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res] / res
    images = np.zeros((count, res, res))
    for i in range(count):
        for _ in range(3):
            cy, cx, width, amp = rng.random(), rng.random(), 0.05 + 0.2 * rng.random(), 0.3 + 0.7 * rng.random()
            images[i] += amp * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width ** 2))
    grey = (np.clip(images, 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[:, None], 3, axis=1)


class TinyGenerator(torch.nn.Module):
    """A stand-in with the NVlabs generator interface: G(z, c, truncation_psi, noise_mode) -> [-1, 1] NCHW."""

    def __init__(self, z_dim=8, c_dim=0, w_dim=8, img_resolution=RES, img_channels=3, collapse=False):
        super().__init__()
        self.init_kwargs = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                img_channels=img_channels, collapse=collapse)
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels, self.collapse = img_resolution, img_channels, collapse
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(z_dim + c_dim, img_channels * 8 * 8)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, noise_mode="const"):
        if self.collapse:
            z = torch.zeros_like(z)
        x = self.fc(torch.cat([z * truncation_psi, c], dim=1)).reshape(len(z), self.img_channels, 8, 8)
        return torch.tanh(torch.nn.functional.interpolate(x, size=self.img_resolution, mode="bilinear"))


def write_dataset_zip(path, images):
    """An NVlabs-layout dataset zip as stage 01 writes it."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for index, image in enumerate(images):
            buffer = io.BytesIO()
            Image.fromarray(image.transpose(1, 2, 0)).save(buffer, format="PNG")
            archive.writestr(f"{index // 1000:05d}/img{index:08d}.png", buffer.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": None}))


@pytest.fixture
def metrics_workspace(tmp_path, monkeypatch):
    """A workspace with a dataset zip and one run holding a network file of the stand-in generator."""
    from mura_aug.gan.network_file import save_network_file

    networks = types.ModuleType("mura_aug.gan.networks")
    networks.Generator = TinyGenerator
    monkeypatch.setitem(sys.modules, "mura_aug.gan.networks", networks)
    workspace = Workspace(tmp_path / "ws").ensure()
    write_dataset_zip(workspace.datasets / f"XR_SHOULDER_positive_{RES}.zip", blob_images(40, seed=0))
    run = f"XR_SHOULDER-positive-tiny-{RES}"
    run_dir = workspace.experiments / run
    save_network_file(run_dir / "network-000000.500kimg.pt", TinyGenerator(), kimg=0.5, run=run, label="positive")
    save_network_file(run_dir / "network-000001.000kimg.pt", TinyGenerator(), kimg=1.0, run=run, label="positive")
    return workspace, run
