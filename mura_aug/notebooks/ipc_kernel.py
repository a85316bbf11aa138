"""The kernel manager papermill uses for our notebook runs: local IPC sockets instead of TCP.

Over TCP, ipykernel >= 7 warns at every start that the traffic is unencrypted: true, but the kernel is local
and short-lived, and in a classroom the warning only alarms. IPC sockets are files only this user can open,
so there is nothing to warn about. A module of its own so that jupyter_client is imported only when a
notebook actually runs (papermill loads this class by name).

The sockets' path prefix is unique to each kernel: jupyter_client's default ("kernel-ipc" in the working
folder, numbered from the first free number) lets two kernels started at the same moment in one folder (the
series runner's notebooks side by side) pick the same sockets and read each other's messages."""
from __future__ import annotations

import os
import tempfile
import uuid

from jupyter_client.manager import AsyncKernelManager


class IpcKernelManager(AsyncKernelManager):
    def __init__(self, **kwargs):
        kwargs.setdefault("transport", "ipc")
        # jupyter_client deletes the socket files when the kernel shuts down; a prefix, not a folder, so that
        # nothing is left behind. Short, because a socket path may be at most ~100 characters.
        kwargs.setdefault("ip", os.path.join(tempfile.gettempdir(), f"mura_aug-kernel-{uuid.uuid4().hex[:12]}"))
        super().__init__(**kwargs)
