"""Stage 05's records: the manifest of every fake, the augmented training table, the summary.

- `data/Augmented_Fakes/manifest.csv`: one row per fake (keyed by path): how it was made, its PIL `mode` ('L',
  8-bit grey), the filter verdict (`dropped`, `drop_reason`, `score`) and `filtered_by`, the filters of the
  finished pass that gave that verdict ("" while no finished pass has judged it yet).
- `data/tables/<BODY>_train_augmented.csv`: the real train table plus every judged, kept fake.
- `data/Augmented_Fakes/<BODY>_synth_summary.json`: what the last call did, and whether its filters finished.

Two phases: the table is written only after every filter of a call has run, and a fake no finished filter pass
has judged never enters it. A call marks the summary "not finished" before it changes anything and "finished"
(with the table's checksum) only after the table is written, so `filters_finished` tells stage 06 whether the
table on disk is one whose filters finished; a failed call leaves the previous table (or none) and says so.
"""
from __future__ import annotations

import datetime
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from mura_aug.errors import UserError
from mura_aug.workspace import CLASSES, Workspace, atomic_write_csv, atomic_write_json, file_sha256

FAKE_MODE = "L"  # PIL mode of every saved fake: 8-bit grey, like the real X-rays
MANIFEST_COLUMNS = ["path", "class", "label", "body_part", "run", "kimg", "seed", "psi", "source_grid", "tile",
                    "sharpen_factor", "contrast", "mode", "dropped", "drop_reason", "score", "filtered_by"]
TABLE_EXTRA_COLUMNS = ["run", "kimg", "seed", "psi", "mode"]  # beside stage 01's columns, empty for real rows
NO_FILTER = "none"  # `filtered_by` of a fake judged by a finished pass that asked for no filter


# --- the manifest --------------------------------------------------------------------------------------

def read_manifest(workspace: Workspace):
    """The manifest as a DataFrame (empty with the right columns when there is none yet)."""
    import pandas as pd

    path = workspace.manifest
    if not path.is_file():
        return pd.DataFrame({column: pd.Series(dtype="object") for column in MANIFEST_COLUMNS})
    try:
        frame = pd.read_csv(path, dtype={"path": str, "run": str, "source_grid": str, "drop_reason": str,
                                         "class": str, "body_part": str, "mode": str, "filtered_by": str})
    except Exception as exc:
        raise UserError(f"The manifest {path} cannot be read ({type(exc).__name__}: {exc}).",
                        "Delete it and rerun synth: it is rebuilt, existing fakes are regenerated.") from exc
    for column in MANIFEST_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    for column in ("seed", "tile"):  # whole numbers, empty where they do not apply (tiles have no seed)
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    frame["dropped"] = frame["dropped"].fillna(False).astype(bool)
    # A manifest written before `filtered_by` existed: its verdicts are not known to come from a finished pass,
    # so those fakes wait for the next one.
    for column in ("drop_reason", "filtered_by", "mode"):
        frame[column] = frame[column].fillna("").astype(str)
    return frame


def write_manifest(workspace: Workspace, frame) -> Path:
    """Write the manifest atomically, one row per path (the last wins), sorted by path."""
    frame = frame.drop_duplicates(subset="path", keep="last").sort_values("path").reset_index(drop=True)
    return atomic_write_csv(workspace.manifest, frame[MANIFEST_COLUMNS + [c for c in frame.columns
                                                                                 if c not in MANIFEST_COLUMNS]])


def merge_manifest(old, new_rows: List[dict]):
    """`old` with `new_rows` added; a new row replaces the old row of its path."""
    import pandas as pd

    if not new_rows:
        return old
    new = pd.DataFrame(new_rows)
    if old.empty:
        return new
    return pd.concat([old[~old["path"].isin(new["path"])], new], ignore_index=True)


def manifest_row(rel: str, cls: str, body_part: str, snapshot, seed, source_grid: str, tile, psi,
                 sharpen_factor, contrast) -> dict:
    """The manifest row of a fresh fake: kept so far, but judged by no filter yet."""
    return {"path": rel, "class": cls, "label": 1 if cls == "positive" else 0, "body_part": body_part,
            "run": snapshot.run, "kimg": float(snapshot.kimg), "seed": seed, "psi": psi,
            "source_grid": source_grid, "tile": tile, "sharpen_factor": sharpen_factor, "contrast": contrast,
            "mode": FAKE_MODE, "dropped": False, "drop_reason": "", "score": None, "filtered_by": ""}


