"""SQLAlchemy asyncio dialect for Turso sync replicas: `sqlite+aioturso_sync://`, on `turso.lib_sync_aio`.

    engine = create_async_engine("sqlite+aioturso_sync:///app.db?remote_url=libsql://db-org.turso.io&auth_token=...")
    replica = await replica_of(engine)   # the engine's ConnectionSync, for pull, push, checkpoint and stats

The URL takes the query parameters of pyturso's `sqlite+turso_sync://`, and this dialect's own `request_timeout`,
`query_timeout`, `sync_interval` and `checkpoint_wal_bytes`; `connect_args` takes every parameter of `connect_sync`.
The pool holds one connection per replica. docs/sqlalchemy.md has the rest, and how to register the dialect in a
checkout."""

import asyncio
import functools
import math
import os
import weakref
from typing import Any, Optional, Union, cast

from sqlalchemy import event, exc, pool
from sqlalchemy.engine import URL, Engine
from sqlalchemy.engine.interfaces import ConnectArgsType, DBAPIConnection, Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.util.concurrency import await_only, in_greenlet

import turso
import turso.aio.sync
from turso.background_sync_aio import CHECKPOINT_WAL_BYTES as _DEFAULT_CHECKPOINT_WAL_BYTES
from turso.background_sync_aio import BackgroundSync
from turso.lib_sync_aio import MAX_QUERY_TIMEOUT_SECONDS, ConnectionSync
from turso.sqlalchemy.dialect import AioTursoDialect, AsyncAdapt_turso_dbapi, TursoSyncDialect

__all__ = [
    "CHECKPOINT_WAL_BYTES",
    "DRIVER_NAME",
    "QUERY_TIMEOUT",
    "REQUEST_TIMEOUT",
    "SYNC_INTERVAL",
    "AioTursoSyncDialect",
    "AsyncAdaptTursoSyncDbapi",
    "ReplicaPool",
    "background_sync_of",
    "get_sync_connection",
    "replica_of",
]

# The name SQLAlchemy URLs use for this dialect: `sqlite+aioturso_sync://`.
DRIVER_NAME = "aioturso_sync"
# The URL query parameter that turns on background sync: seconds between rounds (push, then pull), as in libsql.
SYNC_INTERVAL = "sync_interval"
# The URL query parameter that sets the replica's `request_timeout`: the deadline of every sync request, in seconds.
REQUEST_TIMEOUT = "request_timeout"
# The URL query parameter that sets the replica's `query_timeout`: the most seconds a statement may run.
QUERY_TIMEOUT = "query_timeout"
# The URL query parameter for background sync's `checkpoint_wal_bytes`: a whole number of bytes, or `none`.
CHECKPOINT_WAL_BYTES = "checkpoint_wal_bytes"

_POOL_ADVICE = (
    "A sync replica allows one open connection at a time (a second one fails with 'database is locked' or "
    "'database is busy'), so "
    f"sqlite+{DRIVER_NAME}:// keeps exactly one connection per replica file and concurrent sessions wait for it. "
)


class ReplicaPool(pool.AsyncAdaptedQueuePool):
    """The default pool of `sqlite+aioturso_sync://` engines: one connection to the replica, which sessions take in
    turn (waiting up to `pool_timeout`); any other size is refused, since a replica allows one connection."""

    def __init__(self, creator: Any, pool_size: int = 1, max_overflow: int = 0, **kw: Any) -> None:
        """Made by `create_async_engine`; `pool_size` must stay 1 and `max_overflow` 0."""
        if pool_size != 1 or max_overflow != 0:
            raise exc.ArgumentError(
                _POOL_ADVICE + f"pool_size={pool_size}, max_overflow={max_overflow} could open more than one: leave "
                "pool_size and max_overflow out (or set pool_size=1, max_overflow=0). For parallel work, use one "
                "engine per replica file."
            )
        super().__init__(creator, pool_size=1, max_overflow=0, **kw)


# Pools that never hold two connections at once: ours, StaticPool (one connection, shared without waiting) and
# AssertionPool (one connection; a second checkout raises).
_ONE_CONNECTION_POOLS = (ReplicaPool, pool.StaticPool, pool.AssertionPool)


