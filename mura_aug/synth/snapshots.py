"""Which snapshot serves which class in stage 05, and at what resolution.

Reads (never writes) `data/experiments/<run>/`: its network files, its `training_options.json` and, for a file
outside a `BODY-<label>-...` run folder, the label stored inside the file. A class-conditional run
(`BODY-both-...`) serves both classes.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

from mura_aug.errors import UserError
from mura_aug.workspace import CLASSES, RunFolder, Workspace

PathLike = Union[str, os.PathLike]
LABELS = (*CLASSES, "both")  # what a run can be trained on: one class, or both with a class-conditional G


@dataclass(frozen=True)
class Snapshot:
    """A generator snapshot (or a grid) to draw fakes from."""

    path: Path  # network-*.pt, state-*.pt, an NVlabs .pkl, or a fakes grid being cut
    run: str  # run name (its folder under data/experiments)
    kimg: float  # thousands of real images shown when it was saved
    label: str  # 'positive', 'negative' or 'both' (class-conditional)


_NETWORK_KIMG = re.compile(r"(?:network|state)-(\d+(?:\.\d+)?)kimg")
_NVIDIA_SNAPSHOT_KIMG = re.compile(r"network-snapshot-(\d+)")


def snapshot_kimg(path: PathLike) -> float:
    """kimg of a snapshot from its name: ours `network-000012.500kimg.pt`, NVIDIA's `network-snapshot-000480`."""
    stem = Path(path).stem
    match = _NETWORK_KIMG.search(stem) or _NVIDIA_SNAPSHOT_KIMG.search(stem)
    return float(match.group(1)) if match else 0.0


def run_label(run_name: str) -> Optional[str]:
    """Label part of a run name `BODY-<label>-<cfg>-<res>`, or None when the name does not follow it."""
    parts = run_name.split("-")
    return parts[1] if len(parts) >= 2 and parts[1] in LABELS else None


def list_run_dirs(workspace: Workspace, body_part: Optional[str] = None) -> List[Path]:
    """Run folders under data/experiments that hold at least one network file (of `body_part`)."""
    runs = [run.path for run in workspace.runs() if run.network_files()]
    if body_part:
        runs = [d for d in runs if d.name.split("-")[0] == body_part]
    return runs


def _read_weights_only(path: Path):
    """The payload of a mura_aug .pt file, or None when it cannot be read (safely) as one."""
    import torch

    if path.suffix == ".pkl":
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable here means "unknown": the caller falls back or says what to pass
        return None


def _file_label(path: Path) -> Optional[str]:
    """The 'label' stored in a mura_aug network/state file (None when absent)."""
    payload = _read_weights_only(path)
    label = payload.get("label") if isinstance(payload, dict) else None
    return label if label in LABELS else None


def snapshot_from(spec: PathLike, workspace: Workspace, label: Optional[str] = None) -> Snapshot:
    """A Snapshot from a run name, a run folder or a snapshot file."""
    path = Path(spec).expanduser()
    if not path.exists():
        path = workspace.run(str(spec)).path
    if path.is_dir():
        files = RunFolder(path).network_files()
        if not files:
            raise UserError(f"The run folder {path} holds no network-*kimg.pt snapshot yet.",
                            "Train it until its first snapshot, or name another run (python -m mura_aug runs).")
        run_name, file = path.name, files[-1]
    elif path.is_file():
        run_name, file = path.parent.name, path
    else:
        known = ", ".join(d.name for d in list_run_dirs(workspace)) or "none yet"
        raise UserError(f"No run or snapshot {spec!r} (looked in {workspace.experiments}).",
                        f"Name a run folder under data/experiments (found: {known}) or a snapshot file.")
    label = label or run_label(run_name) or _file_label(file)
    if label is None:
        raise UserError(f"Cannot tell which class the snapshot {file} generates.",
                        "Give it per class, e.g. RUNS = {'positive': 'path/to/pos.pkl', 'negative': ...} "
                        "(--runs positive=FILE negative=FILE).")
    return Snapshot(path=file, run=run_name, kimg=snapshot_kimg(file), label=label)


