"""Every sync request has a deadline (issue 17), against a real `tursodb --sync-server` behind a loopback proxy.

`ConnectionSync.request_timeout` bounds connecting and each wait for the answer's next byte: a pull, push, sync or
bootstrap on a remote that never answers fails after it, naming the host and the timeout, and nothing is lost or
doubled. close() fails a request in flight and leaves no thread, and background sync recovers by itself.
"""

import asyncio
import math
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, cast

import pytest

import turso
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import AWAIT_SECONDS, local_keys, remote_keys, turso_threads, wait_until
from turso.lib_sync_aio import LANE_CLOSE_SECONDS, REQUEST_TIMEOUT_SECONDS, ConnectionSync, connect_sync


async def test_request_timeout_defaults_to_thirty_seconds_and_can_be_set_at_any_time(
    sync_server: SyncServer, replica_path: str
) -> None:
    conn = connect_sync(replica_path, sync_server.url)
    assert conn.request_timeout == REQUEST_TIMEOUT_SECONDS == 30.0
    conn.request_timeout = 2
    assert conn.request_timeout == 2.0
    async with conn:
        conn.request_timeout = 0.25
        assert conn.request_timeout == 0.25


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan])
async def test_request_timeout_that_is_not_a_finite_positive_number_raises_value_error(
    sync_server: SyncServer, replica_path: str, value: float
) -> None:
    conn = connect_sync(replica_path, sync_server.url)
    with pytest.raises(ValueError, match="request_timeout must be a finite number of seconds greater than 0"):
        conn.request_timeout = value
    assert conn.request_timeout == REQUEST_TIMEOUT_SECONDS


@pytest.mark.parametrize("value", ["5", None, True])
async def test_request_timeout_that_is_not_a_number_raises_type_error(
    sync_server: SyncServer, replica_path: str, value: object
) -> None:
    conn = connect_sync(replica_path, sync_server.url)
    with pytest.raises(TypeError, match="request_timeout must be a number of seconds"):
        cast(Any, conn).request_timeout = value


# --- a request that gets no answer fails after request_timeout -----------------------------------------------------

# A short request_timeout for the tests, and how late the failure may come after it (a busy machine, the thread hop).
TIMEOUT_SECONDS = 0.5
LATE_SECONDS = 1.0
# No key: a row that reached the server twice shows up twice.
LOG_SCHEMA = "CREATE TABLE log(k TEXT, v INTEGER)"


async def open_with_timeout(path: str, url: str, timeout: float = TIMEOUT_SECONDS) -> ConnectionSync:
    conn = connect_sync(path, url)
    conn.request_timeout = timeout
    return await asyncio.wait_for(conn, AWAIT_SECONDS)


async def insert(conn: ConnectionSync, *keys: str) -> None:
    await asyncio.wait_for(conn.executemany("INSERT INTO log VALUES (?, 0)", [(key,) for key in keys]), AWAIT_SECONDS)
    await asyncio.wait_for(conn.commit(), AWAIT_SECONDS)


async def fails_after_the_timeout(operation: Awaitable[object]) -> tuple[turso.OperationalError, float]:
    started = time.monotonic()
    with pytest.raises(turso.OperationalError) as raised:
        await asyncio.wait_for(operation, AWAIT_SECONDS)
    return raised.value, time.monotonic() - started


