"""Staged snapshots: training that goes on while the workspace's file system (Google Drive) misbehaves.

Reads and writes a run folder on the workspace and its staging folder on local disk
(workspace.staging_folder: `/content/mura_aug_staging/<run>-<key>` in Colab).

Drive's mount fails under load in ways a local disk does not: EIO, ENOTCONN after the mount dropped, ESTALE,
ETIMEDOUT, a rename that fails once and works on retry. When the workspace is marked unreliable (on Drive, or
`--staging on`), each snapshot's files (fakes grid, generator file, state) are written to the staging folder
first, with the same atomic writes and load-back check as a direct write, and then copied to the run folder:

  copy to a temporary name, fsync, read back and compare size and SHA-256 with the local file, rename;
  only then is the local file deleted.

A copy that fails is retried at once (RETRY_DELAYS), then at the following tick boundaries with a growing
pause (DEFER_SECONDS .. DEFER_MAX_SECONDS), and with more patience at the end of the call. A full workspace
(ENOSPC) first gets retention with one state (the newest verified one stays), then one more try. At most
`keep` states wait on local disk (older ones would be deleted by retention anyway); the newest local state is
kept until its copy is verified. Stats lines that cannot be appended wait in the staging folder's stats-pending.jsonl.

The staging folder is the queue: whatever file is in it has not reached the workspace yet, so a call killed
in the middle of a copy leaves the local file, and the next call (snapshot.load_newest_state looks there too)
resumes from it and copies it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from mura_aug.errors import UserError
from mura_aug.gan import snapshot
from mura_aug.workspace import (RunFolder, atomic_path, drive_vanished, file_sha256, is_unreliable,
                                staging_folder)

Log = Callable[[str], None]

# The errors a flaky network mount gives that a later try can get past. Any other OSError is retried too (the
# run must not end for it), only without the quick retries.
TRANSIENT = (errno.EIO, errno.ENOTCONN, errno.ESTALE, errno.ETIMEDOUT, errno.ENOSPC, errno.EAGAIN, errno.EBUSY)
RETRY_DELAYS = (0.2, 1.0)  # seconds before the 2nd and 3rd quick try of one copy (a rename failing once)
FINAL_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)  # seconds, at the end of a call (about 15 s more patience)
DEFER_SECONDS = 5.0  # after a failed round, the next tick boundary that tries again is at least this late
DEFER_MAX_SECONDS = 300.0  # the pause doubles per failed round up to this (a Drive outage lasts minutes)
CHUNK_BYTES = 8 * 2 ** 20  # copy and checksum buffer
# Test hook: seconds to sleep after a copy's bytes are on the workspace, before they are verified and renamed,
# so that a test can kill the process in the middle of a copy. Never set outside tests.
COPY_DELAY_ENV = "MURA_AUG_TEST_COPY_DELAY"
REMOUNT = ('Google Drive was unmounted. Stop the training cell (■) when you can, run `from google.colab import '
           'drive; drive.mount("/content/drive", force_remount=True)`, then run the notebook again '
           '(RESUME = "latest" continues from the local state and copies it to Drive)')


def copy_verified(source: Path, target: Path) -> None:
    """Copy `source` to `target` so that `target` is either as before or a verified copy: written to a
    temporary name, fsynced, read back and compared (size and SHA-256), then renamed. OSError on failure
    (ENOSPC included: atomic_path's disk-full UserError is given back as the OSError it came from)."""
    size = source.stat().st_size
    digest = hashlib.sha256()
    try:
        with atomic_path(target) as tmp:
            with open(source, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK_BYTES):
                    digest.update(chunk)
                    dst.write(chunk)
                dst.flush()
            delay = float(os.environ.get(COPY_DELAY_ENV, "0") or 0)
            if delay > 0:
                time.sleep(delay)
            if tmp.stat().st_size != size or file_sha256(tmp, CHUNK_BYTES) != digest.hexdigest():
                raise OSError(errno.EIO, f"the copy does not match the local file {source} (size or SHA-256)",
                              str(target))
    except UserError as exc:
        if isinstance(exc.__cause__, OSError):
            raise exc.__cause__ from None
        raise


def _order(path: Path) -> tuple:
    """Copy order: by kimg, and within a snapshot the small files first, the state last."""
    match = snapshot.SNAPSHOT_NAME.match(path.name)
    if not match:
        return (float("inf"), 3, path.name)
    return (float(match.group(2)), {"fakes": 0, "network": 1, "state": 2}[match.group(1)], path.name)


def _errno_text(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else type(exc).__name__
    return f"{name}: {exc.strerror or exc}"


class Stager:
    """The staged snapshots of one run folder (rank 0 of one `train` call). See the module docstring."""

    def __init__(self, run_dir: RunFolder, local: RunFolder, keep: int, keep_networks_every: int, log: Log):
        self.run_dir, self.local = run_dir, local
        self.keep, self.keep_networks_every, self.log = keep, keep_networks_every, log
        self.failed_rounds = 0
        self.next_try_at = 0.0  # time.time() before which a tick boundary does not try again
        self.reported: set = set()  # kimgs whose failure was already said (one message per snapshot)
        self.tries: Dict[str, int] = {}
        self.last_error: Optional[OSError] = None

    @classmethod
    def for_run(cls, run_dir: RunFolder, mode: str, keep: int, keep_networks_every: int,
                log: Log) -> Optional["Stager"]:
        """A Stager when `mode` is on, or auto and the run folder is on Drive, or when the staging folder still
        holds files of an earlier call; else None (snapshots go straight to the run folder)."""
        local = staging_folder(run_dir.path)
        leftover = local.path.is_dir() and any(local.path.iterdir())
        if mode == "off" and not leftover:
            return None
        if mode == "auto" and not is_unreliable(run_dir.path) and not leftover:
            return None
        local.path.mkdir(parents=True, exist_ok=True)
        snapshot.remove_stale_temporaries(local.path)
        stager = cls(run_dir, local, keep, keep_networks_every, log)
        if leftover:
            log(f"staged snapshots: {local.path} holds files not yet on the workspace; copying them")
        return stager

    # --- what waits ---------------------------------------------------------------------------------
    def pending(self) -> List[Path]:
        if not self.local.path.is_dir():
            return []
        return sorted((p for p in self.local.path.iterdir()
                       if p.is_file() and snapshot.SNAPSHOT_NAME.match(p.name)), key=_order)

    def newest_local_state(self) -> Optional[Path]:
        states = [info.state_path for info in snapshot.list_snapshots(self.local.path) if info.state_path]
        return states[-1] if states else None

    # --- the snapshot of a tick ---------------------------------------------------------------------
    def staged(self, kimg: float) -> str:
        """A snapshot at `kimg` was just written to the staging folder: try to copy everything waiting, and say
        how it went (the snapshot's log line). At most `keep` states wait (the newest): retention would delete
        older ones from the workspace anyway, and a workspace that stays away must not fill the local disk."""
        waiting = [info.state_path for info in snapshot.list_snapshots(self.local.path) if info.state_path]
        for path in waiting[:-self.keep]:
            path.unlink(missing_ok=True)
        landed = self.push(RETRY_DELAYS)
        if landed:
            return "copied to the workspace and verified"
        if kimg not in self.reported:
            self.reported.add(kimg)
            self.log(self.unreachable_message(f"snapshot {kimg:g} kimg"))
        return f"kept on local disk ({self.local.path}) until the workspace takes it"

    def retry(self) -> None:
        """At a tick boundary without a snapshot: try again what waits, once the pause since the last failed
        round is over."""
        if time.time() >= self.next_try_at and (self.pending() or self.local.pending_stats.exists()):
            self.push(())

    def finish(self) -> None:
        """The end of the call: copy what waits with more patience; if the workspace still fails, say where the
        newest state is and how to copy it."""
        if not (self.pending() or self.local.pending_stats.exists()):
            return
        if self.push(FINAL_RETRY_DELAYS):
            self.log(f"staged snapshots: every file is on the workspace ({self.run_dir.path})")
            return
        newest = self.newest_local_state()
        where = f"The newest state is only on this machine's local disk: {newest}" if newest else \
            f"Files not yet on the workspace are in {self.local.path}"
        self.log(f"warning: the workspace {self.run_dir.path} did not take the last snapshot(s) "
                 f"({_errno_text(self.last_error) if self.last_error else 'unknown error'}). {where}. Copy it "
                 f"before this machine goes away: cp '{newest or self.local.path}' '{self.run_dir.path}/' (in a "
                 f"notebook cell: !cp ...), or run the training again with RESUME = \"latest\" / --resume latest "
                 "on this machine: it resumes from the local state and copies it."
                 + (f" {REMOUNT}." if self._drive_gone() else ""))

    # --- copying ---------------------------------------------------------------------------------------
    def push(self, delays) -> bool:
        """Copy every waiting file (oldest snapshot first) and the pending stats lines; True when nothing waits
        any more. A failure stops the round (later files wait for the earlier ones) after the quick retries."""
        for path in self.pending():
            if not self._copy_one(path, delays):
                return self._failed_round()
        if not self._push_stats(delays):
            return self._failed_round()
        self.failed_rounds, self.next_try_at = 0, 0.0
        return True

    def _failed_round(self) -> bool:
        self.failed_rounds += 1
        pause = min(DEFER_SECONDS * 2 ** (self.failed_rounds - 1), DEFER_MAX_SECONDS)
        self.next_try_at = time.time() + pause
        return False

    def _copy_one(self, path: Path, delays) -> bool:
        target = self.run_dir.path / path.name
        for attempt in range(len(delays) + 1):
            self.tries[path.name] = self.tries.get(path.name, 0) + 1
            try:
                copy_verified(path, target)
            except OSError as exc:
                self.last_error = exc
                if exc.errno == errno.ENOSPC:
                    self._make_room()
                elif exc.errno not in TRANSIENT or self._drive_gone():
                    return False  # no quick retries: the next tick boundaries try again
                if attempt < len(delays):
                    time.sleep(delays[attempt])
                continue
            break
        else:
            return False
        tries = self.tries.pop(path.name)
        path.unlink(missing_ok=True)
        match = snapshot.SNAPSHOT_NAME.match(path.name)
        if match and match.group(1) == "state":
            kimg = float(match.group(2))
            try:
                snapshot.apply_retention(self.run_dir.path, self.keep, self.keep_networks_every)
            except OSError:
                pass  # retention runs again after the next state lands
            if kimg in self.reported or tries > 1:
                self.log(f"snapshot {kimg:g} kimg: now on the workspace and verified ({target.name}, after "
                         f"{tries} tries)")
        return True

    def _make_room(self) -> None:
        """ENOSPC on the workspace: keep only the newest verified state there (retention with keep 1)."""
        try:
            deleted = snapshot.apply_retention(self.run_dir.path, 1, self.keep_networks_every)
        except OSError:
            return
        if deleted:
            self.log(f"the workspace is full: removed {len(deleted)} older snapshot file(s) to make room "
                     f"(the newest verified state stays)")

    def _drive_gone(self) -> bool:
        return (self.last_error is not None and self.last_error.errno == errno.ENOTCONN
                and is_unreliable(self.run_dir.path)) or drive_vanished(self.run_dir.path)

    def unreachable_message(self, what: str) -> str:
        newest = self.newest_local_state()
        text = (f"warning: {what} could not be copied to the workspace "
                f"({_errno_text(self.last_error) if self.last_error else 'unknown error'}); training goes on "
                f"and the copy is retried at the next ticks. The newest state is on local disk: {newest}")
        if self._drive_gone():
            text += f". {REMOUNT}"
        return text

    # --- stats lines ---------------------------------------------------------------------------------
    def append_stats(self, line: dict) -> None:
        """Append a stats line to the run's stats.jsonl after the lines still waiting; one that fails waits in
        the staging folder (appended locally, which a local disk does not refuse)."""
        if self.local.pending_stats.exists() and not self._push_stats(()):
            self._wait(line)
            return
        try:
            snapshot.append_stats(self.run_dir.path, line)
        except (OSError, UserError) as exc:
            if isinstance(exc, OSError):
                self.last_error = exc
            self._wait(line)

    def rewind_pending(self, tick: int) -> None:
        """A resumed call starts from the state's tick: waiting lines after it are dropped (as rewind_stats
        does on the workspace), so no tick is appended twice."""
        snapshot.rewind_stats_file(self.local.pending_stats, tick)

    def _wait(self, line: dict) -> None:
        with open(self.local.pending_stats, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _push_stats(self, delays) -> bool:
        path = self.local.pending_stats
        if not path.exists():
            return True
        waiting = snapshot.read_stats_file(path)
        for attempt in range(len(delays) + 1):
            try:
                # A line whose append failed after its bytes were written may be there already: skip it.
                there = {(entry.get("tick"), entry.get("kimg"), bool(entry.get("partial")))
                         for entry in snapshot.read_stats(self.run_dir.path)}
                for entry in waiting:
                    if (entry.get("tick"), entry.get("kimg"), bool(entry.get("partial"))) not in there:
                        snapshot.append_stats(self.run_dir.path, entry)
                path.unlink(missing_ok=True)
                return True
            except (OSError, UserError) as exc:
                if isinstance(exc, OSError):
                    self.last_error = exc
                if attempt < len(delays):
                    time.sleep(delays[attempt])
        return False
