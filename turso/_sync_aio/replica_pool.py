"""The machinery of `turso.lib_sync_aio.ReplicaPool`: replicas of many tenants opened on demand, at most `max_open` at
once, closed when idle or to make room, and pushed before they close.

It uses only the public API of a connection (`PooledConnection`: `await conn` to open it, `stats()`, `push()`,
`sync_in_background()`, `request_timeout`, `close()`), so it keeps working when the connection's machinery changes.
`ReplicaPool` in `turso/lib_sync_aio.py` is this class with `connect_sync` plugged in (`_connect`); this module cannot
import `turso.lib_sync_aio`, which imports it.

Every replica the pool knows is a `_Replica` in one of four states (`_State`); the pool's `_replicas` maps each
tenant to its one `_Replica`, and a tenant has at most one at a time. docs/tenants.md says how it behaves and why.
"""

import asyncio
import collections
import enum
import logging
import os
from collections.abc import Awaitable, Generator, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Generic, Optional, Protocol, TypeVar, Union

from ..background_sync_aio import STOP_TIMEOUT_SECONDS, BackgroundSync, BackgroundSyncStatus
from ..lib import OperationalError, ProgrammingError
from .arguments import seconds
from .open_replicas import MEMORY_PATH

# How many replicas open at once by default: each open starts threads and runs native steps that hold the interpreter
# lock, so a thousand at once would stall the event loop (docs/tenants.md).
MAX_CONCURRENT_OPENS = 8
# How long connection() waits by default for a replica (a free slot, then its open) before raising PoolTimeout.
WAIT_TIMEOUT_SECONDS = 30.0
# How long close() waits by default for held replicas to be given back and for the pushes of unpushed changes.
CLOSE_TIMEOUT_SECONDS = 5.0
# What close() may take beyond its timeout: stopping background sync, then a replica's own close() cutting the sync
# request in flight (lib_sync_aio.LANE_CLOSE_SECONDS, 0.5 s), with room to spare.
POOL_CLOSE_MARGIN_SECONDS = 1.0
# How many tenants a log line names before it says "and N more".
LOGGED_TENANTS = 20

# Where the pool says what it could not push, and why a replica closed early.
logger = logging.getLogger("turso.lib_sync_aio")

# An auth token as connect_sync takes it: a string, a callable read for every request, or None.
AuthToken = Optional[Union[str, Callable[[], Optional[str]]]]


class PoolTimeout(OperationalError):
    """`ReplicaPool.connection()` waited `wait_timeout` seconds without getting a replica: every open replica was held
    (raise `max_open`, or hold connections for shorter), or its open took that long (the open goes on)."""


class PendingChanges(Protocol):
    """The part of a replica's stats the pool reads before closing it."""

    @property
    def cdc_operations(self) -> int:
        """Local changes not pushed yet."""
        ...


class PooledConnection(Protocol):
    """What the pool needs of a connection (`turso.lib_sync_aio.ConnectionSync` is one)."""

    def __await__(self) -> Generator[Any, None, Any]:
        """Open the replica."""
        ...

    async def stats(self) -> PendingChanges:
        """The replica's counters; the pool reads `cdc_operations`."""
        ...

    async def push(self) -> None:
        """Push the local changes."""
        ...

    def sync_in_background(self, interval: float) -> BackgroundSync:
        """Start background sync."""
        ...

    @property
    def request_timeout(self) -> float:
        """The deadline of each sync request; it also bounds the pool's push before a close."""
        ...

    @request_timeout.setter
    def request_timeout(self, value: float) -> None: ...

    async def close(self) -> None:
        """Close the replica; bounded whatever the remote does."""
        ...


ReplicaT = TypeVar("ReplicaT", bound=PooledConnection)


@dataclass(frozen=True)
class ReplicaPoolStats:
    """A snapshot of a `ReplicaPool`, from `get_stats()`: gauges (now) and counters (since the pool was made), for a
    service's /health and metrics."""

    # The pool's cap on replicas with threads: opening, open, or closing.
    max_open: int
    # Replicas open now, or being opened or closed (never above max_open).
    open: int
    # Of `open`: replicas being opened now.
    opening: int
    # Of `open`: replicas being closed now (pushing their changes first).
    closing: int
    # Of `open`: open replicas held by at least one task (inside `async with pool.connection(...)`).
    held: int
    # Of `open`: open replicas no task holds; the least recently used of them is closed to make room.
    idle: int
    # Tasks waiting in connection() now: for a free slot, for an open, or for a replica to finish closing.
    waiting: int
    # connection() calls that got a replica.
    requests: int
    # Of `requests`: those that had to wait (for a slot, an open or a close), and for how long in all, in seconds.
    waits: int
    wait_seconds: float
    # connection() calls that raised PoolTimeout.
    timeouts: int
    # Replicas opened, and opens that failed (raised to their callers; the next request tries again).
    opens: int
    failed_opens: int
    # Replicas closed to make room for another tenant, and closed after idle_seconds unused (not counting closes a
    # request called off: `reclaimed`).
    evictions: int
    idle_closes: int
    # Replicas that a request took back while they were pushing before a close (the close was called off).
    reclaimed: int
    # Pushes of pending changes before a close that succeeded, and closes that left changes unpushed (the push failed
    # or ran out of time): those changes stay in the replica's files, and its next open pushes them.
    pushes_at_close: int
    failed_pushes_at_close: int


