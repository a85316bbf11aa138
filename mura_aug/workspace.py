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
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

from mura_aug.errors import UserError, from_os_error

PathLike = Union[str, os.PathLike]

CLASSES = ("positive", "negative")  # 'positive' = abnormal, as in MURA's folder names
COLAB_DRIVE_MOUNT = "/content/drive"
COLAB_DRIVE_ROOT = "/content/drive/MyDrive"
COLAB_LOCAL_CACHE = "/content/mura_aug_cache"  # fast local disk in a Colab VM, lost on disconnect
COLAB_LOCAL_STAGING = "/content/mura_aug_staging"  # staged snapshots on that disk (gan/staging.py)
# The local folder for staged snapshots elsewhere (a network mount marked unreliable; the tests): default the
# system's temporary folder.
STAGING_ENV = "MURA_AUG_STAGING_DIR"
DEFAULT_LOCAL_ROOT = "./workspace"
# Downloads made without a workspace (a measure called on its own): the user's cache, outside any workspace.
USER_CACHE = Path.home() / ".cache" / "mura_aug"


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


# --- names inside the layout (drive_layout.md) -------------------------------------------------------
KIMG_FORMAT = "%010.3f"  # the <K> of snapshot and fake names: 12.5 -> 000012.500, so names sort by kimg
SNAPSHOT_NAME = re.compile(r"^(state|network|fakes)-(\d+\.\d+)kimg\.(pt|png)$")
TABLE_NAMES = ("train", "valid", "train_positive", "train_negative")  # the tables stage 01 writes
AUGMENTED_TABLE = "train_augmented"  # the table stage 05 writes
SKIPPED_TABLE = "skipped_files"


def check_name(kind: str, name: str) -> str:
    """A name that becomes one folder or file-name part of the layout (a run, a body part, an experiment):
    no path separators, no '..', not hidden, not empty, so that it can never point outside its folder."""
    text = str(name)
    if (not text or text in (".", "..") or text.startswith(".") or "/" in text or "\\" in text
            or "\0" in text or os.sep in text or (os.altsep and os.altsep in text)):
        raise UserError(f"The {kind} name {name!r} is not a plain name (it must not contain '/', '\\' or start "
                        "with '.'), so it could point outside the workspace.",
                        f"Use a plain {kind} name such as XR_SHOULDER-positive-tiny-32 (letters, digits, '-', '_').")
    return text


def kimg_tag(kimg: float) -> str:
    """12.5 -> '000012.500' (the <K> of every snapshot and fake file name)."""
    return KIMG_FORMAT % float(kimg)


def run_name(body_part: str, label: str, cfg: str, resolution: int) -> str:
    """The default name of a GAN run folder: `BODY-<label>-<cfg>-<res>`."""
    return f"{body_part}-{label}-{cfg}-{int(resolution)}"


def parse_run_name(name: str) -> Dict[str, object]:
    """'XR_SHOULDER-positive-paper256-256' -> {body_part, label, cfg, resolution}; UserError otherwise."""
    parts = name.split("-")
    if len(parts) < 4 or not parts[-1].isdigit():
        raise UserError(f"The run name {name!r} is not of the form BODY-<label>-<cfg>-<resolution>.",
                        "Pass a run folder name from data/experiments (python -m mura_aug runs lists them).")
    return {"body_part": "-".join(parts[:-3]), "label": parts[-3], "cfg": parts[-2], "resolution": int(parts[-1])}