def _missing(value) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def is_done(manifest_rows: Dict[str, dict], workspace: Workspace, rel_path: str, **settings) -> bool:
    """A fake counts as done when its file exists and the manifest recorded the same settings, grey included
    (a fake saved in colour by an older version is made again)."""
    row = manifest_rows.get(rel_path)
    if row is None or not workspace.absolute(rel_path).is_file() or row.get("mode") != FAKE_MODE:
        return False
    for key, value in settings.items():
        old = row.get(key)
        if _missing(value):
            if not _missing(old):
                return False
        elif _missing(old) or not math.isclose(float(old), float(value)):
            return False
    return True


# --- the augmented table -----------------------------------------------------------------------------------

def check_train_table(workspace: Workspace, body_part: str) -> Path:
    """The real train table of stage 01; UserError when it is missing."""
    train_path = workspace.table(body_part, "train")
    if not train_path.is_file():
        raise UserError(f"The training table {train_path} does not exist.",
                        "Run stage 01 first (notebook 01_prepare or python -m mura_aug prepare).")
    return train_path


def kept_fakes(workspace: Workspace, body_part: str, manifest=None):
    """The manifest rows of `body_part` that belong in the table: judged by a finished pass, kept, on disk."""
    manifest = read_manifest(workspace) if manifest is None else manifest
    fakes = manifest[(manifest["body_part"] == body_part) & (~manifest["dropped"]) & (manifest["filtered_by"] != "")]
    return fakes[[workspace.absolute(p).is_file() for p in fakes["path"]]]


def write_augmented_table(workspace: Workspace, body_part: str, manifest=None):
    """`<BODY>_train_augmented.csv` = the real train table + every judged, kept fake of `body_part`.

    Rebuilt from both each time, so it never holds a fake twice. Called by `stage.run_stage` after its filters:
    a fake that no finished filter pass has judged is left out whoever calls it.
    """
    import pandas as pd

    real = pd.read_csv(check_train_table(workspace, body_part))
    if "source" not in real.columns:
        real["source"] = "real"
    real = real[real["source"] != "synthetic"]
    fakes = kept_fakes(workspace, body_part, manifest)
    synthetic = pd.DataFrame({
        "path": fakes["path"].values,
        "filename": fakes["path"].values,
        "class": fakes["class"].values,
        "label": [1 if c == "positive" else 0 for c in fakes["class"]],
        "patient": "synthetic",
        "study": "synthetic",
        "study_id": fakes["path"].values,  # one study per fake: it is an image on its own
        "body_part": body_part,
        "split": "train",
        "view": "image1",
        "source": "synthetic",
        "run": fakes["run"].values,
        "kimg": fakes["kimg"].values,
        "seed": fakes["seed"].values,
        "psi": fakes["psi"].values,
        "mode": fakes["mode"].values,
    })
    table = pd.concat([real, synthetic], ignore_index=True) if len(synthetic) else real.copy()
    for column in TABLE_EXTRA_COLUMNS:
        if column not in table.columns:
            table[column] = None
    atomic_write_csv(workspace.augmented_table(body_part), table)
    return table


def table_counts(table) -> Dict[str, int]:
    """{'real': rows, 'synthetic': rows} of an augmented table."""
    synthetic = table["source"] == "synthetic"
    return {"real": int((~synthetic).sum()), "synthetic": int(synthetic.sum())}


def sample_real_and_fake(workspace: Workspace, body_part: str, n: int = 8, seed: int = 0):
    """Up to `n` real training images and `n` kept fakes per class: ({cls: paths}, {cls: paths})."""
    import pandas as pd

    table_file = workspace.augmented_table(body_part)
    if not table_file.is_file():
        raise UserError(f"No augmented table {table_file}.", "Run stage 05 first (stage.run_stage).")
    table = pd.read_csv(table_file)
    real, fake = {}, {}
    for cls in CLASSES:
        of_class = table[table["class"] == cls]
        for target, rows in ((real, of_class[of_class["source"] != "synthetic"]),
                             (fake, of_class[of_class["source"] == "synthetic"])):
            picked = rows.sample(n=min(n, len(rows)), random_state=seed) if len(rows) else rows
            target[cls] = [workspace.absolute(p) for p in picked["path"]]
    return real, fake


# --- what a call did ------------------------------------------------------------------------------------