class _State(enum.Enum):
    # A task asked for the tenant; the replica waits for a free slot (and an open's turn). Holds no slot.
    WAITING = "waiting"
    # Its slot taken, the replica opens.
    OPENING = "opening"
    # Open: held by tasks, or idle.
    OPEN = "open"
    # Stopping background sync, pushing pending changes (a request may still take it back), then closing.
    CLOSING = "closing"


class _Wake(enum.Enum):
    # Why a closing replica stopped waiting for its push.
    RECLAIMED = "reclaimed"  # a request took it back: it stays open
    CUT = "cut"  # the pool's close() ran out of time: close it now


class _Close(enum.Enum):
    # Why a replica closes (what the statistics count, and what the log says).
    EVICTION = "to make room"
    IDLE = "idle"
    POOL = "the pool closes"


class _Replica(Generic[ReplicaT]):
    """One tenant's replica in the pool, from the first request for it until it has closed."""

    __slots__ = (
        "tenant",
        "path",
        "state",
        "connection",
        "background",
        "holders",
        "waiters",
        "ready",
        "task",
        "idle_timer",
        "catch_up",
        "pushing",
        "push",
        "stopping_background",
        "wake",
        "closed",
    )

    def __init__(self, tenant: str, path: str, ready: "asyncio.Future[None]") -> None:
        self.tenant = tenant
        self.path = path
        self.state = _State.WAITING
        self.connection: Optional[ReplicaT] = None
        # Its background sync while open, when the pool has a sync_interval.
        self.background: Optional[BackgroundSync] = None
        # Tasks holding it (inside `async with pool.connection(tenant)`), and tasks waiting for its open.
        self.holders = 0
        self.waiters = 0
        # Settled when the open ends: a result once open (every waiter then holds it), or the open's error.
        self.ready = ready
        # The task opening it, or closing it.
        self.task: Optional["asyncio.Task[None]"] = None
        # Closes it after idle_seconds unused (while open and held by nobody).
        self.idle_timer: Optional[asyncio.TimerHandle] = None
        # Without background sync: the push, started by the open, of changes a previous close left.
        self.catch_up: Optional["asyncio.Task[None]"] = None
        # While closing, until its push is over (a request may take it back until then): the push, the background
        # sync it stops first, and `wake`, which ends the wait for the push early. `closed` is settled once closed.
        self.pushing = False
        self.push: Optional["asyncio.Task[int]"] = None
        self.stopping_background: Optional[BackgroundSync] = None
        self.wake: Optional["asyncio.Future[_Wake]"] = None
        self.closed: Optional["asyncio.Future[None]"] = None


