"""The one exception type for mistakes a user can make and fix, and how file-system errors become one.

A UserError's message names the thing that is wrong and says what to do. The CLI prints it without a
traceback; notebooks show it as the cell's error. File-system errors (a wrong path, a read-only or full disk,
a symbolic-link loop, a Drive mount that dropped) reach the user the same way: `os_errors_as_user_errors`
turns an OSError into a UserError that names the path and the fix for that errno; `failures_as_user_error`
turns any other failure of a step (a file that does not load) into the UserError its caller words.
"""
import contextlib
import errno
from typing import Callable


class UserError(Exception):
    """A problem the user caused and can fix (wrong path, bad parameter, missing snapshot, full disk)."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  What to do: {fix}" if fix else problem)


_RERUN = "then run the same command or notebook again: finished work is kept."
# errno -> what the user can do about it (the message names the path and what was being done).
_FIXES = {
    errno.ENOENT: "Check the path (a typing mistake, a file moved away, or a Drive folder not mounted: in Colab "
                  "run drive.mount('/content/drive') first), " + _RERUN,
    errno.EACCES: "Use a folder you may read and write (one you own; in Drive one shared with you as editor, "
                  "not viewer), or fix its permissions, " + _RERUN,
    errno.EPERM: "Use a folder you may read and write (one you own), or fix its permissions, " + _RERUN,
    errno.EROFS: "The file system is read-only (a read-only mount, a shared folder you may only view, a "
                 "write-protected card): choose a workspace on a writable disk (--workspace / WORKSPACE), " + _RERUN,
    errno.ENOSPC: "Free some space (old snapshots, Augmented_Fakes, the .cache folder, Drive's trash) or use a "
                  "larger drive, " + _RERUN,
    errno.EDQUOT: "You are over your disk quota: free some space (old snapshots, Drive's trash) or use another "
                  "drive, " + _RERUN,
    errno.ELOOP: "A symbolic link there points back into itself (a loop): remove or fix that link, " + _RERUN,
    errno.ENAMETOOLONG: "The path is longer than the file system allows: choose a shorter workspace path or run "
                        "name, " + _RERUN,
    errno.EIO: "The disk or the network mount failed to read or write (Google Drive's mount does this under "
               "load): in Colab remount it with drive.mount('/content/drive', force_remount=True), " + _RERUN,
    errno.ENOTCONN: "The mount is gone (in Colab, Google Drive disconnected): remount it with "
                    "drive.mount('/content/drive', force_remount=True), " + _RERUN,
    errno.ESTALE: "The network mount lost the file (Google Drive after a reconnect): remount it with "
                  "drive.mount('/content/drive', force_remount=True), " + _RERUN,
    errno.ENOTDIR: "A part of the path is a file, not a folder: check the path, " + _RERUN,
    errno.EISDIR: "The path is a folder where a file was expected: check the path, " + _RERUN,
}


def from_os_error(exc: OSError, action: str = "") -> UserError:
    """A UserError for an OSError: what was being done, the path(s), the system's words, and the fix."""
    paths = " -> ".join(str(p) for p in (exc.filename, exc.filename2) if p)
    doing = f" while {action}" if action else ""
    where = f" at {paths}" if paths else ""
    reason = exc.strerror or str(exc)
    fix = _FIXES.get(exc.errno, "Check the path and the disk it is on, " + _RERUN)
    return UserError(f"{reason}{where}{doing}.", fix)


@contextlib.contextmanager
def os_errors_as_user_errors(action: str = ""):
    """Inside: an OSError with an errno leaves as a UserError naming the path and the fix (action: what the
    code was doing, e.g. 'preparing XR_SHOULDER'). UserErrors and other exceptions pass unchanged."""
    try:
        yield
    except UserError:
        raise
    except OSError as exc:
        if exc.errno is None:
            raise
        raise from_os_error(exc, action) from exc


@contextlib.contextmanager
def failures_as_user_error(problem: Callable[[Exception], str], fix: str):
    """Inside: an exception leaves as UserError(problem(exc), fix), chained to it, unless it is a UserError
    already (it says what is wrong and what to do: a file the weights-only loader refused, a full disk), which
    passes unchanged. For a step whose every failure means the same to the user ("this file cannot be read")."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        raise UserError(problem(exc), fix) from exc
