"""bench/bench_demo.py's picture of reals beside fakes finds a run's files through the package's layout."""
from pathlib import Path

import numpy as np
from PIL import Image

from mura_aug.workspace import Workspace

from bench_scripts import load_bench_script


def _bench_demo():
    return load_bench_script("bench_demo")


def _grey(path: Path, level: int, px: int = 16) -> None:
    Image.fromarray(np.full((px, px), level, dtype=np.uint8)).save(path)


def test_the_picture_has_a_row_per_run_with_reals_and_the_newest_fakes(tmp_path):
    bench_demo = _bench_demo()
    workspace = Workspace(tmp_path / "ws")
    run = workspace.run("XR_SHOULDER-positive-tiny-16")
    run.path.mkdir(parents=True)
    _grey(run.reals, 40)
    _grey(run.fakes(0.008), 120)
    _grey(run.fakes(0.016), 200)  # the newest snapshot's grid: the one shown
    (run.path / "fakes-000000.024kimg.png.tmp").write_bytes(b"a write cut off")  # not a snapshot
    untrained = workspace.run("XR_SHOULDER-negative-tiny-16")
    untrained.path.mkdir()
    _grey(untrained.reals, 40)  # no fakes yet: no row
    out = bench_demo.save_grids_beside(workspace.root, tmp_path / "beside.png")
    with Image.open(out) as sheet:
        pixels = np.asarray(sheet)
    side = 16 * bench_demo.GRID_UPSCALE
    assert pixels.shape == (side + 24 + 10, 2 * side + 20)  # one row: reals, a gap of 20 px, fakes
    assert pixels[24 + side // 2, side // 2] == 40
    assert pixels[24 + side // 2, side + 20 + side // 2] == 200
