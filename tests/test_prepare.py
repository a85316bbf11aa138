"""Stage 01: contract outputs on the demo tree, incremental reruns, odd and broken input, the CLI."""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mura_aug import cli
from mura_aug.prepare import stage as prepare_module
from mura_aug.errors import UserError
from mura_aug.prepare.settings import PrepareSettings
from mura_aug.prepare.stage import load_table, run_stage
from mura_aug.workspace import Workspace

BODY = "XR_SHOULDER"
RES = 32  # TEST_RESOLUTION of conftest.py
TABLE_COLUMNS = ["path", "filename", "class", "label", "patient", "study", "study_id", "body_part", "split",
                 "view", "source"]


def prepare(mura, workspace, **settings):
    """Stage 01 through its one entry point, as notebook 01 and the CLI call it."""
    return run_stage(workspace, PrepareSettings(mura_path=mura, **settings), progress=False)


def demo_members(demo_mura: Path, split: str):
    return (demo_mura / f"{split}_image_paths.csv").read_text().split()


def file_stamps(root: Path, under: str):
    """path -> mtime_ns of every file below root/under."""
    return {p: p.stat().st_mtime_ns for p in sorted((root / under).rglob("*")) if p.is_file()}


class TaskCounter:
    """Counts (and optionally interrupts) the per-image work of prepare."""

    def __init__(self, monkeypatch, stop_after=None):
        self.tasks = []
        self.stop_after = stop_after
        real = prepare_module.process_task

        def counting(task):
            if self.stop_after is not None and len(self.tasks) >= self.stop_after:
                raise KeyboardInterrupt
            self.tasks.append(task)
            return real(task)

        monkeypatch.setattr(prepare_module, "process_task", counting)

    @property
    def copies(self):
        return [t for t in self.tasks if t.copy]


# --- the contract outputs -------------------------------------------------------------------------

def test_tables_follow_the_contract(prepared_workspace, demo_mura):
    ws = prepared_workspace
    tables = {name: load_table(ws, BODY, name) for name in ("train", "valid", "train_positive", "train_negative")}
    for split in ("train", "valid"):
        frame = tables[split]
        assert list(frame.columns) == TABLE_COLUMNS
        assert sorted(frame["filename"]) == sorted(demo_members(demo_mura, split))  # nothing lost, nothing added
        assert set(frame["split"]) == {split} and set(frame["source"]) == {"real"}
        assert (frame["label"] == (frame["class"] == "positive").astype(int)).all()
        for row in frame.itertuples():
            assert row.path == f"data/images/{row._3}/{BODY}_{split}_{row.patient}_{row.study}_{row.view}.png"
            assert row.study_id == "/".join(row.filename.split("/")[1:5])
            assert (ws.root / row.path).is_file()
    train = tables["train"]
    for cls in ("positive", "negative"):
        subset = tables[f"train_{cls}"]
        assert len(subset) > 0 and set(subset["class"]) == {cls}
        assert list(subset["path"]) == list(train.loc[train["class"] == cls, "path"])
    assert not set(train["patient"]) & set(tables["valid"]["patient"])  # MURA's patient split kept


def test_copies_of_plain_pngs_are_byte_copies(prepared_workspace, demo_mura):
    valid = load_table(prepared_workspace, BODY, "valid")
    for row in valid.head(5).itertuples():
        assert (prepared_workspace.root / row.path).read_bytes() == (demo_mura.parent / row.filename).read_bytes()


