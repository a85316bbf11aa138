"""Snapshots of a training run: the full training state, its file names, listing, resume and retention.

A run folder `data/experiments/<run>/` holds, per snapshot at K kimg (K formatted `%010.3f` so names sort):
  state-<K>kimg.pt    everything needed to continue bit for bit (networks, optimizers, ADA, RNG states, ...)
  network-<K>kimg.pt  the light inference file (G_ema + constructor kwargs; see network_file.py)
  fakes-<K>kimg.png   a grid of fakes of fixed seeds (gan.sampling: the images stage 05 makes of those seeds)

Every file is written to a temporary name in the same folder, fsynced, checked and renamed (workspace.atomic_path),
so a Colab disconnect or a SIGKILL mid-write leaves the previous snapshot as it was. A state file holds only
tensors and plain Python values, so it loads with `torch.load(weights_only=True)`: opening one runs no code.

A state is trusted by what it records, not by its name: before one is resumed, counted by retention or
reported by `runs`, its settings (cfg, resolution, label, body part) and its run identity (`run_id`, and the
`lineage` of a copied or renamed run) are compared with the run folder's training_options.json
(`state_mismatch`); one that differs is skipped with a warning naming both, and never makes retention delete
a genuine state. The run's *folder* is the run: the name stored inside a state is only a label.
"""
from __future__ import annotations

import errno
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from mura_aug.errors import UserError, failures_as_user_error
from mura_aug.gan import sampling
from mura_aug.gan.torch_files import REFUSED, UnsafeFileError, load_weights_only, save_torch_file
from mura_aug.imaging import grey_image
from mura_aug.workspace import (SNAPSHOT_NAME, RunFolder, Workspace, atomic_path, atomic_write_text,
                                free_bytes, staging_folder)

PathLike = Union[str, os.PathLike]

STATE_FORMAT = "mura_aug.state"
STATE_VERSION = 1
STATE_KEYS = ("G", "D", "G_ema", "G_opt", "D_opt", "progress", "rng", "config")  # what a loadable state needs
# Test hook: seconds to sleep after the state bytes are written but before the rename, so that a test can
# kill the process in the middle of a snapshot write. Never set outside tests.
WRITE_DELAY_ENV = "MURA_AUG_TEST_SNAPSHOT_WRITE_DELAY"


@dataclass
class SnapshotInfo:
    """The files of one snapshot (any of them may be missing, e.g. removed by retention)."""
    kimg: float
    state_path: Optional[Path]
    network_path: Optional[Path]
    fakes_path: Optional[Path]
    mtime: float  # seconds since the epoch, newest of the files
    size_bytes: int  # all files of this snapshot together

    @property
    def date(self) -> str:
        return datetime.fromtimestamp(self.mtime).strftime("%Y-%m-%d %H:%M")


@dataclass
class RunInfo:
    """One run folder under data/experiments. Usable as a path (os.fspath(run) is its folder)."""
    name: str
    path: Path
    label: Optional[str]
    cfg: Optional[str]
    resolution: Optional[int]
    kimg: float  # newest snapshot's kimg (0 when none yet)
    target_kimg: Optional[float]
    snapshots: int
    states: int
    size_bytes: int
    mtime: float
    skipped: Dict[str, str] = field(default_factory=dict)  # state file name -> why it is not counted

    def __fspath__(self) -> str:
        return str(self.path)


