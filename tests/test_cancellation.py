"""A cancelled or timed-out statement stops (issue 26): a running one is interrupted, a queued one does not run, and the
connection is free for the next statement at once; `interrupt()`, `query_timeout` and a cancelled `close()`. Against a
real `tursodb --sync-server`.

The long statement is RUNS_UNTIL_STOPPED (tests/helpers.py), which would run for about a minute: every test stops it
within a second and never relies on how long it would take. Where a test needs the worker held while it queues
statements behind, it holds it with a row factory that waits for an event the test sets (`hold_worker`).
"""

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import turso
from testkit.sync_server import SyncServer
from tests.helpers import (
    AWAIT_SECONDS,
    RUNS_UNTIL_STOPPED,
    bounded,
    hold_worker,
    open_replica,
    record_loop_errors,
)
from turso.lib_sync_aio import ConnectionSync, connect_sync

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # Python 3.10: async-timeout, which aiohttp installs there, is the same context manager
    import async_timeout  # type: ignore[import-not-found, unused-ignore]  # pyright: ignore[reportMissingImports]

    timeout = async_timeout.timeout  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

# How long after it is stopped the next statement must have run (it takes about a millisecond).
NEXT_WITHIN_SECONDS = 1.0
# When the tests give up on the long statement.
STOP_AFTER_SECONDS = 0.3
# A write that runs until it is stopped: one row, the count, if it ever finished.
LONG_INSERT = f"INSERT INTO t(x) {RUNS_UNTIL_STOPPED}"
# The same with the count's limit as a parameter (for executemany).
LONG_INSERT_WITH_LIMIT = (
    "INSERT INTO t(x) SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT ?) "
    "SELECT x FROM c)"
)
# Rows that never end, for a cursor read in part.
ENDLESS_ROWS = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c"


@pytest.fixture
async def conn(sync_server: SyncServer, replica_path: str) -> AsyncIterator[ConnectionSync]:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    connection = await open_replica(replica_path, sync_server.url)
    try:
        yield connection
    finally:
        await bounded(connection.close())


async def values(conn: ConnectionSync) -> list[object]:
    return [row[0] for row in await bounded(conn.execute_fetchall("SELECT x FROM t ORDER BY x"))]


async def execute_then_fetchall(conn: ConnectionSync, sql: str) -> list[Any]:
    # The inherited cursor API: execute() prepares a query, its fetch runs it.
    cursor = await conn.execute(sql)
    return await cursor.fetchall()


# Every kind of SQL call, each running a statement that runs until it is stopped, and what it leaves in t when it is
# stopped: nothing, except the statement of a script that came before the stopped one (a script runs statement by
# statement, each committed on its own: wrap it in a transaction() block for all or nothing).
LONG_CALLS: dict[str, tuple[Callable[[ConnectionSync], Awaitable[object]], list[object]]] = {
    "execute_fetchall": (lambda conn: conn.execute_fetchall(RUNS_UNTIL_STOPPED), []),
    "execute then fetchall": (lambda conn: execute_then_fetchall(conn, RUNS_UNTIL_STOPPED), []),
    "execute of a write": (lambda conn: conn.execute(LONG_INSERT), []),
    "execute_fetchall of a write": (lambda conn: conn.execute_fetchall(LONG_INSERT + " RETURNING x"), []),
    "executemany": (lambda conn: conn.executemany(LONG_INSERT_WITH_LIMIT, [(100_000_000,)]), []),
    "executescript": (
        lambda conn: conn.executescript(f"INSERT INTO t VALUES (1); {LONG_INSERT}; INSERT INTO t VALUES (2);"),
        [1],
    ),
}


@pytest.mark.parametrize("call", list(LONG_CALLS))
async def test_a_statement_cancelled_by_wait_for_stops_and_the_next_statement_runs_within_a_second(
    conn: ConnectionSync, call: str
) -> None:
    make, left = LONG_CALLS[call]
    errors = record_loop_errors()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(make(conn), STOP_AFTER_SECONDS)
    stopped_at = time.monotonic()
    assert await bounded(conn.execute_fetchall("SELECT 42")) == [(42,)]
    assert time.monotonic() - stopped_at < NEXT_WITHIN_SECONDS
    # A write stopped inside a transaction (the implicit one a write opens) leaves it unable to commit: roll it back.
    await bounded(conn.rollback())
    assert await values(conn) == left
    assert errors == []


async def test_a_queued_statement_whose_await_was_cancelled_does_not_run(conn: ConnectionSync) -> None:
    errors = record_loop_errors()
    held = await hold_worker(conn)
    cancelled = [
        asyncio.create_task(conn.execute("INSERT INTO t VALUES (1)")),
        asyncio.create_task(conn.execute_fetchall("INSERT INTO t VALUES (2) RETURNING x")),
        asyncio.create_task(conn.executescript("INSERT INTO t VALUES (3)")),
    ]
    kept = asyncio.create_task(conn.executescript("INSERT INTO t VALUES (4)"))
    await asyncio.sleep(0.05)  # every call has queued its job behind the held fetch
    assert not any(task.done() for task in cancelled)
    for task in cancelled:
        task.cancel()
    assert await held.end() == [(1,)]
    await bounded(kept)
    for task in cancelled:
        assert task.cancelled()
    assert await values(conn) == [4]
    assert errors == []


