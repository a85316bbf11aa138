"""Stage 05: grid cutting, sharpening, deterministic generation, grey fakes, manifest/table idempotence,
filtering, the two-phase table, the settings and the CLI."""
from __future__ import annotations

import argparse
import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageEnhance

from mura_aug import cli
from mura_aug import imaging
from mura_aug.errors import UserError
from mura_aug.gan import sampling
from mura_aug.synth import filters, generate, grids, manifest, snapshots, stage
from mura_aug.synth.settings import SynthSettings
from synth_helpers import (add_tiny_run, add_tiny_run_with_state, compose_grid, grey, random_tiles,
                           tiny_generator)

DOCS_PAGE = __import__("pathlib").Path(__file__).resolve().parent.parent / "docs" / "stage_05_synth.md"


def quiet(_line):
    """run_stage's log in tests that do not look at it."""


def settings(**values) -> SynthSettings:
    return SynthSettings(device="cpu", **values)


# --- grids --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("padding,margin,pad_value", [(0, 0, 0), (2, 2, 0), (3, 0, 255), (2, 2, 117)])
def test_cut_grid_is_pixel_exact(padding, margin, pad_value):
    tiles = random_tiles(12, size=16, seed=padding)
    grid = Image.fromarray(compose_grid(tiles, 3, 4, padding, margin, pad_value))
    for kwargs in (dict(tile_size=16), dict(rows=3, cols=4)):
        cut = grids.cut_grid(grid, **kwargs)
        assert len(cut) == 12
        for original, piece in zip(tiles, cut):
            assert np.array_equal(np.asarray(piece), original)
    layout = grids.detect_grid_layout(grid, tile_size=16)
    assert (layout.rows, layout.cols, layout.padding, layout.margin) == (3, 4, padding, margin)


def test_cut_grid_matches_torchvision_make_grid(tmp_path):
    from torchvision.utils import make_grid

    tiles = random_tiles(8, size=32, seed=3)
    tensor = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
    grid = make_grid(tensor, nrow=4, padding=2).permute(1, 2, 0).numpy()
    path = tmp_path / "fakes-000004.000kimg.png"
    Image.fromarray(grid).save(path)
    for kwargs in (dict(rows=2, cols=4), dict(tile_size=32)):
        cut = grids.cut_grid(path, **kwargs)
        # every tile, in order: an empty or short cut fails here instead of passing the comparison below
        assert len(cut) == len(tiles)
        assert all(np.array_equal(np.asarray(p), t) for p, t in zip(cut, tiles))


def test_cut_grid_errors_name_the_problem(tmp_path):
    grid = Image.fromarray(np.zeros((50, 70, 3), np.uint8))
    with pytest.raises(UserError, match="cannot be cut"):
        grids.cut_grid(grid, tile_size=16, padding=0)
    with pytest.raises(UserError, match="tile size or both"):
        grids.cut_grid(grid, rows=2)
    with pytest.raises(UserError, match="No grid image"):
        grids.cut_grid(tmp_path / "missing.png", tile_size=16)
    broken = tmp_path / "fakes000480.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UserError, match="cannot be read"):
        grids.cut_grid(broken, tile_size=16)
    assert grids.grid_kimg(broken) == 480.0
    assert grids.grid_kimg(tmp_path / "fakes-000012.500kimg.png") == 12.5


# --- finishing and generating -------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_sharpen_equals_pil(mode):
    image = Image.fromarray(random_tiles(1, size=24, seed=7, mode=mode)[0], mode)
    expected = ImageEnhance.Sharpness(image).enhance(2.0)
    assert np.array_equal(np.asarray(generate.sharpen(image)), np.asarray(expected))
    with_contrast = ImageEnhance.Contrast(expected).enhance(1.3)
    assert np.array_equal(np.asarray(generate.sharpen(image, 2.0, contrast=1.3)), np.asarray(with_contrast))
    assert np.array_equal(np.asarray(generate.sharpen(image, 1.0)), np.asarray(image))
    assert not np.array_equal(np.asarray(generate.sharpen(image, 2.0)), np.asarray(image))
    with pytest.raises(UserError):
        generate.sharpen(image, -1)