class AsyncAdaptTursoSyncDbapi(AsyncAdapt_turso_dbapi):
    """The DB-API module SQLAlchemy sees for `sqlite+aioturso_sync://`: pyturso's asyncio adapter on `turso.aio.sync`,
    with what newer SQLAlchemy releases read of an adapter. Made by the dialect; not for direct use."""

    def __init__(self) -> None:
        # pyturso's adapter has no annotations (mypy's untyped_calls_exclude does not cover super() calls).
        super().__init__(turso.aio.sync, turso)  # type: ignore[no-untyped-call]
        # SQLAlchemy >= 2.0.58 reads has_stop (aiosqlite's force-close, a method of the connection) in the dialect's
        # constructor. A ConnectionSync has no such method (interrupt() stops its statement, close() ends it), so
        # False: SQLAlchemy then closes connections normally instead.
        self.has_stop = False
        # SQLAlchemy 2.1 adapters name the driver module and the module holding the DB-API exceptions.
        self.driver = turso.aio.sync
        self.dbapi_module = turso


class AioTursoSyncDialect(AioTursoDialect):
    """SQLAlchemy asyncio dialect `sqlite+aioturso_sync:///PATH?remote_url=URL&...`: a Turso sync replica through
    `create_async_engine`. Reach its replica with `replica_of(engine)` or `get_sync_connection(conn_or_session)`."""

    driver = DRIVER_NAME
    supports_statement_cache = True

    def __init__(self, **kwargs: Any) -> None:
        """Made by `create_async_engine`, one per engine; `kwargs` are SQLAlchemy's dialect options."""
        super().__init__(**kwargs)
        # The URL's sync_interval in seconds (set by create_connect_args), or None for no background sync.
        self._sync_interval: Optional[float] = None
        # The background sync's checkpoint_wal_bytes (set by create_connect_args).
        self._checkpoint_wal_bytes: Optional[int] = _DEFAULT_CHECKPOINT_WAL_BYTES
        # The URL's request_timeout in seconds, or None for the replica's default.
        self._request_timeout: Optional[float] = None
        # The URL's query_timeout in seconds, or None for none.
        self._query_timeout: Optional[float] = None

    @classmethod
    # SQLAlchemy's aiosqlite dialect annotates its import_dbapi with its own adapter class; ours is a sibling.
    def import_dbapi(cls) -> AsyncAdaptTursoSyncDbapi:  # type: ignore[override]
        """The DB-API adapter SQLAlchemy connects through (called by SQLAlchemy)."""
        return AsyncAdaptTursoSyncDbapi()

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        """The default pool: `ReplicaPool`, one connection per replica (called by SQLAlchemy)."""
        return ReplicaPool

    def create_connect_args(self, url: URL) -> ConnectArgsType:
        """Turn the URL into `connect_sync` arguments with pyturso's sync URL parsing (called by `create_async_engine`):
        `ArgumentError` for a bad path or parameter of ours, a UserWarning for an unknown one."""
        if url.database in (None, "", ":memory:"):
            raise exc.ArgumentError(
                f"sqlite+{DRIVER_NAME}:// needs the path of the local replica file, as in "
                f"sqlite+{DRIVER_NAME}:///app.db?remote_url=libsql://db-org.turso.io (three slashes, then the path; "
                "four for an absolute path); a sync replica cannot be in memory"
            )
        self._sync_interval = _seconds_parameter(url, SYNC_INTERVAL, "the time between background sync rounds")
        self._request_timeout = _seconds_parameter(url, REQUEST_TIMEOUT, "the deadline of every sync request")
        self._query_timeout = _seconds_parameter(url, QUERY_TIMEOUT, "the most a statement may run")
        if self._query_timeout is not None and self._query_timeout > MAX_QUERY_TIMEOUT_SECONDS:
            raise exc.ArgumentError(
                f"sqlite+{DRIVER_NAME}:// {QUERY_TIMEOUT} must be at most {MAX_QUERY_TIMEOUT_SECONDS:g} seconds, not "
                f"{url.query[QUERY_TIMEOUT]!r}"
            )
        self._checkpoint_wal_bytes = _checkpoint_wal_bytes(url, self._sync_interval)
        try:
            return _SYNC_URL_PARSER.create_connect_args(
                url.difference_update_query([SYNC_INTERVAL, REQUEST_TIMEOUT, QUERY_TIMEOUT, CHECKPOINT_WAL_BYTES])
            )
        except ValueError as error:
            # pyturso's message names its blocking dialect; say which URL of ours is wrong.
            raise ValueError(
                f"invalid sqlite+{DRIVER_NAME}:// URL {url.render_as_string(hide_password=True)!r}: {error}"
            ) from None

    def connect(self, *cargs: Any, **cparams: Any) -> DBAPIConnection:
        """Open the replica with `connect_sync` (called by the pool), with the URL's `request_timeout` and
        `query_timeout` set before the bootstrap; a replica that does not exist yet and has no remote is refused."""
        path = cargs[0] if cargs else cparams.get("path")
        remote_url = cargs[1] if len(cargs) > 1 else cparams.get("remote_url")
        if remote_url is None and isinstance(path, str) and not os.path.exists(path):
            raise exc.ArgumentError(
                f"sqlite+{DRIVER_NAME}:// replica {path!r} does not exist yet, and no remote_url was given to create "
                "it from: add ?remote_url=libsql://... (or https://, http://) to the URL, or pass "
                "connect_args={'remote_url': ...}. remote_url may be left out only to reopen an existing replica."
            )
        settings = (self._request_timeout, self._query_timeout)
        if settings != (None, None) and "async_creator_fn" not in cparams:
            # Set before the replica opens: opening may bootstrap it from the remote, within request_timeout.
            cparams["async_creator_fn"] = functools.partial(_connect_with_settings, *settings)
        return super().connect(*cargs, **cparams)

    def do_terminate(self, dbapi_connection: DBAPIConnection) -> None:
        """Close a connection the pool gave up on (invalidated after a cancelled statement, say) before it opens the
        next one: its statement still running is interrupted first, and the close is shielded from that cancellation
        (called by SQLAlchemy; its aiosqlite base would leave it open)."""
        replica = getattr(dbapi_connection, "driver_connection", None)
        if isinstance(replica, ConnectionSync) and in_greenlet():
            await_only(asyncio.shield(_terminate(replica)))

    @classmethod
    def engine_created(cls, engine: Engine) -> None:
        """Refuse a pool that could open two connections, and follow the engine's replica (called by SQLAlchemy)."""
        if not isinstance(engine.pool, _ONE_CONNECTION_POOLS):
            raise exc.ArgumentError(
                _POOL_ADVICE + f"{type(engine.pool).__name__} may open several: leave poolclass out (the default is "
                "turso.sqlalchemy_sync_aio.ReplicaPool) or use StaticPool. For parallel work, use one engine per "
                "replica file."
            )
        dialect = engine.dialect
        if isinstance(dialect, AioTursoSyncDialect):
            _EngineReplica.follow(engine, dialect._sync_interval, dialect._checkpoint_wal_bytes)
        else:
            _EngineReplica.follow(engine, None, _DEFAULT_CHECKPOINT_WAL_BYTES)


