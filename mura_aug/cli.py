"""`python -m mura_aug <command> ...`: every stage without a notebook, through the same code path.

Each command lives in its own module, imported only when that command runs (so `--help` is fast and a
stage's heavy imports do not slow the others). A command module provides:

    def add_arguments(parser: argparse.ArgumentParser) -> None
    def run(args: argparse.Namespace) -> int | None     # None means 0

UserError ends the program with its message and exit status 2, without a traceback; so does a file-system
error (an OSError: a read-only or full disk, a dropped mount), as a UserError naming the path and the fix.
An interrupt (Ctrl-C, SIGTERM) ends it with status 130, whatever was saved.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, List, Optional, Tuple

from mura_aug.errors import UserError, from_os_error

# command -> (module that implements it, one-line help)
COMMANDS: Dict[str, Tuple[str, str]] = {
    "make-demo-data": ("mura_aug.prepare.cli", "generate a MURA-v1.1-shaped tree of synthetic radiographs"),
    "prepare": ("mura_aug.prepare.cli", "stage 01: index MURA, copy images, build GAN datasets"),
    "train": ("mura_aug.gan.cli", "stages 02-04: train (or resume) StyleGAN2-ADA on one class"),
    "runs": ("mura_aug.gan.cli", "list training runs and their snapshots"),
    "synth": ("mura_aug.synth.cli", "stage 05: generate / cut, grey, sharpen, filter and register synthetic X-rays"),
    "evaluate": ("mura_aug.evaluate.cli", "stage 06: baseline vs augmented classifier, study-level metrics"),
    "metrics": ("mura_aug.gan.measure", "FID / KID / diversity / memorisation of a snapshot's fakes"),
    "demo": ("mura_aug.notebooks.series", "run the whole series 01-06 on generated demo data"),
    "notebooks": ("mura_aug.notebooks.series", "run the notebook series (or a subset) with papermill"),
}


def build_parser(command: str) -> argparse.ArgumentParser:
    module_name, help_text = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m mura_aug {command}", description=help_text)
    adder = getattr(module, f"add_{command.replace('-', '_')}_arguments", None) or module.add_arguments
    adder(parser)
    return parser


def _usage() -> str:
    lines = ["usage: python -m mura_aug <command> [options]   (or --version)", "", "commands:"]
    lines += [f"  {name:<16}{help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "python -m mura_aug <command> --help shows a command's options."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from mura_aug import __version__

        print(f"mura_aug {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        parser = build_parser(command)
        args = parser.parse_args(rest)
        module = importlib.import_module(COMMANDS[command][0])
        runner = getattr(module, f"run_{command.replace('-', '_')}", None) or module.run
        status = runner(args)
        return int(status or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file-system error no stage turned into a UserError: still a message, no traceback
        if exc.errno is None:
            raise
        print(f"error: {from_os_error(exc, f'running {command}')}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a stage that saved its work first says what it kept
        print(f"interrupted: {exc}" if str(exc) else "interrupted", file=sys.stderr)
        return 130
