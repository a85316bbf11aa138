"""The workspace: where every stage reads and writes, and how it writes safely.

In Colab the workspace root is Google Drive (`/content/drive/MyDrive`, mounted on first use); elsewhere a
folder the user names (default `./workspace`). The layout is documented in `drive_layout.md`.

All writes of results go through the atomic helpers here: write to a temporary name in the same folder,
flush and fsync, then rename over the final name. A crash or a Colab disconnect mid-write leaves either the
old file or the new one, never a truncated file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

from mura_aug.errors import UserError

PathLike = Union[str, os.PathLike]

CLASSES = ("positive", "negative")  # 'positive' = abnormal, as in MURA's folder names
COLAB_DRIVE_MOUNT = "/content/drive"
COLAB_DRIVE_ROOT = "/content/drive/MyDrive"
COLAB_LOCAL_CACHE = "/content/mura_aug_cache"  # fast local disk in a Colab VM, lost on disconnect
DEFAULT_LOCAL_ROOT = "./workspace"


def is_colab() -> bool:
    """True inside a Google Colab kernel."""
    return "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG") is not None


def mount_drive(mountpoint: str = COLAB_DRIVE_MOUNT) -> Path:
    """Mount Google Drive in Colab (asks for permission once) and return MyDrive."""
    if not is_colab():
        raise UserError("Google Drive can only be mounted inside Google Colab.",
                        "Pass a local folder as the workspace instead (for example ./workspace).")
    root = Path(mountpoint) / "MyDrive"
    if not root.is_dir():
        from google.colab import drive  # type: ignore  # only importable in Colab

        drive.mount(mountpoint)
    return root


def body_part_folder(body_part: str) -> str:
    """'XR_SHOULDER' -> 'SHOULDER' (the folder name the original work used under Augmented_Fakes)."""
    return body_part.upper().removeprefix("XR_")


class Workspace:
    """Paths of the workspace layout. Creating a Workspace creates no folders; `ensure()` does."""

    def __init__(self, root: PathLike):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    # --- the layout -------------------------------------------------------------------------------
    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def images(self) -> Path:
        """Copied and renamed MURA images: data/images/{positive,negative}/."""
        return self.data / "images"

    def images_dir(self, cls: str) -> Path:
        _check_class(cls)
        return self.images / cls

    @property
    def datasets(self) -> Path:
        """GAN-ready datasets (one per body part, class and resolution)."""
        return self.data / "datasets"

    @property
    def experiments(self) -> Path:
        """GAN training runs, one folder per run."""
        return self.data / "experiments"

    @property
    def tables(self) -> Path:
        """Training / validation tables as CSV."""
        return self.data / "tables"

    def augmented_dir(self, cls: str, body_part: str = "XR_SHOULDER") -> Path:
        """data/Augmented_Fakes/{positive,negative}/<BODY_PART>/, as in the original work."""
        _check_class(cls)
        return self.data / "Augmented_Fakes" / cls / body_part_folder(body_part)

    @property
    def results(self) -> Path:
        """Stage outputs meant for people: evaluation results, metrics, executed notebooks."""
        return self.root / "results"

    @property
    def cache(self) -> Path:
        """Fast local cache (training arrays, downloaded weights). In Colab on the VM's disk, not Drive."""
        if is_colab() and str(self.root).startswith(COLAB_DRIVE_MOUNT):
            return Path(COLAB_LOCAL_CACHE)
        return self.root / ".cache"

    @property
    def weights_cache(self) -> Path:
        """Downloaded pretrained weights (Inception, NVlabs pickles): kept in the workspace so they survive."""
        return self.root / "weights"

    def ensure(self) -> "Workspace":
        """Create the standard folders (idempotent)."""
        try:
            for cls in CLASSES:
                self.images_dir(cls).mkdir(parents=True, exist_ok=True)
            for path in (self.datasets, self.experiments, self.tables, self.results):
                path.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise UserError(f"Cannot create the workspace folders under {self.root}: {exc.strerror}.",
                            "Choose a workspace folder you can write to.") from exc
        return self


def resolve_workspace(root: Optional[PathLike] = None, create: bool = True) -> Workspace:
    """The workspace for `root`; None means Google Drive in Colab and ./workspace elsewhere."""
    if isinstance(root, Workspace):
        workspace = root
    elif root is None or str(root) == "":
        workspace = Workspace(mount_drive() if is_colab() else DEFAULT_LOCAL_ROOT)
    else:
        if str(root).startswith(COLAB_DRIVE_MOUNT) and is_colab():
            mount_drive()
        workspace = Workspace(root)
    if workspace.root.exists() and not workspace.root.is_dir():
        raise UserError(f"The workspace path {workspace.root} is a file, not a folder.",
                        "Pass a folder (it is created if missing).")
    return workspace.ensure() if create else workspace


def _check_class(cls: str) -> None:
    if cls not in CLASSES:
        raise UserError(f"Unknown class {cls!r}.", f"Use one of {', '.join(CLASSES)}.")


# --- atomic writes -------------------------------------------------------------------------------

def _disk_full_error(path: Path, exc: OSError) -> UserError:
    return UserError(
        f"The disk holding {path.parent} is full (or over quota) while writing {path.name}; "
        "the previous version of the file, if any, is untouched.",
        "Free some space (old snapshots, Augmented_Fakes, the .cache folder) or use a larger drive, then rerun: "
        "the stage picks up where it stopped.")


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it over `path`.

    On any exception the temporary file is removed and `path` is left as it was. ENOSPC / EDQUOT become a
    UserError that says the disk is full.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=(suffix or final.suffix) + ".tmp",
                                    dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _disk_full_error(final, exc) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    # Makes the rename itself durable; not supported on every file system (e.g. some FUSE mounts).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj, indent: int = 2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    # numpy scalars and paths appear in summaries; turn them into plain JSON.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def atomic_write_csv(path: PathLike, frame) -> Path:
    """Write a pandas DataFrame as CSV atomically (no index column)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def atomic_copy(src: PathLike, dst: PathLike) -> Path:
    """Copy a file so that `dst` is either absent, or complete."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def free_bytes(path: PathLike) -> int:
    """Free space (bytes) on the file system that holds `path` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
