"""MURA-scale rehearsal (issue 19): `make-demo-data --like-mura` draws real MURA-v1.1's counts, per seed."""
from __future__ import annotations

import hashlib
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
