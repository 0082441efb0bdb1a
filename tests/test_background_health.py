"""What a service reads from background sync and how it ends: a bounded WAL, `status.healthy`, shutdown in a second.

Against a real `tursodb --sync-server` on 127.0.0.1, through tests/proxy.py's DelayingProxy where the remote must
stall (it accepts connections and never answers until released). A stalled round either waits (a request without a
deadline) or fails at its request's deadline: these tests hold that `healthy` turns False within its window either
way, and that leaving the lifespan does not wait for the round.
"""

import asyncio
import logging
import time

import pytest

import turso
import turso.lib_sync_aio
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import AWAIT_SECONDS, bounded, wait_until
from turso.background_sync_aio import CHECKPOINT_WAL_BYTES, STOP_TIMEOUT_SECONDS, BackgroundSync
from turso.lib_sync_aio import LANE_CLOSE_SECONDS, ConnectionSync, connect_sync

INTERVAL = 0.2
# A small request_timeout, so that the health window (2 * INTERVAL + REQUEST_TIMEOUT) is short.
REQUEST_TIMEOUT = 0.3
HEALTH_WINDOW = 2 * INTERVAL + REQUEST_TIMEOUT
# Scheduling slack for the bounds below (the machine running the suite may be busy).
SLACK = 0.5
# What "leaving the lifespan in a second" allows: stop()'s default bound, then close()'s bound on the lane.
SHUTDOWN_SECONDS = STOP_TIMEOUT_SECONDS + LANE_CLOSE_SECONDS
# A small WAL limit for the checkpoint tests: a few rows outgrow it.
SMALL_WAL_BYTES = 64 * 1024
BODY = "x" * 2000


async def replica_behind(proxy: DelayingProxy, replica_path: str, sync_server: SyncServer) -> ConnectionSync:
    """A replica with a table `notes`, created directly, then reopened through `proxy` (reopening sends nothing)."""
    async with await bounded(connect_sync(replica_path, sync_server.url)) as conn:
        await bounded(conn.execute("CREATE TABLE IF NOT EXISTS notes(body TEXT)"))
        await bounded(conn.commit())
        await bounded(conn.push())
    conn = await bounded(connect_sync(replica_path, proxy.url))
    conn.request_timeout = REQUEST_TIMEOUT
    return conn


async def write_rows(conn: ConnectionSync, count: int) -> None:
    for _ in range(count):
        async with conn.transaction():
            await conn.execute("INSERT INTO notes VALUES (?)", (BODY,))


async def wal_size(conn: ConnectionSync) -> int:
    return (await bounded(conn.stats())).main_wal_size


# --- the WAL stays bounded ---------------------------------------------------------------------------------------