def test_generation_is_deterministic_per_seed():
    G = tiny_generator()
    first = dict(generate.generate_images(G, [3, 5, 8], 0.7, batch_size=2, device="cpu", progress=False))
    again = dict(generate.generate_images(G, [3, 5, 8], 0.7, batch_size=2, device="cpu", progress=False))
    alone = dict(generate.generate_images(G, [5], 0.7, batch_size=1, device="cpu", progress=False))
    assert set(first) == {3, 5, 8} and first[3].shape == (32, 32, 3) and first[3].dtype == np.uint8
    for seed in first:
        assert np.array_equal(first[seed], again[seed])
    # batch composition does not change an image beyond float rounding (one grey level)
    assert np.abs(first[5].astype(int) - alone[5].astype(int)).max() <= 1
    assert not np.array_equal(first[3], first[5])


def test_conditional_generator_uses_one_hot_label():
    G = tiny_generator(c_dim=2)
    assert sampling.class_vectors(G.c_dim, "positive", 1)[0].tolist() == [0.0, 1.0]
    assert sampling.class_vectors(G.c_dim, "negative", 1)[0].tolist() == [1.0, 0.0]
    pos = dict(generate.generate_images(G, [1], cls="positive", device="cpu", progress=False))[1]
    neg = dict(generate.generate_images(G, [1], cls="negative", device="cpu", progress=False))[1]
    assert not np.array_equal(pos, neg)
    with pytest.raises(UserError, match="class-conditional"):
        list(generate.generate_images(G, [1], cls=None, device="cpu", progress=False))


def test_grey_image_is_the_luma_of_the_three_channels():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    array[..., 0] = 255  # strongly coloured, so a channel pick or a plain mean would differ from luma
    image = imaging.grey_image(array)
    assert image.mode == "L" and np.array_equal(np.asarray(image), grey(array))
    assert not np.array_equal(np.asarray(image), array.mean(axis=2).round().astype(np.uint8))
    # one channel (or none) is already grey; an alpha channel is composited on black, as stage 01 does
    assert np.array_equal(np.asarray(imaging.grey_image(array[..., :1])), array[..., 0])
    assert np.array_equal(np.asarray(imaging.grey_image(array[..., 1])), array[..., 1])
    rgba = np.concatenate([array, np.zeros((8, 8, 1), np.uint8)], axis=2)  # fully transparent: black
    assert imaging.grey_image(rgba).mode == "L" and not np.asarray(imaging.grey_image(rgba)).any()
    with pytest.raises(ValueError, match="uint8 pixels with 1-4 channels"):
        imaging.grey_image(array.astype(np.float32))


@pytest.fixture
def synth_workspace(prepared_workspace, copy_workspace):
    workspace = copy_workspace(prepared_workspace)
    add_tiny_run(workspace, "positive", torch_seed=1)
    add_tiny_run(workspace, "negative", torch_seed=2)
    return workspace


