"""Sync behaviour against a real `tursodb --sync-server`: bootstrap, pull, push, checkpoint, stats, convergence."""

import asyncio
from pathlib import Path

import turso
from testkit.sync_server import SyncServer
from tests.helpers import rows, turso_threads
from turso.lib_sync_aio import ConnectionSync, connect_sync, worker_pool_stats

# A bound for awaits against the local server, so that a hang fails the test instead of the run.
TIMEOUT = 10.0


async def test_bootstrap_copies_a_non_empty_remote(sync_server: SyncServer, replica_path: str) -> None:
    sync_server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    for body in ("one", "two", "three"):
        sync_server.execute("INSERT INTO notes(body) VALUES (?)", (body,))

    async with connect_sync(replica_path, sync_server.url) as conn:
        assert await rows(conn, "SELECT id, body FROM notes ORDER BY id") == sync_server.execute(
            "SELECT id, body FROM notes ORDER BY id"
        )
        assert len(await rows(conn, "SELECT * FROM notes")) == 3


async def test_pull_returns_true_when_changes_were_applied_then_false(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    async with connect_sync(replica_path, sync_server.url) as conn:
        assert await conn.pull() is False
        sync_server.execute("INSERT INTO t VALUES (42)")

        assert await conn.pull() is True
        assert await rows(conn, "SELECT x FROM t") == [(42,)]
        assert await conn.pull() is False


async def test_push_makes_local_rows_visible_on_the_server(sync_server: SyncServer, replica_path: str) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    async with connect_sync(replica_path, sync_server.url) as conn:
        await conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
        await conn.commit()
        assert sync_server.execute("SELECT x FROM t") == []

        await conn.push()

    assert sync_server.execute("SELECT x FROM t ORDER BY x") == [(1,), (2,), (3,)]


async def test_stats_count_pending_changes_and_checkpoint_empties_the_wal(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    async with connect_sync(replica_path, sync_server.url) as conn:
        before = await conn.stats()
        assert before.last_pull_unix_time is not None  # the bootstrap counts as a pull
        assert before.last_push_unix_time is None
        assert before.cdc_operations == 0

        await conn.execute("INSERT INTO t VALUES (1)")
        await conn.execute("INSERT INTO t VALUES (2)")
        await conn.commit()
        written = await conn.stats()
        assert written.cdc_operations >= 2
        assert written.main_wal_size > 0

        await conn.push()
        pushed = await conn.stats()
        assert pushed.cdc_operations == 0
        assert pushed.last_push_unix_time is not None
        assert pushed.network_sent_bytes > before.network_sent_bytes
        assert pushed.network_received_bytes >= before.network_received_bytes

        await conn.checkpoint()
        assert (await conn.stats()).main_wal_size == 0
        assert await rows(conn, "SELECT x FROM t ORDER BY x") == [(1,), (2,)]


async def test_two_replicas_converge_through_push_and_pull(sync_server: SyncServer, tmp_path: Path) -> None:
    sync_server.execute("CREATE TABLE t(origin TEXT, x INTEGER)")
    async with connect_sync(str(tmp_path / "a.db"), sync_server.url) as first, connect_sync(
        str(tmp_path / "b.db"), sync_server.url
    ) as second:
        await first.execute("INSERT INTO t VALUES ('a', 1)")
        await first.commit()
        await first.push()
        await second.execute("INSERT INTO t VALUES ('b', 2)")
        await second.commit()
        await second.push()

        assert await first.pull() is True
        await second.pull()

        expected = [("a", 1), ("b", 2)]
        assert await rows(first, "SELECT origin, x FROM t ORDER BY x") == expected
        assert await rows(second, "SELECT origin, x FROM t ORDER BY x") == expected
        assert sync_server.execute("SELECT origin, x FROM t ORDER BY x") == expected


async def test_file_backed_replica_reopens_with_its_rows_while_the_server_is_down(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    sync_server.execute("INSERT INTO t VALUES (1)")
    async with connect_sync(replica_path, sync_server.url) as conn:
        await conn.execute("INSERT INTO t VALUES (2)")
        await conn.commit()
    sync_server.stop()

    async with connect_sync(replica_path, sync_server.url) as reopened:
        assert await rows(reopened, "SELECT x FROM t ORDER BY x") == [(1,), (2,)]
        assert (await reopened.stats()).cdc_operations >= 1  # the unpushed row is still pending


async def test_reopen_without_remote_url_uses_the_url_saved_in_the_replica(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    async with connect_sync(replica_path, sync_server.url):
        pass
    sync_server.execute("INSERT INTO t VALUES (7)")

    async with connect_sync(replica_path) as reopened:
        assert await reopened.pull() is True
        assert await rows(reopened, "SELECT x FROM t") == [(7,)]


async def test_32_replicas_sync_concurrently_in_one_event_loop_on_the_bounded_worker_pool(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute("CREATE TABLE t(replica INTEGER)")
    baseline = turso_threads()
    replicas = await asyncio.gather(*(connect_sync(str(tmp_path / f"r{n}.db"), sync_server.url) for n in range(32)))
    try:
        # Threads follow the work: 32 open replicas run on the worker pool, never beyond its cap.
        assert 1 <= len(turso_threads() - baseline) <= worker_pool_stats().max_threads

        async def write_and_push(number: int, conn: ConnectionSync) -> None:
            await conn.execute("INSERT INTO t VALUES (?)", (number,))
            await conn.commit()
            await conn.push()

        await asyncio.gather(*(write_and_push(n, conn) for n, conn in enumerate(replicas)))
        assert sorted(sync_server.execute("SELECT replica FROM t")) == [(n,) for n in range(32)]

        await asyncio.gather(*(conn.pull() for conn in replicas))
        for conn in replicas:
            assert await rows(conn, "SELECT count(*) FROM t") == [(32,)]
    finally:
        await asyncio.gather(*(conn.close() for conn in replicas))
    assert turso_threads() == baseline


async def test_inherited_sql_api_works_on_the_sync_connection(sync_server: SyncServer, replica_path: str) -> None:
    async with connect_sync(replica_path, sync_server.url) as conn:
        assert conn.isolation_level == "DEFERRED"
        await conn.executescript("CREATE TABLE t(x INTEGER, y TEXT); CREATE INDEX t_x ON t(x);")
        cursor = conn.cursor()
        await cursor.execute("INSERT INTO t VALUES (?, ?)", (1, "a"))
        assert cursor.rowcount == 1
        await conn.commit()
        await conn.execute("INSERT INTO t VALUES (2, 'b')")
        await conn.rollback()
        results = await conn.batch(["SELECT count(*) FROM t"])
        assert len(results) == 1

        conn.row_factory = turso.Row
        fetched = await (await conn.execute("SELECT x, y FROM t")).fetchone()
        assert fetched is not None and fetched["y"] == "a"
        assert conn.row_factory is turso.Row


async def test_sync_pushes_only_when_there_are_local_changes_then_pulls(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(id TEXT PRIMARY KEY)")
    async with connect_sync(replica_path, sync_server.url) as conn:
        before = await asyncio.wait_for(conn.stats(), TIMEOUT)
        sync_server.execute("INSERT INTO t VALUES ('remote')")
        # Nothing to push: sync() is a pull alone (an empty push would send about 1 KB).
        assert await asyncio.wait_for(conn.sync(), TIMEOUT) is True
        after_pull_only = await asyncio.wait_for(conn.stats(), TIMEOUT)
        assert after_pull_only.network_sent_bytes - before.network_sent_bytes < 100
        assert after_pull_only.last_push_unix_time == before.last_push_unix_time

        await conn.execute("INSERT INTO t VALUES ('local')")
        await conn.commit()
        await asyncio.wait_for(conn.sync(), TIMEOUT)
        pushed = await asyncio.wait_for(conn.stats(), TIMEOUT)
        assert pushed.cdc_operations == 0 and pushed.last_push_unix_time is not None
    assert sync_server.execute("SELECT id FROM t ORDER BY id") == [("local",), ("remote",)]


async def test_sync_pushes_before_it_pulls_so_the_replica_ends_at_the_remote_revision_that_holds_its_push(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    # A push does not move a replica's revision; the pull after it brings the replica to the remote's revision, which
    # holds the push. Pulled first, the replica would end one revision behind its own rows.
    sync_server.execute("CREATE TABLE t(id TEXT PRIMARY KEY)")
    async with connect_sync(str(tmp_path / "local.db"), sync_server.url) as conn:
        sync_server.execute("INSERT INTO t VALUES ('remote')")
        await asyncio.wait_for(conn.execute("INSERT INTO t VALUES ('local')"), TIMEOUT)
        await asyncio.wait_for(conn.commit(), TIMEOUT)
        assert await asyncio.wait_for(conn.sync(), TIMEOUT) is True
        synced = await asyncio.wait_for(conn.stats(), TIMEOUT)
        assert synced.cdc_operations == 0
        async with connect_sync(str(tmp_path / "fresh.db"), sync_server.url) as fresh:
            remote_revision = (await asyncio.wait_for(fresh.stats(), TIMEOUT)).revision
        assert synced.revision == remote_revision, "sync() pulled before it pushed"
        # Nothing on the remote is new to the replica, not even its own push.
        assert await asyncio.wait_for(conn.pull(), TIMEOUT) is False
        assert await rows(conn, "SELECT id FROM t ORDER BY id") == [("local",), ("remote",)]
    assert sync_server.execute("SELECT id FROM t ORDER BY id") == [("local",), ("remote",)]
