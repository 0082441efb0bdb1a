"""The cursor of a `turso.lib_sync_aio.ConnectionSync`: `turso.lib_aio`'s, whose fetches also record whether they left
the statement part-read, so that an interrupt of the connection can end it (see `SerialWorker.end_part_read`)."""

from typing import Any, Optional

from ..lib import Cursor as BlockingCursor
from ..lib import Error, OperationalError, ProgrammingError
from ..lib_aio import Cursor as NonBlockingCursor
from .workers import SerialWorker

# What a fetch of a cursor that an interrupt ended raises.
ENDED_BY_INTERRUPT = (
    "interrupted: this cursor's statement was ended when a statement of its connection was interrupted (by "
    "interrupt(), a cancelled or timed-out await, or a cancelled close()), since it had been read only in part; "
    "execute the query again"
)


class Cursor(NonBlockingCursor):
    """A `turso.lib_aio.Cursor`, with the same API: what `ConnectionSync.cursor()` and `execute()` return.

    A statement read in part (rows fetched with `fetchone` or `fetchmany`, but not to its end) stays in progress in the
    driver, and the driver's interrupt stops every statement in progress on the connection, not only the one running,
    and goes on stopping new ones until none is left. So the fetches note, on the worker, whether they left their
    statement part-read (the cursor is then in its worker's `part_read`), and after an interrupt the worker ends those
    statements at once: the cursor is closed, and its next use raises `turso.OperationalError`.
    """

    # The description of the statement a fetch left part-read (None: none is). The driver makes a new description for
    # every statement a cursor executes, so it tells that statement from a later one of the same cursor.
    _part_read: Optional[Any] = None
    # Set when an interrupt ended the statement: the cursor is closed, and says why.
    _ended_by_interrupt = False

    async def fetchone(self) -> Any:
        """The next row, or None after the last one."""
        self._ensure_open()
        return await self._connection._run(self._fetchone_blocking)  # pyright: ignore[reportPrivateUsage]

    async def fetchmany(self, size: Optional[int] = None) -> list[Any]:
        """The next `size` rows (`arraysize` by default); fewer, or none, at the end."""
        self._ensure_open()
        rows: list[Any] = await self._connection._run(  # pyright: ignore[reportPrivateUsage]
            lambda: self._fetchmany_blocking(self.arraysize if size is None else size)
        )
        return rows

    async def fetchall(self) -> list[Any]:
        """Every row left."""
        self._ensure_open()
        rows: list[Any] = await self._connection._run(self._fetchall_blocking)  # pyright: ignore[reportPrivateUsage]
        return rows

    def end_interrupted(self) -> None:
        """On the worker, after an interrupt of the connection: if the statement is still the one a fetch left
        part-read, close the cursor (the statement ends at once, being interrupted); its next use raises."""
        blocking = self._bcursor
        part_read, self._part_read = self._part_read, None
        if blocking is None or part_read is None or blocking.description is not part_read:
            return
        self._ended_by_interrupt = True
        self._closed = True
        try:
            blocking.close()
        except Exception:
            pass  # it is given up on either way

    def _ensure_open(self) -> None:
        if self._closed:
            if self._ended_by_interrupt:
                raise OperationalError(ENDED_BY_INTERRUPT)
            raise ProgrammingError("Cannot operate on a closed cursor")

    # --- on the worker ------------------------------------------------------------------------------------------------

    def _fetchone_blocking(self) -> Any:
        blocking = self._blocking_cursor()
        try:
            row = blocking.fetchone()
        except BaseException as error:
            self._after_failed_fetch(blocking, error)
            raise
        if row is None:
            self._part_read = None  # at its end: the driver finalized it
        else:
            self._after_rows(blocking)
        return row

    def _fetchmany_blocking(self, size: int) -> list[Any]:
        blocking = self._blocking_cursor()
        try:
            rows = blocking.fetchmany(size)
        except BaseException as error:
            self._after_failed_fetch(blocking, error)
            raise
        if len(rows) < size:
            self._part_read = None
        elif rows:
            self._after_rows(blocking)
        return rows

    def _fetchall_blocking(self) -> list[Any]:
        blocking = self._blocking_cursor()
        try:
            rows = blocking.fetchall()
        except BaseException as error:
            self._after_failed_fetch(blocking, error)
            raise
        self._part_read = None
        return rows

    def _after_rows(self, blocking: BlockingCursor) -> None:
        # Rows came, and not the end: the statement is in progress until a later fetch reaches its end.
        description = blocking.description
        if self._part_read is not description:
            self._part_read = description
            worker = self._connection._worker  # pyright: ignore[reportPrivateUsage]
            if isinstance(worker, SerialWorker):
                worker.part_read.add(self)

    def _after_failed_fetch(self, blocking: BlockingCursor, error: BaseException) -> None:
        if isinstance(error, Error):
            self._part_read = None  # the driver ended the statement when its step failed
        else:
            self._after_rows(blocking)  # the row factory raised, say: the statement may still be in progress

    def _blocking_cursor(self) -> BlockingCursor:
        blocking = self._bcursor
        if blocking is None:
            raise ProgrammingError("the cursor was not created (see the error its creation reported)")
        return blocking
