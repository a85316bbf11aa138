"""`python -m mura_aug runs`: the training runs of a workspace and their snapshots (kimg, date, size)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, help="workspace folder (default: Drive in Colab, ./workspace)")
    parser.add_argument("--run", default=None, help="show only this run's snapshots")


def runs_table(workspace) -> str:
    """A plain-text table of every run and its snapshots."""
    from mura_aug.gan.snapshot import human_bytes, list_runs, list_snapshots

    runs = list_runs(workspace)
    if not runs:
        return "no training runs yet (python -m mura_aug train --label positive ... starts one)"
    lines = []
    for run in runs:
        target = f" / {run.target_kimg:g}" if run.target_kimg else ""
        lines.append(f"{run.name}: {run.kimg:g}{target} kimg, {run.snapshots} snapshots "
                     f"({run.states} resumable), {human_bytes(run.size_bytes)}")
        for snap in list_snapshots(run.path):
            files = "+".join(kind for kind, path in (("state", snap.state_path), ("network", snap.network_path),
                                                     ("fakes", snap.fakes_path)) if path is not None)
            lines.append(f"    {snap.kimg:>10.3f} kimg  {snap.date}  {human_bytes(snap.size_bytes):>9}  {files}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from mura_aug.workspace import resolve_workspace

    workspace = resolve_workspace(args.workspace, create=False)
    text = runs_table(workspace)
    if args.run:
        blocks = [block for block in text.split("\n") if block]
        keep, inside = [], False
        for line in blocks:
            if not line.startswith(" "):
                inside = line.startswith(args.run + ":")
            if inside:
                keep.append(line)
        text = "\n".join(keep) or f"no run named {args.run}"
    print(text)
    return 0
