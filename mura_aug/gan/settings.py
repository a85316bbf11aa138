"""The settings of stages 02-04 (training, resuming): every option of `python -m mura_aug train` once.

One name per setting everywhere: the flag `--keep`, the notebook parameter `KEEP` and the key `keep` in a
run's training_options.json and states (see mura_aug.settings). Runs written before this version stored
`keep_states`; they are read under the new name, so they still resume.

What a resume keeps is one rule, `RunSettings.for_resume(stored, given)`:
- the settings that shape the training (SHAPING: the data, the networks, the batch, the loss, the seed, the
  tick length, the precision) are the run's: its weights were trained with them. One given with another
  value is reported in one line, and the run's is kept;
- the settings that control this call (RUN_CONTROL: how long, how often to snapshot and measure, what to keep,
  where and how fast to run) are what the call gave, else the run's, else the default.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from mura_aug.devices import AMP_MODES
from mura_aug.errors import UserError
from mura_aug.gan.configs import CONFIG_NAMES
from mura_aug.gan.dataset import LABELS
from mura_aug.settings import StageSettings, check_resolution, flag_name, parameter_name, setting
from mura_aug.workspace import check_name

# mura_aug.metrics.features.EXTRACTOR_NAMES and its DEFAULT_EXTRACTOR, written out: importing the metrics
# package here would load the measuring code into every training process (tests keep the two equal).
METRICS_EXTRACTORS = ("standard", "inception", "offline")
DEFAULT_METRICS_EXTRACTOR = "standard"
# Stored names of runs written before this version -> the setting's name.
RENAMED = {"keep_states": "keep"}
# Older runs stored the mixed-precision setting in several spellings (and the dtype it resolved to).
_STORED_AMP = {None: "auto", True: "auto", False: "off", "bfloat16": "bf16", "float16": "fp16", "fp32": "off",
               "no": "off"}


@dataclasses.dataclass
class RunSettings(StageSettings):
    """Everything `python -m mura_aug train` and notebooks 02-04 can set (the docs' table is made from it).
    The notebooks declare the settings with notebook=True (a test checks their cells against these); the
    others are for the command line and Python callers, the notebooks keep their defaults."""

    label: str = setting("positive", "class to learn: positive (abnormal), negative (normal), or both (one "
                         "class-conditional GAN of the two)", choices=LABELS)
    body_part: str = setting("XR_SHOULDER", "MURA body part prepared in stage 01")
    cfg: str = setting("auto", "network and optimizer configuration: auto (NVIDIA's default), paper256, stylegan2, "
                       "or tiny (small enough for CPU demos)", choices=CONFIG_NAMES)
    resolution: Optional[int] = setting(None, "training resolution, a power of two from 16 to 1024; none = the "
                                        "largest resolution stage 01 prepared", unit="px")
    kimg: float = setting(1000.0, "train until this many thousand real images were shown to D (fractions "
                          "allowed; NVIDIA trains 5000-25000)", unit="kimg")
    kimg_per_tick: float = setting(4.0, "thousand images per tick, i.e. per stats line (fractions allowed, e.g. "
                                   "0.1 on a CPU)", unit="kimg")
    snap: int = setting(10, "ticks between snapshots (at 256 px a training state is about 630 MB, a generator "
                        "file about 89 MB)", unit="ticks")
    # 30 minutes on the command line too: at auto-256 on a T4 (60-150 s/kimg, docs/stage_02_04_train.md) SNAP
    # alone means a snapshot every 40-100 minutes, so a killed VM lost up to that much; a state write of ~630 MB
    # takes seconds on a local disk and ~10-30 s on Drive, under 2 % of 30 minutes. Short CPU runs snapshot by
    # SNAP long before 30 minutes pass, so it changes nothing there.
    snap_minutes: Optional[float] = setting(30.0, "also snapshot at the first tick boundary after this many "
                                            "minutes since the last snapshot (bounds what a killed session "
                                            "loses); none = only every SNAP ticks", unit="minutes")
    staging: str = setting("auto", "write each snapshot to local disk first, then copy it to the workspace and "
                           "verify it, retrying while the workspace fails (training goes on): auto (when the "
                           "workspace is on Google Drive in Colab), on (any slow or network mount), off",
                           choices=("auto", "on", "off"), notebook=False)
    keep: int = setting(3, "training states kept (the newest); older ones are deleted after each snapshot",
                        unit="states")
    keep_networks_every: int = setting(1, "keep the generator file of every N-th snapshot (and of the newest)",
                                       unit="snapshots")
    batch: Optional[int] = setting(None, "images per iteration, all GPUs together; none = the config's (auto at "
                                   "256 px: 16)", unit="images")
    batch_gpu: Optional[int] = setting(None, "images per forward pass on one GPU (gradient accumulation: the same "
                                       "training in less memory); none = the config's", unit="images", notebook=False)
    gamma: Optional[float] = setting(None, "R1 regularisation weight; none = the config's (auto: 0.0002 x "
                                     "resolution^2 / batch)", notebook=False)
    mirror: bool = setting(False, "also train on x-flipped copies of the images", notebook=False)
    seed: int = setting(0, "random seed of the initial weights, the latents and the data order; the fakes grid "
                        "of each snapshot shows the images of seeds SEED, SEED+1, ...")
    resume: Optional[str] = setting(None, "continue a run: latest (the newest state of this run that loads; a new "
                                    "run when it has none), or a state file, run folder or NVIDIA .pkl; none = a "
                                    "new run (refused where the run folder holds snapshots)",
                                    notebook_default="latest", stored=False)
    transfer: Optional[str] = setting(None, "start a new run from another network's weights: ffhq256 (NVIDIA's, "
                                      "downloaded once) or a .pkl / state / network file or run folder; "
                                      "resume latest wins once the run has a state")
    freeze_d: int = setting(0, "Freeze-D: the highest-resolution discriminator blocks left untrained (with "
                            "transfer)", unit="blocks", notebook=False)
    max_minutes: Optional[float] = setting(None, "stop with a final snapshot after this many minutes of this "
                                           "call; none = no limit (the notebooks stop before Colab ends a session "
                                           "after about 12 h)", unit="minutes", notebook_default=690.0)
    metrics_every: int = setting(0, "compute FID/KID (with metrics_extractor's features), precision/recall and "
                                 "diversity of G_ema every N-th snapshot and add them to that tick's line in "
                                 "stats.jsonl (0 = never; training waits meanwhile)", unit="snapshots")
    metrics_fakes: int = setting(500, "fakes generated per such measurement", unit="images", notebook=False)
    metrics_extractor: str = setting(
        DEFAULT_METRICS_EXTRACTOR, "features of those FIDs: standard (NVIDIA's FID network, downloaded once into "
        "the workspace's weights/ folder; where it cannot be had the offline one, with a warning), inception, or "
        "offline (no download, the same on every machine; its FIDs compare only with other offline ones)",
        choices=METRICS_EXTRACTORS)
    device: Optional[str] = setting(None, "cpu, cuda or cuda:1; none = the GPU when there is one (under "
                                    "torchrun: cpu or cuda, each process takes cuda:LOCAL_RANK)")
    amp: str = setting("auto", "precision: fp16 (NVIDIA's: the top 4 resolutions' blocks in float16, clamped, with "
                       "a grad scaler), bf16 (autocast over the whole step, also on a CPU), off (float32), or auto "
                       "(CUDA: bf16 on GPUs that have it natively, Ampere or newer, else fp16; CPU: off)",
                       choices=AMP_MODES, notebook=False)
    compile: bool = setting(False, "torch.compile the networks for the loss (CUDA, torch >= 2.1)", notebook=False)
    channels_last: bool = setting(False, "channels-last memory format for D's inputs (CUDA)", notebook=False)
    run: Optional[str] = setting(None, "run folder name under data/experiments; none = BODY-label-cfg-res",
                                 notebook=False)
    progress: bool = setting(True, "show a progress bar", notebook=False)
    cpu_ok: bool = setting(False, "train a full-size network (auto, paper256, stylegan2) at 128 px or more on a "
                           "CPU anyway: without it such a run stops at once with the time it would take (weeks) "
                           "and how to switch to a GPU", stored=False)
    # Not a setting: the names the user set (CLI options typed, notebook parameters declared). A resume keeps
    # the run's value of every other run-control setting. None = all of them (a RunSettings built in Python).
    given_names: Optional[Tuple[str, ...]] = dataclasses.field(default=None, compare=False, repr=False)

    SHAPING = ("label", "body_part", "cfg", "resolution", "kimg_per_tick", "batch", "batch_gpu", "gamma", "mirror",
               "seed", "transfer", "freeze_d", "amp")
    RUN_CONTROL = ("kimg", "snap", "snap_minutes", "staging", "keep", "keep_networks_every", "max_minutes",
                   "metrics_every", "metrics_fakes", "metrics_extractor", "device", "compile", "channels_last",
                   "progress", "cpu_ok")
    # The other two say what a call does: `resume` is the call's own; `run` names the run (a resumed run's).

    # --- what the user gave ---------------------------------------------------------------------------
    @classmethod
    def from_args(cls, args, **extra) -> "RunSettings":
        typed = cls.given(args)
        return cls(**{**typed, **extra}, given_names=tuple(typed)).check()

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any], **extra) -> "RunSettings":
        by_name = {parameter_name(f.name): f.name for f in cls.settings_fields()}
        values = {by_name[key]: value for key, value in parameters.items() if key in by_name}
        return cls(**{**values, **extra}, given_names=tuple(values)).check()

    def given_values(self) -> Dict[str, Any]:
        """name -> value of the settings the user set (all of them when `given_names` is None); `resume`, what
        this call does, always counts as given."""
        names = [f.name for f in self.settings_fields()] if self.given_names is None else self.given_names
        return {name: getattr(self, name) for name in (*names, "resume")}

    # --- stored settings and the resume rule -----------------------------------------------------------
    @classmethod
    def optional(cls, name: str) -> bool:
        """Whether None is a value of setting `name` (for the others None can only mean 'not set')."""
        annotation = typing.get_type_hints(cls)[name]
        return type(None) in typing.get_args(annotation)

    @classmethod
    def stored_values(cls, stored: Mapping[str, Any]) -> Dict[str, Any]:
        """The settings in a run's stored dict (training_options.json or a state's options), by name: older
        names renamed, older amp spellings read, a null where null is no value left out. Runs written before
        this version stored the device they ran on, not the setting: theirs is left out too (a Colab VM's
        GPU says nothing about the next machine)."""
        names = {f.name for f in cls.settings_fields()}
        values = {}
        for key, value in stored.items():
            name = RENAMED.get(key, key)
            if name in names and (value is not None or cls.optional(name)):
                values[name] = value
        if "amp" in stored:
            values["amp"] = _STORED_AMP.get(stored["amp"], stored["amp"])
        if "keep_states" in stored:
            values.pop("device", None)
        return values

    @classmethod
    def for_resume(cls, stored: Mapping[str, Any], given: Mapping[str, Any],
                   report: Optional[Callable[[str], None]] = print) -> "RunSettings":
        """The settings a resumed run continues with (the rule is in the module docstring): shaping settings
        from `stored` (the run's), run-control settings from `given`, else `stored`, else the default. A given
        None counts as not given where None is no value of the setting (notebook 04's KIMG = None keeps the
        run's target). `report` gets one line naming the given shaping values that were not used."""
        run = cls.stored_values(stored)
        values: Dict[str, Any] = {}
        ignored = []
        for name in cls.SHAPING:
            mine = given.get(name)
            if name in run:
                values[name] = run[name]
                if mine is not None and not _same(mine, run[name]):
                    ignored.append(f"{name} {_text(run[name])} (given {_text(mine)})")
            elif name in given:
                values[name] = mine
        for name in cls.RUN_CONTROL:
            if name in given and (given[name] is not None or cls.optional(name)):
                values[name] = given[name]
            elif name in run:
                values[name] = run[name]
        values["resume"] = given.get("resume")
        values["run"] = run.get("run", given.get("run"))
        if ignored and report is not None:
            report(f"resuming {values['run'] or 'the run'}: kept the run's own " + ", ".join(ignored)
                   + " (these shape the training; start a new run with --run NAME to change them)")
        return cls(**{k: v for k, v in values.items() if v is not None or cls.optional(k)}).check()

    # --- checks ------------------------------------------------------------------------------------------
    def check(self) -> "RunSettings":
        for field in self.settings_fields():
            if getattr(self, field.name) is None and not self.optional(field.name):
                raise UserError(f"The training setting {field.name} ({flag_name(field.name)} / "
                                f"{parameter_name(field.name)}) has no value.",
                                f"Give it one (the default is {self.default_of(field.name)!r}).")
        super().check()
        if self.resolution is not None:
            self.resolution = check_resolution(self.resolution, "RESOLUTION")
        if self.run is not None:
            check_name("run", self.run)  # a name under data/experiments, never a path out of it
        rules = [
            ("kimg", self.kimg > 0, "a positive number of thousand images, e.g. 500"),
            ("kimg_per_tick", self.kimg_per_tick > 0, "a positive number, e.g. 4 (or 0.1 on a CPU)"),
            ("snap", self.snap >= 1, "a number of ticks >= 1"),
            ("snap_minutes", self.snap_minutes is None or self.snap_minutes > 0,
             "a positive number of minutes (or none: only every SNAP ticks)"),
            ("keep", self.keep >= 1, "at least 1 training state (or the run could not be resumed)"),
            ("keep_networks_every", self.keep_networks_every >= 1, "1 (every snapshot) or more"),
            ("batch", self.batch is None or self.batch >= 1, "a positive number of images"),
            ("batch_gpu", self.batch_gpu is None or self.batch_gpu >= 1, "a positive number of images"),
            ("gamma", self.gamma is None or self.gamma >= 0, "0 (no R1) or more"),
            ("freeze_d", self.freeze_d >= 0, "0 (off) or the number of D blocks to freeze"),
            ("max_minutes", self.max_minutes is None or self.max_minutes > 0, "a positive number of minutes"),
            ("metrics_every", self.metrics_every >= 0, "0 (off) or a number of snapshots"),
            ("metrics_fakes", self.metrics_fakes >= 2, "at least 2 fakes per measurement"),
        ]
        for name, ok, fix in rules:
            if not ok:
                raise UserError(f"The training setting {name} = {getattr(self, name)!r} ({flag_name(name)} / "
                                f"{parameter_name(name)}) is not valid.", f"Use {fix}.")
        if self.transfer and self.resume not in (None, "latest"):
            raise UserError("--resume and --transfer were both given.",
                            "Use --resume to continue a run (the whole state), --transfer to start a new run from "
                            "another network's weights; not both.")
        return self


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _text(value) -> str:
    return "none" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