class _EngineReplica:
    """The open replica of one engine, kept current by pool and engine events: the pool's one connection's
    replica, its background sync (with `sync_interval`), and whether `dispose()` closed it."""

    def __init__(self, sync_interval: Optional[float], checkpoint_wal_bytes: Optional[int]) -> None:
        self.sync_interval = sync_interval
        self.checkpoint_wal_bytes = checkpoint_wal_bytes
        self.replica: Optional[ConnectionSync] = None
        self.background: Optional[BackgroundSync] = None
        self.disposed = False

    @classmethod
    def follow(cls, engine: Engine, sync_interval: Optional[float], checkpoint_wal_bytes: Optional[int]) -> None:
        """Start following `engine`'s replica (once per engine, when it is created)."""
        followed = cls(sync_interval, checkpoint_wal_bytes)
        _ENGINE_REPLICAS[engine.dialect] = followed
        # Pool events registered on the engine follow it across dispose(), which recreates the pool.
        event.listen(engine, "connect", followed._opened)
        event.listen(engine, "close", followed._closed)
        event.listen(engine, "close_detached", followed._closed_detached)
        event.listen(engine, "engine_disposed", followed._disposed)

    @classmethod
    def of(cls, engine: AsyncEngine, caller: str) -> "_EngineReplica":
        """What is known of `engine`'s replica; TypeError for an engine of another dialect."""
        followed = _ENGINE_REPLICAS.get(engine.sync_engine.dialect)
        if followed is None:
            raise TypeError(
                f"{caller}() expects an engine of sqlite+{DRIVER_NAME}://, not of {engine.url.drivername}:// "
                f"({type(engine.sync_engine.dialect).__name__})"
            )
        return followed

    def _opened(self, connection: DBAPIConnection, record: object) -> None:
        # The pool's new connection (an `AdaptedConnection`): its driver connection is the replica from now on.
        replica = getattr(connection, "driver_connection", None)
        if isinstance(replica, ConnectionSync):
            self.replica = replica
            self.disposed = False
            # On the event loop (inside SQLAlchemy's greenlet), so the background task starts on the replica's loop.
            if self.sync_interval is not None:
                self.background = replica.sync_in_background(
                    self.sync_interval, checkpoint_wal_bytes=self.checkpoint_wal_bytes
                )

    def _closed(self, connection: DBAPIConnection, record: object) -> None:
        self._closed_detached(connection)

    def _closed_detached(self, connection: DBAPIConnection) -> None:
        if getattr(connection, "driver_connection", None) is self.replica:
            # The replica's close() (which follows) stops its background sync first.
            self.replica = None
            self.background = None

    def _disposed(self, engine: Engine) -> None:
        self.disposed = True
        # dispose() closed the replica if it was in the pool. One that a session still holds is left open until the
        # session returns it (SQLAlchemy's way with checked-out connections): forget it, and stop its background sync
        # now, so that dispose() stops the syncing either way. AsyncEngine.dispose() runs this in SQLAlchemy's greenlet.
        background, self.background, self.replica = self.background, None, None
        if background is not None and in_greenlet():
            await_only(background.stop())