async def test_background_sync_checkpoints_once_the_wal_outgrows_checkpoint_wal_bytes(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with await bounded(connect_sync(replica_path, sync_server.url)) as conn:
        await bounded(conn.execute("CREATE TABLE notes(body TEXT)"))
        await bounded(conn.commit())
        async with conn.sync_in_background(INTERVAL, checkpoint_wal_bytes=SMALL_WAL_BYTES) as background:
            assert background.checkpoint_wal_bytes == SMALL_WAL_BYTES
            largest = 0
            rounds = background.status.rounds
            for _ in range(6):
                await write_rows(conn, 10)
                largest = max(largest, await wal_size(conn))
                rounds = background.status.rounds
                assert await wait_until(lambda: background.status.rounds > rounds + 1)
            assert largest > SMALL_WAL_BYTES  # the rows did outgrow the limit between rounds
            # After the writes, a round or two bring the WAL under the limit (a checkpoint empties it).
            assert await wait_until(lambda: background.status.rounds > rounds + 3)
            assert await wal_size(conn) <= SMALL_WAL_BYTES
    rows = sync_server.execute("SELECT count(*) FROM notes")
    assert rows == [(60,)]


async def test_checkpoint_wal_bytes_none_never_checkpoints(sync_server: SyncServer, replica_path: str) -> None:
    async with await bounded(connect_sync(replica_path, sync_server.url)) as conn:
        await bounded(conn.execute("CREATE TABLE notes(body TEXT)"))
        await bounded(conn.commit())
        async with conn.sync_in_background(INTERVAL, checkpoint_wal_bytes=None) as background:
            assert background.checkpoint_wal_bytes is None
            await write_rows(conn, 30)
            rounds = background.status.rounds
            assert await wait_until(lambda: background.status.rounds > rounds + 2)
            assert await wal_size(conn) > 2 * SMALL_WAL_BYTES
        # The default is 16 MiB.
        assert conn.sync_in_background(INTERVAL).checkpoint_wal_bytes == CHECKPOINT_WAL_BYTES == 16 * 1024 * 1024


async def test_a_failed_checkpoint_is_logged_once_and_is_not_a_failed_round(
    sync_server: SyncServer, replica_path: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkpoint waits for the connection to be between transactions; keep one open past that wait (shortened).
    monkeypatch.setattr(turso.lib_sync_aio, "TRANSACTION_WAIT_SECONDS", 0.1)
    caplog.set_level(logging.INFO, logger="turso.background_sync_aio")
    async with await bounded(connect_sync(replica_path, sync_server.url)) as conn:
        await bounded(conn.execute("CREATE TABLE notes(body TEXT)"))
        await bounded(conn.commit())
        await write_rows(conn, 10)
        # Synced, so that the rounds below have nothing to apply (an apply would wait for the transaction too).
        await bounded(conn.sync())
        await bounded(conn.sync())
        await bounded(conn.execute("INSERT INTO notes VALUES ('left open')"))  # a transaction stays open
        async with conn.sync_in_background(INTERVAL, checkpoint_wal_bytes=0) as background:
            assert await wait_until(lambda: background.status.rounds >= 3)
            assert background.status.consecutive_failures == 0 and background.status.healthy
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "checkpoint" in r.getMessage()]
            assert len(warnings) == 1, [r.getMessage() for r in warnings]
            assert "transaction stayed open" in warnings[0].getMessage()
            await bounded(conn.commit())
            assert await wait_until(lambda: any("checkpoints again" in r.getMessage() for r in caplog.records))
            assert await wal_size(conn) == 0


@pytest.mark.parametrize("value", ["16MiB", 1.5, True])
async def test_a_checkpoint_wal_bytes_that_is_not_a_whole_number_raises_type_error_and_starts_nothing(
    sync_server: SyncServer, replica_path: str, value: object
) -> None:
    async with await bounded(connect_sync(replica_path, sync_server.url)) as conn:
        with pytest.raises(TypeError, match="checkpoint_wal_bytes must be a whole number of bytes or None"):
            conn.sync_in_background(INTERVAL, checkpoint_wal_bytes=value)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        with pytest.raises(ValueError, match="checkpoint_wal_bytes must be a number of bytes >= 0"):
            conn.sync_in_background(INTERVAL, checkpoint_wal_bytes=-1)
        # Nothing started: a background sync can start now.
        async with conn.sync_in_background(INTERVAL) as background:
            assert background.status.running


# --- honest health -----------------------------------------------------------------------------------------------


async def test_healthy_turns_false_within_its_window_while_a_round_hangs_and_true_again_once_the_link_is_back(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    conn = await replica_behind(proxy, replica_path, sync_server)
    try:
        async with conn.sync_in_background(INTERVAL, max_backoff=2 * INTERVAL) as background:
            assert await wait_until(lambda: background.status.rounds >= 2)
            assert background.status.healthy
            proxy.stall()
            stalled_at = time.monotonic()
            # The next round starts and waits on the stalled remote (until its request's deadline, if it has one).
            assert await wait_until(lambda: proxy.held > 0 and background.status.round_started_unix_time is not None)
            assert await wait_until(lambda: not background.status.healthy, HEALTH_WINDOW + INTERVAL * 1.2 + SLACK)
            unhealthy_after = time.monotonic() - stalled_at
            assert unhealthy_after <= HEALTH_WINDOW + 1.2 * INTERVAL + SLACK, unhealthy_after
            status = background.status
            assert status.running and not status.healthy
            assert status.last_success_unix_time is not None
            # Not before the window had passed since the last success.
            assert time.time() - status.last_success_unix_time >= HEALTH_WINDOW - 0.01
            # The round still waits on the remote, or its request's deadline failed it: healthy says so either way.
            assert status.round_started_unix_time is not None or status.consecutive_failures > 0
            proxy.release()
            assert await wait_until(lambda: background.status.healthy, AWAIT_SECONDS)
            rounds = background.status.rounds
            assert await wait_until(lambda: background.status.rounds > rounds)
        assert not background.status.healthy  # stopped
    finally:
        proxy.release()
        await bounded(conn.close())


async def test_before_the_first_success_the_health_window_counts_from_the_start(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    conn = await replica_behind(proxy, replica_path, sync_server)
    try:
        proxy.stall()
        started = time.monotonic()
        background = conn.sync_in_background(INTERVAL)
        assert background.status.healthy and background.status.rounds == 0
        assert await wait_until(lambda: not background.status.healthy, HEALTH_WINDOW + SLACK)
        assert time.monotonic() - started >= HEALTH_WINDOW
        proxy.release()
        assert await wait_until(lambda: background.status.healthy and background.status.rounds >= 1, AWAIT_SECONDS)
        await bounded(background.stop())
    finally:
        proxy.release()
        await bounded(conn.close())


async def test_healthy_follows_the_targets_request_timeout(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    conn = await replica_behind(proxy, replica_path, sync_server)
    try:
        proxy.stall()
        background = conn.sync_in_background(INTERVAL)
        conn.request_timeout = 60.0  # read for each status: a long timeout keeps the window open
        await asyncio.sleep(HEALTH_WINDOW + SLACK)
        assert background.status.healthy
        conn.request_timeout = REQUEST_TIMEOUT
        assert not background.status.healthy
        await bounded(background.stop())
    finally:
        proxy.release()
        await bounded(conn.close())


# --- shutdown in a second ----------------------------------------------------------------------------------------


async def test_leaving_the_lifespan_under_a_stalled_remote_takes_about_a_second_and_sync_now_in_flight_raises(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    conn = await replica_behind(proxy, replica_path, sync_server)
    await write_rows(conn, 1)
    background: BackgroundSync
    waiting: "asyncio.Task[bool]"
    began = 0.0
    async with conn:
        async with conn.sync_in_background(INTERVAL) as background:
            assert await wait_until(lambda: background.status.rounds >= 1)
            proxy.stall()
            await write_rows(conn, 1)
            waiting = asyncio.create_task(background.sync_now())  # a /sync handler waiting for its round
            assert await wait_until(lambda: proxy.held > 0)
            began = time.monotonic()
        # stop() returned: the handler's sync_now() raised, within stop()'s bound.
        assert time.monotonic() - began < STOP_TIMEOUT_SECONDS + SLACK
        with pytest.raises(turso.ProgrammingError, match="stopped"):
            await bounded(waiting)
    took = time.monotonic() - began
    # Before: stop()'s 5 s default, then close()'s 0.5 s.
    assert took < SHUTDOWN_SECONDS + SLACK, took
    proxy.release()
    # Nothing was lost: the replica pushes both rows on the next open.
    assert await wait_until(lambda: proxy.held == 0)
    async with await bounded(connect_sync(replica_path, sync_server.url)) as again:
        await bounded(again.sync())
    assert sync_server.execute("SELECT count(*) FROM notes") == [(2,)]
