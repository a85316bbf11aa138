"""Small GAN training sets for the training tests: an NVlabs-layout dataset zip written into a workspace."""
import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from mura_aug.workspace import Workspace


def make_dataset(root: Path, cls: str = "positive", res: int = 16, count: int = 12) -> Workspace:
    """A workspace with an NVlabs-layout dataset zip: `count` bright bars on a dark field, one per class value."""
    workspace = Workspace(root).ensure()
    rng = np.random.default_rng(len(cls))
    yy, xx = np.mgrid[0:res, 0:res]
    with zipfile.ZipFile(workspace.datasets / f"XR_SHOULDER_{cls}_{res}.zip", "w") as archive:
        for index in range(count):
            centre = res / 2 + rng.normal() * res / 10
            pixels = 220 * np.exp(-((xx - centre) ** 2) / (2 * (res / 8) ** 2)) + rng.normal(0, 8, (res, res))
            buffer = io.BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).convert("RGB").save(buffer, format="PNG")
            archive.writestr(f"00000/img{index:08d}.png", buffer.getvalue())
        archive.writestr("dataset.json", json.dumps({"labels": None}))
    return workspace
