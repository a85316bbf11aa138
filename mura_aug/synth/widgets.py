"""Classroom widgets: a generator explorer, a snapshot browser and a "real or fake?" quiz.

Core ipywidgets only (they work in Colab without extensions). The logic of each widget is a plain class
that can be tested without a browser; the `*_widget` functions only wire controls to it and return the
assembled box (its controls are reachable as attributes, so tests and notebooks can drive it too).
Every image a widget shows is 8-bit grey, made from G's three channels (and from the training grids) by stage
01's luma rule, as stage 05 saves its fakes.
"""
from __future__ import annotations

import html
import io
import os
import random
import time
import uuid
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from mura_aug.errors import UserError
from mura_aug.imaging import grey_image, to_grey
from mura_aug.synth.generate import open_gray
from mura_aug.synth.grids import grid_kimg
from mura_aug.workspace import CLASSES, RunFolder

PathLike = Union[str, os.PathLike]
# Side (px) of the square every widget shows its image in. 256 fits beside the controls on a 1366x768 laptop
# screen with the browser's own bars, and every GAN resolution (32 ... 1024, powers of two) maps onto it by a
# whole factor, so small fakes become crisp blocks of pixels and 256 px images are shown 1:1.
DISPLAY_PX = 256
GRID_DISPLAY_PX = 512  # px, the longer side of a training grid in the snapshot browser
CONTROLS_PX = 330  # px, width of the column of controls (and text) beside the image
# seconds per image under which the explorer's sliders redraw while dragged: a drag sends the kernel a value per
# mouse position and each one is drawn in turn, so with a slower generator (a 256 px network on a laptop CPU,
# about 0.25 s) the image would trail the mouse by seconds; it then redraws when the slider is let go
SMOOTH_RENDER_S = 0.15
# CSS class of widget images: the browser keeps pixels square (no smoothing) where it scales them itself
# (a zoomed page, a high-density screen); the PNG is already at the size it is shown.
PIXELATED_CLASS = "mura-aug-pixelated"


def display_size(size: Tuple[int, int], display_px: int) -> Tuple[int, int]:
    """(width, height) px an image of `size` is shown at: its longer side becomes `display_px`."""
    width, height = size
    scale = display_px / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def display_image(image: Union[Image.Image, np.ndarray], display_px: int = DISPLAY_PX) -> Image.Image:
    """An image in 8-bit grey at its display size: enlarged by nearest neighbour (small fakes stay sharp blocks
    of pixels), reduced with Lanczos (no aliasing). `display_px=0` keeps the image's own size."""
    image = grey_image(image) if isinstance(image, np.ndarray) else to_grey(image)
    if not display_px:
        return image
    size = display_size(image.size, display_px)
    if size == image.size:
        return image
    enlarging = size[0] > image.width
    return image.resize(size, Image.NEAREST if enlarging else Image.LANCZOS)


def png_bytes(image: Union[Image.Image, np.ndarray], display_px: int = DISPLAY_PX) -> bytes:
    """PNG bytes of `display_image(image, display_px)`."""
    buffer = io.BytesIO()
    display_image(image, display_px).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_widget(size: Tuple[int, int]):
    """An ipywidgets Image fixed at `size` (width, height) px: in a box it would otherwise stretch to the
    output's full width."""
    import ipywidgets as w

    width, height = (f"{px}px" for px in size)
    image = w.Image(format="png", layout=w.Layout(width=width, height=height, min_width=width,
                                                  min_height=height, object_fit="contain"))
    image.add_class(PIXELATED_CLASS)
    return image


def _beside():
    """Layout of the column of controls and text to the right of an image."""
    import ipywidgets as w

    return w.Layout(margin="0px 0px 0px 12px")


def _text(width_px: int = CONTROLS_PX):
    """A line of text that wraps inside `width_px` (a Label would cut it off)."""
    import ipywidgets as w

    return w.HTML(layout=w.Layout(width=f"{width_px}px"))


def _set_text(widget, text: str) -> None:
    widget.value = html.escape(text)


def _plain(widget) -> str:
    """The text a `_text` widget shows."""
    return html.unescape(widget.value)