def list_snapshots(run_dir: PathLike) -> List[SnapshotInfo]:
    """Snapshots of a run folder, oldest first (by kimg). Temporary files of interrupted writes are ignored."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    by_kimg: Dict[str, Dict[str, Path]] = {}
    for path in run_dir.iterdir():
        match = SNAPSHOT_NAME.match(path.name)
        if match:
            by_kimg.setdefault(match.group(2), {})[match.group(1)] = path
    infos = []
    for tag in sorted(by_kimg, key=float):
        files = by_kimg[tag]
        stats = [p.stat() for p in files.values()]
        infos.append(SnapshotInfo(kimg=float(tag), state_path=files.get("state"),
                                  network_path=files.get("network"), fakes_path=files.get("fakes"),
                                  mtime=max(s.st_mtime for s in stats), size_bytes=sum(s.st_size for s in stats)))
    return infos


def read_training_options(run_dir: PathLike) -> Dict[str, Any]:
    path = RunFolder(run_dir).options
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def list_runs(workspace) -> List[RunInfo]:
    """Every run folder under data/experiments (those with training_options.json or a snapshot), by name."""
    experiments = Workspace(workspace).experiments if not isinstance(workspace, Workspace) else workspace.experiments
    runs = []
    if not experiments.is_dir():
        return runs
    for folder in sorted(p for p in experiments.iterdir() if p.is_dir()):
        snapshots = list_snapshots(folder)
        options = read_training_options(folder)
        if not snapshots and not options:
            continue
        files = [p for p in folder.iterdir() if p.is_file()]
        genuine, skipped = verified_states(folder, snapshots, options)
        # A snapshot whose only file is a skipped state (say, a foreign one under a newer name) is no progress.
        counted = [s for s in snapshots if s.network_path or s.fakes_path or s in genuine]
        runs.append(RunInfo(
            name=folder.name, path=folder, label=options.get("label"), cfg=options.get("cfg"),
            resolution=options.get("resolution"), kimg=counted[-1].kimg if counted else 0.0,
            target_kimg=options.get("kimg"), snapshots=len(counted), states=len(genuine),
            size_bytes=sum(p.stat().st_size for p in files),
            mtime=max([p.stat().st_mtime for p in files] or [folder.stat().st_mtime]),
            skipped={info.state_path.name: reason for info, reason in skipped}))
    return runs


# --- does a state belong to its run? ---------------------------------------------------------------------

IDENTITY_KEYS = ("cfg", "resolution", "label", "body_part")  # the settings a state must share with its run


def state_mismatch(state: Dict[str, Any], options: Dict[str, Any], state_path: PathLike = "",
                   run_dir: PathLike = "") -> Optional[str]:
    """None when `state` (a loaded state, or its record) belongs to the run whose training_options.json is
    `options`; otherwise why not, naming both sides. Only what both record is compared (older files, or a
    folder without training_options.json, are not refused for what they do not say).

    A run's identity is its `run_id` (made when the run starts, kept by every resume). A copied or renamed
    folder continues under a new id and lists the ids it came from in `lineage`, each with the kimg at which
    it left it: a state of an ancestor counts up to that kimg (the common history), not beyond it (the other
    copy's later training). States written before run ids existed are matched by their run name instead."""
    if not options:
        return None
    recorded = dict(state.get("options") or {})
    for key in ("resolution", "label", "run"):  # also stored beside the options in every state
        if recorded.get(key) is None and state.get(key) is not None:
            recorded[key] = state[key]
    differs = [key for key in IDENTITY_KEYS if recorded.get(key) is not None and options.get(key) is not None
               and recorded[key] != options[key]]
    if not _same_run(recorded, options, state.get("kimg")):
        differs.append("run_id" if recorded.get("run_id") and options.get("run_id") else "run")
    if not differs:
        return None
    where = f" of {Path(run_dir).name}" if run_dir else ""
    return (f"{Path(state_path).name or 'the state'} records {_identity_text(recorded)}, but the run folder"
            f"{where} (its training_options.json) is {_identity_text(options)}; "
            f"they differ in {', '.join(differs)}")


def _same_run(recorded: Dict[str, Any], options: Dict[str, Any], kimg) -> bool:
    run_id, own_id = recorded.get("run_id"), options.get("run_id")
    lineage = [entry for entry in options.get("lineage") or [] if isinstance(entry, dict)]
    kimg = float(kimg) if isinstance(kimg, (int, float)) else None

    def within(entry) -> bool:
        return kimg is None or entry.get("until_kimg") is None or kimg <= float(entry["until_kimg"]) + 1e-9

    if run_id and own_id:
        return run_id == own_id or any(entry.get("run_id") == run_id and within(entry) for entry in lineage)
    name = recorded.get("run")
    if not name or not options.get("run"):
        return True  # nothing to compare
    return name == options["run"] or any(entry.get("run") == name and within(entry) for entry in lineage)


def _identity_text(values: Dict[str, Any]) -> str:
    parts = [f"run {values.get('run') or '?'}"]
    if values.get("run_id"):
        parts[0] += f" (id {str(values['run_id'])[:8]})"
    parts += [f"cfg {values['cfg']}" if values.get("cfg") else "",
              f"{values['resolution']} px" if values.get("resolution") else "",
              f"label {values['label']}" if values.get("label") else "",
              str(values["body_part"]) if values.get("body_part") else ""]
    return ", ".join(part for part in parts if part)


def verified_states(run_dir: PathLike, snapshots: Optional[List[SnapshotInfo]] = None,
                    options: Optional[Dict[str, Any]] = None) -> Tuple[List[SnapshotInfo],
                                                                       List[Tuple[SnapshotInfo, str]]]:
    """(snapshots whose state file reads and belongs to this run, [(snapshot, why its state is skipped)]),
    oldest first. Only each state's record is read (memory-mapped, the tensors are not loaded), so this is
    cheap even for states of hundreds of MB."""
    snapshots = list_snapshots(run_dir) if snapshots is None else snapshots
    options = read_training_options(run_dir) if options is None else options
    genuine, skipped = [], []
    for info in snapshots:
        if info.state_path is None:
            continue
        try:
            record = load_weights_only(info.state_path, mmap=True)
        except UnsafeFileError:
            skipped.append((info, REFUSED))
            continue
        except Exception as exc:  # cut off, damaged, or no torch zip file at all
            skipped.append((info, f"it does not load ({type(exc).__name__})"))
            continue
        if not isinstance(record, dict) or record.get("format") != STATE_FORMAT:
            skipped.append((info, "it is not a mura_aug training state"))
            continue
        problem = state_mismatch(record, options, info.state_path, run_dir)
        if problem:
            skipped.append((info, f"it is not this run's: {problem}"))
        else:
            genuine.append(info)
    return genuine, skipped


# --- saving and loading a full state ------------------------------------------------------------------

def save_state(path: PathLike, state: Dict[str, Any]) -> Path:
    """Write a training state atomically and check it by loading it back before it takes the final name.

    A full disk raises UserError (from atomic_path) and leaves every earlier file untouched.
    """
    path = Path(path)
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION,
               "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **state}
    with atomic_path(path) as tmp:
        save_torch_file(payload, tmp)
        delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
        if delay > 0:
            time.sleep(delay)
        problem = _check_state_file(tmp)
        if problem:
            raise UserError(f"The training state just written to {path} does not load back ({problem}).",
                            "The disk may be failing or full; free space or choose another workspace, then "
                            "resume with --resume latest.")
    return path


def _check_state_file(path: Path) -> Optional[str]:
    """None when `path` is a complete state, otherwise what is wrong with it."""
    try:
        _load_state_unchecked(path)
    except Exception as exc:  # any failure to read means "not usable"; the caller names the file
        return f"{type(exc).__name__}: {exc}"
    return None


def _load_state_unchecked(path: Path) -> Dict[str, Any]:
    state = load_weights_only(path)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError("not a mura_aug training state")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    return state


def load_state(path: PathLike) -> Dict[str, Any]:
    """Load a training state (CPU tensors); UserError when it is truncated, corrupt or not a state."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"No training state at {path}.",
                        "Pass a state-*kimg.pt file or a run folder (python -m mura_aug runs lists them).")
    with failures_as_user_error(lambda exc: f"The training state {path} cannot be loaded ({type(exc).__name__}: "
                                            f"{exc}); it is probably truncated by an interrupted write or copy.",
                                "Resume from an earlier state of the same run: --resume latest skips unreadable "
                                "ones."):
        return _load_state_unchecked(path)


def load_newest_state(run_dir: PathLike, log=print) -> Tuple[Optional[SnapshotInfo], Optional[Dict[str, Any]]]:
    """The newest state of a run that loads and belongs to it (state_mismatch), and its content; newer ones
    that are unreadable or another run's are skipped with a warning. States in the run's staging folder on
    local disk (staged snapshots whose copy to the workspace did not finish, gan/staging.py) count too: of two
    at the same kimg the workspace's is taken."""
    options = read_training_options(run_dir)
    local = [info for info in list_snapshots(staging_folder(run_dir).path) if info.state_path is not None]
    here = [info for info in list_snapshots(run_dir) if info.state_path is not None]
    candidates = sorted([(info.kimg, 1, info) for info in here] + [(info.kimg, 0, info) for info in local],
                        key=lambda item: item[:2])
    for _, on_workspace, info in reversed(candidates):
        try:
            state = _load_state_unchecked(info.state_path)
            problem = state_mismatch(state, options, info.state_path, run_dir)
            if problem is None:
                if not on_workspace and log is not None:
                    log(f"the newest state is on local disk, not yet copied to the workspace: {info.state_path}")
                return info, state
            message = f"Skipping the training state {info.state_path}: it is not this run's: {problem}."
        except UnsafeFileError:
            message = f"Skipping the training state {info.state_path}: {REFUSED}."
        except Exception as exc:
            message = (f"Skipping the training state {info.state_path}: it does not load "
                       f"({type(exc).__name__}: {exc}); it was probably cut off by a disconnect.")
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        if log is not None:
            log("warning: " + message)
    return None, None


def find_resumable(run_dir: PathLike) -> Optional[SnapshotInfo]:
    """The newest snapshot of `run_dir` whose state file loads (None when there is none)."""
    info, _ = load_newest_state(run_dir, log=None)
    return info


def remove_stale_temporaries(run_dir: PathLike) -> List[Path]:
    """Delete temporary files left by writes that were killed (`.state-<K>kimg.pt.XXXX.pt.tmp` and friends).
    Only names this module's writers produce are touched."""
    removed = []
    for path in Path(run_dir).glob(".*.tmp"):
        if path.name.startswith((".state-", ".network-", ".fakes-", ".stats.jsonl.", ".training_options.json.")):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# --- the image grids: reals.png and fakes-<K>kimg.png ---------------------------------------------------

def grid_shape(resolution: int) -> Tuple[int, int]:
    """(rows, cols) of a run's image grids: about 1k px wide, 4 to 8 columns, at most 32 images."""
    cols = int(min(8, max(4, 1024 // resolution)))
    return 4, cols


def save_image_grid(images_uint8, rows: int, cols: int, path: PathLike) -> Path:
    """Tile uint8 NCHW images (row by row) into one 8-bit grey PNG, written atomically. Three-channel images
    (G's output, the dataset's) are turned grey by stage 01's luma rule, so a grid shows what stage 05 saves
    and a person opening it sees no colour tints an X-ray never has."""
    import numpy as np

    n, channels, height, width = images_uint8.shape
    grid = np.zeros((rows * height, cols * width, channels), dtype=np.uint8)
    for index in range(min(n, rows * cols)):
        r, c = divmod(index, cols)
        grid[r * height:(r + 1) * height, c * width:(c + 1) * width] = images_uint8[index].transpose(1, 2, 0)
    image = grey_image(grid)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def save_fakes_grid(G, seed: int, path: PathLike) -> Path:
    """The fakes grid of a snapshot: image i is seed `seed + i` (gan.sampling, so stage 05 and the widgets
    draw the same image for that seed); a class-conditional G shows negatives in the top half and positives
    in the bottom half."""
    rows, cols = grid_shape(int(G.img_resolution))
    count = rows * cols
    classes = None
    if G.c_dim > 0:
        classes = ["negative" if index < count // 2 else "positive" for index in range(count)]
    images = sampling.generate_array(G, range(int(seed), int(seed) + count), classes)
    return save_image_grid(images, rows, cols, path)


# --- the stats log -----------------------------------------------------------------------------------

def read_stats(run_dir: PathLike) -> List[Dict[str, Any]]:
    """The stats lines of a run (one dict per tick); a line cut off by a kill is ignored."""
    return read_stats_file(RunFolder(run_dir).stats)


def read_stats_file(path: PathLike) -> List[Dict[str, Any]]:
    """The JSON lines of a stats file (a run's stats.jsonl, or the staging folder's lines waiting for it);
    [] when there is none, and a line cut off by a kill is ignored."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # a line cut by a kill
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


def rewind_stats(run_dir: PathLike, tick: int) -> int:
    """Keep only the stats lines up to and including `tick` (the resumed state's), so that after a resume
    no tick appears twice and none is missing. Returns the number of lines kept."""
    return rewind_stats_file(RunFolder(run_dir).stats, tick)


def rewind_stats_file(path: PathLike, tick: int) -> int:
    """rewind_stats for one stats file (written atomically; not created when absent and nothing is kept).
    Returns the number of lines kept."""
    path = Path(path)
    kept = [entry for entry in read_stats_file(path) if int(entry.get("tick", -1)) <= tick]
    if path.exists() or kept:
        atomic_write_text(path, "".join(json.dumps(entry) + "\n" for entry in kept))
    return len(kept)


def append_stats(run_dir: PathLike, entry: Dict[str, Any]) -> None:
    """Append one JSON line and flush it to disk (a kill can cut at most this line, which readers skip)."""
    path = RunFolder(run_dir).stats
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"The disk holding {path} is full; the stats line of tick {entry.get('tick')} was "
                            "not written (the snapshots so far are intact).",
                            "Free some space (old runs' state-*.pt files, the .cache folder), then continue "
                            "with --resume latest.") from exc
        raise


# --- retention and disk space -------------------------------------------------------------------------

def apply_retention(run_dir: PathLike, keep_states: int = 3, keep_networks_every: int = 1) -> List[Path]:
    """Delete all but the newest `keep_states` state files of this run; keep the inference file of every
    `keep_networks_every`-th snapshot (counted over all snapshots, oldest = 1st) and of the newest.
    Fakes grids are small and always kept. Returns the deleted files.

    Only states that read and belong to the run (verified_states) are counted and deleted: one that is
    another run's or does not load is left as it is and never pushes a genuine state out."""
    if keep_states < 1:
        raise UserError(f"keep_states={keep_states} would delete every training state, so the run could not "
                        "be resumed.", "Keep at least 1 state (the default is 3).")
    if keep_networks_every < 1:
        raise UserError(f"keep_networks_every={keep_networks_every} is not a positive number of snapshots.",
                        "Use 1 to keep the inference file of every snapshot, N to keep every N-th.")
    snapshots = list_snapshots(run_dir)
    deleted = []
    with_state, _ = verified_states(run_dir, snapshots)
    for info in with_state[:-keep_states]:
        info.state_path.unlink(missing_ok=True)
        deleted.append(info.state_path)
    for ordinal, info in enumerate(snapshots, start=1):
        is_newest = ordinal == len(snapshots)
        if info.network_path is not None and not is_newest and ordinal % keep_networks_every != 0:
            info.network_path.unlink(missing_ok=True)
            deleted.append(info.network_path)
    return deleted


def folder_bytes(folder: PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def human_bytes(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(size) < 1024 or unit == "TB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024.0
    return f"{size:.1f} TB"


def estimate_state_bytes(G, D) -> int:
    """Rough size (bytes) of a state file: G, G_ema and Adam's two moments of G; D and its two moments."""
    def weight_bytes(module) -> int:
        return sum(t.numel() * t.element_size() for t in module.state_dict().values())

    return int((4 * weight_bytes(G) + 3 * weight_bytes(D)) * 1.02) + 100_000


def check_free_space(run_dir: PathLike, state_bytes: int, network_bytes: int = 0) -> None:
    """Refuse to start when the disk cannot hold two more snapshots (so a full disk is found before hours of
    training, not at the first snapshot)."""
    needed = 2 * (state_bytes + network_bytes)
    available = free_bytes(run_dir)
    if available < needed:
        raise UserError(
            f"Not enough free space for this run's snapshots in {run_dir}: each snapshot needs about "
            f"{human_bytes(state_bytes + network_bytes)}, two need {human_bytes(needed)}, but only "
            f"{human_bytes(available)} is free.",
            f"Free at least {human_bytes(needed - available)} (delete old runs' state-*.pt files, the .cache "
            "folder or Augmented_Fakes), lower --keep, or use a workspace on a larger disk.")


# --- one trainer per run folder --------------------------------------------------------------------------

LOCK_NAME = "run.lock"
LOCK_STALE_SECONDS = 20 * 60  # a lock from another machine not refreshed for this long belongs to a dead run


class RunLock:
    """`run.lock` in a run folder while a process trains it, so that two sessions (say, two Colab tabs on the
    same Drive) cannot write the same run at once. A lock left by a killed process is recognised (same
    machine: its process id is gone; another machine: not refreshed for LOCK_STALE_SECONDS) and taken over."""

    def __init__(self, run_dir: PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.owned = False
        self._last_refresh = 0.0

    def _holder(self) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    def _is_stale(self, holder: Optional[Dict[str, Any]]) -> bool:
        import socket

        if holder is None:
            return True
        if holder.get("host") == socket.gethostname():
            try:
                os.kill(int(holder.get("pid", -1)), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError, OSError):
                return False
            return int(holder.get("pid", -1)) == os.getpid()  # our own leftover (e.g. an earlier call)
        try:
            return time.time() - self.path.stat().st_mtime > LOCK_STALE_SECONDS
        except OSError:
            return True

    def acquire(self) -> "RunLock":
        import socket

        holder = self._holder() if self.path.exists() else None
        if self.path.exists() and not self._is_stale(holder):
            raise UserError(
                f"Another training process is writing {self.path.parent.name} right now (process "
                f"{holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}).",
                f"Wait for it to finish or stop it first. If no such process exists, delete {self.path}.")
        atomic_write_text(self.path, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "started": datetime.now(timezone.utc).isoformat(
                                                     timespec="seconds")}))
        self.owned = True
        self._last_refresh = time.time()
        return self

    def refresh(self, every_seconds: float = 60.0) -> None:
        """Touch the lock (cheap) so that other machines see the run is alive."""
        if self.owned and time.time() - self._last_refresh >= every_seconds:
            try:
                os.utime(self.path)
            except OSError:
                pass
            self._last_refresh = time.time()

    def release(self) -> None:
        if self.owned:
            holder = self._holder()
            try:
                if holder is None or int(holder.get("pid", -1)) == os.getpid():
                    self.path.unlink(missing_ok=True)
            except OSError:  # the disk went read-only or away: the error that ends the run says so, not this
                pass
            self.owned = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False
