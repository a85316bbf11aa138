"""Index MURA-v1.1 (Stanford musculoskeletal radiographs) from its folder, the folder above it, or its zip.

`open_mura(path)` gives a `MuraSource` that lists and reads files by MURA-relative names
(`MURA-v1.1/train/XR_SHOULDER/patient00001/study1_positive/image1.png`) whatever the storage: a folder
is walked with os.scandir (only the chosen body part's subtree), a zip is read member by member without
extracting it. `index_mura(path, body_part)` turns one body part into a table of images with labels.

The label comes from the study folder name (`study1_positive` -> 1), as in the original work; the
labeled-studies CSV is only cross-checked and every disagreement is reported. Images are never opened or
decoded here: prepare does that through imaging.py.
"""
from __future__ import annotations

import bisect
import os
import re
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Optional, Sequence, Tuple

from mura_aug.errors import UserError

if TYPE_CHECKING:  # pandas is imported inside functions: importing this module stays cheap
    import pandas as pd

BODY_PARTS = ("XR_ELBOW", "XR_FINGER", "XR_FOREARM", "XR_HAND", "XR_HUMERUS", "XR_SHOULDER", "XR_WRIST")
DEFAULT_BODY_PART = "XR_SHOULDER"
SPLITS = ("train", "valid")
TOP = "MURA-v1.1"  # every name this module hands out or accepts starts with TOP + "/"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")  # compared in lower case
IMAGE_COLUMNS = ("filename", "class", "label", "patient", "study", "study_id", "body_part", "split", "view")
STUDY_FOLDER = re.compile(r"^(study\d+)_(positive|negative)$", re.IGNORECASE)
MACOSX = "__MACOSX"
DOWNLOAD_URL = "https://stanfordmlgroup.github.io/competitions/mura/"
MAX_LISTED = 12  # entries shown when an error message lists what was found instead


class MuraWarning(UserWarning):
    """Something in the MURA data worth knowing that does not stop indexing (missing CSV, label mismatch)."""


def describe_layout() -> str:
    """The expected MURA-v1.1 layout as a short tree drawing, for error messages and notebooks."""
    return "\n".join([
        "MURA-v1.1/                         <- pass this folder, the folder holding it, or MURA-v1.1.zip",
        "├── train_image_paths.csv",
        "├── train_labeled_studies.csv",
        "├── valid_image_paths.csv",
        "├── valid_labeled_studies.csv",
        "├── train/",
        "│   ├── XR_SHOULDER/               (and XR_ELBOW, XR_FINGER, XR_FOREARM, XR_HAND, XR_HUMERUS, XR_WRIST)",
        "│   │   ├── patient00001/",
        "│   │   │   ├── study1_positive/   (or study1_negative)",
        "│   │   │   │   ├── image1.png",
        "│   │   │   │   └── image2.png",
        "│   │   │   └── ...",
        "│   │   └── ...",
        "│   └── ...",
        "└── valid/                         (same as train/)",
    ])


# --- names ----------------------------------------------------------------------------------------

def normalise_name(name: str) -> str:
    """A MURA-relative POSIX name that starts with 'MURA-v1.1/'.

    Accepts backslashes, a leading './' or '/', names without the top folder ('train/XR_...') and names
    under another top folder ('MURA-v1.0/train/...'), as CSVs and zips made elsewhere may have them.
    """
    parts = [part for part in str(name).replace("\\", "/").split("/") if part not in ("", ".")]
    trailing = "/" if str(name).endswith(("/", "\\")) and parts else ""
    if not parts:
        return TOP + "/"
    if parts[0] != TOP:
        if parts[0] in SPLITS or parts[0].endswith(".csv"):
            parts.insert(0, TOP)
        elif len(parts) > 1 and parts[1] in SPLITS:
            parts[0] = TOP  # another top folder name
        else:
            parts.insert(0, TOP)
    return "/".join(parts) + trailing