def _snapshot_of_files(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*.png"))}


def test_run_stage_writes_contract_files_and_reruns_idempotently(synth_workspace):
    ws = synth_workspace
    result = stage.run_stage(ws, settings(n_per_class=3, seed=10, truncation_psi=0.8), progress=False, log=quiet)
    assert {cls: r.generated for cls, r in result.generated.items()} == {"positive": 3, "negative": 3}
    pos_dir = ws.augmented_dir("positive", "XR_SHOULDER")
    assert sorted(p.name for p in pos_dir.iterdir()) == [
        f"XR_SHOULDER-positive-tiny-32_kimg000004.000_seed{s:06d}.png" for s in (10, 11, 12)]
    listed = pd.read_csv(ws.manifest)
    assert len(listed) == 6 and set(listed["psi"]) == {0.8} and set(listed["kimg"]) == {4.0}
    assert set(listed["mode"]) == {"L"} and set(listed["filtered_by"]) == {"memorisation"}
    train = pd.read_csv(ws.table("XR_SHOULDER", "train"))
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    fakes = table[table["source"] == "synthetic"]
    assert len(table) == len(train) + 6 and len(fakes) == 6
    assert set(fakes["patient"]) == {"synthetic"} and set(fakes["split"]) == {"train"} and set(fakes["mode"]) == {"L"}
    assert fakes.groupby("class")["label"].first().to_dict() == {"negative": 0, "positive": 1}
    assert fakes["study_id"].is_unique and (fakes["path"] == fakes["filename"]).all()
    assert all((ws.root / p).is_file() for p in fakes["path"])
    assert manifest.filters_finished(ws, "XR_SHOULDER")

    files_before = _snapshot_of_files(ws.augmented)
    manifest_before = ws.manifest.read_bytes()
    table_before = ws.augmented_table("XR_SHOULDER").read_bytes()
    again = stage.run_stage(ws, settings(n_per_class=3, seed=10, truncation_psi=0.8), progress=False, log=quiet)
    assert all(r.generated == 0 and r.skipped == 3 for r in again.generated.values())
    assert _snapshot_of_files(ws.augmented) == files_before
    assert ws.manifest.read_bytes() == manifest_before
    assert ws.augmented_table("XR_SHOULDER").read_bytes() == table_before

    more = stage.run_stage(ws, settings(n_per_class=5, seed=10, truncation_psi=0.8), progress=False, log=quiet)
    assert all(r.generated == 2 for r in more.generated.values())
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    assert (table["source"] == "synthetic").sum() == 10 and table["path"].is_unique

    changed = stage.run_stage(ws, settings(n_per_class=2, seed=10, truncation_psi=0.5, classes=("positive",)),
                              progress=False, log=quiet)
    assert changed.generated["positive"].generated == 2  # other psi: those files are made again, not duplicated
    listed = pd.read_csv(ws.manifest)
    assert len(listed) == 10 and listed["path"].is_unique
    assert sorted(listed.loc[listed["class"] == "positive", "psi"]) == [0.5, 0.5, 0.8, 0.8, 0.8]


def test_saved_fake_is_the_grey_sharpened_generator_output(synth_workspace):
    ws = synth_workspace
    snapshot = snapshots.find_snapshots(ws, "XR_SHOULDER")["negative"]
    generate.synthesize_class(ws, snapshot, "negative", 1, seed=4, truncation_psi=1.0, sharpen_factor=2.0,
                              device="cpu", progress=False)
    from mura_aug.gan.network_file import load_generator

    (_, raw), = generate.generate_images(load_generator(snapshot.path), [4], 1.0, device="cpu", progress=False)
    expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(grey(raw), "L")).enhance(2.0))
    saved = Image.open(ws.fake_path("negative", "XR_SHOULDER", snapshot.run, snapshot.kimg, 4))
    assert saved.mode == "L" and np.array_equal(np.asarray(saved), expected)


def test_every_saved_fake_is_grey(prepared_workspace, copy_workspace):
    ws = copy_workspace(prepared_workspace)
    for cls, torch_seed in (("positive", 1), ("negative", 2)):
        add_tiny_run_with_state(ws, cls, torch_seed=torch_seed)
    colour = ws.root / "coloured-grid.png"
    tiles = random_tiles(4, size=32, seed=4)
    Image.fromarray(compose_grid(tiles, 2, 2)).save(colour)
    stage.run_stage(ws, settings(n_per_class=3, cut_grids=True), progress=False, log=quiet)
    stage.run_stage(ws, settings(grids=[str(colour)], grid_class="negative", tile_size=32), progress=False, log=quiet)
    saved = sorted(ws.augmented.rglob("*.png"))
    assert len(saved) == 2 * 3 + 2 * 8 + 4  # generated, tiles of each run's grid, tiles of the given grid
    for path in saved:
        with Image.open(path) as image:
            assert image.mode == "L", f"{path.name} is {image.mode}"
    listed = pd.read_csv(ws.manifest)
    assert len(listed) == len(saved) and set(listed["mode"]) == {"L"}
    # a tile is the grey (luma) of its RGB pixels, sharpened: no colour survives in the values either
    tile = ws.tile_path("negative", "XR_SHOULDER", ws.root.name, 0.0, 3)
    expected = ImageEnhance.Sharpness(Image.fromarray(grey(tiles[3]), "L")).enhance(2.0)
    assert np.array_equal(np.asarray(Image.open(tile)), np.asarray(expected))


