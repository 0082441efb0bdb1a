"""Application-style code, checked (never run) by mypy --strict and pyright strict: every public call is typed.

Both entry points are covered, `turso.lib_sync_aio.connect_sync` and `turso.aio.sync.connect`, each opened with
`await` and with `async with`. An `assert_type` that stops holding fails `make typecheck`.
"""

from typing import TYPE_CHECKING, Any

from typing_extensions import assert_type

import turso
import turso.aio.sync
from turso.background_sync_aio import BackgroundSync, BackgroundSyncStatus, Backoff, SyncTarget
from turso.lib import BatchResult
from turso.lib_aio import Connection, Cursor
from turso.lib_sync import PartialSyncOpts, PartialSyncPrefixBootstrap
from turso.lib_sync_aio import (
    POOL_CLOSE_MARGIN_SECONDS,
    ConnectionSync,
    PoolTimeout,
    ReplicaPool,
    ReplicaPoolStats,
    SyncStats,
    Transaction,
    TransactionState,
    connect_sync,
)

if TYPE_CHECKING:
    # Stub-only Protocol: there is no runtime class to import.
    from turso.lib_sync_aio import AsyncSyncOperations


async def sync_through_the_protocol(replica: "AsyncSyncOperations") -> bool:
    # Application code may depend on the Protocol instead of the concrete class.
    assert_type(await replica.push(), None)
    assert_type(await replica.checkpoint(), None)
    assert_type(await replica.stats(), SyncStats)
    changed = await replica.pull()
    assert_type(changed, bool)
    return changed


def read_counters(stats: SyncStats) -> int:
    assert_type(stats.cdc_operations, int)
    assert_type(stats.main_wal_size, int)
    assert_type(stats.revert_wal_size, int)
    assert_type(stats.last_pull_unix_time, int | None)
    assert_type(stats.last_push_unix_time, int | None)
    assert_type(stats.revision, str | None)
    assert_type(stats.network_sent_bytes, int)
    assert_type(stats.network_received_bytes, int)
    return stats.cdc_operations


def narrow_at_runtime(value: object) -> int | None:
    # SyncStats is a runtime_checkable Protocol, importable at runtime: isinstance narrows to it.
    if isinstance(value, SyncStats):
        assert_type(value, SyncStats)
        return value.last_push_unix_time
    return None


async def use_the_sync_operations(conn: ConnectionSync) -> None:
    assert_type(await conn.pull(), bool)
    assert_type(await conn.push(), None)
    assert_type(await conn.checkpoint(), None)
    assert_type(await conn.stats(), SyncStats)
    # The stats object satisfies the SyncStats Protocol, also where it is annotated explicitly.
    counters: SyncStats = await conn.stats()
    assert_type(read_counters(counters), int)

    # ConnectionSync satisfies AsyncSyncOperations: passing it and assigning it are both checked.
    assert_type(await sync_through_the_protocol(conn), bool)
    operations: AsyncSyncOperations = conn
    assert_type(await sync_through_the_protocol(operations), bool)


async def use_the_inherited_sql_api(conn: ConnectionSync) -> None:
    # The async SQL API of turso.lib_aio.Connection, with the base class's own types (rows are Any there).
    cursor = await conn.execute("SELECT ?", (1,))
    assert_type(cursor, Cursor)
    assert_type(await conn.execute("SELECT :x", {"x": 1}), Cursor)
    assert_type(await cursor.fetchone(), Any)
    assert_type(await cursor.fetchall(), list[Any])
    assert_type(await cursor.fetchmany(2), list[Any])
    # execute_fetchall: the statement and all its rows in one job; rows are Any, as from fetchall().
    assert_type(await conn.execute_fetchall("SELECT 1"), list[Any])
    assert_type(await conn.execute_fetchall("SELECT ?", (1,)), list[Any])
    assert_type(await conn.execute_fetchall("SELECT :x", parameters={"x": 1}), list[Any])
    assert_type(cursor.rowcount, int)
    assert_type(cursor.lastrowid, int | None)
    assert_type(cursor.description, tuple[tuple[str, None, None, None, None, None, None], ...] | None)
    # The base class types a cursor's connection as the plain async Connection.
    assert_type(cursor.connection, Connection)
    assert_type(await cursor.close(), None)
    assert_type(await conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)]), Cursor)
    assert_type(await conn.executescript("CREATE TABLE u(x)"), Cursor)
    assert_type(await conn.batch(["SELECT 1", ("SELECT ?", (1,))]), list[BatchResult])
    assert_type(conn.cursor(), Cursor)
    async with conn.cursor() as entered_cursor:
        assert_type(entered_cursor, Cursor)
        assert_type(await entered_cursor.execute("SELECT 1"), Cursor)
    assert_type(await conn.commit(), None)
    assert_type(await conn.rollback(), None)
    assert_type(conn.isolation_level, str | None)
    conn.isolation_level = None
    conn.isolation_level = "IMMEDIATE"
    assert_type(conn.autocommit, object | bool | None)
    assert_type(conn.row_factory, Any)
    assert_type(conn.text_factory, Any)
    assert_type(await conn.close(), None)


