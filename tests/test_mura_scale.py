"""MURA-scale rehearsal (issue 19): `make-demo-data --like-mura` draws real MURA-v1.1's counts, per seed."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from mura_aug import cli
from mura_aug.errors import UserError
from mura_aug.prepare import demo_data
from mura_aug.prepare.demo_data import make_demo_mura, plan_like_mura
from mura_aug.prepare.mura import BODY_PARTS, index_mura
from mura_aug.prepare.mura_counts import MURA_COUNTS, STUDIES_PER_PATIENT


def _studies(images):
    return {(im.split, im.patient_id, im.study_number): im.positive for im in images}


def test_full_scale_plan_has_muras_counts_per_body_part_and_split():
    images = plan_like_mura(seed=0, body_parts=BODY_PARTS)
    assert Counter(im.split for im in images) == {"train": 36808, "valid": 3197}
    for body_part, (train, valid) in MURA_COUNTS.items():
        for split, counts in (("train", train), ("valid", valid)):
            mine = [im for im in images if im.body_part == body_part and im.split == split]
            studies = _studies(mine)
            assert len(mine) == counts.images
            assert sum(studies.values()) == counts.abnormal_studies
            assert len(studies) - sum(studies.values()) == counts.normal_studies
            patients = {im.patient_id for im in mine}
            assert len(patients) == round(counts.studies / STUDIES_PER_PATIENT[split])
    train_patients = {im.patient_id for im in images if im.split == "train"}
    valid_patients = {im.patient_id for im in images if im.split == "valid"}
    assert max(train_patients) < min(valid_patients)  # numbered as in MURA: train first


def test_plan_is_deterministic_per_seed_and_scales():
    shoulder = plan_like_mura(seed=1, body_parts=["XR_SHOULDER"], scale=0.5)
    assert shoulder == plan_like_mura(seed=1, body_parts=["XR_SHOULDER"], scale=0.5)
    assert shoulder != plan_like_mura(seed=2, body_parts=["XR_SHOULDER"], scale=0.5)
    assert Counter(im.split for im in shoulder) == {"train": round(8379 / 2), "valid": round(563 / 2)}
    # The shoulder of `all` draws the same images as the shoulder alone.
    everything = plan_like_mura(seed=1, body_parts=BODY_PARTS, scale=0.5)
    assert [im.seed for im in everything if im.body_part == "XR_SHOULDER"] == [im.seed for im in shoulder]
    with pytest.raises(UserError, match="scale"):
        plan_like_mura(seed=1, body_parts=["XR_SHOULDER"], scale=1.5)


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_tree_at_a_small_scale_indexes_as_mura_and_workers_do_not_change_bytes(tmp_path, monkeypatch):
    one = make_demo_mura(tmp_path / "one", body_parts=["XR_HUMERUS"], like_mura=True, scale=0.02, seed=4,
                         workers=1)
    index = index_mura(one, "XR_HUMERUS")
    assert len(index.images) == round(1272 * 0.02) + round(288 * 0.02)
    assert set(index.images["class"]) == {"positive", "negative"}
    monkeypatch.setattr(demo_data, "POOL_MIN_IMAGES", 0)  # use the process pool even for this small tree
    two = make_demo_mura(tmp_path / "two", body_parts=["XR_HUMERUS"], like_mura=True, scale=0.02, seed=4,
                         workers=2)
    assert _tree_digest(one) == _tree_digest(two)


def test_cli_like_mura_and_a_scale_without_it(tmp_path, capsys):
    assert cli.main(["make-demo-data", "--out", str(tmp_path), "--like-mura", "XR_HUMERUS", "--scale", "0.01",
                     "--workers", "1"]) == 0
    assert len(index_mura(tmp_path / "MURA-v1.1", "XR_HUMERUS").images) == round(1272 * 0.01) + round(288 * 0.01)
    with pytest.raises(UserError, match="--like-mura"):
        from mura_aug.prepare.settings import DemoDataSettings

        DemoDataSettings(out=str(tmp_path), scale=0.5).check()


# --- stage 01 throughput: OpenCV's PNG codec gives Pillow's pixels; copies are flushed once ----------------

def _png(image, **options) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


@pytest.fixture
def pillow_only(monkeypatch):
    from mura_aug import imaging

    monkeypatch.setattr(imaging, "_OPENCV", None)


def test_opencv_decode_and_encode_give_pillows_pixels(monkeypatch):
    pytest.importorskip("cv2")
    import numpy as np
    from PIL import Image

    from mura_aug import imaging

    monkeypatch.setattr(imaging, "_OPENCV", imaging._NOT_LOADED)
    monkeypatch.delenv(imaging.OPENCV_SWITCH, raising=False)
    assert imaging.png_codec() == "opencv"
    rng = np.random.default_rng(0)
    grey = Image.fromarray(rng.integers(0, 256, (70, 90), dtype=np.uint8))
    rgb = Image.fromarray(rng.integers(0, 256, (64, 48, 3), dtype=np.uint8))
    for image in (grey, rgb):
        data = _png(image)
        fast = imaging.open_image(data)
        monkeypatch.setattr(imaging, "_OPENCV", None)
        slow = imaging.open_image(data)
        monkeypatch.setattr(imaging, "_OPENCV", imaging._NOT_LOADED)
        assert fast.mode == slow.mode == "L"
        assert np.array_equal(np.asarray(fast), np.asarray(slow))
        encoded = imaging.encode_png_fast(image, 4)
        assert encoded != imaging.encode_png(image, 4)  # OpenCV wrote it ...
        assert np.array_equal(np.asarray(Image.open(__import__("io").BytesIO(encoded))), np.asarray(image))  # ... losslessly
    # A truncated file is refused with Pillow's words, whoever decodes first.
    with pytest.raises(imaging.ImageProblem, match="truncated or corrupt"):
        imaging.open_image(_png(grey)[:-200])


def test_without_opencv_pillow_does_everything(pillow_only):
    import numpy as np
    from PIL import Image

    from mura_aug import imaging

    assert imaging.png_codec() == "pillow"
    image = Image.fromarray(np.arange(64 * 64, dtype=np.uint8).reshape(64, 64))
    assert imaging.encode_png_fast(image, 4) == imaging.encode_png(image, 4)
    assert np.array_equal(np.asarray(imaging.open_image(_png(image))), np.asarray(image))


def test_copies_are_flushed_once_before_the_state_records_them(tmp_path, monkeypatch):
    import os

    from mura_aug.prepare.settings import PrepareSettings
    from mura_aug.prepare.stage import run_stage

    mura = make_demo_mura(tmp_path / "mura", patients=4, seed=1)
    events = []
    real_fsync, real_sync, real_replace = os.fsync, os.sync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "sync", lambda: (events.append("sync"), real_sync())[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(Path(dst).name), real_replace(src, dst))[1])
    summary = run_stage(tmp_path / "ws", PrepareSettings(mura_path=str(mura), resolution=16, workers=1),
                        progress=False)
    copies = summary["copies"]["copied"]
    assert copies > 10
    state = ".XR_SHOULDER_prepare_state.json"
    assert events.count("sync") == 1 and events.index("sync") < events.index(state)
    copy_events = [i for i, name in enumerate(events) if name.startswith("XR_SHOULDER_train_patient")]
    assert len(copy_events) == copies - sum(1 for name in events if name.startswith("XR_SHOULDER_valid_patient"))
    assert events.index("sync") > copy_events[-1]
    assert "fsync" not in events[copy_events[0]:copy_events[-1]]  # two per copy before


# --- pairwise stages stay chunked: memory bounded whatever the counts ----------------------------------------

def test_memorisation_and_precision_recall_never_hold_the_whole_pairwise_matrix(monkeypatch):
    import tracemalloc

    import numpy as np

    from mura_aug.metrics import measures

    rng = np.random.default_rng(0)
    fakes, reals = rng.random((4000, 64)), rng.random((3000, 64))
    full_matrix = 4000 * 3000 * 8  # bytes of the fake x real float64 distance matrix: 96 MB
    monkeypatch.setattr(measures, "PAIRWISE_CHUNK", 100)
    for name, call in (("memorisation", lambda: measures.memorisation_of_descriptors(fakes, reals)),
                       ("precision_recall", lambda: measures.precision_recall(reals, fakes, k=3))):
        tracemalloc.start()
        call()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < full_matrix / 4, f"{name} held {peak / 2**20:.0f} MB: it stopped working in chunks"
    # Chunking changes nothing: the same nearest reals and distances as the whole matrix at once.
    nearest, distance = measures.nearest_rows(fakes[:300], reals, chunk=64)
    whole = measures.pairwise_distances(fakes[:300], reals, chunk=10_000)
    assert np.array_equal(nearest, whole.argmin(axis=1))
    assert np.allclose(distance, whole.min(axis=1), rtol=0, atol=1e-12)


def test_near_duplicates_compare_in_bounded_blocks_and_keep_the_greedy_rule(tmp_path, monkeypatch):
    import numpy as np
    import torch
    from PIL import Image

    from mura_aug.synth import filters

    rng = np.random.default_rng(1)
    bases = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(40)]
    paths, expected = [], {}
    first_of = {}
    for index in range(200):
        base = int(rng.integers(0, len(bases)))
        noise = rng.integers(-1, 2, (32, 32)) if base in first_of else 0
        Image.fromarray(np.clip(bases[base].astype(int) + noise, 0, 255).astype(np.uint8)).save(
            tmp_path / f"{index:03d}.png")
        paths.append(tmp_path / f"{index:03d}.png")
        if base in first_of:
            expected[index] = first_of[base]
        else:
            first_of[base] = index
    shapes = []
    real_cdist = torch.cdist
    monkeypatch.setattr(torch, "cdist", lambda a, b, p: (shapes.append((len(a), len(b))), real_cdist(a, b, p=p))[1])
    monkeypatch.setattr(filters, "DUPLICATE_BLOCK", 16)
    duplicates = filters.near_duplicates(paths, threshold=3.0)
    assert {i: j for i, (j, _) in duplicates.items()} == expected
    assert all(distance < 1.0 for _, distance in duplicates.values())
    assert shapes and max(rows for rows, _ in shapes) <= 16  # never all fakes against all at once
    assert max(rows * cols for rows, cols in shapes) <= 16 * len(first_of)


def test_gan_training_array_is_written_image_by_image(tmp_path):
    import tracemalloc

    import numpy as np

    from gan_datasets import make_dataset
    from mura_aug.gan.dataset import load_training_images, read_dataset_zip

    load_training_images(make_dataset(tmp_path / "warm", "positive", res=16, count=2), "XR_SHOULDER", "positive",
                         16)  # imports and first-use caches are not what is measured
    workspace = make_dataset(tmp_path / "ws", "positive", res=64, count=48)
    make_dataset(tmp_path / "ws", "negative", res=64, count=32)
    array_bytes = 80 * 3 * 64 * 64
    tracemalloc.start()
    images, labels = load_training_images(workspace, "XR_SHOULDER", "both", 64)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < array_bytes / 4, f"loading held {peak} bytes for a {array_bytes}-byte array"
    negatives, _ = read_dataset_zip(workspace.dataset_zip("XR_SHOULDER", "negative", 64))
    positives, _ = read_dataset_zip(workspace.dataset_zip("XR_SHOULDER", "positive", 64))
    assert np.array_equal(np.asarray(images), np.concatenate([negatives, positives]))
    assert labels.tolist() == [0] * 32 + [1] * 48


def test_holding_the_real_images_is_refused_up_front_when_memory_is_short(tmp_path, monkeypatch):
    from gan_datasets import make_dataset
    from mura_aug import devices
    from mura_aug.gan.dataset import load_real_images

    workspace = make_dataset(tmp_path / "ws", "positive", res=32, count=10)
    monkeypatch.setattr(devices, "available_memory", lambda: 10 * 3 * 32 * 32)  # less than 1/0.8 of the need
    with pytest.raises(UserError, match="needs about .* GB of memory"):
        load_real_images(workspace, "XR_SHOULDER", "positive", 32)
    monkeypatch.setattr(devices, "available_memory", lambda: None)  # unknown: no refusal
    images, _ = load_real_images(workspace, "XR_SHOULDER", "positive", 32)
    assert images.shape == (10, 3, 32, 32)


def test_available_memory_reads_the_system():
    from mura_aug.devices import available_memory

    available = available_memory()
    assert available is None or available > 2**20


# --- the rehearsal itself ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_half_scale_rehearsal_end_to_end(tmp_path):
    """Every stage of bench/bench_scale.py at 1/2 x XR_SHOULDER (4,472 images, 5,000 fakes): it finishes, the
    counts are MURA's, each stage stays inside the 8 GB budget and the warm rerun of stage 01 does no work."""
    bench = _bench_scale()
    rows = {}
    for stage in bench.STAGES:
        if stage == "generate":
            bench.set_up_synth(0.5, tmp_path)  # the tiny 256 px run stage 05 draws from (the driver's step)
        rows[stage] = bench.run_one(stage, 0.5, tmp_path, (bench.BODY_PART,))
    assert rows["prepare_cold"]["images"] == round(8379 / 2) + round(563 / 2)
    assert rows["prepare_warm"]["written_mb"] < 1 and rows["prepare_warm"]["wall_s"] < 30
    assert rows["fakes_write"]["images"] == 5000
    assert rows["memorisation"]["flagged"] == 5000  # the stand-in fakes are noisy copies of reals: all caught
    # stage 05's own path: 5,000 fakes generated and saved, the worst tenth by D dropped, in both stages
    assert rows["generate"]["images"] == rows["d_scoring"]["images"] == 5000
    assert rows["generate"]["dropped"] == rows["d_scoring"]["dropped"] == 500
    for stage, row in rows.items():
        assert row["peak_rss_mb"] < 8 * 1024, f"{stage} peaked at {row['peak_rss_mb']} MB"


