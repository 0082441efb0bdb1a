"""Lifecycle and faults against a real `tursodb --sync-server` on 127.0.0.1.

No worker outlives its connection, no await hangs, cancellation is safe, no write is lost, and bad input gets a clear
error and leaves nothing behind. Slow remotes are made with a loopback proxy that holds each request for a while
(`DelayingProxy`); slow local work with a statement the test holds on the SQL worker (`StatementGate`).
"""

import asyncio
import gc
import http.server
import json
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Optional, Union, cast

import pytest

import turso
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer, free_port
from tests.helpers import (
    AWAIT_SECONDS,
    WORKER_EXIT_SECONDS,
    LoopContext,
    StatementGate,
    hold_statement,
    new_threads,
    open_replica,
    pool_thread_serves,
    record_loop_errors,
    rows,
    turso_threads,
    wait_until,
    wait_until_blocking,
)
from turso.lib_sync_aio import ConnectionSync, connect_sync

# How long the delaying proxy holds each request before it forwards it to the sync server.
PROXY_DELAY_SECONDS = 0.5
# How long a test holds a statement on the SQL worker to see that what it called after it waits.
HOLD_SECONDS = 0.3


# --- helpers -----------------------------------------------------------------------------------------------------


class _Answer401(http.server.BaseHTTPRequestHandler):
    """Answers every request with 401 and a JSON error body, like a remote that refuses the token."""

    def _refuse(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"error": "Unauthorized: invalid token"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _refuse
    do_POST = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_proxy(sync_server: SyncServer) -> Iterator[DelayingProxy]:
    """The sync server behind a loopback proxy that holds each request for PROXY_DELAY_SECONDS."""
    proxy = DelayingProxy(sync_server.port, PROXY_DELAY_SECONDS)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def unauthorized_url() -> Iterator[str]:
    """The URL of a loopback HTTP server that answers 401 with a JSON body to every request."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer401)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="answer-401")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WORKER_EXIT_SECONDS)


@pytest.fixture
def replica_dir(tmp_path: Path) -> Path:
    """An empty directory of its own for the replica, so that files left behind are easy to see."""
    directory = tmp_path / "replicas"
    directory.mkdir()
    return directory


# --- 1. no worker outlives its connection ------------------------------------------------------------------------


async def test_close_stops_the_worker_thread(sync_server: SyncServer, replica_path: str) -> None:
    baseline = turso_threads()
    conn = await open_replica(replica_path, sync_server.url)
    assert pool_thread_serves(baseline)
    await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
    await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    assert await wait_until(lambda: not new_threads(baseline))


async def test_async_with_stops_the_worker_when_the_block_ends(sync_server: SyncServer, replica_path: str) -> None:
    baseline = turso_threads()
    async with connect_sync(replica_path, sync_server.url) as conn:
        assert pool_thread_serves(baseline)
        await asyncio.wait_for(conn.execute("CREATE TABLE t(x INTEGER)"), AWAIT_SECONDS)
        await asyncio.wait_for(conn.commit(), AWAIT_SECONDS)
    assert await wait_until(lambda: not new_threads(baseline))


async def test_async_with_stops_the_worker_when_the_block_raises(sync_server: SyncServer, replica_path: str) -> None:
    baseline = turso_threads()
    with pytest.raises(ZeroDivisionError):
        async with connect_sync(replica_path, sync_server.url) as conn:
            await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
            assert pool_thread_serves(baseline)
            _ = 1 / 0
    assert await wait_until(lambda: not new_threads(baseline))


async def test_failed_connect_stops_the_worker_thread(replica_path: str) -> None:
    baseline = turso_threads()
    with pytest.raises(turso.DatabaseError, match="Connection refused"):
        await open_replica(replica_path, f"http://127.0.0.1:{free_port()}")
    assert await wait_until(lambda: not new_threads(baseline))


async def test_connect_cancelled_while_bootstrapping_fails_the_bootstrap_and_stops_the_worker_at_once(
    sync_server: SyncServer, slow_proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    sync_server.execute("INSERT INTO t VALUES (1)")
    errors = record_loop_errors()
    baseline = turso_threads()
    conn = connect_sync(replica_path, slow_proxy.url)

    async def open_it() -> ConnectionSync:
        return await conn

    opening = asyncio.create_task(open_it())
    assert await wait_until(lambda: slow_proxy.requests > 0), "the bootstrap never reached the remote"
    opening.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(opening, AWAIT_SECONDS)
    # The bootstrap's request on the wire is failed (the proxy holds it for half a second): the worker goes at once.
    assert await wait_until(lambda: not new_threads(baseline), 1.0), "the worker outlived the cancelled connect"
    with pytest.raises(turso.ProgrammingError):
        await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
    assert errors == []
    # Nothing half-made was left: the replica opens again, bootstraps, and has the remote's row.
    async with connect_sync(replica_path, sync_server.url) as again:
        assert await rows(again, "SELECT x FROM t") == [(1,)]


async def test_connect_timed_out_while_bootstrapping_stops_the_worker_and_the_replica_opens_whole_later(
    sync_server: SyncServer, replica_path: str
) -> None:
    # A remote with 8 MB to download: the bootstrap takes about 0.1 s, a hundred times the timeout.
    sync_server.execute("CREATE TABLE big(b BLOB)")
    for _ in range(8):
        sync_server.execute("INSERT INTO big SELECT randomblob(100000) FROM generate_series(1, 10)")
    errors = record_loop_errors()
    baseline = turso_threads()
    conn = connect_sync(replica_path, sync_server.url)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(conn, 0.001)
    # The bootstrap is failed where it stands (or ends first, if it was nearly done); either way the worker goes.
    assert await wait_until(lambda: not new_threads(baseline), 2.0), "the worker outlived the timed-out connect"
    with pytest.raises(turso.ProgrammingError):
        await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)
    assert errors == []
    async with connect_sync(replica_path, sync_server.url) as again:
        assert await rows(again, "SELECT count(*) FROM big") == [(80,)]


async def test_connection_dropped_without_close_warns_and_its_worker_stops(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    baseline = turso_threads()
    conn = await open_replica(replica_path, sync_server.url)
    await asyncio.wait_for(conn.execute("INSERT INTO t VALUES (1)"), AWAIT_SECONDS)
    await asyncio.wait_for(conn.commit(), AWAIT_SECONDS)
    assert pool_thread_serves(baseline)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del conn  # refcounting may collect it right here
        gc.collect()
    assert [warning for warning in caught if issubclass(warning.category, ResourceWarning)], (
        f"no ResourceWarning for an unclosed connection; got {[str(warning.message) for warning in caught]}"
    )
    assert await wait_until(lambda: not new_threads(baseline)), "the worker outlived its collected connection"
    # The worker closed the replica: it opens again, with the committed row.
    async with connect_sync(replica_path, sync_server.url) as again:
        assert await rows(again, "SELECT x FROM t") == [(1,)]


@pytest.mark.parametrize("operation", ["heavy_query", "slow_pull"])
def test_event_loop_closing_mid_operation_stops_the_worker_without_traceback(
    sync_server: SyncServer,
    slow_proxy: DelayingProxy,
    replica_path: str,
    monkeypatch: pytest.MonkeyPatch,
    operation: str,
) -> None:
    thread_errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    baseline = turso_threads()
    url = slow_proxy.url if operation == "slow_pull" else sync_server.url

    async def open_it() -> ConnectionSync:
        return await asyncio.wait_for(connect_sync(replica_path, url), AWAIT_SECONDS)

    gate = StatementGate()

    async def run_operation(conn: ConnectionSync) -> None:
        if operation == "slow_pull":
            await conn.pull()
        else:
            conn.row_factory = gate.row_factory  # the statement waits on the SQL worker until the gate opens
            await conn.execute_fetchall("SELECT 1")

    def operation_is_running() -> bool:
        if operation == "slow_pull":
            return slow_proxy.requests > requests_before  # the pull is held by the proxy
        return gate.entered.is_set()

    loop_errors: list[LoopContext] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: loop_errors.append(context))
    try:
        conn = loop.run_until_complete(open_it())
        requests_before = slow_proxy.requests
        running = loop.create_task(run_operation(conn))
        assert loop.run_until_complete(wait_until(operation_is_running)), f"the {operation} never started"
        assert not running.done()
        assert pool_thread_serves(baseline)
    finally:
        loop.close()
        gate.open()  # the statement ends after the loop has closed

    assert wait_until_blocking(lambda: not new_threads(baseline)), "the worker outlived its event loop"
    assert thread_errors == [], [f"{args.exc_type.__name__}: {args.exc_value}" for args in thread_errors]
    # The only thing the loop may report is the task we left pending on purpose when we closed it.
    del running
    gc.collect()
    messages = [str(context.get("message")) for context in loop_errors]
    assert all(message == "Task was destroyed but it is pending!" for message in messages), messages


# --- 2. no await hangs -------------------------------------------------------------------------------------------


async def test_operations_racing_close_complete_or_raise_programming_error(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    errors = record_loop_errors()
    baseline = turso_threads()
    conn = await open_replica(replica_path, sync_server.url)
    gate = StatementGate()
    # Only the held statement builds rows: it waits on the SQL worker until the gate opens.
    conn.row_factory = gate.row_factory

    def operations() -> list[Awaitable[object]]:
        # Single calls, each queued by its first step (executescript commits its INSERT on its own).
        return [
            conn.pull(),
            conn.executescript("INSERT INTO t VALUES (1)"),
            conn.push(),
            conn.stats(),
            conn.execute_fetchall("SELECT 1"),
            conn.checkpoint(),
        ]

    with gate:
        # Tasks start in creation order: the first batch is called before close(), the second after it began.
        before_close = [asyncio.create_task(asyncio.wait_for(op, AWAIT_SECONDS)) for op in operations()]
        closing = asyncio.create_task(asyncio.wait_for(conn.close(), AWAIT_SECONDS))
        after_close = [asyncio.create_task(asyncio.wait_for(op, AWAIT_SECONDS)) for op in operations()]
        everything = asyncio.gather(*before_close, closing, *after_close, return_exceptions=True)
        assert await wait_until(gate.entered.is_set), "the statement called before close() never ran"
        await asyncio.sleep(HOLD_SECONDS)
        assert not closing.done(), "close() returned while a statement called before it was still running"
        gate.open()
        outcomes = await asyncio.wait_for(everything, 3 * AWAIT_SECONDS)

    for outcome in outcomes:
        assert not isinstance(outcome, BaseException) or isinstance(outcome, turso.ProgrammingError), repr(outcome)
    # Work called before close() finished (the push reached the server); work called after it was refused.
    count = len(before_close)
    first, closed, second = outcomes[:count], outcomes[count], outcomes[count + 1 :]
    assert [outcome for outcome in first if isinstance(outcome, BaseException)] == []
    assert closed is None
    assert all(isinstance(outcome, turso.ProgrammingError) for outcome in second), second
    assert sync_server.execute("SELECT x FROM t") == [(1,)]
    assert not new_threads(baseline)
    assert errors == []


async def test_operations_after_close_fail_at_once(sync_server: SyncServer, replica_path: str) -> None:
    conn = await open_replica(replica_path, sync_server.url)
    await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    calls: list[Callable[[], Awaitable[object]]] = [
        conn.pull,
        conn.push,
        conn.stats,
        conn.checkpoint,
        conn.commit,
        conn.rollback,
        lambda: conn.execute("SELECT 1"),
        lambda: conn.executescript("SELECT 1"),
        lambda: conn.executemany("SELECT ?", [(1,)]),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(turso.ProgrammingError, match="closed"):
            await asyncio.wait_for(call(), 1.0)
        assert time.monotonic() - started < 0.5


async def test_a_job_raising_system_exit_fails_its_call_and_the_connection_still_closes(
    sync_server: SyncServer, replica_path: str
) -> None:
    baseline = turso_threads()
    conn = await open_replica(replica_path, sync_server.url)

    def exit_instead_of_building_a_row(cursor: object, row: object) -> object:
        raise SystemExit(3)

    conn.row_factory = exit_instead_of_building_a_row
    cursor = await asyncio.wait_for(conn.execute("SELECT 1"), AWAIT_SECONDS)
    with pytest.raises(turso.InternalError, match="SystemExit"):
        await asyncio.wait_for(cursor.fetchone(), AWAIT_SECONDS)
    conn.row_factory = None
    assert await rows(conn, "SELECT 2") == [(2,)]  # the worker survived
    await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    assert not new_threads(baseline)


async def test_close_twice_is_fine(sync_server: SyncServer, replica_path: str) -> None:
    baseline = turso_threads()
    conn = await open_replica(replica_path, sync_server.url)
    await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    assert not new_threads(baseline)


async def test_close_from_two_tasks_at_once_both_return_after_the_worker_exited(
    sync_server: SyncServer, replica_path: str
) -> None:
    errors = record_loop_errors()
    baseline = turso_threads()
    conn = await open_replica(replica_path, sync_server.url)

    async def close_and_look() -> set[threading.Thread]:
        await conn.close()
        return {thread for thread in new_threads(baseline) if thread.is_alive()}

    with StatementGate() as gate:
        busy = await hold_statement(conn, gate)  # so that both closes really wait
        closes = asyncio.gather(close_and_look(), close_and_look())
        done, _ = await asyncio.wait({closes}, timeout=HOLD_SECONDS)
        assert not done, "close() returned while a statement called before it was still running"
        gate.open()
        first, second = await asyncio.wait_for(closes, AWAIT_SECONDS)
    assert not first, f"first close() returned with the worker alive: {first}"
    assert not second, f"second close() returned with the worker alive: {second}"
    assert await asyncio.wait_for(busy, AWAIT_SECONDS) == [(1,)]
    assert errors == []


# --- 3. cancellation is safe -------------------------------------------------------------------------------------


async def test_cancelled_pull_logs_nothing_ends_its_request_at_once_and_the_next_pull_applies_the_changes(
    sync_server: SyncServer, slow_proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    async with await open_replica(replica_path, slow_proxy.url) as conn:
        errors = record_loop_errors()
        sync_server.execute("INSERT INTO t VALUES (7)")
        requests_before = slow_proxy.requests
        pulling = asyncio.create_task(conn.pull())
        assert await wait_until(lambda: slow_proxy.requests > requests_before), "the pull never reached the remote"
        pulling.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(pulling, AWAIT_SECONDS)

        # A pull only reads: its request was cut at once (the next sync operation takes its turn without waiting for
        # the held answer), nothing was applied, and the next pull fetches the changes again.
        await asyncio.wait_for(conn.stats(), PROXY_DELAY_SECONDS / 2)
        assert await rows(conn, "SELECT x FROM t") == []
        assert await asyncio.wait_for(conn.pull(), AWAIT_SECONDS) is True
        assert await rows(conn, "SELECT x FROM t") == [(7,)]
        assert errors == []


async def test_cancelled_push_logs_nothing_and_still_reaches_the_server(
    sync_server: SyncServer, slow_proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    async with await open_replica(replica_path, slow_proxy.url) as conn:
        errors = record_loop_errors()
        await asyncio.wait_for(conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)]), AWAIT_SECONDS)
        await asyncio.wait_for(conn.commit(), AWAIT_SECONDS)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(conn.push(), PROXY_DELAY_SECONDS / 2)  # while the proxy holds it

        # The next call runs after the cancelled push, which delivered both rows.
        stats = await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)
        assert stats.cdc_operations == 0
        assert stats.last_push_unix_time is not None
        assert sync_server.execute("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
        assert errors == []


async def test_cancelled_stats_logs_nothing_and_next_call_works(
    sync_server: SyncServer, slow_proxy: DelayingProxy, replica_path: str
) -> None:
    async with await open_replica(replica_path, slow_proxy.url) as conn:
        errors = record_loop_errors()
        # stats() takes its turn on the sync lane, behind a pull that the proxy holds.
        busy = asyncio.create_task(conn.pull())
        # A task of its own, so that stats() is called after the pull on every Python: tasks start in creation
        # order, while since 3.12 asyncio.wait_for runs a bare coroutine at once, in this task, ahead of the pull.
        cancelled_stats = asyncio.create_task(conn.stats())
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(cancelled_stats, 0.05)
        assert cancelled_stats.cancelled()
        assert not busy.done()  # so the cancelled stats() is still queued: its result comes after the cancel

        # The next call runs after the cancelled one, whose late result must be dropped without a word.
        stats = await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)
        assert await asyncio.wait_for(busy, AWAIT_SECONDS) is False
        assert stats.last_pull_unix_time is not None
        assert stats.cdc_operations == 0
        assert errors == []


async def test_cancelled_checkpoint_logs_nothing_and_still_empties_the_wal(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with await open_replica(replica_path, sync_server.url) as conn:
        errors = record_loop_errors()
        await asyncio.wait_for(conn.execute("CREATE TABLE t(x INTEGER)"), AWAIT_SECONDS)
        await asyncio.wait_for(conn.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(100)]), AWAIT_SECONDS)
        await asyncio.wait_for(conn.commit(), AWAIT_SECONDS)
        assert (await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)).main_wal_size > 0

        with StatementGate() as gate:
            busy = await hold_statement(conn, gate)  # the checkpoint's turn on the SQL worker comes after this
            checkpointing = asyncio.create_task(conn.checkpoint())
            await asyncio.sleep(0.05)
            assert not checkpointing.done()
            checkpointing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(checkpointing, AWAIT_SECONDS)
        await asyncio.wait_for(busy, AWAIT_SECONDS)

        assert (await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)).main_wal_size == 0
        assert await rows(conn, "SELECT count(*) FROM t") == [(100,)]
        assert errors == []


# --- 4. no write is lost -----------------------------------------------------------------------------------------


async def test_push_while_the_server_is_down_fails_promptly_keeps_the_rows_and_succeeds_after_restart(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    async with await open_replica(replica_path, sync_server.url) as conn:
        await asyncio.wait_for(conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)]), AWAIT_SECONDS)
        await asyncio.wait_for(conn.commit(), AWAIT_SECONDS)
        sync_server.stop()

        started = time.monotonic()
        with pytest.raises(turso.Error, match="Connection refused"):
            await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        assert time.monotonic() - started < 5.0
        with pytest.raises(turso.Error, match="Connection refused"):
            await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
        assert await rows(conn, "SELECT x FROM t ORDER BY x") == [(1,), (2,), (3,)]
        assert (await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)).cdc_operations > 0

        sync_server.start()
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        assert sync_server.execute("SELECT x FROM t ORDER BY x") == [(1,), (2,), (3,)]
        assert (await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)).cdc_operations == 0


async def test_an_operation_that_fails_on_the_remote_reports_its_own_error_not_the_network_failure_before_it(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    async with await open_replica(replica_path, sync_server.url) as conn:
        sync_server.stop()
        with pytest.raises(turso.OperationalError, match="Connection refused"):
            await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
        sync_server.start()
        # The remote is back, but refuses the push (its table is gone): the push says that, not the refused connection.
        sync_server.execute("DROP TABLE t")
        await asyncio.wait_for(conn.execute("INSERT INTO t VALUES (1)"), AWAIT_SECONDS)
        await asyncio.wait_for(conn.commit(), AWAIT_SECONDS)
        with pytest.raises(turso.DatabaseError, match="no such table") as raised:
            await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        assert "Connection refused" not in str(raised.value)
        assert (await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)).cdc_operations > 0


async def test_eight_tasks_committing_and_pushing_at_once_lose_no_row(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(task INTEGER, n INTEGER)")
    async with await open_replica(replica_path, sync_server.url) as conn:

        async def commit_ten_and_push(task: int) -> None:
            for n in range(10):
                await conn.execute("INSERT INTO t VALUES (?, ?)", (task, n))
                await conn.commit()
            await conn.push()

        await asyncio.wait_for(asyncio.gather(*(commit_ten_and_push(task) for task in range(8))), AWAIT_SECONDS)
        assert (await asyncio.wait_for(conn.stats(), AWAIT_SECONDS)).cdc_operations == 0

    expected = [(task, n) for task in range(8) for n in range(10)]
    assert sync_server.execute("SELECT task, n FROM t ORDER BY task, n") == expected


# --- 5. bad input gets a clear error and leaves nothing behind ---------------------------------------------------


def _raise_token_error() -> str:
    raise RuntimeError("the token store is offline")


@pytest.mark.parametrize(
    ("case", "error", "message"),
    [
        ("nothing_listening", turso.DatabaseError, "Connection refused"),
        ("ftp_scheme", turso.ProgrammingError, "not a sync URL"),
        ("not_a_url", turso.ProgrammingError, "not a sync URL"),
        ("auth_token_callable_raises", turso.DatabaseError, "auth token"),
        ("server_answers_401", turso.DatabaseError, "401"),
        ("missing_directory", turso.OperationalError, "does not exist"),
        ("path_not_a_string", TypeError, "path"),
        ("remote_url_callable", turso.ProgrammingError, "remote_url as a callable is not supported"),
    ],
)
async def test_bad_input_raises_a_clear_error_and_leaves_nothing_behind(
    sync_server: SyncServer,
    unauthorized_url: str,
    replica_dir: Path,
    case: str,
    error: type[Exception],
    message: str,
) -> None:
    path: object = str(replica_dir / "replica.db")
    url: Union[str, Callable[[], str]] = sync_server.url
    auth_token: Optional[Callable[[], str]] = None
    if case == "nothing_listening":
        url = f"http://127.0.0.1:{free_port()}"
    elif case == "ftp_scheme":
        url = f"ftp://127.0.0.1:{sync_server.port}/db"
    elif case == "not_a_url":
        url = "not a url"
    elif case == "auth_token_callable_raises":
        auth_token = _raise_token_error
    elif case == "server_answers_401":
        url = unauthorized_url
    elif case == "missing_directory":
        path = str(replica_dir / "missing" / "replica.db")
    elif case == "path_not_a_string":
        path = 123
    elif case == "remote_url_callable":
        url = lambda: sync_server.url  # noqa: E731

    baseline = turso_threads()
    with pytest.raises(error, match=message) as raised:
        await asyncio.wait_for(connect_sync(cast(str, path), url, auth_token=auth_token), AWAIT_SECONDS)
    if error is not TypeError:
        assert isinstance(raised.value, turso.Error)
    assert await wait_until(lambda: not new_threads(baseline)), "a failed connect left its worker running"
    assert os.listdir(replica_dir) == []