async def open_with_await_through_our_module(token: str, partial: PartialSyncPrefixBootstrap) -> None:
    pending = connect_sync(
        "app.db",
        "libsql://db-org.turso.io",
        auth_token=token,
        client_name="app",
        long_poll_timeout_ms=1000,
        bootstrap_if_empty=False,
        partial_sync_experimental=PartialSyncOpts(bootstrap_strategy=partial),
        experimental_features=None,
        isolation_level=None,
        remote_encryption_key=None,
        push_operations_threshold=100,
        pull_bytes_threshold=1 << 20,
        logical_mvcc_pull=False,
    )
    assert_type(pending, ConnectionSync)
    conn = await pending
    assert_type(conn, ConnectionSync)
    await use_the_sync_operations(conn)
    await use_the_inherited_sql_api(conn)


async def open_with_async_with_through_our_module() -> None:
    async with connect_sync("app.db", lambda: "http://127.0.0.1:8080", auth_token=lambda: None) as conn:
        assert_type(conn, ConnectionSync)
        assert_type(await conn.pull(), bool)
    # `async with await connect_sync(...)` works too and keeps the type.
    async with await connect_sync("app.db") as reopened:
        assert_type(reopened, ConnectionSync)


async def open_with_await_through_the_public_entry() -> None:
    assert_type(turso.aio.sync.connect("app.db"), ConnectionSync)
    conn = await turso.aio.sync.connect("app.db", "http://127.0.0.1:8080", bootstrap_if_empty=False)
    assert_type(conn, ConnectionSync)
    assert_type(await conn.stats(), SyncStats)
    assert_type(await conn.close(), None)


async def open_with_async_with_through_the_public_entry() -> None:
    async with turso.aio.sync.connect("app.db", isolation_level=None) as conn:
        assert_type(conn, ConnectionSync)
        assert_type(await conn.pull(), bool)
        assert_type(await conn.push(), None)
        assert_type(await conn.checkpoint(), None)
        assert_type(await conn.stats(), SyncStats)
        assert_type(await conn.execute("SELECT 1"), Cursor)


async def catch_driver_errors() -> ConnectionSync | None:
    try:
        return await connect_sync("app.db", "http://127.0.0.1:1")
    except turso.ProgrammingError:
        return None
    except turso.DatabaseError as error:
        assert_type(error, turso.DatabaseError)
        return None


def read_background_status(status: BackgroundSyncStatus) -> bool:
    assert_type(status.rounds, int)
    assert_type(status.consecutive_failures, int)
    assert_type(status.last_error, Exception | None)
    assert_type(status.last_success_unix_time, float | None)
    assert_type(status.next_round_unix_time, float | None)
    assert_type(status.running, bool)
    assert_type(status.healthy, bool)
    assert_type(status.round_started_unix_time, float | None)
    return status.healthy


