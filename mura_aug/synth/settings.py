"""The settings of stage 05, each declared once: `python -m mura_aug synth` options, notebook 05's parameters,
the settings stored in the stage's summary and the parameter table of docs/stage_05_synth.md are all made
from `SynthSettings` (see mura_aug.settings for how)."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple, Union

from mura_aug.errors import UserError
from mura_aug.gan.sampling import SEED_LIMIT
from mura_aug.prepare.mura import DEFAULT_BODY_PART
from mura_aug.settings import StageSettings, flag_name, parameter_name, setting
from mura_aug.workspace import CLASSES

RunsSpec = Union[None, List[str], Dict[str, str]]
DUPLICATE_THUMB_PX = 32  # side of the grey thumbnails near-duplicates are compared on


@dataclasses.dataclass
class SynthSettings(StageSettings):
    """What stage 05 makes, how it finishes each fake, and which fakes it keeps."""

    body_part: str = setting(DEFAULT_BODY_PART, "MURA body part, as prepared by stage 01")
    # --- which generator, which images ---
    n_per_class: int = setting(100, "fakes generated per class (the original work used 960 in all)",
                               unit="images")
    seed: int = setting(0, "first seed: the fakes of a class use seeds SEED .. SEED + N_PER_CLASS - 1, each drawn "
                           "as NVIDIA's generate.py draws it, so a seed is the same image everywhere")
    truncation_psi: float = setting(1.0, "truncation psi: 1 keeps the full variety, smaller values (e.g. 0.7) "
                                         "give more typical-looking images", aliases=("--psi",))
    runs: Optional[List[str]] = setting(
        None, "the runs that draw the fakes: run names, run folders or snapshot files, each serving the class in "
              "its name; CLASS=RUN pairs (notebook: a dict {class: run}) pick one per class; none = the newest "
              "run of each class", metavar="RUN")
    classes: Tuple[str, ...] = setting(CLASSES, "classes to make and to filter", choices=CLASSES)
    allow_mixed_resolutions: bool = setting(
        False, "accept runs of different resolutions for the two classes (the table then mixes image sizes, "
               "which a classifier can learn to tell apart)")
    batch: int = setting(16, "images per generator call (64 is fine on a GPU)", unit="images")
    device: str = setting("auto", "where the generator runs: auto (the GPU when there is one), cpu, cuda, cuda:N")
    # --- finishing: every fake is saved as 8-bit grey, then sharpened ---
    sharpen_factor: float = setting(2.0, "PIL Sharpness factor: 1 leaves images unchanged, 2 as in the original "
                                         "work", aliases=("--sharpen",))
    contrast: Optional[float] = setting(None, "PIL Contrast factor applied after sharpening, e.g. 1.2; none "
                                              "leaves the contrast as it is")
    # --- grids: cut fakes out of snapshot grids, as the original work did ---
    cut_grids: bool = setting(False, "also cut the fakes grid saved with each chosen snapshot into single images")
    grids: Optional[List[str]] = setting(None, "grid images (fakes*.png) to cut into fakes instead of generating",
                                         aliases=("--grid",), notebook=False, metavar="PNG")
    grid_class: Optional[str] = setting(None, "the class the images given in GRIDS show", choices=CLASSES,
                                        notebook=False)
    tile_size: Optional[int] = setting(None, "side of one tile of GRIDS; none = the resolution in the run's "
                                             "training_options.json", unit="px", notebook=False)
    rows: Optional[int] = setting(None, "rows of tiles in GRIDS (with COLS, instead of TILE_SIZE)", notebook=False)
    cols: Optional[int] = setting(None, "columns of tiles in GRIDS (with ROWS, instead of TILE_SIZE)",
                                  notebook=False)
    # --- filters: a dropped fake keeps its file, the augmented table leaves it out ---
    exclude_memorised: bool = setting(True, "drop fakes that are (near) copies of a real training image of their "
                                            "class: they could leak a patient's X-ray")
    memorisation_threshold: Optional[float] = setting(
        None, "RMS difference below which a fake counts as a copy of a real image; none = mura_aug.metrics' "
              "adaptive rule (a fraction of the typical gap between two real images)", unit="grey level 0-1")
    dedupe_threshold: Optional[float] = setting(
        None, "drop a fake closer than this to an earlier kept one (mean absolute difference of "
              f"{DUPLICATE_THUMB_PX} px thumbnails), e.g. 3; none = no duplicate check", unit="grey levels 0-255",
        aliases=("--dedupe",))
    drop_fraction: float = setting(0.0, "share of each class's remaining fakes with the lowest realism score "
                                        "(the discriminator's) to drop, e.g. 0.1", unit="fraction 0-1")
    min_score: Optional[float] = setting(None, "also drop every fake whose realism score (a D logit, or a "
                                               "classifier's confidence when one scores) is below this; none = "
                                               "no such floor")
    discriminator: Optional[str] = setting(None, "state-*kimg.pt or NVlabs .pkl whose D scores realism; none = "
                                                 "the state saved with each class's snapshot (GRIDS need one)",
                                           metavar="FILE")
    # --- notebook only ---
    show_widgets: bool = setting(True, "end notebook 05 with the classroom widgets (generator explorer, snapshot "
                                       "browser, real-or-fake quiz)", cli=False, stored=False)

    def check(self) -> "SynthSettings":
        super().check()
        self.runs = _normalise_runs(self.runs)
        self._at_least("n_per_class", 0, "Ask for 0 or more images per class.")
        self._at_least("batch", 1, "Use 1 or more (16-64 on a GPU).")
        if not 0 <= self.seed or self.seed + self.n_per_class > SEED_LIMIT:
            raise UserError(f"SEED = {self.seed} with N_PER_CLASS = {self.n_per_class}: seeds "
                            f"{self.seed}..{self.seed + self.n_per_class - 1} are out of range.",
                            f"Use seeds from 0 to {SEED_LIMIT - 1} ({flag_name('seed')}).")
        for name in ("sharpen_factor", "contrast", "dedupe_threshold"):
            self._at_least(name, 0, "Use 1 for no change." if name != "dedupe_threshold" else "Use e.g. 3.")
        for name in ("tile_size", "rows", "cols"):
            self._at_least(name, 1, "Use a whole number of 1 or more.")
        if not 0 <= self.drop_fraction < 1:
            self._refuse("drop_fraction", "Use a share from 0 up to (not including) 1, e.g. 0.1 for the worst 10 %.")
        if self.memorisation_threshold is not None and not 0 < self.memorisation_threshold <= 1:
            self._refuse("memorisation_threshold", "Use an RMS difference in (0, 1], or none for the adaptive rule.")
        if not self.classes:
            self._refuse("classes", f"Name at least one of {', '.join(CLASSES)}.")
        if self.grids and self.grid_class is None:
            raise UserError("Cutting GRIDS needs GRID_CLASS: which class the grid images show.",
                            f"Add {flag_name('grid_class')} positive or {flag_name('grid_class')} negative.")
        return self

    def filters_asked(self) -> List[str]:
        """The filters these settings run, in the order they judge a fake (for the manifest and messages)."""
        asked = []
        if self.exclude_memorised:
            asked.append("memorisation")
        if self.dedupe_threshold is not None:
            asked.append(f"near-duplicates < {self.dedupe_threshold:g}")
        if self.drop_fraction > 0:
            asked.append(f"least realistic {self.drop_fraction:.0%}")
        if self.min_score is not None:
            asked.append(f"score < {self.min_score:g}")
        return asked

    @property
    def needs_scorer(self) -> bool:
        return self.drop_fraction > 0 or self.min_score is not None

    def _at_least(self, name: str, low: float, fix: str) -> None:
        value = getattr(self, name)
        if value is not None and (isinstance(value, bool) or value < low):
            self._refuse(name, f"{fix} ({flag_name(name)} on the command line).")

    def _refuse(self, name: str, fix: str) -> None:
        raise UserError(f"{parameter_name(name)} = {getattr(self, name)!r} is not allowed.", fix)


def _normalise_runs(runs) -> RunsSpec:
    """None, a list of runs, or {class: run}: `CLASS=RUN` strings (the command line's form) become a dict."""
    if runs is None or isinstance(runs, dict):
        if isinstance(runs, dict) and any(cls not in CLASSES for cls in runs):
            raise UserError(f"RUNS names an unknown class ({', '.join(map(str, runs))}).",
                            f"Use the classes {', '.join(CLASSES)} as keys.")
        return runs
    runs = [str(runs)] if isinstance(runs, str) else [str(run) for run in runs]
    if not runs:
        return None
    pairs = ["=" in run for run in runs]
    if all(pairs):
        return _normalise_runs(dict(run.split("=", 1) for run in runs))
    if any(pairs):
        raise UserError("RUNS mixes CLASS=RUN pairs with plain runs.", f"Use either form in {flag_name('runs')}, "
                        "not both.")
    return runs
