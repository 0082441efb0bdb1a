"""A stalled remote never stalls the replica (issues 13 and 17), against a real `tursodb --sync-server` behind a
stalling proxy.

`DelayingProxy.stall()` (testkit/proxy.py) makes a remote that accepts connections and never answers, until `release()`
forwards what it held. A request sent then waits on the event loop for its `request_timeout` (30 s by default); local
SQL, `close()`, a reopened replica and the thread count must not depend on it, and close() fails it. The
garbage-collection and loop-closed paths must let go of the worker pool's threads as close() does.
"""

import asyncio
import contextlib
import gc
import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, Optional

import pytest

import turso
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import (
    AWAIT_SECONDS,
    LocalSpeed,
    LoopContext,
    StatementGate,
    hold_statement,
    insert_and_commit,
    new_threads,
    open_replica,
    pool_thread_serves,
    record_loop_errors,
    remote_keys,
    turso_threads,
    wait_until,
    wait_until_blocking,
    warned_once_collected,
)
from turso.lib_sync import PartialSyncOpts, PartialSyncPrefixBootstrap
from turso.lib_sync_aio import ConnectionSync, connect_sync

# What the issue promises: a timed-out pull returns after about this long; close() returns within CLOSE_SECONDS.
PULL_TIMEOUT_SECONDS = 0.5
CLOSE_SECONDS = 1.0
# How long a test holds a statement called before close() on the SQL worker, to see that close() waits for it.
HOLD_SECONDS = 0.3
# A local statement must finish within this much more than the same statement on a plain local database run beside it
# (LocalSpeed: it takes about a millisecond; on a busy machine both take longer, and only the difference is ours).
LOCAL_SECONDS = 0.5
# How long a thread may take to exit once its stuck request ended.
THREAD_EXIT_SECONDS = 5.0

# No key: a row that reached the server twice shows up twice. TEXT values, so that replicas never collide on rowids
# they invent themselves.
LOG_SCHEMA = "CREATE TABLE log(k TEXT, v INTEGER)"


@contextlib.asynccontextmanager
async def opened(path: str, url: str, proxy: DelayingProxy) -> AsyncGenerator[ConnectionSync, None]:
    """`async with` for a replica behind a proxy that may stall: on the way out, release the proxy, then close with a
    bound (a failed assertion must not leave close() waiting for a request that the proxy holds forever)."""
    conn = await open_replica(path, url)
    try:
        yield conn
    finally:
        proxy.release()
        await asyncio.wait_for(conn.close(), AWAIT_SECONDS)


async def time_out_on_the_stalled_remote(conn: ConnectionSync, proxy: DelayingProxy, operation: str) -> float:
    """Run pull or push under wait_for(0.5 s) on the stalled remote; returns when TimeoutError came, in seconds."""
    proxy.stall()
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(conn.pull() if operation == "pull" else conn.push(), PULL_TIMEOUT_SECONDS)
    took = time.monotonic() - started
    assert proxy.held >= 1, "the operation never reached the stalled remote"
    return took


async def stuck_on_the_stalled_remote(
    conn: ConnectionSync, proxy: DelayingProxy, operation: str
) -> "Optional[asyncio.Future[bool]]":
    """Leave a pull or push stuck on the stalled remote: a push timed out by wait_for (it goes on, to be sent once), a
    pull still awaited in a task, returned (a cancelled pull would end its request at once)."""
    if operation == "push":
        await time_out_on_the_stalled_remote(conn, proxy, operation)
        return None
    proxy.stall()
    pulling = asyncio.ensure_future(conn.pull())
    assert await wait_until(lambda: proxy.held >= 1), "the pull never reached the stalled remote"
    return pulling