def _normalise_prefix(prefix: str) -> str:
    """A prefix for `names()`: '' or any start of 'MURA-v1.1/' means the whole tree."""
    prefix = str(prefix).replace("\\", "/")
    if prefix == "" or (TOP + "/").startswith(prefix):
        return TOP + "/"
    if prefix.startswith(TOP + "/"):
        return prefix
    return normalise_name(prefix) if prefix.endswith("/") else normalise_name(prefix).rstrip("/")


def junk_reason(name: str) -> Optional[str]:
    """Why a file is not a radiograph to index (None when it is an image file)."""
    parts = name.split("/")
    base = parts[-1]
    if MACOSX in parts:
        return "not an image (macOS metadata in __MACOSX/)"
    if base == ".DS_Store":
        return "not an image (macOS folder metadata .DS_Store)"
    if base.startswith("._"):
        return "not an image (macOS metadata '._' file)"
    if base.lower() in ("thumbs.db", "desktop.ini"):
        return "not an image (Windows folder metadata)"
    extension = os.path.splitext(base)[1].lower()
    if extension not in IMAGE_EXTENSIONS:
        return f"not an image (extension '{extension or 'none'}'; accepted: {', '.join(IMAGE_EXTENSIONS)})"
    return None


def _is_image_name(name: str) -> bool:
    return junk_reason(name) is None


def _natural_key(text: str) -> tuple:
    """Sort 'study10' after 'study2'."""
    return tuple((0, int(token), "") if token.isdigit() else (1, 0, token)
                 for token in re.split(r"(\d+)", text))


# --- sources --------------------------------------------------------------------------------------

