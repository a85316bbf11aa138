"""Stage 05: synthetic X-rays for the training table. `run_stage` is the one entry point of notebook 05 and of
`python -m mura_aug synth`.

One call, in this order:
1. pick the snapshot of each class (`snapshots`), say which runs and resolutions were picked, and refuse runs
   of different resolutions unless ALLOW_MIXED_RESOLUTIONS;
2. make the fakes: N_PER_CLASS per class from G (`generate`), and/or tiles cut from grids (`grids`), each
   saved as 8-bit grey and sharpened; finished fakes are kept, so a rerun makes only what is missing;
3. judge every fake of the classes with the filters the settings ask for (`filters`), from scratch;
4. only then write the augmented table, and the summary that says the filters finished (`manifest`).
A failure in any step leaves the previous table (or none) and a summary saying the filters did not finish.

Reads: data/experiments/<run>/ (snapshots, grids, states for D), data/datasets/ (memorisation), the train table
of stage 01. Writes: data/Augmented_Fakes/ (fakes, manifest.csv, <BODY>_synth_summary.json) and
data/tables/<BODY>_train_augmented.csv.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from mura_aug.errors import os_errors_as_user_errors
from mura_aug.synth import filters, generate, grids, manifest, snapshots
from mura_aug.synth.manifest import SynthResult
from mura_aug.synth.settings import SynthSettings
from mura_aug.workspace import resolve_workspace


@dataclass
class StageResult:
    """What `run_stage` did."""

    workspace_root: Path
    body_part: str
    snapshots: Dict[str, snapshots.Snapshot] = field(default_factory=dict)  # class -> the snapshot drawn from
    resolutions: Dict[str, int] = field(default_factory=dict)  # class -> px of that snapshot
    generated: Dict[str, SynthResult] = field(default_factory=dict)  # class -> generation counts
    cut: Dict[str, SynthResult] = field(default_factory=dict)  # grid path -> tiles cut from it
    filters: List[str] = field(default_factory=list)  # the filters that judged the fakes
    dropped: object = None  # DataFrame: path, class, drop_reason, score of every dropped fake
    table: object = None  # DataFrame: the augmented table as written
    table_path: Optional[Path] = None
    summary_path: Optional[Path] = None

    def counts_table(self):
        """One row per class generated or grid cut: fakes, made now, already there, seconds, images per second."""
        import pandas as pd

        rows = [("class", cls, r) for cls, r in self.generated.items()] + [("grid", g, r) for g, r in self.cut.items()]
        return pd.DataFrame([{"from": kind, "what": name, "fakes": len(r.rows), "made now": r.generated,
                              "already there": r.skipped, "seconds": round(r.seconds, 1),
                              "images/s": round(r.generated / r.seconds, 1) if r.generated and r.seconds > 0 else None}
                             for kind, name, r in rows])

    def report(self) -> List[str]:
        """The lines the command line prints."""
        lines = [f"{grid}: {len(r.rows)} tiles ({r.generated} written, {r.skipped} already there)"
                 for grid, r in self.cut.items()]
        for cls, r in self.generated.items():
            rate = r.generated / r.seconds if r.seconds > 0 and r.generated else 0.0
            lines.append(f"{cls}: {len(r.rows)} fakes ({r.generated} generated, {r.skipped} already there"
                         f"{f', {rate:.1f} img/s' if rate else ''})")
        lines.append(f"filters: {', '.join(self.filters) or 'none asked'}; dropped {len(self.dropped)} fakes"
                     + (":" if len(self.dropped) else ""))
        lines += [f"  {row.path}: {row.drop_reason}" for row in self.dropped.itertuples()]
        counts = manifest.table_counts(self.table)
        lines.append(f"{self.table_path}: {counts['real']} real + {counts['synthetic']} synthetic rows")
        return lines


def run_stage(workspace, settings: SynthSettings, progress: bool = True, scorer: Optional[filters.Scorer] = None,
              log: Callable[[str], None] = print) -> StageResult:
    """Stage 05 with `settings`: make the fakes, filter them, then write the augmented table and the summary.

    scorer: a realism scorer(paths, cls) for DROP_FRACTION / MIN_SCORE instead of the runs' discriminators
    (e.g. `filters.classifier_scorer(model)`). log: where the picked runs and notes go (print by default).
    A file-system error ends in a UserError naming the path and the fix.
    """
    with os_errors_as_user_errors(f"making the fakes of {settings.body_part}"):
        return _synthesize(workspace, settings, progress, scorer, log)


def _synthesize(workspace, settings: SynthSettings, progress: bool, scorer: Optional[filters.Scorer],
                log: Callable[[str], None]) -> StageResult:
    workspace = resolve_workspace(workspace)
    settings = settings.check()
    body_part = settings.body_part
    result = StageResult(workspace_root=workspace.root, body_part=body_part)
    manifest.check_train_table(workspace, body_part)
    if not settings.grids:
        result.snapshots = snapshots.find_snapshots(workspace, body_part, settings.runs, settings.classes)
        result.resolutions = snapshots.snapshot_resolutions(result.snapshots, _load_generator)
        for line in snapshots.describe_picks(result.snapshots, result.resolutions):
            log(line)
        snapshots.check_same_resolution(result.snapshots, result.resolutions, settings.allow_mixed_resolutions)
        if settings.exclude_memorised and settings.n_per_class > 0:
            for cls, px in result.resolutions.items():  # before hours of generation, not after
                filters.check_memorisation_dataset(workspace, body_part, cls, px)
    scorer = scorer or filters.scorer_for(settings, result.snapshots)  # loads D: a bad file fails before any write
    filters.require_scorer(settings, scorer)

    manifest.mark_started(workspace, body_part, settings.to_dict())
    try:
        _make_fakes(workspace, settings, result, progress, log)
        classes = list(dict.fromkeys([*settings.classes, *([settings.grid_class] if settings.grids else [])]))
        result.filters = settings.filters_asked()
        result.dropped = filters.filter_fakes(workspace, settings, scorer, progress, classes=classes)
        _note_unjudged(workspace, body_part, log)
        result.table = manifest.write_augmented_table(workspace, body_part)
        result.table_path = workspace.augmented_table(body_part)
        dropped = {cls: int((result.dropped["class"] == cls).sum()) for cls in classes}
        result.summary_path = manifest.write_summary(workspace, body_part, settings.to_dict(), result.generated,
                                                     result.cut, result.snapshots, result.resolutions, result.table,
                                                     result.filters, dropped)
    except BaseException as exc:
        manifest.mark_failed(workspace, body_part, exc)
        raise
    return result


def _load_generator(path):
    from mura_aug.gan.network_file import load_generator

    return load_generator(path)


def _make_fakes(workspace, settings: SynthSettings, result: StageResult, progress: bool, log) -> None:
    if settings.grids:
        result.cut = grids.cut_given_grids(workspace, settings)
        return
    result.generated = generate.synthesize(workspace, result.snapshots, settings, progress)
    if settings.cut_grids:
        result.cut = grids.cut_run_grids(workspace, result.snapshots, settings, log=log)


def _note_unjudged(workspace, body_part: str, log) -> None:
    """Say so when fakes of another class wait for a filter pass (an earlier call stopped before its filters)."""
    frame = manifest.read_manifest(workspace)
    on_disk = np.array([workspace.absolute(p).is_file() for p in frame["path"]], dtype=bool)
    waiting = frame[(frame["body_part"] == body_part) & (frame["filtered_by"] == "") & on_disk]
    for cls, count in waiting.groupby("class").size().items():
        log(f"note: {count} {cls} fakes were never judged by a finished filter pass (an earlier call stopped); "
            f"they stay out of the table until synth runs with that class (CLASSES / --classes).")
