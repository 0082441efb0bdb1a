"""Application-style code checked (never run) by mypy --strict and pyright strict: every public call has a concrete type.

Both entry points are covered: `turso.lib_sync_aio.connect_sync` and `turso.aio.sync.connect`, opened with `await`
and with `async with`.
"""

from typing import TYPE_CHECKING, Any, Optional

from typing_extensions import assert_type

import turso
import turso.aio.sync
from turso.lib_aio import Cursor
from turso.lib_sync_aio import ConnectionSync, SyncStats, connect_sync

if TYPE_CHECKING:
    from turso.lib_sync_aio import AsyncSyncOperations


async def sync_through_the_protocol(replica: "AsyncSyncOperations") -> bool:
    # Application code may depend on the Protocol instead of the concrete class.
    await replica.push()
    await replica.checkpoint()
    assert_type(await replica.stats(), SyncStats)
    return await replica.pull()


def read_counters(stats: SyncStats) -> None:
    assert_type(stats.cdc_operations, int)
    assert_type(stats.main_wal_size, int)
    assert_type(stats.revert_wal_size, int)
    assert_type(stats.last_pull_unix_time, Optional[int])
    assert_type(stats.last_push_unix_time, Optional[int])
    assert_type(stats.revision, Optional[str])
    assert_type(stats.network_sent_bytes, int)
    assert_type(stats.network_received_bytes, int)


async def use_every_call(conn: ConnectionSync) -> None:
    assert_type(await conn.pull(), bool)
    assert_type(await conn.push(), None)
    assert_type(await conn.checkpoint(), None)
    stats = await conn.stats()
    assert_type(stats, SyncStats)
    read_counters(stats)

    # The inherited async SQL API stays typed on the sync connection.
    cursor = await conn.execute("SELECT ?", (1,))
    assert_type(cursor, Cursor)
    assert_type(await cursor.fetchone(), Any)
    assert_type(await cursor.fetchall(), list[Any])
    assert_type(await cursor.fetchmany(2), list[Any])
    assert_type(cursor.rowcount, int)
    assert_type(cursor.lastrowid, Optional[int])
    assert_type(await conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)]), Cursor)
    assert_type(await conn.executescript("CREATE TABLE u(x)"), Cursor)
    assert_type(conn.cursor(), Cursor)
    assert_type(await conn.commit(), None)
    assert_type(await conn.rollback(), None)
    assert_type(conn.isolation_level, Optional[str])
    conn.isolation_level = None
    assert_type(await conn.close(), None)

    # ConnectionSync satisfies the Protocol: this assignment is checked.
    operations: AsyncSyncOperations = conn
    assert_type(await sync_through_the_protocol(operations), bool)


async def open_with_await_through_our_module(token: str) -> None:
    pending = connect_sync("app.db", "libsql://db-org.turso.io", auth_token=token, long_poll_timeout_ms=1000)
    assert_type(pending, ConnectionSync)
    conn = await pending
    assert_type(conn, ConnectionSync)
    await use_every_call(conn)


async def open_with_async_with_through_our_module() -> None:
    async with connect_sync("app.db", lambda: "http://127.0.0.1:8080", auth_token=lambda: None) as conn:
        assert_type(conn, ConnectionSync)
        assert_type(await conn.pull(), bool)


async def open_with_await_through_the_public_entry() -> None:
    conn = await turso.aio.sync.connect("app.db", "http://127.0.0.1:8080", bootstrap_if_empty=False)
    assert_type(conn, ConnectionSync)
    assert_type(await conn.stats(), SyncStats)
    await conn.close()


async def open_with_async_with_through_the_public_entry() -> None:
    async with turso.aio.sync.connect("app.db", isolation_level=None) as conn:
        assert_type(conn, ConnectionSync)
        assert_type(await conn.pull(), bool)
        assert_type(await conn.push(), None)


async def catch_driver_errors() -> Optional[ConnectionSync]:
    try:
        return await connect_sync("app.db", "http://127.0.0.1:1")
    except turso.ProgrammingError:
        return None
    except turso.DatabaseError as error:
        assert_type(error, turso.DatabaseError)
        return None
