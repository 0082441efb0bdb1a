"""Asyncio API for Turso sync replicas.

A sync replica is a local SQLite-compatible database file that Turso keeps in sync with a remote database: `pull`
brings remote changes in, `push` sends local ones out. This module makes the blocking sync driver
(`turso.lib_sync`) usable from asyncio: every operation runs on one worker thread per connection, in the order it
was awaited, so the event loop never blocks on the disk or the network.

    async with turso.aio.sync.connect("app.db", "libsql://db-org.turso.io", auth_token=token) as conn:
        await conn.execute("INSERT INTO notes(body) VALUES (?)", ("hello",))
        await conn.commit()
        await conn.push()          # send local changes to the remote
        changed = await conn.pull()  # True if remote changes were applied

Lifecycle: the worker thread starts when the connection is first awaited (or entered with `async with`) and has
exited when `close()` returns. It also stops after a failed or cancelled open, when the connection is garbage
collected without `close()` (with a ResourceWarning), and when its event loop closes.
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
import glob
import os
import traceback
import urllib.parse
import warnings
import weakref
from types import TracebackType

from .worker import STOP_RUNNING_SENTINEL, Worker
from .lib import (
    Connection as BlockingConnection,
    Error,
    InternalError,
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
from .background_sync_aio import BackgroundSync

_T = TypeVar("_T")

# A job for the worker thread: the future that awaits its outcome (None when nobody awaits it) and the function to run.
_Job = tuple[Optional["asyncio.Future[Any]"], Callable[[], Any]]

# URL schemes the sync driver can reach; libsql:// and turso:// are rewritten to https:// by the driver.
_REMOTE_SCHEMES = ("libsql", "turso", "https", "http")


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
        """The remote revision the replica last synced with; None before the first sync."""
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
    # Made by connect_sync(): no worker thread yet; awaiting the connection opens it.
    UNOPENED = "unopened"
    # The worker thread runs; the replica is opening or open.
    OPENED = "opened"
    # close() began, or opening failed or was cancelled: no new work is accepted.
    CLOSED = "closed"


class ConnectionSync(NonBlockingConnection):
    """An asyncio connection to a sync replica: the inherited async SQL API plus pull, push, checkpoint and stats.

    Make one with `connect_sync(...)` (also known as `turso.aio.sync.connect`) and open it with `await` or
    `async with`; it then belongs to that event loop. Operations run one at a time on the connection's worker
    thread, in the order they were called. Any operation after `close()` raises `turso.ProgrammingError`.
    """

    def __init__(self, connector: Callable[[], BlockingConnectionSync]) -> None:
        """Wrap `connector`, which opens the blocking sync connection; prefer `connect_sync(...)` to calling this.

        The connector runs on the worker thread, once, when the connection is first awaited.
        """
        # NonBlockingConnection.__init__ is not called on purpose: it would start its worker at once, bound to
        # whatever asyncio.get_event_loop() returns at that moment. We start the worker when the connection is
        # awaited, on the running loop.
        self._connector: Callable[[], BlockingConnectionSync] = connector
        # The worker's queue (named apart from the base class's _queue, which holds plain futures).
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        # The blocking connection, set on the worker by the open job: `_conn` for the inherited SQL API, and
        # `_sync` with its sync type for ours (no cast on the worker's path).
        self._conn = None
        self._sync: Optional[BlockingConnectionSync] = None
        self._state = _State.UNOPENED
        # Settled by the worker's last job, just before its thread exits; made when the worker starts.
        self._stopped: Optional[asyncio.Future[None]] = None
        # Mirrors of the blocking connection's settings, read on the worker once it is open.
        self._isolation_level_cache: Optional[str] = None
        self._row_factory_cache: Any = None
        self._text_factory_cache: Any = None
        self._autocommit_cache: object | bool | None = None
        # The background sync started by sync_in_background(), if any; close() stops it first.
        self._background: Optional[BackgroundSync] = None

    # internal worker is stopped here, and on every other way out: failed or cancelled open, garbage collection
    # (__del__), and the event loop closing (_JobRunner)
    async def close(self) -> None:
        """Close the replica and stop the worker thread.

        Work called before close() still runs first; work called after it raises `turso.ProgrammingError`. Safe to
        call more than once, also from several tasks: every call returns once the worker thread has exited.
        """
        # Background sync first: it would otherwise queue rounds on a closing connection (issue 14).
        if self._background is not None:
            await self._background.stop()
        stopped = self._stopped
        if stopped is None:
            # Never opened: there is no worker to stop.
            self._state = _State.CLOSED
            return
        self._begin_close()
        await asyncio.shield(stopped)
        # The worker settles `stopped` as its very last step, so this join returns at once.
        self._worker.join()

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
        `.empty()`). Local changes that were not pushed yet are kept.
        """
        return await self._run(self._pull_blocking)

    async def push(self) -> None:
        """Push the local changes (everything committed since the last push) to the remote."""
        await self._run(self._push_blocking)

    async def checkpoint(self) -> None:
        """Checkpoint the replica's write-ahead log into the database file (`stats().main_wal_size` drops to 0)."""
        await self._run(self._checkpoint_blocking)

    async def stats(self) -> SyncStats:
        """Report the replica's sync counters: pending local changes, WAL sizes, last sync times, network bytes."""
        return await self._run(self._stats_blocking)

    async def execute_fetchall(self, sql: str, parameters: Union[Sequence[Any], Mapping[str, Any]] = ()) -> list[Any]:
        """Run one statement and return all its rows, in one trip to the worker thread.

        The same rows as `await (await conn.execute(sql, parameters)).fetchall()`, built by `row_factory` as there,
        in one job on the worker instead of three (creating the cursor, executing, fetching): about half the time of
        a small query's round trip. Use it for queries whose rows you want at once; keep `execute` for a cursor's
        `description`, `lastrowid` or `rowcount`, or to read a large result in parts with `fetchmany`.
        """
        return await self._run(functools.partial(self._fetchall_blocking, sql, parameters))

    # --- issue 14: sync() and background sync (the machinery is in background_sync_aio.py) ---

    async def sync(self) -> bool:
        """Push the local changes, then pull the remote's; returns what pull returns (True if changes came in)."""
        await self.push()
        return await self.pull()

    def sync_in_background(self, interval: float, *, max_backoff: float = 60.0) -> BackgroundSync:
        """Keep the replica in sync: push, then pull, at once and then every `interval` seconds, until stopped.

        Returns the running `BackgroundSync`, also an async context manager (leaving the block stops it); `close()`
        stops it too. While rounds fail (say the remote is unreachable), the waits grow as
        `min(interval * 2**failures, max_backoff)` (never below `interval`), with ±20% jitter; its `status` says how
        it goes. Raises `turso.ProgrammingError` if this connection already syncs in the background, TypeError or
        ValueError for an `interval` or `max_backoff` that is not a finite number of seconds > 0.
        """
        if self._state is not _OPENED or _get_running_loop() is not self._loop:
            self._raise_unusable()
        if self._background is not None and self._background.status.running:
            raise ProgrammingError("This connection already syncs in the background; stop that one first")
        self._background = BackgroundSync(self, interval, max_backoff=max_backoff)
        return self._background

    def __del__(self) -> None:
        # Unclosed connection being garbage collected: warn like asyncio and aiosqlite do, then let the worker close
        # the blocking connection and exit. Nothing here touches the event loop, which may be closed or elsewhere.
        if self._state is not _State.OPENED:
            return
        self._state = _State.CLOSED
        warnings.warn(
            "ConnectionSync was never closed; use `async with connect_sync(...)` or `await conn.close()`",
            ResourceWarning,
            source=self,
        )
        self._queue_last_job(_close_quietly_and_stop(self._conn))

    async def _open(self) -> "ConnectionSync":
        if self._state is _State.CLOSED:
            raise ProgrammingError("Cannot open a closed connection; make a new one with connect_sync()")
        if self._state is _State.UNOPENED:
            self._start_worker(asyncio.get_running_loop())
        try:
            await asyncio.shield(self._open_future)
        except asyncio.CancelledError:
            # The worker cannot be interrupted mid-bootstrap: it closes the replica and exits once opening ends.
            self._begin_close()
            raise
        except BaseException:
            await self.close()
            raise
        return self

    def _start_worker(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._open_future = loop.create_future()
        # Two names for one thread: `_worker` is what the base class calls it, `_runner` has our runner's type.
        self._runner = self._worker = _JobRunner.for_jobs(
            self._jobs, loop, weakref.WeakMethod(self._stop_after_loop_closed)
        )
        self._jobs.put_nowait((self._open_future, self._open_blocking))
        try:
            self._worker.start()
        except BaseException:
            # The OS refused a thread: nothing runs, so there is nothing to stop, and close() must not wait for it.
            self._state = _State.CLOSED
            raise
        self._stopped = loop.create_future()
        self._state = _State.OPENED

    def _open_blocking(self) -> None:
        # Runs on the worker: open the blocking connection and mirror its settings for the property getters.
        blocking = self._connector()
        self._conn = blocking
        self._sync = blocking
        self._isolation_level_cache = blocking.isolation_level
        self._row_factory_cache = blocking.row_factory
        self._text_factory_cache = blocking.text_factory
        self._autocommit_cache = blocking.autocommit

    def _begin_close(self) -> None:
        # Queue the worker's last job (close the blocking connection, settle _stopped, exit) unless already queued.
        if self._state is not _State.OPENED:
            return
        self._state = _State.CLOSED
        stopped = cast("asyncio.Future[None]", self._stopped)
        deliver = self._runner.deliver

        def close_and_stop() -> object:
            try:
                if self._conn is not None:
                    self._conn.close()
            except Exception as error:
                deliver(_set_exception_unless_done, stopped, error)
            else:
                deliver(_set_result_unless_done, stopped, None)
            return STOP_RUNNING_SENTINEL

        self._queue_last_job(close_and_stop)

    def _queue_last_job(self, func: Callable[[], object]) -> None:
        # The last job returns STOP_RUNNING_SENTINEL, on which the worker exits (the job settles _stopped itself).
        self._jobs.put_nowait((None, func))

    def _stop_after_loop_closed(self) -> None:
        # Runs on the worker when a result could not be delivered because the loop has closed: nobody is left to
        # await this connection's results, so the worker closes the blocking connection and exits.
        if self._state is not _State.OPENED:
            return
        self._state = _State.CLOSED
        self._queue_last_job(_close_quietly_and_stop(self._conn))

    def _blocking(self) -> BlockingConnectionSync:
        # Runs on the worker, after the open job (jobs run in order); None only if opening failed.
        blocking = self._sync
        if blocking is None:
            raise ProgrammingError("Connection is not open")
        return blocking

    # The sync operations as run on the worker: bound methods (no closure per call), one frame each on the common
    # path (`_sync` is set; connections have no __len__ or __bool__, so `or` is one C check).
    def _pull_blocking(self) -> bool:
        return (self._sync or self._blocking()).pull()

    def _push_blocking(self) -> None:
        (self._sync or self._blocking()).push()

    def _checkpoint_blocking(self) -> None:
        (self._sync or self._blocking()).checkpoint()

    def _stats_blocking(self) -> SyncStats:
        # The driver's stats object comes from its native extension, which has no types.
        return (self._sync or self._blocking()).stats()  # type: ignore[no-any-return]  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

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
        # result is dropped (see _JobRunner). Inlined on purpose: this is every awaited call's path.
        if self._state is not _OPENED or _get_running_loop() is not self._loop:
            self._raise_unusable()
        future: asyncio.Future[_T] = self._loop.create_future()
        self._jobs.put_nowait((future, func))
        return await future

    def _run_nowait(self, func: Callable[[], Any]) -> None:
        # Queue a job without awaiting it (the inherited cursor creation and property setters use this). Nobody
        # awaits its result, so a success does not wake the loop; a failure goes to the loop's exception handler.
        if self._state is not _OPENED or _get_running_loop() is not self._loop:
            self._raise_unusable()
        self._jobs.put_nowait((None, func))


# Read on every call: a module-level name is cheaper than `_State.OPENED` and `asyncio.get_running_loop`.
_OPENED = _State.OPENED
_get_running_loop = asyncio.get_running_loop


class _JobRunner(Worker):
    """The driver's Worker thread (same name, daemon, queue of `(future, function)` jobs, run in order) with its own
    run loop, which keeps the guarantees the driver's loop does not:

    - Every job runs, in order, also when its caller was cancelled (the driver's loop skips a job whose future is
      cancelled, so a cancelled INSERT or push would be lost, or not, depending on timing); an outcome nobody waits
      for is dropped on the loop, without the InvalidStateError the driver's `future.set_result` would log there.
    - A job raising SystemExit (say, from a row_factory) fails its call with InternalError; the driver's loop only
      catches Exception, so its thread would end and leave that await and close() waiting forever.
    - Once the event loop has closed, handing a result back raises RuntimeError; instead of a traceback and a thread
      left running for nobody, `on_loop_closed` stops the worker.
    - A job queued without a future (nobody awaits it: cursor creation, a property setter) does not wake the loop
      when it succeeds.
    - Between jobs nothing of the last job is kept (its function, outcome, traceback frames), so an unclosed
      connection can still be garbage collected while its worker waits.

    Working around each of these from outside the driver's loop cost a Python call per job on the worker and one on
    the loop; in the loop itself they cost a check each.
    """

    # The queue the Worker was given, with our job type (a job may have no future); read by run().
    jobs: "SimpleQueue[_Job]"
    # Called on the worker when the loop has closed; held weakly, so that an unclosed connection can still be
    # collected (and warn) while its worker idles.
    on_loop_closed: "weakref.WeakMethod[Callable[[], None]]"

    @classmethod
    def for_jobs(
        cls,
        jobs: "SimpleQueue[_Job]",
        loop: asyncio.AbstractEventLoop,
        on_loop_closed: "weakref.WeakMethod[Callable[[], None]]",
    ) -> "_JobRunner":
        """A runner for `jobs` (not started), handing results to `loop`."""
        # The cast: the driver's Worker types its queue for its own jobs, which always have a future; ours may not.
        runner = cls(cast("SimpleQueue[Optional[tuple[asyncio.Future[Any], Callable[[], Any]]]]", jobs), loop)
        runner.jobs = jobs
        runner.on_loop_closed = on_loop_closed
        return runner

    def run(self) -> None:
        get_job = self.jobs.get
        # deliver(), inlined: this loop runs once per job, and a method call here is a measurable part of a job.
        call_soon_threadsafe = cast(Callable[..., object], self._loop.call_soon_threadsafe)
        settle: Callable[..., object]
        while True:
            future, function = get_job()
            try:
                outcome = function()
            except BaseException as error:
                traceback.clear_frames(error.__traceback__)
                outcome = error if isinstance(error, Exception) else _internal_error(error)
                settle = _set_exception_unless_done if future is not None else _report_unawaited_failure
            else:
                if outcome is STOP_RUNNING_SENTINEL:
                    return
                settle = _set_result_unless_done
            del function
            if future is not None or settle is _report_unawaited_failure:
                try:
                    call_soon_threadsafe(settle, future, outcome)
                except RuntimeError as error:
                    self._undeliverable(error)
            del future, outcome

    def deliver(self, settle: Callable[..., object], future: Optional["asyncio.Future[Any]"], outcome: Any) -> None:
        """On the worker: run `settle(future, outcome)` on the loop, or stop the worker if the loop has closed."""
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


# On the loop: hand an outcome to the caller's future, unless the caller stopped waiting (the future is cancelled).
def _set_result_unless_done(future: "asyncio.Future[Any]", result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception_unless_done(future: "asyncio.Future[Any]", error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


# On the loop: a job nobody awaits (cursor creation, a property setter) failed; say so as asyncio does for an
# exception nobody retrieved.
def _report_unawaited_failure(future: None, error: BaseException) -> None:
    asyncio.get_running_loop().call_exception_handler(
        {"message": "a ConnectionSync operation queued without an await failed", "exception": error}
    )


def _internal_error(error: BaseException) -> InternalError:
    # A job raised SystemExit or another non-Exception: the caller gets an error, the worker keeps running.
    internal = InternalError(f"a worker job raised {error!r}")
    internal.__cause__ = error
    return internal


# The worker's last job when nobody is left to hear of a close error (the connection was garbage collected, or its
# loop closed): close the blocking connection, ignoring errors, then end the worker.
def _close_quietly_and_stop(blocking: Optional[BlockingConnection]) -> Callable[[], object]:
    def close_and_stop() -> object:
        try:
            if blocking is not None:
                blocking.close()
        except Exception:
            pass
        return STOP_RUNNING_SENTINEL

    return close_and_stop


# `object` parameters: the checks are for callers without a type checker.
def _check_arguments(path: object, remote_url: object) -> None:
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OperationalError(f"cannot open sync replica {path!r}: directory {directory!r} does not exist")
    if remote_url is None or callable(remote_url):
        return
    if not isinstance(remote_url, str):
        raise TypeError(f"remote_url must be a str, a callable or None, not {type(remote_url).__name__}")
    try:
        parts = urllib.parse.urlsplit(remote_url)
    except ValueError as error:
        raise ProgrammingError(f"remote_url {remote_url!r} is not a valid URL: {error}") from None
    if parts.scheme not in _REMOTE_SCHEMES or not parts.hostname:
        raise ProgrammingError(
            f"remote_url {remote_url!r} is not a sync URL: expected libsql://HOST, https://HOST or http://HOST:PORT"
        )


# The database file and the files the sync engine keeps beside it (-wal, -info, -changes, temporary writes).
def _replica_files(path: str) -> set[str]:
    pattern = glob.escape(path)
    return {*glob.glob(pattern), *glob.glob(pattern + "-*"), *glob.glob(pattern + ".tmp.*")}


def _describe_remote(remote_url: Optional[Union[str, Callable[[], Optional[str]]]]) -> str:
    if remote_url is None:
        return "the remote saved in the replica"
    if callable(remote_url):
        return "the URL from the remote_url callable"
    return remote_url


# Runs on the worker: check the arguments, open the replica, and on failure remove the files this attempt created
# (never files that were there before) and say which replica and remote failed.
def _open_replica(
    path: str,
    remote_url: Optional[Union[str, Callable[[], Optional[str]]]],
    open_blocking: Callable[[], BlockingConnectionSync],
) -> BlockingConnectionSync:
    _check_arguments(path, remote_url)
    existing = _replica_files(path)
    try:
        return open_blocking()
    except BaseException as error:
        for leftover in _replica_files(path) - existing:
            try:
                os.remove(leftover)
            except OSError:
                pass
        if isinstance(error, Error):
            message = f"cannot open sync replica {path!r} from {_describe_remote(remote_url)}: {error}"
            raise type(error)(message) from error
        raise


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

    def open_blocking() -> BlockingConnectionSync:
        return blocking_connect_sync(
            path,
            remote_url,
            auth_token=auth_token,
            client_name=client_name,
            long_poll_timeout_ms=long_poll_timeout_ms,
            bootstrap_if_empty=bootstrap_if_empty,
            partial_sync_experimental=partial_sync_experimental,
            experimental_features=experimental_features,
            isolation_level=isolation_level,
            remote_encryption_key=remote_encryption_key,
            remote_encryption_cipher=remote_encryption_cipher,
            push_operations_threshold=push_operations_threshold,
            pull_bytes_threshold=pull_bytes_threshold,
            logical_mvcc_pull=logical_mvcc_pull,
        )

    return ConnectionSync(lambda: _open_replica(path, remote_url, open_blocking))