def test_dataset_zips_hold_the_train_images_of_their_class(prepared_workspace):
    for cls in ("positive", "negative"):
        path = Workspace(prepared_workspace).dataset_zip(BODY, cls, RES)
        assert path == prepared_workspace.datasets / f"{BODY}_{cls}_{RES}.zip"
        train = load_table(prepared_workspace, BODY, f"train_{cls}")
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pngs = sorted(n for n in names if n.endswith(".png"))
            assert len(pngs) == len(train)
            assert pngs[0] == "00000/img00000000.png" and pngs[-1] == f"00000/img{len(train) - 1:08d}.png"
            assert json.loads(archive.read("dataset.json")) == {"labels": None}
            for name in pngs[:: max(1, len(pngs) // 6)]:
                with Image.open(io.BytesIO(archive.read(name))) as image:
                    assert image.mode == "RGB" and image.size == (RES, RES)
        info = json.loads(Workspace(prepared_workspace).dataset_info(BODY, cls, RES).read_text())
        assert info["members"] == sorted(train["path"])  # member i came from this copy


def test_summary_and_skipped_table(prepared_workspace):
    summary = json.loads(Workspace(prepared_workspace).prepare_summary(BODY).read_text())
    train = load_table(prepared_workspace, BODY, "train")
    assert summary["images"]["train"]["total"] == len(train)
    assert summary["images"]["train"]["positive"] == int((train["class"] == "positive").sum())
    assert summary["parameters"]["resolution"] == RES and summary["parameters"]["fit"] == "pad"
    assert summary["skipped"] == 0 and {"index", "copy_and_datasets", "total"} <= set(summary["seconds"])
    skipped = pd.read_csv(Workspace(prepared_workspace).table(BODY, "skipped_files"))
    assert list(skipped.columns) == ["path", "reason"] and skipped.empty


# --- incremental reruns ---------------------------------------------------------------------------

def test_rerun_with_same_parameters_does_no_work(prepared_workspace, demo_mura, copy_workspace, monkeypatch):
    ws = copy_workspace(prepared_workspace)
    before = {**file_stamps(ws.root, "data/images"), **file_stamps(ws.root, "data/datasets")}
    tables_before = {name: Workspace(ws).table(BODY, name).stat().st_mtime_ns for name in ("train", "valid")}
    counter = TaskCounter(monkeypatch)
    summary = prepare(demo_mura, ws, resolution=RES, workers=1)
    assert counter.tasks == []
    assert {**file_stamps(ws.root, "data/images"), **file_stamps(ws.root, "data/datasets")} == before
    assert {name: Workspace(ws).table(BODY, name).stat().st_mtime_ns for name in ("train", "valid")} == tables_before
    assert summary["copies"]["copied"] == 0 and not any(d["rebuilt"] for d in summary["datasets"].values())


def test_changed_resolution_rebuilds_only_the_datasets(prepared_workspace, demo_mura, copy_workspace, monkeypatch):
    ws = copy_workspace(prepared_workspace)
    images_before = file_stamps(ws.root, "data/images")
    old_zip = Workspace(ws).dataset_zip(BODY, "positive", RES)
    old_zip_stamp = old_zip.stat().st_mtime_ns
    counter = TaskCounter(monkeypatch)
    summary = prepare(demo_mura, ws, resolution=16, fit="crop", crop_borders=True, contrast=True, workers=1)
    assert counter.tasks and counter.copies == []  # every task renders a dataset member from an existing copy
    assert file_stamps(ws.root, "data/images") == images_before
    assert old_zip.stat().st_mtime_ns == old_zip_stamp  # the 32 px dataset stays usable
    with zipfile.ZipFile(Workspace(ws).dataset_zip(BODY, "negative", 16)) as archive:
        member = next(n for n in archive.namelist() if n.endswith(".png"))
        assert Image.open(io.BytesIO(archive.read(member))).size == (16, 16)
    assert summary["datasets"]["negative"]["why"] == "not built yet"
    # one option changed at the same resolution: rebuilt again, because the parameters differ
    again = prepare(demo_mura, ws, resolution=16, fit="crop", crop_borders=True, contrast=False, workers=1)
    assert again["datasets"]["positive"]["why"] == "parameters changed"


def test_interrupted_run_keeps_finished_copies_and_no_partial_zip(demo_mura, tmp_path, monkeypatch):
    ws = Workspace(tmp_path / "ws")
    counter = TaskCounter(monkeypatch, stop_after=20)
    with pytest.raises(KeyboardInterrupt):
        prepare(demo_mura, ws, resolution=16, workers=1)
    assert not list(ws.datasets.glob("*.zip")) and not list(ws.datasets.glob(".*tmp"))
    counter.tasks.clear()
    counter.stop_after = None
    prepare(demo_mura, ws, resolution=16, workers=1)
    total = sum(len(demo_members(demo_mura, split)) for split in ("train", "valid"))
    assert len(counter.copies) == total - 20  # the first 20 copies were kept


def test_two_workers_give_the_same_result_as_one(demo_mura, prepared_workspace, tmp_path):
    ws = Workspace(tmp_path / "ws")
    prepare(demo_mura, ws, resolution=RES, workers=2)
    for cls in ("positive", "negative"):
        one = Workspace(prepared_workspace).dataset_zip(BODY, cls, RES).read_bytes()
        assert Workspace(ws).dataset_zip(BODY, cls, RES).read_bytes() == one  # same members, same order, same bytes
    assert Workspace(ws).table(BODY, "train").read_text() == Workspace(prepared_workspace).table(BODY, "train").read_text()


# --- odd and broken input -------------------------------------------------------------------------

def png(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def plant_bad_files(mura: Path) -> dict:
    """Spoil / replace listed images of a copy of the demo tree; returns MURA name -> expected outcome."""
    listed = demo_members(mura, "train")
    victims = iter(listed)
    expected = {}

    def spoil(data: bytes, outcome: str) -> str:
        name = next(victims)
        (mura.parent / name).write_bytes(data)
        expected[name] = outcome
        return name

    original = (mura.parent / listed[0]).read_bytes()
    spoil(original[: len(original) // 3], "truncated")
    spoil(b"", "empty")
    spoil(b"<html>not found</html>", "not an image")
    spoil(png(Image.new("L", (20, 20), 90)), "too small")
    missing = next(victims)
    (mura.parent / missing).unlink()
    expected[missing] = "missing"
    # usable but odd: converted to grey PNG, kept in the tables
    rgba = Image.new("RGBA", (64, 64), (150, 150, 150, 255))
    spoil(png(rgba), "converted")
    spoil(png(Image.fromarray(np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16))), "converted")
    spoil(png(Image.new("L", (64, 48), 100).convert("P")), "converted")
    exif = Image.Exif()
    exif[274] = 6
    rotated = spoil(png(Image.new("L", (80, 40), 100), exif=exif), "converted")
    jpeg = io.BytesIO()
    Image.new("L", (64, 64), 120).save(jpeg, format="JPEG")
    spoil(jpeg.getvalue(), "converted")
    # junk next to the images
    study = (mura.parent / listed[-1]).parent
    (study / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (study / "image99.png").write_bytes(png(Image.new("L", (64, 64))))  # present, not in the CSV
    return {"expected": expected, "rotated": rotated, "junk_folder": study}


def test_bad_files_are_skipped_with_reasons_and_odd_ones_converted(demo_mura, tmp_path):
    mura = tmp_path / "MURA-v1.1"
    shutil.copytree(demo_mura, mura)
    planted = plant_bad_files(mura)
    ws = Workspace(tmp_path / "ws")
    summary = prepare(mura, ws, resolution=16, workers=1)

    skipped = load_table(ws, BODY, "skipped_files")
    reasons = dict(zip(skipped["path"], skipped["reason"]))
    train = load_table(ws, BODY, "train")
    for name, outcome in planted["expected"].items():
        if outcome == "converted":
            row = train[train["filename"] == name]
            assert len(row) == 1, name
            with Image.open(ws.root / row["path"].iloc[0]) as copy:
                assert copy.mode == "L" and copy.format == "PNG"
        else:
            assert name in reasons and outcome in reasons[name], (name, reasons.get(name))
            assert name not in set(train["filename"])
    with Image.open(ws.root / train.loc[train["filename"] == planted["rotated"], "path"].iloc[0]) as copy:
        assert copy.size == (40, 80)  # EXIF rotation applied in the copy
    junk = planted["junk_folder"].relative_to(mura.parent).as_posix()
    assert any(path.startswith(junk) and ".DS_Store" in path for path in reasons)
    assert f"{junk}/image99.png" in reasons
    assert summary["copies"]["converted"] == 5
    assert summary["skipped"] == len(skipped)
    with zipfile.ZipFile(Workspace(ws).dataset_zip(BODY, "positive", 16)) as a, \
            zipfile.ZipFile(Workspace(ws).dataset_zip(BODY, "negative", 16)) as b:
        members = sum(n.endswith(".png") for n in a.namelist() + b.namelist())
    assert members == len(train)

    # a rerun does not decode the broken files again, and reports the same
    again = prepare(mura, ws, resolution=16, workers=1)
    assert again["copies"]["copied"] == 0 and again["skipped"] == summary["skipped"]


def test_source_is_only_read(demo_mura, tmp_path):
    mura = tmp_path / "ro" / "MURA-v1.1"
    shutil.copytree(demo_mura, mura)
    before = {p: (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
              for p in mura.rglob("*") if p.is_file()}
    for path in [*mura.rglob("*"), mura]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        prepare(mura, Workspace(tmp_path / "ws"), resolution=16, workers=1)
        after = {p: (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
                 for p in mura.rglob("*") if p.is_file()}
        assert after == before
    finally:
        for path in [mura, *mura.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_zip_source_gives_the_same_tables_as_the_folder(tmp_path):
    from mura_aug.prepare.demo_data import make_demo_mura

    folder = make_demo_mura(tmp_path / "f", patients=6, seed=3)
    zipped = make_demo_mura(tmp_path / "z", patients=6, seed=3, as_zip=True)
    a, b = Workspace(tmp_path / "wa"), Workspace(tmp_path / "wb")
    prepare(folder, a, resolution=16, workers=1)
    summary = prepare(zipped, b, resolution=16, workers=1)
    assert summary["source_kind"] == "zip"
    for name in ("train", "valid"):
        assert Workspace(a).table(BODY, name).read_text() == Workspace(b).table(BODY, name).read_text()
    assert Workspace(a).dataset_zip(BODY, "positive", 16).read_bytes() == Workspace(b).dataset_zip(BODY, "positive", 16).read_bytes()


def test_a_class_without_usable_train_images_is_a_user_error(demo_mura, tmp_path):
    mura = tmp_path / "MURA-v1.1"
    shutil.copytree(demo_mura, mura)
    for name in demo_members(mura, "train"):
        if "_positive/" in name:
            (mura.parent / name).write_bytes(b"")
    ws = Workspace(tmp_path / "ws")
    for attempt in range(2):  # the second time from the remembered state, without decoding again
        with pytest.raises(UserError, match="no usable XR_SHOULDER train images of class positive"):
            prepare(mura, ws, resolution=16, workers=1)
        skipped = load_table(ws, BODY, "skipped_files")  # written so the user can see why
        assert (skipped["reason"] == "empty file (0 bytes)").sum() == sum("_positive/" in n for n in
                                                                          demo_members(mura, "train"))
        assert not list(ws.datasets.glob("*.zip"))  # no half-empty dataset left behind


def test_wrong_mura_path_and_bad_parameters_are_user_errors(tmp_path, demo_mura):
    with pytest.raises(UserError, match="does not exist"):
        prepare(tmp_path / "nowhere", tmp_path / "ws", resolution=16, workers=1)
    for kwargs, match in (({"resolution": 100}, "power of two"), ({"resolution": 2048}, "power of two"),
                          ({"fit": "stretch"}, "fit"), ({"workers": 0}, "workers"),
                          ({"body_part": "XR_KNEE"}, "body part")):
        with pytest.raises(UserError, match=match):
            prepare(demo_mura, tmp_path / "ws", **{"resolution": 16, "workers": 1, **kwargs})


# --- settings and the CLI ------------------------------------------------------------------------

def test_an_empty_mura_path_generates_the_demo_tree_into_the_workspace(tmp_path):
    ws = Workspace(tmp_path / "ws")
    summary = prepare("", ws, resolution=16, workers=1, demo_patients=6)
    assert summary["mura_path"] == str(ws.demo_source / "MURA-v1.1")
    assert summary["images"]["train"]["total"] > 0
    assert PrepareSettings(mura_path="").check() == PrepareSettings(mura_path=None).check()


def test_command_line_and_notebook_parameters_give_the_same_settings(demo_mura):
    parser = cli.build_parser("prepare")
    typed = ["--mura-path", str(demo_mura), "--body-part", "shoulder", "--resolution", "64", "--fit", "crop",
             "--crop-borders", "--workers", "2"]
    from_cli = PrepareSettings.from_args(parser.parse_args(typed))
    from_notebook = PrepareSettings.from_parameters({
        "MURA_PATH": str(demo_mura), "BODY_PART": "SHOULDER", "RESOLUTION": 64, "FIT": "crop", "CROP_BORDERS": True,
        "WORKERS": 2, "WORKSPACE": "ignored: not a setting"})
    assert from_cli == from_notebook
    assert from_cli.body_part == BODY and from_cli.contrast is False and from_cli.worker_count() == 2
    # the flag's old spelling still works
    assert PrepareSettings.from_args(parser.parse_args(["--mura", str(demo_mura), *typed[2:]])) == from_cli


def test_cli_refuses_a_bad_resolution(demo_mura, tmp_path, capsys):
    status = cli.main(["prepare", "--mura", str(demo_mura), "--workspace", str(tmp_path / "ws"),
                       "--resolution", "100", "--no-progress"])
    assert status == 2
    error = capsys.readouterr().err
    assert "RESOLUTION = 100 px" in error and "power of two" in error
    assert not (tmp_path / "ws").exists()


def test_cli_needs_a_mura_path_and_makes_no_demo_data(tmp_path, capsys):
    status = cli.main(["prepare", "--workspace", str(tmp_path / "ws"), "--no-progress"])
    assert status == 2
    assert "No MURA path was given" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_cli_prints_a_summary(prepared_workspace, demo_mura, copy_workspace, capsys):
    ws = copy_workspace(prepared_workspace)
    status = cli.main(["prepare", "--mura-path", str(demo_mura), "--workspace", str(ws.root), "--resolution",
                       str(RES), "--workers", "1", "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    assert "train:" in out and "kept (up to date)" in out and "skipped: none" in out


def test_make_demo_data_cli_writes_a_zip(tmp_path, capsys):
    status = cli.main(["make-demo-data", "--out", str(tmp_path), "--patients", "3", "--seed", "2", "--zip"])
    assert status == 0
    assert f"demo MURA written: {tmp_path / 'MURA-v1.1.zip'}" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "MURA-v1.1.zip") as archive:
        assert "MURA-v1.1/train_image_paths.csv" in archive.namelist()
    assert cli.main(["make-demo-data", "--patients", "3"]) == 2
    assert "--out DIR" in capsys.readouterr().err
