"""Asyncio API for Turso sync replicas: `connect_sync(...)` gives a `ConnectionSync`, the asyncio SQL API of
`turso.lib_aio` plus pull, push, checkpoint and stats.

    async with turso.aio.sync.connect("app.db", "libsql://db-org.turso.io", auth_token=token) as conn:
        await conn.execute("INSERT INTO notes(id, body) VALUES (?, ?)", (str(uuid.uuid4()), "hello"))
        await conn.commit()
        await conn.push()            # send local changes to the remote
        changed = await conn.pull()  # True if remote changes were applied

A connection's jobs (its SQL, and the native steps of its sync operations) run in call order on a process-wide pool
of worker threads, which serve a connection only while it has work: an idle replica holds no thread. The network part
of a sync waits on the event loop (aiohttp), so local SQL never waits for the network; every request has a deadline
(`request_timeout`), and close() returns within about a second whatever the remote does. The machinery is in the
private package `turso._sync_aio`; docs/design.md says how it works and why.
"""

from typing import (
    Any,
    Awaitable,
    Callable,
    Generator,
    Mapping,
    NamedTuple,
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
from .lib_aio import Cursor as NonBlockingCursor
from .lib import Connection as BlockingConnection
from .lib import Cursor as BlockingCursor
from .lib import Error, OperationalError, ProgrammingError
from .background_sync_aio import CHECKPOINT_WAL_BYTES, STOP_TIMEOUT_SECONDS, BackgroundSync
from ._sync_aio.arguments import seconds
from ._sync_aio.cursor import Cursor
from ._sync_aio.engine import EngineHttp, RequestTimeout, SyncEngine
from ._sync_aio.errors import clear_frames, native_dbapi_error
from ._sync_aio.loop_turns import LoopTurns
from ._sync_aio.open_replicas import ReplicaPathClaim
from ._sync_aio.opening import ReplicaOpener, copy_replica as _copy_replica, recover_identity_of
from ._sync_aio.pull_recovery import UnusableConnection, applied_before_failing, is_wedged, unusable_message
from ._sync_aio.replica_files import replica_files_held_open
from ._sync_aio.replica_identity import ReplicaIdentityError as ReplicaIdentityError
from ._sync_aio.replica_identity import ReplicaRecovery as ReplicaRecovery
from ._sync_aio.replica_pool import AuthToken, ReplicaPoolBase
from ._sync_aio.replica_pool import POOL_CLOSE_MARGIN_SECONDS as POOL_CLOSE_MARGIN_SECONDS
from ._sync_aio.replica_pool import PoolTimeout as PoolTimeout
from ._sync_aio.replica_pool import ReplicaPoolStats as ReplicaPoolStats
from ._sync_aio.transaction import Transaction as Transaction
from ._sync_aio.transaction import TransactionHost, TransactionTurns
from ._sync_aio.transaction import TransactionState as TransactionState
from ._sync_aio.workers import Job, JobQueue, RunToEndQueue, SerialWorker
from ._sync_aio.workers import pool as _pool

_T = TypeVar("_T")

# How long applying pulled changes or a checkpoint waits for an open transaction on the connection to end before it
# gives up: the busy timeout of Turso's Go sync driver.
TRANSACTION_WAIT_SECONDS = 5.0

# How long close() waits for the sync operations called before it, before it fails the request in flight.
LANE_CLOSE_SECONDS = 0.5

# How long the close() of the last open connection waits for the pool's idle threads to exit.
THREADS_EXIT_SECONDS = 1.0

# How many replicas of one event loop apply pulled changes or checkpoint at once. The driver holds the interpreter
# lock through these native steps; run on many threads at once, they leave the event loop waiting for the lock behind
# all of them (docs/design.md).
APPLIES_AT_ONCE = 1

# The default of `ConnectionSync.request_timeout`, in seconds (docs/design.md says why 30).
REQUEST_TIMEOUT_SECONDS = 30.0

# The largest `ConnectionSync.query_timeout`, in seconds: a year (the driver takes whole milliseconds as an unsigned
# 64-bit number; anything longer is no limit in practice).
MAX_QUERY_TIMEOUT_SECONDS = 365 * 24 * 3600.0

# What a statement still queued when close() was cancelled raises instead of running.
CLOSED_BEFORE_ITS_TURN = (
    "Cannot run this statement: the connection was closed before its turn (close() was cancelled or timed out, which "
    "stops the statements still queued)"
)

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


class WorkerPoolStats(NamedTuple):
    """A snapshot of the process's worker pool, from `worker_pool_stats()`: for a service's metrics, and for sizing
    `set_max_worker_threads`."""

    # Threads of the pool now (busy or idle).
    threads: int
    # Threads waiting for work; they exit after a while idle, at once when no connection is open.
    idle_threads: int
    # Connections whose jobs wait for a thread because every thread is busy and the pool is at its cap.
    waiting_connections: int
    # The cap on threads (`set_max_worker_threads`).
    max_threads: int


def set_max_worker_threads(count: int) -> None:
    """Cap the threads of the process's worker pool, which runs every connection's SQL and the native steps of its
    sync (16 by default). A long statement holds one thread; raise the cap if many may run at once, lower it to bound
    the process's threads. Takes effect at once; threads above a lowered cap exit as they finish."""
    _pool.max_threads = count


def worker_pool_stats() -> WorkerPoolStats:
    """The worker pool's threads now, idle ones, connections waiting for a thread, and the cap."""
    threads, idle, waiting = _pool.counts()
    return WorkerPoolStats(threads, idle, waiting, _pool.max_threads)


class _State(enum.Enum):
    # Made by connect_sync(): nothing runs yet; awaiting the connection opens it.
    UNOPENED = "unopened"
    # Awaited: the replica opens (calls wait for the open to end).
    OPENING = "opening"
    # Open.
    OPENED = "opened"
    # close() began, or opening failed or was cancelled: no new work is accepted.
    CLOSED = "closed"


class ConnectionSync(NonBlockingConnection):
    """An asyncio connection to a sync replica: the inherited async SQL API plus pull, push, checkpoint and stats.

    Make one with `connect_sync(...)` and open it with `await` or `async with`; it then belongs to that event loop.
    Any call after `close()` raises `turso.ProgrammingError`.
    """

    # The base class's worker: here the connection's SerialWorker, which the pool's threads run while it has jobs
    # (made when the connection is first awaited).
    _worker: Worker

    def __init__(self, connector: Callable[[], BlockingConnectionSync]) -> None:
        """Wrap `connector`, which opens the blocking sync connection on a worker thread when the connection is first
        awaited; prefer `connect_sync(...)`."""
        # NonBlockingConnection.__init__ is not called: it would start a thread of its own at once, on whatever loop
        # asyncio.get_event_loop() returns then. The connection starts when it is awaited.
        self._connector: Callable[[], BlockingConnectionSync] = connector
        self._state = _State.UNOPENED
        # Set when the connection is first awaited, with `_loop`, `_worker`, `_serial` and `_open_task`.
        self._started = False
        # The connection's jobs, in call order: its SQL and the native steps of its sync operations. A SimpleQueue
        # that also hands the connection to a thread of the pool when a job comes in.
        self._jobs: SimpleQueue[Job] = JobQueue()
        # The blocking connection and its sync engine, set by the open, dropped by the last job.
        self._conn: Optional[BlockingConnection] = None
        self._engine: Optional[SyncEngine] = None
        # The engine's HTTP, kept for the connection's life (a reopened replica keeps it) and closed by close().
        self._http: Optional[EngineHttp] = None
        self._request_timeout = RequestTimeout(REQUEST_TIMEOUT_SECONDS)
        # `query_timeout` in seconds (None: off), and in the driver's milliseconds (0: off).
        self._query_timeout: Optional[float] = None
        self._query_timeout_ms = 0
        # Set once no sync operation may start any more (close(), or the quiet stops).
        self._refusing = False
        # Mirrors of the blocking connection's settings, for the inherited property getters.
        self._isolation_level_cache: Optional[str] = None
        self._row_factory_cache: Any = None
        self._text_factory_cache: Any = None
        self._autocommit_cache: object | bool | None = None
        # connect_sync's claim on the replica's file (one open connection per file per process).
        self._path_claim = connector.path_claim if isinstance(connector, ReplicaOpener) else None
        self._background: Optional[BackgroundSync] = None
        # transaction() blocks take turns; `_turns_busy` mirrors `turns.busy`, the one flag every SQL call checks.
        self._transaction_turns = TransactionTurns(self._jobs)
        self._turns_busy = False
        # Sync operations (pull, push, checkpoint) in flight or waiting for their turn; one runs at a time: the last
        # one to have started (`_sync_started`), and the pull waiting for the remote's changes (`_pull_fetching`).
        self._sync_operations: set[asyncio.Task[Any]] = set()
        self._sync_started: Optional[asyncio.Task[Any]] = None
        self._pull_fetching: Optional[asyncio.Task[Any]] = None
        # Set when a failed pull left the connection unable to use its replica: what every call says then.
        self._unusable: Optional[str] = None
        # Set when the event loop closed under the open connection, which still warns when collected (never closed).
        self._stopped_by_closed_loop = False
        # Whether this connection counts among the pool's open connections (from the open to the end of close()).
        self._in_pool = False
        # Set on a thread of the pool once the last job has closed the replica (close() after the loop closed).
        self._replica_closed = threading.Event()
        # close()'s work, which goes on when its caller is cancelled.
        self._closing: Optional[asyncio.Task[None]] = None

    # internal worker MUST be stopped when connection goes out of context scope: here, and on every other way out
    # (failed or cancelled open, garbage collection, the event loop closing)
    async def close(self) -> None:
        """Close the replica and let go of every thread; safe to call more than once, from several tasks.

        Work called before close() runs first. Sync operations get `LANE_CLOSE_SECONDS`; then the request in flight
        fails and they raise `turso.ProgrammingError`. When it returns, the replica's files are released, and if this
        was the process's last open connection, no thread of ours runs. Cancelled (or bounded, as by
        `asyncio.wait_for`), it stops what it would wait for: the statement running is interrupted, the statements
        still queued fail with `turso.ProgrammingError`, the request in flight fails at once; and the closing still
        goes on to its end, so that the replica's path is released soon after.
        """
        if not self._started:
            self._state = _State.CLOSED
            return
        if self._loop.is_closed():
            # Opened on an event loop that has closed since: nothing of that loop can be awaited any more.
            if self._state is not _State.CLOSED:
                self._stop_quietly(self._close_replica)
            await self._wait_replica_closed_elsewhere()
            return
        if _get_running_loop() is not self._loop:
            raise ProgrammingError("ConnectionSync can only be closed from the event loop that opened it")
        closing = self._closing
        if closing is None:
            # Calls made from now on are refused (after background sync has stopped, if it runs), and an open of the
            # same file waits for this connection to let go of it.
            if self._background is None:
                self._begin_closing()
            elif self._path_claim is not None:
                self._path_claim.begin_closing()
            closing = self._closing = self._loop.create_task(self._close_in_order(), name="turso-sync-close")
            closing.add_done_callback(_retrieve_outcome)
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            # The closing goes on, without waiting for anything it can stop: the request in flight fails now instead of
            # after LANE_CLOSE_SECONDS, the statement running is interrupted, and those still queued fail.
            self._refuse_requests()
            self._serial.fail_statements(ProgrammingError(CLOSED_BEFORE_ITS_TURN))
            self._serial.interrupt(self._conn, None)
            raise

    # typed so that the awaited value is ConnectionSync: the base class would type it as the plain Connection and
    # hide pull/push/checkpoint/stats
    def __await__(self) -> Generator[Any, None, "ConnectionSync"]:
        """`conn = await connect_sync(...)` opens the replica on a worker thread and gives back this connection."""
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
        return await self._sync_operation("pull", self._pull_in_turn, stops_when_cancelled=True)

    async def push(self) -> None:
        """Push the local changes: everything committed before push() was called. SQL goes on meanwhile; raises
        `turso.OperationalError` if the remote does not answer within `request_timeout`."""
        await self._sync_operation("push", self._push_in_turn)

    async def checkpoint(self) -> None:
        """Move the write-ahead log into the database file (`stats().main_wal_size` drops to 0), between
        transactions; `sync_in_background` does it for you when the log grows."""
        await self._sync_operation("checkpoint", self._checkpoint_in_turn, stops_when_cancelled=True)

    async def stats(self) -> SyncStats:
        """The replica's sync counters: pending local changes, log sizes, last sync times, bytes sent and received.
        Waits for a sync operation in flight (the engine's operations exclude each other)."""
        if self._state is not _OPENED or _get_running_loop() is not self._loop:
            await self._wait_opened()
        # One job in the sync turns, without a task of its own: once queued, it runs before any later operation's first
        # step (its job is ahead of theirs), so a cancelled await may hand the turn on at once.
        previous, turn = self._take_sync_turn()
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            future: asyncio.Future[SyncStats] = self._loop.create_future()
            self._serial.run_to_end(future, self._stats_blocking)
            return await future
        finally:
            _hand_on_turn(previous, turn)

    async def execute_fetchall(self, sql: str, parameters: Union[Sequence[Any], Mapping[str, Any]] = ()) -> list[Any]:
        """Run one statement and return all its rows, in one trip to the worker instead of three: use it when you
        want the rows at once, and `execute` for a cursor's metadata or for reading in parts."""
        return await self._run(functools.partial(self._fetchall_blocking, sql, parameters))

    def cursor(self, factory: Optional[Callable[[BlockingConnection], BlockingCursor]] = None) -> NonBlockingCursor:
        """A cursor (`turso.lib_aio.Cursor`'s API), made on the worker in call order; `factory` makes the blocking
        cursor from the blocking connection, if given. `execute()` makes one for you."""
        return Cursor(self, factory=factory)

    async def interrupt(self) -> None:
        """Stop the statement running on the connection now, whichever task awaits it: that await raises
        `turso.OperationalError` ("interrupted"). Returns at once, without waiting behind the queued statements; with
        no statement running it does nothing (a sync operation's steps and a transaction's BEGIN, COMMIT or ROLLBACK
        are not statements it stops). Cursors read in part on the connection are ended too (docs/lifecycle.md)."""
        if not self._started or self._loop.is_closed():
            return
        if _get_running_loop() is not self._loop:
            raise ProgrammingError("ConnectionSync can only be used from the event loop that opened it")
        self._serial.interrupt(self._conn, None)

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
        """Push, then pull; returns what pull returns. The push is left out when nothing is pending (the engine's own
        count of local changes). This is one round of background sync."""
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
        return self._request_timeout.value

    @request_timeout.setter
    def request_timeout(self, value: float) -> None:
        self._request_timeout.value = seconds("request_timeout", value)

    @property
    def query_timeout(self) -> Optional[float]:
        """Seconds a statement may run, from its first step to its last row, before it stops with
        `turso.OperationalError` (the connection stays usable); None (the default) for no limit. Settable at any time
        before close(), also before the connection is opened; it applies to the statements called after it."""
        return self._query_timeout

    @query_timeout.setter
    def query_timeout(self, value: Optional[float]) -> None:
        timeout = None if value is None else seconds("query_timeout", value)
        if self._state is _State.CLOSED:
            raise ProgrammingError("Cannot operate on a closed connection")
        if timeout is not None and timeout > MAX_QUERY_TIMEOUT_SECONDS:
            raise ValueError(
                f"query_timeout must be at most {MAX_QUERY_TIMEOUT_SECONDS:g} seconds (or None for no limit), not "
                f"{value!r}"
            )
        if self._state is not _State.UNOPENED:
            self._check_usable()
        self._query_timeout = timeout
        # The driver counts whole milliseconds, and 0 turns it off: a timeout under a millisecond is one.
        self._query_timeout_ms = 0 if timeout is None else max(1, round(timeout * 1000))
        if self._state is not _State.UNOPENED:
            self._run_nowait(functools.partial(self._set_query_timeout_blocking, self._query_timeout_ms))

    def __del__(self) -> None:
        # Collected without close(): warn like asyncio and aiosqlite do (also when its loop closed first, which stopped
        # it), and let a worker close what it holds. Nothing here touches the event loop.
        if self._state in (_State.UNOPENED, _State.CLOSED) and not self._stopped_by_closed_loop:
            return
        warnings.warn(
            "ConnectionSync was never closed; use `async with connect_sync(...)` or `await conn.close()`",
            ResourceWarning,
            source=self,
        )
        if self._state is not _State.CLOSED:
            # The last job must not refer to this connection, which is being collected.
            self._stop_quietly(functools.partial(_close_for_nobody, self._conn, self._path_claim), from_finalizer=True)

    # --- opening ----------------------------------------------------------------------------------------------------

    async def _open(self) -> "ConnectionSync":
        if self._state is _State.CLOSED:
            raise ProgrammingError("Cannot open a closed connection; make a new one with connect_sync()")
        if self._state is _State.UNOPENED:
            self._start(asyncio.get_running_loop())
        elif _get_running_loop() is not self._loop:
            raise ProgrammingError("ConnectionSync can only be used from the event loop that opened it")
        opening = self._open_task
        try:
            await asyncio.shield(opening)
        except asyncio.CancelledError:
            # A bootstrap in flight fails at once; the open removes what it created, and close() lets go of the rest.
            # Nobody awaits the open's outcome any more: mark its error retrieved, so asyncio does not log it.
            opening.add_done_callback(_retrieve_outcome)
            self._refuse_requests()
            if self._closing is None:
                self._closing = self._loop.create_task(self._close_in_order(), name="turso-sync-close")
                self._closing.add_done_callback(_retrieve_outcome)
            raise
        except BaseException:
            await self.close()
            raise
        return self

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._worker = self._serial = SerialWorker(
            self._jobs, loop, weakref.WeakMethod(self._stop_after_loop_closed), _pool
        )
        # The last sync operation's turn (pull, push, checkpoint, stats run one at a time, in call order).
        self._last_sync_turn: Optional[asyncio.Future[None]] = None
        _pool.attach(loop)
        self._in_pool = True
        self._started = True
        self._state = _State.OPENING
        self._open_task: asyncio.Task[None] = loop.create_task(self._open_replica(), name="turso-sync-open")

    async def _open_replica(self) -> None:
        # The open: on the worker (a fresh replica then bootstraps from the loop); the settings are mirrored after.
        connector = self._connector
        if isinstance(connector, ReplicaOpener):
            blocking, _ = await connector.open(self._on_worker, self._take_over_engine)
        else:
            blocking = await self._on_worker(connector)
            await self._on_worker(lambda: self._take_over_engine(blocking, 0.0))
        if self._query_timeout_ms:
            await self._on_worker(functools.partial(blocking.set_query_timeout, self._query_timeout_ms))
        self._conn = blocking
        self._isolation_level_cache = blocking.isolation_level
        self._row_factory_cache = blocking.row_factory
        self._text_factory_cache = blocking.text_factory
        self._autocommit_cache = blocking.autocommit
        if self._state is _State.OPENING:
            self._state = _State.OPENED

    def _take_over_engine(self, blocking: BlockingConnectionSync, long_poll_seconds: float) -> SyncEngine:
        # On the worker, while opening: our engine drives `blocking`'s from now on.
        http = self._http if self._http is not None else self._request_timeout
        # Its native steps run to their end whatever happens to the awaits (never skipped nor interrupted).
        native_steps = RunToEndQueue()
        native_steps.worker = self._serial
        engine = self._engine = SyncEngine(blocking, self._loop, native_steps, http, long_poll_seconds)
        self._http = engine.http
        return engine

    async def _wait_opened(self) -> None:
        # The slow path of a call that cannot queue at once: say why it cannot, or wait for the open to end.
        self._check_usable()
        if self._state is _State.OPENING:
            await asyncio.wait([self._open_task])
            self._check_usable()

    # --- closing ----------------------------------------------------------------------------------------------------

    async def _close_in_order(self) -> None:
        # close()'s work: background sync stops, the sync operations end (bounded), the SQL queued before runs, then
        # the last job closes the replica; then the HTTP and the pool's threads are let go of.
        if self._background is not None:
            await self._background.stop(timeout=STOP_TIMEOUT_SECONDS)
        self._begin_closing()
        if not self._open_task.done():
            self._refuse_requests()
            await asyncio.wait([self._open_task])
        await self._end_sync_operations()
        self._refuse_requests()
        replica_closed: asyncio.Future[Optional[Exception]] = self._loop.create_future()
        self._serial.run_to_end(replica_closed, self._close_replica)
        try:
            error = await self._replica_closed_unless_fetching_pages(replica_closed)
        finally:
            await self._let_go()
        if error is not None:
            raise error

    async def _end_sync_operations(self) -> None:
        # The sync operations called before close() run to their end, as the SQL called before it does; only a request
        # of theirs gets a bound: one still in flight after LANE_CLOSE_SECONDS fails, and the operations queued after
        # it are refused. A step that waits for an open transaction to end is failed once the SQL before it has run.
        waiting_failed = False
        while operations := set(self._sync_operations):
            if self._waits_for_pages():
                return  # their next step waits behind a statement that waits for pages: close() does not wait
            _, pending = await asyncio.wait(operations, timeout=LANE_CLOSE_SECONDS)
            if not pending:
                return
            if not self._refusing and self._http is not None and self._http.in_flight:
                logger.warning(
                    "close() stopped waiting for the remote after %g s: the sync operation in flight failed, and those "
                    "queued after it were refused",
                    LANE_CLOSE_SECONDS,
                )
                self._refuse_requests()
            if not waiting_failed:
                waiting_failed = True
                self._jobs.put_nowait((None, self._serial.fail_waiting))

    async def _replica_closed_unless_fetching_pages(
        self, replica_closed: "asyncio.Future[Optional[Exception]]"
    ) -> Optional[Exception]:
        # The last job's outcome; or None at once if a statement before it waits for pages from a remote that does not
        # answer (partial sync): such a read cannot fail, so its worker closes the replica once the pages arrive.
        while not self._waits_for_pages():
            done, _ = await asyncio.wait([replica_closed], timeout=LANE_CLOSE_SECONDS)
            if done:
                return replica_closed.result()
        replica_closed.add_done_callback(_retrieve_outcome)
        logger.warning(
            "close() returned while a statement waits for pages from the remote (partial sync); its worker closes the "
            "replica and exits once they arrive"
        )
        return None

    def _waits_for_pages(self) -> bool:
        # Whether a statement waits on its worker for pages from the remote (partial sync).
        return self._engine is not None and self._engine.fetching_pages

    async def _let_go(self) -> None:
        # After the last job: the HTTP's share of the loop's session, and this connection's count in the pool (the
        # pool's idle threads exit once no connection is open: close() of the last one waits for them, bounded).
        http, self._http = self._http, None
        waits_for_pages = self._waits_for_pages()
        if http is not None:
            # A statement still waiting for pages keeps their client: a page read must not fail (see the engine); that
            # client lets go of its share when it is collected.
            await http.close(pages=not waits_for_pages)
        if not self._in_pool:
            return
        self._in_pool = False
        if _pool.detach(self._loop) and not waits_for_pages and not await _pool.wait_exited(THREADS_EXIT_SECONDS):
            logger.warning("close() returned while a worker thread still runs a job (it exits when the job ends)")

    def _close_replica(self) -> Optional[Exception]:
        # On the worker, the connection's last job: close the blocking connection and drop it and the engine. The
        # driver's close() leaves the native sync database, and so the replica's files and locks, alive until nothing
        # refers to it. Then the path may be opened again. Returns the close error, if any.
        self._serial.fail_waiting()
        engine, blocking = self._engine, self._conn
        self._conn = self._engine = None
        try:
            if blocking is not None:
                blocking.close()
        except Exception as error:
            # The error's frames would keep the blocking connection alive for as long as the caller keeps the error.
            clear_frames(error)
            return native_dbapi_error(error) or error
        finally:
            del engine, blocking
            self._release_path()
            self._replica_closed.set()
        return None

    def _begin_closing(self) -> None:
        # From here on every call raises ProgrammingError, and an open of the same replica waits for its release.
        if self._state is not _State.CLOSED:
            self._state = _State.CLOSED
            self._transaction_turns.close()
            if self._path_claim is not None:
                self._path_claim.begin_closing()

    def _refuse_requests(self) -> None:
        # On the loop: the request in flight fails now, and no sync operation starts after it.
        self._refusing = True
        if self._http is not None:
            self._http.abort()

    def _release_path(self) -> None:
        # The replica's file may be opened again (by this process: another one waits for the file locks).
        if self._path_claim is not None:
            self._path_claim.release()

    def _stop_quietly(self, last_job: Callable[[], object], *, from_finalizer: bool = False) -> None:
        # Nobody is left to hear of an error (garbage collection, loop closed), and the loop may not be usable: queue
        # the last job, which also lets go of the pool, without waiting.
        self._state = _State.CLOSED
        self._refusing = True
        if self._path_claim is not None:
            self._path_claim.begin_closing()
        loop = self._loop if self._in_pool else None
        self._in_pool = False
        job: Job = (None, functools.partial(_last_job_for_nobody, last_job, loop))
        if from_finalizer:
            cast(JobQueue, self._jobs).put_from_finalizer(job)
        else:
            self._jobs.put_nowait(job)

    def _stop_after_loop_closed(self) -> None:
        # On a thread of the pool, when an outcome could not be handed back because the loop has closed.
        if self._state is not _State.CLOSED:
            self._stopped_by_closed_loop = True
            self._stop_quietly(self._close_replica)

    async def _wait_replica_closed_elsewhere(self) -> None:
        # close() after the opening loop closed: wait (bounded, polling) for the last job, then for the pool's threads
        # if no connection is open any more.
        deadline = LANE_CLOSE_SECONDS
        while not self._replica_closed.is_set() and deadline > 0:
            await asyncio.sleep(0.01)
            deadline -= 0.01
        if not _pool.users and not await _pool.wait_exited(THREADS_EXIT_SECONDS):
            logger.warning("close() returned while a thread of the pool still runs (its loop had closed)")

    # --- the sync operations, one at a time ---------------------------------------------------------------------------

    async def _sync_operation(
        self, name: str, operation: Callable[[SyncEngine], Awaitable[_T]], *, stops_when_cancelled: bool = False
    ) -> _T:
        # A sync operation runs as a task of its own, in its turn (taken now, in call order), and close() waits for it
        # (bounded). Cancelling the await does not stop a push (a push sent is not sent twice); a pull or a checkpoint
        # stops as far as it can (_stop_cancelled).
        self._check_usable()
        previous, turn = self._take_sync_turn()
        task = self._loop.create_task(self._in_sync_turn(previous, turn, name, operation))
        self._sync_operations.add(task)
        task.add_done_callback(self._sync_operations.discard)
        task.add_done_callback(_retrieve_outcome)
        # Also for a task cancelled before it ever ran, which never reaches _in_sync_turn's own hand-on.
        task.add_done_callback(lambda _: _hand_on_turn(previous, turn))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if stops_when_cancelled:
                self._stop_cancelled(task)
            raise

    def _stop_cancelled(self, task: "asyncio.Task[Any]") -> None:
        # The await of a pull or a checkpoint was cancelled: one still waiting for its turn does nothing, and hands
        # the turn on at once; a pull waiting for the remote's changes has its request cut (a pull only reads: nothing
        # was applied, the next pull fetches them again), and hands the turn on once the engine has ended it. Once
        # pulled changes are being applied, or a checkpoint runs (native steps on the worker), it runs to its end.
        if task.done():
            return
        if self._sync_started is not task:
            task.cancel()
        elif self._pull_fetching is task and self._engine is not None:
            self._engine.cut_operation("the pull was cancelled: its caller stopped waiting for it")

    def _take_sync_turn(self) -> tuple[Optional["asyncio.Future[None]"], "asyncio.Future[None]"]:
        # The turn after the last one taken: wait for `previous` to be settled, settle the returned one when done.
        previous, turn = self._last_sync_turn, self._loop.create_future()
        self._last_sync_turn = turn
        return previous, turn

    async def _in_sync_turn(
        self,
        previous: Optional["asyncio.Future[None]"],
        turn: "asyncio.Future[None]",
        name: str,
        operation: Callable[[SyncEngine], Awaitable[_T]],
    ) -> _T:
        this_task = asyncio.current_task()
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            if not self._open_task.done():
                await asyncio.wait([self._open_task])
            if self._refusing or self._engine is None:
                raise self._unusable_error(name)
            self._sync_started = this_task
            # Not kept in a variable here: a failed apply may reopen the replica, which needs the old engine freed.
            return await operation(self._engine)
        except BaseException as error:
            # The caller may keep the error: its frames must not keep the engine, and the replica's files, alive.
            clear_frames(error)
            raise
        finally:
            if self._sync_started is this_task:
                self._sync_started = None
            # The task's error refers to this frame: the frame must not refer back to the task.
            this_task = None
            _hand_on_turn(previous, turn)

    async def _pull_in_turn(self, engine: SyncEngine) -> bool:
        # The network wait here on the loop; the apply on the worker, between transactions. No reference to the engine
        # is kept while the worker applies: a failed apply may reopen the replica.
        self._pull_fetching = asyncio.current_task()
        try:
            changes = await engine.wait_changes()
        finally:
            self._pull_fetching = None
        if changes is None or changes.empty():
            return False
        apply = functools.partial(self._apply_pulled_blocking, [changes])
        del changes, engine  # held by `apply` alone, which the worker drops once it ran
        await self._between_transactions(apply, "apply pulled changes")
        return True

    async def _push_in_turn(self, engine: SyncEngine) -> None:
        await engine.push_changes()

    async def _checkpoint_in_turn(self, engine: SyncEngine) -> None:
        await self._between_transactions(engine.checkpoint, "checkpoint")

    async def _between_transactions(self, step: Callable[[], Any], description: str) -> Any:
        # `step` runs on the worker once no transaction is open, in its turn among the loop's applies and checkpoints;
        # the operation awaits its outcome.
        async with _applying_turns():
            return await self._serial.run_between_transactions(
                step, description, self._in_transaction_blocking, TRANSACTION_WAIT_SECONDS
            )

    def _stats_blocking(self) -> SyncStats:
        engine = self._engine
        if self._refusing or engine is None:
            raise self._unusable_error("read stats")
        return cast(SyncStats, engine.stats())

    def _apply_pulled_blocking(self, pulled: list[Any]) -> None:
        # On the worker: apply the changes the loop fetched (`pulled` holds them, so that they are dropped as soon as
        # the engine took them). A failure after they were applied is reported as success; one that wedged the
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
        clear_frames(failure)
        outcome = self._recover_after_failed_apply(failure)
        if not applied_before_failing(failure):
            raise outcome
        logger.warning(
            "pull: the pulled changes were applied, but recording that failed (%s); the next pull fetches them and "
            "applies them again",
            failure,
        )

    def _recover_after_failed_apply(self, failure: Error) -> Error:
        # On the worker, after a failed apply: if the connection can no longer read its replica, drop the native
        # database and open the replica again. Returns the error for the pull to raise.
        blocking, connector = self._conn, self._connector
        if not isinstance(blocking, BlockingConnectionSync) or self._engine is None or not is_wedged(blocking):
            return failure
        self._conn = self._engine = None
        _close_quietly(blocking)
        path = self._path_claim.path if self._path_claim is not None else None
        # 2: this variable and getrefcount's argument. Any more is the application's (a cursor kept, an error holding
        # one): the old native database would outlive the reopen, and two on one file are not survivable.
        if sys.getrefcount(blocking) > 2 or not isinstance(connector, ReplicaOpener):
            return self._become_unusable(unusable_message(path, failure))
        del blocking
        if path is not None and replica_files_held_open(path):
            return self._become_unusable(unusable_message(path, failure))
        settings = (self._isolation_level_cache, self._row_factory_cache, self._text_factory_cache)
        autocommit = self._autocommit_cache
        try:
            reopened = connector.reopen(self._take_over_engine)
        except Exception as error:
            return self._become_unusable(unusable_message(path, failure) + f" (reopening it failed: {error})")
        self._conn = reopened
        # The settings the application made on the old connection carry over to the new one.
        reopened.isolation_level, reopened.row_factory, reopened.text_factory = settings
        if autocommit != reopened.autocommit:
            reopened.autocommit = autocommit
        if self._query_timeout_ms:
            reopened.set_query_timeout(self._query_timeout_ms)
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

    # --- SQL, on the worker ----------------------------------------------------------------------------------------

    def _blocking(self) -> BlockingConnectionSync:
        # The blocking connection, after the open (jobs run in order); None only if opening failed.
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

    def _set_query_timeout_blocking(self, milliseconds: int) -> None:
        blocking = self._conn
        if isinstance(blocking, BlockingConnection):  # not a wedged replica's stand-in, which runs nothing
            blocking.set_query_timeout(milliseconds)

    # --- queueing work: the spec's pattern, a future and then the job on the unbounded queue ------------------------

    async def _run(self, func: Callable[[], _T]) -> _T:
        # Every awaited SQL call's path, inlined on purpose: a statement's job. Cancelling the await cancels `future`:
        # the worker skips the job if it has not started, and it is interrupted if it runs now (see SerialWorker).
        # While a transaction() block is open, another task's call waits its turn.
        if self._state is not _OPENED or self._turns_busy or _get_running_loop() is not self._loop:
            await self._take_turn()
        future: asyncio.Future[_T] = self._loop.create_future()
        self._jobs.put_nowait((future, func))
        try:
            return await future
        except asyncio.CancelledError:
            if future.cancelled():  # not when it had finished already: the race docs/lifecycle.md describes
                self._serial.interrupt(self._conn, future)
            raise

    def _on_worker(self, func: Callable[[], _T]) -> "asyncio.Future[_T]":
        # A job of the connection's own (opening, sync steps), queued past the turns; it runs to its end.
        future: asyncio.Future[_T] = self._loop.create_future()
        self._serial.run_to_end(future, func)
        return future

    def _run_nowait(self, func: Callable[[], Any]) -> None:
        # A job nobody awaits (the inherited cursor creation and property setters): a success does not wake the loop,
        # a failure goes to the loop's exception handler. Held back while another task's transaction() block is open,
        # or until the open has ended.
        if self._state is not _OPENED or self._turns_busy or _get_running_loop() is not self._loop:
            self._check_usable()
            job: Job = (None, func)
            if self._state is _State.OPENING:
                self._open_task.add_done_callback(lambda _: self._queue_if_opened(job))
                return
            if self._transaction_turns.defer(job):
                return
        self._jobs.put_nowait((None, func))

    def _queue_if_opened(self, job: Job) -> None:
        # A job held back during the open: queued once it succeeded (the open's own error says why otherwise).
        if self._state is _OPENED:
            self._jobs.put_nowait(job)

    def _check_usable(self) -> None:
        # The one guard of every call: open (or opening), and on the loop that opened it.
        if self._state is _OPENED and _get_running_loop() is self._loop:
            return
        if self._state is _State.UNOPENED:
            raise ProgrammingError("Connection is not open; use `await connect_sync(...)` or `async with` first")
        if self._state is _State.CLOSED:
            raise ProgrammingError("Cannot operate on a closed connection")
        if _get_running_loop() is not self._loop:
            raise ProgrammingError("ConnectionSync can only be used from the event loop that opened it")

    async def _take_turn(self) -> None:
        # The slow path of an SQL call: say why it cannot be queued, or wait for the open to end, and until no other
        # task's transaction() block is open (at once when none is, or when the caller is inside the innermost one).
        await self._wait_opened()
        turns = self._transaction_turns
        await turns.wait_turn()
        # Back to the one flag once no block is open and no statement let go by one is still on its way.
        self._turns_busy = turns.busy
        self._check_usable()

    def _queue_transaction_step(
        self, future: Optional["asyncio.Future[Any]"], step: Callable[[BlockingConnection], Any]
    ) -> None:
        # A transaction() block's BEGIN, COMMIT or ROLLBACK, queued past the turns (the block has the turn); during the
        # open, once it has ended.
        if self._state is _State.OPENING:
            self._open_task.add_done_callback(lambda _: self._queue_transaction_step(future, step))
            return
        if self._state is not _OPENED:
            if future is not None and not future.done():
                future.set_exception(ProgrammingError("the connection was closed while the transaction() block ran"))
            return
        step_job = functools.partial(self._run_transaction_step, step)
        if future is None:
            self._jobs.put_nowait((None, step_job))
        else:
            self._serial.run_to_end(future, step_job)

    def _mirror_transaction_turns(self) -> None:
        self._turns_busy = self._transaction_turns.busy


_applying_turns = LoopTurns(APPLIES_AT_ONCE)

# Read on every call: a module-level name is cheaper than `_State.OPENED` and `asyncio.get_running_loop`.
_OPENED = _State.OPENED
_get_running_loop = asyncio.get_running_loop


def _close_quietly(blocking: Optional[BlockingConnection]) -> None:
    # Close a blocking connection, ignoring errors (its replica is given up on).
    try:
        if blocking is not None:
            blocking.close()
    except Exception:
        pass


def _close_for_nobody(blocking: Optional[BlockingConnection], path_claim: Optional[ReplicaPathClaim]) -> None:
    # The last job of a connection being collected: close the replica and release its path (its HTTP gives up its
    # share of the loop's session when it is collected).
    _close_quietly(blocking)
    if path_claim is not None:
        path_claim.release()


def _last_job_for_nobody(last_job: Callable[[], object], loop: Optional[asyncio.AbstractEventLoop]) -> None:
    # A connection's last job when nobody awaits close(): close the replica, then count it out of the pool (its
    # threads exit once idle if it was the last connection); `loop` is None if it was counted out already.
    try:
        last_job()
    finally:
        if loop is not None:
            _pool.detach(loop)


def _hand_on_turn(previous: Optional["asyncio.Future[None]"], turn: "asyncio.Future[None]") -> None:
    # A sync operation's turn has ended: the next one may start, once the one before it has ended too (a turn given up
    # while it still waited).
    if previous is None or previous.done():
        if not turn.done():
            turn.set_result(None)
    else:
        previous.add_done_callback(lambda _: _hand_on_turn(None, turn))


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


class ReplicaPool(ReplicaPoolBase[ConnectionSync]):
    """Replicas for a service with a database per tenant: opened on demand, shared by the tasks that use them, at most
    `max_open` open, closed when idle or to make room, and pushed before they close.

        async with ReplicaPool(
            path_for=lambda tenant: f"/data/tenants/{tenant}.db",
            remote_url_for=lambda tenant: f"libsql://{tenant}-org.turso.io",
            auth_token_for=lambda tenant: tokens[tenant],
        ) as pool:
            async with pool.connection("acme") as conn:   # a ConnectionSync, opened on first use
                async with conn.transaction():
                    await conn.execute("INSERT INTO notes VALUES (?, ?)", (note_id, body))

    Parameters (all keyword-only; the functions are called on the event loop when a tenant's replica opens, so they
    must be quick):
    - `path_for(tenant)`: the tenant's replica file; two tenants with one file raise ValueError.
    - `remote_url_for(tenant)`: its remote, as `connect_sync` takes it; `auth_token_for(tenant)`: its token (a string
      or a callable read for every request), or leave it out.
    - `max_open`: the most replicas open at once (opening and closing ones included). Past it, the least recently used
      replica that no task holds is closed; when every one is held, a new tenant waits.
    - `idle_seconds`: close a replica unused this long (None: never); `sync_interval`: each open replica's background
      sync (`sync_in_background`), None for none.
    - `wait_timeout`: how long `connection()` may wait (for a slot, then the open) before raising `PoolTimeout`.
    - `request_timeout`: each replica's `request_timeout` (None: the default, `REQUEST_TIMEOUT_SECONDS`); it bounds a
      fresh replica's bootstrap, and the push before each close.
    - `max_concurrent_opens`: opens in progress at once (the rest wait their turn), so that a burst of tenants never
      stalls the event loop.
    - `configure(tenant, conn)`: an async function run on each replica once opened, before any task gets it (say a
      `CREATE TABLE IF NOT EXISTS`); if it raises, the open fails.

    A replica closes (eviction, idle, the pool's close) only once no task holds it, and pushes its pending changes
    first, within its `request_timeout`. A push that fails is logged and counted (`failed_pushes_at_close`); the
    changes stay in its files, and the next open pushes them (its first background sync round, or a push of its own
    without `sync_interval`). A request for a replica still pushing takes it back. docs/tenants.md has the details.
    """

    # what the pool's machinery needs of this module: a tenant's replica, made (not opened yet) by connect_sync
    def _connect(self, path: str, remote_url: Optional[str], auth_token: AuthToken) -> ConnectionSync:
        return connect_sync(path, remote_url, auth_token=auth_token)


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
    await _copy_replica(source, destination)


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
    # A task of its own, which a cancelled await lets finish: it leaves the replica whole either way.
    identity_given = asyncio.ensure_future(
        recover_identity_of(path, remote_url, auth_token, client_name, remote_encryption_key, REQUEST_TIMEOUT_SECONDS)
    )
    identity_given.add_done_callback(_retrieve_outcome)
    recovery = await asyncio.shield(identity_given)
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
