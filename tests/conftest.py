"""Shared, session-scoped fixtures: a demo MURA tree, a prepared workspace, and for stage 06 that workspace
with synthetic rows and a finished tiny experiment.

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
    """A read-only MURA-v1.1-shaped folder of generated radiographs (XR_SHOULDER), its abnormal sign at full
    strength: stage 06's tests need a sign a tiny classifier learns in a few epochs."""
    from mura_aug.prepare.demo_data import EASY_SUBTLETY, make_demo_mura

    root = make_demo_mura(tmp_path_factory.mktemp("demo_mura"), patients=DEMO_PATIENTS, seed=0,
                          subtlety=EASY_SUBTLETY)
    return Path(root)


@pytest.fixture(scope="session")
def prepared_workspace(demo_mura, tmp_path_factory):
    """A workspace after stage 01 on the demo tree, GAN datasets at TEST_RESOLUTION px."""
    from mura_aug.prepare import stage
    from mura_aug.prepare.settings import PrepareSettings
    from mura_aug.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("prepared") / "workspace")
    settings = PrepareSettings(mura_path=str(demo_mura), resolution=TEST_RESOLUTION, workers=1)
    stage.run_stage(workspace, settings, progress=False)
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


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """No test reaches the internet (NVIDIA's FID network, ImageNet weights): looking up or connecting to any
    host but this machine fails as it does offline. This machine stays reachable (kernels, DDP's store)."""
    import socket

    local = {None, "", "localhost", "0.0.0.0", "::1", socket.gethostname()}
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def is_local(host) -> bool:
        return host in local or str(host).startswith("127.")

    def getaddrinfo(host, *args, **kwargs):
        if not is_local(host):
            raise socket.gaierror(socket.EAI_NONAME, f"no network in the tests (looked up {host})")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple) and not is_local(address[0]):
            raise OSError(f"no network in the tests (connected to {address[0]})")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


# --- stage 06 ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def eval_workspace(prepared_workspace, tmp_path_factory):
    """A private copy of the prepared workspace plus synthetic rows, as stage 05 would add them."""
    from evaluation_data import add_synthetic_rows
    from mura_aug.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("eval") / "workspace")
    shutil.copytree(prepared_workspace.root, workspace.root)
    add_synthetic_rows(workspace)
    return workspace


@pytest.fixture(scope="session")
def finished_experiment(eval_workspace, tmp_path_factory):
    """Both arms, one seed, the tiny CNN at 64 px, run through the CLI on a copy of eval_workspace:
    (workspace, the experiment's EvaluationFolder)."""
    from evaluation_data import BODY
    from mura_aug import cli
    from mura_aug.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("experiment") / "workspace")
    shutil.copytree(eval_workspace.root, workspace.root)
    status = cli.main(["evaluate", "--workspace", str(workspace.root), "--arch", "tiny", "--image-size", "64",
                       "--epochs", "6", "--seeds", "1", "--synth-ratio", "0.5", "--batch-size", "16",
                       "--val-fraction", "0.2", "--patience", "8", "--n-boot", "200", "--workers", "0"])
    assert status == 0
    return workspace, workspace.evaluation(BODY, "tiny-64px-scratch")