# --- a still picture for notebooks opened without a kernel ---------------------------------------------------
# A saved notebook keeps a widget only as a reference to a model in the kernel, so a notebook reopened later
# shows "Error displaying widget: model not found" in its place in JupyterLab (and a line of text in viewers
# without widgets). Saving widget state instead needs a JupyterLab setting that is off by default, Colab does
# not keep it, and it shows controls that do nothing. So `show` puts a plain HTML picture of the widget's first
# state after it, which every notebook viewer renders, and the live widget carries a style that hides that
# picture while it runs.

def show(box) -> None:
    """Display a widget of this module followed by its still picture (hidden while the widget is live)."""
    from IPython.display import display

    for bundle in display_bundles(box):
        display(bundle, raw=True)


def display_bundles(box) -> List[dict]:
    """What `show` displays: the widget (its text form says what it is instead of a repr of its bytes), then
    the still picture."""
    note = f"{box.title} (a live widget; a picture of it follows)"
    # the reference to the widget's model, as ipywidgets 7 and 8 display it (widget-view format 2.0)
    view = {"version_major": 2, "version_minor": 0, "model_id": box.model_id}
    return [{"application/vnd.jupyter.widget-view+json": view, "text/plain": note},
            {"text/html": still_html(box), "text/plain": f"(a picture of the {box.title.lower()})"}]


def still(box):
    """IPython HTML: a picture of the widget as it is now (its image and text), for a notebook opened later."""
    from IPython.display import HTML

    return HTML(still_html(box))


def still_html(box) -> str:
    import base64

    width, height = (int(str(getattr(box.image.layout, side)).rstrip("px")) for side in ("width", "height"))
    source = base64.b64encode(box.image.value).decode("ascii")
    lines = "".join(f"<div>{html.escape(line)}</div>" for line in [box.title, *box.still_lines()] if line)
    return (f'<div class="{box.still_class}" style="display:flex;gap:12px;align-items:flex-start">'
            f'<img src="data:image/png;base64,{source}" width="{width}" height="{height}" '
            f'style="image-rendering:pixelated" alt="{html.escape(box.title)}">'
            f'<div style="max-width:{CONTROLS_PX}px">{lines}<div><i>A picture of the widget as it first '
            f'appeared when the notebook last ran: run the notebook to play with it.</i></div></div></div>')


def _style(box) -> None:
    """Give `box` a unique still class and an invisible child that styles the page while the widget is live:
    square pixels for its images, and its still picture hidden."""
    import ipywidgets as w

    box.still_class = f"mura-aug-still-{uuid.uuid4().hex}"
    box.style_html = w.HTML(f"<style>.{PIXELATED_CLASS} {{ image-rendering: pixelated; }} "
                            f".{box.still_class} {{ display: none !important; }}</style>",
                            layout=w.Layout(width="0px", height="0px", margin="0px"))


# --- generator explorer -----------------------------------------------------------------------------------