# Each sqlite+aioturso_sync:// engine's replica, by the engine's dialect (one per create_async_engine).
_ENGINE_REPLICAS: "weakref.WeakKeyDictionary[Dialect, _EngineReplica]" = weakref.WeakKeyDictionary()


def _seconds_parameter(url: URL, name: str, meaning: str) -> Optional[float]:
    # A query parameter of ours in seconds: None when absent, else a finite number > 0 (a clear error otherwise).
    value = url.query.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, tuple):
            raise ValueError("given more than once")
        seconds = float(value)
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError("not greater than 0")
    except ValueError:
        raise exc.ArgumentError(
            f"sqlite+{DRIVER_NAME}:// {name} must be one number of seconds greater than 0 ({meaning}, as in "
            f"{name}=5 or {name}=0.5), not {value!r}"
        ) from None
    return seconds


def _checkpoint_wal_bytes(url: URL, sync_interval: Optional[float]) -> Optional[int]:
    # The URL's checkpoint_wal_bytes: the default when absent, None for `none`, else a whole number >= 0; only with
    # sync_interval (it is a setting of the background sync).
    value = url.query.get(CHECKPOINT_WAL_BYTES)
    if value is None:
        return _DEFAULT_CHECKPOINT_WAL_BYTES
    if sync_interval is None:
        raise exc.ArgumentError(
            f"sqlite+{DRIVER_NAME}:// {CHECKPOINT_WAL_BYTES} is a setting of the background sync: give "
            f"{SYNC_INTERVAL} too (as in {SYNC_INTERVAL}=5&{CHECKPOINT_WAL_BYTES}=16777216)"
        )
    if value == "none":
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise exc.ArgumentError(
        f"sqlite+{DRIVER_NAME}:// {CHECKPOINT_WAL_BYTES} must be one whole number of bytes >= 0 (the WAL size past "
        f"which background sync checkpoints, as in {CHECKPOINT_WAL_BYTES}=16777216) or none, not {value!r}"
    )


