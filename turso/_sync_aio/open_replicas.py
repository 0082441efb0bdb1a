"""One open connection per replica file per process: `connect_sync` claims the replica's real path before the driver
opens it, and a second open of a claimed path raises `turso.ProgrammingError` (docs/design.md says why).
"""

import asyncio
import os
import threading
import time
from typing import Optional

from ..lib import ProgrammingError

# The path that the driver opens as an in-memory database: never a shared file.
MEMORY_PATH = ":memory:"

# How long an open waits for a connection that holds its path and is closing to release it.
CLOSING_WAIT_SECONDS = 5.0
# How often an open that waits for such a release looks again.
CLOSING_POLL_SECONDS = 0.005

# Guards _HOLDERS.
_LOCK = threading.Lock()
# The claim holding each real path now.
_HOLDERS: dict[str, "ReplicaPathClaim"] = {}


class ReplicaPathClaim:
    """A connection's claim on its replica file: `await acquire()` before the driver opens it, `begin_closing()` when
    the connection starts to close, `release()` once it no longer uses the file (safe to call more than once)."""

    __slots__ = ("path", "real_path", "closing")

    # The path as the caller gave it, for messages.
    path: str
    # The real path this claim holds, or None while it holds nothing.
    real_path: Optional[str]
    # Set when the holding connection has started to close: an open of the same path then waits for the release.
    closing: bool

    def __init__(self, path: str) -> None:
        """A claim on `path`, not held yet."""
        self.path = path
        self.real_path = None
        self.closing = False

    async def acquire(self) -> None:
        """On the event loop, before the replica is opened: hold its real path, or raise `turso.ProgrammingError` if
        another connection of this process holds it (after waiting up to CLOSING_WAIT_SECONDS if that one is
        closing: its last job lets go of the path on a thread of the pool)."""
        if self.path == MEMORY_PATH:
            return
        real_path = os.path.realpath(self.path)
        deadline = time.monotonic() + CLOSING_WAIT_SECONDS
        while True:
            with _LOCK:
                holder = _HOLDERS.get(real_path)
                if holder is None or holder is self:
                    _HOLDERS[real_path] = self
                    self.real_path = real_path
                    self.closing = False
                    return
                if not holder.closing or time.monotonic() >= deadline:
                    raise ProgrammingError(_already_open_message(self.path, real_path, holder))
            await asyncio.sleep(CLOSING_POLL_SECONDS)

    def begin_closing(self) -> None:
        """The holding connection has started to close: an open of this path may wait for its release."""
        self.closing = True

    def release(self) -> None:
        """Let the path be opened again (nothing happens if this claim holds nothing)."""
        with _LOCK:
            real_path = self.real_path
            if real_path is None:
                return
            self.real_path = None
            if _HOLDERS.get(real_path) is self:
                del _HOLDERS[real_path]


def _already_open_message(path: str, real_path: str, holder: ReplicaPathClaim) -> str:
    same_file = "" if real_path == path else f" (the file {real_path!r})"
    still_closing = (
        f" (the connection that has it was still closing after {CLOSING_WAIT_SECONDS:g} s)" if holder.closing else ""
    )
    return (
        f"sync replica {path!r}{same_file} is already open in this process{still_closing}. A second connection to one "
        "replica file is not supported (the native engine aborts the process or fails with 'database is busy'): "
        "share the open connection (one ConnectionSync per replica file, used by every task), or close it before "
        "opening the replica again"
    )