class GeneratorExplorer:
    """Images from one or two generators (per class) for a seed, psi, style mixing and interpolation.

    `generators`: {class: G} (one G may serve both classes if it is conditional) or a single G.
    """

    @classmethod
    def from_snapshots(cls, snapshots, device="cpu") -> "GeneratorExplorer":
        """An explorer over the generators of {class: Snapshot} (stage 05's picks), each file loaded once."""
        from mura_aug.gan.network_file import load_generator

        loaded = {}  # a conditional run serves both classes: its G is loaded once
        for snap in snapshots.values():
            if snap.path not in loaded:
                loaded[snap.path] = load_generator(snap.path, device=device)
        return cls({name: loaded[snap.path] for name, snap in snapshots.items()}, device=device)

    def __init__(self, generators, device="cpu"):
        import torch

        if not isinstance(generators, dict):
            generators = {cls: generators for cls in CLASSES}
        if not generators:
            raise UserError("The generator explorer needs at least one generator.",
                            "Load one with mura_aug.gan.load_generator(run folder or snapshot file).")
        self.generators = generators
        self.device = torch.device(device)
        for G in generators.values():
            G.to(self.device).eval()

    @property
    def classes(self) -> List[str]:
        return list(self.generators)

    def num_ws(self, cls: str) -> int:
        return int(self._generator(cls).num_ws)

    def resolution(self, cls: str) -> int:
        """Side (px) of the images of `cls`'s generator."""
        return int(self._generator(cls).img_resolution)

    def _generator(self, cls: str):
        if cls not in self.generators:
            raise UserError(f"No generator for class {cls!r}.", f"Choose one of {', '.join(self.generators)}.")
        return self.generators[cls]

    def ws(self, cls: str, seed: int, psi: float):
        """The per-layer latents w of one seed: 1 x num_ws x w_dim."""
        import torch

        from mura_aug.gan import sampling

        G = self._generator(cls)
        z = torch.from_numpy(sampling.seed_latents(G.z_dim, [seed])).to(self.device)
        c = torch.from_numpy(sampling.class_vectors(G.c_dim, cls, 1)).to(self.device)
        with torch.no_grad():
            return G.mapping(z, c, truncation_psi=psi)

    def render(self, cls: str, seed: int, psi: float = 1.0, mix_seed: Optional[int] = None,
               crossover: Optional[int] = None, target_seed: Optional[int] = None,
               t: float = 0.0) -> np.ndarray:
        """One image (HWC uint8, G's channels; `png_bytes` shows it grey).

        Interpolation: w moves from `seed` (t=0) to `target_seed` (t=1) in a straight line in W.
        Style mixing: layers from `crossover` on take their w from `mix_seed` (coarse layers keep pose and
        shape of `seed`, fine layers bring texture of `mix_seed`); crossover = num_ws means no mixing.
        """
        import torch

        from mura_aug.gan import sampling

        G = self._generator(cls)
        ws = self.ws(cls, seed, psi)
        if target_seed is not None and t:
            ws = torch.lerp(ws, self.ws(cls, target_seed, psi), float(t))
        if mix_seed is not None and crossover is not None and crossover < G.num_ws:
            if not 0 <= crossover <= G.num_ws:
                raise UserError(f"crossover={crossover} is outside 0..{G.num_ws}.", "Pick a layer in that range.")
            ws = ws.clone()
            ws[:, crossover:] = self.ws(cls, mix_seed, psi)[:, crossover:]
        with torch.no_grad():
            image = G.synthesis(ws, noise_mode="const")
        return sampling.to_uint8(image)[0].transpose(1, 2, 0)


def explorer_widget(explorer: GeneratorExplorer, display_px: int = DISPLAY_PX, continuous: Optional[bool] = None):
    """The image beside its controls (seed, psi, class; style mixing: second seed and crossover layer;
    interpolation) with a line saying what it shows, all within 256 px of height: one laptop screen.

    `continuous`: sliders redraw while dragged (True) or on release (False); None decides by how long the
    first image took (SMOOTH_RENDER_S), so a slow generator does not queue one image per mouse position."""
    import ipywidgets as w

    first = explorer.classes[0]
    num_ws = explorer.num_ws(first)
    side = explorer.resolution(first)
    box = w.HBox(layout=w.Layout(align_items="flex-start"))
    # descriptions are one width so the controls line up; the column fits CONTROLS_PX
    look = dict(style={"description_width": "78px"}, layout=w.Layout(width=f"{CONTROLS_PX}px"))
    box.seed = w.BoundedIntText(value=0, min=0, max=2 ** 32 - 1, description="seed", **look)
    box.psi = w.FloatSlider(value=1.0, min=0.0, max=1.5, step=0.05, description="psi", **look)
    box.cls = w.Dropdown(options=explorer.classes, value=first, description="class", **look)
    box.mix_seed = w.BoundedIntText(value=1, min=0, max=2 ** 32 - 1, description="mix seed", **look)
    # layers from `crossover` on take the mix seed's w; the rightmost position (num_ws) means no mixing
    box.crossover = w.IntSlider(value=num_ws, min=0, max=num_ws, description="crossover", **look)
    box.target_seed = w.BoundedIntText(value=2, min=0, max=2 ** 32 - 1, description="to seed", **look)
    box.t = w.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="interpolate", **look)
    box.image = _image_widget(display_size((side, side), display_px))
    box.status = _text()
    box.title = "Generator explorer"
    box.still_lines = lambda: [_plain(box.status)]
    _style(box)

    def update(_change=None):
        try:
            array = explorer.render(box.cls.value, box.seed.value, box.psi.value, box.mix_seed.value,
                                    box.crossover.value, box.target_seed.value, box.t.value)
        except UserError as exc:
            _set_text(box.status, str(exc).splitlines()[0])
            return
        box.image.value = png_bytes(array, display_px)
        _set_text(box.status, f"{box.cls.value}, seed {box.seed.value}, psi {box.psi.value:.2f}"
                  + (f", layers {box.crossover.value}+ from seed {box.mix_seed.value}"
                     if box.crossover.value < num_ws else "")
                  + (f", {box.t.value:.0%} towards seed {box.target_seed.value}" if box.t.value else ""))

    controls = (box.seed, box.psi, box.cls, box.mix_seed, box.crossover, box.target_seed, box.t)
    for control in controls:
        control.observe(update, names="value")
    box.children = [box.image, w.VBox([*controls, box.status], layout=_beside()), box.style_html]
    started = time.perf_counter()
    update()
    if continuous is None:
        continuous = time.perf_counter() - started < SMOOTH_RENDER_S
    for slider in (box.psi, box.crossover, box.t):
        slider.continuous_update = continuous
    return box