async def keep_a_replica_in_sync(conn: ConnectionSync) -> None:
    # sync(): push, then pull; the pull's bool.
    assert_type(await conn.sync(), bool)
    background = conn.sync_in_background(5.0)
    assert_type(background, BackgroundSync)
    assert_type(conn.sync_in_background(1, max_backoff=30), BackgroundSync)
    assert_type(conn.sync_in_background(1, checkpoint_wal_bytes=None), BackgroundSync)
    assert_type(conn.sync_in_background(1, checkpoint_wal_bytes=64 * 1024 * 1024).checkpoint_wal_bytes, int | None)
    assert_type(background.status, BackgroundSyncStatus)
    assert_type(read_background_status(background.status), bool)
    assert_type(background.interval, float)
    assert_type(background.max_backoff, float)
    assert_type(await background.sync_now(), bool)
    assert_type(await background.stop(), None)
    async with conn.sync_in_background(interval=5.0, max_backoff=60.0) as entered:
        assert_type(entered, BackgroundSync)
        assert_type(await entered.sync_now(), bool)


class CountingTarget:
    """Something else to keep in sync: anything with async sync() -> bool, stats() (with main_wal_size),
    checkpoint() and a request_timeout is a SyncTarget."""

    def __init__(self, conn: ConnectionSync) -> None:
        self.conn = conn
        self.rounds = 0

    async def sync(self) -> bool:
        self.rounds += 1
        return await self.conn.sync()

    async def stats(self) -> SyncStats:
        return await self.conn.stats()

    async def checkpoint(self) -> None:
        await self.conn.checkpoint()

    @property
    def request_timeout(self) -> float:
        return self.conn.request_timeout


async def drive_any_sync_target(conn: ConnectionSync) -> None:
    # ConnectionSync and application classes satisfy the SyncTarget Protocol.
    target: SyncTarget = conn
    assert_type(BackgroundSync(target, 1.0), BackgroundSync)
    async with BackgroundSync(CountingTarget(conn), 0.5, max_backoff=10.0) as background:
        assert_type(background.status.rounds, int)
    # The wait policy on its own.
    backoff = Backoff(interval=1.0, max_backoff=60.0)
    assert_type(backoff.base_delay(3), float)
    assert_type(backoff.delay(3), float)
    assert_type(backoff.delay(3, uniform=lambda low, high: high), float)
    assert_type(backoff.jitter, float)


async def write_in_blocks(conn: ConnectionSync) -> None:
    # A transaction() block: the block's object, its state, nesting.
    assert_type(conn.transaction(), Transaction)
    async with conn.transaction() as block:
        assert_type(block, Transaction)
        assert_type(block.state, TransactionState)
        assert_type(block.savepoint_name, str | None)
        async with conn.transaction() as nested:
            assert_type(nested.is_savepoint, bool)
        await conn.execute("INSERT INTO notes VALUES (?)", ("hello",))


async def create_notes_table(tenant: str, conn: ConnectionSync) -> None:
    async with conn.transaction():
        await conn.execute("CREATE TABLE IF NOT EXISTS notes(body TEXT)")


async def serve_tenants(tokens: dict[str, str]) -> None:
    # Every setting, with the types a service passes; the token function may return a refreshing callable.
    pool = ReplicaPool(
        path_for=lambda tenant: f"/data/tenants/{tenant}.db",
        remote_url_for=lambda tenant: f"libsql://{tenant}-org.turso.io",
        auth_token_for=lambda tenant: (lambda: tokens.get(tenant)),
        max_open=100,
        idle_seconds=300.0,
        sync_interval=None,
        wait_timeout=5.0,
        request_timeout=10.0,
        max_concurrent_opens=8,
        configure=create_notes_table,
    )
    assert_type(pool.max_open, int)
    async with pool as entered:
        assert_type(entered, ReplicaPool)
        try:
            async with pool.connection("acme", wait_timeout=1.0) as conn:
                assert_type(conn, ConnectionSync)
                async with conn.transaction():
                    await conn.execute("INSERT INTO notes VALUES (?)", ("hello",))
        except PoolTimeout as error:
            # A PoolTimeout is a turso.OperationalError.
            operational: turso.OperationalError = error
            print(operational)
        stats = pool.get_stats()
        assert_type(stats, ReplicaPoolStats)
        assert_type(stats.open, int)
        assert_type(stats.wait_seconds, float)
        status = pool.sync_status("acme")
        if status is not None:
            assert_type(status, BackgroundSyncStatus)
        assert_type(pool.sync_statuses(), dict[str, BackgroundSyncStatus])
        assert_type(await pool.close(timeout=2.0), frozenset[str])
    assert_type(POOL_CLOSE_MARGIN_SECONDS, float)
