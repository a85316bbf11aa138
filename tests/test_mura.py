"""mura.py: MURA from a folder, its parent or its zip gives the same index; junk, gaps and label mismatches
are reported, never indexed; the source is only read."""
from __future__ import annotations

import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

from mura_aug.prepare.demo_data import make_demo_mura
from mura_aug.errors import UserError
from mura_aug.prepare.mura import (BODY_PARTS, DEFAULT_BODY_PART, SPLITS, MuraSource, MuraWarning, describe_layout,
                           index_mura, open_mura)

PATIENTS = 8  # per body part: about 40 images, generated in about a second


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory) -> Path:
    """Read-only MURA-v1.1 folder (XR_SHOULDER); tests that change files copy it first."""
    return make_demo_mura(tmp_path_factory.mktemp("folder"), patients=PATIENTS, seed=3)


@pytest.fixture(scope="module")
def demo_zip(tmp_path_factory) -> Path:
    return make_demo_mura(tmp_path_factory.mktemp("zip"), patients=PATIENTS, seed=3, as_zip=True)


@pytest.fixture(scope="module")
def reference(demo_folder):
    return index_mura(demo_folder)


@pytest.fixture
def tree_copy(demo_folder, tmp_path) -> Path:
    copy = tmp_path / "MURA-v1.1"
    shutil.copytree(demo_folder, copy)
    return copy


def zip_folder(folder: Path, zip_path: Path, top: str = "MURA-v1.1", extra: dict = None) -> Path:
    """Zip a MURA folder with members under `top` ('' = no top folder), plus `extra` {member: bytes}."""
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                relative = path.relative_to(folder).as_posix()
                archive.write(path, f"{top}/{relative}" if top else relative)
        for member, data in (extra or {}).items():
            archive.writestr(member, data)
    return zip_path


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def first_image(index) -> str:
    return index.images["filename"].iloc[0]


# --- sources --------------------------------------------------------------------------------------

def test_folder_parent_and_zip_give_equal_tables(demo_folder, demo_zip, reference):
    images = reference.images
    assert list(images.columns) == ["filename", "class", "label", "patient", "study", "study_id", "body_part",
                                    "split", "view"]
    assert reference.used_csv and reference.source_kind == "folder"
    assert set(images["split"]) == set(SPLITS) and set(images["class"]) == {"positive", "negative"}
    assert (images["label"] == (images["class"] == "positive").astype(int)).all()
    row = images.iloc[0]
    assert row["filename"] == (f"MURA-v1.1/{row['study_id']}/{row['view']}.png")
    assert row["study_id"].startswith(f"train/XR_SHOULDER/{row['patient']}/{row['study']}_")
    # Sorted by split, patient, study, view.
    keys = list(zip(images["split"], images["patient"], images["study"], images["view"]))
    assert keys == sorted(keys)

    from_parent = index_mura(demo_folder.parent)
    from_zip = index_mura(demo_zip)
    assert from_zip.source_kind == "zip" and from_zip.used_csv
    assert from_parent.images.equals(images)
    assert from_zip.images.equals(images)
    assert from_zip.skipped.empty and from_zip.disagreements.empty


@pytest.mark.parametrize("kind", ["folder", "zip"])
def test_source_reads_by_mura_name(kind, demo_folder, demo_zip, reference):
    location = demo_folder if kind == "folder" else demo_zip
    name = first_image(reference)
    with open_mura(location) as source:
        assert isinstance(source, MuraSource) and source.kind == kind and source.location == location
        names = source.names("MURA-v1.1/train/")
        assert name in names and all(n.startswith("MURA-v1.1/train/") for n in names)
        assert source.names("train/") == names  # prefix without the top folder is normalised
        assert not any(n.endswith(".csv") for n in source.names())
        assert source.exists(name) and not source.exists(name + ".missing")
        data = source.read_bytes(name)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and source.size(name) == len(data)
        with pytest.raises(FileNotFoundError):
            source.read_bytes(name.replace("image1", "image99"))
        assert not source.exists("MURA-v1.1/../../etc/passwd")
        lines = source.read_csv_lines("train_image_paths.csv")
        assert name in lines
        assert source.read_csv_lines("no_such.csv") is None
        reopened = pickle.loads(pickle.dumps(source))  # what a worker process gets
        with reopened:
            assert reopened.kind == kind and reopened.read_bytes(name) == data


