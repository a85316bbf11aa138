"""Stage 06's test input: a prepared workspace plus the synthetic rows stage 05 would add to it."""
from __future__ import annotations

import shutil

import pandas as pd

from mura_aug.synth.manifest import write_summary
from mura_aug.workspace import Workspace

BODY = "XR_SHOULDER"
SYNTHETIC_PER_CLASS = 12  # fakes added per class (copies of real training images)


def add_synthetic_rows(workspace: Workspace, per_class: int = SYNTHETIC_PER_CLASS) -> None:
    """Copy `per_class` real training images of each class to stage 05's fake names and write the augmented
    table (the real training rows plus one row per fake, with stage 05's columns) and stage 05's summary."""
    train = pd.read_csv(workspace.table(BODY, "train"), dtype={"patient": str})
    fakes = []
    for cls in ("positive", "negative"):
        for index, source_path in enumerate(train[train["class"] == cls]["path"].head(per_class)):
            path = workspace.fake_path(cls, BODY, "test-run", 1.0, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(workspace.absolute(source_path), path)
            relative = workspace.relative(path)
            fakes.append({"path": relative, "filename": relative, "class": cls, "label": int(cls == "positive"),
                          "patient": "synthetic", "study": "synthetic", "study_id": relative, "body_part": BODY,
                          "split": "train", "view": "image1", "source": "synthetic", "run": "test-run",
                          "kimg": 1.0, "seed": index, "psi": 1.0})
    table = pd.concat([train, pd.DataFrame(fakes)])
    table.to_csv(workspace.augmented_table(BODY), index=False)
    # Stage 05 records, after its filters, which table they shaped; stage 06 refuses any other table.
    write_summary(workspace, BODY, settings={}, generated={}, cut={}, snapshots={}, resolutions={}, table=table,
                  filters=[], dropped={})