def _bench_scale():
    from bench_scripts import load_bench_script

    return load_bench_script("bench_scale")


def test_rewriting_scale_results_keeps_the_hand_written_sections(tmp_path, monkeypatch):
    bench = _bench_scale()
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "scale.md")
    monkeypatch.setattr(bench, "_plot", lambda by_stage: None)
    row = {"stage": "generate", "scale": 0.5, "wall_s": 2.0, "cpu_s": 1.0, "peak_rss_mb": 9, "written_mb": 1.0,
           "images": 10}
    findings = "## Findings\n\n* written by hand, kept"
    bench.RESULTS.write_text(f"# old\n\n| stage |\n\n{findings}\n\nRaw: []\n")
    bench.write_results([row, {**row, "scale": 1.0, "cpu_s": 2.0, "images": 20}], None, "now", "1", "2")
    text = bench.RESULTS.read_text()
    assert text.count(findings) == 1 and text.index("| generate | 0.5 |") < text.index(findings)
    assert "| generate | 1.00 |" in text  # the slope of the two rows: twice the images, twice the CPU
    assert text.rstrip().endswith(json.dumps([row, {**row, "scale": 1.0, "cpu_s": 2.0, "images": 20}]))
    bench.write_results([row], None, "later", "1", "2")  # again: still once
    assert bench.RESULTS.read_text().count(findings) == 1


