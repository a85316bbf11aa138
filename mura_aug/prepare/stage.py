"""Stage 01: index MURA, copy one body part's images into the workspace, build the GAN datasets.

    run_stage(workspace, PrepareSettings(mura_path=..., body_part="XR_SHOULDER", resolution=256))

is the one entry point (notebook 01 and `python -m mura_aug prepare` both call it). It reads MURA (the
folder, its parent or the original zip; never written), or without a `mura_path` a demo tree it
generates into <workspace>/demo, and writes, in the workspace:
  data/images/{positive,negative}/BODY_<split>_<patient>_<study>_<view>.png   copies of every train and valid
        image (byte copies of plain PNGs, others converted to 8-bit grey PNG)
  data/tables/BODY_{train,valid,train_positive,train_negative}.csv            one row per usable image
  data/tables/BODY_skipped_files.csv                                           every file left out, and why
  data/tables/BODY_prepare_summary.json                                        counts, timings, parameters
  data/datasets/BODY_<class>_<res>.zip                                         NVlabs dataset_tool layout,
        train split only, RGB res x res PNGs; next to it BODY_<class>_<res>.json (its parameters, inputs and
        which copy each member came from), which lets a rerun keep it.

Incremental: a copy whose size and mtime are as recorded, from a source file of the recorded size, is not
read again; a dataset whose parameters and input list are unchanged is kept. Changing resolution, fit,
crop_borders or contrast rebuilds only the datasets.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Tuple, Union

from mura_aug.errors import UserError, os_errors_as_user_errors
from mura_aug.prepare.settings import PrepareSettings
from mura_aug.workspace import (CLASSES, SKIPPED_TABLE, TABLE_NAMES, Workspace, atomic_path, atomic_write_bytes,
                                atomic_write_json, atomic_write_text, flush_to_disk,
                                resolve_workspace)

PathLike = Union[str, os.PathLike]

TABLE_COLUMNS = ["path", "filename", "class", "label", "patient", "study", "study_id", "body_part", "split",
                 "view", "source"]
SKIPPED_COLUMNS = ["path", "reason"]
DATASET_PNG_COMPRESS_LEVEL = 4  # zlib level of dataset members: near level 6's size at about half the time
STATE_VERSION = 1
DATASET_FORMAT = "mura_aug.dataset"
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: the same inputs give a byte-identical zip


# --- reading what stage 01 wrote ---------------------------------------------------------------------

def load_table(workspace, body_part: str, name: str):
    """One of prepare's tables as a DataFrame (identifiers kept as text)."""
    import pandas as pd

    path = Workspace(workspace).table(body_part, name)
    if not path.is_file():
        raise UserError(f"The table {path} does not exist.",
                        "Run stage 01 first (notebook 01_prepare, or python -m mura_aug prepare) for "
                        f"{body_part} in this workspace.")
    try:
        return pd.read_csv(path, dtype={"path": str, "filename": str, "patient": str, "study": str,
                                        "study_id": str, "view": str, "reason": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"Cannot read the table {path}: {exc}.",
                        "Delete it and rerun stage 01 (python -m mura_aug prepare); it is rebuilt.") from exc


def load_summary(workspace, body_part: str) -> dict:
    path = Workspace(workspace).prepare_summary(body_part)
    if not path.is_file():
        raise UserError(f"No prepare summary at {path}.", "Run stage 01 (python -m mura_aug prepare) first.")
    return json.loads(path.read_text())


# --- the work done per image (in worker processes or in-process) -------------------------------------

@dataclass(frozen=True)
class DatasetSettings:
    resolution: int  # px
    fit: str
    crop_borders: bool
    contrast: bool
    compress_level: int = DATASET_PNG_COMPRESS_LEVEL

    def to_dict(self) -> dict:
        return {"resolution": self.resolution, "fit": self.fit, "crop_borders": self.crop_borders,
                "contrast": self.contrast, "compress_level": self.compress_level}


@dataclass(frozen=True)
class Task:
    """One image: copy it from MURA (copy_to set) and/or render its dataset member (dataset set)."""

    number: int  # position in the plan, to match results to rows
    location: str  # the MURA source, reopened by worker processes
    filename: str  # MURA-relative name
    copy_path: str  # absolute path of the copy in the workspace
    copy: bool  # True: (re)copy from MURA; False: the copy is up to date
    dataset: Optional[DatasetSettings]  # None: no dataset member wanted


@dataclass
class TaskResult:
    number: int
    problem: Optional[str] = None  # reason for the skipped-files table
    copied: bool = False
    converted: bool = False
    source_size: int = 0  # bytes
    size: int = 0  # bytes of the copy
    mtime_ns: int = 0
    member_png: Optional[bytes] = None


_OPEN_SOURCES: Dict[str, object] = {}  # per process: MURA sources by location (a zip is opened once)


def _source(location: str):
    if location not in _OPEN_SOURCES:
        from mura_aug.prepare.mura import open_mura

        _OPEN_SOURCES[location] = open_mura(location)
    return _OPEN_SOURCES[location]


def process_task(task: Task) -> TaskResult:
    """Copy and/or render one image. Problems with the image itself become `problem`; a full disk raises."""
    from mura_aug.imaging import ImageProblem, encode_png, encode_png_fast, open_image, png_is_plain, preprocess

    result = TaskResult(task.number)
    try:
        if task.copy:
            data = _read_source(task.location, task.filename)
            result.source_size = len(data)
            image = open_image(data)  # validates every copy, byte copies included
            if png_is_plain(data):
                out = data
            else:
                out, result.converted = encode_png(image), True
            # Not fsynced one by one (two fsyncs per copy were half of a cold run): _copy_and_build flushes
            # the file system once before the state records any copy as done.
            atomic_write_bytes(task.copy_path, out, durable=False)
            stat = os.stat(task.copy_path)
            result.copied, result.size, result.mtime_ns = True, stat.st_size, stat.st_mtime_ns
        elif task.dataset is not None:
            image = open_image(task.copy_path)
        if task.dataset is not None:
            settings = task.dataset
            square = preprocess(image, settings.resolution, settings.fit, settings.crop_borders, settings.contrast)
            result.member_png = encode_png_fast(square, settings.compress_level)
    except ImageProblem as exc:
        result.problem = exc.reason if task.copy else f"copy in the workspace unreadable: {exc.reason}"
    return result


def _read_source(location: str, filename: str) -> bytes:
    from mura_aug.imaging import ImageProblem

    source = _source(location)
    try:
        return source.read_bytes(filename)
    except (KeyError, FileNotFoundError) as exc:
        raise ImageProblem("listed in MURA's CSV but missing from the folder / zip") from exc
    except IsADirectoryError as exc:
        raise ImageProblem("a folder, not an image file") from exc
    except PermissionError as exc:
        raise ImageProblem("not readable (permission denied)") from exc
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:  # RuntimeError: encrypted zip member
        raise ImageProblem(f"cannot be read from the source ({type(exc).__name__}: {exc})") from exc


def _run_tasks(tasks: List[Task], workers: int, location: str, source) -> Iterator[TaskResult]:
    """Results in task order; in-process for workers=1 (or a handful of tasks), else a process pool."""
    if workers <= 1 or len(tasks) < 4 * workers:
        previous = _OPEN_SOURCES.get(location)
        _OPEN_SOURCES[location] = source  # reuse the caller's open source instead of reopening it
        try:
            for task in tasks:
                yield process_task(task)
        finally:
            if previous is None:
                _OPEN_SOURCES.pop(location, None)
            else:
                _OPEN_SOURCES[location] = previous
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked copy of a notebook kernel (threads, open zip handles) can deadlock.
    chunk = max(1, min(32, len(tasks) // (workers * 8)))
    from concurrent.futures.process import BrokenProcessPool

    executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from executor.map(process_task, tasks, chunksize=chunk)
    except BrokenProcessPool as exc:
        executor.shutdown(wait=False, cancel_futures=True)
        raise UserError(f"A worker process of prepare died ({exc}); this usually means the machine ran out of "
                        "memory.", f"Rerun with fewer workers (workers={max(1, workers // 2)}, or 1); copies "
                        "finished so far are kept.") from exc
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


# --- the plan -------------------------------------------------------------------------------------

@dataclass
class Row:
    """One indexed MURA image and what prepare does with it."""

    record: dict  # the index row (filename, class, label, patient, study, study_id, body_part, split, view)
    path: str  # workspace-relative copy path
    source_size: Optional[int] = None  # bytes, None when unknown
    up_to_date: bool = False
    problem: Optional[str] = None
    copy_size: int = 0
    copy_mtime_ns: int = 0
    converted: bool = False


@dataclass
class DatasetPlan:
    cls: str
    rebuild: bool
    reason: str
    members: List[str] = field(default_factory=list)  # copy paths in member order


def _index_rows(images, body_part: str, workspace: Workspace) -> Tuple[List[Row], List[dict]]:
    """Rows sorted by copy path; a second file mapping to the same copy name is skipped."""
    rows: Dict[str, Row] = {}
    duplicates: List[dict] = []
    records = images.to_dict("records") if len(images) else []
    for record in sorted(records, key=lambda r: str(r["filename"])):
        record = {key: (str(value) if key != "label" else int(value)) for key, value in record.items()}
        path = workspace.copy_name(body_part, record["class"], record["split"], record["patient"], record["study"],
                                   record["view"])
        if path in rows:
            duplicates.append({"path": record["filename"],
                               "reason": f"same patient, study and view as {rows[path].record['filename']}"})
            continue
        rows[path] = Row(record, path)
    return sorted(rows.values(), key=lambda row: row.path), duplicates


def _load_state(workspace: Workspace, body_part: str) -> dict:
    path = workspace.prepare_state(body_part)
    try:
        state = json.loads(path.read_text())
        if state.get("version") == STATE_VERSION:
            return state
    except (OSError, ValueError):
        pass  # no state (first run) or an unreadable one: every copy is checked again
    return {"version": STATE_VERSION, "copies": {}, "skipped": {}}


def _mark_up_to_date(rows: List[Row], state: dict, workspace: Workspace, source) -> None:
    """Set up_to_date / problem from the recorded state: one stat per copy and one per source file."""
    copies, skipped = state.get("copies", {}), state.get("skipped", {})
    for row in rows:
        filename = row.record["filename"]
        try:
            row.source_size = int(source.size(filename))
        except (KeyError, OSError):
            row.source_size = None  # missing: the copy task reports it
            continue
        known_bad = skipped.get(filename)
        if known_bad and known_bad.get("source_size") == row.source_size:
            row.problem = known_bad["reason"]
            continue
        entry = copies.get(row.path)
        if not entry or entry.get("filename") != filename or entry.get("source_size") != row.source_size:
            continue
        try:
            stat = (workspace.root / row.path).stat()
        except OSError:
            continue
        if stat.st_size == entry.get("size") and stat.st_mtime_ns == entry.get("mtime_ns"):
            row.up_to_date, row.copy_size, row.copy_mtime_ns = True, stat.st_size, stat.st_mtime_ns
            row.converted = bool(entry.get("converted"))


def _inputs_fingerprint(members: Iterable[Tuple[str, int, int]]) -> str:
    digest = hashlib.sha1()
    for path, size, mtime_ns in members:
        digest.update(f"{path}\t{size}\t{mtime_ns}\n".encode())
    return digest.hexdigest()


def _plan_dataset(workspace: Workspace, body_part: str, cls: str, settings: DatasetSettings,
                  rows: List[Row]) -> DatasetPlan:
    candidates = [row for row in rows if row.record["split"] == "train" and row.record["class"] == cls
                  and row.problem is None]
    if any(not row.up_to_date for row in candidates):
        return DatasetPlan(cls, True, "new or changed copies")
    zip_file = workspace.dataset_zip(body_part, cls, settings.resolution)
    try:
        info = json.loads(workspace.dataset_info(body_part, cls, settings.resolution).read_text())
        stat = zip_file.stat()
    except (OSError, ValueError):
        return DatasetPlan(cls, True, "not built yet")
    fingerprint = _inputs_fingerprint((row.path, row.copy_size, row.copy_mtime_ns) for row in candidates)
    if info.get("parameters") != settings.to_dict():
        return DatasetPlan(cls, True, "parameters changed")
    if info.get("inputs_sha1") != fingerprint:
        return DatasetPlan(cls, True, "input images changed")
    if info.get("zip_size") != stat.st_size or info.get("zip_mtime_ns") != stat.st_mtime_ns:
        return DatasetPlan(cls, True, "zip changed since it was built")
    return DatasetPlan(cls, False, "up to date", list(info.get("members", [])))


# --- the stage ------------------------------------------------------------------------------------

def run_stage(workspace, settings: PrepareSettings, progress: bool = True) -> dict:
    """Stage 01 (see the module docstring); returns the summary that it also writes as JSON.

    workspace: a Workspace or its folder (None: Google Drive in Colab, ./workspace elsewhere).
    progress: show a progress bar. A file-system error (a read-only or full disk, a dropped Drive mount, a
    symbolic-link loop in MURA) ends in a UserError naming the path and the fix.
    """
    with os_errors_as_user_errors(f"preparing {settings.body_part}"):
        return _prepare(workspace, settings, progress)


def _check_apart(workspace: Workspace, source) -> None:
    """MURA is only read: refuse a workspace inside the MURA tree (stage 01 would write into it) and a MURA
    tree inside the folders the stages write (data/, results/, weights/, the cache), where a rerun or a
    clean-up could change it. MURA beside the workspace's folders (MyDrive/MURA-v1.1 with the workspace
    MyDrive, as the README suggests) and the demo tree the workspace generates itself are fine."""
    location = Path(source.location).resolve()
    root = location if source.kind == "folder" else None  # a zip is one file: nothing can be written into it
    outputs = (workspace.data, workspace.results, workspace.weights_cache, workspace.cache)
    if root is not None and (workspace.root == root or root in workspace.root.parents):
        raise UserError(f"The workspace {workspace.root} lies inside the MURA folder {root}: stage 01 would write "
                        "its data/ and results/ into the tree it promises only to read.",
                        "Choose a workspace outside MURA (e.g. its parent folder's sibling ./workspace, or "
                        "MyDrive in Colab) and run again.")
    inside = [folder for folder in outputs if folder.resolve() in (location, *location.parents)]
    if inside:
        raise UserError(f"MURA ({location}) lies inside the workspace's output folder {inside[0]}, which the "
                        "stages write into and clean up.",
                        f"Move MURA out of {inside[0]} (anywhere else, e.g. beside the workspace's data/ folder) "
                        "and run again.")


def _prepare(workspace, settings: PrepareSettings, progress: bool) -> dict:
    from mura_aug.prepare.mura import index_mura, open_mura

    settings = settings.replace()  # a checked copy: the caller's object stays as it was
    workspace = resolve_workspace(workspace)
    mura_path = _mura_or_demo(workspace, settings, progress)
    started = time.perf_counter()  # the summary's times are stage 01's own, without generating demo data
    body_part, workers = settings.body_part, settings.worker_count()
    dataset_settings = DatasetSettings(settings.resolution, settings.fit, settings.crop_borders, settings.contrast)
    seconds: Dict[str, float] = {}

    with open_mura(mura_path) as source:
        _check_apart(workspace, source)
        clock = time.perf_counter()
        index = index_mura(source, body_part)
        seconds["index"] = time.perf_counter() - clock

        clock = time.perf_counter()
        rows, duplicates = _index_rows(index.images, body_part, workspace)
        if not rows:
            raise UserError(f"MURA at {source.location} lists no {body_part} images.",
                            "Check the body part (MURA has XR_ELBOW, XR_FINGER, XR_FOREARM, XR_HAND, XR_HUMERUS, "
                            "XR_SHOULDER, XR_WRIST) and that the path is the complete MURA-v1.1 download.")
        state = _load_state(workspace, body_part)
        _mark_up_to_date(rows, state, workspace, source)
        empty = _class_without_train_images(rows)
        if empty:
            _write_skipped(workspace, body_part, index.skipped, duplicates, rows)
            raise _no_train_images(empty, body_part, source.location, workspace, "in the index")
        plans = {cls: _plan_dataset(workspace, body_part, cls, dataset_settings, rows) for cls in CLASSES}
        seconds["check"] = time.perf_counter() - clock

        clock = time.perf_counter()
        try:
            counts = _copy_and_build(rows, plans, dataset_settings, workspace, body_part, source, state, workers,
                                     progress)
        except _EmptyClass as exc:
            _write_skipped(workspace, body_part, index.skipped, duplicates, rows)
            raise _no_train_images(exc.cls, body_part, source.location, workspace,
                                   "after leaving out unreadable files") from None
        seconds["copy_and_datasets"] = time.perf_counter() - clock

        clock = time.perf_counter()
        table_rows = [row for row in rows if row.problem is None]
        frames = _write_tables(workspace, body_part, table_rows)
        skipped = _write_skipped(workspace, body_part, index.skipped, duplicates, rows)
        seconds["tables"] = time.perf_counter() - clock
        seconds["total"] = time.perf_counter() - started

        summary = _summary(source, index, mura_path, body_part, dataset_settings, workers, frames, skipped, plans,
                           counts, seconds, workspace)
    atomic_write_json(workspace.prepare_summary(body_part), summary)
    return summary


def _mura_or_demo(workspace: Workspace, settings: PrepareSettings, progress: bool) -> Path:
    """settings.mura_path, or without one the demo MURA tree in <workspace>/demo (generated once)."""
    if settings.mura_path is not None:
        return Path(settings.mura_path).expanduser()
    from mura_aug.prepare.demo_data import make_demo_mura

    return make_demo_mura(workspace.demo_source, patients=settings.demo_patients, progress=progress,
                          subtlety=settings.demo_subtlety, positive_share=settings.demo_positive_share)

class _EmptyClass(Exception):
    """Raised inside the dataset writers so that no zip is kept when a class ends up with no images."""

    def __init__(self, cls: str):
        super().__init__(cls)
        self.cls = cls


def _class_without_train_images(rows: List[Row]) -> Optional[str]:
    for cls in CLASSES:
        if not any(row.record["split"] == "train" and row.record["class"] == cls and row.problem is None
                   for row in rows):
            return cls
    return None


def _no_train_images(cls: str, body_part: str, location, workspace: Workspace, when: str) -> UserError:
    return UserError(f"MURA at {location} has no usable {body_part} train images of class {cls} ({when}); "
                     "a GAN dataset and a classifier need both classes.",
                     f"Use the complete MURA download (or demo data with more patients); "
                     f"{workspace.table(body_part, SKIPPED_TABLE)} lists the files left out and why.")


def _copy_and_build(rows: List[Row], plans: Dict[str, DatasetPlan], settings: DatasetSettings, workspace: Workspace,
                    body_part: str, source, state: dict, workers: int, progress: bool) -> dict:
    """Copy what is new or changed and render the members of the datasets being rebuilt, in one pass."""
    from tqdm.auto import tqdm

    tasks: List[Task] = []
    for number, row in enumerate(rows):
        if row.problem is not None:
            continue
        in_dataset = row.record["split"] == "train" and plans[row.record["class"]].rebuild
        if row.up_to_date and not in_dataset:
            continue
        tasks.append(Task(number, str(source.location), row.record["filename"], str(workspace.root / row.path),
                          copy=not row.up_to_date, dataset=settings if in_dataset else None))
    counts = {"copied": 0, "converted": 0, "kept": sum(row.up_to_date for row in rows), "new_problems": 0}
    writers: Dict[str, "_DatasetWriter"] = {}
    with contextlib.ExitStack() as stack:
        for cls, plan in plans.items():
            if plan.rebuild:
                writers[cls] = stack.enter_context(
                    _dataset_writer(workspace.dataset_zip(body_part, cls, settings.resolution)))
        bar = stack.enter_context(tqdm(total=len(tasks), desc=f"{body_part}: copy + datasets", unit="img",
                                       disable=not progress or not tasks))
        copied: List[Path] = []
        try:
            for result in _run_tasks(tasks, workers, str(source.location), source):
                row = rows[result.number]
                _apply_result(row, result, counts)
                if result.copied:
                    copied.append(workspace.root / row.path)
                if result.member_png is not None and row.problem is None:
                    writers[row.record["class"]].add(result.member_png, row.path)
                bar.update(1)
        finally:
            if copied:
                flush_to_disk(copied)  # the copies are on disk before the state says so
            _save_state(workspace, body_part, state, rows)  # keeps finished copies even when interrupted
        empty = _class_without_train_images(rows)
        if empty:
            raise _EmptyClass(empty)
        # Leaving the ExitStack renames the finished zips into place; then their info files are written.
    copies = {row.path: row for row in rows}
    for cls, writer in writers.items():
        plan = plans[cls]
        plan.members = writer.members
        stat = writer.path.stat()
        info = {"format": DATASET_FORMAT, "version": 1, "body_part": body_part, "class": cls,
                "parameters": settings.to_dict(), "images": len(writer.members),
                "inputs_sha1": _inputs_fingerprint((p, copies[p].copy_size, copies[p].copy_mtime_ns)
                                                   for p in writer.members),
                "zip_size": stat.st_size, "zip_mtime_ns": stat.st_mtime_ns,
                "members": writer.members}
        atomic_write_json(workspace.dataset_info(body_part, cls, settings.resolution), info)
    return counts


def _apply_result(row: Row, result: TaskResult, counts: dict) -> None:
    if result.problem is not None:
        row.problem = result.problem
        counts["new_problems"] += 1
        if result.source_size:
            row.source_size = result.source_size
        return
    if result.copied:
        row.up_to_date, row.copy_size, row.copy_mtime_ns = True, result.size, result.mtime_ns
        row.source_size, row.converted = result.source_size, result.converted
        counts["copied"] += 1
        counts["converted"] += int(result.converted)


def _save_state(workspace: Workspace, body_part: str, state: dict, rows: List[Row]) -> None:
    copies, skipped = {}, {}
    for row in rows:
        filename = row.record["filename"]
        if row.problem is not None:
            if row.source_size is not None:  # a missing file is looked for again next time
                skipped[filename] = {"source_size": row.source_size, "reason": row.problem}
        elif row.up_to_date:
            copies[row.path] = {"filename": filename, "source_size": row.source_size, "size": row.copy_size,
                                "mtime_ns": row.copy_mtime_ns, "converted": row.converted}
    new_state = {"version": STATE_VERSION, "copies": copies, "skipped": skipped}
    if new_state != state:
        atomic_write_json(workspace.prepare_state(body_part), new_state, indent=None)
        state.clear()
        state.update(new_state)


class _DatasetWriter:
    """Adds PNG members to an NVlabs-layout dataset zip, numbering them in the order they come."""

    def __init__(self, path: Path, archive: zipfile.ZipFile):
        self.path = path
        self.archive = archive
        self.members: List[str] = []  # copy paths, in member order

    def add(self, png: bytes, copy_path: str) -> None:
        number = len(self.members)
        member = zipfile.ZipInfo(f"{number // 1000:05d}/img{number:08d}.png", date_time=ZIP_DATE_TIME)
        self.archive.writestr(member, png)
        self.members.append(copy_path)


@contextlib.contextmanager
def _dataset_writer(path: Path) -> Iterator[_DatasetWriter]:
    """A dataset zip written under a temporary name and renamed into place only when complete."""
    with atomic_path(path) as tmp:
        # Members are PNGs, compressed already: stored, as NVIDIA's dataset_tool does.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            writer = _DatasetWriter(path, archive)
            yield writer
            archive.writestr(zipfile.ZipInfo("dataset.json", date_time=ZIP_DATE_TIME), json.dumps({"labels": None}))


# --- tables and summary ---------------------------------------------------------------------------

def _csv_text(records: List[dict], columns: List[str]) -> str:
    import pandas as pd

    return pd.DataFrame(records, columns=columns).to_csv(index=False, lineterminator="\n")


def _write_if_changed(path: Path, text: str) -> bool:
    """Write only when the content differs, so a rerun leaves files (and their mtimes) alone."""
    try:
        if path.read_text() == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
    return True


def _write_tables(workspace: Workspace, body_part: str, rows: List[Row]) -> Dict[str, List[dict]]:
    records = [{"path": row.path, **{key: row.record[key] for key in TABLE_COLUMNS[1:-1]}, "source": "real"}
               for row in rows]
    frames = {
        "train": [r for r in records if r["split"] == "train"],
        "valid": [r for r in records if r["split"] == "valid"],
    }
    for cls in CLASSES:
        frames[f"train_{cls}"] = [r for r in frames["train"] if r["class"] == cls]
    for name in TABLE_NAMES:
        _write_if_changed(workspace.table(body_part, name), _csv_text(frames[name], TABLE_COLUMNS))
    return frames


def _write_skipped(workspace: Workspace, body_part: str, index_skipped, duplicates: List[dict],
                   rows: List[Row]) -> List[dict]:
    skipped = _skipped_rows(index_skipped, duplicates, rows)
    _write_if_changed(workspace.table(body_part, SKIPPED_TABLE), _csv_text(skipped, SKIPPED_COLUMNS))
    return skipped


def _skipped_rows(index_skipped, duplicates: List[dict], rows: List[Row]) -> List[dict]:
    skipped: List[dict] = []
    if index_skipped is not None and len(index_skipped):
        for record in index_skipped.to_dict("records"):
            skipped.append({"path": str(record.get("filename", record.get("path", ""))),
                            "reason": str(record.get("reason", ""))})
    skipped += duplicates
    skipped += [{"path": row.record["filename"], "reason": row.problem} for row in rows if row.problem is not None]
    return sorted(skipped, key=lambda r: (r["path"], r["reason"]))


def _summary(source, index, mura_path, body_part: str, settings: DatasetSettings, workers: int,
             frames: Dict[str, List[dict]], skipped: List[dict], plans: Dict[str, DatasetPlan], counts: dict,
             seconds: Dict[str, float], workspace: Workspace) -> dict:
    from collections import Counter

    images = {}
    for split in ("train", "valid"):
        per_class = Counter(r["class"] for r in frames[split])
        images[split] = {cls: per_class.get(cls, 0) for cls in CLASSES}
        images[split]["total"] = len(frames[split])
    disagreements = index.disagreements
    return {
        "body_part": body_part,
        "mura_path": str(mura_path),
        "source_kind": getattr(index, "source_kind", getattr(source, "kind", "")),
        "used_csv": bool(getattr(index, "used_csv", True)),
        "parameters": {**settings.to_dict(), "workers": workers},
        "images": images,
        "studies": {split: len({r["study_id"] for r in frames[split]}) for split in ("train", "valid")},
        "patients": {split: len({r["patient"] for r in frames[split]}) for split in ("train", "valid")},
        "skipped": len(skipped),
        "skipped_reasons": dict(Counter(_reason_kind(r["reason"]) for r in skipped).most_common()),
        "label_disagreements": int(len(disagreements) if hasattr(disagreements, "__len__") else disagreements or 0),
        "copies": {"copied": counts["copied"], "converted": counts["converted"],
                   "kept": counts["kept"]},
        "datasets": {cls: {"path": workspace.relative(workspace.dataset_zip(body_part, cls, settings.resolution)),
                           "images": len(plan.members), "rebuilt": plan.rebuild, "why": plan.reason}
                     for cls, plan in plans.items()},
        "tables": {name: workspace.relative(workspace.table(body_part, name))
                   for name in (*TABLE_NAMES, SKIPPED_TABLE)},
        "seconds": {step: round(value, 3) for step, value in seconds.items()},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _reason_kind(reason: str) -> str:
    """'truncated or corrupt image (image file is truncated)' -> 'truncated or corrupt image'."""
    return reason.split(" (", 1)[0].split(":", 1)[0]


def format_summary(summary: dict) -> str:
    """A few human lines about a prepare summary (printed by the CLI and the notebook)."""
    images, seconds = summary["images"], summary["seconds"]
    lines = [f"{summary['body_part']} from {summary['mura_path']} ({summary['source_kind']})"]
    for split in ("train", "valid"):
        counts = images[split]
        lines.append(f"  {split:<5}: {counts['total']:>6} images ({counts['positive']} positive, "
                     f"{counts['negative']} negative) in {summary['studies'][split]} studies of "
                     f"{summary['patients'][split]} patients")
    copies = summary["copies"]
    lines.append(f"  copies: {copies['copied']} new ({copies['converted']} converted to PNG), "
                 f"{copies['kept']} kept from an earlier run")
    for cls, info in summary["datasets"].items():
        state = f"rebuilt ({info['why']})" if info["rebuilt"] else "kept (up to date)"
        lines.append(f"  dataset {info['path']}: {info['images']} images, {state}")
    if summary["skipped"]:
        reasons = ", ".join(f"{count} {reason}" for reason, count in summary["skipped_reasons"].items())
        lines.append(f"  skipped: {summary['skipped']} files ({reasons}); see {summary['tables']['skipped_files']}")
    else:
        lines.append("  skipped: none")
    lines.append(f"  time: {seconds['total']:.1f} s (" + ", ".join(
        f"{step} {value:.1f} s" for step, value in seconds.items() if step != "total") + ")")
    return "\n".join(lines)
