"""Asyncio API for Turso sync replicas: `connect_sync(...)` gives a `ConnectionSync`, the asyncio SQL API of
`turso.lib_aio` plus pull, push, checkpoint and stats.

    async with turso.aio.sync.connect("app.db", "libsql://db-org.turso.io", auth_token=token) as conn:
        await conn.execute("INSERT INTO notes(id, body) VALUES (?, ?)", (str(uuid.uuid4()), "hello"))
        await conn.commit()
        await conn.push()            # send local changes to the remote
        changed = await conn.pull()  # True if remote changes were applied

Each connection has two threads: the SQL worker runs SQL in call order, and the sync lane runs one sync operation at
a time, so local SQL never waits for the network. Every sync request has a deadline (`request_timeout`), and close()
returns within about a second whatever the remote does. The machinery is in the private package `turso._sync_aio`;
docs/design.md says how it works and why.
"""

from typing import (
    Any,
    Callable,
    Generator,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    TypeVar,
    Union,
    cast,
    runtime_checkable,
)
from queue import SimpleQueue
import asyncio
import enum
import functools
import logging
import sys
import threading
import traceback
import warnings
import weakref
from types import TracebackType

from .worker import Worker
from .lib_sync import (
    ConnectionSync as BlockingConnectionSync,
    PartialSyncOpts,
    RemoteEncryptionCipher,  # pyright: ignore[reportUnknownVariableType]  # native enum, no type information
)
from .lib_aio import (
    Connection as NonBlockingConnection,
)
from .lib import Connection as BlockingConnection
from .lib import Error, OperationalError, ProgrammingError
from .background_sync_aio import CHECKPOINT_WAL_BYTES, STOP_TIMEOUT_SECONDS, BackgroundSync
from ._sync_aio.arguments import seconds
from ._sync_aio.engine import SyncEngine
from ._sync_aio.errors import native_dbapi_error
from ._sync_aio.open_replicas import ReplicaPathClaim
from ._sync_aio.opening import ReplicaOpener, close_quietly, copy_replica_blocking, recover_replica_blocking
from ._sync_aio.pull_recovery import UnusableConnection, applied_before_failing, is_wedged, unusable_message
from ._sync_aio.replica_files import replica_files_held_open
from ._sync_aio.replica_identity import ReplicaIdentityError as ReplicaIdentityError
from ._sync_aio.replica_identity import ReplicaRecovery as ReplicaRecovery
from ._sync_aio.threads import ConnectionThreads, Job, set_exception_unless_done, set_result_unless_done
from ._sync_aio.transaction import Transaction as Transaction
from ._sync_aio.transaction import TransactionHost, TransactionTurns
from ._sync_aio.transaction import TransactionState as TransactionState

_T = TypeVar("_T")

# How long applying pulled changes or a checkpoint waits for an open transaction on the connection to end before it
# gives up: the busy timeout of Turso's Go sync driver.
TRANSACTION_WAIT_SECONDS = 5.0

# How long close() waits for the sync operations called before it, before it fails the request in flight.
LANE_CLOSE_SECONDS = 0.5

# The default of `ConnectionSync.request_timeout`, in seconds (docs/design.md says why 30).
REQUEST_TIMEOUT_SECONDS = 30.0

# Where close() and the sync operations warn; pyturso gives the `turso` logger a NullHandler (docs/lifecycle.md).
logger = logging.getLogger(__name__)


@runtime_checkable
class SyncStats(Protocol):
    """What `ConnectionSync.stats()` reports about a replica (read-only fields of a native object); use it to
    annotate code that reads the stats."""

    @property
    def cdc_operations(self) -> int:
        """Local changes recorded since the last push (0 means there is nothing to push)."""
        ...

    @property
    def main_wal_size(self) -> int:
        """Bytes in the replica's write-ahead log; `checkpoint()` brings it back to 0."""
        ...

    @property
    def revert_wal_size(self) -> int:
        """Bytes the sync engine keeps to undo local changes before it applies remote ones."""
        ...

    @property
    def last_pull_unix_time(self) -> Optional[int]:
        """When the last pull (or the bootstrap) finished, in Unix seconds; None if it never happened."""
        ...

    @property
    def last_push_unix_time(self) -> Optional[int]:
        """When the last push finished, in Unix seconds; None if this replica never pushed."""
        ...

    @property
    def revision(self) -> Optional[str]:
        """The remote's revision as of the replica's last pull (or bootstrap); a push does not move it."""
        ...

    @property
    def network_sent_bytes(self) -> int:
        """Bytes sent to the remote by this replica since it was opened."""
        ...

    @property
    def network_received_bytes(self) -> int:
        """Bytes received from the remote by this replica since it was opened."""
        ...


