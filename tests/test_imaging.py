"""imaging: every odd file MURA or a user can hand over decodes to 8-bit grey or fails with a reason."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mura_aug import imaging
from mura_aug.errors import UserError
from mura_aug.imaging import ImageProblem, open_image


def png_bytes(image: Image.Image, **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **save_kwargs)
    return buffer.getvalue()


def gradient(width=64, height=48) -> np.ndarray:
    return (np.arange(width * height).reshape(height, width) % 251).astype(np.uint8)


def test_grey_png_decodes_unchanged():
    pixels = gradient()
    image = open_image(png_bytes(Image.fromarray(pixels, "L")))
    assert image.mode == "L" and np.array_equal(np.asarray(image), pixels)


def test_rgb_becomes_grey():
    pixels = np.zeros((40, 40, 3), np.uint8)
    pixels[..., 0] = 200  # pure red: luminance 0.299 * 200
    image = open_image(png_bytes(Image.fromarray(pixels, "RGB")))
    assert image.mode == "L" and abs(int(np.asarray(image)[0, 0]) - 60) <= 1


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_transparency_composites_onto_black(mode):
    grey = np.full((40, 40), 180, np.uint8)
    alpha = np.zeros((40, 40), np.uint8)
    alpha[:, 20:] = 255  # right half opaque, left half transparent
    channels = [grey, grey, grey, alpha] if mode == "RGBA" else [grey, alpha]
    image = Image.merge(mode, [Image.fromarray(c, "L") for c in channels])
    out = np.asarray(open_image(png_bytes(image)))
    assert out[:, :20].max() == 0  # transparent = no film = black, not the hidden grey value
    assert out[:, 20:].min() == 180


def test_palette_image_becomes_grey_and_palette_transparency_is_black():
    palette_image = Image.fromarray(gradient(), "L").convert("P")
    out = np.asarray(open_image(png_bytes(palette_image)))
    assert out.shape == (48, 64) and np.abs(out.astype(int) - gradient()).max() <= 2

    with_transparency = Image.new("P", (40, 40), 1)
    with_transparency.putpalette([0, 0, 0, 200, 200, 200] + [0] * 762)
    with_transparency.paste(0, (0, 0, 20, 40))
    data = png_bytes(with_transparency, transparency=0)
    out = np.asarray(open_image(data))
    assert out[:, :20].max() == 0 and out[:, 20:].min() == 200


@pytest.mark.parametrize("mode,file_format", [("I;16", "PNG"), ("I", "TIFF")])
def test_high_bit_images_are_stretched_by_their_own_range_not_clipped(mode, file_format):
    pixels = np.linspace(1000, 3000, 40 * 40).reshape(40, 40).astype(np.uint16)
    image = Image.fromarray(pixels)
    image = image.convert(mode) if mode == "I" else image  # 32-bit grey: PNG cannot hold it, TIFF can
    assert image.mode == mode
    buffer = io.BytesIO()
    image.save(buffer, format=file_format)
    out = np.asarray(open_image(buffer.getvalue()))
    assert out.min() == 0 and out.max() == 255  # clipping would have made every pixel 255
    assert 120 <= out[20, 20] <= 135  # the middle value lands in the middle


def test_flat_sixteen_bit_image_does_not_divide_by_zero():
    out = np.asarray(open_image(png_bytes(Image.fromarray(np.full((40, 40), 700, np.uint16)))))
    assert out.shape == (40, 40) and out.max() == 0


def test_exif_orientation_is_applied():
    pixels = np.zeros((40, 80), np.uint8)
    pixels[:, :10] = 255  # a bright band on the left
    image = Image.fromarray(pixels, "L")
    exif = Image.Exif()
    exif[imaging.EXIF_ORIENTATION_TAG] = 6  # stored sideways: rotate 90 degrees clockwise to view
    data = png_bytes(image, exif=exif)
    out = np.asarray(open_image(data))
    assert out.shape == (80, 40)  # width and height swapped
    assert out[:10, :].mean() > 200 and out[-10:, :].mean() < 50  # the left band is now on top
    assert not imaging.png_is_plain(data)  # a byte copy would show it sideways elsewhere


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"this is a text file, not an X-ray\n" * 4, "not an image"),
])
def test_unusable_bytes_raise_image_problem_with_reason(data, reason):
    with pytest.raises(ImageProblem) as info:
        open_image(data)
    assert reason in info.value.reason


def test_truncated_png_is_detected_by_a_full_decode():
    noise = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    data = png_bytes(Image.fromarray(noise, "L"))
    with Image.open(io.BytesIO(data[: len(data) // 2])) as lazy:
        assert lazy.size == (200, 200)  # opening alone does not notice
    with pytest.raises(ImageProblem, match="truncated or corrupt"):
        open_image(data[: len(data) // 2])


def test_too_small_image_is_refused():
    with pytest.raises(ImageProblem, match="too small"):
        open_image(png_bytes(Image.new("L", (20, 400), 128)))
    assert open_image(png_bytes(Image.new("L", (imaging.MIN_SIDE, imaging.MIN_SIDE), 1))).size == (32, 32)


def test_paths_are_read_and_a_missing_file_is_a_problem(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(png_bytes(Image.fromarray(gradient(), "L")))
    assert open_image(path).size == (64, 48) and open_image(str(path)).mode == "L"
    with pytest.raises(ImageProblem, match="missing"):
        open_image(tmp_path / "nope.png")
    # stage 06 (evaluate.data.open_rgb) guards image reads with (OSError, ValueError): ImageProblem must be one
    assert issubclass(ImageProblem, ValueError)


def test_png_is_plain_only_for_grey_or_rgb_pngs():
    assert imaging.png_is_plain(png_bytes(Image.new("L", (40, 40))))
    assert imaging.png_is_plain(png_bytes(Image.new("RGB", (40, 40))))
    assert not imaging.png_is_plain(png_bytes(Image.new("RGBA", (40, 40))))
    assert not imaging.png_is_plain(png_bytes(Image.fromarray(np.zeros((40, 40), np.uint16))))
    jpeg = io.BytesIO()
    Image.new("L", (40, 40)).save(jpeg, format="JPEG")
    assert not imaging.png_is_plain(jpeg.getvalue())


# --- preprocessing ------------------------------------------------------------------------------

def framed_film(noise_specks=True) -> Image.Image:
    """A 200 x 160 frame: film (grey 120) at rows 20-179 and columns 30-139, black around it."""
    pixels = np.zeros((200, 160), np.uint8)
    pixels[20:180, 30:140] = 120
    if noise_specks:
        rng = np.random.default_rng(1)
        ys, xs = rng.integers(0, 15, 30), rng.integers(0, 160, 30)
        pixels[ys, xs] = 255  # scanner dust in the top border
    return Image.fromarray(pixels, "L")


def test_crop_xray_region_finds_the_film_despite_noise():
    cropped = imaging.crop_xray_region(framed_film())
    assert cropped.size == (110, 160)
    assert np.asarray(cropped).min() == 120


def test_crop_xray_region_leaves_full_frames_and_near_black_images_alone():
    full = Image.new("L", (100, 80), 90)
    assert imaging.crop_xray_region(full) is full
    dark = np.zeros((200, 200), np.uint8)
    dark[100:110, 100:110] = 200  # a small bright mark on black: cropping to it would be absurd
    dark_image = Image.fromarray(dark, "L")
    assert imaging.crop_xray_region(dark_image) is dark_image


def test_normalize_contrast_stretches_and_leaves_flat_images():
    pixels = np.tile(np.linspace(100, 150, 100).astype(np.uint8), (50, 1))
    out = np.asarray(imaging.normalize_contrast(Image.fromarray(pixels, "L")))
    assert out.min() <= 2 and out.max() >= 253
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # order of grey levels kept
    flat = Image.new("L", (40, 40), 77)
    assert np.asarray(imaging.normalize_contrast(flat)).max() == 77


def test_resize_pad_keeps_aspect_and_centres_on_black():
    out = np.asarray(imaging.resize_pad(Image.new("L", (100, 50), 200), 32))
    assert out.shape == (32, 32)
    assert out[:7].max() == 0 and out[-7:].max() == 0  # 8 px bars above and below
    assert out[10:22].min() > 150


def test_resize_center_crop_fills_the_square():
    pixels = np.zeros((50, 150), np.uint8)
    pixels[:, 50:100] = 255  # only the middle third is bright
    out = np.asarray(imaging.resize_center_crop(Image.fromarray(pixels, "L"), 32))
    assert out.shape == (32, 32) and out[:, 4:28].min() > 200


@pytest.mark.parametrize("fit", ["pad", "crop"])
@pytest.mark.parametrize("crop_borders,contrast", [(False, False), (True, True)])
def test_preprocess_gives_rgb_squares(fit, crop_borders, contrast):
    out = imaging.preprocess(framed_film(), 16, fit=fit, crop_borders=crop_borders, contrast=contrast)
    assert out.mode == "RGB" and out.size == (16, 16)
    pixels = np.asarray(out)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey stored as RGB
    if crop_borders and fit == "crop":
        assert pixels[..., 0].min() > 0  # once the frame is cut away the film fills the whole square


def test_preprocess_rejects_unknown_fit():
    with pytest.raises(UserError, match="fit"):
        imaging.preprocess(Image.new("L", (40, 40)), 16, fit="stretch")
