"""Run one notebook in a process of its own: how the series runner runs notebooks side by side.

    python -m mura_aug.notebooks.own_process TASK.json

TASK.json holds `source`, `output`, `parameters`, `cwd`, `log_output` (the arguments of
nbtools.execute_notebook) and `outcome`: the file this process writes when the notebook has ended, with
{"status": "ok" | "FAILED" | "interrupted", "error": the UserError's text or null}. The environment the
process is started with (e.g. OMP_NUM_THREADS) reaches the notebook's kernel unchanged.
"""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from mura_aug.errors import UserError
from mura_aug.notebooks import nbtools
from mura_aug.workspace import atomic_write_json


def run_task(task_file: Path) -> int:
    task = json.loads(Path(task_file).read_text(encoding="utf-8"))
    status, error = "ok", None
    try:
        nbtools.execute_notebook(task["source"], task["output"], parameters=task["parameters"], cwd=task["cwd"],
                                 progress=False, log_output=bool(task["log_output"]))
    except UserError as exc:
        status, error = "FAILED", str(exc)
    except KeyboardInterrupt:
        status = "interrupted"
    atomic_write_json(Path(task["outcome"]), {"status": status, "error": error})
    return 0 if status == "ok" else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    # The series runner stops a notebook with SIGTERM when Ctrl-C did not reach this process: the same
    # orderly stop as Ctrl-C (the executed copy is saved, the kernel shut down, the training's final snapshot
    # written), not an abrupt end that would leave the kernel running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(run_task(Path(sys.argv[1])))
