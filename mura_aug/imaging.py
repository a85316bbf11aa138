"""Image I/O that survives whatever MURA (or a user) throws at it, and the preprocessing of stage 01.

`open_image` turns any file PIL can read into an 8-bit grey ('L') image, or raises `ImageProblem` with a
short reason (written to the skipped-files table by prepare). Plain 8-bit grey / RGB PNGs (all of MURA) are
decoded by OpenCV when it is installed (the `fast` extra; Colab has it), about 20 % faster than Pillow, and
`encode_png_fast` writes PNGs through it at about half Pillow's cost; the pixels are the same either way
(tests/test_imaging.py checks both), only the compressed bytes differ. Without OpenCV Pillow does everything.
The preprocessing steps (`crop_xray_region`, `normalize_contrast`, `resize_pad`, `resize_center_crop`) are
plain PIL + numpy and are combined by `preprocess` into the square RGB images of the GAN datasets.

The luma rule (`to_grey` for PIL images, `grey_image` for G's pixel arrays) is the one way anything in the
package turns colour into grey: stage 01's inputs, stage 05's fakes, training's grids, the widgets and plots.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mura_aug.errors import UserError

MIN_SIDE = 32  # px; anything smaller cannot hold a readable radiograph (MURA's smallest side is about 100 px)
FITS = ("pad", "crop")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION_TAG = 274

# Modes PIL can hand us that carry transparency; X-ray exporters use it for "outside the film".
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
_HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageProblem(ValueError):
    """A file that cannot be used as an image; `.reason` is a short text for the skipped-files table.

    A ValueError, so callers that already guard image reads with (OSError, ValueError) handle it too.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


# --- the optional OpenCV codec ------------------------------------------------------------------------

_NOT_LOADED = object()
_OPENCV = _NOT_LOADED  # the cv2 module, None when missing or switched off, _NOT_LOADED before the first use
OPENCV_SWITCH = "MURA_AUG_OPENCV"  # environment variable: 0 makes every codec Pillow's (benchmarks, comparisons)


def opencv():
    """The cv2 module when it is installed and not switched off, else None (imported once, on first use)."""
    global _OPENCV
    if _OPENCV is _NOT_LOADED:
        _OPENCV = None
        if os.environ.get(OPENCV_SWITCH, "1").strip() != "0":
            try:
                import cv2

                cv2.setNumThreads(1)  # one image per process: prepare's worker processes are the parallelism
                _OPENCV = cv2
            except ImportError:  # the `fast` extra is not installed: Pillow does the work
                pass
    return _OPENCV


def png_codec() -> str:
    """'opencv' or 'pillow': which library decodes plain PNGs and encodes dataset members in this process."""
    return "opencv" if opencv() is not None else "pillow"


def _plain_png_header(data: bytes):
    """(width, height, colour type) of an 8-bit grey (0) or RGB (2) PNG without transparency or EXIF, else None.

    Read from the IHDR chunk, which the PNG standard puts first; anything unusual goes to Pillow.
    """
    if len(data) < 33 or not is_png(data) or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    bit_depth, colour_type = data[24], data[25]
    if bit_depth != 8 or colour_type not in (0, 2):
        return None
    if b"tRNS" in data or b"eXIf" in data:  # may also match inside compressed data: then Pillow decodes it
        return None
    return width, height, colour_type


def _decode_plain_png(data: bytes) -> "Image.Image | None":
    """An 'L' image from a plain PNG via OpenCV, or None (not plain, no OpenCV, or OpenCV refused it: then
    Pillow decodes it and words the problem)."""
    cv2 = opencv()
    header = _plain_png_header(data) if cv2 is not None else None
    if header is None:
        return None
    width, height, colour_type = header
    if width * height > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow's decompression-bomb guard words it
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # None for truncated / corrupt
    if pixels is None or pixels.dtype != np.uint8 or pixels.shape[:2] != (height, width):
        return None
    if colour_type == 0 and pixels.ndim == 2:
        return Image.fromarray(pixels)
    if colour_type == 2 and pixels.ndim == 3 and pixels.shape[2] == 3:
        # Pillow's own RGB -> L conversion, so the grey levels are those of the Pillow path.
        return Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)).convert("L")
    return None


