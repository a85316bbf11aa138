"""Training that survives Colab (issue 16): time-based snapshots, ticks on absolute kimg across cuts, staged
snapshots on an unreliable workspace, faults injected at the OS call."""
import pytest

from mura_aug.gan import snapshot as snap

from gan_datasets import make_dataset  # noqa: E402  (tests/ is on sys.path)
from gan_training import TICK_KIMG, train_tiny  # noqa: E402


def test_snap_minutes_snapshots_between_snap_ticks(tmp_path):
    workspace = make_dataset(tmp_path / "ws")
    messages = []
    # SNAP 100 ticks would snapshot only at the end; 0.0001 minutes (6 ms) passes within every tick.
    run_dir = train_tiny(workspace, kimg=3 * TICK_KIMG, snap=100, snap_minutes=0.0001, log=messages.append)
    assert [info.kimg for info in snap.list_snapshots(run_dir)] == pytest.approx([TICK_KIMG * k for k in (1, 2, 3)])
    assert any("a kill loses at most" in m and "0.0001 minutes" in m for m in messages)
    only_ticks = train_tiny(make_dataset(tmp_path / "ws2"), kimg=3 * TICK_KIMG, snap=2, snap_minutes=None)
    assert [info.kimg for info in snap.list_snapshots(only_ticks)] == pytest.approx([2 * TICK_KIMG, 3 * TICK_KIMG])