def find_snapshots(workspace: Workspace, body_part: str, runs=None,
                   classes: Sequence[str] = CLASSES) -> Dict[str, Snapshot]:
    """The snapshot to use per class.

    `runs` None: the newest run of each class (a run trained on that class, else a conditional 'both' run);
    a list of run names / folders / snapshot files: each serves the class in its name (or both);
    a dict {class: run}: explicit.
    """
    chosen: Dict[str, Snapshot] = {}
    if isinstance(runs, dict):
        for cls, spec in runs.items():
            if cls not in CLASSES:
                raise UserError(f"Unknown class {cls!r} in RUNS.", f"Use keys from {CLASSES}.")
            snap = snapshot_from(spec, workspace)
            chosen[cls] = Snapshot(snap.path, snap.run, snap.kimg, snap.label if snap.label == "both" else cls)
    else:
        if runs is None:
            specs = sorted(list_run_dirs(workspace, body_part),
                           key=lambda d: RunFolder(d).network_files()[-1].stat().st_mtime)  # oldest first, newest wins
        else:
            specs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
        snapshots = [snapshot_from(spec, workspace) for spec in specs]
        for cls in classes:
            own = [s for s in snapshots if s.label == cls]
            both = [s for s in snapshots if s.label == "both"]
            if own or both:
                chosen[cls] = (own or both)[-1]
    missing = [cls for cls in classes if cls not in chosen]
    if missing:
        raise UserError(f"No trained {body_part} snapshot for class {', '.join(missing)} "
                        f"in {workspace.experiments}.",
                        "Train it first (notebook 02 / 03, or python -m mura_aug train --label ...), or name the "
                        "runs to use (RUNS / --runs).")
    return {cls: chosen[cls] for cls in classes}


# --- resolutions ---------------------------------------------------------------------------------------

def resolution_from_options(run_dir: PathLike) -> Optional[int]:
    """`resolution` (px) from a run folder's training_options.json, None when absent."""
    try:
        options = json.loads(RunFolder(run_dir).options.read_text())
        return int(options["resolution"]) if options.get("resolution") else None
    except (OSError, ValueError, TypeError, AttributeError, KeyError):
        return None


def run_resolution(snapshot: Snapshot) -> Optional[int]:
    """The image resolution (px) of a snapshot: its run's training_options.json, else the network file; None
    when neither says (an NVlabs .pkl)."""
    found = resolution_from_options(snapshot.path.parent)
    if found:
        return found
    payload = _read_weights_only(snapshot.path)
    try:
        return int(payload.get("resolution") or payload["G_kwargs"]["img_resolution"])
    except (AttributeError, KeyError, TypeError, ValueError):
        return None


def snapshot_resolutions(snapshots: Dict[str, Snapshot], load_generator: Optional[Callable] = None
                         ) -> Dict[str, int]:
    """{class: px} of the picked snapshots; a snapshot whose files do not say is loaded (`load_generator`)."""
    out = {}
    for cls, snap in snapshots.items():
        found = run_resolution(snap)
        if found is None and load_generator is not None:
            found = int(load_generator(snap.path).img_resolution)
        if found is not None:
            out[cls] = found
    return out


def describe_picks(snapshots: Dict[str, Snapshot], resolutions: Dict[str, int]) -> List[str]:
    """One line per class: the run, the snapshot's kimg and file, and its resolution."""
    lines = []
    for cls, snap in snapshots.items():
        px = f", {resolutions[cls]} px" if cls in resolutions else ""
        lines.append(f"{cls:>8}: run {snap.run}, snapshot at {snap.kimg:g} kimg ({snap.path.name}){px}")
    return lines


def check_same_resolution(snapshots: Dict[str, Snapshot], resolutions: Dict[str, int], allowed: bool) -> None:
    """UserError when the picked runs draw at different resolutions and mixing was not asked for."""
    if len(set(resolutions.values())) <= 1 or allowed:
        return
    picks = "; ".join(f"{cls}: {snapshots[cls].run} at {px} px" for cls, px in resolutions.items())
    raise UserError(f"The runs picked for the two classes draw at different resolutions ({picks}). A table that "
                    "mixes sizes lets a classifier tell the classes apart by image size alone.",
                    "Name runs of one resolution per class (RUNS / --runs positive=RUN negative=RUN), or accept "
                    "the mix with ALLOW_MIXED_RESOLUTIONS = True (--allow-mixed-resolutions).")