# --- snapshot browser ---------------------------------------------------------------------------------------

class SnapshotBrowser:
    """The fakes grids of a run, in kimg order, shown grey."""

    def __init__(self, run_dir: PathLike):
        self.run_dir = Path(run_dir)
        grids = RunFolder(self.run_dir).fakes_grids() if self.run_dir.is_dir() else []
        if not grids:
            raise UserError(f"No fakes*.png grids in {self.run_dir}.",
                            "Pick a run folder under data/experiments that has trained to its first snapshot.")
        self.grids = sorted(grids, key=lambda p: (grid_kimg(p), p.name))
        self.kimgs = [grid_kimg(p) for p in self.grids]

    def __len__(self) -> int:
        return len(self.grids)

    def label(self, index: int) -> str:
        return f"{self.kimgs[index]:g} kimg"

    def image_bytes(self, index: int, display_px: int = GRID_DISPLAY_PX) -> bytes:
        """PNG bytes of grid `index` in 8-bit grey (training saves grey grids; older runs' and NVIDIA's may be in
        colour), its longer side `display_px` (0: the grid's own size)."""
        return png_bytes(open_gray(self.grids[index]), display_px=display_px)

    def size(self, index: int) -> Tuple[int, int]:
        with Image.open(self.grids[index]) as handle:
            return handle.size


def snapshot_browser_widget(browser: SnapshotBrowser, display_px: int = GRID_DISPLAY_PX):
    """A slider over kimg that shows the fakes grid saved at that point of training, the newest first."""
    import ipywidgets as w

    newest = len(browser) - 1
    box = w.VBox()
    box.slider = w.SelectionSlider(options=[(browser.label(i), i) for i in range(len(browser))],
                                   value=newest, description="snapshot",
                                   layout=w.Layout(width=f"{max(display_px, CONTROLS_PX)}px"))
    # the image keeps the newest grid's shape; an older grid of another shape is fitted inside it
    box.image = _image_widget(display_size(browser.size(newest), display_px))
    box.caption = _text(max(display_px, CONTROLS_PX))
    box.title = "Training progress"
    box.still_lines = lambda: [_plain(box.caption)]
    _style(box)

    def update(_change=None):
        index = box.slider.value
        box.image.value = browser.image_bytes(index, display_px)
        _set_text(box.caption, f"{browser.run_dir.name}: {browser.grids[index].name} ({browser.label(index)})")

    box.slider.observe(update, names="value")
    box.children = [box.slider, box.image, box.caption, box.style_html]
    update()
    return box


def snapshot_browsers(snapshots) -> dict:
    """{run name: snapshot browser widget} for each run folder of {class: Snapshot} that has saved grids."""
    folders = sorted({snap.path.parent for snap in snapshots.values()})
    return {folder.name: snapshot_browser_widget(SnapshotBrowser(folder))
            for folder in folders if RunFolder(folder).fakes_grids()}


# --- real or fake? -----------------------------------------------------------------------------------------