def test_zip_without_or_with_another_top_folder(tree_copy, tmp_path, reference):
    for top in ("", "mura_download/MURA-v1.0"):
        archive = zip_folder(tree_copy, tmp_path / f"top{len(top)}.zip", top=top)
        index = index_mura(archive)
        assert index.images.equals(reference.images), top


# --- wrong paths and arguments ---------------------------------------------------------------------

def test_wrong_folder_shows_layout_and_what_was_found(tmp_path):
    (tmp_path / "holiday_photos").mkdir()
    (tmp_path / "notes.txt").write_text("not MURA")
    with pytest.raises(UserError) as caught:
        open_mura(tmp_path)
    message = str(caught.value)
    assert str(tmp_path) in message
    assert describe_layout() in message and "study1_positive" in message
    assert "holiday_photos/" in message and "notes.txt" in message


def test_missing_path_and_non_zip_file(tmp_path):
    with pytest.raises(UserError, match="does not exist") as caught:
        open_mura(tmp_path / "nowhere" / "MURA-v1.1")
    assert "train_image_paths.csv" in str(caught.value)
    not_zip = tmp_path / "MURA-v1.1.zip"
    not_zip.write_bytes(b"half a download")
    with pytest.raises(UserError, match="not a zip"):
        open_mura(not_zip)
    with pytest.raises(UserError, match="No MURA path"):
        open_mura("")


def test_folder_inside_mura_suggests_the_root(demo_folder):
    with pytest.raises(UserError) as caught:
        open_mura(demo_folder / "train" / "XR_SHOULDER")
    assert f"pass {demo_folder} instead" in str(caught.value)


def test_unknown_body_part_lists_the_seven(demo_folder):
    with pytest.raises(UserError) as caught:
        index_mura(demo_folder, body_part="XR_KNEE")
    assert all(part in str(caught.value) for part in BODY_PARTS)
    assert len(BODY_PARTS) == 7 and list(BODY_PARTS) == sorted(BODY_PARTS) and DEFAULT_BODY_PART in BODY_PARTS


def test_body_part_without_images_names_those_found(demo_zip):
    with pytest.raises(UserError) as caught:
        index_mura(demo_zip, body_part="XR_WRIST")
    assert "XR_WRIST" in str(caught.value) and "found there: XR_SHOULDER" in str(caught.value)


# --- CSVs, labels, gaps, junk ---------------------------------------------------------------------

def test_missing_csvs_walk_gives_the_same_images(tree_copy, reference):
    for split in SPLITS:
        (tree_copy / f"{split}_image_paths.csv").unlink()
        (tree_copy / f"{split}_labeled_studies.csv").unlink()
    with pytest.warns(MuraWarning, match="train_image_paths.csv"):
        walked = index_mura(tree_copy)
    assert not walked.used_csv
    assert walked.images.equals(reference.images)
    assert walked.disagreements.empty


def test_flipped_csv_label_is_reported_and_folder_label_kept(tree_copy, reference):
    csv = tree_copy / "valid_labeled_studies.csv"
    lines = csv.read_text().splitlines()
    study_path, label = lines[0].rsplit(",", 1)
    lines[0] = f"{study_path},{1 - int(label)}"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.warns(MuraWarning, match="disagrees"):
        index = index_mura(tree_copy)
    study_id = study_path.rstrip("/").removeprefix("MURA-v1.1/")
    assert index.disagreements.to_dict("records") == [
        {"study_id": study_id, "csv_label": 1 - int(label), "folder_label": int(label)}]
    assert index.images.equals(reference.images)  # the folder name decides the label


def test_listed_but_missing_file_is_skipped(tree_copy, reference):
    name = first_image(reference)
    (tree_copy / name.removeprefix("MURA-v1.1/")).unlink()
    index = index_mura(tree_copy)
    assert name not in set(index.images["filename"])
    assert len(index.images) == len(reference.images) - 1
    assert index.skipped.to_dict("records") == [{"filename": name, "reason": "listed in CSV but missing"}]


