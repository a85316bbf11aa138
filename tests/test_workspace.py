import errno
import hashlib
import json
import os

import pytest

from mura_aug.errors import UserError
from mura_aug.workspace import (Workspace, atomic_path, atomic_write_json, atomic_write_text, body_part_folder,
                                file_sha256, free_bytes, resolve_workspace)


def test_layout_follows_the_original_work(tmp_path):
    ws = Workspace(tmp_path / "ws")
    assert ws.images_dir("positive") == ws.root / "data" / "images" / "positive"
    assert ws.augmented_dir("negative", "XR_SHOULDER") == ws.root / "data" / "Augmented_Fakes" / "negative" / "SHOULDER"
    assert ws.experiments == ws.root / "data" / "experiments"
    assert not ws.root.exists(), "constructing a Workspace must not create folders"
    ws.ensure()
    for path in (ws.images_dir("positive"), ws.images_dir("negative"), ws.datasets, ws.tables, ws.results):
        assert path.is_dir()


def test_unknown_class_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="positive, negative"):
        Workspace(tmp_path).images_dir("abnormal")


def test_body_part_folder():
    assert body_part_folder("XR_SHOULDER") == "SHOULDER"
    assert body_part_folder("xr_wrist") == "WRIST"


def test_resolve_workspace_refuses_a_file(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        resolve_workspace(target)


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "out" / "summary.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"], "no temp files left behind"


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "table.csv"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half written")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_full_disk_becomes_a_clear_error_and_keeps_old_file(tmp_path):
    path = tmp_path / "state.pt"
    atomic_write_text(path, "previous state")
    with pytest.raises(UserError, match="full") as info:
        with atomic_path(path) as tmp:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
    assert "Free some space" in str(info.value)
    assert path.read_text() == "previous state"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_free_bytes_of_a_missing_folder_uses_its_parent(tmp_path):
    assert free_bytes(tmp_path / "not" / "yet") > 0


@pytest.mark.parametrize("chunk_bytes", [1, 7, 4096, 2 ** 20])
def test_file_sha256_is_the_hash_of_the_whole_file_whatever_the_chunk(tmp_path, chunk_bytes):
    data = os.urandom(10_000)  # not a multiple of 7 or 4096: the last chunk is a short one
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path, chunk_bytes=chunk_bytes) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert file_sha256(empty, chunk_bytes=chunk_bytes) == hashlib.sha256(b"").hexdigest()


def test_file_sha256_agrees_with_the_hash_taken_while_writing(tmp_path):
    """The cached training arrays are hashed as they are written and checked with file_sha256 when read."""
    import numpy as np

    from mura_aug.gan import dataset

    path = tmp_path / "labels.npy"
    written = dataset._save_npy(path, np.arange(1000, dtype=np.int64))
    assert written == {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def test_file_sha256_of_a_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "missing.bin")