async def test_pull_on_a_stalled_remote_times_out_after_half_a_second_and_local_sql_then_runs_at_local_speed(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, local_speed: LocalSpeed
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with opened(replica_path, proxy.url, proxy) as conn:
        errors = record_loop_errors()
        took = await time_out_on_the_stalled_remote(conn, proxy, "pull")
        assert PULL_TIMEOUT_SECONDS * 0.9 <= took < PULL_TIMEOUT_SECONDS + 0.5, f"TimeoutError after {took:.2f} s"

        for n in range(5):
            _, read, beside = await local_speed.beside(conn.execute_fetchall("SELECT count(*) FROM log"), write=False)
            assert read < LOCAL_SECONDS + beside, f"a local read took {read:.2f} s ({beside:.2f} s beside it)"
            _, write, beside = await local_speed.beside(insert_and_commit(conn, "log", [f"local-{n}"]), write=True)
            assert write < LOCAL_SECONDS + beside, f"a local write took {write:.2f} s ({beside:.2f} s beside it)"
        assert proxy.held >= 1  # the pull is still stuck
        proxy.release()
    assert errors == []


@pytest.mark.parametrize("queued_sql", [False, True])
@pytest.mark.parametrize("operation", ["pull", "push"])
async def test_close_returns_within_a_second_of_its_queued_sql_while_a_request_is_stuck_and_no_thread_is_left(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, operation: str, queued_sql: bool
) -> None:
    sync_server.execute(LOG_SCHEMA)
    baseline = turso_threads()
    conn = await open_replica(replica_path, proxy.url)
    errors = record_loop_errors()
    await insert_and_commit(conn, "log", ["a"])
    stuck = await stuck_on_the_stalled_remote(conn, proxy, operation)
    sql_done_at: list[float] = []
    with StatementGate() as gate:
        held: "Optional[asyncio.Task[list[Any]]]" = None
        if queued_sql:
            # Local work called before close(), held on the SQL worker until the test lets it go: it runs first, then
            # close() has CLOSE_SECONDS, counted from when it ended.
            held = await hold_statement(conn, gate)
            held.add_done_callback(lambda _: sql_done_at.append(time.monotonic()))

        started = time.monotonic()
        closing = asyncio.ensure_future(conn.close())
        if held is not None:
            done, _ = await asyncio.wait({closing}, timeout=HOLD_SECONDS)
            assert not done, "close() returned while SQL called before it was still running"
            gate.open()
        try:
            await asyncio.wait_for(closing, CLOSE_SECONDS + 2.0)
        except asyncio.TimeoutError:
            proxy.release()
            await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    returned = time.monotonic()
    if held is not None:
        assert held.done() and held.result() == [(1,)], held
        took = returned - sql_done_at[0]
    else:
        took = returned - started
    assert took < CLOSE_SECONDS, f"close() returned {took:.2f} s after its queued SQL while a {operation} was stuck"
    if stuck is not None:
        with pytest.raises(turso.ProgrammingError):
            await asyncio.wait_for(stuck, AWAIT_SECONDS)
    # close() failed the stuck request: no thread of the connection is left, although the remote still holds it.
    assert not new_threads(baseline), f"threads left after close(): {sorted(t.name for t in new_threads(baseline))}"
    assert proxy.held >= 1
    proxy.release()
    assert errors == []


@pytest.mark.parametrize("operation", ["pull", "push"])
async def test_reopening_the_replica_while_the_old_request_is_stuck_works_and_every_row_reaches_the_server_once(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, operation: str, local_speed: LocalSpeed
) -> None:
    sync_server.execute(LOG_SCHEMA)
    sync_server.execute("INSERT INTO log VALUES ('remote-1', 0)")
    baseline = turso_threads()
    errors = record_loop_errors()
    old = await open_replica(replica_path, proxy.url)
    await insert_and_commit(old, "log", ["old-1", "old-2"])
    sync_server.execute("INSERT INTO log VALUES ('remote-2', 0)")
    try:
        stuck = await stuck_on_the_stalled_remote(old, proxy, operation)
        _, write, beside = await local_speed.beside(insert_and_commit(old, "log", ["old-3"]), write=True)
        assert write < LOCAL_SECONDS + beside, f"a local write took {write:.2f} s ({beside:.2f} s beside it)"
        await asyncio.wait_for(old.close(), CLOSE_SECONDS)
        if stuck is not None:
            with pytest.raises(turso.ProgrammingError):
                await asyncio.wait_for(stuck, AWAIT_SECONDS)
    except BaseException:
        proxy.release()  # let the old connection close, then report the failure
        await asyncio.wait_for(old.close(), AWAIT_SECONDS)
        raise

    # Same path, same process, the old request still held by the proxy.
    async with opened(replica_path, proxy.url, proxy) as new:
        local = [row[0] for row in await asyncio.wait_for(new.execute_fetchall("SELECT k FROM log"), AWAIT_SECONDS)]
        assert {"old-1", "old-2", "old-3", "remote-1"} <= set(local)
        _, write, beside = await local_speed.beside(insert_and_commit(new, "log", ["new-1"]), write=True)
        assert write < LOCAL_SECONDS + beside, f"a local write took {write:.2f} s ({beside:.2f} s beside it)"
        assert proxy.held >= 1

        proxy.release()  # the remote answers again: the old request and the new calls go through
        await asyncio.wait_for(new.push(), AWAIT_SECONDS)
        await asyncio.wait_for(new.pull(), AWAIT_SECONDS)
        assert await wait_until(lambda: proxy.held == 0)
        local = [row[0] for row in await asyncio.wait_for(new.execute_fetchall("SELECT k FROM log ORDER BY k"), 10)]

    assert await wait_until(lambda: not new_threads(baseline), THREAD_EXIT_SECONDS), (
        f"threads left once the stuck {operation} ended: {sorted(t.name for t in new_threads(baseline))}"
    )
    expected = ["new-1", "old-1", "old-2", "old-3", "remote-1", "remote-2"]
    assert remote_keys(sync_server, "log") == expected  # every row exactly once
    assert local == expected
    # A replica opened after everything settled sees the same rows (the old thread changed nothing it relies on).
    async with await open_replica(replica_path, sync_server.url) as again:
        await asyncio.wait_for(again.pull(), AWAIT_SECONDS)
        rows = await asyncio.wait_for(again.execute_fetchall("SELECT k FROM log ORDER BY k"), AWAIT_SECONDS)
        assert [row[0] for row in rows] == expected
    assert errors == []


# --- the garbage-collection and loop-closed paths let go of the threads too ----------------------------------------


@pytest.mark.parametrize("request_state", ["idle", "stuck"])
async def test_connection_dropped_without_close_warns_and_lets_go_of_its_threads(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, request_state: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    baseline = turso_threads()
    conn = await open_replica(replica_path, proxy.url)
    await insert_and_commit(conn, "log", ["a"])
    await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
    await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
    if request_state == "stuck":
        await time_out_on_the_stalled_remote(conn, proxy, "pull")
    assert pool_thread_serves(baseline), "no thread of the pool ran the connection's jobs"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del conn
        gc.collect()
        if request_state == "stuck":
            # The stuck request may keep the connection alive until it ends; then it is collected.
            assert proxy.held >= 1
            proxy.release()
            assert await wait_until(lambda: proxy.held == 0)
        assert await wait_until(lambda: warned_once_collected(caught)), (
            f"no ResourceWarning for an unclosed connection; got {[str(warning.message) for warning in caught]}"
        )
        assert await wait_until(lambda: not new_threads(baseline), THREAD_EXIT_SECONDS), (
            f"threads outlived their collected connection: {sorted(t.name for t in new_threads(baseline))}"
        )
    # Our warning says what to fix; the HTTP session the connection shared is closed when it lets go, not reported.
    assert [str(warning.message) for warning in caught if "Unclosed client session" in str(warning.message)] == []
    async with await open_replica(replica_path, sync_server.url) as again:
        assert await asyncio.wait_for(again.execute_fetchall("SELECT k FROM log"), AWAIT_SECONDS) == [("a",)]


@pytest.mark.parametrize("operation", ["pull", "push"])
async def test_sync_operations_queued_behind_a_stuck_request_fail_at_close_instead_of_hanging(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, operation: str, local_speed: LocalSpeed
) -> None:
    sync_server.execute(LOG_SCHEMA)
    baseline = turso_threads()
    errors = record_loop_errors()
    conn = await open_replica(replica_path, proxy.url)
    await insert_and_commit(conn, "log", ["a"])
    stuck = await stuck_on_the_stalled_remote(conn, proxy, operation)
    # Queued behind the stuck request, in their turns; each waits its turn (none may spin meanwhile).
    queued: "list[asyncio.Future[Any]]" = [
        asyncio.ensure_future(call()) for call in (conn.stats, conn.checkpoint, conn.pull, conn.push)
    ]
    if stuck is not None:
        queued.append(stuck)
    cpu_started, wall_started = time.process_time(), time.monotonic()
    await asyncio.sleep(0.5)
    assert not any(task.done() for task in queued), [task for task in queued if task.done()]
    _, write, beside = await local_speed.beside(insert_and_commit(conn, "log", ["b"]), write=True)
    assert write < LOCAL_SECONDS + beside, f"a local write took {write:.2f} s ({beside:.2f} s beside it)"
    cpu, wall = time.process_time() - cpu_started, time.monotonic() - wall_started
    assert cpu < 0.5 * wall, f"the process used {cpu:.2f} s of CPU in {wall:.2f} s while operations waited"

    started = time.monotonic()
    try:
        await asyncio.wait_for(conn.close(), CLOSE_SECONDS + 1.0)
    finally:
        proxy.release()
        await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    took = time.monotonic() - started
    done, _ = await asyncio.wait(queued, timeout=AWAIT_SECONDS)
    assert len(done) == len(queued), "a sync operation queued behind the stuck request never returned"
    outcomes = [task.exception() for task in queued]
    assert all(isinstance(outcome, turso.ProgrammingError) for outcome in outcomes), outcomes
    assert took < CLOSE_SECONDS, f"close() took {took:.2f} s"
    assert not new_threads(baseline), f"threads left after close(): {sorted(t.name for t in new_threads(baseline))}"
    assert errors == []


@pytest.mark.parametrize("remote", ["slow", "stalled"])
def test_event_loop_closing_mid_pull_lets_go_of_the_threads_without_traceback(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, monkeypatch: pytest.MonkeyPatch, remote: str
) -> None:
    thread_errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    sync_server.execute(LOG_SCHEMA)
    baseline = turso_threads()
    loop_errors: list[LoopContext] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: loop_errors.append(context))
    try:
        conn = loop.run_until_complete(open_replica(replica_path, proxy.url))
        sync_server.execute("INSERT INTO log VALUES ('remote', 0)")
        if remote == "slow":
            proxy.answer_delay = 0.5
        else:
            proxy.stall()
        requests_before = proxy.requests
        running = loop.create_task(conn.pull())
        loop.run_until_complete(asyncio.sleep(0.2))
        assert not running.done()
        assert proxy.requests > requests_before  # the pull is on the wire
        assert pool_thread_serves(baseline), "no thread of the pool ran the connection's jobs"
    finally:
        loop.close()

    proxy.release()
    assert wait_until_blocking(lambda: not new_threads(baseline), THREAD_EXIT_SECONDS), (
        f"threads outlived their event loop: {sorted(t.name for t in new_threads(baseline))}"
    )
    assert thread_errors == [], [f"{args.exc_type.__name__}: {args.exc_value}" for args in thread_errors]
    del running, conn
    gc.collect()
    messages = [str(context.get("message")) for context in loop_errors]
    assert all(message == "Task was destroyed but it is pending!" for message in messages), messages


# --- partial sync: a statement waiting for pages behind a stuck request ------------------------------------------

# A remote of about 600 KB, and a replica bootstrapped with its first 64 KiB: a full scan must fetch pages.
PARTIAL_ROWS = 600
PARTIAL_PREFIX_BYTES = 64 * 1024
# The scenario runs in a child process: if it hangs with the interpreter lock held, no await in this process could
# bound it; the child's timeout does.
CHILD_SECONDS = 20.0


async def _scan_behind_a_stuck_pull_then_close(port: int, path: str) -> dict[str, Any]:
    """In the child: a partial-sync scan that needs pages, queued while a pull is stuck; then close()."""
    with DelayingProxy(port) as proxy:
        options = PartialSyncOpts(PartialSyncPrefixBootstrap(length=PARTIAL_PREFIX_BYTES))
        conn = await asyncio.wait_for(connect_sync(path, proxy.url, partial_sync_experimental=options), AWAIT_SECONDS)
        proxy.stall()
        try:
            await asyncio.wait_for(conn.pull(), PULL_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            pass
        scan = asyncio.ensure_future(conn.execute_fetchall("SELECT count(*), sum(length(b)) FROM big"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        try:
            await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
            closed = "closed"
        except asyncio.TimeoutError:
            closed = "close() timed out"
        close_seconds = time.monotonic() - started
        # The scan was called before close(): it ends once the remote answers its page requests.
        proxy.release()
        done, _ = await asyncio.wait({scan}, timeout=AWAIT_SECONDS)
        outcome = repr(scan.exception() or scan.result()) if done else "still running"
        threads_left = await asyncio.to_thread(
            wait_until_blocking, lambda: not turso_threads()
        )
    return {"closed": closed, "close_seconds": close_seconds, "scan": outcome, "threads_ended": threads_left}


def scan_behind_a_stuck_pull_then_close(port: int, path: str) -> None:
    """The child's entry point: run the scenario and print what happened as JSON."""
    print(json.dumps(asyncio.run(_scan_behind_a_stuck_pull_then_close(port, path))), flush=True)


def test_partial_sync_scan_waiting_for_pages_behind_a_stuck_pull_lets_close_return(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE big(k TEXT PRIMARY KEY, b BLOB)")
    sync_server.execute(
        f"INSERT INTO big SELECT 'big-' || value, randomblob(1000) FROM generate_series(1, {PARTIAL_ROWS})"
    )
    root = Path(__file__).resolve().parent.parent
    # The child prints its threads' stacks and exits if it is still running 5 s before its deadline.
    code = (
        "import faulthandler, sys; "
        f"faulthandler.dump_traceback_later({CHILD_SECONDS - 5.0}, exit=True); "
        "from tests.test_stalled_remote import scan_behind_a_stuck_pull_then_close as run; "
        "run(int(sys.argv[1]), sys.argv[2])"
    )
    try:
        child = subprocess.run(
            [sys.executable, "-c", code, str(sync_server.port), replica_path],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=CHILD_SECONDS,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the child process did not end within {CHILD_SECONDS} s (output: {expired.stdout!r})")
    assert child.returncode == 0, f"the child process failed or hung; its stacks:\n{child.stderr[-4000:]}"
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["closed"] == "closed", report
    assert report["close_seconds"] < CLOSE_SECONDS + 1.0, report
    assert report["scan"] != "still running", report
    assert report["threads_ended"] is True, report
