"""The kernel manager papermill uses for our notebook runs: local IPC sockets instead of TCP.

Over TCP, ipykernel >= 7 warns at every start that the traffic is unencrypted: true, but the kernel is local
and short-lived, and in a classroom the warning only alarms. IPC sockets are files only this user can open,
so there is nothing to warn about. A module of its own so that jupyter_client is imported only when a
notebook actually runs (papermill loads this class by name)."""
from __future__ import annotations

from jupyter_client.manager import AsyncKernelManager


class IpcKernelManager(AsyncKernelManager):
    def __init__(self, **kwargs):
        kwargs.setdefault("transport", "ipc")
        super().__init__(**kwargs)
