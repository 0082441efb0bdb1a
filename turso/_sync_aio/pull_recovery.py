"""What a pull that failed while applying leaves behind, and whether the connection can go on.

Out of space, an apply fails before its commit (nothing applied; the connection may be wedged) or after it (all
applied, only not recorded: reported as success). docs/design.md ("A pull that runs out of space") has the measurements.
"""

from typing import Optional

from ..lib import Error, OperationalError
from ..lib_sync import ConnectionSync as BlockingConnectionSync

# What the sync engine's error says when it failed after the apply committed (the first is the engine's own message;
# the second is the driver's for a failed write of PATH-info, which an apply makes only as its last step).
APPLIED_BEFORE_FAILING = ("failed to persist sync high-water mark after raw remote apply", "fs write error")

# A read that needs the replica's schema: it fails on a wedged connection, and opens no transaction on a healthy one.
WEDGE_PROBE = "PRAGMA schema_version"


def applied_before_failing(error: BaseException) -> bool:
    """Whether `error`, raised by applying pulled changes, came after they were applied and committed."""
    message = str(error)
    return isinstance(error, Error) and any(marker in message for marker in APPLIED_BEFORE_FAILING)


def is_wedged(blocking: BlockingConnectionSync) -> bool:
    """On the connection's worker, after a failed apply: whether the connection can no longer read its replica."""
    try:
        cursor = blocking.execute(WEDGE_PROBE)
        try:
            cursor.fetchall()
        finally:
            cursor.close()
    except Error:
        return True
    return False


def unusable_message(path: Optional[str], error: BaseException) -> str:
    """What every call says once a wedged connection could not be reopened."""
    replica = f"the replica {path!r}" if path is not None else "its replica"
    return (
        f"this connection can no longer use {replica}: a pull could not finish applying ({error}), and the replica "
        "could not be reopened in place because a cursor of this connection (or an error holding one) is still "
        "referenced. Close the connection and open the replica again; the next pull applies the changes"
    )


class UnusableConnection:
    """Stands in for the blocking connection (and its cursors) of a wedged replica that could not be reopened: closing
    does nothing and settings are dropped; anything else raises `turso.OperationalError` saying to close the connection
    and open the replica again."""

    __slots__ = ("message",)

    message: str

    def __init__(self, message: str) -> None:
        """Raise OperationalError(message) on every use."""
        object.__setattr__(self, "message", message)

    def close(self) -> None:
        """Nothing to close: the wedged connection was closed already."""

    def cursor(self, *args: object, **kwargs: object) -> "UnusableConnection":
        """A cursor is made without an await (`conn.execute` makes one first): its first use raises instead."""
        return self

    def __getattr__(self, name: str) -> object:
        raise OperationalError(self.message)

    def __setattr__(self, name: str, value: object) -> None:
        # A setting queued without an await (row_factory, a cursor's arraysize): nothing to apply it to.
        pass
