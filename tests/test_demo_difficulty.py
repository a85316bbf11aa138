"""The demo data's difficulty: how faint the abnormal sign is (subtlety) and how rare positives are."""
from __future__ import annotations

import numpy as np
import pytest

from mura_aug import cli
from mura_aug.errors import UserError
from mura_aug.prepare import demo_data
from mura_aug.prepare.demo_data import EASY_SUBTLETY, draw_radiograph, make_demo_mura, plan_tree
from mura_aug.prepare.settings import DemoDataSettings, PrepareSettings

SEEDS = range(12)


def metal_pixels(image) -> int:
    """Pixels as bright as the saturated hardware (the side marker is 235, bone at most about 215)."""
    return int((np.asarray(image) >= 244).sum())


def test_subtlety_is_the_share_of_positive_images_with_a_faint_sign_and_leaves_negatives_alone():
    easy = [metal_pixels(draw_radiograph(seed, True, EASY_SUBTLETY)) for seed in SEEDS]
    half = [metal_pixels(draw_radiograph(seed, True, 0.5)) for seed in SEEDS]
    hardest = [metal_pixels(draw_radiograph(seed, True, 1.0)) for seed in SEEDS]
    assert min(easy) > 200  # every easy positive shows a saturated plate
    assert max(hardest) == 0  # a faint sign is never as bright as metal
    assert all(count in (0, full) for count, full in zip(half, easy))  # a sign is either full or faint
    assert 0 < half.count(0) < len(SEEDS)
    for subtlety in (demo_data.DEFAULT_SUBTLETY, 0.5):  # the share of faint signs is the subtlety
        faint = np.mean([demo_data.sign_strength(seed, subtlety) < 1 for seed in range(4000)])
        assert faint == pytest.approx(subtlety, abs=0.03)
    for seed in SEEDS[:4]:  # a negative image does not depend on the setting at all
        assert np.array_equal(np.asarray(draw_radiograph(seed, False, 0.0)),
                              np.asarray(draw_radiograph(seed, False, 1.0)))


def test_the_anatomy_stays_the_same_at_every_subtlety():
    easy, subtle = (np.asarray(draw_radiograph(5, True, s), dtype=np.int16) for s in (EASY_SUBTLETY, 0.7))
    assert easy.shape == subtle.shape
    same = np.abs(easy - subtle) <= 2  # blur spreads the sign's edge by a few grey levels
    assert same.mean() > 0.8  # only the hardware and the fracture differ


def test_positive_share_sets_the_share_of_abnormal_studies():
    def share(value: float) -> float:
        studies = {(im.patient_id, im.study_number): im.positive for im in plan_tree(400, 0, ("XR_SHOULDER",), value)}
        return float(np.mean(list(studies.values())))

    assert share(0.2) == pytest.approx(0.2, abs=0.05)
    assert share(0.5) == pytest.approx(0.5, abs=0.05)


def test_a_tree_of_another_difficulty_is_drawn_again(tmp_path):
    first = make_demo_mura(tmp_path, patients=3, seed=1, subtlety=0.0)
    image = next(first.rglob("*_positive/image1.png"))
    easy_bytes = image.read_bytes()
    assert make_demo_mura(tmp_path, patients=3, seed=1, subtlety=0.0) == first  # same settings: reused
    make_demo_mura(tmp_path, patients=3, seed=1, subtlety=1.0)
    assert image.read_bytes() != easy_bytes


@pytest.mark.parametrize("kwargs, match", [
    ({"demo_subtlety": 1.5}, "DEMO_SUBTLETY = 1.5 is not a number from 0 to 1"),
    ({"demo_subtlety": "faint"}, "DEMO_SUBTLETY = 'faint'"),
    ({"demo_positive_share": 0}, "DEMO_POSITIVE_SHARE = 0 is not a share"),
    ({"demo_positive_share": 1.0}, "DEMO_POSITIVE_SHARE = 1.0 is not a share"),
])
def test_impossible_difficulties_name_the_notebook_parameter(kwargs, match):
    with pytest.raises(UserError, match=match):
        PrepareSettings(**kwargs).check()


def test_make_demo_data_takes_the_difficulty_on_the_command_line(tmp_path, capsys):
    with pytest.raises(UserError, match="--positive-share = 2.0"):
        DemoDataSettings(out=str(tmp_path), positive_share=2.0).check()
    status = cli.main(["make-demo-data", "--out", str(tmp_path / "out"), "--patients", "3", "--subtlety", "0.3",
                       "--positive-share", "0.4"])
    assert status == 0
    marker = (tmp_path / "out" / "MURA-v1.1" / demo_data.MARKER_FILE).read_text()
    assert '"subtlety": 0.3' in marker and '"positive_share": 0.4' in marker
