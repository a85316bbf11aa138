"""Stage 05: grid cutting, sharpening, deterministic generation, manifest/table idempotence, filtering, CLI."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image, ImageEnhance

from mura_aug import cli
from mura_aug.gan import sampling
from mura_aug.synth import stage as synth
from mura_aug.workspace import kimg_tag
from mura_aug.errors import UserError

TINY_G = dict(z_dim=32, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=256, channel_max=32))


def tiny_generator(c_dim=0, torch_seed=0):
    from mura_aug.gan.networks import Generator

    torch.manual_seed(torch_seed)
    return Generator(c_dim=c_dim, **TINY_G).eval()


def add_tiny_run(workspace, label, kimg=4.0, torch_seed=0, body_part="XR_SHOULDER"):
    """A run folder with one inference file of a freshly initialised tiny generator."""
    from mura_aug.gan.network_file import save_network_file

    run = f"{body_part}-{label}-tiny-32"
    G = tiny_generator(c_dim=2 if label == "both" else 0, torch_seed=torch_seed)
    path = workspace.experiments / run / f"network-{kimg_tag(kimg)}kimg.pt"
    save_network_file(path, G, kimg=kimg, run=run, label=label, class_names=["negative", "positive"])
    return path


def random_tiles(n, size=16, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def compose_grid(tiles, rows, cols, padding=0, margin=0, pad_value=0):
    size = tiles[0].shape[0]
    height = rows * size + (rows - 1) * padding + 2 * margin
    width = cols * size + (cols - 1) * padding + 2 * margin
    grid = np.full((height, width) + tiles[0].shape[2:], pad_value, np.uint8)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, cols)
        top, left = margin + r * (size + padding), margin + c * (size + padding)
        grid[top:top + size, left:left + size] = tile
    return grid


@pytest.mark.parametrize("padding,margin,pad_value", [(0, 0, 0), (2, 2, 0), (3, 0, 255), (2, 2, 117)])
def test_cut_grid_is_pixel_exact(padding, margin, pad_value):
    tiles = random_tiles(12, size=16, seed=padding)
    grid = Image.fromarray(compose_grid(tiles, 3, 4, padding, margin, pad_value))
    for kwargs in (dict(tile_size=16), dict(rows=3, cols=4)):
        cut = synth.cut_grid(grid, **kwargs)
        assert len(cut) == 12
        for original, piece in zip(tiles, cut):
            assert np.array_equal(np.asarray(piece), original)
    layout = synth.detect_grid_layout(grid, tile_size=16)
    assert (layout.rows, layout.cols, layout.padding, layout.margin) == (3, 4, padding, margin)


def test_cut_grid_matches_torchvision_make_grid(tmp_path):
    from torchvision.utils import make_grid

    tiles = random_tiles(8, size=32, seed=3)
    tensor = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
    grid = make_grid(tensor, nrow=4, padding=2).permute(1, 2, 0).numpy()
    path = tmp_path / "fakes-000004.000kimg.png"
    Image.fromarray(grid).save(path)
    cut = synth.cut_grid(path, rows=2, cols=4)
    assert all(np.array_equal(np.asarray(p), t) for p, t in zip(cut, tiles))


def test_cut_grid_errors_name_the_problem(tmp_path):
    grid = Image.fromarray(np.zeros((50, 70, 3), np.uint8))
    with pytest.raises(UserError, match="cannot be cut"):
        synth.cut_grid(grid, tile_size=16, padding=0)
    with pytest.raises(UserError, match="tile size or both"):
        synth.cut_grid(grid, rows=2)
    with pytest.raises(UserError, match="No grid image"):
        synth.cut_grid(tmp_path / "missing.png", tile_size=16)
    broken = tmp_path / "fakes000480.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(UserError, match="cannot be read"):
        synth.cut_grid(broken, tile_size=16)
    assert synth.grid_kimg(broken) == 480.0
    assert synth.grid_kimg(tmp_path / "fakes-000012.500kimg.png") == 12.5


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_sharpen_equals_pil(mode):
    image = Image.fromarray(random_tiles(1, size=24, seed=7, mode=mode)[0], mode)
    expected = ImageEnhance.Sharpness(image).enhance(2.0)
    assert np.array_equal(np.asarray(synth.sharpen(image)), np.asarray(expected))
    with_contrast = ImageEnhance.Contrast(expected).enhance(1.3)
    assert np.array_equal(np.asarray(synth.sharpen(image, 2.0, contrast=1.3)), np.asarray(with_contrast))
    assert np.array_equal(np.asarray(synth.sharpen(image, 1.0)), np.asarray(image))
    assert not np.array_equal(np.asarray(synth.sharpen(image, 2.0)), np.asarray(image))
    with pytest.raises(UserError):
        synth.sharpen(image, -1)


def test_generation_is_deterministic_per_seed():
    G = tiny_generator()
    first = dict(synth.generate_images(G, [3, 5, 8], 0.7, batch_size=2, device="cpu", progress=False))
    again = dict(synth.generate_images(G, [3, 5, 8], 0.7, batch_size=2, device="cpu", progress=False))
    alone = dict(synth.generate_images(G, [5], 0.7, batch_size=1, device="cpu", progress=False))
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
    pos = dict(synth.generate_images(G, [1], cls="positive", device="cpu", progress=False))[1]
    neg = dict(synth.generate_images(G, [1], cls="negative", device="cpu", progress=False))[1]
    assert not np.array_equal(pos, neg)
    with pytest.raises(UserError, match="class-conditional"):
        list(synth.generate_images(G, [1], cls=None, device="cpu", progress=False))


@pytest.fixture
def synth_workspace(prepared_workspace, copy_workspace):
    workspace = copy_workspace(prepared_workspace)
    add_tiny_run(workspace, "positive", torch_seed=1)
    add_tiny_run(workspace, "negative", torch_seed=2)
    return workspace


def _snapshot_of_files(folder):
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*.png"))}


def test_synthesize_writes_contract_files_and_reruns_idempotently(synth_workspace):
    ws = synth_workspace
    results = synth.synthesize(ws, n_per_class=3, seed=10, truncation_psi=0.8, device="cpu", progress=False)
    assert {cls: r.generated for cls, r in results.items()} == {"positive": 3, "negative": 3}
    pos_dir = ws.augmented_dir("positive", "XR_SHOULDER")
    assert sorted(p.name for p in pos_dir.iterdir()) == [
        f"XR_SHOULDER-positive-tiny-32_kimg000004.000_seed{s:06d}.png" for s in (10, 11, 12)]
    manifest = pd.read_csv(ws.manifest)
    assert len(manifest) == 6 and set(manifest["psi"]) == {0.8} and set(manifest["kimg"]) == {4.0}
    train = pd.read_csv(ws.table("XR_SHOULDER", "train"))
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    fakes = table[table["source"] == "synthetic"]
    assert len(table) == len(train) + 6 and len(fakes) == 6
    assert set(fakes["patient"]) == {"synthetic"} and set(fakes["split"]) == {"train"}
    assert fakes.groupby("class")["label"].first().to_dict() == {"negative": 0, "positive": 1}
    assert fakes["study_id"].is_unique and (fakes["path"] == fakes["filename"]).all()
    assert all((ws.root / p).is_file() for p in fakes["path"])

    files_before = _snapshot_of_files(ws.data / "Augmented_Fakes")
    manifest_before = ws.manifest.read_bytes()
    table_before = ws.augmented_table("XR_SHOULDER").read_bytes()
    again = synth.synthesize(ws, n_per_class=3, seed=10, truncation_psi=0.8, device="cpu", progress=False)
    assert all(r.generated == 0 and r.skipped == 3 for r in again.values())
    assert _snapshot_of_files(ws.data / "Augmented_Fakes") == files_before
    assert ws.manifest.read_bytes() == manifest_before
    assert ws.augmented_table("XR_SHOULDER").read_bytes() == table_before

    more = synth.synthesize(ws, n_per_class=5, seed=10, truncation_psi=0.8, device="cpu", progress=False)
    assert all(r.generated == 2 for r in more.values())
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    assert (table["source"] == "synthetic").sum() == 10 and table["path"].is_unique

    changed = synth.synthesize(ws, n_per_class=2, seed=10, truncation_psi=0.5, device="cpu", progress=False,
                               classes=["positive"])
    assert changed["positive"].generated == 2  # other psi: those files are made again, not duplicated
    manifest = pd.read_csv(ws.manifest)
    assert len(manifest) == 10 and manifest["path"].is_unique
    assert sorted(manifest.loc[manifest["class"] == "positive", "psi"]) == [0.5, 0.5, 0.8, 0.8, 0.8]


def test_saved_fake_is_the_sharpened_generator_output(synth_workspace):
    ws = synth_workspace
    snapshot = synth.find_snapshots(ws, "XR_SHOULDER")["negative"]
    synth.synthesize_class(ws, snapshot, "negative", 1, seed=4, truncation_psi=1.0, sharpen_factor=2.0,
                           device="cpu", progress=False)
    from mura_aug.gan.network_file import load_generator

    (_, raw), = synth.generate_images(load_generator(snapshot.path), [4], 1.0, device="cpu", progress=False)
    expected = np.asarray(ImageEnhance.Sharpness(Image.fromarray(raw)).enhance(2.0))
    saved = ws.fake_path("negative", "XR_SHOULDER", snapshot.run, snapshot.kimg, 4)
    assert np.array_equal(np.asarray(Image.open(saved)), expected)


def test_conditional_run_serves_both_classes(prepared_workspace, copy_workspace):
    ws = copy_workspace(prepared_workspace)
    add_tiny_run(ws, "both", kimg=8.0)
    snapshots = synth.find_snapshots(ws, "XR_SHOULDER")
    assert snapshots["positive"].path == snapshots["negative"].path and snapshots["positive"].label == "both"
    synth.synthesize(ws, n_per_class=2, device="cpu", progress=False)
    name = "XR_SHOULDER-both-tiny-32_kimg000008.000_seed000000.png"
    pos = np.asarray(Image.open(ws.augmented_dir("positive") / name))
    neg = np.asarray(Image.open(ws.augmented_dir("negative") / name))
    assert not np.array_equal(pos, neg)


def test_missing_runs_are_a_user_error(prepared_workspace, copy_workspace):
    ws = copy_workspace(prepared_workspace)
    add_tiny_run(ws, "positive")
    with pytest.raises(UserError, match="negative"):
        synth.find_snapshots(ws, "XR_SHOULDER")
    with pytest.raises(UserError, match="No run or snapshot"):
        synth.find_snapshots(ws, "XR_SHOULDER", runs=["XR_SHOULDER-negative-nothere-32"])
    picked = synth.find_snapshots(ws, "XR_SHOULDER", runs={"positive": "XR_SHOULDER-positive-tiny-32",
                                                          "negative": "XR_SHOULDER-positive-tiny-32"})
    assert picked["negative"].label == "negative"


def test_grid_cutting_registers_fakes_once(synth_workspace, tmp_path):
    ws = synth_workspace
    tiles = random_tiles(6, size=32, seed=5)
    grid_path = ws.experiments / "XR_SHOULDER-positive-tiny-32" / "fakes-000004.000kimg.png"
    Image.fromarray(compose_grid(tiles, 2, 3)).save(grid_path)
    first = synth.cut_grid_to_fakes(ws, grid_path, "positive", tile_size=32)
    assert first.generated == 6
    saved = ws.tile_path("positive", "XR_SHOULDER", "XR_SHOULDER-positive-tiny-32", 4.0, 5)
    assert np.array_equal(np.asarray(Image.open(saved)),
                          np.asarray(ImageEnhance.Sharpness(Image.fromarray(tiles[5])).enhance(2.0)))
    second = synth.cut_grid_to_fakes(ws, grid_path, "positive", tile_size=32)
    assert second.generated == 0 and second.skipped == 6
    synth.write_augmented_table(ws, "XR_SHOULDER")
    synth.write_augmented_table(ws, "XR_SHOULDER")
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    assert (table["source"] == "synthetic").sum() == 6 and table["path"].is_unique
    manifest = pd.read_csv(ws.manifest)
    assert manifest["tile"].tolist() == list(range(6)) and manifest["source_grid"].nunique() == 1


def test_filtering_drops_duplicates_and_least_realistic(synth_workspace):
    ws = synth_workspace
    tiles = random_tiles(4, size=32, seed=9)
    tiles = [tiles[0], tiles[1], tiles[0].copy(), tiles[2], tiles[3], tiles[1].copy()]  # tiles 2 and 5 repeat
    grid_path = ws.root / "grid.png"
    Image.fromarray(compose_grid(tiles, 2, 3)).save(grid_path)
    synth.cut_grid_to_fakes(ws, grid_path, "negative", tile_size=32, run="gridrun", kimg=1)
    brightness = {i: float(t.mean()) for i, t in enumerate(tiles)}

    def mean_brightness(paths, cls):  # a stand-in realism score: brighter = "more real"
        return np.array([np.asarray(Image.open(p)).mean() for p in paths])

    dropped = synth.filter_fakes(ws, duplicate_threshold=1.0, drop_fraction=0.25, scorer=mean_brightness,
                                 classes=["negative"], progress=False)
    reasons = dict(zip(dropped["path"].str.extract(r"tile(\d+)")[0].astype(int), dropped["drop_reason"]))
    assert "near-duplicate" in reasons[2] and "near-duplicate" in reasons[5]
    remaining = [0, 1, 3, 4]
    darkest = min(remaining, key=lambda i: brightness[i])
    assert "least realistic" in reasons[darkest] and len(reasons) == 3
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    fakes = set(table.loc[table["source"] == "synthetic", "path"])
    assert not fakes & set(dropped["path"]) and len(fakes) == 3
    # filtering again with looser settings restores them (it starts from scratch)
    assert len(synth.filter_fakes(ws, classes=["negative"], progress=False)) == 0
    with pytest.raises(UserError, match="needs a scorer"):
        synth.filter_fakes(ws, drop_fraction=0.1, progress=False)


def test_discriminator_scorer_scores_each_fake(synth_workspace):
    from mura_aug.gan.networks import Discriminator

    ws = synth_workspace
    synth.synthesize(ws, n_per_class=5, device="cpu", progress=False, classes=["positive"])
    torch.manual_seed(0)
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=256, channel_max=32).eval()
    paths = sorted(ws.augmented_dir("positive").glob("*.png"))
    scores = synth.discriminator_scorer(D, device="cpu")(paths, "positive")  # 5 images: not whole mbstd groups
    assert scores.shape == (5,) and np.isfinite(scores).all()
    dropped = synth.filter_fakes(ws, drop_fraction=0.2, scorer=synth.discriminator_scorer(D, device="cpu"),
                                 classes=["positive"], progress=False)
    assert len(dropped) == 1 and dropped["score"].iloc[0] == pytest.approx(scores.min(), abs=1e-5)


def test_cli_synth(synth_workspace, capsys):
    ws = synth_workspace
    argv = ["synth", "--workspace", str(ws.root), "--n-per-class", "2", "--device", "cpu", "--no-progress"]
    assert cli.main(argv) == 0
    assert "+ 4 synthetic rows" in capsys.readouterr().out
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    assert (table["source"] == "synthetic").sum() == 4
    assert cli.main(argv + ["--runs", "nothere"]) == 2
    assert "No run or snapshot 'nothere'" in capsys.readouterr().err


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
    positive = synth.classifier_scorer(model, image_size=32, device="cpu")(paths, "positive")
    negative = synth.classifier_scorer(model, image_size=32, device="cpu")(paths, "negative")
    assert positive[1] > 0.9 > positive[0] and np.allclose(positive + negative, 1.0)
    two_logits = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    probs = synth.classifier_scorer(two_logits, image_size=32, device="cpu")(paths, "positive")
    assert probs.shape == (2,) and ((0 < probs) & (probs < 1)).all()


def test_bad_generation_parameters_are_user_errors(synth_workspace):
    snapshot = synth.find_snapshots(synth_workspace, "XR_SHOULDER")["positive"]
    with pytest.raises(UserError, match="negative"):
        synth.synthesize_class(synth_workspace, snapshot, "positive", -1, device="cpu", progress=False)
    with pytest.raises(UserError, match="out of range"):
        synth.synthesize_class(synth_workspace, snapshot, "positive", 2, seed=2 ** 32 - 1, device="cpu",
                               progress=False)
    with pytest.raises(UserError, match="batch_size"):
        synth.synthesize_class(synth_workspace, snapshot, "positive", 2, batch_size=0, device="cpu", progress=False)
    assert not synth_workspace.manifest.exists() or pd.read_csv(synth_workspace.manifest).empty


def test_open_gray_reads_16_bit_without_clipping(tmp_path):
    path = tmp_path / "sixteen.png"
    Image.fromarray(np.array([[0, 1000], [30000, 60000]], np.uint16)).save(path)
    gray = np.asarray(synth.open_gray(path))
    assert gray.dtype == np.uint8 and gray[0, 0] == 0 and gray[1, 1] == 255 and 0 < gray[0, 1] < gray[1, 0] < 255
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot be read"):
        synth.open_gray(tmp_path / "broken.png")


def test_cli_grid_mode_uses_the_run_resolution(synth_workspace, capsys):
    ws = synth_workspace
    run_dir = ws.experiments / "XR_SHOULDER-negative-tiny-32"
    (run_dir / "training_options.json").write_text('{"resolution": 32}')
    tiles = random_tiles(4, size=32, seed=11)
    grid = run_dir / "fakes-000004.000kimg.png"
    Image.fromarray(compose_grid(tiles, 1, 4)).save(grid)
    argv = ["synth", "--workspace", str(ws.root), "--grid", str(grid), "--grid-class", "negative", "--no-progress"]
    assert cli.main(argv) == 0
    assert "4 tiles (4 written, 0 already there)" in capsys.readouterr().out
    assert cli.main(argv + ["--dedupe", "0.5"]) == 0
    assert "4 tiles (0 written, 4 already there)" in capsys.readouterr().out
    assert cli.main(argv[:-3] + ["--no-progress"]) == 2
    assert "--grid needs --grid-class" in capsys.readouterr().err


def test_filtering_excludes_a_fake_that_copies_a_real_image(synth_workspace):
    import io
    import zipfile


    ws = synth_workspace
    synth.synthesize(ws, n_per_class=4, device="cpu", progress=False, classes=["positive"])
    fakes = sorted(ws.augmented_dir("positive").glob("*.png"))
    with zipfile.ZipFile(ws.dataset_zip("XR_SHOULDER", "positive", 32)) as archive:
        member = sorted(n for n in archive.namelist() if n.endswith(".png"))[3]
        real = Image.open(io.BytesIO(archive.read(member))).convert("L")
    real.save(fakes[1])  # the generator "memorised" training image number 3
    dropped = synth.filter_fakes(ws, classes=["positive"], progress=False, exclude_memorised=True)
    assert list(dropped["path"]) == [fakes[1].relative_to(ws.root).as_posix()]
    assert "memorised" in dropped["drop_reason"].iloc[0] and member in dropped["drop_reason"].iloc[0]
    table = pd.read_csv(ws.augmented_table("XR_SHOULDER"))
    assert fakes[1].relative_to(ws.root).as_posix() not in set(table["path"])
    assert (table["source"] == "synthetic").sum() == 3
