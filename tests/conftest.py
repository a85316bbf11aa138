"""Shared, session-scoped fixtures: a demo MURA tree, a prepared workspace and a tiny trained GAN run.

Each fixture is built once per test session in a temporary folder and must be treated as read-only by
tests; a test that changes files copies the fixture first (see `copy_workspace`).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

DEMO_PATIENTS = 24  # small: about a hundred images, enough for every stage's tests
TEST_RESOLUTION = 32  # px, GAN datasets in tests


@pytest.fixture(scope="session")
def demo_mura(tmp_path_factory) -> Path:
    """A read-only MURA-v1.1-shaped folder of generated radiographs (XR_SHOULDER)."""
    from mura_aug.prepare.demo_data import make_demo_mura

    root = make_demo_mura(tmp_path_factory.mktemp("demo_mura"), patients=DEMO_PATIENTS, seed=0)
    return Path(root)


@pytest.fixture(scope="session")
def prepared_workspace(demo_mura, tmp_path_factory):
    """A workspace after stage 01 on the demo tree, GAN datasets at TEST_RESOLUTION px."""
    from mura_aug.prepare.stage import prepare
    from mura_aug.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("prepared") / "workspace")
    prepare(demo_mura, workspace, resolution=TEST_RESOLUTION, workers=1, progress=False)
    return workspace


@pytest.fixture
def copy_workspace(tmp_path):
    """Return a function that copies a (fixture) workspace into this test's tmp_path."""
    from mura_aug.workspace import Workspace

    def _copy(workspace) -> Workspace:
        target = tmp_path / "workspace_copy"
        shutil.copytree(Workspace(workspace).root, target)
        return Workspace(target)

    return _copy