def test_conditional_run_serves_both_classes(prepared_workspace, copy_workspace):
    ws = copy_workspace(prepared_workspace)
    add_tiny_run(ws, "both", kimg=8.0)
    picked = snapshots.find_snapshots(ws, "XR_SHOULDER")
    assert picked["positive"].path == picked["negative"].path and picked["positive"].label == "both"
    stage.run_stage(ws, settings(n_per_class=2), progress=False, log=quiet)
    name = "XR_SHOULDER-both-tiny-32_kimg000008.000_seed000000.png"
    pos = np.asarray(Image.open(ws.augmented_dir("positive") / name))
    neg = np.asarray(Image.open(ws.augmented_dir("negative") / name))
    assert not np.array_equal(pos, neg)


def test_missing_runs_are_a_user_error(prepared_workspace, copy_workspace):
    ws = copy_workspace(prepared_workspace)
    add_tiny_run(ws, "positive")
    with pytest.raises(UserError, match="negative"):
        snapshots.find_snapshots(ws, "XR_SHOULDER")
    with pytest.raises(UserError, match="No run or snapshot"):
        snapshots.find_snapshots(ws, "XR_SHOULDER", runs=["XR_SHOULDER-negative-nothere-32"])
    picked = snapshots.find_snapshots(ws, "XR_SHOULDER", runs={"positive": "XR_SHOULDER-positive-tiny-32",
                                                              "negative": "XR_SHOULDER-positive-tiny-32"})
    assert picked["negative"].label == "negative"


def test_runs_of_different_resolutions_are_refused_unless_asked(prepared_workspace, copy_workspace):
    ws = copy_workspace(prepared_workspace)
    add_tiny_run(ws, "positive", resolution=32)
    add_tiny_run(ws, "negative", resolution=64)
    with pytest.raises(UserError) as refused:
        stage.run_stage(ws, settings(n_per_class=1), progress=False, log=quiet)
    assert "XR_SHOULDER-positive-tiny-32 at 32 px" in str(refused.value)
    assert "XR_SHOULDER-negative-tiny-64 at 64 px" in str(refused.value)
    assert "--allow-mixed-resolutions" in str(refused.value)
    assert not ws.manifest.exists() and not ws.augmented_table("XR_SHOULDER").exists()  # refused before writing
    said = []
    mixed = stage.run_stage(ws, settings(n_per_class=1, allow_mixed_resolutions=True, exclude_memorised=False),
                            progress=False, log=said.append)
    assert mixed.resolutions == {"positive": 32, "negative": 64}
    assert any("XR_SHOULDER-negative-tiny-64" in line and "64 px" in line for line in said)
    assert Image.open(ws.fake_path("negative", "XR_SHOULDER", "XR_SHOULDER-negative-tiny-64", 4.0, 0)).size == (64, 64)


def test_grid_cutting_registers_fakes_once(synth_workspace):
    ws = synth_workspace
    tiles = random_tiles(6, size=32, seed=5)
    grid_path = ws.run("XR_SHOULDER-positive-tiny-32").fakes(4.0)
    Image.fromarray(compose_grid(tiles, 2, 3)).save(grid_path)
    grid_settings = settings(grids=[str(grid_path)], grid_class="positive", tile_size=32)
    first = stage.run_stage(ws, grid_settings, progress=False, log=quiet).cut[str(grid_path)]
    assert first.generated == 6
    saved = ws.tile_path("positive", "XR_SHOULDER", "XR_SHOULDER-positive-tiny-32", 4.0, 5)
    assert np.array_equal(np.asarray(Image.open(saved)),
                          np.asarray(ImageEnhance.Sharpness(Image.fromarray(grey(tiles[5]), "L")).enhance(2.0)))
    second = stage.run_stage(ws, grid_settings, progress=False, log=quiet).cut[str(grid_path)]
    assert second.generated == 0 and second.skipped == 6
    manifest.write_augmented_table(ws, "XR_SHOULDER")
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    assert (table["source"] == "synthetic").sum() == 6 and table["path"].is_unique
    listed = pd.read_csv(ws.manifest)
    assert listed["tile"].tolist() == list(range(6)) and listed["source_grid"].nunique() == 1


