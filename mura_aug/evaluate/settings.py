"""The settings of stage 06 (`EvalSettings`): every default once, with its unit and help text.

The command line (`evaluate/cli.py`), notebook 06's parameters cell and the parameter table of
docs/stage_06_evaluate.md are made from this declaration (see mura_aug.settings). A few settings shape the
training of a run (`FINGERPRINT_KEYS`): they are stored with every run, and a rerun continues or skips a
run only when they match.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

from mura_aug.errors import UserError
from mura_aug.prepare.mura import DEFAULT_BODY_PART, check_body_part
from mura_aug.settings import StageSettings, flag_name, parameter_name, setting

ARCHS = ("densenet169", "resnet50", "tiny")
PRETRAINED_ARCHS = ("densenet169", "resnet50")  # torchvision has ImageNet weights for these
ARMS = ("baseline", "augmented")
PRETRAINED_LEARNING_RATE = 1e-4  # Adam step of the MURA paper (fine-tuning ImageNet weights)
TINY_LEARNING_RATE = 1e-3  # the tiny CNN learns from scratch and needs a larger step
# The names under which result.json and checkpoint.pt of every run store the settings that shaped it. They
# are the stored format: renaming one would make every existing run look different, and a rerun of an
# existing experiment would refuse to continue it instead of skipping its finished runs.
FINGERPRINT_KEYS = ("arch", "pretrained", "image_size", "batch_size", "learning_rate", "lr_patience",
                    "early_stop_patience", "val_fraction", "rotation_deg")


@dataclasses.dataclass
class EvalSettings(StageSettings):
    """Every choice of stage 06. The fields of FINGERPRINT_KEYS are stored with each run (see `fingerprint`);
    the others (epochs, seeds, synth_ratio, arms, n_boot, workers, device) may change between calls."""

    body_part: str = setting(DEFAULT_BODY_PART, "MURA body part prepared by stage 01 (SHOULDER works too)")
    arch: str = setting("densenet169", "classifier: densenet169 (the MURA paper's), resnet50, or tiny (a small "
                        "CNN for CPU demos)", choices=ARCHS)
    pretrained: bool = setting(True, "start from ImageNet weights (torchvision's, downloaded once); off trains "
                               "from scratch (offline; tiny has no weights: the command line turns them off "
                               "for --arch tiny by itself, a notebook needs PRETRAINED False)")
    image_size: int = setting(224, "side of the square network input (320 in the MURA paper, 64 for CPU demos)",
                              unit="px")
    epochs: int = setting(12, "most passes over the training images per run; early stopping usually ends a "
                          "run sooner")
    batch_size: int = setting(16, "images per step, at least 2 (batch normalisation); lower it if the GPU runs "
                              "out of memory")
    learning_rate: Optional[float] = setting(None, f"Adam step size; none: {PRETRAINED_LEARNING_RATE:g} (MURA paper), "
                                             f"{TINY_LEARNING_RATE:g} for tiny", aliases=("--lr",))
    lr_patience: int = setting(0, "more epochs without a lower internal-validation loss before the learning "
                               "rate is divided by 10 (0: after every such epoch, as in the MURA paper)",
                               unit="epochs")
    early_stop_patience: int = setting(3, "epochs without a lower internal-validation loss before a run stops "
                                       "early", unit="epochs", aliases=("--patience",))
    val_fraction: float = setting(0.1, "share of training patients held out for early stopping, the "
                                  "learning-rate decay and the tuned threshold (MURA valid is never used)")
    rotation_deg: float = setting(30.0, "training augmentation: random rotation within plus or minus this "
                                  "angle (and a random horizontal flip)", unit="degrees")
    seeds: int = setting(3, "runs per arm, with seeds 0 to n-1: one seed cannot tell an effect from luck (a "
                         "notebook may give a list of seeds instead, e.g. [3, 4])")
    synth_ratio: float = setting(1.0, "synthetic training images per real training image in the augmented arm "
                                 "(capped by what stage 05 made)")
    arms: Tuple[str, ...] = setting(ARMS, "arms to train; the comparison needs both", choices=ARMS)
    n_boot: int = setting(1000, "bootstrap resamples of the studies for every 95% interval, at least 10")
    workers: int = setting(2, "image-loading processes (Colab has 2 CPU cores; 0: in the main process)")
    device: str = setting("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N")

    # --- derived values ---------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate in use: a small network trained from scratch needs a larger step than a pretrained one."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return TINY_LEARNING_RATE if self.arch == "tiny" else PRETRAINED_LEARNING_RATE

    @property
    def seed_values(self) -> List[int]:
        """The seeds of the runs: SEEDS is a count (3 -> [0, 1, 2]) or the list of seeds itself."""
        if isinstance(self.seeds, (list, tuple)):
            return [int(seed) for seed in self.seeds]
        return list(range(int(self.seeds)))

    def fingerprint(self) -> Dict[str, object]:
        """The settings a finished or partial run must share with a rerun that continues it."""
        return {key: (self.lr if key == "learning_rate" else getattr(self, key)) for key in FINGERPRINT_KEYS}

    @property
    def experiment_name(self) -> str:
        return f"{self.arch}-{self.image_size}px-{'imagenet' if self.pretrained else 'scratch'}"

    # --- checks -----------------------------------------------------------------------------------
    def check(self) -> "EvalSettings":
        """Refuse impossible values with a message naming the setting (notebook parameter and flag)."""
        super().check()
        self.body_part = check_body_part(self.body_part)
        self.arms = tuple(self.arms)
        if not 16 <= int(self.image_size) <= 1024:
            _bad("image_size", self.image_size, "Use 224 (default), 320 (MURA paper) or 32-64 for CPU demos.")
        if self.pretrained and self.arch not in PRETRAINED_ARCHS:
            _bad("pretrained", self.pretrained, f"ARCH {self.arch!r} has no pretrained weights: set PRETRAINED False "
                 "(on the command line it is off by itself for this ARCH).")
        if self.arch in PRETRAINED_ARCHS and self.image_size < 32:
            _bad("image_size", self.image_size, f"{self.arch} needs at least 32 px; use ARCH 'tiny' below that.")
        if int(self.epochs) < 1:
            _bad("epochs", self.epochs, "Use 1 or more.")
        if int(self.batch_size) < 2:
            _bad("batch_size", self.batch_size, "Use 2 or more (batch normalisation needs it).")
        if not _valid_seeds(self.seeds):
            _bad("seeds", self.seeds, "Use a number of seeds (3 by default) or a list of distinct whole numbers.")
        if self.synth_ratio < 0:
            _bad("synth_ratio", self.synth_ratio, "Use 0 or more synthetic images per real one.")
        if not 0 < self.val_fraction < 0.5:
            _bad("val_fraction", self.val_fraction, "Use a share of patients such as 0.1.")
        if not self.arms:
            _bad("arms", self.arms, f"Use one or both of {', '.join(ARMS)}.")
        if self.lr <= 0:
            _bad("learning_rate", self.learning_rate, "Use a positive learning rate, or none for the default.")
        if self.lr_patience < 0:
            _bad("lr_patience", self.lr_patience, "Use 0 or more epochs.")
        if self.early_stop_patience < 1:
            _bad("early_stop_patience", self.early_stop_patience, "Use 1 or more epochs.")
        if self.n_boot < 10:
            _bad("n_boot", self.n_boot, "Use 10 or more resamples (1000 for reported results).")
        if self.workers < 0:
            _bad("workers", self.workers, "Use 0 (load in the main process) or more processes.")
        return self


def _valid_seeds(seeds) -> bool:
    if isinstance(seeds, bool):
        return False
    if isinstance(seeds, int):
        return seeds >= 1
    return (isinstance(seeds, (list, tuple)) and len(seeds) > 0 and len(set(seeds)) == len(seeds)
            and all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds))


def _bad(name: str, value, fix: str) -> None:
    raise UserError(f"{parameter_name(name)} = {value!r} is not valid ({flag_name(name)} on the command line).",
                    fix)
