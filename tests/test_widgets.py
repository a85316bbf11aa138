"""Classroom widgets: the logic classes, that each widget's callbacks update what it shows, and that all they
show is grey."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mura_aug.errors import UserError
from mura_aug.synth import generate, widgets
from synth_helpers import add_tiny_run, grey, tiny_generator


@pytest.fixture(scope="module")
def explorer():
    return widgets.GeneratorExplorer({"positive": tiny_generator(torch_seed=1),
                                      "negative": tiny_generator(torch_seed=2)})


def decode(png: bytes) -> np.ndarray:
    """The pixels a widget shows; it shows nothing but 8-bit grey."""
    image = Image.open(io.BytesIO(png))
    assert image.mode == "L", f"a widget showed a {image.mode} image"
    return np.asarray(image)


def test_explorer_render_matches_generation_and_mixing(explorer):
    G = explorer.generators["positive"]
    (_, direct), = generate.generate_images(G, [7], 0.6, device="cpu", progress=False)
    image = explorer.render("positive", 7, psi=0.6)
    assert np.abs(image.astype(int) - direct.astype(int)).max() <= 1
    num_ws = explorer.num_ws("positive")
    no_mix = explorer.render("positive", 7, 0.6, mix_seed=9, crossover=num_ws)
    assert np.array_equal(no_mix, image)
    all_from_mix = explorer.render("positive", 7, 0.6, mix_seed=9, crossover=0)
    assert np.array_equal(all_from_mix, explorer.render("positive", 9, 0.6))
    halfway = explorer.render("positive", 7, 0.6, mix_seed=9, crossover=num_ws // 2)
    assert not np.array_equal(halfway, image) and not np.array_equal(halfway, all_from_mix)
    # interpolation: t=0 is the start seed, t=1 the target seed (to rounding)
    assert np.array_equal(explorer.render("positive", 7, 0.6, target_seed=9, t=0.0), image)
    end = explorer.render("positive", 7, 0.6, target_seed=9, t=1.0)
    assert np.abs(end.astype(int) - all_from_mix.astype(int)).max() <= 1
    assert not np.array_equal(explorer.render("negative", 7, 0.6), image)
    with pytest.raises(UserError, match="No generator for class"):
        explorer.render("both", 7)


def test_explorer_widget_callbacks_update_the_image(explorer):
    box = widgets.explorer_widget(explorer)
    first = box.image.value
    assert decode(first).shape[0] >= 256  # upscaled for display
    # what it shows is the grey (luma) of G's three channels, each pixel upscaled 8 x 8
    shown = decode(first)[::8, ::8]
    assert np.array_equal(shown, grey(explorer.render("positive", 0, 1.0)))
    box.seed.value = 5
    after_seed = box.image.value
    assert after_seed != first and "seed 5" in box.status.value
    box.crossover.value = 0
    box.mix_seed.value = 0  # every layer from seed 0: the image of seed 0
    box.seed.value = 6
    mixed = box.image.value
    box.crossover.value = explorer.num_ws("positive")
    box.seed.value = 0
    assert box.image.value == mixed
    box.t.value = 0.5
    assert box.image.value != mixed and "towards seed" in box.status.value
    box.cls.value = "negative"
    assert "negative" in box.status.value


def _write_grid(path, value):
    Image.fromarray(np.full((20, 40, 3), value, np.uint8)).save(path)


def test_snapshot_browser_shows_a_coloured_grid_grey(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 30  # a tinted grid, as G's three channels may draw it
    Image.fromarray(rgb).save(tmp_path / "fakes-000004.000kimg.png")
    box = widgets.snapshot_browser_widget(widgets.SnapshotBrowser(tmp_path))
    assert np.array_equal(decode(box.image.value), grey(rgb))


def test_explorer_from_snapshots_loads_each_file_once(prepared_workspace, copy_workspace):
    from mura_aug.synth import snapshots

    ws = copy_workspace(prepared_workspace)
    add_tiny_run(ws, "both", kimg=8.0)
    explorer = widgets.GeneratorExplorer.from_snapshots(snapshots.find_snapshots(ws, "XR_SHOULDER"))
    assert explorer.classes == ["positive", "negative"]
    assert explorer.generators["positive"] is explorer.generators["negative"]
    assert not np.array_equal(explorer.render("positive", 1), explorer.render("negative", 1))


def test_snapshot_browser_orders_by_kimg_and_slider_switches(tmp_path):
    _write_grid(tmp_path / "fakes-000010.000kimg.png", 200)
    _write_grid(tmp_path / "fakes-000002.500kimg.png", 100)
    _write_grid(tmp_path / "fakes_init.png", 0)
    browser = widgets.SnapshotBrowser(tmp_path)
    assert browser.kimgs == [0.0, 2.5, 10.0]
    box = widgets.snapshot_browser_widget(browser)
    assert decode(box.image.value).mean() == 200  # starts at the newest
    box.slider.value = 1
    assert decode(box.image.value).mean() == 100 and "2.5 kimg" in box.caption.value
    with pytest.raises(UserError, match="No fakes"):
        widgets.SnapshotBrowser(tmp_path / "empty")


def _write_images(folder, n, value, size, mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(np.full((size + 10, size), value, np.uint8)).convert(mode).save(path)
        paths.append(path)
    return paths


def test_quiz_keeps_score(tmp_path):
    real = _write_images(tmp_path / "real", 5, 50, 40)
    fake = [p for p in _write_images(tmp_path / "fake", 5, 220, 32)]
    quiz = widgets.RealFakeQuiz(real, fake, rounds=6, seed=1)
    assert len(quiz.items) == 6 and sum(is_fake for _, is_fake in quiz.items) == 3
    assert quiz.current_image().size == Image.open(fake[0]).size  # real and fake shown at one size
    truths = [is_fake for _, is_fake in quiz.items]
    assert quiz.answer(truths[0]) is True
    assert quiz.answer(not truths[1]) is False
    assert (quiz.correct, quiz.answered) == (1, 2) and quiz.score_text.startswith("score 1 / 2")
    with pytest.raises(UserError, match="needs real and fake"):
        widgets.RealFakeQuiz(real, [])


def test_quiz_widget_buttons_update_score(tmp_path):
    real = _write_images(tmp_path / "real", 3, 50, 32, mode="RGB")  # shown grey all the same (decode checks)
    fake = _write_images(tmp_path / "fake", 3, 220, 32)
    quiz = widgets.RealFakeQuiz(real, fake, rounds=4, seed=0)
    box = widgets.quiz_widget(quiz)
    for _ in range(4):
        shown = decode(box.image.value)
        is_fake = shown.mean() > 128  # fakes are bright in this test
        (box.fake_button if is_fake else box.real_button).click()
        assert box.feedback.value.startswith("Right")
    assert quiz.correct == 4 and "score 4 / 4" in box.score.value
    assert box.fake_button.disabled and "Done" in box.feedback.value