async def test_a_transaction_block_that_times_out_rolls_back_at_once_and_the_next_block_begins_within_a_second(
    conn: ConnectionSync,
) -> None:
    in_block = asyncio.Event()
    next_began: list[float] = []

    async def slow_block() -> None:
        async with timeout(STOP_AFTER_SECONDS):
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES (1)")
                in_block.set()
                await conn.execute_fetchall(RUNS_UNTIL_STOPPED)

    async def next_block() -> None:
        async with conn.transaction():
            next_began.append(time.monotonic())
            await conn.execute("INSERT INTO t VALUES (2)")

    deadline = time.monotonic() + STOP_AFTER_SECONDS
    slow = asyncio.create_task(slow_block())
    await bounded(in_block.wait())
    # From this task's own context (not inside the slow block): it waits for the slow block's turn to end.
    waiting = asyncio.create_task(next_block())
    with pytest.raises(asyncio.TimeoutError):
        await bounded(slow)
    assert time.monotonic() - deadline < NEXT_WITHIN_SECONDS  # the block's rollback did not wait for the statement
    await bounded(waiting)
    assert next_began[0] - deadline < NEXT_WITHIN_SECONDS
    assert await values(conn) == [2]


async def test_interrupt_from_another_task_stops_the_running_statement_with_operational_error(
    conn: ConnectionSync,
) -> None:
    running = asyncio.create_task(conn.execute_fetchall(RUNS_UNTIL_STOPPED))
    await asyncio.sleep(0.05)
    # interrupt() stops only a statement that runs: call it until this one has started and stopped.
    deadline = time.monotonic() + AWAIT_SECONDS
    while not running.done() and time.monotonic() < deadline:
        await conn.interrupt()
        await asyncio.wait([running], timeout=0.05)
    with pytest.raises(turso.OperationalError, match="interrupted"):
        await running
    assert await bounded(conn.execute_fetchall("SELECT 42")) == [(42,)]


async def test_interrupt_with_nothing_running_does_nothing_not_even_to_a_cursor_read_in_part(
    conn: ConnectionSync,
) -> None:
    cursor = await bounded(conn.execute(ENDLESS_ROWS))
    assert await bounded(cursor.fetchone()) == (1,)
    await bounded(conn.interrupt())
    await bounded(conn.interrupt())
    # The driver's interrupt would have ended the cursor's statement: it was not called.
    assert await bounded(cursor.fetchone()) == (2,)
    assert await bounded(conn.execute_fetchall("SELECT 42")) == [(42,)]
    assert await bounded(cursor.fetchmany(2)) == [(3,), (4,)]
    # (Not closed: closing a cursor read in part runs its statement to its end, which this one has not. Dropping it
    # ends it at once.)


async def test_after_an_interrupt_a_cursor_read_in_part_is_ended_and_the_next_statements_run(
    conn: ConnectionSync,
) -> None:
    part_read = await bounded(conn.execute(ENDLESS_ROWS))
    assert await bounded(part_read.fetchmany(3)) == [(1,), (2,), (3,)]
    read_to_its_end = await bounded(conn.execute("SELECT 7"))
    assert await bounded(read_to_its_end.fetchone()) == (7,)
    assert await bounded(read_to_its_end.fetchone()) is None
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(conn.execute_fetchall(RUNS_UNTIL_STOPPED), STOP_AFTER_SECONDS)
    # The driver stops every statement in progress, and would go on stopping new ones while the part-read cursor's
    # statement is left in progress: it was ended, and the next statements run.
    for _ in range(3):
        assert await bounded(conn.execute_fetchall("SELECT 42")) == [(42,)]
    with pytest.raises(turso.OperationalError, match="interrupted: this cursor's statement was ended"):
        await bounded(part_read.fetchone())
    # A cursor whose statement was not in progress is untouched.
    await bounded(read_to_its_end.execute("SELECT 8"))
    assert await bounded(read_to_its_end.fetchall()) == [(8,)]


async def test_a_cancelled_statement_never_interrupts_the_statement_after_it(conn: ConnectionSync) -> None:
    # Cancelled at random moments (queued, starting, running, just finished): the next statement always runs.
    rng = random.Random(26)
    cancelled = 0
    for number in range(150):
        short = asyncio.create_task(conn.execute_fetchall("SELECT count(*) FROM t WHERE x = ?", (number,)))
        await asyncio.sleep(rng.choice((0.0, 0.0, rng.uniform(0.0, 0.002))))
        short.cancel()
        await asyncio.wait([short])
        cancelled += short.cancelled()
        assert await bounded(conn.execute_fetchall("SELECT ?", (number,))) == [(number,)]
    assert cancelled > 0


