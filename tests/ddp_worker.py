"""One torchrun process of tests/test_ddp.py: `python -m mura_aug train` as torchrun would run it, plus a record
of what this process wrote inside the workspace and printed.

    torchrun ... tests/ddp_worker.py REPORT_DIR WORKSPACE [train options ...]

Writes REPORT_DIR/rank<RANK>.json = {"status", "writes": [[event, path], ...], "stdout"}. Writes are seen with a
Python audit hook (open for writing, rename/replace, remove, mkdir, utime, mkstemp), which catches every file
operation of mura_aug's own code, so "rank 1 wrote nothing" is a real observation, not an assumption.
"""
import io
import json
import os
import sys

WRITE_EVENTS = ("os.rename", "os.replace", "os.remove", "os.rmdir", "os.mkdir", "os.utime", "os.chmod",
                "os.truncate", "os.link", "os.symlink", "shutil.copyfile", "shutil.rmtree", "tempfile.mkstemp",
                "tempfile.mkdtemp")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main() -> int:
    report_dir, workspace, train_options = sys.argv[1], sys.argv[2], sys.argv[3:]
    rank = int(os.environ.get("RANK", "0"))
    root = os.path.realpath(workspace) + os.sep
    writes = []

    def inside_workspace(path) -> bool:
        if isinstance(path, int) or path is None:
            return False
        try:
            return os.path.realpath(os.path.abspath(os.fsdecode(path))).startswith(root)
        except (TypeError, ValueError):
            return False

    def audit(event, args):
        if event == "open":
            path, mode, flags = args
            writing = any(m in mode for m in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            if writing and inside_workspace(path):
                writes.append([event, os.fsdecode(path)])
        elif event in WRITE_EVENTS:
            touched = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if any(inside_workspace(a) for a in touched):
                writes.append([event, os.fsdecode(touched[0])])

    sys.addaudithook(audit)
    captured = io.StringIO()
    if rank != 0:
        sys.stdout = captured  # what a non-zero rank prints is kept for the test (it should print nothing)
    status = 1
    try:
        from mura_aug import cli

        status = cli.main(["train", "--workspace", workspace, *train_options])
    finally:
        sys.stdout = sys.__stdout__
        report = {"status": status, "writes": writes, "stdout": captured.getvalue()}
        with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(report, handle)
    return status


if __name__ == "__main__":
    sys.exit(main())
