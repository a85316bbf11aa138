"""Writes notebooks/01_prepare.ipynb (run it after changing this file; commit the notebook it writes)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mura_aug.nbtools import build_notebook, write_notebook  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_prepare.ipynb"

TITLE = """# 01 · Prepare MURA: copy one body part, build the GAN datasets

Reads MURA-v1.1 (the unpacked folder, the folder above it, or the downloaded `MURA-v1.1.zip`; it is only
read, never changed) and writes into the workspace:
* `data/images/{positive,negative}/` — every train and valid image of `BODY_PART`, renamed
  `<BODY>_<split>_<patient>_<study>_<view>.png`;
* `data/tables/<BODY>_{train,valid,train_positive,train_negative}.csv` — one row per image, used by
  notebooks 05 and 06; `<BODY>_skipped_files.csv` lists every file left out and why;
* `data/datasets/<BODY>_{positive,negative}_<RESOLUTION>.zip` — the GAN training sets of notebooks 02 and
  03 (train split only, square RGB images, NVIDIA's `dataset_tool` layout).

Without MURA (`MURA_PATH = ""`) it generates a small MURA-shaped demo tree of synthetic radiographs first.
Running it again is quick: finished copies and datasets are kept; changing `RESOLUTION`, `FIT`,
`CROP_BORDERS` or `CONTRAST` rebuilds only the datasets. The first run on the ~9k shoulder images takes
roughly 5-15 minutes on Colab with MURA on Drive (an estimate; see `docs/stage_01_prepare.md`)."""

PARAMETERS = """WORKSPACE = None  # workspace folder (str); None means Google Drive in Colab, ./workspace elsewhere
MURA_PATH = ""  # MURA-v1.1 folder, its parent, or MURA-v1.1.zip; "" generates demo data into <workspace>/demo
BODY_PART = "XR_SHOULDER"  # MURA body part: XR_ELBOW, XR_FINGER, XR_FOREARM, XR_HAND, XR_HUMERUS, XR_SHOULDER, XR_WRIST
RESOLUTION = 256  # px, side of the square GAN images: a power of two, 256 as in the original work, 32 for CPU demos
FIT = "pad"  # "pad" keeps the whole X-ray with black bars; "crop" fills the square and cuts the longer side
CROP_BORDERS = False  # cut away black borders where the film did not fill the scan before resizing
CONTRAST = False  # stretch grey levels (0.5th to 99.5th percentile) before resizing
WORKERS = None  # processes decoding images; None uses every CPU core, 1 runs in this kernel only
DEMO_PATIENTS = 60  # patients in the generated demo tree (about 5 images each); used only when MURA_PATH is \"\""""

CELLS = [
    """import json

from IPython.display import display

from mura_aug import plots_prepare, prepare
from mura_aug.workspace import CLASSES, resolve_workspace

workspace = resolve_workspace(WORKSPACE)
mura = prepare.mura_path_or_demo(MURA_PATH, workspace, DEMO_PATIENTS)
print(f"MURA: {mura}\\nworkspace: {workspace.root}")""",
    {"markdown": "## Copy, check and build the datasets\nEvery image is decoded once to check it (a truncated or "
                 "empty file is skipped, not copied). Odd formats (16-bit, transparency, palette, JPEG, EXIF "
                 "rotation) are converted to 8-bit grey PNG; plain PNGs are copied byte for byte."},
    """summary = prepare.prepare(mura, workspace, BODY_PART, RESOLUTION, fit=FIT, crop_borders=CROP_BORDERS,
                          contrast=CONTRAST, workers=WORKERS)
print(prepare.format_summary(summary))""",
    {"markdown": "## Images per class\nMURA's split is by patient: no patient is in both train and valid."},
    """display(plots_prepare.plot_class_counts(summary))""",
    {"markdown": "## What the preprocessing options do\nEach row: one training X-ray as copied, then the square "
                 "GAN image with each option. The column marked *(used)* went into the datasets; change `FIT`, "
                 "`CROP_BORDERS` or `CONTRAST` above and rerun to rebuild them (the copies are kept)."},
    """chosen = {"fit": FIT, "crop_borders": CROP_BORDERS, "contrast": CONTRAST}
for cls in CLASSES:
    examples = plots_prepare.example_images(workspace, BODY_PART, cls, n=3)
    display(plots_prepare.plot_preprocessing_examples(examples, RESOLUTION, title=f"{BODY_PART} {cls}",
                                                      chosen=chosen))""",
    {"markdown": "## The tables\nThe first rows of each table; `path` is relative to the workspace."},
    """for name in prepare.TABLE_NAMES:
    table = prepare.load_table(workspace, BODY_PART, name)
    print(f"{prepare.table_path(workspace, BODY_PART, name).name}: {len(table)} rows")
    display(table.head(3))
skipped = prepare.load_table(workspace, BODY_PART, "skipped_files")
print(f"skipped files: {len(skipped)}")
display(skipped.head(20))""",
    {"markdown": "## Summary\nAlso saved as `data/tables/<BODY>_prepare_summary.json`."},
    """print(json.dumps(summary, indent=1))""",
]


def main() -> None:
    write_notebook(NOTEBOOK, build_notebook(TITLE, PARAMETERS, CELLS))
    print(f"wrote {NOTEBOOK}")


if __name__ == "__main__":
    main()