class _State(enum.Enum):
    # Made by connect_sync(): no threads yet; awaiting the connection opens it.
    UNOPENED = "unopened"
    # The threads run; the replica is opening or open.
    OPENED = "opened"
    # close() began, or opening failed or was cancelled: no new work is accepted.
    CLOSED = "closed"


class ConnectionSync(NonBlockingConnection):
    """An asyncio connection to a sync replica: the inherited async SQL API plus pull, push, checkpoint and stats.

    Make one with `connect_sync(...)` and open it with `await` or `async with`; it then belongs to that event loop.
    Any call after `close()` raises `turso.ProgrammingError`.
    """

    # The connection's two threads and their shutdown; made when it is first awaited.
    _threads: ConnectionThreads
    # The base class's SQL worker thread: here the one `_threads` owns (set with it; nothing of ours reads it).
    _worker: Worker

    def __init__(self, connector: Callable[[], BlockingConnectionSync]) -> None:
        """Wrap `connector`, which opens the blocking sync connection on the SQL worker when the connection is first
        awaited; prefer `connect_sync(...)`."""
        # NonBlockingConnection.__init__ is not called: it would start its worker at once, on whatever loop
        # asyncio.get_event_loop() returns then. The threads start when the connection is awaited.
        self._connector: Callable[[], BlockingConnectionSync] = connector
        self._state = _State.UNOPENED
        # Set when the connection is first awaited, with `_loop` and `_threads`.
        self._threads_started = False
        # The SQL worker's queue (the base class's _queue holds only awaited jobs) and the sync lane's.
        self._jobs: SimpleQueue[Job] = SimpleQueue()
        self._lane_jobs: SimpleQueue[Job] = SimpleQueue()
        # The blocking connection and its sync engine, set by the open job on the SQL worker, dropped by the last
        # job; `_open_ended` tells a sync operation called during the open that they are there (or never will be).
        self._conn: Optional[BlockingConnection] = None
        self._engine: Optional[SyncEngine] = None
        self._open_ended = threading.Event()
        # Set once no sync request may start any more (close() or the quiet stops; the one in flight is failed).
        self._refusing = False
        # Mirrors of the blocking connection's settings, for the inherited property getters.
        self._isolation_level_cache: Optional[str] = None
        self._row_factory_cache: Any = None
        self._text_factory_cache: Any = None
        self._autocommit_cache: object | bool | None = None
        # connect_sync's claim on the replica's file (one open connection per file per process).
        self._path_claim = connector.path_claim if isinstance(connector, ReplicaOpener) else None
        self._background: Optional[BackgroundSync] = None
        self._request_timeout = REQUEST_TIMEOUT_SECONDS
        # transaction() blocks take turns; `_turns_busy` mirrors `turns.busy`, the one flag every SQL call checks.
        self._transaction_turns = TransactionTurns(self._jobs)
        self._turns_busy = False
        # Set when a failed pull left the connection unable to use its replica: what every call says then.
        self._unusable: Optional[str] = None
        # Set when the event loop closed under the open connection, which still warns when collected (never closed).
        self._stopped_by_closed_loop = False

    # internal worker MUST be stopped when connection goes out of context scope: here, and on every other way out
    # (failed or cancelled open, garbage collection, the event loop closing)
    async def close(self) -> None:
        """Close the replica and stop both threads; safe to call more than once, from several tasks.

        Work called before close() runs first. Sync operations get `LANE_CLOSE_SECONDS`; then the request in flight
        fails and they raise `turso.ProgrammingError`. When it returns, no thread of the connection runs. Cancelled,
        it still stops both threads, without waiting.
        """
        if not self._threads_started:
            self._state = _State.CLOSED
            return
        if self._loop.is_closed():
            # Opened on an event loop that has closed since: nothing of that loop can be awaited any more.
            if self._state is _State.OPENED:
                self._stop_quietly(self._close_replica)
            if not await self._threads.exited(LANE_CLOSE_SECONDS):
                logger.warning("close() returned while a thread of the connection still runs (its loop had closed)")
            return
        if _get_running_loop() is not self._loop:
            raise ProgrammingError("ConnectionSync can only be closed from the event loop that opened it")
        try:
            if self._background is not None:
                await self._background.stop(timeout=STOP_TIMEOUT_SECONDS)
        except BaseException:
            # Cancelled while background sync stopped: the threads still stop, without waiting.
            self._begin_closing()
            self._refuse_requests()
            self._threads.stop(self._close_replica, quietly=False)
            raise
        self._begin_closing()
        # The SQL worker's last job lets go of the replica's path, once nothing of this connection uses the file.
        await self._threads.close(self._close_replica, self._refuse_requests, self._waits_for_pages)

    # typed so that the awaited value is ConnectionSync: the base class would type it as the plain Connection and
    # hide pull/push/checkpoint/stats
    def __await__(self) -> Generator[Any, None, "ConnectionSync"]:
        """`conn = await connect_sync(...)` opens the replica on the SQL worker and gives back this connection."""
        return self._open().__await__()

    async def __aenter__(self) -> "ConnectionSync":
        """`async with connect_sync(...) as conn:` opens the replica; leaving the block closes it."""
        return await self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]] = None,
        exc_value: Optional[BaseException] = None,
        traceback: Optional[TracebackType] = None,
    ) -> None:
        """Close the connection when the `async with` block ends, also when it raised."""
        await self.close()

    async def pull(self) -> bool:
        """Pull remote changes; True if any were applied, False if the remote had none (the changes' `.empty()`).

        SQL goes on meanwhile; the changes are applied between transactions, so SQL awaited after pull() sees them.
        Raises `turso.OperationalError` if the remote does not answer within `request_timeout`, or a transaction stays
        open for `TRANSACTION_WAIT_SECONDS`.
        """
        return await self._run_on_lane(self._pull_on_lane)

    async def push(self) -> None:
        """Push the local changes: everything committed before push() was called. SQL goes on meanwhile; raises
        `turso.OperationalError` if the remote does not answer within `request_timeout`."""
        await self._run_on_lane(self._push_on_lane)

    async def checkpoint(self) -> None:
        """Move the write-ahead log into the database file (`stats().main_wal_size` drops to 0), between
        transactions; `sync_in_background` does it for you when the log grows."""
        await self._run_on_lane(self._checkpoint_on_lane)

    async def stats(self) -> SyncStats:
        """The replica's sync counters: pending local changes, log sizes, last sync times, bytes sent and received.
        Waits for a sync operation in flight."""
        return await self._run_on_lane(self._stats_on_lane)

    async def execute_fetchall(self, sql: str, parameters: Union[Sequence[Any], Mapping[str, Any]] = ()) -> list[Any]:
        """Run one statement and return all its rows, in one trip to the SQL worker instead of three: use it when you
        want the rows at once, and `execute` for a cursor's metadata or for reading in parts."""
        return await self._run(functools.partial(self._fetchall_blocking, sql, parameters))

    def transaction(self) -> Transaction:
        """`async with conn.transaction():` runs the block as one transaction: COMMIT at its end, ROLLBACK if it raises.
        Use it for every write on a connection that tasks share: blocks take turns (docs/service.md)."""
        self._check_usable()
        # Made per block, not kept: a connection holding its own bound methods could only be collected as a cycle.
        host = TransactionHost(
            self._transaction_turns,
            self._loop,
            self._check_usable,
            self._queue_transaction_step,
            self._mirror_transaction_turns,
        )
        return Transaction(host)

    async def commit(self) -> None:
        """Commit the open transaction (DB-API). Inside a `transaction()` block it raises `turso.ProgrammingError`;
        from another task while a block is open, it waits for the block to end."""
        if self._turns_busy:
            self._transaction_turns.refuse_in_block("commit")
        await self._run(self._commit_blocking)

    async def rollback(self) -> None:
        """Roll back the open transaction (DB-API). Inside a `transaction()` block it raises `turso.ProgrammingError`
        (raise in the block instead); from another task while a block is open, it waits for the block to end."""
        if self._turns_busy:
            self._transaction_turns.refuse_in_block("rollback")
        await self._run(self._rollback_blocking)

    async def sync(self) -> bool:
        """Push, then pull; returns what pull returns. The push is left out when nothing is pending. This is one round
        of background sync."""
        if (await self.stats()).cdc_operations:
            await self.push()
        return await self.pull()

    def sync_in_background(
        self,
        interval: float,
        *,
        max_backoff: float = 60.0,
        checkpoint_wal_bytes: Optional[int] = CHECKPOINT_WAL_BYTES,
    ) -> BackgroundSync:
        """Keep the replica in sync: a round at once, then one every `interval` seconds, backing off while rounds fail,
        and checkpointing once the log exceeds `checkpoint_wal_bytes` (None: never). close() stops it."""
        self._check_usable()
        if self._background is not None and self._background.status.running:
            raise ProgrammingError("This connection already syncs in the background; stop that one first")
        self._background = BackgroundSync(
            self, interval, max_backoff=max_backoff, checkpoint_wal_bytes=checkpoint_wal_bytes
        )
        return self._background

    @property
    def request_timeout(self) -> float:
        """Seconds a sync request may take to connect, or wait for the next byte of its answer, before its operation
        fails with `turso.OperationalError`; 30 by default, settable at any time."""
        return self._request_timeout

    @request_timeout.setter
    def request_timeout(self, value: float) -> None:
        self._request_timeout = seconds("request_timeout", value)
        if self._engine is not None:
            self._engine.request_timeout = self._request_timeout

    def __del__(self) -> None:
        # Collected without close(): warn like asyncio and aiosqlite do (also when its loop closed first, which stopped
        # the threads), and let both threads close what they hold and exit. Nothing here touches the event loop.
        if self._state is not _State.OPENED and not self._stopped_by_closed_loop:
            return
        warnings.warn(
            "ConnectionSync was never closed; use `async with connect_sync(...)` or `await conn.close()`",
            ResourceWarning,
            source=self,
        )
        if self._state is _State.OPENED:
            # The last job must not refer to this connection, which is being collected.
            self._stop_quietly(functools.partial(_close_for_nobody, self._engine, self._conn, self._path_claim))

    # --- opening ----------------------------------------------------------------------------------------------------

    async def _open(self) -> "ConnectionSync":
        if self._state is _State.CLOSED:
            raise ProgrammingError("Cannot open a closed connection; make a new one with connect_sync()")
        if self._state is _State.UNOPENED:
            self._start_threads(asyncio.get_running_loop())
        try:
            await asyncio.shield(self._open_future)
        except asyncio.CancelledError:
            # A bootstrap in flight fails at once; the worker removes what it created, and both threads exit. Nobody
            # awaits the open's outcome any more: mark its error retrieved, so asyncio does not log it.
            self._open_future.add_done_callback(_retrieve_outcome)
            self._state = _State.CLOSED
            self._refuse_requests()
            self._threads.stop(self._close_replica, quietly=False)
            raise
        except BaseException:
            await self.close()
            raise
        return self

    def _start_threads(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._open_future = loop.create_future()
        on_loop_closed = weakref.WeakMethod(self._stop_after_loop_closed)
        self._threads = ConnectionThreads(self._jobs, self._lane_jobs, loop, on_loop_closed, LANE_CLOSE_SECONDS)
        self._threads_started = True
        self._worker = self._threads.sql
        try:
            self._threads.start((self._open_future, self._open_blocking))
        except BaseException:
            # The OS refused a thread: stop what started (a later close() then returns at once).
            self._state = _State.CLOSED
            self._refuse_requests()
            self._threads.stop(self._close_replica, quietly=False)
            raise
        self._state = _State.OPENED

    def _open_blocking(self) -> None:
        # On the SQL worker: open the blocking connection, take over its engine, and mirror its settings.
        try:
            connector = self._connector
            if isinstance(connector, ReplicaOpener):
                blocking = connector.open(self._take_over_engine)
            else:
                blocking = connector()
                self._take_over_engine(blocking, 0.0)
        finally:
            self._open_ended.set()
        self._conn = blocking
        self._isolation_level_cache = blocking.isolation_level
        self._row_factory_cache = blocking.row_factory
        self._text_factory_cache = blocking.text_factory
        self._autocommit_cache = blocking.autocommit

    def _take_over_engine(self, blocking: BlockingConnectionSync, long_poll_seconds: float) -> SyncEngine:
        # On the SQL worker, while opening: our engine drives `blocking`'s from now on (a close() that began meanwhile
        # fails its requests at once).
        engine = self._engine = SyncEngine(blocking, self._request_timeout, long_poll_seconds)
        if self._refusing:
            engine.abort()
        return engine

    # --- closing ----------------------------------------------------------------------------------------------------

    def _close_replica(self) -> Optional[Exception]:
        # On the SQL worker, its last job: close the engine and the blocking connection, and drop them. The driver's
        # close() leaves the native sync database, and so the replica's files and locks, alive until nothing refers
        # to it. Then the path may be opened again. Returns the close error, if any.
        engine, blocking = self._engine, self._conn
        self._conn = self._engine = None
        try:
            if engine is not None:
                engine.close()
            if blocking is not None:
                blocking.close()
        except Exception as error:
            # The error's frames would keep the blocking connection alive for as long as the caller keeps the error.
            traceback.clear_frames(error.__traceback__)
            return native_dbapi_error(error) or error
        finally:
            del engine, blocking
            self._release_path()
        return None

    def _begin_closing(self) -> None:
        # From here on every call raises ProgrammingError, and an open of the same replica waits for its release.
        if self._state is _State.OPENED:
            self._state = _State.CLOSED
            self._transaction_turns.close()
            if self._path_claim is not None:
                self._path_claim.begin_closing()

    def _refuse_requests(self) -> None:
        # The request in flight fails now (its socket is shut), and no request starts after it.
        self._refusing = True
        if self._engine is not None:
            self._engine.abort()
        self._open_ended.set()

    def _waits_for_pages(self) -> bool:
        # Whether the SQL worker waits on the remote for partial sync's pages (which cannot fail: see the engine).
        return self._engine is not None and self._engine.fetching_pages

    def _release_path(self) -> None:
        # The replica's file may be opened again (by this process: another one waits for the file locks).
        if self._path_claim is not None:
            self._path_claim.release()

    def _stop_quietly(self, last_sql_job: Callable[[], Optional[Exception]]) -> None:
        # Nobody is left to hear of an error (garbage collection, loop closed): stop both threads, without waiting.
        self._state = _State.CLOSED
        if self._path_claim is not None:
            self._path_claim.begin_closing()
        self._refuse_requests()
        self._threads.stop(last_sql_job, quietly=True)

    def _stop_after_loop_closed(self) -> None:
        # On a thread of ours, when an outcome could not be handed back because the loop has closed.
        if self._state is _State.OPENED:
            self._stopped_by_closed_loop = True
            self._stop_quietly(self._close_replica)

    # --- the sync operations, on the sync lane ---------------------------------------------------------------------

    def _engine_for_lane(self, operation: str) -> SyncEngine:
        # At the start of each operation: the engine once the open has ended, unless the connection is closing (the
        # operation then never starts) or the open failed (its await says why).
        self._open_ended.wait()
        engine = self._engine
        if self._refusing or engine is None:
            raise self._unusable_error(operation)
        self._threads.lane.current = operation
        return engine

    def _pull_on_lane(self) -> bool:
        # The network wait here; the apply on the SQL worker, between transactions. No reference to the engine is kept
        # while the worker applies: a failed apply may reopen the replica.
        changes = self._engine_for_lane("pull").wait_changes()
        if changes is None or changes.empty():
            return False
        apply = functools.partial(self._apply_pulled_blocking, [changes])
        del changes  # held by `apply` alone, which the worker drops once it ran: a later pull can fetch them again
        self._between_transactions(apply, "apply pulled changes")
        return True

    def _push_on_lane(self) -> None:
        self._engine_for_lane("push").push_changes()

    def _checkpoint_on_lane(self) -> None:
        self._between_transactions(self._engine_for_lane("checkpoint").checkpoint, "checkpoint")

    def _stats_on_lane(self) -> SyncStats:
        return cast(SyncStats, self._engine_for_lane("read stats").stats())

    def _between_transactions(self, step: Callable[[], Any], description: str) -> Any:
        # Hand `step` to the SQL worker, which runs it once no transaction is open; the lane waits for its outcome.
        return self._threads.sql.run_between_transactions(
            step, description, self._in_transaction_blocking, TRANSACTION_WAIT_SECONDS
        )

    def _apply_pulled_blocking(self, pulled: list[Any]) -> None:
        # On the SQL worker: apply the changes the lane fetched (`pulled` holds them, so that they are dropped as soon
        # as the engine took them). A failure after they were applied is reported as success; one that wedged the
        # connection reopens the replica (see _sync_aio/pull_recovery.py).
        engine = self._engine
        if engine is None:
            raise self._unusable_error("apply pulled changes")
        try:
            engine.apply_changes(pulled.pop())
            return
        except Error as error:
            failure = error
        del engine
        # Its frames hold the engine and the native sync database, which a reopen must see freed.
        traceback.clear_frames(failure.__traceback__)
        outcome = self._recover_after_failed_apply(failure)
        if not applied_before_failing(failure):
            raise outcome
        logger.warning(
            "pull: the pulled changes were applied, but recording that failed (%s); the next pull fetches them and "
            "applies them again",
            failure,
        )

    def _recover_after_failed_apply(self, failure: Error) -> Error:
        # On the SQL worker, after a failed apply: if the connection can no longer read its replica, drop the native
        # database and open the replica again. Returns the error for the pull to raise.
        blocking, engine = self._conn, self._engine
        if not isinstance(blocking, BlockingConnectionSync) or engine is None or not is_wedged(blocking):
            return failure
        self._conn = self._engine = None
        close_quietly(engine, blocking)
        del engine
        path = self._path_claim.path if self._path_claim is not None else None
        # 2: this variable and getrefcount's argument. Any more is the application's (a cursor kept, an error holding
        # one): the old native database would outlive the reopen, and two on one file are not survivable.
        if sys.getrefcount(blocking) > 2:
            return self._become_unusable(unusable_message(path, failure))
        del blocking
        if path is not None and replica_files_held_open(path):
            return self._become_unusable(unusable_message(path, failure))
        settings = (self._isolation_level_cache, self._row_factory_cache, self._text_factory_cache)
        autocommit = self._autocommit_cache
        try:
            self._open_blocking()
        except Exception as error:
            return self._become_unusable(unusable_message(path, failure) + f" (reopening it failed: {error})")
        reopened = self._blocking()
        # The settings the application made on the old connection carry over to the new one.
        reopened.isolation_level, reopened.row_factory, reopened.text_factory = settings
        self._isolation_level_cache, self._row_factory_cache, self._text_factory_cache = settings
        if autocommit != reopened.autocommit:
            reopened.autocommit = autocommit
            self._autocommit_cache = autocommit
        logger.warning("pull: a failed apply (%s) left the connection unable to read its replica: reopened", failure)
        return type(failure)(f"{failure} (the connection reopened the replica; the next pull applies the changes)")

    def _become_unusable(self, message: str) -> Error:
        # A wedged connection that could not be reopened: every call raises `message` from now on, until close().
        self._unusable = message
        self._conn = cast(BlockingConnection, UnusableConnection(message))
        self._engine = None
        logger.warning("%s", message)
        return OperationalError(message)

    def _unusable_error(self, operation: str) -> Error:
        # A sync operation on a connection without an engine: closed, or wedged and not reopened.
        if self._unusable is not None and not self._refusing:
            return OperationalError(self._unusable)
        return ProgrammingError(f"Cannot {operation}: the connection was closed before the {operation} started")

    # --- SQL, on the SQL worker ------------------------------------------------------------------------------------

    def _blocking(self) -> BlockingConnectionSync:
        # The blocking connection, after the open job (jobs run in order); None only if opening failed.
        blocking = self._conn
        if blocking is None:
            raise ProgrammingError("Connection is not open")
        return cast(BlockingConnectionSync, blocking)

    def _in_transaction_blocking(self) -> bool:
        return self._blocking().in_transaction

    def _commit_blocking(self) -> None:
        self._blocking().commit()

    def _rollback_blocking(self) -> None:
        self._blocking().rollback()

    def _fetchall_blocking(self, sql: str, parameters: Union[Sequence[Any], Mapping[str, Any]]) -> list[Any]:
        # execute_fetchall's job: the statement on a fresh blocking cursor, every row (built by row_factory), closed.
        cursor = self._blocking().cursor()
        try:
            cursor.execute(sql, parameters)
            return cursor.fetchall()
        finally:
            cursor.close()

    def _run_transaction_step(self, step: Callable[[BlockingConnection], Any]) -> Any:
        return step(self._blocking())

    # --- queueing work: the spec's pattern, a future and then the job on the unbounded queue ------------------------

    async def _run(self, func: Callable[[], _T]) -> _T:
        # Every awaited SQL call's path, inlined on purpose. Cancelling the await cancels only `future`: the job still
        # runs, in order (see JobRunner). While a transaction() block is open, another task's call waits its turn.
        if self._state is not _OPENED or self._turns_busy or _get_running_loop() is not self._loop:
            await self._take_turn()
        future: asyncio.Future[_T] = self._loop.create_future()
        self._jobs.put_nowait((future, func))
        return await future

    async def _run_on_lane(self, func: Callable[[], _T]) -> _T:
        self._check_usable()
        future: asyncio.Future[_T] = self._loop.create_future()
        self._lane_jobs.put_nowait((future, func))
        return await future

    def _run_nowait(self, func: Callable[[], Any]) -> None:
        # A job nobody awaits (the inherited cursor creation and property setters): a success does not wake the loop,
        # a failure goes to the loop's exception handler. Held back while another task's transaction() block is open.
        if self._state is not _OPENED or self._turns_busy or _get_running_loop() is not self._loop:
            self._check_usable()
            if self._transaction_turns.defer((None, func)):
                return
        self._jobs.put_nowait((None, func))

    def _check_usable(self) -> None:
        # The one guard of every call: open, and on the loop that opened it.
        if self._state is _OPENED and _get_running_loop() is self._loop:
            return
        if self._state is _State.UNOPENED:
            raise ProgrammingError("Connection is not open; use `await connect_sync(...)` or `async with` first")
        if self._state is _State.CLOSED:
            raise ProgrammingError("Cannot operate on a closed connection")
        raise ProgrammingError("ConnectionSync can only be used from the event loop that opened it")

    async def _take_turn(self) -> None:
        # The slow path of an SQL call: say why it cannot be queued, or wait until no other task's transaction() block
        # is open (at once when none is, or when the caller is inside the innermost one).
        self._check_usable()
        turns = self._transaction_turns
        await turns.wait_turn()
        # Back to the one flag once no block is open and no statement let go by one is still on its way.
        self._turns_busy = turns.busy
        self._check_usable()

    def _queue_transaction_step(
        self, future: Optional["asyncio.Future[Any]"], step: Callable[[BlockingConnection], Any]
    ) -> None:
        # A transaction() block's BEGIN, COMMIT or ROLLBACK, queued past the turns (the block has the turn).
        if self._state is not _OPENED:
            if future is not None and not future.done():
                future.set_exception(ProgrammingError("the connection was closed while the transaction() block ran"))
            return
        self._jobs.put_nowait((future, functools.partial(self._run_transaction_step, step)))

    def _mirror_transaction_turns(self) -> None:
        self._turns_busy = self._transaction_turns.busy


# Read on every call: a module-level name is cheaper than `_State.OPENED` and `asyncio.get_running_loop`.
_OPENED = _State.OPENED
_get_running_loop = asyncio.get_running_loop


def _close_for_nobody(
    engine: Optional[SyncEngine], blocking: Optional[BlockingConnection], path_claim: Optional[ReplicaPathClaim]
) -> None:
    # The SQL worker's last job for a connection being collected: close the replica, release its path.
    close_quietly(engine, blocking)
    if path_claim is not None:
        path_claim.release()


def _retrieve_outcome(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()


# not async: it returns an awaitable ConnectionSync; same signature as turso.lib_sync.connect_sync
def connect_sync(
    path: str,
    remote_url: Optional[Union[str, Callable[[], Optional[str]]]] = None,
    *,
    auth_token: Optional[Union[str, Callable[[], Optional[str]]]] = None,
    client_name: Optional[str] = None,
    long_poll_timeout_ms: Optional[int] = None,
    bootstrap_if_empty: bool = True,
    partial_sync_experimental: Optional[PartialSyncOpts] = None,
    experimental_features: Optional[str] = None,
    isolation_level: Optional[str] = "DEFERRED",
    remote_encryption_key: Optional[str] = None,
    remote_encryption_cipher: Optional[RemoteEncryptionCipher] = None,  # pyright: ignore[reportUnknownParameterType]
    push_operations_threshold: Optional[int] = None,
    pull_bytes_threshold: Optional[int] = None,
    logical_mvcc_pull: Optional[bool] = None,
) -> ConnectionSync:
    """Make an asyncio connection to the sync replica at `path`, kept in sync with `remote_url`; the parameters are
    those of `turso.lib_sync.connect_sync`.

    Returns the connection unopened: `await` it or use `async with`, which opens the replica (downloading a fresh
    one first). Errors from opening are raised there, and leave no thread and no new file behind.
    """
    options: dict[str, Any] = {
        "auth_token": auth_token,
        "client_name": client_name,
        "long_poll_timeout_ms": long_poll_timeout_ms,
        "bootstrap_if_empty": bootstrap_if_empty,
        "partial_sync_experimental": partial_sync_experimental,
        "experimental_features": experimental_features,
        "isolation_level": isolation_level,
        "remote_encryption_key": remote_encryption_key,
        "remote_encryption_cipher": remote_encryption_cipher,
        "push_operations_threshold": push_operations_threshold,
        "pull_bytes_threshold": pull_bytes_threshold,
        "logical_mvcc_pull": logical_mvcc_pull,
    }
    return ConnectionSync(ReplicaOpener(path, remote_url, options))


async def copy_replica(source: str, destination: str) -> None:
    """Copy the replica at `source` to `destination` so that the copy syncs under an identity of its own.

    Use it wherever you would copy a replica's files: a second replica on this machine, a volume or a container image
    with a replica baked in. Every copy of the files it writes takes an identity of its own when first opened, so an
    image started many times gives many replicas, none of which loses another's writes. Plain file copies share the
    source's identity, and then silently lose writes (docs/troubleshooting.md, "Copies, backups and images").

    `source` must be closed in every process (its file lock is held while the files are copied) and have nothing left
    to push (push() first: the copy leaves the source's changes to the source); `destination` must not exist. Raises
    `turso.ProgrammingError` otherwise, ValueError for a destination that exists. Makes no request.
    """
    await _run_in_thread("turso-replica-copy", functools.partial(copy_replica_blocking, source, destination))


async def recover_replica(
    path: str,
    remote_url: Optional[str] = None,
    *,
    auth_token: Optional[Union[str, Callable[[], Optional[str]]]] = None,
    client_name: Optional[str] = None,
    remote_encryption_key: Optional[str] = None,
) -> ReplicaRecovery:
    """Recover a replica refused with `ReplicaIdentityError`: give it an identity of its own, then push the local
    changes the remote does not have, and only those (nothing is sent twice). Returns what was done.

    `path` must be closed in every process. The parameters are connect_sync's; `remote_url` defaults to the one the
    replica saved, and is needed when its sync metadata is gone. Makes two requests and a push. Raises
    `turso.OperationalError` if the remote cannot be reached (nothing was changed then, or the identity was and the
    next push sends the changes, as the message says).
    """
    recovery = await _run_in_thread(
        "turso-replica-recovery",
        functools.partial(
            recover_replica_blocking,
            path,
            remote_url,
            auth_token,
            client_name,
            remote_encryption_key,
            REQUEST_TIMEOUT_SECONDS,
        ),
    )
    try:
        options: dict[str, Any] = {"auth_token": auth_token, "client_name": client_name}
        async with connect_sync(path, remote_url, remote_encryption_key=remote_encryption_key, **options) as conn:
            await conn.push()
    except Error as error:
        raise type(error)(
            f"{path!r} has an identity of its own now ({recovery.client_id!r}), but pushing its changes failed: "
            f"{error}. Its next push() sends them"
        ) from error
    return recovery


async def _run_in_thread(name: str, function: Callable[[], _T]) -> _T:
    # A blocking file job of its own (copy_replica, recover_replica) on a thread that ends with it. Cancelled, the await
    # returns at once and the job still finishes: it leaves the files whole either way.
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def run() -> None:
        try:
            try:
                outcome = function()
            except BaseException as error:
                loop.call_soon_threadsafe(set_exception_unless_done, future, error)
            else:
                loop.call_soon_threadsafe(set_result_unless_done, future, outcome)
        except RuntimeError:
            pass  # the loop closed: nobody is left to hear of it

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future