class ReplicaPoolBase(Generic[ReplicaT]):
    """A pool of replicas, one per tenant; see `turso.lib_sync_aio.ReplicaPool`, which is this with `connect_sync`.
    Subclasses say how a replica is made (`_connect`)."""

    def __init__(
        self,
        *,
        path_for: Callable[[str], str],
        remote_url_for: Callable[[str], Optional[str]],
        auth_token_for: Optional[Callable[[str], AuthToken]] = None,
        max_open: int = 100,
        idle_seconds: Optional[float] = 300.0,
        sync_interval: Optional[float] = 5.0,
        wait_timeout: float = WAIT_TIMEOUT_SECONDS,
        request_timeout: Optional[float] = None,
        max_concurrent_opens: int = MAX_CONCURRENT_OPENS,
        configure: Optional[Callable[[str, ReplicaT], Awaitable[None]]] = None,
    ) -> None:
        """Check the settings; nothing opens until the first `connection()`. ReplicaPool documents each one."""
        _function("path_for", path_for)
        _function("remote_url_for", remote_url_for)
        if auth_token_for is not None:
            _function("auth_token_for", auth_token_for)
        if configure is not None:
            _function("configure", configure)
        self._path_for = path_for
        self._remote_url_for = remote_url_for
        self._auth_token_for = auth_token_for
        self._configure = configure
        self._max_open = _count("max_open", max_open)
        self._max_concurrent_opens = _count("max_concurrent_opens", max_concurrent_opens)
        self._idle_seconds = None if idle_seconds is None else seconds("idle_seconds", idle_seconds)
        self._sync_interval = None if sync_interval is None else seconds("sync_interval", sync_interval)
        self._wait_timeout = seconds("wait_timeout", wait_timeout)
        self._request_timeout = None if request_timeout is None else seconds("request_timeout", request_timeout)
        # Set by the first use: the pool belongs to that event loop.
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # Every tenant with a replica in any state; each one not WAITING takes a slot.
        self._replicas: dict[str, _Replica[ReplicaT]] = {}
        # WAITING replicas, first asked first served.
        self._waiting: collections.deque[_Replica[ReplicaT]] = collections.deque()
        # OPEN replicas held by nobody, least recently used first: the ones eviction closes.
        self._idle: collections.OrderedDict[str, _Replica[ReplicaT]] = collections.OrderedDict()
        # The tenant of each replica file (real paths), for every tenant seen: a path_for that gives two tenants one
        # file would show one tenant the other's data.
        self._tenant_of_path: dict[str, str] = {}
        # The path each tenant's file was checked at.
        self._path_of_tenant: dict[str, str] = {}
        self._opens_running = 0
        self._closing = 0
        # Tasks inside connection() waiting for something.
        self._waiting_tasks = 0
        # Set by close(): no request is served any more. Settled with what it left unpushed once it has ended.
        self._shutdown: Optional["asyncio.Future[frozenset[str]]"] = None
        # While close() waits: settled when a held replica is given back (and starts closing).
        self._given_back: Optional["asyncio.Future[None]"] = None
        self._left_unpushed: set[str] = set()
        self._requests = self._waits = self._timeouts = 0
        self._wait_seconds = 0.0
        self._opens = self._failed_opens = 0
        self._evictions = self._idle_closes = self._reclaimed = 0
        self._pushes_at_close = self._failed_pushes_at_close = 0

    # --- what a subclass provides -----------------------------------------------------------------------------------

    def _connect(self, path: str, remote_url: Optional[str], auth_token: AuthToken) -> ReplicaT:
        """A connection to the replica at `path` of `remote_url`, not opened yet (awaiting it opens it)."""
        raise NotImplementedError

    # --- the public API ---------------------------------------------------------------------------------------------

    @property
    def max_open(self) -> int:
        """The most replicas open at once (opening and closing ones included)."""
        return self._max_open

    def connection(self, tenant: str, *, wait_timeout: Optional[float] = None) -> "PooledConnectionLease[ReplicaT]":
        """`async with pool.connection(tenant) as conn:` the tenant's `ConnectionSync` for the block, shared with the
        other tasks that hold it (so writes go in `conn.transaction()` blocks). It is opened on first use, once for all
        the tasks asking at the same time; a failed open raises here, and the next request tries again. The replica
        is not closed while any task holds it. Waits at most `wait_timeout` (the pool's by default) for a free slot
        and the open, then raises `PoolTimeout`. A tenant key that is not a str raises TypeError."""
        timeout = self._wait_timeout if wait_timeout is None else seconds("wait_timeout", wait_timeout)
        return PooledConnectionLease(self._acquire, self._release, _tenant_key(tenant), timeout)

    def get_stats(self) -> ReplicaPoolStats:
        """A snapshot of the pool's gauges and counters (no await: cheap enough for every /health request)."""
        opening = held = 0
        for replica in self._replicas.values():
            if replica.state is _State.OPENING:
                opening += 1
            elif replica.state is _State.OPEN and replica.holders:
                held += 1
        return ReplicaPoolStats(
            max_open=self._max_open,
            open=len(self._replicas) - len(self._waiting),
            opening=opening,
            closing=self._closing,
            held=held,
            idle=len(self._idle),
            waiting=self._waiting_tasks,
            requests=self._requests,
            waits=self._waits,
            wait_seconds=self._wait_seconds,
            timeouts=self._timeouts,
            opens=self._opens,
            failed_opens=self._failed_opens,
            evictions=self._evictions,
            idle_closes=self._idle_closes,
            reclaimed=self._reclaimed,
            pushes_at_close=self._pushes_at_close,
            failed_pushes_at_close=self._failed_pushes_at_close,
        )

    def sync_status(self, tenant: str) -> Optional[BackgroundSyncStatus]:
        """The background sync status of the tenant's open replica; None if it is not open, or the pool has no
        sync_interval."""
        replica = self._replicas.get(tenant)
        if replica is None or replica.state is not _State.OPEN or replica.background is None:
            return None
        return replica.background.status

    def sync_statuses(self) -> dict[str, BackgroundSyncStatus]:
        """The background sync status of every open replica, by tenant (empty without a sync_interval)."""
        return {
            tenant: replica.background.status
            for tenant, replica in self._replicas.items()
            if replica.state is _State.OPEN and replica.background is not None
        }

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> frozenset[str]:
        """Close the pool: requests waiting fail with `turso.ProgrammingError`, opens in progress stop, and every
        replica closes once it is given back, pushing its pending changes first, all in parallel. After `timeout`
        seconds, pushes still running are cut and replicas still held close anyway (their holders' next calls raise
        `turso.ProgrammingError`). Returns within `timeout` plus `POOL_CLOSE_MARGIN_SECONDS` (1 s), whatever the
        remotes do, with no thread of the pool's replicas left. Returns the tenants whose local changes were not
        pushed, or not known to be (also logged as a WARNING): they stay in the files, and the next open of each pushes
        them. Calling it again returns the same."""
        limit = seconds("timeout", timeout)
        loop = self._bind_loop()
        if self._shutdown is not None:
            return await asyncio.shield(self._shutdown)
        shutdown = self._shutdown = loop.create_future()
        try:
            await self._close_all(loop, limit)
        finally:
            report = frozenset(self._left_unpushed)
            if report:
                logger.warning(
                    "ReplicaPool closed leaving local changes unpushed, or not known to be pushed, for %d tenants "
                    "(%s); they stay in the replicas' files, and the next open of each pushes them",
                    len(report),
                    _some(report),
                )
            shutdown.set_result(report)
        return report

    async def __aenter__(self: "PoolT") -> "PoolT":
        """`async with ReplicaPool(...) as pool:`; leaving the block closes the pool (`close()`)."""
        self._bind_loop()
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]] = None,
        exc_value: Optional[BaseException] = None,
        traceback: Optional[TracebackType] = None,
    ) -> None:
        """Close the pool when the block ends, also when it raised."""
        await self.close()

    # --- getting a replica ------------------------------------------------------------------------------------------

    async def _acquire(self, tenant: str, timeout: float) -> _Replica[ReplicaT]:
        # The tenant's replica, held by the caller (who must _release it), or an error; at once when it is open.
        loop = self._bind_loop()
        started = loop.time()
        deadline = started + timeout
        waited = False
        while True:
            self._check_open()
            replica = self._replicas.get(tenant)
            if replica is None:
                replica = self._new_replica(tenant, loop)
            if replica.state is _State.OPEN:
                self._hold(replica)
                break
            if replica.state is _State.CLOSING:
                if replica.pushing:
                    self._reclaim(replica)
                    break
                waited = True
                await self._wait_closed(replica, deadline - loop.time(), timeout)
                continue
            waited = True
            await self._wait_ready(replica, deadline - loop.time(), timeout)
            break
        if waited:
            self._waits += 1
            self._wait_seconds += loop.time() - started
        return replica

    def _release(self, replica: _Replica[ReplicaT]) -> None:
        # A holder is done with the replica; the last one makes it idle (or closes it: the pool is closing).
        replica.holders -= 1
        if not replica.holders and replica.state is _State.OPEN:
            self._make_idle(replica)

    def _new_replica(self, tenant: str, loop: asyncio.AbstractEventLoop) -> _Replica[ReplicaT]:
        # A WAITING replica for a tenant the pool has none of: its file checked, then queued for a slot.
        path = _replica_path(tenant, self._path_for(tenant))
        if path != MEMORY_PATH and self._path_of_tenant.get(tenant) != path:
            # Resolved once per tenant (and path): each lstat of realpath lets go of the interpreter lock, which the
            # loop then waits to take back behind the replicas' threads.
            real_path = os.path.realpath(path)
            owner = self._tenant_of_path.setdefault(real_path, tenant)
            if owner != tenant:
                raise ValueError(
                    f"path_for gives tenants {owner!r} and {tenant!r} the same replica file {real_path!r}; each tenant "
                    "needs a file of its own"
                )
            self._path_of_tenant[tenant] = path
        replica: _Replica[ReplicaT] = _Replica(tenant, path, loop.create_future())
        self._replicas[tenant] = replica
        self._waiting.append(replica)
        self._admit()
        return replica

    async def _wait_ready(self, replica: _Replica[ReplicaT], remaining: float, timeout: float) -> None:
        # Wait for the replica's open, shared with the other waiters; once it is open, the caller holds it.
        ready = replica.ready
        replica.waiters += 1
        self._waiting_tasks += 1
        try:
            await asyncio.wait_for(asyncio.shield(ready), max(remaining, 0.0))
        except (asyncio.CancelledError, asyncio.TimeoutError) as stopped:
            # (Said before the replica may be dropped, which changes what there is to say.)
            timed_out = self._timeout_error(replica, timeout) if isinstance(stopped, asyncio.TimeoutError) else None
            if not ready.done():
                replica.waiters -= 1
                self._drop_if_unwanted(replica)
            elif not ready.cancelled() and ready.exception() is None:
                # It opened just as this wait stopped: the hold it was given goes back.
                self._release(replica)
            if timed_out is not None:
                raise timed_out from None
            raise
        finally:
            self._waiting_tasks -= 1

    async def _wait_closed(self, replica: _Replica[ReplicaT], remaining: float, timeout: float) -> None:
        # A replica past its push and closing: wait for the close to end (its close() is bounded), then open again.
        closed = replica.closed
        assert closed is not None
        self._waiting_tasks += 1
        try:
            await asyncio.wait_for(asyncio.shield(closed), max(remaining, 0.0))
        except asyncio.TimeoutError:
            raise self._timeout_error(replica, timeout) from None
        finally:
            self._waiting_tasks -= 1

    def _timeout_error(self, replica: _Replica[ReplicaT], timeout: float) -> PoolTimeout:
        self._timeouts += 1
        if replica.state is _State.WAITING and len(self._replicas) - len(self._waiting) < self._max_open:
            why = (
                f"it waited for its turn to open, in a queue of {len(self._waiting)} tenants "
                f"(max_concurrent_opens={self._max_concurrent_opens} open at once)"
            )
        elif replica.state is _State.WAITING:
            stats = self.get_stats()
            why = (
                f"all max_open={self._max_open} replicas were open and none could be closed for it ({stats.held} held "
                f"by tasks, {stats.closing} closing); raise max_open, or hold connections for shorter"
            )
        elif replica.state is _State.OPENING:
            why = "its open took that long (it goes on: a later request gets the replica once it is open)"
        else:
            why = "its replica was still closing"
        return PoolTimeout(f"no replica for tenant {replica.tenant!r} within {timeout:g} s: {why}")

    def _hold(self, replica: _Replica[ReplicaT]) -> None:
        replica.holders += 1
        self._requests += 1
        self._leave_idle(replica)

    def _leave_idle(self, replica: _Replica[ReplicaT]) -> None:
        # Held again, or closing: no longer idle, nor closed after idle_seconds.
        if replica.idle_timer is not None:
            replica.idle_timer.cancel()
            replica.idle_timer = None
        self._idle.pop(replica.tenant, None)

    def _make_idle(self, replica: _Replica[ReplicaT]) -> None:
        # An open replica that nobody holds: the most recently used idle one, closed after idle_seconds.
        if self._shutdown is not None:
            self._begin_closing(replica, _Close.POOL)
            if self._given_back is not None and not self._given_back.done():
                self._given_back.set_result(None)
            return
        self._idle[replica.tenant] = replica
        if self._idle_seconds is not None:
            assert self._loop is not None
            replica.idle_timer = self._loop.call_later(self._idle_seconds, self._idle_expired, replica)
        self._admit()

    def _reclaim(self, replica: _Replica[ReplicaT]) -> None:
        # A request for a replica that is pushing before its close: the close is called off, the replica stays open.
        # Its push goes on (it is the connection's own operation); its background sync goes on, or starts again.
        assert replica.wake is not None
        replica.wake.set_result(_Wake.RECLAIMED)
        push, replica.push = replica.push, None
        if push is not None:
            # Not started yet, it never stops the background sync: that one is still running then.
            push.cancel()
        previous, replica.stopping_background = replica.stopping_background, None
        replica.state = _State.OPEN
        replica.pushing = False
        replica.wake = None
        replica.closed = None
        self._closing -= 1
        self._reclaimed += 1
        if previous is not None and previous.status.running:
            replica.background = previous
        else:
            self._start_background(replica)
        self._hold(replica)
        # It was closing to make room: room is made elsewhere now.
        self._admit()

    # --- slots and opens --------------------------------------------------------------------------------------------

    def _admit(self) -> None:
        # Start the opens of waiting replicas while slots are free and fewer than max_concurrent_opens run; when slots
        # are short, close idle replicas, least recently used first, as many as the waiting replicas lack.
        while self._waiting:
            if len(self._replicas) - len(self._waiting) >= self._max_open:
                break
            if self._opens_running >= self._max_concurrent_opens:
                break
            self._start_open(self._waiting.popleft())
        free = self._max_open - (len(self._replicas) - len(self._waiting))
        short = len(self._waiting) - free - self._closing
        while short > 0 and self._idle:
            _, victim = self._idle.popitem(last=False)
            self._begin_closing(victim, _Close.EVICTION)
            short -= 1

    def _drop_if_unwanted(self, replica: _Replica[ReplicaT]) -> None:
        # The last waiter of a replica without a slot yet gave up: forget it. An open already running goes on, and
        # its replica joins the pool idle (the next request for the tenant finds it open).
        if replica.waiters or replica.state is not _State.WAITING:
            return
        self._waiting.remove(replica)
        del self._replicas[replica.tenant]
        replica.ready.cancel()
        self._admit()

    def _start_open(self, replica: _Replica[ReplicaT]) -> None:
        assert self._loop is not None
        replica.state = _State.OPENING
        self._opens_running += 1
        replica.task = self._loop.create_task(self._open(replica), name=f"turso-pool-open-{replica.tenant}")

    async def _open(self, replica: _Replica[ReplicaT]) -> None:
        # The open task: connect, configure, start background sync; then every waiter holds the replica.
        connection: Optional[ReplicaT] = None
        try:
            remote_url = self._remote_url_for(replica.tenant)
            auth_token = self._auth_token_for(replica.tenant) if self._auth_token_for is not None else None
            connection = self._connect(replica.path, remote_url, auth_token)
            if self._request_timeout is not None:
                connection.request_timeout = self._request_timeout
            await connection
            if self._configure is not None:
                await self._configure(replica.tenant, connection)
            # Without background sync, the changes a previous close left unpushed are pushed by the pool: counted
            # now, before any task writes.
            left = 0 if self._sync_interval is not None else (await connection.stats()).cdc_operations
        except BaseException as error:
            if connection is not None:
                # Also after a failed or cancelled open, which let go of its work without waiting for it.
                await _close_quietly(connection, replica.tenant)
            self._opens_running -= 1
            self._open_failed(replica, error)
            if not isinstance(error, Exception):
                raise
            return
        self._opens_running -= 1
        self._opened(replica, connection, left)

    def _opened(self, replica: _Replica[ReplicaT], connection: ReplicaT, left: int) -> None:
        replica.connection = connection
        replica.state = _State.OPEN
        replica.task = None
        self._opens += 1
        self._start_background(replica)
        if left:
            assert self._loop is not None
            replica.catch_up = self._loop.create_task(self._push_after_open(replica.tenant, connection, left))
        # Every task waiting for the open holds the replica from now on (each gives its hold back when done).
        replica.holders = replica.waiters
        self._requests += replica.waiters
        replica.waiters = 0
        replica.ready.set_result(None)
        if replica.holders:
            self._admit()
        else:
            # Its waiters gave up while it opened: it joins the pool idle.
            self._make_idle(replica)

    def _open_failed(self, replica: _Replica[ReplicaT], error: BaseException) -> None:
        # The open's error goes to every task waiting for it; the tenant is forgotten, so the next request tries again.
        del self._replicas[replica.tenant]
        replica.task = None
        if isinstance(error, asyncio.CancelledError):
            error = ProgrammingError(f"The ReplicaPool closed while tenant {replica.tenant!r}'s replica opened")
        else:
            self._failed_opens += 1
        replica.ready.set_exception(error)
        replica.ready.exception()  # retrieved: all its waiters may have given up
        self._admit()

    def _start_background(self, replica: _Replica[ReplicaT]) -> None:
        if self._sync_interval is None or replica.connection is None:
            return
        try:
            replica.background = replica.connection.sync_in_background(self._sync_interval)
        except Exception as error:
            # Only a connection that can no longer be used refuses (say one its holder closed): its calls say why.
            logger.warning(
                "tenant %r: background sync could not start: %s: %s", replica.tenant, type(error).__name__, error
            )

    async def _push_after_open(self, tenant: str, connection: ReplicaT, left: int) -> None:
        # Without background sync: push the `left` changes a previous close left unpushed, once, within
        # request_timeout (a push sends them all, and whatever was committed since).
        try:
            await asyncio.wait_for(connection.push(), connection.request_timeout)
        except Exception as error:
            logger.warning(
                "tenant %r: pushing the %d changes a previous close left unpushed failed (%s: %s); its next close, "
                "or your next push(), sends them",
                tenant,
                left,
                type(error).__name__,
                error,
            )

    # --- closing a replica ------------------------------------------------------------------------------------------

    def _idle_expired(self, replica: _Replica[ReplicaT]) -> None:
        replica.idle_timer = None
        if self._idle.pop(replica.tenant, None) is replica:
            self._begin_closing(replica, _Close.IDLE)

    def _begin_closing(self, replica: _Replica[ReplicaT], reason: _Close) -> None:
        # Stop the replica's background sync and push its pending changes (both started here, so that a request
        # reclaiming the replica in the meantime knows what to call off), then close it in a task of its own.
        loop = self._loop
        connection = replica.connection
        assert loop is not None and connection is not None
        self._leave_idle(replica)
        catch_up, replica.catch_up = replica.catch_up, None
        if catch_up is not None:
            catch_up.cancel()
        background, replica.background = replica.background, None
        replica.state = _State.CLOSING
        replica.pushing = True
        replica.stopping_background = background
        push = replica.push = loop.create_task(_stop_and_push(background, connection))
        push.add_done_callback(_retrieve)
        wake = replica.wake = loop.create_future()
        replica.closed = loop.create_future()
        self._closing += 1
        replica.task = loop.create_task(
            self._close(replica, connection, reason, push, wake), name=f"turso-pool-close-{replica.tenant}"
        )

    async def _close(
        self,
        replica: _Replica[ReplicaT],
        connection: ReplicaT,
        reason: _Close,
        push: "asyncio.Task[int]",
        wake: "asyncio.Future[_Wake]",
    ) -> None:
        # The close task: wait for the push (a request may reclaim the replica meanwhile, or the pool's close() cut
        # the wait short), then close the replica and free its slot.
        either: set["asyncio.Future[Any]"] = {push, wake}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            push.cancel()
            raise
        if wake.done() and wake.result() is _Wake.RECLAIMED:
            return
        replica.pushing = False
        replica.push = replica.stopping_background = replica.wake = None
        try:
            self._count_close(replica.tenant, reason, push)
            await _close_quietly(connection, replica.tenant)
        finally:
            self._closed(replica)

    def _count_close(self, tenant: str, reason: _Close, push: "asyncio.Task[int]") -> None:
        # What the statistics and the log say of a close, by how its push went (a push still running was cut).
        if reason is _Close.EVICTION:
            self._evictions += 1
        elif reason is _Close.IDLE:
            self._idle_closes += 1
        if not push.done() or push.cancelled():
            push.cancel()
            failure = "the pool's close() ran out of time first"
        elif push.exception() is not None:
            failure = f"{type(push.exception()).__name__}: {push.exception()}"
        else:
            self._pushes_at_close += bool(push.result())
            return
        self._failed_pushes_at_close += 1
        if self._shutdown is not None:
            self._left_unpushed.add(tenant)
        logger.warning(
            "tenant %r: its replica closes (%s) without pushing its local changes (%s); they stay in its files, and "
            "its next open pushes them",
            tenant,
            reason.value,
            failure,
        )

    def _closed(self, replica: _Replica[ReplicaT]) -> None:
        del self._replicas[replica.tenant]
        self._closing -= 1
        replica.connection = None
        replica.task = None
        if replica.closed is not None:
            replica.closed.set_result(None)
        self._admit()

    # --- closing the pool -------------------------------------------------------------------------------------------

    async def _close_all(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        # Fail the waiting requests, stop the opens, close the idle replicas now and the held ones as they are given
        # back; at the deadline close what is still held, and cut the pushes still running.
        deadline = loop.time() + timeout
        for replica in self._waiting:
            del self._replicas[replica.tenant]
            replica.ready.set_exception(ProgrammingError("The ReplicaPool closed before this request got its replica"))
            replica.ready.exception()
        self._waiting.clear()
        for replica in list(self._replicas.values()):
            if replica.state is _State.OPENING and replica.task is not None:
                replica.task.cancel()
            elif replica.state is _State.OPEN and not replica.holders:
                self._begin_closing(replica, _Close.POOL)
        while self._replicas and loop.time() < deadline:
            given_back = self._given_back = loop.create_future()
            await asyncio.wait(
                self._tasks() | {given_back}, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
            )
        self._given_back = None
        self._close_held(timeout)
        for replica in self._replicas.values():
            if replica.wake is not None and not replica.wake.done():
                replica.wake.set_result(_Wake.CUT)
        tasks = self._tasks()
        if tasks:
            await asyncio.wait(tasks, timeout=POOL_CLOSE_MARGIN_SECONDS)
        if self._replicas:
            logger.warning(
                "ReplicaPool.close() returned while %d replicas still close (%s)",
                len(self._replicas),
                _some(self._replicas),
            )

    def _close_held(self, timeout: float) -> None:
        # close()'s deadline has passed: the replicas still held close now (close() must end, and leave no thread).
        still_held = [replica for replica in self._replicas.values() if replica.state is _State.OPEN]
        if not still_held:
            return
        logger.warning(
            "ReplicaPool.close(): %d replicas were still held after %.3g s (%s); they close now, and their holders' "
            "next calls raise turso.ProgrammingError",
            len(still_held),
            timeout,
            _some(replica.tenant for replica in still_held),
        )
        for replica in still_held:
            self._begin_closing(replica, _Close.POOL)

    def _tasks(self) -> set["asyncio.Task[None]"]:
        return {replica.task for replica in self._replicas.values() if replica.task is not None}

    # --- checks -----------------------------------------------------------------------------------------------------

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        # The pool belongs to the event loop that first uses it.
        running = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = running
        elif running is not self._loop:
            raise ProgrammingError("A ReplicaPool can only be used from the event loop that first used it")
        return running

    def _check_open(self) -> None:
        if self._shutdown is not None:
            raise ProgrammingError("This ReplicaPool is closed; make a new one")


PoolT = TypeVar("PoolT", bound=ReplicaPoolBase[Any])


class PooledConnectionLease(Generic[ReplicaT]):
    """What `pool.connection(tenant)` returns: `async with` it to hold the tenant's connection for the block (it is
    not closed while held) and give it back at the end, also when the block raised."""

    __slots__ = ("_acquire", "_release", "_tenant", "_timeout", "_held")

    def __init__(
        self,
        acquire: Callable[[str, float], Awaitable[_Replica[ReplicaT]]],
        release: Callable[[_Replica[ReplicaT]], None],
        tenant: str,
        timeout: float,
    ) -> None:
        self._acquire = acquire
        self._release = release
        self._tenant = tenant
        self._timeout = timeout
        self._held: Optional[_Replica[ReplicaT]] = None

    async def __aenter__(self) -> ReplicaT:
        """Wait (at most the wait timeout) for the tenant's replica, opening it if needed, and hold it."""
        if self._held is not None:
            raise ProgrammingError("This pool.connection(...) is already entered; call pool.connection() again")
        replica = await self._acquire(self._tenant, self._timeout)
        assert replica.connection is not None
        self._held = replica
        return replica.connection

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]] = None,
        exc_value: Optional[BaseException] = None,
        traceback: Optional[TracebackType] = None,
    ) -> None:
        """Give the replica back: it stays open for the next request until it idles out or makes room."""
        replica, self._held = self._held, None
        if replica is not None:
            self._release(replica)


