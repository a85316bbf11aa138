"""`python -m mura_aug train` and `python -m mura_aug runs`: stages 02-04 from the command line, through the
same code path as the notebooks (gan.loop.train with RunSettings).

Several GPUs: `torchrun --nproc_per_node N -m mura_aug train ...` (gan.distributed). `--batch` stays the batch
of the whole run (split over the processes).
"""
from __future__ import annotations

import argparse

WORKSPACE_HELP = "workspace folder (default: Google Drive in Colab, ./workspace elsewhere)"


# --- train ---------------------------------------------------------------------------------------------

def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from mura_aug.gan.dataset import LABELS
    from mura_aug.gan.settings import RunSettings
    from mura_aug.settings import flag_name

    parser.add_argument("--workspace", default=None, help=WORKSPACE_HELP)
    # --label has no default on the command line: which class to learn is always said.
    parser.add_argument(flag_name("label"), dest="label", required=True, choices=LABELS,
                        help=RunSettings.__dataclass_fields__["label"].metadata["help"])
    RunSettings.add_arguments(parser, exclude=("label",))


def run_train(args: argparse.Namespace) -> int:
    from mura_aug.gan import loop, measure
    from mura_aug.gan.distributed import process_group_of_torchrun
    from mura_aug.gan.settings import RunSettings
    from mura_aug.workspace import resolve_workspace

    settings = RunSettings.from_args(args)
    # What the run will have (a resume keeps the run's own settings): its device, and its metrics callback.
    resolved = loop.resolved_settings(args.workspace, settings)
    on_snapshot = measure.snapshot_metrics(resolved, workspace=resolve_workspace(args.workspace))
    with process_group_of_torchrun(resolved.device) as rank:
        if rank == 0:
            print(loop.preflight(args.workspace, settings), flush=True)  # what a kill could cost, said once
        run_dir = loop.train(args.workspace, settings, on_snapshot=on_snapshot)
    if rank == 0:
        print(f"run folder: {run_dir}")
    return 0


# --- runs ----------------------------------------------------------------------------------------------

def add_runs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workspace", default=None, help=WORKSPACE_HELP)
    parser.add_argument("--run", default=None, help="show only this run's snapshots")


def runs_table(workspace, run: str = None) -> str:
    """A plain-text table of every run (or of `run`) and its snapshots (kimg, date, size, which files)."""
    from mura_aug.gan.snapshot import human_bytes, list_runs, list_snapshots

    runs = [info for info in list_runs(workspace) if run is None or info.name == run]
    if not runs:
        return f"no run named {run}" if run else \
            "no training runs yet (python -m mura_aug train --label positive ... starts one)"
    lines = []
    for info in runs:
        target = f" / {info.target_kimg:g}" if info.target_kimg else ""
        lines.append(f"{info.name}: {info.kimg:g}{target} kimg, {info.snapshots} snapshots "
                     f"({info.states} resumable), {human_bytes(info.size_bytes)}")
        for snap in list_snapshots(info.path):
            files = "+".join(kind for kind, path in (("state", snap.state_path), ("network", snap.network_path),
                                                     ("fakes", snap.fakes_path)) if path is not None)
            skipped = info.skipped.get(snap.state_path.name) if snap.state_path is not None else None
            note = f"  (state skipped: {skipped})" if skipped else ""
            lines.append(f"    {snap.kimg:>10.3f} kimg  {snap.date}  {human_bytes(snap.size_bytes):>9}  {files}{note}")
    return "\n".join(lines)


def run_runs(args: argparse.Namespace) -> int:
    from mura_aug.workspace import resolve_workspace

    print(runs_table(resolve_workspace(args.workspace), args.run))
    return 0
