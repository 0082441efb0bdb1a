"""`ConnectionSync.execute_fetchall`: a statement and all its rows in one job, against a real sync server."""

import asyncio
import threading

import pytest

import turso
from testkit.sync_server import SyncServer
from tests.helpers import (
    AWAIT_SECONDS,
    POOL_THREAD_PREFIX,
    open_replica,
    rows,
    turso_threads,
)
from turso.lib_sync_aio import connect_sync


async def test_execute_fetchall_returns_the_same_rows_as_execute_then_fetchall(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    for body in ("one", "two", "three"):
        sync_server.execute("INSERT INTO notes(body) VALUES (?)", (body,))
    async with await open_replica(replica_path, sync_server.url) as conn:
        fetched = await asyncio.wait_for(conn.execute_fetchall("SELECT id, body FROM notes ORDER BY id"), AWAIT_SECONDS)

        assert isinstance(fetched, list)
        assert [tuple(row) for row in fetched] == [(1, "one"), (2, "two"), (3, "three")]
        assert [tuple(row) for row in fetched] == await rows(conn, "SELECT id, body FROM notes ORDER BY id")
        assert await conn.execute_fetchall("SELECT body FROM notes WHERE id = ?", (2,)) == [("two",)]
        assert await conn.execute_fetchall("SELECT body FROM notes WHERE id = :id", {"id": 3}) == [("three",)]
        assert await conn.execute_fetchall("SELECT body FROM notes WHERE id = 99") == []


async def test_execute_fetchall_builds_its_rows_on_a_worker_thread_not_the_loop(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with await open_replica(replica_path, sync_server.url) as conn:
        row_builders: list[str] = []

        def record_thread(cursor: object, row: "tuple[object, ...]") -> "tuple[object, ...]":
            row_builders.append(threading.current_thread().name)
            return tuple(row)

        conn.row_factory = record_thread
        assert await conn.execute_fetchall("SELECT 1 UNION ALL SELECT 2") == [(1,), (2,)]
        assert len(row_builders) == 2
        assert all(name.startswith(POOL_THREAD_PREFIX) for name in row_builders), row_builders


async def test_execute_fetchall_respects_row_factory(sync_server: SyncServer, replica_path: str) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER, y TEXT)")
    sync_server.execute("INSERT INTO t VALUES (1, 'a')")
    async with await open_replica(replica_path, sync_server.url) as conn:
        conn.row_factory = turso.Row
        (row,) = await conn.execute_fetchall("SELECT x, y FROM t")
        assert isinstance(row, turso.Row)
        assert row["y"] == "a" and row[0] == 1

        def as_dict(cursor: object, values: "tuple[object, ...]") -> "dict[str, object]":
            return {"x": values[0], "y": values[1]}

        conn.row_factory = as_dict
        assert await conn.execute_fetchall("SELECT x, y FROM t") == [{"x": 1, "y": "a"}]

        conn.row_factory = None
        assert await conn.execute_fetchall("SELECT x, y FROM t") == [(1, "a")]


async def test_execute_fetchall_writes_join_the_transaction_and_commit_pushes_them(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    async with await open_replica(replica_path, sync_server.url) as conn:
        assert await conn.execute_fetchall("INSERT INTO t VALUES (7) RETURNING x") == [(7,)]
        await conn.commit()
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        assert sync_server.execute("SELECT x FROM t") == [(7,)]


async def test_execute_fetchall_error_raises_the_driver_error_and_the_connection_stays_usable(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with await open_replica(replica_path, sync_server.url) as conn:
        with pytest.raises(turso.Error, match="no_such_table"):
            await asyncio.wait_for(conn.execute_fetchall("SELECT * FROM no_such_table"), AWAIT_SECONDS)
        with pytest.raises(turso.ProgrammingError):
            await asyncio.wait_for(conn.execute_fetchall("SELECT 1; SELECT 2"), AWAIT_SECONDS)
        with pytest.raises(turso.Error):
            await asyncio.wait_for(conn.execute_fetchall("SELECT ?", (1, 2, 3)), AWAIT_SECONDS)
        assert await conn.execute_fetchall("SELECT 1") == [(1,)]


async def test_execute_fetchall_after_close_or_before_open_raises_programming_error_at_once(
    sync_server: SyncServer, replica_path: str
) -> None:
    baseline = turso_threads()
    unopened = connect_sync(replica_path, sync_server.url)
    with pytest.raises(turso.ProgrammingError, match="not open"):
        await asyncio.wait_for(unopened.execute_fetchall("SELECT 1"), 1.0)

    conn = await open_replica(replica_path, sync_server.url)
    await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    with pytest.raises(turso.ProgrammingError, match="closed"):
        await asyncio.wait_for(conn.execute_fetchall("SELECT 1"), 1.0)
    assert turso_threads() == baseline