# --- filters ------------------------------------------------------------------------------------------------

def test_filtering_drops_duplicates_and_least_realistic(synth_workspace):
    ws = synth_workspace
    tiles = random_tiles(4, size=32, seed=9)
    tiles = [tiles[0], tiles[1], tiles[0].copy(), tiles[2], tiles[3], tiles[1].copy()]  # tiles 2 and 5 repeat
    grid_path = ws.root / "grid.png"
    Image.fromarray(compose_grid(tiles, 2, 3)).save(grid_path)
    brightness = {i: float(grey(t).mean()) for i, t in enumerate(tiles)}

    def mean_brightness(paths, cls):  # a stand-in realism score: brighter = "more real"
        return np.array([np.asarray(Image.open(p)).mean() for p in paths])

    grid_only = dict(grids=[str(grid_path)], grid_class="negative", tile_size=32, classes=("negative",),
                     exclude_memorised=False)
    result = stage.run_stage(ws, settings(dedupe_threshold=1.0, drop_fraction=0.25, **grid_only),
                             progress=False, scorer=mean_brightness, log=quiet)
    dropped = result.dropped
    reasons = dict(zip(dropped["path"].str.extract(r"tile(\d+)")[0].astype(int), dropped["drop_reason"]))
    assert "near-duplicate" in reasons[2] and "near-duplicate" in reasons[5]
    remaining = [0, 1, 3, 4]
    darkest = min(remaining, key=lambda i: brightness[i])
    assert "least realistic" in reasons[darkest] and len(reasons) == 3
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    fakes = set(table.loc[table["source"] == "synthetic", "path"])
    assert not fakes & set(dropped["path"]) and len(fakes) == 3
    # filtering again with looser settings restores them (it starts from scratch)
    assert len(stage.run_stage(ws, settings(**grid_only), progress=False, log=quiet).dropped) == 0
    assert (pd.read_csv(ws.augmented_table("XR_SHOULDER"))["source"] == "synthetic").sum() == 6
    with pytest.raises(UserError, match="needs a scorer"):  # a grid has no run whose D could score it
        stage.run_stage(ws, settings(drop_fraction=0.1, **grid_only), progress=False, log=quiet)


def test_discriminator_scorer_scores_each_fake(synth_workspace):
    from mura_aug.gan.networks import Discriminator

    ws = synth_workspace
    stage.run_stage(ws, settings(n_per_class=5, classes=("positive",)), progress=False, log=quiet)
    torch.manual_seed(0)
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=32).eval()
    paths = sorted(ws.augmented_dir("positive").glob("*.png"))
    scores = filters.discriminator_scorer(D, device="cpu")(paths, "positive")  # 5 images: not whole mbstd groups
    assert scores.shape == (5,) and np.isfinite(scores).all()
    result = stage.run_stage(ws, settings(n_per_class=5, classes=("positive",), drop_fraction=0.2),
                             progress=False, scorer=filters.discriminator_scorer(D, device="cpu"), log=quiet)
    assert len(result.dropped) == 1 and result.dropped["score"].iloc[0] == pytest.approx(scores.min(), abs=1e-5)


def test_discriminator_sees_the_grey_fake_in_all_three_channels(tmp_path):
    path = tmp_path / "fake.png"
    Image.fromarray(random_tiles(1, size=32, seed=2, mode="L")[0], "L").save(path)
    batch = filters.load_rgb_batch([path], 32)
    assert batch.shape == (1, 3, 32, 32)
    assert np.array_equal(batch[0, 0], batch[0, 1]) and np.array_equal(batch[0, 1], batch[0, 2])
    assert np.array_equal(batch[0, 0], np.asarray(Image.open(path)))