def test_study_folder_without_label_is_skipped(tree_copy, reference):
    study = tree_copy / "train" / "XR_SHOULDER" / "patient00001" / "study9"
    study.mkdir()
    shutil.copy(tree_copy / first_image(reference).removeprefix("MURA-v1.1/"), study / "image1.png")
    (tree_copy / "train_image_paths.csv").unlink()
    with pytest.warns(MuraWarning):
        index = index_mura(tree_copy)
    assert index.images.equals(reference.images)
    reasons = dict(zip(index.skipped["filename"], index.skipped["reason"]))
    assert "study9" in reasons["MURA-v1.1/train/XR_SHOULDER/patient00001/study9/image1.png"]


def test_junk_files_are_never_indexed(tree_copy, tmp_path, reference):
    study = tree_copy / first_image(reference).removeprefix("MURA-v1.1/").rsplit("/", 1)[0]
    (study / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (study / "._image1.png").write_bytes(b"\0\5\26\7 resource fork")
    (study / "notes.txt").write_text("radiologist note")
    (study.parent / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    macosx_member = f"__MACOSX/{first_image(reference).rsplit('/', 1)[0]}/._image1.png"
    archive = zip_folder(tree_copy, tmp_path / "junk.zip", extra={macosx_member: b"\0\5\26\7"})
    for location in (tree_copy, archive):
        index = index_mura(location)
        assert index.images.equals(reference.images), location

    # Walking (no image-paths CSVs) meets the junk and reports each file with its reason.
    for split in SPLITS:
        (tree_copy / f"{split}_image_paths.csv").unlink()
    archive = zip_folder(tree_copy, tmp_path / "junk_walk.zip", extra={macosx_member: b"\0\5\26\7"})
    for location in (tree_copy, archive):
        with pytest.warns(MuraWarning):
            index = index_mura(location)
        assert index.images.equals(reference.images), location
        reasons = dict(zip(index.skipped["filename"], index.skipped["reason"]))
        junk_names = {name for name in reasons if name.rsplit("/", 1)[1] in (".DS_Store", "._image1.png")}
        assert len(junk_names) == (3 if location == tree_copy else 4)
        assert all("macOS" in reasons[name] for name in junk_names)
        assert any(name.endswith("notes.txt") and "not an image" in reason for name, reason in reasons.items())
    with open_mura(archive) as source:
        assert not any("__MACOSX" in name or "/._" in name for name in source.names())


# --- all body parts, reading only what is needed, read-only ---------------------------------------

@pytest.fixture(scope="module")
def all_parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("all_parts")
    folder = make_demo_mura(root / "folder", patients=2, seed=1, body_parts=BODY_PARTS)
    archive = make_demo_mura(root / "zip", patients=2, seed=1, body_parts=BODY_PARTS, as_zip=True)
    return folder, archive


def test_all_seven_body_parts(all_parts):
    folder, archive = all_parts
    listed = {line for split in SPLITS for line in (folder / f"{split}_image_paths.csv").read_text().split()}
    indexed = set()
    for body_part in BODY_PARTS:
        index = index_mura(folder, body_part=body_part)
        assert set(index.images["body_part"]) == {body_part}
        assert all(f"/{body_part}/" in name for name in index.images["filename"])
        assert index_mura(archive, body_part=body_part).images.equals(index.images)
        indexed |= set(index.images["filename"])
    assert indexed == listed
    assert index_mura(folder, body_part="wrist").images["body_part"].iloc[0] == "XR_WRIST"


def test_zip_index_reads_only_the_chosen_body_part(all_parts, monkeypatch):
    _, archive = all_parts
    opened = []
    real_open = zipfile.ZipFile.open

    def spy_open(self, name, *args, **kwargs):
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy_open)
    with open_mura(archive) as source:
        index = index_mura(source, body_part="XR_HAND")
        for name in index.images["filename"]:  # what prepare does next
            source.read_bytes(name)
        assert source.names("MURA-v1.1/valid/XR_HAND/") == list(
            index.images.loc[index.images["split"] == "valid", "filename"])
    images = [name for name in opened if not name.endswith(".csv")]
    assert images and all("/XR_HAND/" in name for name in images)


def test_source_is_only_read(demo_folder, demo_zip):
    before = (snapshot(demo_folder.parent), snapshot(demo_zip.parent))
    index_mura(demo_folder)
    index_mura(demo_zip)
    with open_mura(demo_zip) as source:
        source.read_bytes(source.names()[0])
    assert (snapshot(demo_folder.parent), snapshot(demo_zip.parent)) == before
