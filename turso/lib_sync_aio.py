"""Asyncio API for Turso sync replicas.

A sync replica is a local SQLite-compatible database file that Turso keeps in sync with a remote database: `pull`
brings remote changes in, `push` sends local ones out. This module makes the blocking sync driver
(`turso.lib_sync`) usable from asyncio without letting the network near local SQL:

    event loop ──(future, function)──▶ SQL worker   (thread "turso-async-worker"): SQL in call order, plus the
                                                     local steps of sync (apply pulled changes, checkpoint),
                                                     only between transactions
               ──(future, function)──▶ sync lane    (thread "turso-sync-lane"): one sync engine operation at a
                                                     time: pull's network wait, push, stats; hands apply and
                                                     checkpoint to the SQL worker and waits for them

    async with turso.aio.sync.connect("app.db", "libsql://db-org.turso.io", auth_token=token) as conn:
        await conn.execute("INSERT INTO notes(id, body) VALUES (?, ?)", (str(uuid.uuid4()), "hello"))
        await conn.commit()
        await conn.push()          # send local changes to the remote
        changed = await conn.pull()  # True if remote changes were applied

A slow or silent remote holds up only the sync lane: reads and writes keep local speed, a cancelled pull or push
returns at once (the operation still ends on the lane: nothing lost, nothing doubled), and close() waits at most
about a second for a request the remote never answers.

Lifecycle: both threads start when the connection is first awaited (or entered with `async with`). When close()
returns the SQL worker has exited, and so has the sync lane unless a request is stuck on the network, in which case
it exits when that request ends, changing nothing after. They also stop after a failed or cancelled open, when the
connection is garbage collected without close() (with a ResourceWarning), and when its event loop closes.
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
from queue import Empty, SimpleQueue
import asyncio
import enum
import functools
import logging
import os
import sys
import threading
import time
import traceback
import warnings
import weakref
from types import TracebackType

from .worker import STOP_RUNNING_SENTINEL, Worker
from .lib import (
    Connection as BlockingConnection,
    Error,
    OperationalError,
    ProgrammingError,
)
from .lib_sync import (
    ConnectionSync as BlockingConnectionSync,
    PartialSyncOpts,
    RemoteEncryptionCipher,  # pyright: ignore[reportUnknownVariableType]  # native enum, no type information
    connect_sync as blocking_connect_sync,  # pyright: ignore[reportUnknownVariableType]  # (its cipher parameter)
)
from .lib_aio import (
    Connection as NonBlockingConnection,
)
from .background_sync_aio import CHECKPOINT_WAL_BYTES, STOP_TIMEOUT_SECONDS, BackgroundSync
from ._sync_aio.arguments import seconds
from ._sync_aio.transaction import Transaction as Transaction
from ._sync_aio.transaction import TransactionState as TransactionState
from ._sync_aio.transaction import TransactionHost, TransactionTurns
from ._sync_aio.engine import SyncEngine
from ._sync_aio.errors import job_error, native_dbapi_error
from ._sync_aio.open_replicas import ReplicaPathClaim
from ._sync_aio.pull_recovery import UnusableConnection, applied_before_failing, is_wedged, unusable_message
from ._sync_aio.replica_files import (
    check_arguments,
    check_replica_files,
    describe_remote,
    replica_files,
    replica_files_held_open,
)

_T = TypeVar("_T")
_Runner = TypeVar("_Runner", bound="_JobRunner")

# A job for a worker thread: the future that awaits its outcome (None when nobody awaits it) and the function to run.
_Job = tuple[Optional["asyncio.Future[Any]"], Callable[[], Any]]

# How long applying pulled changes or a checkpoint waits for an open transaction on the connection to end before it
# gives up: the busy timeout of Turso's Go sync driver.
TRANSACTION_WAIT_SECONDS = 5.0

# How long close() waits for the sync lane after the SQL worker has exited. Only a request the remote does not answer
# takes longer; close() then returns and the lane exits when that request ends.
LANE_CLOSE_SECONDS = 0.5

# The default of `ConnectionSync.request_timeout`: how long a sync request may wait to connect, or for the next byte
# of its answer. Long enough for a slow mobile link or a large pull in a distant region, short enough that a
# half-open connection is noticed within a background sync's round or two.
REQUEST_TIMEOUT_SECONDS = 30.0

# Where the sync lane says what close() left behind.
logger = logging.getLogger(__name__)


@runtime_checkable
class SyncStats(Protocol):
    """What `ConnectionSync.stats()` reports about a replica; use it to annotate code that reads the stats.

    The object comes from the driver's native extension, which ships no type information; this Protocol
    describes its read-only fields.
    """

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

    Make one with `connect_sync(...)` (also known as `turso.aio.sync.connect`) and open it with `await` or
    `async with`; it then belongs to that event loop. SQL runs one statement at a time on the connection's SQL worker
    thread, in call order. Sync operations run one at a time on its sync lane thread, in call order, so SQL never
    waits for the network; pulled changes are applied, and checkpoints run, on the SQL worker between transactions.
    Any operation after `close()` raises `turso.ProgrammingError`.
    """

    def __init__(self, connector: Callable[[], BlockingConnectionSync]) -> None:
        """Wrap `connector`, which opens the blocking sync connection; prefer `connect_sync(...)` to calling this.

        The connector runs on the SQL worker, once, when the connection is first awaited.
        """
        # NonBlockingConnection.__init__ is not called on purpose: it would start its worker at once, bound to
        # whatever asyncio.get_event_loop() returns at that moment. We start the threads when the connection is
        # awaited, on the running loop.
        self._connector: Callable[[], BlockingConnectionSync] = connector
        # The SQL worker's queue (named apart from the base class's _queue, which holds plain futures) and the sync
        # lane's.
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._lane_jobs: SimpleQueue[_Job] = SimpleQueue()
        # The blocking connection, set on the SQL worker by the open job: `_conn` for the inherited SQL API, and
        # `_sync` with its sync type for ours (no cast on the worker's path).
        self._conn = None
        self._sync: Optional[BlockingConnectionSync] = None
        # The replica's sync engine, for the lane; set by the open job, which then sets `_open_ended` (also when
        # opening failed), so that a sync operation called before the open ends waits for it on the lane.
        self._engine: Optional[SyncEngine] = None
        self._open_ended = threading.Event()
        # Set once no sync request may start any more, and the one in flight is failed: close() stopped waiting for
        # the lane, or the connection was dropped.
        self._refusing = False
        self._state = _State.UNOPENED
        # Settled by each thread's last job, just before it exits; made when the threads start.
        self._stopped: Optional[asyncio.Future[None]] = None
        self._lane_stopped: Optional[asyncio.Future[None]] = None
        # Mirrors of the blocking connection's settings, read on the worker once it is open.
        self._isolation_level_cache: Optional[str] = None
        self._row_factory_cache: Any = None
        self._text_factory_cache: Any = None
        self._autocommit_cache: object | bool | None = None
        # The claim on the replica's file (one open connection per file per process) of connect_sync's connector;
        # None for a connector of the caller's.
        self._path_claim: Optional[ReplicaPathClaim] = (
            connector.path_claim if isinstance(connector, _ReplicaOpener) else None
        )
        # The background sync started by sync_in_background(), if any; close() stops it first.
        self._background: Optional[BackgroundSync] = None
        self._request_timeout = REQUEST_TIMEOUT_SECONDS
        # The turns that transaction() blocks take; `_turns_busy` mirrors `turns.busy`, the one flag every SQL call
        # checks (False while no block is open, so the common path costs nothing more).
        self._transaction_turns = TransactionTurns(self._jobs)
        self._turns_busy = False
        # Set when a failed pull wedged the connection and the replica could not be reopened: what every call says.
        self._unusable: Optional[str] = None

    # internal worker is stopped here, and on every other way out: failed or cancelled open, garbage collection
    # (__del__), and the event loop closing (_JobRunner)
    async def close(self) -> None:
        """Close the replica and stop both threads.

        Work called before close() still runs first, and anything called after it raises `turso.ProgrammingError`.
        For sync operations close() waits at most `LANE_CLOSE_SECONDS`: a request the remote does not answer is then
        left to end on its own (its thread exits when it does, and makes no new request), and the sync operations
        that had not started raise `turso.ProgrammingError`. Nor does it wait for a partial-sync read that needs pages
        from such a remote. Safe to call more than once, also from several tasks.
        """
        # Background sync first, so that it starts no round on a closing connection; its round in progress gets
        # stop()'s short default bound, and its sync operation in flight the lane's bound below (1 s in all).
        if self._background is not None:
            await self._background.stop(timeout=STOP_TIMEOUT_SECONDS)
        stopped, lane_stopped = self._stopped, self._lane_stopped
        if stopped is None or lane_stopped is None:
            # Never opened: there is no thread to stop.
            self._state = _State.CLOSED
            return
        self._begin_close()
        # Calls waiting for another task's transaction() block go now, and raise that the connection is closed.
        self._transaction_turns.close()
        try:
            # The SQL worker keeps running meanwhile: it runs the local steps of the sync operations called earlier.
            if not lane_stopped.done():
                await asyncio.wait([lane_stopped], timeout=LANE_CLOSE_SECONDS)
            if not lane_stopped.done():
                logger.warning(
                    "close() stopped waiting for the remote after %g s: %s failed, and the sync operations queued "
                    "after it were refused",
                    LANE_CLOSE_SECONDS,
                    self._lane.current,
                )
        finally:
            # The request in flight, if any, fails now; then the SQL worker's last job closes the replica.
            self._stop_sql_worker()
        if not await self._sql_worker_ended(stopped):
            self._release_path()
            return
        # The lane has no request left to wait for: it ends as soon as a local step it handed over ends.
        await asyncio.wait([lane_stopped], timeout=LANE_CLOSE_SECONDS)
        # Each thread settles its future as its very last step, so these joins return at once.
        self._worker.join()
        if lane_stopped.done():
            self._lane.join()
        else:
            logger.warning("close() returned while the sync lane still runs %s", self._lane.current)
        self._release_path()
        stopped.result()

    # typed so that the awaited value is ConnectionSync: the base class would type it as the plain Connection and
    # hide pull/push/checkpoint/stats
    def __await__(self) -> Generator[Any, None, "ConnectionSync"]:
        """`conn = await connect_sync(...)` opens the replica on the worker thread and gives back this connection."""
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
        """Pull remote changes into the replica.

        Returns True if new changes were applied and False if the remote had none (decided by the changes'
        `.empty()`). Local changes that were not pushed yet are kept. The network wait runs on the sync lane while SQL
        goes on; the changes are applied on the SQL worker between transactions, so SQL awaited after pull() returns
        sees them. If a transaction stays open on this connection for `TRANSACTION_WAIT_SECONDS`, pull() raises
        `turso.OperationalError` and applies nothing; the next pull applies those changes. Cancelling the await
        returns at once; the pull still ends on the lane.
        """
        return await self._run_on_lane(self._pull_on_lane)

    async def push(self) -> None:
        """Push the local changes to the remote: everything committed before push() was called, and possibly more.

        Runs on the sync lane while SQL goes on. Cancelling the await returns at once; the push still ends on the lane,
        so its rows reach the remote once, and the next push sends whatever it did not.
        """
        await self._run_on_lane(self._push_on_lane)

    async def checkpoint(self) -> None:
        """Checkpoint the replica's write-ahead log into the database file (`stats().main_wal_size` drops to 0).

        Takes its turn among the sync operations, then runs on the SQL worker between transactions (raising
        `turso.OperationalError` if a transaction stays open for `TRANSACTION_WAIT_SECONDS`).
        """
        await self._run_on_lane(self._checkpoint_on_lane)

    async def stats(self) -> SyncStats:
        """Report the replica's sync counters: pending local changes, WAL sizes, last sync times, network bytes.

        Takes its turn among the sync operations on the sync lane, so it waits for a pull or push in flight.
        """
        return await self._run_on_lane(self._stats_on_lane)

    async def execute_fetchall(self, sql: str, parameters: Union[Sequence[Any], Mapping[str, Any]] = ()) -> list[Any]:
        """Run one statement and return all its rows, in one trip to the worker thread.

        The same rows as `await (await conn.execute(sql, parameters)).fetchall()`, built by `row_factory` as there,
        in one job on the worker instead of three (creating the cursor, executing, fetching): about half the time of
        a small query's round trip. Use it for queries whose rows you want at once; keep `execute` for a cursor's
        `description`, `lastrowid` or `rowcount`, or to read a large result in parts with `fetchmany`.
        """
        return await self._run(functools.partial(self._fetchall_blocking, sql, parameters))

    def transaction(self) -> Transaction:
        """`async with conn.transaction():` runs the block as one transaction: BEGIN, then COMMIT, or ROLLBACK if the
        block raises (also when it is cancelled). Use it for every write on a connection that tasks share.

        Blocks on one connection take turns: while one is open, statements from other tasks (and their blocks) wait
        until it has ended, so one task's rollback never undoes another's commit. The block belongs to the task that
        entered it and the tasks it starts inside it. Nested in the same task it is a SAVEPOINT. Inside it,
        `commit()` and `rollback()` raise `turso.ProgrammingError`. Pulled changes are applied, and checkpoints run,
        between blocks. Raises `turso.ProgrammingError` if a transaction opened outside any block (an uncommitted
        `execute("INSERT ...")`) is still open. The exact order is in the README ("Sharing a connection").
        """
        if self._state is not _OPENED or _get_running_loop() is not self._loop:
            self._raise_unusable()
        # Made per block, not kept: a connection holding its own bound methods could only be collected as a cycle.
        return Transaction(
            TransactionHost(
                self._transaction_turns,
                self._loop,
                self._check_usable,
                self._queue_transaction_step,
                self._mirror_transaction_turns,
            )
        )

    async def commit(self) -> None:
        """Commit the transaction the connection has open (DB-API; a no-op without one).

        Inside a `transaction()` block it raises `turso.ProgrammingError` (the block commits when it ends); from
        another task while a block is open, it waits for the block to end.
        """
        if self._turns_busy:
            self._transaction_turns.refuse_in_block("commit")
        await self._run(self._commit_blocking)

    async def rollback(self) -> None:
        """Roll back the transaction the connection has open (DB-API; a no-op without one).

        Inside a `transaction()` block it raises `turso.ProgrammingError` (raise an exception in the block to roll it
        back); from another task while a block is open, it waits for the block to end.
        """
        if self._turns_busy:
            self._transaction_turns.refuse_in_block("rollback")
        await self._run(self._rollback_blocking)

    # sync() and background sync (the machinery is in background_sync_aio.py)
    async def sync(self) -> bool:
        """Push the local changes, then pull the remote's; returns what pull returns (True if changes came in).

        The push is left out when `stats()` counts no local change, since an empty push still costs a request: this
        is what a background sync runs every round.
        """
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
        """Keep the replica in sync: push, then pull, at once and then every `interval` seconds, until stopped.

        Returns the running `BackgroundSync`, also an async context manager (leaving the block stops it); `close()`
        stops it too. While rounds fail (say the remote is unreachable), the waits grow as
        `min(interval * 2**failures, max_backoff)` (never below `interval`), with ±20% jitter; its `status` says how
        it goes (`status.healthy` for a health check). After a successful round it checkpoints when the WAL holds
        more than `checkpoint_wal_bytes` (16 MiB; None: never). Raises `turso.ProgrammingError` if this connection
        already syncs in the background, TypeError or ValueError for an `interval` or `max_backoff` that is not a
        finite number of seconds > 0, or a `checkpoint_wal_bytes` that is not None or an int >= 0.
        """
        if self._state is not _OPENED or _get_running_loop() is not self._loop:
            self._raise_unusable()
        if self._background is not None and self._background.status.running:
            raise ProgrammingError("This connection already syncs in the background; stop that one first")
        self._background = BackgroundSync(
            self, interval, max_backoff=max_backoff, checkpoint_wal_bytes=checkpoint_wal_bytes
        )
        return self._background

    @property
    def request_timeout(self) -> float:
        """Seconds a sync request may take to connect, or wait for the next byte of its answer, before its pull, push
        or sync fails with `turso.OperationalError`; 30 by default. Set it at any time; the next request uses it."""
        return self._request_timeout

    @request_timeout.setter
    def request_timeout(self, value: float) -> None:
        self._request_timeout = seconds("request_timeout", value)
        engine = self._engine
        if engine is not None:
            engine.request_timeout = self._request_timeout

    def __del__(self) -> None:
        # Unclosed connection being garbage collected: warn like asyncio and aiosqlite do, then let both threads
        # close what they hold and exit. Nothing here touches the event loop, which may be closed or elsewhere.
        if self._state is not _State.OPENED:
            return
        self._state = _State.CLOSED
        warnings.warn(
            "ConnectionSync was never closed; use `async with connect_sync(...)` or `await conn.close()`",
            ResourceWarning,
            source=self,
        )
        # The last job must not refer to this connection, which is being collected.
        self._stop_threads_quietly(_close_quietly_and_stop(self._engine, self._conn, self._path_claim))

    async def _open(self) -> "ConnectionSync":
        if self._state is _State.CLOSED:
            raise ProgrammingError("Cannot open a closed connection; make a new one with connect_sync()")
        if self._state is _State.UNOPENED:
            self._start_threads(asyncio.get_running_loop())
        try:
            await asyncio.shield(self._open_future)
        except asyncio.CancelledError:
            # A bootstrap in flight fails at once; the worker then removes what it created, and both threads exit.
            # Nobody awaits the open's outcome any more: mark its error retrieved, so asyncio does not log it.
            self._open_future.add_done_callback(_retrieve_outcome)
            self._begin_close()
            self._stop_sql_worker()
            raise
        except BaseException:
            await self.close()
            raise
        return self

    def _start_threads(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._open_future = loop.create_future()
        on_loop_closed = weakref.WeakMethod(self._stop_after_loop_closed)
        # Two names for the SQL worker: `_worker` is what the base class calls it, `_runner` has our runner's type.
        self._runner = self._worker = _SqlWorker.for_jobs(self._jobs, loop, on_loop_closed)
        self._lane = _SyncLane.for_jobs(self._lane_jobs, loop, on_loop_closed)
        self._jobs.put_nowait((self._open_future, self._open_blocking))
        try:
            self._worker.start()
        except BaseException:
            # The OS refused a thread: nothing runs, so there is nothing to stop, and close() must not wait for it.
            self._state = _State.CLOSED
            raise
        self._stopped = loop.create_future()
        self._lane_stopped = loop.create_future()
        self._state = _State.OPENED
        try:
            self._lane.start()
        except BaseException:
            # No sync lane: stop the SQL worker (close() then waits for nothing on the lane) and fail the open.
            self._lane_stopped.set_result(None)
            self._begin_close()
            self._stop_sql_worker()
            raise

    def _open_blocking(self) -> None:
        # Runs on the SQL worker: open the blocking connection and mirror its settings for the property getters.
        try:
            connector = self._connector
            if isinstance(connector, _ReplicaOpener):
                blocking = connector.open(self._take_over_engine)
            else:
                blocking = connector()
                self._take_over_engine(blocking, 0.0)
        finally:
            self._open_ended.set()
        self._conn = blocking
        self._sync = blocking
        self._isolation_level_cache = blocking.isolation_level
        self._row_factory_cache = blocking.row_factory
        self._text_factory_cache = blocking.text_factory
        self._autocommit_cache = blocking.autocommit

    def _take_over_engine(self, blocking: BlockingConnectionSync, long_poll_seconds: float) -> SyncEngine:
        # On the SQL worker, while opening: drive `blocking`'s sync engine ourselves from now on (a close() that
        # began meanwhile fails its requests at once).
        engine = self._engine = SyncEngine(blocking, self._request_timeout, long_poll_seconds)
        if self._refusing:
            engine.abort()
        return engine

    def _begin_close(self) -> None:
        # Refuse new work and queue the sync lane's last job, behind the sync operations already called.
        if self._state is not _State.OPENED:
            return
        self._state = _State.CLOSED
        if self._path_claim is not None:
            self._path_claim.begin_closing()
        self._lane_jobs.put_nowait(
            (None, functools.partial(_settle_and_stop, self._lane, cast("asyncio.Future[None]", self._lane_stopped)))
        )

    def _stop_sql_worker(self) -> None:
        # The lane starts no new request (its operation in flight, if any, fails at its next one, and the operations
        # after it fail at once); then the SQL worker's last job closes the blocking connection, settles _stopped and
        # ends the worker, unless it is queued already.
        self._refuse_new_requests()
        stopped = cast("asyncio.Future[None]", self._stopped)
        deliver = self._runner.deliver

        def close_and_stop() -> object:
            error = self._close_and_forget()
            if error is None:
                deliver(_set_result_unless_done, stopped, None)
            else:
                deliver(_set_exception_unless_done, stopped, error)
            return STOP_RUNNING_SENTINEL

        self._runner.stop_with(close_and_stop)

    async def _sql_worker_ended(self, stopped: "asyncio.Future[None]") -> bool:
        # Wait for the SQL worker's last job: the SQL queued before close() runs first, for as long as it takes,
        # except a partial-sync statement whose page reads the remote does not answer (they cannot fail: see
        # SyncEngine._read_page); close() then returns (False), and the worker exits once the pages arrive.
        while not stopped.done():
            await asyncio.wait([stopped], timeout=LANE_CLOSE_SECONDS)
            engine = self._engine
            if not stopped.done() and engine is not None and engine.fetching_pages:
                logger.warning(
                    "close() returned while a statement waits for pages from the remote (partial sync); the SQL "
                    "worker closes the replica and exits once they arrive"
                )
                return False
        return True

    def _refuse_new_requests(self) -> None:
        # The request in flight fails now (its socket is shut), and no request starts after it.
        self._refusing = True
        engine = self._engine
        if engine is not None:
            engine.abort()
        self._open_ended.set()

    def _close_and_forget(self) -> Optional[Exception]:
        # On the SQL worker, at its last job: close the engine and the blocking connection, and drop this connection's
        # references to them. The driver's close() leaves the native sync database alive, and with it the replica's
        # file handles and locks (another process could not open the replica), until nothing refers to it. Then
        # release the path. Returns the close error, if any.
        engine, blocking = self._engine, self._conn
        self._conn = self._sync = self._engine = None
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

    def _close_quietly_and_forget(self) -> object:
        # The SQL worker's last job once the loop has closed: as close()'s, with nobody to hear of an error.
        self._close_and_forget()
        return STOP_RUNNING_SENTINEL

    def _release_path(self) -> None:
        # The replica's file may be opened again (by this process: another one waits for the file locks).
        if self._path_claim is not None:
            self._path_claim.release()

    def _stop_threads_quietly(self, last_job: Callable[[], object]) -> None:
        # Nobody is left to hear of a close error (garbage collection, loop closed): stop both threads at once.
        self._refuse_new_requests()
        if self._path_claim is not None:
            self._path_claim.begin_closing()
        self._lane_jobs.put_nowait((None, functools.partial(_settle_and_stop, self._lane, None)))
        self._runner.stop_with(last_job)

    def _stop_after_loop_closed(self) -> None:
        # Runs on a thread of ours when a result could not be delivered because the loop has closed: nobody is left
        # to await this connection's results, so both threads close what they hold and exit.
        if self._state is not _State.OPENED:
            return
        self._state = _State.CLOSED
        self._stop_threads_quietly(self._close_quietly_and_forget)

    def _blocking(self) -> BlockingConnectionSync:
        # Runs on the worker, after the open job (jobs run in order); None only if opening failed.
        blocking = self._sync
        if blocking is None:
            raise ProgrammingError("Connection is not open")
        return blocking

    def _engine_for_lane(self, operation: str) -> SyncEngine:
        # Runs on the lane at the start of each operation: the engine once the open has ended, unless close() gave up
        # waiting for the lane (the operation then never starts) or the open failed (its await says why).
        engine = self._engine
        if engine is None:
            # The open has not ended yet, or failed.
            self._open_ended.wait()
            engine = self._engine
        if self._refusing or engine is None:
            raise self._unusable_error(operation)
        self._lane.current = operation
        return engine

    # The sync operations as run on the lane; apply and checkpoint are handed to the SQL worker, which runs them
    # between transactions while the lane waits (so their turn lasts until they have ended).
    def _pull_on_lane(self) -> bool:
        # No reference to the engine is kept here while the worker applies: a failed apply may reopen the replica.
        changes = self._engine_for_lane("pull").wait_changes()
        if changes is None or changes.empty():
            return False
        apply = functools.partial(self._apply_pulled_blocking, [changes])
        del changes  # held by `apply` alone, which the worker drops once it ran: a later pull can fetch them again
        self._runner.run_between_transactions(apply, "apply pulled changes", self._in_transaction_blocking)
        return True

    def _push_on_lane(self) -> None:
        self._engine_for_lane("push").push_changes()

    def _checkpoint_on_lane(self) -> None:
        engine = self._engine_for_lane("checkpoint")
        self._runner.run_between_transactions(engine.checkpoint, "checkpoint", self._in_transaction_blocking)

    def _stats_on_lane(self) -> SyncStats:
        return cast(SyncStats, self._engine_for_lane("read stats").stats())

    def _apply_pulled_blocking(self, pulled: list[Any]) -> None:
        # On the SQL worker, between transactions: apply the changes the lane fetched (`pulled` holds them, so that
        # they are dropped as soon as the engine took them). A failure after they were applied is reported as
        # success; one that wedged the connection reopens the replica (see _sync_aio/pull_recovery.py).
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
        # On the SQL worker, after a failed apply, before any other job: if the connection can no longer read its
        # replica, drop the native database and open the replica again. Returns the error for the pull to raise.
        blocking, engine = self._sync, self._engine
        if blocking is None or engine is None or not is_wedged(blocking):
            return failure
        self._conn = self._sync = self._engine = None
        _close_quietly(engine, blocking)
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
        reopened = cast(BlockingConnectionSync, self._sync)
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
        self._conn = self._sync = cast(BlockingConnectionSync, UnusableConnection(message))
        self._engine = None
        logger.warning("%s", message)
        return OperationalError(message)

    def _unusable_error(self, operation: str) -> Error:
        # A sync operation on a connection without an engine: closed, or wedged and not reopened.
        if self._unusable is not None and not self._refusing:
            return OperationalError(self._unusable)
        return ProgrammingError(f"Cannot {operation}: the connection was closed before the {operation} started")

    def _in_transaction_blocking(self) -> bool:
        # On the SQL worker: whether a transaction is open (apply and checkpoint wait for it to end).
        return (self._sync or self._blocking()).in_transaction

    def _commit_blocking(self) -> None:
        (self._sync or self._blocking()).commit()

    def _rollback_blocking(self) -> None:
        (self._sync or self._blocking()).rollback()

    def _fetchall_blocking(self, sql: str, parameters: Union[Sequence[Any], Mapping[str, Any]]) -> list[Any]:
        # execute_fetchall's job: the statement on a fresh blocking cursor, every row (built by row_factory), closed.
        cursor = (self._sync or self._blocking()).cursor()
        try:
            cursor.execute(sql, parameters)
            return cursor.fetchall()
        finally:
            cursor.close()

    def _raise_unusable(self) -> None:
        # The reason a call cannot be queued; only reached when one cannot (the common path checks one flag).
        if self._state is _State.UNOPENED:
            raise ProgrammingError("Connection is not open; use `await connect_sync(...)` or `async with` first")
        if self._state is _State.CLOSED:
            raise ProgrammingError("Cannot operate on a closed connection")
        raise ProgrammingError("ConnectionSync can only be used from the event loop that opened it")

    async def _run(self, func: Callable[[], _T]) -> _T:
        # The scheduling pattern of the whole driver: a future for the result, then the job on the unbounded queue.
        # Cancelling this await (or timing it out) cancels only `future`: the job still runs, in order, and its
        # result is dropped (see _JobRunner). Inlined on purpose: this is every awaited call's path. While a
        # transaction() block is open (`_turns_busy`), a call from another task first waits for its turn.
        if self._state is not _OPENED or self._turns_busy or _get_running_loop() is not self._loop:
            await self._take_turn()
        future: asyncio.Future[_T] = self._loop.create_future()
        self._jobs.put_nowait((future, func))
        return await future

    async def _run_on_lane(self, func: Callable[[], _T]) -> _T:
        # The same pattern on the sync lane's queue.
        if self._state is not _OPENED or _get_running_loop() is not self._loop:
            self._raise_unusable()
        future: asyncio.Future[_T] = self._loop.create_future()
        self._lane_jobs.put_nowait((future, func))
        return await future

    def _run_nowait(self, func: Callable[[], Any]) -> None:
        # Queue a job without awaiting it (the inherited cursor creation and property setters use this). Nobody
        # awaits its result, so a success does not wake the loop; a failure goes to the loop's exception handler.
        # While another task's transaction() block is open, the job is held back until the caller's turn.
        if self._state is not _OPENED or self._turns_busy or _get_running_loop() is not self._loop:
            if self._state is not _OPENED or _get_running_loop() is not self._loop:
                self._raise_unusable()
            if self._transaction_turns.defer((None, func)):
                return
        self._jobs.put_nowait((None, func))

    def _check_usable(self) -> None:
        if self._state is not _OPENED or _get_running_loop() is not self._loop:
            self._raise_unusable()

    def _queue_transaction_step(
        self, future: Optional["asyncio.Future[Any]"], step: Callable[[BlockingConnection], Any]
    ) -> None:
        # A transaction() block's BEGIN, COMMIT or ROLLBACK, queued past the turns (the block has the turn).
        if self._state is not _OPENED:
            if future is not None and not future.done():
                future.set_exception(ProgrammingError("the connection was closed while the transaction() block ran"))
            return
        self._jobs.put_nowait((future, functools.partial(self._run_transaction_step, step)))

    def _run_transaction_step(self, step: Callable[[BlockingConnection], Any]) -> Any:
        # On the SQL worker.
        return step(self._sync or self._blocking())

    def _mirror_transaction_turns(self) -> None:
        self._turns_busy = self._transaction_turns.busy

    async def _take_turn(self) -> None:
        # The slow path of an SQL call: say why it cannot be queued, or wait until no other task's transaction()
        # block is open (at once when none is, or when the caller is inside the innermost one).
        if self._state is not _OPENED or _get_running_loop() is not self._loop:
            self._raise_unusable()
        turns = self._transaction_turns
        await turns.wait_turn()
        # Back to the one flag once no block is open and no statement let go by one is still on its way.
        self._turns_busy = turns.busy
        if self._state is not _OPENED:
            self._raise_unusable()


# Read on every call: a module-level name is cheaper than `_State.OPENED` and `asyncio.get_running_loop`.
_OPENED = _State.OPENED
_get_running_loop = asyncio.get_running_loop


class _JobRunner(Worker):
    """The driver's Worker thread (daemon, queue of `(future, function)` jobs, run in order) with its own run loop,
    which keeps the guarantees the driver's loop does not:

    - Every job runs, in order, also when its caller was cancelled (the driver's loop skips a job whose future is
      cancelled, so a cancelled INSERT or push would be lost, or not, depending on timing); an outcome nobody waits
      for is dropped on the loop, without the InvalidStateError the driver's `future.set_result` would log there.
    - A job raising SystemExit (say, from a row_factory) fails its call with InternalError; the driver's loop only
      catches Exception, so its thread would end and leave that await and close() waiting forever.
    - Once the event loop has closed, handing a result back raises RuntimeError; instead of a traceback and a thread
      left running for nobody, `on_loop_closed` stops the connection's threads.
    - A job queued without a future (nobody awaits it: cursor creation, a property setter) does not wake the loop
      when it succeeds.
    - Between jobs nothing of the last job is kept (its function, outcome, traceback frames), so an unclosed
      connection can still be garbage collected while its threads wait.
    - A job may ask to wait until the connection is between transactions (see `_BetweenTransactions`): the loop then
      runs the jobs that follow and runs it as soon as no transaction is open, or fails it after
      `TRANSACTION_WAIT_SECONDS`. Only the SQL worker is given such jobs.

    Working around each of these from outside the driver's loop cost a Python call per job on the worker and one on
    the loop; in the loop itself they cost a check each. Two runners serve a connection: `_SqlWorker` and `_SyncLane`.
    """

    # The queue the Worker was given, with our job type (a job may have no future); read by run().
    jobs: "SimpleQueue[_Job]"
    # Called on the thread when the loop has closed; held weakly, so that an unclosed connection can still be
    # collected (and warn) while its threads idle.
    on_loop_closed: "weakref.WeakMethod[Callable[[], None]]"
    # The thread's name, for the threads list and for the tests that count threads.
    thread_name = "turso-async-worker"

    @classmethod
    def for_jobs(
        cls: type[_Runner],
        jobs: "SimpleQueue[_Job]",
        loop: asyncio.AbstractEventLoop,
        on_loop_closed: "weakref.WeakMethod[Callable[[], None]]",
    ) -> _Runner:
        """A runner for `jobs` (not started), handing results to `loop`."""
        # The cast: the driver's Worker types its queue for its own jobs, which always have a future; ours may not.
        runner = cls(cast("SimpleQueue[Optional[tuple[asyncio.Future[Any], Callable[[], Any]]]]", jobs), loop)
        runner.name = cls.thread_name
        runner.jobs = jobs
        runner.on_loop_closed = on_loop_closed
        runner.prepare()
        return runner

    def prepare(self) -> None:
        """Set up what a kind of runner adds, before it starts."""

    def run(self) -> None:
        get_job = self.jobs.get
        # deliver(), inlined: this loop runs once per job, and a method call here is a measurable part of a job.
        call_soon_threadsafe = cast(Callable[..., object], self._loop.call_soon_threadsafe)
        settle: Callable[..., object]
        # The job waiting for the connection to be between transactions, if any.
        waiting: Optional[_BetweenTransactions] = None
        while True:
            future, function = get_job() if waiting is None else waiting.next_job(get_job)
            try:
                outcome = function()
            except BaseException as error:
                traceback.clear_frames(error.__traceback__)
                # A turso.Error as it is; a native error the driver did not map, or SystemExit, made one.
                outcome = error if isinstance(error, Error) else job_error(error)
                settle = _set_exception_unless_done if future is not None else _report_unawaited_failure
            else:
                if outcome is STOP_RUNNING_SENTINEL:
                    _BetweenTransactions.fail_at_close(waiting)
                    return
                if outcome is _NOT_BETWEEN_TRANSACTIONS:
                    waiting = cast(_BetweenTransactions, function)
                settle = _set_result_unless_done
            del function
            if future is not None or settle is _report_unawaited_failure:
                try:
                    call_soon_threadsafe(settle, future, outcome)
                except RuntimeError as error:
                    self._undeliverable(error)
            del future, outcome
            if waiting is not None:
                waiting = waiting.run_if_between_transactions()

    def deliver(self, settle: Callable[..., object], future: Optional["asyncio.Future[Any]"], outcome: Any) -> None:
        """On the thread: run `settle(future, outcome)` on the loop, or stop the threads if the loop has closed."""
        try:
            self._loop.call_soon_threadsafe(settle, future, outcome)
        except RuntimeError as error:
            self._undeliverable(error)

    def _undeliverable(self, error: RuntimeError) -> None:
        # call_soon_threadsafe raised: if the loop has closed, nobody is left to hear of any result, so stop.
        if not self._loop.is_closed():
            raise error
        on_loop_closed = self.on_loop_closed()
        if on_loop_closed is not None:
            on_loop_closed()


class _SqlWorker(_JobRunner):
    """The connection's SQL worker: every statement, in call order, and the local steps of sync operations (applying
    pulled changes, checkpoints), which the sync lane hands over with `run_between_transactions`."""

    # Serializes handing a step over with queueing the last job, so that no step is queued behind the last job (where
    # it would never run and its lane would wait forever).
    stop_lock: threading.Lock
    # Set, under stop_lock, when the last job is queued.
    stopping: bool

    def prepare(self) -> None:
        self.stop_lock = threading.Lock()
        self.stopping = False

    def stop_with(self, last_job: Callable[[], object]) -> None:
        """Queue the worker's last job (it returns STOP_RUNNING_SENTINEL), unless one is queued already."""
        with self.stop_lock:
            if self.stopping:
                return
            self.stopping = True
            self.jobs.put_nowait((None, last_job))

    def run_between_transactions(
        self, step: Callable[[], Any], description: str, in_transaction: Callable[[], bool]
    ) -> Any:
        """On the sync lane: run `step` on this worker once `in_transaction()` is False, and wait for its outcome.

        Raises OperationalError if a transaction stays open for TRANSACTION_WAIT_SECONDS, and ProgrammingError if
        the connection closes first.
        """
        handoff = _BetweenTransactions(step, description, in_transaction)
        with self.stop_lock:
            if self.stopping:
                raise ProgrammingError(f"Cannot {description}: the connection was closed")
            self.jobs.put_nowait((None, handoff))
        return handoff.outcome()


class _SyncLane(_JobRunner):
    """The connection's sync lane: one sync engine operation at a time (pull's network wait, push, stats; apply and
    checkpoint are handed to the SQL worker and waited for), so that an operation's turn lasts until it has ended on
    its thread, also when its awaiter was cancelled. Local SQL never queues here."""

    thread_name = "turso-sync-lane"
    # The operation now running or last run, for close()'s warning when it leaves the lane waiting on the remote.
    current: str

    def prepare(self) -> None:
        self.current = "nothing"


# What a `_BetweenTransactions` job returns when a transaction is open: the run loop then keeps it waiting.
_NOT_BETWEEN_TRANSACTIONS = object()


class _BetweenTransactions:
    """A step that the sync lane hands to the SQL worker (apply pulled changes, checkpoint), to run only while no
    transaction is open: running it inside one fails with "Database is busy" and can lose the pulled changes. The lane
    waits in `outcome()`; the worker's run loop settles it exactly once (runs it, gives up, or fails it at close)."""

    __slots__ = ("step", "description", "in_transaction", "deadline", "done", "result", "error")

    step: Callable[[], Any]
    description: str
    in_transaction: Callable[[], bool]
    # When the worker stops waiting for the open transaction to end (time.monotonic()).
    deadline: float
    # Set once the outcome is known.
    done: threading.Event
    result: Any
    error: Optional[BaseException]

    def __new__(
        cls, step: Callable[[], Any], description: str, in_transaction: Callable[[], bool]
    ) -> "_BetweenTransactions":
        handoff = super().__new__(cls)
        handoff.step, handoff.description, handoff.in_transaction = step, description, in_transaction
        handoff.deadline = 0.0
        handoff.done = threading.Event()
        handoff.result = handoff.error = None
        return handoff

    def __call__(self) -> object:
        # On the worker, as a job: run now, or ask the run loop to keep it until the transaction ends.
        self.deadline = time.monotonic() + TRANSACTION_WAIT_SECONDS
        return _NOT_BETWEEN_TRANSACTIONS if self.run_if_between_transactions() is self else None

    def run_if_between_transactions(self) -> Optional["_BetweenTransactions"]:
        """On the worker, after each job while it waits: run it if no transaction is open (None), give up if the
        deadline passed (None), or keep waiting (itself)."""
        if self.done.is_set():
            return None
        try:
            if self.in_transaction():
                if time.monotonic() < self.deadline:
                    return self
                self.give_up()
                return None
        except BaseException as error:
            self.fail(error)
            return None
        self._run_step()
        return None

    def next_job(self, get_job: Callable[[bool, float], _Job]) -> _Job:
        """On the worker, while this step waits: the next job, or, if none comes before the deadline, a job that does
        nothing once this step has given up."""
        try:
            return get_job(True, max(0.0, self.deadline - time.monotonic()))
        except Empty:
            self.give_up()
            return (None, _do_nothing)

    @staticmethod
    def fail_at_close(waiting: Optional["_BetweenTransactions"]) -> None:
        """On the worker, at its last job: a step still waiting fails (the connection is closing)."""
        if waiting is not None:
            waiting.fail(ProgrammingError(f"Cannot {waiting.description}: the connection was closed"))

    def give_up(self) -> None:
        """Settle with the error that says the transaction stayed open; the pulled changes are dropped, not lost."""
        self.fail(
            OperationalError(
                f"could not {self.description}: a transaction stayed open on this connection for "
                f"{TRANSACTION_WAIT_SECONDS:g} s; commit or roll back before syncing (pulled changes were not "
                "applied; the next pull applies them)"
            )
        )

    def fail(self, error: BaseException) -> None:
        """Settle with `error` (raised by outcome() on the lane)."""
        self.error = error
        self.done.set()

    def outcome(self) -> Any:
        """On the lane: wait until the worker settled this step, then return its result or raise its error."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result

    def _run_step(self) -> None:
        try:
            self.result = self.step()
        except BaseException as error:
            self.error = error
        finally:
            # Drop the step (and the pulled changes it holds) as soon as it ran.
            del self.step
            self.done.set()


def _do_nothing() -> None:
    pass


def _settle_and_stop(lane: _SyncLane, lane_stopped: Optional["asyncio.Future[None]"]) -> object:
    # The lane's last job: tell close() (if it listens) that the lane has ended, then end it.
    if lane_stopped is not None:
        lane.deliver(_set_result_unless_done, lane_stopped, None)
    return STOP_RUNNING_SENTINEL


# On the loop: hand an outcome to the caller's future, unless the caller stopped waiting (the future is cancelled).
def _set_result_unless_done(future: "asyncio.Future[Any]", result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception_unless_done(future: "asyncio.Future[Any]", error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _retrieve_outcome(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()


# On the loop: a job nobody awaits (cursor creation, a property setter) failed; say so as asyncio does for an
# exception nobody retrieved.
def _report_unawaited_failure(future: None, error: BaseException) -> None:
    asyncio.get_running_loop().call_exception_handler(
        {"message": "a ConnectionSync operation queued without an await failed", "exception": error}
    )


# The SQL worker's last job when the connection was garbage collected: close the replica, ignoring errors (nobody is
# left to hear of them), release the replica's path, then end the worker.
def _close_quietly_and_stop(
    engine: Optional[SyncEngine], blocking: Optional[BlockingConnection], path_claim: Optional[ReplicaPathClaim]
) -> Callable[[], object]:
    def close_and_stop() -> object:
        _close_quietly(engine, blocking)
        if path_claim is not None:
            path_claim.release()
        return STOP_RUNNING_SENTINEL

    return close_and_stop


class _ReplicaOpener:
    """connect_sync's connector: opens the replica with the driver's `connect_sync` and hands its engine to us.

    A fresh replica (no metadata beside it yet) is opened locally, and its bootstrap then runs as a pull through our
    transport, so that a silent remote fails it after `request_timeout` instead of holding the open for good. Partial
    sync keeps the driver's own bootstrap, which the native open needs. Before that, the replica's file is claimed for
    this connection (one per file per process: see _sync_aio/open_replicas.py) and its files are checked (see
    _sync_aio/replica_files.py). On failure the claim is released, the files this attempt created are removed (never
    files that were there before), and the error names the replica and the remote.
    """

    def __init__(
        self,
        path: str,
        remote_url: Optional[Union[str, Callable[[], Optional[str]]]],
        options: dict[str, Any],
    ) -> None:
        self.path = path
        self.remote_url = remote_url
        # The keyword arguments of the driver's connect_sync.
        self.options = options
        # Held from the open until the connection has closed the replica.
        self.path_claim = ReplicaPathClaim(path)

    def __call__(self) -> BlockingConnectionSync:
        """The plain connector: the driver's own open, bootstrap included (its HTTP has no deadline)."""
        return blocking_connect_sync(self.path, self.remote_url, **self.options)

    def open(self, take_over: Callable[[BlockingConnectionSync, float], SyncEngine]) -> BlockingConnectionSync:
        """On the SQL worker: check, open, let `take_over` drive the engine, and bootstrap a fresh replica."""
        check_arguments(self.path, self.remote_url)
        self.path_claim.acquire()
        try:
            check_replica_files(self.path)
            return self._open(take_over)
        except BaseException:
            self.path_claim.release()
            raise

    def _open(self, take_over: Callable[[BlockingConnectionSync, float], SyncEngine]) -> BlockingConnectionSync:
        existing = replica_files(self.path)
        options = self.options
        bootstrap = bool(options["bootstrap_if_empty"]) and options["partial_sync_experimental"] is None
        bootstrap = bootstrap and not os.path.exists(self.path + "-info")
        long_poll_seconds = (options["long_poll_timeout_ms"] or 0) / 1000
        blocking: Optional[BlockingConnectionSync] = None
        engine: Optional[SyncEngine] = None
        try:
            if bootstrap:
                blocking = blocking_connect_sync(self.path, self.remote_url, **dict(options, bootstrap_if_empty=False))
            else:
                blocking = blocking_connect_sync(self.path, self.remote_url, **options)
            engine = take_over(blocking, long_poll_seconds)
            if bootstrap:
                engine.bootstrap()
            return blocking
        except BaseException as error:
            _close_quietly(engine, blocking)
            for leftover in replica_files(self.path) - existing:
                try:
                    os.remove(leftover)
                except OSError:
                    pass
            dbapi_error = native_dbapi_error(error) or error
            if isinstance(dbapi_error, Error):
                message = f"cannot open sync replica {self.path!r} from {describe_remote(self.remote_url)}: {error}"
                raise type(dbapi_error)(message) from error
            raise


def _close_quietly(engine: Optional[SyncEngine], blocking: Optional[BlockingConnection]) -> None:
    # Close what an open that failed, or a connection nobody is left to hear from, holds; errors are of no use then.
    try:
        if engine is not None:
            engine.close()
        if blocking is not None:
            blocking.close()
    except Exception:
        pass


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
    """Make an asyncio connection to the sync replica at `path`, kept in sync with `remote_url`.

    Returns the connection unopened, at once: `await` it or use `async with`, which opens the replica on the
    connection's worker thread (and, if the local file is empty and `bootstrap_if_empty` is set, downloads the
    remote database first). Errors from opening (nothing listening, a URL that is not a sync URL, a refused token,
    a missing directory) are raised by that await, and leave no thread and no new files behind.

    The parameters are those of `turso.lib_sync.connect_sync`: `remote_url` (libsql://, https:// or http:// URL,
    or a callable evaluated per request; None reuses the URL saved in an existing replica), `auth_token` (string
    or callable, sent as a Bearer token), `client_name`, `long_poll_timeout_ms` (how long a pull may wait for new
    changes), `bootstrap_if_empty`, `partial_sync_experimental`, `experimental_features`, `isolation_level`,
    `remote_encryption_key` and `remote_encryption_cipher` (encrypted Turso Cloud databases),
    `push_operations_threshold`, `pull_bytes_threshold` and `logical_mvcc_pull`.
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
    return ConnectionSync(_ReplicaOpener(path, remote_url, options))