def test_classifier_scorer_gives_confidence_in_the_asked_class(tmp_path):
    paths = []
    for value in (30, 220):
        path = tmp_path / f"grey{value}.png"
        Image.fromarray(np.full((40, 40), value, np.uint8)).save(path)
        paths.append(path)
    # "abnormal" logit grows with brightness: a bright image is confidently positive
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1))
    with torch.no_grad():
        model[2].weight.fill_(3.0)
        model[2].bias.zero_()
    positive = filters.classifier_scorer(model, image_size=32, device="cpu")(paths, "positive")
    negative = filters.classifier_scorer(model, image_size=32, device="cpu")(paths, "negative")
    assert positive[1] > 0.9 > positive[0] and np.allclose(positive + negative, 1.0)
    two_logits = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    probs = filters.classifier_scorer(two_logits, image_size=32, device="cpu")(paths, "positive")
    assert probs.shape == (2,) and ((0 < probs) & (probs < 1)).all()


def test_filtering_excludes_a_fake_that_copies_a_real_image(synth_workspace):
    ws = synth_workspace
    positive_only = settings(n_per_class=4, classes=("positive",))
    stage.run_stage(ws, positive_only, progress=False, log=quiet)
    fakes = sorted(ws.augmented_dir("positive").glob("*.png"))
    with zipfile.ZipFile(ws.dataset_zip("XR_SHOULDER", "positive", 32)) as archive:
        member = sorted(n for n in archive.namelist() if n.endswith(".png"))[3]
        real = Image.open(io.BytesIO(archive.read(member))).convert("L")
    real.save(fakes[1])  # the generator "memorised" training image number 3
    dropped = stage.run_stage(ws, positive_only, progress=False, log=quiet).dropped
    assert list(dropped["path"]) == [fakes[1].relative_to(ws.root).as_posix()]
    assert "memorised" in dropped["drop_reason"].iloc[0] and member in dropped["drop_reason"].iloc[0]
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    assert fakes[1].relative_to(ws.root).as_posix() not in set(table["path"])
    assert (table["source"] == "synthetic").sum() == 3


# --- two phases: a failed filter never leaves unfiltered fakes in the table ---------------------------------