class MuraSource:
    """MURA files by MURA-relative name, from a folder or a zip. Use as a context manager.

    Worker processes re-open it with `open_mura(source.location)`; pickling does exactly that.
    """

    kind: str = ""
    location: Path

    def names(self, prefix: str = "") -> List[str]:
        """Sorted MURA-relative names of image files (.png/.jpg/.jpeg, no macOS junk) under `prefix`."""
        return [name for name in self._all_files(_normalise_prefix(prefix)) if _is_image_name(name)]

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def size(self, name: str) -> int:
        raise NotImplementedError

    def read_csv_lines(self, csv_name: str) -> Optional[List[str]]:
        """Non-empty, stripped lines of a CSV at the top of MURA-v1.1 (e.g. 'train_image_paths.csv'); None if absent."""
        name = normalise_name(csv_name)
        if not self.exists(name):
            return None
        text = self.read_bytes(name).decode("utf-8-sig", errors="replace")  # -sig: tolerate a BOM
        return [line.strip() for line in text.splitlines() if line.strip()]

    def available_body_parts(self) -> List[str]:
        """Body part folders (XR_*) found under train/ and valid/, sorted."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _all_files(self, prefix: str) -> List[str]:
        """Sorted names of every file under `prefix`, junk included (macOS '__MACOSX/' ones prefixed so)."""
        raise NotImplementedError

    def __enter__(self) -> "MuraSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __reduce__(self):
        return (open_mura, (str(self.location),))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.location)!r})"


class FolderSource(MuraSource):
    """An unpacked MURA-v1.1 folder (its own name may differ; names still start with 'MURA-v1.1/')."""

    kind = "folder"

    def __init__(self, root: Path):
        self.location = Path(root)

    def _path(self, name: str) -> Optional[Path]:
        name = normalise_name(name)
        relative = name[len(TOP) + 1:]
        if ".." in relative.split("/"):  # never read outside the tree, whatever a CSV says
            return None
        return self.location / relative

    def exists(self, name: str) -> bool:
        path = self._path(name)
        return path is not None and path.is_file()

    def read_bytes(self, name: str) -> bytes:
        path = self._path(name)
        if path is None or not path.is_file():
            raise FileNotFoundError(f"{name} is not in {self.location}")
        return path.read_bytes()

    def size(self, name: str) -> int:
        path = self._path(name)
        if path is None:
            raise FileNotFoundError(f"{name} is not in {self.location}")
        return path.stat().st_size

    def available_body_parts(self) -> List[str]:
        found = set()
        for split in SPLITS:
            try:
                with os.scandir(self.location / split) as entries:
                    found.update(e.name for e in entries if e.name.startswith("XR_") and e.is_dir())
            except OSError:
                continue
        return sorted(found)

    def _all_files(self, prefix: str) -> List[str]:
        # Walk only the deepest folder the prefix names, so one body part never lists the others.
        relative = prefix[len(TOP) + 1:]
        folder_part = relative.rsplit("/", 1)[0] if "/" in relative else ""
        start = self.location / folder_part if folder_part else self.location
        found: List[str] = []
        pending = [(start, f"{TOP}/{folder_part}/" if folder_part else f"{TOP}/")]
        visited = set()  # (device, inode) of every folder walked: a symbolic link back up is walked once only
        while pending:
            folder, name_prefix = pending.pop()
            try:
                identity = (folder.stat().st_dev, folder.stat().st_ino)
                if identity in visited:
                    warnings.warn(f"{folder} is a symbolic link to a folder already read (a link loop); it was "
                                  "skipped.", MuraWarning, stacklevel=3)
                    continue
                visited.add(identity)
                with os.scandir(folder) as entries:
                    for entry in entries:
                        name = name_prefix + entry.name
                        if entry.is_dir():
                            if (name + "/").startswith(prefix) or prefix.startswith(name + "/"):
                                pending.append((Path(entry.path), name + "/"))
                        elif name.startswith(prefix):
                            found.append(name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:  # a link loop the walk cannot resolve, a folder we may not read, a dead mount
                warnings.warn(f"The MURA folder {folder} cannot be read ({exc.strerror}); its images are left "
                              "out (they appear in the skipped-files table when the CSV lists them).",
                              MuraWarning, stacklevel=3)
        return sorted(found)


class ZipSource(MuraSource):
    """MURA inside a zip, read member by member; only the central directory is read when opening."""

    kind = "zip"

    def __init__(self, zip_path: Path, archive: zipfile.ZipFile, top_prefix: str):
        self.location = Path(zip_path)
        self._archive = archive
        self._members: Dict[str, zipfile.ZipInfo] = {}  # normalised name -> member
        macosx: List[str] = []
        for info in archive.infolist():
            raw = info.filename.replace("\\", "/")
            if raw.endswith("/"):
                continue
            if raw.startswith(MACOSX + "/"):
                inner = raw[len(MACOSX) + 1:]
                if inner.startswith(top_prefix):
                    macosx.append(f"{MACOSX}/{TOP}/{inner[len(top_prefix):]}")
            elif raw.startswith(top_prefix):
                self._members[f"{TOP}/{raw[len(top_prefix):]}"] = info
        self._sorted_names = sorted(self._members)
        self._macosx = sorted(macosx)

    def _info(self, name: str) -> Optional[zipfile.ZipInfo]:
        return self._members.get(normalise_name(name))

    def exists(self, name: str) -> bool:
        return self._info(name) is not None

    def read_bytes(self, name: str) -> bytes:
        info = self._info(name)
        if info is None:
            raise FileNotFoundError(f"{name} is not in {self.location}")
        return self._archive.read(info)

    def size(self, name: str) -> int:
        info = self._info(name)
        if info is None:
            raise FileNotFoundError(f"{name} is not in {self.location}")
        return info.file_size

    def available_body_parts(self) -> List[str]:
        found = set()
        for name in self._sorted_names:
            parts = name.split("/")
            if len(parts) > 3 and parts[1] in SPLITS and parts[2].startswith("XR_"):
                found.add(parts[2])
        return sorted(found)

    def close(self) -> None:
        self._archive.close()

    def _all_files(self, prefix: str) -> List[str]:
        start = bisect.bisect_left(self._sorted_names, prefix)
        found = []
        for name in self._sorted_names[start:]:
            if not name.startswith(prefix):
                break
            found.append(name)
        junk_prefix = f"{MACOSX}/{prefix}"
        found.extend(name for name in self._macosx if name.startswith(junk_prefix))
        return sorted(found)


# --- opening --------------------------------------------------------------------------------------

def _looks_like_root(folder: Path) -> bool:
    """A MURA-v1.1 folder: train/ or valid/ holding XR_* folders, or the image-paths CSVs."""
    for split in SPLITS:
        if (folder / f"{split}_image_paths.csv").is_file():
            return True
        try:
            with os.scandir(folder / split) as entries:
                if any(e.name.startswith("XR_") and e.is_dir() for e in entries):
                    return True
        except OSError:
            continue
    return False


def _zip_top_prefix(archive: zipfile.ZipFile) -> Optional[str]:
    """The member-name prefix in front of train/XR_*/... ('MURA-v1.1/', '' or another folder name)."""
    votes: Counter = Counter()
    for raw in archive.namelist():
        raw = raw.replace("\\", "/")
        if raw.startswith(MACOSX + "/"):
            continue
        parts = raw.split("/")
        for i in range(len(parts) - 2):
            if parts[i] in SPLITS and parts[i + 1].startswith("XR_"):
                votes["/".join(parts[:i]) + "/" if i else ""] += 1
                break
        else:
            base = parts[-1]
            if base in {f"{split}_image_paths.csv" for split in SPLITS}:
                votes["/".join(parts[:-1]) + "/" if len(parts) > 1 else ""] += 1
    return votes.most_common(1)[0][0] if votes else None


def _listing(folder: Path) -> str:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        return f"(cannot list it: {exc.strerror})"
    if not entries:
        return "an empty folder"
    shown = [e.name + ("/" if e.is_dir() else "") for e in entries[:MAX_LISTED]]
    more = f", ... ({len(entries) - MAX_LISTED} more)" if len(entries) > MAX_LISTED else ""
    return ", ".join(shown) + more


def _wrong_path(path: Path, found: str, hint: str = "") -> UserError:
    problem = (f"No MURA-v1.1 data at {path}.\n{found}\nExpected this layout:\n{describe_layout()}")
    fix = (f"{hint}Pass the MURA-v1.1 folder, the folder that holds it, or MURA-v1.1.zip (download: "
           f"{DOWNLOAD_URL}); for a try-out, generate demo data with `python -m mura_aug make-demo-data`.")
    return UserError(problem, fix)


def _root_above(path: Path) -> Optional[Path]:
    """A MURA root among the few folders above `path` (the user pointed inside the tree)."""
    for ancestor in list(path.parents)[:4]:
        if _looks_like_root(ancestor):
            return ancestor
    return None


def open_mura(path) -> MuraSource:
    """Open MURA from its folder, the folder holding it, or its zip. Returns a MuraSource (a context manager)."""
    if isinstance(path, MuraSource):
        return open_mura(path.location)
    if path is None or str(path).strip() == "":
        raise UserError("No MURA path was given.",
                        f"Set MURA_PATH to the MURA-v1.1 folder, its parent folder or MURA-v1.1.zip "
                        f"(download: {DOWNLOAD_URL}), or leave it empty in notebook 01 to use demo data.")
    path = Path(path).expanduser()
    if path.is_file():
        return _open_zip(path)
    if path.is_dir():
        if _looks_like_root(path):
            return FolderSource(path)
        child = path / TOP
        if child.is_dir() and _looks_like_root(child):
            return FolderSource(child)
        roots = [Path(e.path) for e in sorted(os.scandir(path), key=lambda e: e.name)
                 if e.is_dir() and _looks_like_root(Path(e.path))]
        if len(roots) == 1:  # a MURA folder under another name (MURA-v1.0, mura)
            return FolderSource(roots[0])
        zip_child = path / f"{TOP}.zip"
        if zip_child.is_file():
            return _open_zip(zip_child)
        above = _root_above(path)
        hint = f"This looks like a folder inside MURA; pass {above} instead. " if above else ""
        if len(roots) > 1:
            hint += f"Several MURA folders are here ({', '.join(r.name for r in roots)}); pass one of them. "
        raise _wrong_path(path, f"Found there instead: {_listing(path)}.", hint)
    existing = next((p for p in path.parents if p.is_dir()), None)
    found = f"{path} does not exist."
    if existing is not None and existing != Path("."):
        found += f" The nearest existing folder, {existing}, holds: {_listing(existing)}."
    raise _wrong_path(path, found)


def _open_zip(path: Path) -> ZipSource:
    if not zipfile.is_zipfile(path):
        raise _wrong_path(path, f"Found there instead: a file of {path.stat().st_size} bytes that is not a zip "
                                f"archive.")
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise UserError(f"Cannot read the zip {path}: {exc}.",
                        "Download MURA-v1.1.zip again (the file may be incomplete), then retry.") from exc
    top_prefix = _zip_top_prefix(archive)
    if top_prefix is None:
        members = [n for n in archive.namelist() if not n.startswith(MACOSX + "/")]
        shown = ", ".join(members[:MAX_LISTED]) + (", ..." if len(members) > MAX_LISTED else "")
        archive.close()
        raise _wrong_path(path, f"Found there instead: a zip with {len(members)} members"
                                f"{': ' + shown if members else ''}.")
    return ZipSource(path, archive, top_prefix)


# --- the index ------------------------------------------------------------------------------------

@dataclass
class MuraIndex:
    """One body part of MURA as tables. `images` is sorted by split, patient, study, view."""

    images: "pd.DataFrame"  # columns IMAGE_COLUMNS
    skipped: "pd.DataFrame"  # columns filename, reason
    disagreements: "pd.DataFrame"  # columns study_id, csv_label, folder_label
    used_csv: bool  # False when an image-paths CSV was missing and folders were walked
    source_kind: str  # "folder" / "zip"


def check_body_part(body_part: str) -> str:
    """'XR_SHOULDER' from 'XR_SHOULDER', 'xr_shoulder' or 'SHOULDER'; UserError listing the seven otherwise."""
    name = str(body_part).strip().upper()
    if name and not name.startswith("XR_"):
        name = "XR_" + name
    if name not in BODY_PARTS:
        raise UserError(f"Unknown body part {body_part!r}.",
                        f"Use one of MURA's seven: {', '.join(BODY_PARTS)} (default {DEFAULT_BODY_PART}).")
    return name


def _check_splits(splits) -> Tuple[str, ...]:
    if isinstance(splits, str):
        splits = (splits,)
    splits = tuple(splits)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise UserError(f"Unknown split(s) {', '.join(map(str, unknown)) or '(none given)'}.",
                        f"Use one or both of {', '.join(SPLITS)}.")
    return splits


def _image_record(name: str, split: str, body_part: str) -> Tuple[Optional[dict], Optional[str]]:
    """(row, None) for a well-placed image name, or (None, reason) when it cannot be indexed."""
    reason = junk_reason(name)
    if reason:
        return None, reason
    parts = name.split("/")
    if len(parts) != 6 or parts[1] != split or parts[2] != body_part:
        return None, ("not inside a study*_positive / study*_negative folder "
                      "(expected split/body part/patient/study/image)")
    _, _, _, patient, study_folder, file_name = parts
    match = STUDY_FOLDER.match(study_folder)
    if not match:
        return None, (f"study folder '{study_folder}' is not named study<N>_positive or study<N>_negative, "
                      f"so its label is unknown")
    cls = match.group(2).lower()
    return {
        "filename": name,
        "class": cls,
        "label": 1 if cls == "positive" else 0,
        "patient": patient,
        "study": match.group(1).lower(),
        "study_id": "/".join(parts[1:5]),
        "body_part": body_part,
        "split": split,
        "view": os.path.splitext(file_name)[0],
    }, None


def _first_column(lines: Iterable[str]) -> Tuple[List[str], int]:
    """(the first field of every line, the most fields a line has). MURA's image-paths CSV has one column,
    the path; a copy saved with an extra column (an index, a label) still lists its paths first."""
    fields = [line.split(",") for line in lines if line.strip()]
    return [row[0].strip() for row in fields], max((len(row) for row in fields), default=1)


def _csv_labels(lines: Iterable[str], study_prefix: str) -> Tuple[Dict[str, int], int]:
    """study_id -> CSV label for studies under `study_prefix`, and how many lines could not be read."""
    labels: Dict[str, int] = {}
    unreadable = 0
    for line in lines:
        path, _, label_text = line.rpartition(",")
        name = normalise_name(path.strip()).rstrip("/")
        if not (name + "/").startswith(study_prefix):
            continue
        try:
            label = int(label_text.strip())
        except ValueError:
            unreadable += 1
            continue
        if label not in (0, 1):
            unreadable += 1
            continue
        labels[name[len(TOP) + 1:]] = label
    return labels, unreadable


def _index_split(source: MuraSource, split: str, body_part: str, rows: list, skipped: list,
                 disagreements: list, notes: dict) -> bool:
    """Index one split into the lists; returns True when its image-paths CSV was used."""
    prefix = f"{TOP}/{split}/{body_part}/"
    paths_csv, studies_csv = f"{split}_image_paths.csv", f"{split}_labeled_studies.csv"
    present = source._all_files(prefix)  # the body part's subtree only
    listed = source.read_csv_lines(paths_csv)
    if listed is None:
        notes.setdefault("missing_csv", []).append(paths_csv)
        candidates = present
    else:
        present_set = set(present)
        listed, columns = _first_column(listed)
        if columns > 1:
            notes.setdefault("extra_columns", []).append(f"{paths_csv} has {columns} columns")
        candidates = list(dict.fromkeys(n for n in map(normalise_name, listed) if n.startswith(prefix)))
        listed_set = set(candidates)
        for name in candidates:
            if name not in present_set and junk_reason(name) is None:
                skipped.append((name, "listed in CSV but missing"))
        candidates = [n for n in candidates if n in present_set]
        for name in present:
            if name not in listed_set:
                reason = junk_reason(name) or f"present but not listed in {paths_csv}"
                skipped.append((name, reason))
    for name in candidates:
        record, reason = _image_record(name, split, body_part)
        if record is None:
            skipped.append((name, reason))
        else:
            rows.append(record)

    study_lines = source.read_csv_lines(studies_csv)
    if study_lines is None:
        notes.setdefault("missing_csv", []).append(studies_csv)
        return listed is not None
    csv_labels, unreadable = _csv_labels(study_lines, prefix)
    if unreadable:
        notes.setdefault("unreadable", []).append(f"{studies_csv}: {unreadable} line(s)")
    folder_labels = {row["study_id"]: row["label"] for row in rows if row["split"] == split}
    for study_id, folder_label in folder_labels.items():
        if study_id not in csv_labels:
            notes.setdefault("unlabeled", []).append(study_id)
        elif csv_labels[study_id] != folder_label:
            disagreements.append((study_id, csv_labels[study_id], folder_label))
    return listed is not None


def index_mura(source_or_path, body_part: str = DEFAULT_BODY_PART, splits: Sequence[str] = SPLITS) -> MuraIndex:
    """Index one body part of MURA (folder, parent folder, zip, or an open MuraSource).

    The label comes from the study folder name; the labeled-studies CSV is cross-checked and every
    mismatch is listed in `disagreements` (with a warning). Without an image-paths CSV the split's
    folders are walked instead (with a warning).
    """
    import pandas as pd

    body_part = check_body_part(body_part)
    splits = _check_splits(splits)
    owned = not isinstance(source_or_path, MuraSource)
    source = open_mura(source_or_path) if owned else source_or_path
    try:
        rows: list = []
        skipped: list = []
        disagreements: list = []
        notes: dict = {}
        used = [_index_split(source, split, body_part, rows, skipped, disagreements, notes) for split in splits]
        if not rows:
            found = source.available_body_parts()
            unusable = (f" {len(skipped)} file(s) there could not be used, e.g. {skipped[0][0]}: {skipped[0][1]}."
                        if skipped else "")
            raise UserError(
                f"No {body_part} images in {source.location} (splits: {', '.join(splits)}). Body parts found "
                f"there: {', '.join(found) if found else 'none'}.{unusable}",
                "Set BODY_PART to one of the body parts found, or point MURA_PATH at a MURA-v1.1 that holds "
                f"{body_part} (train/{body_part}/patient*/study*_positive|negative/image*.png).")
        kind = source.kind
    finally:
        if owned:
            source.close()

    _warn_notes(notes, disagreements, body_part)
    split_order = {split: i for i, split in enumerate(SPLITS)}
    rows.sort(key=lambda r: (split_order[r["split"]], _natural_key(r["patient"]), _natural_key(r["study"]),
                             _natural_key(r["view"]), r["filename"]))
    images = pd.DataFrame(rows, columns=list(IMAGE_COLUMNS))
    images["label"] = images["label"].astype("int64")
    skipped_table = pd.DataFrame(sorted(set(skipped)), columns=["filename", "reason"])
    disagreement_table = pd.DataFrame(sorted(disagreements), columns=["study_id", "csv_label", "folder_label"])
    disagreement_table = disagreement_table.astype({"csv_label": "int64", "folder_label": "int64"})
    return MuraIndex(images=images, skipped=skipped_table, disagreements=disagreement_table,
                     used_csv=all(used), source_kind=kind)


def _warn_notes(notes: dict, disagreements: list, body_part: str) -> None:
    if notes.get("missing_csv"):
        warnings.warn(f"MURA CSV(s) missing: {', '.join(notes['missing_csv'])}. Images were found by walking "
                      f"the folders and labelled from the study folder names; CSV labels were not cross-checked "
                      f"where the labeled-studies CSV is missing.", MuraWarning, stacklevel=3)
    if disagreements:
        examples = "; ".join(f"{s} (CSV {c}, folder {f})" for s, c, f in sorted(disagreements)[:3])
        warnings.warn(f"{len(disagreements)} {body_part} stud(ies) have a labeled-studies CSV label that "
                      f"disagrees with the study folder name, e.g. {examples}. The folder name is used; all are "
                      f"listed in MuraIndex.disagreements.", MuraWarning, stacklevel=3)
    if notes.get("unlabeled"):
        unlabeled = notes["unlabeled"]
        warnings.warn(f"{len(unlabeled)} {body_part} stud(ies) are not in the labeled-studies CSV, e.g. "
                      f"{unlabeled[0]}; their folder-name labels are used unchecked.", MuraWarning, stacklevel=3)
    if notes.get("extra_columns"):
        warnings.warn(f"{'; '.join(notes['extra_columns'])}; MURA's image-paths CSV has one column, the image "
                      "path: the first column was read as the path and the others were ignored.", MuraWarning,
                      stacklevel=3)
    if notes.get("unreadable"):
        warnings.warn(f"Unreadable labeled-studies lines (expected 'path/,0' or 'path/,1'): "
                      f"{', '.join(notes['unreadable'])}.", MuraWarning, stacklevel=3)