@dataclass
class SynthResult:
    """What one generation or grid cut did: the manifest rows it covers and the counts."""

    rows: list  # manifest rows (dicts) of the fakes this call is about
    generated: int  # images written now
    skipped: int  # images already done by an earlier run
    seconds: float  # wall time of the call

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows, columns=MANIFEST_COLUMNS)


# --- the summary and the two-phase record ----------------------------------------------------------------

def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def mark_started(workspace: Workspace, body_part: str, settings: dict) -> Path:
    """Before a call changes anything: the summary says its filters have not finished (stage 06 then waits)."""
    return atomic_write_json(workspace.synth_summary(body_part), {
        "body_part": body_part, "started": _now(), "settings": settings,
        "filters": {"finished": False, "error": None}})


def mark_failed(workspace: Workspace, body_part: str, error: BaseException) -> None:
    """After a call failed: the summary keeps "not finished" and says why (best effort: the failure that
    brought us here is what the user must see, so a second one while recording it is not raised)."""
    path = workspace.synth_summary(body_part)
    try:
        summary = json.loads(path.read_text()) if path.is_file() else {"body_part": body_part}
        summary["filters"] = {"finished": False, "error": f"{type(error).__name__}: {error}".strip()}
        summary["failed"] = _now()
        atomic_write_json(path, summary)
    except (OSError, ValueError, UserError):
        pass


def write_summary(workspace: Workspace, body_part: str, settings: dict, generated: Dict[str, SynthResult],
                  cut: Dict[str, SynthResult], snapshots: dict, resolutions: Dict[str, int], table,
                  filters: List[str], dropped: Dict[str, int]) -> Path:
    """After the table is written: what the call did, and that its filters finished for that very table."""
    previous = workspace.synth_summary(body_part)
    try:
        started = json.loads(previous.read_text()).get("started")
    except (OSError, ValueError, AttributeError):
        started = None

    def counts(result: SynthResult) -> dict:
        return {"requested": len(result.rows), "generated": result.generated, "skipped": result.skipped,
                "seconds": round(result.seconds, 3)}

    table_path = workspace.augmented_table(body_part)
    summary = {
        "body_part": body_part,
        "started": started,
        "finished": _now(),
        "settings": settings,
        "classes": {cls: {**counts(result), "run": snapshots[cls].run if cls in snapshots else None,
                          "kimg": snapshots[cls].kimg if cls in snapshots else None,
                          "resolution": resolutions.get(cls)}
                    for cls, result in generated.items()},
        "grids": {grid: counts(result) for grid, result in cut.items()},
        "mode": FAKE_MODE,
        "filters": {"finished": True, "error": None, "applied": filters or [NO_FILTER], "dropped": dropped},
        "table": workspace.relative(table_path),
        "table_rows": table_counts(table),
        "table_sha256": file_sha256(table_path),
    }
    return atomic_write_json(workspace.synth_summary(body_part), summary)


def unfinished_reason(workspace: Workspace, body_part: str) -> Optional[str]:
    """Why the augmented table of `body_part` is not one whose stage-05 filters finished (None when it is)."""
    table, path = workspace.augmented_table(body_part), workspace.synth_summary(body_part)
    if not table.is_file():
        return f"there is no augmented table {table}"
    try:
        summary = json.loads(path.read_text())
        filters = summary["filters"]
        finished, error = filters["finished"] is True, filters.get("error")
        recorded = summary.get("table_sha256")
    except (OSError, ValueError, KeyError, TypeError):
        return f"the stage-05 summary {path} is missing or unreadable, so nothing says that the filters finished"
    if not finished:
        return f"the last stage-05 call did not finish its filters ({error or 'it was interrupted'})"
    if recorded != file_sha256(table):
        return f"{table} is not the table that stage 05 wrote after its filters (it was changed since)"
    return None


def filters_finished(workspace: Workspace, body_part: str) -> bool:
    """True when the augmented table on disk is the one stage 05 wrote after all its filters finished."""
    return unfinished_reason(workspace, body_part) is None


def require_filters_finished(workspace: Workspace, body_part: str) -> Path:
    """The augmented table, or a UserError saying why it cannot be trusted (for stage 06)."""
    reason = unfinished_reason(workspace, body_part)
    if reason is not None:
        raise UserError(f"The augmented table of {body_part} cannot be used: {reason}.",
                        "Run stage 05 again (notebook 05 or python -m mura_aug synth) until it finishes: finished "
                        "fakes are kept, the filters run again.")
    return workspace.augmented_table(body_part)