def test_reading_fakes_holds_each_image_once(tmp_path):
    import tracemalloc

    import numpy as np
    from PIL import Image

    from mura_aug.metrics.measures import read_image_files

    paths = []
    for index in range(40):
        Image.fromarray(np.full((64, 64), index, np.uint8)).save(tmp_path / f"{index}.png")
        paths.append(tmp_path / f"{index}.png")
    read_image_files(paths[:1])  # imports first
    tracemalloc.start()
    images = read_image_files(paths)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert images.shape == (40, 3, 64, 64) and images[7].max() == 7
    assert peak < 1.5 * images.nbytes  # not a list of arrays plus np.stack (2x)


def test_append_replaces_the_rows_a_call_measures_again_all_parts_included():
    import argparse

    bench = _bench_scale()
    args = argparse.Namespace(stages=["generate"], scales=[0.5], all_parts=[0.125])
    assert bench._measured_again({"stage": "generate", "scale": 0.5}, args)
    assert not bench._measured_again({"stage": "generate", "scale": 1.0}, args)  # another scale stays
    assert bench._measured_again({"stage": "prepare_cold", "scale": 0.125, "all_parts": True}, args)
    assert not bench._measured_again({"stage": "prepare_cold", "scale": 0.5, "all_parts": True}, args)
    assert not bench._measured_again({"stage": "prepare_cold", "scale": 0.125}, args)  # XR_SHOULDER alone: not asked


def test_drawing_a_demo_tree_holds_one_image_at_a_time_not_the_tree(tmp_path):
    import tracemalloc

    from mura_aug.prepare.demo_data import make_demo_mura

    make_demo_mura(tmp_path / "warm", patients=2, workers=1)  # imports and first-call set-up outside the count
    peaks, sizes = [], []
    for patients in (8, 32):
        tracemalloc.start()
        try:
            tree = make_demo_mura(tmp_path / f"demo_{patients}", patients=patients, workers=1)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        sizes.append(sum(path.stat().st_size for path in tree.rglob("*.png")))
    # Holding every PNG until the end (as a list of the drawn images once did) makes the peak grow with the
    # tree's bytes; streaming them leaves only the drawing of one image, the same at any tree size.
    assert sizes[1] > 3 * sizes[0]
    assert peaks[1] - peaks[0] < (sizes[1] - sizes[0]) / 2, f"peaks {peaks} B for trees of {sizes} B"