@pytest.mark.parametrize("operation", ["pull", "push", "sync"])
async def test_sync_on_a_silent_remote_fails_after_request_timeout_naming_the_host_and_the_timeout(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, operation: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with await open_with_timeout(replica_path, proxy.url) as conn:
        await insert(conn, "local-1")
        proxy.stall()
        error, took = await fails_after_the_timeout(getattr(conn, operation)())
        assert TIMEOUT_SECONDS * 0.9 <= took < TIMEOUT_SECONDS + LATE_SECONDS, f"failed after {took:.2f} s"
        assert proxy.url.removeprefix("http://") in str(error)
        assert f"{TIMEOUT_SECONDS:g} s" in str(error) and "request_timeout" in str(error), str(error)
        proxy.release()


@pytest.mark.parametrize("stall", ["request", "answer"])
async def test_after_a_timed_out_push_the_next_push_sends_each_row_exactly_once(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, stall: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with await open_with_timeout(replica_path, proxy.url) as conn:
        await insert(conn, "a", "b")
        if stall == "request":
            proxy.stall()  # the server never sees the push
        else:
            proxy.answer_delay = 3 * TIMEOUT_SECONDS  # the server applies the push; its answer comes too late
        await fails_after_the_timeout(conn.push())
        proxy.release()
        proxy.answer_delay = 0.0
        await insert(conn, "c")
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        assert remote_keys(sync_server, "log") == ["a", "b", "c"]
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        assert remote_keys(sync_server, "log") == ["a", "b", "c"]


async def test_after_a_timed_out_pull_the_next_pull_applies_every_remote_change_once(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with await open_with_timeout(replica_path, proxy.url) as conn:
        sync_server.execute("INSERT INTO log VALUES ('remote-1', 0)")
        proxy.answer_delay = 3 * TIMEOUT_SECONDS
        await fails_after_the_timeout(conn.pull())
        proxy.answer_delay = 0.0
        sync_server.execute("INSERT INTO log VALUES ('remote-2', 0)")
        assert await asyncio.wait_for(conn.pull(), AWAIT_SECONDS) is True
        assert await local_keys(conn, "log") == ["remote-1", "remote-2"]


async def test_a_slow_answer_that_comes_within_the_timeout_is_not_cut(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with await open_with_timeout(replica_path, proxy.url, timeout=4 * TIMEOUT_SECONDS) as conn:
        # Each request waits 1.2 s for its answer's first byte: longer than the other tests' timeout, within this one.
        proxy.delay = 1.2 * TIMEOUT_SECONDS
        proxy.answer_delay = 1.2 * TIMEOUT_SECONDS
        await insert(conn, "a")
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        sync_server.execute("INSERT INTO log VALUES ('remote', 0)")
        assert await asyncio.wait_for(conn.pull(), AWAIT_SECONDS) is True
    assert remote_keys(sync_server, "log") == ["a", "remote"]


async def test_a_longer_request_timeout_set_while_open_is_used_by_the_next_request(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with await open_with_timeout(replica_path, proxy.url) as conn:
        await insert(conn, "a")
        proxy.answer_delay = 2 * TIMEOUT_SECONDS
        await fails_after_the_timeout(conn.push())
        conn.request_timeout = 4 * TIMEOUT_SECONDS
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
    assert remote_keys(sync_server, "log") == ["a"]


# --- opening a fresh replica bootstraps with the same deadline ------------------------------------------------------


async def test_bootstrap_from_a_silent_remote_fails_after_request_timeout_and_leaves_nothing_behind(
    sync_server: SyncServer, proxy: DelayingProxy, tmp_path: Path
) -> None:
    sync_server.execute(LOG_SCHEMA)
    baseline = turso_threads()
    replicas = tmp_path / "replicas"
    replicas.mkdir()
    proxy.stall()
    conn = connect_sync(str(replicas / "replica.db"), proxy.url)
    conn.request_timeout = TIMEOUT_SECONDS
    error, took = await fails_after_the_timeout(conn)
    assert took < TIMEOUT_SECONDS + LATE_SECONDS, f"the open failed after {took:.2f} s"
    assert "replica.db" in str(error) and proxy.url.removeprefix("http://") in str(error), str(error)
    assert turso_threads() == baseline
    assert list(replicas.iterdir()) == []
    proxy.release()


async def test_connect_timed_out_by_wait_for_on_a_silent_remote_stops_its_threads_and_removes_its_files_at_once(
    sync_server: SyncServer, proxy: DelayingProxy, tmp_path: Path
) -> None:
    sync_server.execute(LOG_SCHEMA)
    baseline = turso_threads()
    replicas = tmp_path / "replicas"
    replicas.mkdir()
    proxy.stall()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(connect_sync(str(replicas / "replica.db"), proxy.url), TIMEOUT_SECONDS)
    # The bootstrap's request is failed by the cancelled open, whatever the remote does (request_timeout is 30 s).
    assert await wait_until(lambda: turso_threads() == baseline, LATE_SECONDS)
    assert list(replicas.iterdir()) == []
    proxy.release()


async def test_a_fresh_replica_bootstrapped_through_the_transport_has_the_remote_rows_and_pushes_once(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    sync_server.execute("INSERT INTO log VALUES ('remote-1', 0), ('remote-2', 0)")
    async with await open_with_timeout(replica_path, sync_server.url, timeout=5.0) as conn:
        assert await local_keys(conn, "log") == ["remote-1", "remote-2"]
        stats = await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)
        assert stats.last_pull_unix_time is not None and stats.revision is not None
        await insert(conn, "local")
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
    # Reopened: no second bootstrap over the local data.
    async with await open_with_timeout(replica_path, sync_server.url, timeout=5.0) as conn:
        assert await local_keys(conn, "log") == ["local", "remote-1", "remote-2"]
    assert remote_keys(sync_server, "log") == ["local", "remote-1", "remote-2"]


# --- close() leaves nothing behind, whatever the remote does -------------------------------------------------------


@pytest.mark.parametrize("operation", ["pull", "push"])
async def test_close_during_a_request_the_remote_never_answers_fails_it_and_leaves_no_thread(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, operation: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    baseline = turso_threads()
    conn = await open_with_timeout(replica_path, proxy.url, timeout=REQUEST_TIMEOUT_SECONDS)
    await insert(conn, "a")
    proxy.stall()
    stuck = asyncio.ensure_future(getattr(conn, operation)())
    queued = asyncio.ensure_future(conn.stats())
    await wait_until(lambda: proxy.held >= 1)
    started = time.monotonic()
    await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    took = time.monotonic() - started
    assert took < LANE_CLOSE_SECONDS + LATE_SECONDS, f"close() took {took:.2f} s"
    assert turso_threads() == baseline, "a thread of the connection outlived close()"
    for task in (stuck, queued):
        with pytest.raises(turso.ProgrammingError, match="closed"):
            await asyncio.wait_for(task, AWAIT_SECONDS)
    proxy.release()
    # Nothing was sent for the closed connection: the row goes out with the next push.
    assert remote_keys(sync_server, "log") == []
    async with await open_with_timeout(replica_path, sync_server.url, timeout=5.0) as again:
        await asyncio.wait_for(again.push(), AWAIT_SECONDS)
    assert remote_keys(sync_server, "log") == ["a"]


async def test_close_with_background_sync_in_a_stuck_round_returns_within_a_second_and_leaves_no_thread(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    baseline = turso_threads()
    conn = await open_with_timeout(replica_path, proxy.url, timeout=REQUEST_TIMEOUT_SECONDS)
    background = conn.sync_in_background(0.05)
    await wait_until(lambda: background.status.rounds >= 1)
    proxy.stall()
    await wait_until(lambda: proxy.held >= 1)
    started = time.monotonic()
    await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    took = time.monotonic() - started
    assert took < 2 * LANE_CLOSE_SECONDS + LATE_SECONDS, f"close() took {took:.2f} s"
    assert turso_threads() == baseline, "a thread of the connection outlived close()"
    assert not background.status.running
    proxy.release()


# --- background sync recovers by itself --------------------------------------------------------------------------


async def test_background_sync_through_a_stall_fails_rounds_then_recovers_and_sends_each_row_once(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with await open_with_timeout(replica_path, proxy.url) as conn:
        async with conn.sync_in_background(0.1, max_backoff=0.5) as background:
            await insert(conn, "before")
            await wait_until(lambda: remote_keys(sync_server, "log") == ["before"])
            proxy.stall()
            await insert(conn, "during")
            assert await wait_until(lambda: background.status.consecutive_failures >= 2, 5.0), background.status
            failed = background.status
            assert isinstance(failed.last_error, turso.OperationalError), failed
            assert "request_timeout" in str(failed.last_error)
            rounds_before = failed.rounds
            proxy.release()
            assert await wait_until(lambda: background.status.rounds > rounds_before, 5.0), background.status
            assert background.status.consecutive_failures == 0
            await wait_until(lambda: remote_keys(sync_server, "log") == ["before", "during"])
    assert remote_keys(sync_server, "log") == ["before", "during"]