def test_failed_memorisation_filter_keeps_the_previous_table(synth_workspace, capsys):
    ws = synth_workspace
    argv = ["synth", "--workspace", str(ws.root), "--n-per-class", "2", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    table = ws.augmented_table("XR_SHOULDER")
    previous = table.read_bytes()
    assert manifest.filters_finished(ws, "XR_SHOULDER")
    dataset = ws.dataset_zip("XR_SHOULDER", "negative", 32)
    good_zip = dataset.read_bytes()
    dataset.write_bytes(b"PK\x03\x04 not a zip any more")  # the memorisation filter's input is corrupt
    capsys.readouterr()

    assert cli.main(argv[:3] + ["--n-per-class", "4"] + argv[5:]) == 2
    assert "cannot be opened" in capsys.readouterr().err
    assert len(list(ws.augmented_dir("negative").glob("*.png"))) == 4  # the new fakes were made ...
    assert table.read_bytes() == previous  # ... but the table is the previous one, not unfiltered fakes
    assert not manifest.filters_finished(ws, "XR_SHOULDER")
    with pytest.raises(UserError, match="did not finish its filters.*cannot be opened"):
        manifest.require_filters_finished(ws, "XR_SHOULDER")
    listed = manifest.read_manifest(ws)
    assert (listed["filtered_by"] == "").sum() == 4  # the fakes of the failed call: no finished pass judged them ...
    rebuilt = manifest.write_augmented_table(ws, "XR_SHOULDER")  # ... stay out whoever rebuilds the table
    assert (rebuilt["source"] == "synthetic").sum() == 4 and table.read_bytes() == previous

    dataset.write_bytes(good_zip)
    assert cli.main(argv[:3] + ["--n-per-class", "4"] + argv[5:]) == 0
    assert manifest.filters_finished(ws, "XR_SHOULDER")
    assert (pd.read_csv(table)["source"] == "synthetic").sum() == 8
    with open(table, "a") as handle:  # a table changed after stage 05 wrote it is not trusted either
        handle.write("extra row\n")
    assert "changed since" in manifest.unfinished_reason(ws, "XR_SHOULDER")


def test_failed_filter_on_a_first_run_leaves_no_table(synth_workspace, capsys):
    ws = synth_workspace
    ws.dataset_zip("XR_SHOULDER", "positive", 32).write_bytes(b"garbage")
    argv = ["synth", "--workspace", str(ws.root), "--n-per-class", "2", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 2
    assert not ws.augmented_table("XR_SHOULDER").exists()
    summary = json.loads(ws.synth_summary("XR_SHOULDER").read_text())
    assert summary["filters"]["finished"] is False and "cannot be opened" in summary["filters"]["error"]
    assert "there is no augmented table" in manifest.unfinished_reason(ws, "XR_SHOULDER")


def test_missing_memorisation_dataset_is_refused_before_generating(synth_workspace, capsys):
    ws = synth_workspace
    ws.dataset_zip("XR_SHOULDER", "negative", 32).unlink()
    argv = ["synth", "--workspace", str(ws.root), "--n-per-class", "2", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 2
    assert "needs the negative GAN dataset at 32 px" in capsys.readouterr().err
    assert not ws.manifest.exists() and not ws.augmented_table("XR_SHOULDER").exists()
    assert cli.main(argv + ["--no-exclude-memorised"]) == 0


# --- settings and the command line --------------------------------------------------------------------------

def _parse(argv):
    from mura_aug.synth import cli as synth_cli

    parser = argparse.ArgumentParser()
    synth_cli.add_arguments(parser)
    return SynthSettings.from_args(parser.parse_args(argv))


def test_old_flags_are_aliases_of_the_settings_names():
    old = _parse(["--psi", "0.7", "--sharpen", "1.5", "--dedupe", "3", "--grid", "a.png", "--grid-class",
                  "positive"])
    new = _parse(["--truncation-psi", "0.7", "--sharpen-factor", "1.5", "--dedupe-threshold", "3", "--grids",
                  "a.png", "--grid-class", "positive"])
    assert old == new
    assert (old.truncation_psi, old.sharpen_factor, old.dedupe_threshold, old.grids) == (0.7, 1.5, 3.0, ["a.png"])
    assert _parse([]) == SynthSettings().check()
    assert _parse(["--runs", "positive=A", "negative=B"]).runs == {"positive": "A", "negative": "B"}
    with pytest.raises(UserError, match="mixes CLASS=RUN pairs"):
        _parse(["--runs", "positive=A", "B"])


def test_settings_have_one_name_in_notebooks_and_stored_form():
    from_notebook = SynthSettings.from_parameters({"TRUNCATION_PSI": 0.7, "DEDUPE_THRESHOLD": 3.0,
                                                   "RUNS": {"positive": "A", "negative": "B"}, "WORKSPACE": "x"})
    assert from_notebook.truncation_psi == 0.7 and from_notebook.dedupe_threshold == 3.0
    stored = json.loads(json.dumps(from_notebook.to_dict()))
    assert "truncation_psi" in stored and "show_widgets" not in stored  # a notebook-only switch is not stored
    assert SynthSettings.from_dict(stored).check() == from_notebook
    assert "SHOW_WIDGETS" in SynthSettings.notebook_names() and "GRIDS" not in SynthSettings.notebook_names()


@pytest.mark.parametrize("values, named", [
    (dict(n_per_class=-1), "N_PER_CLASS"), (dict(batch=0), "BATCH"), (dict(drop_fraction=1.0), "DROP_FRACTION"),
    (dict(sharpen_factor=-1.0), "SHARPEN_FACTOR"), (dict(memorisation_threshold=2.0), "MEMORISATION_THRESHOLD"),
    (dict(classes=("both",)), "CLASSES"), (dict(seed=2 ** 32 - 1, n_per_class=2), "SEED"),
    (dict(grids=["a.png"]), "GRID_CLASS"), (dict(tile_size=0), "TILE_SIZE"),
])
def test_impossible_settings_name_the_setting(values, named):
    with pytest.raises(UserError, match=named):
        SynthSettings(**values).check()


def test_cli_synth(synth_workspace, capsys):
    ws = synth_workspace
    argv = ["synth", "--workspace", str(ws.root), "--n-per-class", "2", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "+ 4 synthetic rows" in out and "XR_SHOULDER-positive-tiny-32, snapshot at 4 kimg" in out
    assert "32 px" in out  # the picked resolution is said
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    assert (table["source"] == "synthetic").sum() == 4
    assert cli.main(argv + ["--runs", "nothere"]) == 2
    assert "No run or snapshot 'nothere'" in capsys.readouterr().err


def test_bad_generation_parameters_are_user_errors(synth_workspace):
    snapshot = snapshots.find_snapshots(synth_workspace, "XR_SHOULDER")["positive"]
    with pytest.raises(UserError, match="negative"):
        generate.synthesize_class(synth_workspace, snapshot, "positive", -1, device="cpu", progress=False)
    with pytest.raises(UserError, match="out of range"):
        generate.synthesize_class(synth_workspace, snapshot, "positive", 2, seed=2 ** 32 - 1, device="cpu",
                                  progress=False)
    with pytest.raises(UserError, match="batch_size"):
        generate.synthesize_class(synth_workspace, snapshot, "positive", 2, batch_size=0, device="cpu",
                                  progress=False)
    assert not synth_workspace.manifest.exists() or pd.read_csv(synth_workspace.manifest).empty


def test_open_gray_reads_16_bit_without_clipping(tmp_path):
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.array([[0, 1000], [30000, 60000]], np.uint16)).save(path)
    gray = np.asarray(generate.open_gray(path))
    assert gray.dtype == np.uint8 and gray[0, 0] == 0 and gray[1, 1] == 255 and 0 < gray[0, 1] < gray[1, 0] < 255
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot be read"):
        generate.open_gray(tmp_path / "broken.png")


def test_cli_grid_mode_uses_the_run_resolution(synth_workspace, capsys):
    ws = synth_workspace
    run = ws.run("XR_SHOULDER-negative-tiny-32")
    run.options.write_text('{"resolution": 32}')
    tiles = random_tiles(4, size=32, seed=11)
    grid = run.fakes(4.0)
    Image.fromarray(compose_grid(tiles, 1, 4)).save(grid)
    argv = ["synth", "--workspace", str(ws.root), "--grid", str(grid), "--grid-class", "negative", "--no-progress"]
    assert cli.main(argv) == 0
    assert "4 tiles (4 written, 0 already there)" in capsys.readouterr().out
    assert cli.main(argv + ["--dedupe", "0.5"]) == 0
    assert "4 tiles (0 written, 4 already there)" in capsys.readouterr().out
    assert cli.main(argv[:-3] + ["--no-progress"]) == 2
    assert "needs GRID_CLASS" in capsys.readouterr().err


def test_a_table_write_that_fails_leaves_the_previous_table(synth_workspace, monkeypatch):
    import errno
    import os

    ws = synth_workspace
    stage.run_stage(ws, settings(n_per_class=2), progress=False, log=quiet)
    table = ws.augmented_table("XR_SHOULDER")
    previous = table.read_bytes()
    real_replace = os.replace

    def disk_full_for_the_table(src, dst, *args, **kwargs):
        if os.fspath(dst) == os.fspath(table):
            raise OSError(errno.ENOSPC, "No space left on device", os.fspath(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", disk_full_for_the_table)
    with pytest.raises(UserError, match="is full"):
        stage.run_stage(ws, settings(n_per_class=3), progress=False, log=quiet)
    monkeypatch.setattr(os, "replace", real_replace)
    assert table.read_bytes() == previous  # never a half-made table
    assert not manifest.filters_finished(ws, "XR_SHOULDER")
    assert "disk" in json.loads(ws.synth_summary("XR_SHOULDER").read_text())["filters"]["error"]
    assert not list(table.parent.glob(f".{table.name}.*"))  # no temporary file left behind
