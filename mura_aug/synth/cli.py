"""`python -m mura_aug synth`: stage 05 from the command line, through `stage.run_stage` like notebook 05.

Every option but --workspace and --no-progress is a SynthSettings field (`--n-per-class` = N_PER_CLASS =
n_per_class); older spellings (--psi, --sharpen, --dedupe, --grid) still work.
"""
from __future__ import annotations

import argparse

from mura_aug.synth.settings import SynthSettings
from mura_aug.workspace import DEFAULT_LOCAL_ROOT, resolve_workspace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None,
                        help=f"workspace folder (default: Google Drive in Colab, {DEFAULT_LOCAL_ROOT} elsewhere)")
    SynthSettings.add_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from mura_aug.synth import stage

    settings = SynthSettings.from_args(args)
    result = stage.run_stage(resolve_workspace(args.workspace), settings, progress=not args.no_progress)
    for line in result.report():
        print(line)
    return 0