def _connect_with_settings(
    request_timeout: Optional[float], query_timeout: Optional[float], *args: Any, **kwargs: Any
) -> ConnectionSync:
    # The pool's connector when the URL has request_timeout or query_timeout: the replica, unopened, with them set.
    replica = turso.aio.sync.connect(*args, **kwargs)
    if request_timeout is not None:
        replica.request_timeout = request_timeout
    if query_timeout is not None:
        replica.query_timeout = query_timeout
    return replica


async def _terminate(replica: ConnectionSync) -> None:
    # A connection given up on: its statement running stops now, then it closes (what was queued before still runs).
    await replica.interrupt()
    await replica.close()


# pyturso's blocking sync dialect, used only for its URL parsing (the same query parameters, errors and warnings).
_SYNC_URL_PARSER = TursoSyncDialect()


async def get_sync_connection(connection: Union[AsyncConnection, AsyncSession]) -> ConnectionSync:
    """The replica (`ConnectionSync`) behind a `sqlite+aioturso_sync://` connection or session; with a
    session, the connection it uses. TypeError for anything else. Expire ORM objects after a pull that returned True."""
    # Checked as `object`: callers without a type checker may pass anything.
    candidate = cast(object, connection)
    if isinstance(candidate, AsyncSession):
        async_connection = await candidate.connection()
    elif isinstance(candidate, AsyncConnection):
        async_connection = candidate
    else:
        raise TypeError(
            "get_sync_connection() expects a sqlalchemy.ext.asyncio.AsyncConnection or AsyncSession, "
            f"not {type(candidate).__name__}"
        )
    raw_connection = await async_connection.get_raw_connection()
    replica = raw_connection.driver_connection
    if not isinstance(replica, ConnectionSync):
        raise TypeError(
            f"get_sync_connection() expects a connection of a sqlite+{DRIVER_NAME}:// engine, but this one's driver "
            f"connection is {type(replica).__name__} (engine URL {async_connection.engine.url!r})"
        )
    return replica


async def replica_of(engine: AsyncEngine) -> ConnectionSync:
    """The replica of a `sqlite+aioturso_sync://` engine, without taking the pool's connection: sessions keep
    running during its pulls and pushes. Opens it if needed; `InvalidRequestError` after `engine.dispose()`."""
    followed = await _opened(engine, "replica_of")
    replica = followed.replica
    if replica is None:
        raise TypeError(
            "replica_of(): the engine's pool connection is not a sync replica (was the engine made by async_creator?)"
        )
    return replica


async def background_sync_of(engine: AsyncEngine) -> Optional[BackgroundSync]:
    """The background sync of an engine with `?sync_interval=`, or None without it; opens the replica if
    needed. The engine starts and stops it: do not `stop()` it yourself."""
    followed = await _opened(engine, "background_sync_of")
    return followed.background


async def _opened(engine: AsyncEngine, caller: str) -> _EngineReplica:
    # What is known of the engine's replica, the pool having opened it if it was not open (and not disposed).
    # Checked as `object`: callers without a type checker may pass anything.
    candidate = cast(object, engine)
    if not isinstance(candidate, AsyncEngine):
        raise TypeError(f"{caller}() expects a sqlalchemy.ext.asyncio.AsyncEngine, not {type(candidate).__name__}")
    followed = _EngineReplica.of(candidate, caller)
    if followed.replica is None:
        if followed.disposed:
            raise exc.InvalidRequestError(
                f"{caller}(): the engine of {candidate.url.render_as_string(hide_password=True)} was disposed, which "
                f"closed its replica, and {caller}() does not reopen it. Create a new engine, or use this one again "
                f"(a session reopens the replica) before calling {caller}()."
            )
        # The pool opens its connection (the connect event records the replica), and takes it back at once.
        async with candidate.connect() as connection:
            await connection.get_raw_connection()
    return followed
