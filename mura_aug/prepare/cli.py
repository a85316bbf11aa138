"""`python -m mura_aug prepare` (stage 01) and `python -m mura_aug make-demo-data` on the command line.

Both parsers are made from their settings (prepare/settings.py), so an option's name, type, default and help
have one source; `prepare` then calls the same `stage.run_stage` as notebook 01.
"""
from __future__ import annotations

import argparse

from mura_aug.errors import UserError
from mura_aug.prepare import stage
from mura_aug.prepare.settings import DemoDataSettings, PrepareSettings
from mura_aug.settings import flag_name
from mura_aug.workspace import DEFAULT_LOCAL_ROOT


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, metavar="DIR",
                        help=f"workspace folder (default: Google Drive in Colab, {DEFAULT_LOCAL_ROOT} elsewhere)")
    PrepareSettings.add_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_prepare(args: argparse.Namespace) -> int:
    settings = PrepareSettings.from_args(args)
    if settings.mura_path is None:
        # Only notebooks generate demo data without a path: a forgotten option must not fill a real
        # workspace with generated X-rays.
        raise UserError("No MURA path was given.",
                        f"Pass {flag_name('mura_path')} with the MURA-v1.1 folder, its parent or MURA-v1.1.zip (or "
                        "generate demo data first with python -m mura_aug make-demo-data --out DIR).")
    summary = stage.run_stage(args.workspace, settings, progress=not args.no_progress)
    print(stage.format_summary(summary))
    return 0


def add_make_demo_data_arguments(parser: argparse.ArgumentParser) -> None:
    DemoDataSettings.add_arguments(parser)


def run_make_demo_data(args: argparse.Namespace) -> int:
    from mura_aug.prepare.demo_data import make_demo_mura

    settings = DemoDataSettings.from_args(args)
    path = make_demo_mura(settings.out, patients=settings.patients, seed=settings.seed,
                          body_parts=settings.body_parts, as_zip=settings.as_zip, progress=True,
                          subtlety=settings.subtlety, positive_share=settings.positive_share,
                          like_mura=settings.like_mura is not None, scale=settings.scale, workers=settings.workers)
    print(f"demo MURA written: {path}")
    return 0
