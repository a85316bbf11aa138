"""Writes notebooks/05_crop_sharpen.ipynb (run it after changing this file; commit the notebook it writes)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mura_aug.nbtools import build_notebook, write_notebook  # noqa: E402

TITLE = """# 05 · Synthetic X-rays: generate, sharpen, register

This notebook turns the trained generators of notebooks 02 and 03 into training images. For each class
(positive = abnormal, negative = normal) it generates `N_PER_CLASS` X-rays from the newest snapshot with
explicit seeds, sharpens them (PIL `Sharpness`, factor 2, as in the original work), saves them under
`data/Augmented_Fakes/{positive,negative}/<BODY>/`, lists them in `data/Augmented_Fakes/manifest.csv` and
writes `data/tables/<BODY>_train_augmented.csv` (the real training table plus the fakes) for notebook 06.

Rerunning is safe: images already made with the same settings are kept, and nothing is listed twice."""

PARAMETERS = """WORKSPACE = None  # workspace folder (str); None means Google Drive in Colab, ./workspace elsewhere
BODY_PART = "XR_SHOULDER"  # MURA body part prepared in notebook 01
N_PER_CLASS = 100  # synthetic images to generate per class (the original work used 960 in all)
TRUNCATION_PSI = 1.0  # truncation psi: 1 keeps full variety, 0.7 gives more typical-looking images
SHARPEN_FACTOR = 2.0  # PIL Sharpness factor: 1 leaves images unchanged, 2 as in the original work
CONTRAST = None  # optional PIL Contrast factor after sharpening, e.g. 1.2; None leaves contrast as it is
SEED = 0  # first seed; images use seeds SEED, SEED+1, ..., SEED+N_PER_CLASS-1
RUNS = None  # None picks the newest run per class; or ["run name", ...] or {"positive": "run", "negative": "run"}
BATCH = 16  # images per generator call (64 is fine on a GPU)
DEVICE = "auto"  # "auto" picks the GPU when there is one, else the CPU; or "cpu", "cuda"
CUT_GRIDS = False  # also cut each snapshot's fakes grid into single images, as the original work did
DEDUPE_THRESHOLD = None  # drop near-duplicate fakes closer than this (grey levels, 0-255), e.g. 3.0; None turns it off
DROP_FRACTION = 0.0  # drop this share (0-1) of each class's least realistic fakes by discriminator score
EXCLUDE_MEMORISED = True  # drop fakes that copy a real training image (they could leak a patient's X-ray)
SHOW_WIDGETS = True  # end with the classroom widgets (generator explorer, snapshot browser, real-or-fake quiz)"""

CELLS = [
    """from IPython.display import display

from mura_aug import plots_synth, synth, widgets
from mura_aug.workspace import resolve_workspace

workspace = resolve_workspace(WORKSPACE)
snapshots = synth.find_snapshots(workspace, BODY_PART, RUNS)
for cls, snap in snapshots.items():
    print(f"{cls:>8}: run {snap.run}, snapshot at {snap.kimg:g} kimg ({snap.path.name})")""",
    {"markdown": "## What sharpening does\nTop: as the generator draws them. Bottom: after sharpening "
                 "(and the optional contrast change). The same seeds, so the pairs match."},
    """for cls, snap in snapshots.items():
    pairs = synth.sharpening_pairs(snap, cls, range(SEED, SEED + 4), TRUNCATION_PSI, SHARPEN_FACTOR, CONTRAST,
                                   device=DEVICE)
    display(plots_synth.plot_before_after(pairs, title=f"{cls}: before and after sharpening",
                                          factor=SHARPEN_FACTOR))""",
    {"markdown": "## Generate, sharpen and save\nBounded by the generator: on a GPU thousands of images a "
                 "minute, on a laptop CPU a few per second at demo size (see `bench/results/generate.md`)."},
    """results = synth.synthesize(workspace, BODY_PART, N_PER_CLASS, SEED, TRUNCATION_PSI, SHARPEN_FACTOR, CONTRAST,
                           RUNS, batch_size=BATCH, device=DEVICE)
display(synth.results_table(results))
if CUT_GRIDS:
    cut = synth.cut_run_grids(workspace, snapshots, BODY_PART, SHARPEN_FACTOR, CONTRAST)
    for cls, result in cut.items():
        print(f"{cls}: {len(result.rows)} tiles cut from {result.rows[0]['source_grid']}")""",
    {"markdown": "## Filtering\nCopies of real training images (memorisation), near-duplicates and the "
                 "least realistic fakes (lowest discriminator score) are marked as dropped: their files stay, the training table leaves them out. "
                 "Rerun this cell with other thresholds; it starts from scratch each time."},
    """if DEDUPE_THRESHOLD is not None or DROP_FRACTION > 0 or EXCLUDE_MEMORISED:
    scorer = synth.run_discriminator_scorer(snapshots, device=DEVICE) if DROP_FRACTION > 0 else None
    dropped = synth.filter_fakes(workspace, BODY_PART, DEDUPE_THRESHOLD, DROP_FRACTION, scorer,
                                 exclude_memorised=EXCLUDE_MEMORISED)
    print(f"dropped {len(dropped)} fakes (dedupe threshold {DEDUPE_THRESHOLD}, drop fraction {DROP_FRACTION}, "
          f"memorised excluded: {EXCLUDE_MEMORISED})")
    display(dropped)
    if len(dropped):
        display(plots_synth.plot_dropped(workspace.root, dropped))
else:
    print("No filtering (set DEDUPE_THRESHOLD, DROP_FRACTION or EXCLUDE_MEMORISED to turn it on).")""",
    {"markdown": "## Real and synthetic side by side\nEach class: real training X-rays on the left, kept fakes "
                 "on the right, at the same size."},
    """real, fake = synth.sample_real_and_fake(workspace, BODY_PART, n=8, seed=SEED)
display(plots_synth.plot_real_vs_fake(real, fake, cols=4, size=64))
table = synth.write_augmented_table(workspace, BODY_PART)
print(f"{synth.augmented_table_path(workspace, BODY_PART)}:")
display(table.groupby(["source", "class"]).size().rename("images").to_frame())""",
    {"markdown": "## Classroom\nPlay with the generator (seed, truncation, style mixing, interpolation), watch "
                 "training progress over the saved grids, and test yourself: real or fake?"},
    """if SHOW_WIDGETS:
    from mura_aug.gan import load_generator

    generators = {cls: load_generator(snap.path) for cls, snap in snapshots.items()}
    display(widgets.explorer_widget(widgets.GeneratorExplorer(generators)))""",
    """if SHOW_WIDGETS:
    for run_dir in sorted({snap.path.parent for snap in snapshots.values()}):
        if list(run_dir.glob("fakes*.png")):
            print(f"training progress of {run_dir.name}:")
            display(widgets.snapshot_browser_widget(widgets.SnapshotBrowser(run_dir)))
    display(widgets.quiz_widget(widgets.quiz_from_workspace(workspace, BODY_PART, rounds=10, seed=SEED)))""",
]


def main() -> None:
    target = Path(__file__).resolve().parent.parent / "notebooks" / "05_crop_sharpen.ipynb"
    write_notebook(target, build_notebook(TITLE, PARAMETERS, CELLS))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
