"""`python -m mura_aug evaluate`: stage 06 on the command line, the same `stage.run_stage` as notebook 06.

The options are made from EvalSettings (evaluate/settings.py); older spellings (`--lr`, `--patience`) are
aliases of the settings' own names (`--learning-rate`, `--early-stop-patience`).
"""
from __future__ import annotations

import argparse

from mura_aug.evaluate import stage
from mura_aug.evaluate.settings import PRETRAINED_ARCHS, EvalSettings
from mura_aug.workspace import DEFAULT_LOCAL_ROOT, resolve_workspace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, metavar="DIR",
                        help=f"workspace folder (default: Google Drive in Colab, {DEFAULT_LOCAL_ROOT} elsewhere)")
    EvalSettings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    given = EvalSettings.given(args)
    arch = given.get("arch", EvalSettings.default_of("arch"))
    if arch not in PRETRAINED_ARCHS and "pretrained" not in given:
        given["pretrained"] = False  # the command line's convenience: --arch tiny needs no --no-pretrained
    settings = EvalSettings(**given).check()
    summary = stage.run_stage(args.workspace, settings, progress=True)
    print(stage.comparison_frame(summary).round(3).to_string(index=False))
    for sentence in summary["verdict"]:
        print(sentence)
    workspace = resolve_workspace(args.workspace)
    print(f"results: {stage.experiment_folder(workspace, settings).path}")
    return 0