# --- reading ----------------------------------------------------------------------------------------

def open_image(data: Union[bytes, bytearray, memoryview, str, os.PathLike]) -> Image.Image:
    """Decode `data` (file contents or a path) fully into an 8-bit grey ('L') PIL image.

    EXIF orientation is applied; transparency is composited onto black (the X-ray background, so
    transparent areas read as "no film" rather than as bright bone); 16-bit and 32-bit images are scaled
    by their own minimum and maximum to 0-255 (clipping would turn most 16-bit radiographs white).
    Raises ImageProblem for an empty, truncated or unreadable file, and for images under MIN_SIDE px.
    """
    if isinstance(data, (str, os.PathLike)):
        try:
            data = Path(data).read_bytes()
        except FileNotFoundError as exc:
            raise ImageProblem("file is missing") from exc
        except OSError as exc:
            raise ImageProblem(f"cannot read file ({exc.strerror or exc})") from exc
    data = bytes(data)
    if not data:
        raise ImageProblem("empty file (0 bytes)")
    fast = _decode_plain_png(data)
    if fast is not None:
        return _checked_size(fast)
    try:
        with Image.open(io.BytesIO(data)) as handle:
            # load() forces the full decode: a truncated file fails here rather than silently turning grey
            # later (LOAD_TRUNCATED_IMAGES stays off: accepting half an image would poison the datasets).
            handle.load()
            image = ImageOps.exif_transpose(handle)
            if image is handle:
                image = handle.copy()
    except UnidentifiedImageError as exc:
        raise ImageProblem("not an image (unrecognised file format)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageProblem("image is implausibly large (decompression bomb guard)") from exc
    except (OSError, SyntaxError, EOFError) as exc:
        raise ImageProblem(f"truncated or corrupt image ({_short(exc)})") from exc
    except Exception as exc:  # PIL raises odd types (struct.error, ValueError, ...) on malformed files
        raise ImageProblem(f"cannot decode image ({type(exc).__name__}: {_short(exc)})") from exc
    return _checked_size(to_grey(image))


def _checked_size(grey: Image.Image) -> Image.Image:
    width, height = grey.size
    if min(width, height) < MIN_SIDE:
        raise ImageProblem(f"too small ({width}x{height} px; at least {MIN_SIDE} px per side needed)")
    return grey


_MODE_OF_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # HWC uint8 pixels -> the PIL mode they are


def grey_image(array: np.ndarray) -> Image.Image:
    """HW or HWC uint8 pixels (G's three channels; also 1, 2 or 4 with alpha) -> an 8-bit grey ('L') image,
    by `to_grey`'s rules (luma; alpha composited on black)."""
    mode = "L" if array.ndim == 2 else _MODE_OF_CHANNELS.get(array.shape[2]) if array.ndim == 3 else None
    if array.dtype != np.uint8 or mode is None:
        raise ValueError(f"grey_image takes HW or HWC uint8 pixels with 1-4 channels, not {array.dtype} "
                         f"{tuple(array.shape)}")
    if array.ndim == 3 and mode == "L":
        array = array[:, :, 0]
    return to_grey(Image.fromarray(array, mode))


def to_grey(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 'L' (8-bit grey)."""
    mode = image.mode
    if mode == "L":
        return image
    if mode == "P":
        # A palette with a transparent entry behaves like an alpha image.
        if "transparency" in image.info:
            return _composite_on_black(image.convert("RGBA"))
        return image.convert("L")
    if mode in _ALPHA_MODES:
        return _composite_on_black(image)
    if mode in _HIGH_BIT_MODES:
        return _stretch_to_8bit(image)
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB").convert("L")  # RGB, CMYK, YCbCr, LAB, HSV ...


def _composite_on_black(image: Image.Image) -> Image.Image:
    """Grey value times alpha: fully transparent pixels become black background, opaque ones are kept."""
    if image.mode in ("LA", "La"):
        with_alpha = image.convert("LA")
        grey = np.asarray(with_alpha.getchannel("L"), dtype=np.float32)
    else:
        with_alpha = image.convert("RGBA")
        grey = np.asarray(with_alpha.convert("RGB").convert("L"), dtype=np.float32)
    alpha = np.asarray(with_alpha.getchannel("A"), dtype=np.float32) / 255.0
    return Image.fromarray(np.clip(np.rint(grey * alpha), 0, 255).astype(np.uint8), mode="L")


def _stretch_to_8bit(image: Image.Image) -> Image.Image:
    pixels = np.asarray(image).astype(np.float64)
    finite = pixels[np.isfinite(pixels)]
    if finite.size == 0:
        return Image.new("L", image.size, 0)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:  # a flat image carries no contrast to keep
        return Image.new("L", image.size, 0)
    scaled = (np.nan_to_num(pixels, nan=low) - low) * (255.0 / (high - low))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def _short(exc: BaseException, limit: int = 80) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_png(data: bytes) -> bool:
    return bytes(data[:8]) == PNG_SIGNATURE


def png_is_plain(data: bytes) -> bool:
    """True when a PNG can be used byte for byte: 8-bit grey or RGB, no alpha, no EXIF rotation.

    Those are what every reader of the workspace (PIL's convert('RGB'), torchvision) shows correctly;
    anything else is better stored converted.
    """
    if not is_png(data):
        return False
    if _plain_png_header(data) is not None:
        return True  # read from the header alone: no need to ask Pillow
    try:
        with Image.open(io.BytesIO(data)) as handle:
            if handle.mode not in ("L", "RGB") or "transparency" in handle.info:
                return False
            if b"eXIf" not in data:
                return True  # no EXIF chunk; asking PIL would decode the whole image to look for one
            orientation = handle.getexif().get(EXIF_ORIENTATION_TAG, 1)
            return orientation in (0, 1)
    except Exception:
        return False


def encode_png(image: Image.Image, compress_level: int = 6) -> bytes:
    """PNG bytes of `image` (compress_level 0-9: 1 is fast, 6 is PIL's default trade-off)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=int(compress_level))
    return buffer.getvalue()


FAST_PNG_LEVEL = 1  # zlib level of encode_png_fast through OpenCV; with the 'up' filter about as small as Pillow's 4


def encode_png_fast(image: Image.Image, pillow_level: int) -> bytes:
    """PNG bytes of an 'L' or 'RGB' image, through OpenCV when it is there, else Pillow at `pillow_level` (0-9).

    OpenCV lets us pick one PNG row filter ('up', the previous row) where Pillow tries all five on every row;
    with zlib level 1 that is about half Pillow's level-4 time for files about 8 % larger (bench_prepare.py
    --codecs). The pixels are the same.
    """
    cv2 = opencv()
    if cv2 is None or image.mode not in ("L", "RGB"):
        return encode_png(image, pillow_level)
    pixels = np.asarray(image)
    if image.mode == "RGB":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    options = [cv2.IMWRITE_PNG_COMPRESSION, FAST_PNG_LEVEL]
    if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV 4.11 and later
        options += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    ok, encoded = cv2.imencode(".png", pixels, options)
    if not ok:
        return encode_png(image, pillow_level)
    return encoded.tobytes()


# --- preprocessing ----------------------------------------------------------------------------------

def crop_xray_region(image: Image.Image, threshold: int = 16, min_fraction: float = 0.05,
                     min_keep: float = 0.3) -> Image.Image:
    """Cut away near-black borders where the film did not fill the scanner's frame.

    threshold: grey level (0-255) above which a pixel counts as film rather than border.
    min_fraction: share (0-1) of a row's / column's pixels that must be film for that row / column to count
        as film; single noise pixels or a scanner's stray specks in the border stay well below it.
    min_keep: the crop must keep at least this share (0-1) of the width and of the height, else the image is
        returned unchanged (a nearly black image would otherwise be cut down to a speck).
    Returns the same image object when there is nothing to crop.
    """
    grey = image if image.mode == "L" else to_grey(image)
    pixels = np.asarray(grey)
    film = pixels > threshold
    rows = np.flatnonzero(film.mean(axis=1) >= min_fraction)
    cols = np.flatnonzero(film.mean(axis=0) >= min_fraction)
    if rows.size == 0 or cols.size == 0:
        return image
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    height, width = pixels.shape
    if (top, bottom, left, right) == (0, height, 0, width):
        return image
    kept_height, kept_width = bottom - top, right - left
    if kept_height < max(MIN_SIDE, min_keep * height) or kept_width < max(MIN_SIDE, min_keep * width):
        return image
    return image.crop((left, top, right, bottom))


def normalize_contrast(image: Image.Image, low_percentile: float = 0.5,
                       high_percentile: float = 99.5) -> Image.Image:
    """Stretch grey levels so that the given percentiles (0-100) map to 0 and 255; returns 'L'.

    Percentiles rather than min/max, so a few saturated pixels (metal, side markers) do not decide the
    stretch. A flat image is returned unchanged.
    """
    grey = image if image.mode == "L" else to_grey(image)
    pixels = np.asarray(grey, dtype=np.float32)
    low, high = np.percentile(pixels, [low_percentile, high_percentile])
    if high - low < 1.0:
        return grey
    lut = np.clip(np.rint((np.arange(256, dtype=np.float32) - low) * (255.0 / (high - low))), 0, 255)
    return grey.point(lut.astype(np.uint8).tolist())


def _resized(image: Image.Image, width: int, height: int) -> Image.Image:
    if (width, height) == image.size:
        return image
    # reducing_gap: a fast box pre-shrink before the Lanczos pass; same look, much faster on large scans.
    return image.resize((max(1, width), max(1, height)), Image.Resampling.LANCZOS, reducing_gap=3.0)


def resize_pad(image: Image.Image, size: int) -> Image.Image:
    """Scale so the longer side is `size` px (aspect ratio kept), then pad with black to size x size, centred."""
    width, height = image.size
    scale = size / max(width, height)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    resized = _resized(image, new_width, new_height)
    if resized.size == (size, size):
        return resized
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(resized, ((size - new_width) // 2, (size - new_height) // 2))
    return canvas


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale so the shorter side is `size` px (aspect ratio kept), then cut the centred size x size square."""
    width, height = image.size
    scale = size / min(width, height)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = _resized(image, new_width, new_height)
    left, top = (new_width - size) // 2, (new_height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def check_fit(fit: str) -> str:
    if fit not in FITS:
        raise UserError(f"Unknown fit {fit!r}.",
                        "Use 'pad' (whole image, black bars) or 'crop' (fills the square, cuts the long side).")
    return fit


def preprocess(image: Image.Image, resolution: int, fit: str = "pad", crop_borders: bool = False,
               contrast: bool = False) -> Image.Image:
    """One radiograph -> the RGB `resolution` x `resolution` image of the GAN datasets.

    resolution: side in px. fit: 'pad' keeps the whole image with black bars, 'crop' fills the square and
    cuts the longer side. Borders are cropped before the contrast stretch, so the black frame does not
    count in its percentiles.
    """
    check_fit(fit)
    grey = to_grey(image)
    if crop_borders:
        grey = crop_xray_region(grey)
    if contrast:
        grey = normalize_contrast(grey)
    square = resize_pad(grey, resolution) if fit == "pad" else resize_center_crop(grey, resolution)
    return square.convert("RGB")