async def test_query_timeout_stops_a_statement_and_the_connection_stays_usable(conn: ConnectionSync) -> None:
    assert conn.query_timeout is None
    conn.query_timeout = STOP_AFTER_SECONDS
    assert conn.query_timeout == STOP_AFTER_SECONDS
    started = time.monotonic()
    with pytest.raises(turso.OperationalError, match="interrupted"):
        await bounded(conn.execute_fetchall(RUNS_UNTIL_STOPPED))
    assert time.monotonic() - started < STOP_AFTER_SECONDS + NEXT_WITHIN_SECONDS
    with pytest.raises(turso.OperationalError, match="interrupted"):
        await bounded(conn.execute(LONG_INSERT))
    await bounded(conn.rollback())
    assert await bounded(conn.execute_fetchall("SELECT 42")) == [(42,)]
    assert await values(conn) == []


async def test_query_timeout_counts_from_a_statements_first_step_to_its_last_row_and_none_clears_it(
    conn: ConnectionSync,
) -> None:
    a_thousand_rows = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 1000) SELECT x FROM c"
    conn.query_timeout = STOP_AFTER_SECONDS
    # The application holds the fetch after the first row (in the row factory) past the timeout: the statement stops
    # within the rows after it (the driver looks at the time every few steps).
    held = await hold_worker(conn, a_thousand_rows)
    await asyncio.sleep(STOP_AFTER_SECONDS + 0.2)
    with pytest.raises(turso.OperationalError, match="interrupted"):
        await held.end()

    conn.query_timeout = None
    assert conn.query_timeout is None
    held = await hold_worker(conn, a_thousand_rows)
    await asyncio.sleep(STOP_AFTER_SECONDS + 0.2)
    assert len(await held.end()) == 1000


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (1e12, ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
async def test_a_bad_query_timeout_is_refused_and_leaves_the_setting_as_it_was(
    conn: ConnectionSync, value: object, error: type[Exception]
) -> None:
    conn.query_timeout = 5
    with pytest.raises(error, match="query_timeout"):
        conn.query_timeout = value  # type: ignore[assignment]  # pyright: ignore[reportAttributeAccessIssue]
    assert conn.query_timeout == 5


async def test_query_timeout_set_before_the_open_applies_and_after_close_raises(
    sync_server: SyncServer, replica_path: str
) -> None:
    unopened = connect_sync(replica_path, sync_server.url)
    unopened.query_timeout = STOP_AFTER_SECONDS
    async with unopened as conn:
        assert conn.query_timeout == STOP_AFTER_SECONDS
        with pytest.raises(turso.OperationalError, match="interrupted"):
            await bounded(conn.execute_fetchall(RUNS_UNTIL_STOPPED))
    with pytest.raises(turso.ProgrammingError, match="closed"):
        conn.query_timeout = 1


async def test_a_cancelled_close_interrupts_the_statement_fails_the_queued_ones_and_the_file_reopens_at_once(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    conn = await open_replica(replica_path, sync_server.url)
    running = asyncio.create_task(conn.execute_fetchall(RUNS_UNTIL_STOPPED))
    await asyncio.sleep(0.05)
    queued = asyncio.create_task(conn.executescript("INSERT INTO t VALUES (1)"))
    await asyncio.sleep(0.05)
    assert not queued.done()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(conn.close(), STOP_AFTER_SECONDS)
    cancelled_at = time.monotonic()
    with pytest.raises(turso.OperationalError, match="interrupted"):
        await bounded(running)
    with pytest.raises(turso.ProgrammingError, match="closed before its turn"):
        await bounded(queued)
    reopened = await open_replica(replica_path, sync_server.url)
    try:
        assert time.monotonic() - cancelled_at < 2 * NEXT_WITHIN_SECONDS
        assert await values(reopened) == []
    finally:
        await bounded(reopened.close())
    await bounded(conn.close())  # safe to call again


async def test_a_close_not_cancelled_still_lets_the_sql_called_before_it_finish(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE t(x INTEGER)")
    conn = await open_replica(replica_path, sync_server.url)
    held = await hold_worker(conn)
    queued = asyncio.create_task(conn.executescript("INSERT INTO t VALUES (1)"))
    await asyncio.sleep(0.05)
    closing = asyncio.create_task(conn.close())
    await asyncio.sleep(0.05)
    assert not closing.done()
    assert await held.end() == [(1,)]
    await bounded(queued)
    await bounded(closing)
    reopened = await open_replica(replica_path, sync_server.url)
    try:
        assert await values(reopened) == [1]
    finally:
        await bounded(reopened.close())