class RealFakeQuiz:
    """Shuffled real and generated X-rays; the player says real or fake and the quiz keeps score."""

    def __init__(self, real_paths: Sequence[PathLike], fake_paths: Sequence[PathLike], rounds: int = 20,
                 seed: int = 0):
        real, fake = [Path(p) for p in real_paths], [Path(p) for p in fake_paths]
        if not real or not fake:
            raise UserError(f"The quiz needs real and fake images (got {len(real)} real, {len(fake)} fake).",
                            "Run stage 01 (real images) and stage 05 (fakes) first.")
        rng = random.Random(seed)
        half = max(1, rounds // 2)
        items = [(p, False) for p in rng.sample(real, min(half, len(real)))]
        items += [(p, True) for p in rng.sample(fake, min(rounds - len(items), len(fake)))]
        rng.shuffle(items)
        self.items: List[Tuple[Path, bool]] = items
        self.position = 0
        self.correct = 0
        self.answered = 0
        with Image.open(fake[0]) as handle:
            self.size = handle.size  # (width, height) px every image is shown at, so size gives nothing away

    @property
    def finished(self) -> bool:
        return self.position >= len(self.items)

    def current(self) -> Tuple[Path, bool]:
        if self.finished:
            raise UserError("The quiz is over.", "Start a new RealFakeQuiz to play again.")
        return self.items[self.position]

    def answer(self, says_fake: bool) -> bool:
        """Record the answer for the current image, move on, and return whether it was right."""
        _, is_fake = self.current()
        right = bool(says_fake) == is_fake
        self.correct += int(right)
        self.answered += 1
        self.position += 1
        return right

    def current_image(self) -> Image.Image:
        """The current X-ray in grayscale at the fakes' size (real ones centre-cropped to the same shape)."""
        from PIL import ImageOps

        path, _ = self.current()
        image = open_gray(path)
        return image if image.size == self.size else ImageOps.fit(image, self.size, Image.BICUBIC)

    @property
    def score_text(self) -> str:
        return f"score {self.correct} / {self.answered} (of {len(self.items)})"


def quiz_widget(quiz: RealFakeQuiz, display_px: int = DISPLAY_PX):
    """The quiz's current X-ray with, beside it, the 'Real' and 'Fake' buttons, what the last answer was worth
    and the running score, so the player never scrolls. The feedback names no file: a real X-ray's name carries
    its patient's id, a fake's its run and class."""
    import ipywidgets as w

    box = w.HBox(layout=w.Layout(align_items="flex-start"))
    box.image = _image_widget(display_size(quiz.size, display_px))
    box.question = _text()
    box.real_button = w.Button(description="Real", button_style="info")
    box.fake_button = w.Button(description="Fake", button_style="warning")
    box.feedback = _text()
    box.score = _text()
    box.title = "Real or fake?"
    box.still_lines = lambda: [_plain(box.question), _plain(box.score)]
    _style(box)

    def show_current():
        _set_text(box.score, quiz.score_text)
        if quiz.finished:
            box.real_button.disabled = box.fake_button.disabled = True
            _set_text(box.question, f"Done: {quiz.correct} of {quiz.answered} right.")
            return
        _set_text(box.question, f"Picture {quiz.position + 1} of {len(quiz.items)}: a real X-ray or a fake?")
        box.image.value = png_bytes(quiz.current_image(), display_px)

    def on_answer(says_fake: bool):
        def handler(_button):
            if quiz.finished:
                return
            number = quiz.position + 1
            _, is_fake = quiz.current()
            right = quiz.answer(says_fake)
            _set_text(box.feedback, quiz_feedback(number, right, is_fake))
            show_current()
        return handler

    box.real_button.on_click(on_answer(False))
    box.fake_button.on_click(on_answer(True))
    box.children = [box.image, w.VBox([box.question, w.HBox([box.real_button, box.fake_button]), box.feedback,
                                       box.score], layout=_beside()), box.style_html]
    show_current()
    return box


def quiz_feedback(number: int, right: bool, is_fake: bool) -> str:
    """What the player is told after answering picture `number` (1-based): no file name, run or class."""
    truth = "a fake, made by the generator" if is_fake else "a real X-ray"
    return f"{'Right' if right else 'Wrong'}: picture {number} was {truth}."


def quiz_from_workspace(workspace, body_part: str = "XR_SHOULDER", rounds: int = 20, seed: int = 0) -> RealFakeQuiz:
    """A quiz over the workspace's real training images and its kept fakes of `body_part`."""
    import pandas as pd

    from mura_aug.workspace import resolve_workspace

    workspace = resolve_workspace(workspace)
    table_file = workspace.augmented_table(body_part)
    if not table_file.is_file():
        raise UserError(f"No augmented table {table_file}.", "Run stage 05 (notebook 05 or python -m mura_aug synth).")
    table = pd.read_csv(table_file)
    real = [workspace.root / p for p in table.loc[table["source"] != "synthetic", "path"]]
    fake = [workspace.root / p for p in table.loc[table["source"] == "synthetic", "path"]]
    return RealFakeQuiz(real, fake, rounds=rounds, seed=seed)