async def _stop_and_push(background: Optional[BackgroundSync], connection: PooledConnection) -> int:
    # Before a close: stop background sync, then push pending changes within request_timeout; returns how many there
    # were (raises if the push failed or ran out of time).
    if background is not None:
        await background.stop(timeout=STOP_TIMEOUT_SECONDS)
    limit = connection.request_timeout
    try:
        return await asyncio.wait_for(_push_if_pending(connection), limit)
    except asyncio.TimeoutError:
        raise OperationalError(f"the push took longer than the replica's request_timeout ({limit:g} s)") from None


async def _push_if_pending(connection: PooledConnection) -> int:
    pending = (await connection.stats()).cdc_operations
    if pending:
        await connection.push()
    return pending


async def _close_quietly(connection: PooledConnection, tenant: str) -> None:
    # A replica's close() is bounded, and ends its work also when cancelled; its error is logged, not raised into
    # a task nobody awaits.
    try:
        await connection.close()
    except Exception as error:
        logger.warning("tenant %r: closing its replica failed: %s: %s", tenant, type(error).__name__, error)


def _retrieve(task: "asyncio.Future[Any]") -> None:
    # An outcome the close task may never read (the replica was reclaimed): asyncio must not log it as lost.
    if not task.cancelled():
        task.exception()


def _tenant_key(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a tenant key must be a str, not {type(value).__name__}")
    return value


def _replica_path(tenant: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"path_for({tenant!r}) must return a str path, not {type(value).__name__}")
    return value


def _function(name: str, value: object) -> None:
    if not callable(value):
        raise TypeError(f"{name} must be a function of the tenant key, not {type(value).__name__}")


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")
    return value


def _some(tenants: Iterable[str]) -> str:
    # Up to LOGGED_TENANTS tenants, for a log line.
    names = sorted(tenants)
    shown = ", ".join(repr(name) for name in names[:LOGGED_TENANTS])
    return shown if len(names) <= LOGGED_TENANTS else f"{shown} and {len(names) - LOGGED_TENANTS} more"