class _Folder:
    """A folder of the layout whose files the subclass names; usable as a path (os.fspath gives the folder)."""

    def __init__(self, path: PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name


class RunFolder(_Folder):
    """The files of one GAN run folder (`data/experiments/<run>/`, or a run folder elsewhere given by path)."""

    @property
    def options(self) -> Path:
        """training_options.json: the run's settings and history."""
        return self.path / "training_options.json"

    @property
    def stats(self) -> Path:
        """stats.jsonl: one JSON object per tick."""
        return self.path / "stats.jsonl"

    @property
    def reals(self) -> Path:
        return self.path / "reals.png"

    @property
    def lock(self) -> Path:
        return self.path / "run.lock"

    @property
    def pending_stats(self) -> Path:
        """stats lines not yet appended to the workspace's stats.jsonl (only in a staging folder)."""
        return self.path / "stats-pending.jsonl"

    def state(self, kimg: float) -> Path:
        return self.path / f"state-{kimg_tag(kimg)}kimg.pt"

    def network(self, kimg: float) -> Path:
        return self.path / f"network-{kimg_tag(kimg)}kimg.pt"

    def fakes(self, kimg: float) -> Path:
        return self.path / f"fakes-{kimg_tag(kimg)}kimg.png"

    def network_files(self) -> List[Path]:
        """The run's inference files, oldest first (their names sort by kimg)."""
        return sorted(self.path.glob("network-*kimg.pt"))

    def state_files(self) -> List[Path]:
        return sorted(self.path.glob("state-*kimg.pt"))

    def fakes_grids(self) -> List[Path]:
        """Fakes grids, ours (`fakes-<K>kimg.png`) and NVIDIA's (`fakes<K>.png`), sorted by name."""
        return sorted(self.path.glob("fakes*.png"))


class EvaluationFolder(_Folder):
    """One stage-06 experiment: `results/evaluation/<BODY>/<arch>-<size>px-<imagenet|scratch>/`."""

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def runs_table(self) -> Path:
        return self.path / "runs.csv"

    @property
    def comparison(self) -> Path:
        return self.path / "comparison.csv"

    @property
    def runs(self) -> Path:
        return self.path / "runs"

    def run(self, name: str) -> "EvaluationRun":
        return EvaluationRun(self.runs / name)


class EvaluationRun(_Folder):
    """One classifier training run of stage 06 (`runs/<baseline-seed<k> | augmented-x<ratio>-seed<k>>/`)."""

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.csv"

    @property
    def result(self) -> Path:
        """Written last: the run is finished."""
        return self.path / "result.json"


class Workspace:
    """Every path of the workspace layout (drive_layout.md): no other module joins layout names.

    Creating a Workspace creates no folders; writing a file creates the folders it needs."""

    def __init__(self, root: PathLike):
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def __fspath__(self) -> str:
        return str(self.root)

    def relative(self, path: PathLike) -> str:
        """The workspace-relative POSIX name of a path inside the workspace (as the tables store it)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def absolute(self, relative: str) -> Path:
        """The path of a workspace-relative name from a table."""
        return self.root / relative

    # --- data/ --------------------------------------------------------------------------------------
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

    def copy_name(self, body_part: str, cls: str, split: str, patient: str, study: str, view: str) -> str:
        """Workspace-relative name of the copy of one MURA image."""
        return self.relative(self.images_dir(cls) / f"{body_part}_{split}_{patient}_{study}_{view}.png")

    def prepare_state(self, body_part: str) -> Path:
        """What stage 01 knows about its copies (sizes, mtimes, skipped sources); hidden next to the images."""
        check_name("body part", body_part)
        return self.images / f".{body_part}_prepare_state.json"

    @property
    def tables(self) -> Path:
        """Training / validation tables as CSV."""
        return self.data / "tables"

    def table(self, body_part: str, name: str) -> Path:
        """data/tables/<BODY>_<name>.csv (name: train, valid, train_positive, train_negative, skipped_files,
        train_augmented)."""
        check_name("body part", body_part)
        return self.tables / f"{body_part}_{name}.csv"

    def prepare_summary(self, body_part: str) -> Path:
        """data/tables/<BODY>_prepare_summary.json: what stage 01 did."""
        check_name("body part", body_part)
        return self.tables / f"{body_part}_prepare_summary.json"

    @property
    def datasets(self) -> Path:
        """GAN-ready datasets (one per body part, class and resolution)."""
        return self.data / "datasets"

    def dataset_zip(self, body_part: str, cls: str, resolution: int) -> Path:
        """data/datasets/<BODY>_<class>_<res>.zip: the GAN dataset of one class at `resolution` px."""
        check_name("body part", body_part)
        return self.datasets / f"{body_part}_{cls}_{int(resolution)}.zip"

    def dataset_info(self, body_part: str, cls: str, resolution: int) -> Path:
        """The JSON beside a dataset zip: its parameters, inputs and the copy behind each member."""
        return self.dataset_zip(body_part, cls, resolution).with_suffix(".json")

    def dataset_resolutions(self, body_part: str, cls: str) -> List[int]:
        """Resolutions (px) of the datasets stage 01 built for this body part and class, ascending."""
        pattern = re.compile(rf"^{re.escape(body_part)}_{re.escape(cls)}_(\d+)\.zip$")
        if not self.datasets.is_dir():
            return []
        return sorted(int(m.group(1)) for m in map(pattern.match, (p.name for p in self.datasets.iterdir())) if m)

    @property
    def experiments(self) -> Path:
        """GAN training runs, one folder per run."""
        return self.data / "experiments"

    def run(self, name: str) -> RunFolder:
        """The folder of the GAN run `name` under data/experiments (a plain name: check_name)."""
        return RunFolder(self.experiments / check_name("run", name))

    def runs(self) -> List[RunFolder]:
        """Every folder under data/experiments, by name."""
        if not self.experiments.is_dir():
            return []
        return [RunFolder(p) for p in sorted(self.experiments.iterdir()) if p.is_dir()]

    @property
    def augmented(self) -> Path:
        """data/Augmented_Fakes/: stage 05's images, manifest and summaries."""
        return self.data / "Augmented_Fakes"

    def augmented_dir(self, cls: str, body_part: str = "XR_SHOULDER") -> Path:
        """data/Augmented_Fakes/{positive,negative}/<BODY_PART without XR_>/, as in the original work."""
        _check_class(cls)
        return self.augmented / cls / body_part_folder(check_name("body part", body_part))

    def fake_path(self, cls: str, body_part: str, run: str, kimg: float, seed: int) -> Path:
        """A generated fake: <run>_kimg<K>_seed<seed:06d>.png."""
        check_name("run", run)
        return self.augmented_dir(cls, body_part) / f"{run}_kimg{kimg_tag(kimg)}_seed{int(seed):06d}.png"

    def tile_path(self, cls: str, body_part: str, run: str, kimg: float, tile: int) -> Path:
        """A tile cut from a fakes grid: <run>_kimg<K>_tile<index:06d>.png."""
        check_name("run", run)
        return self.augmented_dir(cls, body_part) / f"{run}_kimg{kimg_tag(kimg)}_tile{int(tile):06d}.png"

    @property
    def manifest(self) -> Path:
        """data/Augmented_Fakes/manifest.csv: every fake stage 05 made, with its settings and filter verdict."""
        return self.augmented / "manifest.csv"

    def synth_summary(self, body_part: str) -> Path:
        """data/Augmented_Fakes/<BODY>_synth_summary.json: what stage 05's last call did, and its filters."""
        check_name("body part", body_part)
        return self.augmented / f"{body_part}_synth_summary.json"

    def augmented_table(self, body_part: str) -> Path:
        """data/tables/<BODY>_train_augmented.csv: the real train table plus every kept fake."""
        return self.table(body_part, AUGMENTED_TABLE)

    # --- results/ -----------------------------------------------------------------------------------
    @property
    def results(self) -> Path:
        """Stage outputs meant for people: evaluation results, metrics, executed notebooks."""
        return self.root / "results"

    def evaluation_dir(self, body_part: str) -> Path:
        """results/evaluation/<BODY>/ (holds a copy of the latest experiment's summary)."""
        check_name("body part", body_part)
        return self.results / "evaluation" / body_part

    def evaluation(self, body_part: str, experiment: str) -> EvaluationFolder:
        return EvaluationFolder(self.evaluation_dir(body_part) / check_name("experiment", experiment))

    def metrics_dir(self, run: str) -> Path:
        """results/metrics/<run>/: the measured snapshots of one run."""
        return self.results / "metrics" / check_name("run", run)

    def metrics_result(self, run: str, snapshot: PathLike) -> Path:
        """results/metrics/<run>/<snapshot file name without suffix>.json (the CSV and figure beside it share
        its stem)."""
        return self.metrics_dir(run) / f"{Path(snapshot).stem}.json"

    @property
    def executed_notebooks(self) -> Path:
        """results/notebooks/: notebooks executed by `python -m mura_aug notebooks` / `demo`."""
        return self.results / "notebooks"

    # --- caches and downloads -------------------------------------------------------------------------
    @property
    def cache(self) -> Path:
        """Fast local cache (training arrays). In Colab on the VM's disk, not Drive."""
        if is_colab() and str(self.root).startswith(COLAB_DRIVE_MOUNT):
            return Path(COLAB_LOCAL_CACHE)
        return self.root / ".cache"

    @property
    def training_arrays(self) -> Path:
        return self.cache / "training_arrays"

    def training_array(self, body_part: str, label: str, resolution: int, key: str) -> Tuple[Path, Path]:
        """(images .npy, labels .npy) of one decoded training set; `key` fingerprints its sources."""
        check_name("body part", body_part)
        stem = f"{body_part}_{label}_{int(resolution)}_{key}"
        return self.training_arrays / f"{stem}.images.npy", self.training_arrays / f"{stem}.labels.npy"

    def training_array_check(self, body_part: str, label: str, resolution: int, key: str) -> Path:
        """<stem>.check.json beside the two arrays: their sizes and SHA-256, checked before each use."""
        check_name("body part", body_part)
        return self.training_arrays / f"{body_part}_{label}_{int(resolution)}_{key}.check.json"

    def stale_training_arrays(self, body_part: str, label: str, resolution: int) -> List[Path]:
        """Every cached array (and check file) of this body part, label and resolution, older versions included."""
        if not self.training_arrays.is_dir():
            return []
        stem = f"{body_part}_{label}_{int(resolution)}_"
        return sorted(path for pattern in (f"{stem}*.npy", f"{stem}*.check.json")
                      for path in self.training_arrays.glob(pattern))

    @property
    def weights_cache(self) -> Path:
        """Downloaded pretrained weights (Inception, NVlabs pickles): kept in the workspace so they survive."""
        return self.root / "weights"

    # --- the demo -------------------------------------------------------------------------------------
    @property
    def demo_source(self) -> Path:
        """<workspace>/demo: the generated MURA-shaped tree stage 01 reads when no MURA path is given."""
        return self.root / "demo"

    @property
    def demo_marker(self) -> Path:
        """Marks a workspace the demo made (the demo refuses any other folder that holds files)."""
        return self.root / ".mura_aug_demo_workspace.json"

    def ensure(self) -> "Workspace":
        """Create the empty standard folders (for tools and tests that write into them by hand; the stages
        create what they write into themselves)."""
        try:
            for cls in CLASSES:
                self.images_dir(cls).mkdir(parents=True, exist_ok=True)
            for path in (self.datasets, self.experiments, self.tables, self.results):
                path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise from_os_error(exc, f"creating the workspace folders under {self.root}") from exc
        return self


def is_unreliable(path: PathLike) -> bool:
    """Whether `path` lies on Google Drive's mount in Colab (writes there fail under load: EIO, ENOTCONN)."""
    return str(Path(path).absolute()).startswith(COLAB_DRIVE_MOUNT + os.sep)


def drive_vanished(path: PathLike) -> bool:
    """Whether `path` is on Colab's Drive mount and that mount is gone (MyDrive no longer a folder)."""
    return is_unreliable(path) and not os.path.isdir(COLAB_DRIVE_ROOT)


def staging_folder(run_dir: PathLike) -> RunFolder:
    """The local-disk folder where a run's snapshots are written before they are copied to the workspace
    (gan/staging.py): `/content/mura_aug_staging/<run>-<key>` in Colab, `$MURA_AUG_STAGING_DIR` or the
    temporary folder elsewhere. The key fingerprints the run folder's path, so two workspaces' runs of one
    name never share it, and `--resume latest` finds it again from the run folder alone."""
    run_dir = Path(run_dir).expanduser().absolute()
    root = os.environ.get(STAGING_ENV) or (COLAB_LOCAL_STAGING if is_colab() or is_unreliable(run_dir)
                                           else os.path.join(tempfile.gettempdir(), "mura_aug_staging"))
    key = hashlib.sha1(str(run_dir).encode("utf-8")).hexdigest()[:10]
    return RunFolder(Path(root) / f"{run_dir.name}-{key}")


def resolve_workspace(root: Optional[PathLike] = None) -> Workspace:
    """The workspace for `root`; None means Google Drive in Colab and ./workspace elsewhere.

    Nothing is created here: each folder of the layout is made when the first file is written into it (by
    atomic_path), so a command that fails before writing (a mistyped path, a bad parameter) leaves no empty
    folder skeleton behind."""
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
    return workspace


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


def _process_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (os.umask can only be read by
    setting it, which would race with threads writing files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # elsewhere: read it once, at import, before any thread writes
    os.umask(current)
    return current


_UMASK = _process_umask()


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "", durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and rename it over `path`.

    On any exception the temporary file is removed and `path` is left as it was. ENOSPC / EDQUOT become a
    UserError that says the disk is full. durable=False skips the two fsyncs (file and folder): the rename is
    still all-or-nothing for other programs, but after a power cut the file may be empty; for many small files
    whose caller calls `flush_to_disk` before recording them (stage 01's copies: two fsyncs per file were half
    its time).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=(suffix or final.suffix) + ".tmp",
                                    dir=final.parent)
    try:
        # mkstemp makes the file private (0600); an output gets the permissions any program of the user's would
        # give it (0666 less the umask), so a shared or group folder stays usable.
        os.fchmod(fd, 0o666 & ~_UMASK)
    except (OSError, AttributeError):  # no fchmod (Windows) or a file system without modes (some FUSE mounts)
        pass
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
        if durable:
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


def flush_to_disk(paths: Iterable[PathLike] = ()) -> None:
    """Make files written with durable=False durable: one sync(2) of every file system where the platform has
    it (Linux, macOS; waits for the writes), else an fsync of each of `paths`."""
    if hasattr(os, "sync"):
        os.sync()
        return
    for path in paths:
        try:
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
        except OSError:
            pass  # gone or unreadable: the next run checks it again


def atomic_write_bytes(path: PathLike, data: bytes, durable: bool = True) -> Path:
    with atomic_path(path, durable=durable) as tmp:
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


HASH_CHUNK_BYTES = 8 * 2 ** 20  # bytes read at a time when hashing a file (large sequential reads suit Drive)


def file_sha256(path: PathLike, chunk_bytes: int = HASH_CHUNK_BYTES) -> str:
    """The SHA-256 of a file's bytes as a hex string, read `chunk_bytes` (bytes) at a time so that a file of
    gigabytes (a cached training array) never sits in memory. OSError when the file cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def free_bytes(path: PathLike) -> int:
    """Free space (bytes) on the file system that holds `path` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free
