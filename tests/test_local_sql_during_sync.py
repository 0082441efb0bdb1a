"""Local SQL never waits for the network (issue 13), against a real `tursodb --sync-server` through a loopback proxy.

A pull or push runs its network part on the connection's sync lane; SQL keeps running on the SQL worker meanwhile.
These tests hold the remote's answers with `DelayingProxy` (testkit/proxy.py) and check what users can rely on: local
statements finish long before a slow sync does, nothing committed is left out of a push, pulled changes are applied
(and checkpoints run) only between transactions, a cancelled push still finishes exactly once while a cancelled pull
ends its request at once, and engine operations that wait their turn spin no core. Every await is bounded, so a hang
fails the test instead of blocking the run.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import turso
import turso.lib_sync_aio
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import (
    AWAIT_SECONDS,
    LocalSpeed,
    StatementGate,
    bounded,
    insert_and_commit,
    local_keys,
    open_replica,
    record_loop_errors,
    remote_keys,
    wait_until,
)
from turso.lib_sync import PartialSyncOpts, PartialSyncPrefixBootstrap
from turso.lib_sync_aio import ConnectionSync, connect_sync

T = TypeVar("T")

# How long the proxy holds each answer of the remote while a test needs a sync in flight.
SLOW_SECONDS = 1.0
# A local statement during a slow sync must finish within this much more than the same statement on a plain local
# database run beside it (LocalSpeed: it takes about a millisecond; on a busy machine both take longer).
LOCAL_SECONDS = 0.5
# The timeout of an abandoned sync operation.
ABANDON_AFTER_SECONDS = 0.2
# How long an apply or checkpoint waits for an open transaction before it fails (the module's busy timeout).
BUSY_TIMEOUT_SECONDS = 5.0
# Waiting its turn must not spin a core: the process may use at most this share of the wall time meanwhile.
CPU_SHARE = 0.5

SCHEMA = "CREATE TABLE t(k TEXT PRIMARY KEY, v INTEGER)"
# No key at all: a row pushed twice would show up twice.
LOG_SCHEMA = "CREATE TABLE log(k TEXT, v INTEGER)"


async def start_and_wait_for_the_remote(proxy: DelayingProxy, operation: Awaitable[T]) -> "asyncio.Task[T]":
    """Start `operation` in a task and return once its first request reached the proxy."""
    requests_before = proxy.requests

    async def run() -> T:
        return await operation

    task = asyncio.ensure_future(run())
    assert await wait_until(lambda: proxy.requests > requests_before), "the sync never reached the remote"
    return task


async def abandon(proxy: DelayingProxy, operation: "Callable[[], Awaitable[object]]", how: str) -> float:
    """Time `operation()` out ("timeout") or cancel it once it reached the remote ("cancel"), while the proxy holds
    its answer; returns how long control took to come back after the timeout or the cancel."""
    if how == "timeout":
        started = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(operation(), ABANDON_AFTER_SECONDS)
        return time.monotonic() - started - ABANDON_AFTER_SECONDS
    running = await start_and_wait_for_the_remote(proxy, operation())
    cancelled_at = time.monotonic()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(running)
    return time.monotonic() - cancelled_at


def a_step_waits_between_transactions(conn: ConnectionSync) -> bool:
    """Whether a pull's apply or a checkpoint, handed to the connection's worker, waits there for the open transaction
    to end (the worker's state, which no public name shows)."""
    worker: Any = vars(conn)["_serial"]
    return vars(worker)["_waiting"] is not None


async def local_sql_timings(
    conn: ConnectionSync, local_speed: LocalSpeed, prefix: str, rounds: int = 5
) -> tuple[list[float], list[float]]:
    """Time `rounds` local reads and `rounds` local INSERT + commit, each beside the same on a plain local database;
    returns (reads, writes): how much longer each took than the one beside it, in seconds."""
    reads: list[float] = []
    writes: list[float] = []
    for n in range(rounds):
        _, took, beside = await local_speed.beside(conn.execute_fetchall("SELECT count(*) FROM t"), write=False)
        reads.append(round(took - beside, 3))
        _, took, beside = await local_speed.beside(insert_and_commit(conn, "t", [f"{prefix}-{n}"]), write=True)
        writes.append(round(took - beside, 3))
    return reads, writes


# --- local SQL does not wait for the network ---------------------------------------------------------------------


@pytest.mark.parametrize("operation", ["pull", "push"])
async def test_local_reads_and_commits_during_a_slow_sync_finish_long_before_it(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, operation: str, local_speed: LocalSpeed
) -> None:
    sync_server.execute(SCHEMA)
    async with await open_replica(replica_path, proxy.url) as conn:
        errors = record_loop_errors()
        if operation == "pull":
            sync_server.execute("INSERT INTO t VALUES ('remote', 0)")
        else:
            await insert_and_commit(conn, "t", ["before"])
        # The sync's request is held by the proxy until the local SQL is done: it is in flight throughout, however
        # long the local SQL takes on a busy machine (a fixed answer delay made that a race).
        proxy.stall()
        try:
            syncing = await start_and_wait_for_the_remote(proxy, conn.pull() if operation == "pull" else conn.push())
            assert await wait_until(lambda: proxy.held >= 1), "the sync's request never reached the stalled proxy"
            reads, writes = await local_sql_timings(conn, local_speed, "during")
            sync_done_during_sql = syncing.done()
        finally:
            proxy.release()
        await bounded(syncing)

        assert max(reads) < LOCAL_SECONDS, f"local reads during a {operation} took {reads} s more than beside it"
        assert max(writes) < LOCAL_SECONDS, f"local writes during a {operation} took {writes} s more than beside it"
        assert not sync_done_during_sql, "the sync finished before the local SQL: the proxy did not hold it"
        await bounded(conn.push())
        expected = ["remote"] if operation == "pull" else ["before"]
        expected += [f"during-{n}" for n in range(5)]
        assert remote_keys(sync_server) == sorted(expected)
        assert errors == []


# --- semantics users can rely on ---------------------------------------------------------------------------------


async def test_everything_committed_before_push_is_called_is_on_the_server_after_it(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with await open_replica(replica_path, proxy.url) as conn:
        proxy.answer_delay = 0.1
        committed: list[str] = []
        stop = asyncio.Event()

        async def keep_committing() -> None:
            n = 0
            while not stop.is_set():
                await conn.execute("INSERT INTO log VALUES (?, ?)", (f"row-{n:04}", n))
                await conn.commit()
                committed.append(f"row-{n:04}")  # committed: the commit's await returned
                n += 1
                await asyncio.sleep(0.005)

        writer = asyncio.create_task(keep_committing())
        for _ in range(3):
            await asyncio.sleep(0.05)
            before_push = list(committed)
            await bounded(conn.push())
            on_server = set(remote_keys(sync_server, "log"))
            missing = [key for key in before_push if key not in on_server]
            assert missing == [], f"committed before push() was called, missing after it: {missing}"
        stop.set()
        await bounded(writer)
        await bounded(conn.push())
        assert remote_keys(sync_server, "log") == sorted(committed)  # each row once


async def test_sql_awaited_after_pull_returns_sees_the_pulled_rows(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(SCHEMA)
    async with await open_replica(replica_path, proxy.url) as conn:
        proxy.answer_delay = 0.2
        for round_ in range(3):
            sync_server.execute("INSERT INTO t VALUES (?, ?)", (f"remote-{round_}", round_))
            # Other SQL queued around the pull must not let a later read overtake the apply.
            around = [asyncio.create_task(conn.execute_fetchall("SELECT count(*) FROM t")) for _ in range(3)]
            assert await bounded(conn.pull()) is True
            assert await local_keys(conn) == [f"remote-{n}" for n in range(round_ + 1)]
            await bounded(asyncio.gather(*around))


async def test_pull_returns_true_exactly_when_it_applied_changes(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(SCHEMA)
    async with await open_replica(replica_path, proxy.url) as conn:
        assert await bounded(conn.pull()) is False  # nothing new since the bootstrap
        sync_server.execute("INSERT INTO t VALUES ('a', 1)")
        assert await bounded(conn.pull()) is True
        assert await bounded(conn.execute_fetchall("SELECT k, v FROM t")) == [("a", 1)]
        assert await bounded(conn.pull()) is False
        sync_server.execute("UPDATE t SET v = 2 WHERE k = 'a'")
        assert await bounded(conn.pull()) is True
        assert await bounded(conn.execute_fetchall("SELECT k, v FROM t")) == [("a", 2)]
        assert await bounded(conn.pull()) is False
        assert await bounded(conn.pull()) is False


# --- pulled changes and checkpoints land only between transactions ----------------------------------------------


async def test_pull_waits_for_an_open_transaction_to_commit_and_the_users_statements_never_fail(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(SCHEMA)
    async with await open_replica(replica_path, proxy.url) as conn:
        errors = record_loop_errors()
        sync_server.execute("INSERT INTO t VALUES ('remote', 0)")
        await bounded(conn.execute("INSERT INTO t VALUES ('local-0', 0)"))  # opens a transaction (DEFERRED)
        pulling = asyncio.create_task(conn.pull())

        # The transaction's statements keep working while the pull's changes wait for it; none sees them yet.
        for n in range(1, 6):
            await asyncio.sleep(0.1)
            await bounded(conn.execute("INSERT INTO t VALUES (?, ?)", (f"local-{n}", n)))
            assert "remote" not in await local_keys(conn)
        assert not pulling.done(), "the pull applied its changes inside an open transaction"

        await bounded(conn.commit())
        committed_at = time.monotonic()
        assert await bounded(pulling) is True
        assert time.monotonic() - committed_at < 2.0
        assert await local_keys(conn) == sorted(["remote"] + [f"local-{n}" for n in range(6)])
        await bounded(conn.push())
        assert remote_keys(sync_server) == sorted(["remote"] + [f"local-{n}" for n in range(6)])
        assert errors == []


async def test_checkpoint_queued_behind_a_push_waits_for_an_open_transaction_instead_of_failing_busy(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    sync_server.execute(SCHEMA)
    async with await open_replica(replica_path, proxy.url) as conn:
        errors = record_loop_errors()
        await insert_and_commit(conn, "t", [f"pushed-{n}" for n in range(20)])
        proxy.answer_delay = 0.5
        pushing = await start_and_wait_for_the_remote(proxy, conn.push())
        checkpointing = asyncio.create_task(conn.checkpoint())
        await asyncio.sleep(0)
        # Another task's transaction opens while the push is on the wire and stays open after the push is done.
        await bounded(conn.execute("INSERT INTO t VALUES ('in-transaction', 0)"))
        await bounded(pushing)
        await asyncio.sleep(0.3)
        assert not checkpointing.done(), "the checkpoint ran inside an open transaction"
        await bounded(conn.execute("INSERT INTO t VALUES ('in-transaction-2', 0)"))  # never "busy" or "locked"
        await bounded(conn.commit())
        await bounded(checkpointing)

        stats = await bounded(conn.stats())
        assert stats.main_wal_size == 0
        assert len(await local_keys(conn)) == 22
        assert errors == []


async def test_pull_fails_when_a_transaction_stays_open_past_the_busy_timeout_and_the_next_pull_applies_it(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute(SCHEMA)
    async with await open_replica(replica_path, sync_server.url) as conn:
        errors = record_loop_errors()
        sync_server.execute("INSERT INTO t VALUES ('remote', 0)")
        await bounded(conn.execute("INSERT INTO t VALUES ('local', 0)"))  # opens a transaction, left open
        started = time.monotonic()
        pulling = asyncio.create_task(conn.pull())
        # The user's statements keep working meanwhile.
        while not pulling.done() and time.monotonic() - started < AWAIT_SECONDS:
            await bounded(conn.execute_fetchall("SELECT count(*) FROM t"))
            await asyncio.sleep(0.2)
        with pytest.raises(turso.OperationalError, match="(?i)transaction"):
            await bounded(pulling)
        waited = time.monotonic() - started
        assert BUSY_TIMEOUT_SECONDS * 0.9 <= waited < BUSY_TIMEOUT_SECONDS + 3.0, f"failed after {waited:.2f} s"

        await bounded(conn.commit())
        assert await bounded(conn.pull()) is True  # nothing was lost
        assert await local_keys(conn) == ["local", "remote"]
        await bounded(conn.push())
        assert remote_keys(sync_server) == ["local", "remote"]
        assert errors == []


async def test_a_pull_waiting_for_an_open_transaction_gives_up_at_the_busy_timeout_while_statements_keep_coming(
    sync_server: SyncServer, replica_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The busy timeout, shortened: it passes while the first of two queries, each held by the test, runs.
    busy_timeout = 0.1
    monkeypatch.setattr(turso.lib_sync_aio, "TRANSACTION_WAIT_SECONDS", busy_timeout)
    sync_server.execute(SCHEMA)
    async with await open_replica(replica_path, sync_server.url) as conn:
        sync_server.execute("INSERT INTO t VALUES ('remote', 0)")
        await bounded(conn.execute("INSERT INTO t VALUES ('local', 0)"))  # opens a transaction, left open
        pulling = asyncio.create_task(conn.pull())
        assert await wait_until(lambda: a_step_waits_between_transactions(conn)), "the pull never reached its apply"
        # The worker is never idle from now until the last query ends: the apply gives up between two of them.
        with StatementGate() as first, StatementGate() as second:
            conn.row_factory = first.row_factory
            queries = [asyncio.create_task(conn.execute_fetchall("SELECT 1"))]
            await asyncio.sleep(0)  # the first query is queued
            conn.row_factory = second.row_factory
            queries.append(asyncio.create_task(conn.execute_fetchall("SELECT 2")))
            await asyncio.sleep(0)  # the second query is queued
            conn.row_factory = None
            assert await wait_until(first.entered.is_set), "the first query never ran"
            await asyncio.sleep(2 * busy_timeout)  # the busy timeout passes while the first query runs
            first.open()
            with pytest.raises(turso.OperationalError, match="transaction stayed open"):
                await bounded(pulling)
            assert not queries[-1].done(), "the pull gave up only once the statements let the worker idle"
        assert await bounded(asyncio.gather(*queries)) == [[(1,)], [(2,)]]
        await bounded(conn.commit())
        assert await bounded(conn.pull()) is True  # nothing was lost
        assert await local_keys(conn) == ["local", "remote"]


async def test_pull_awaited_inside_its_own_open_transaction_fails_instead_of_hanging(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute(SCHEMA)
    async with await open_replica(replica_path, sync_server.url) as conn:
        errors = record_loop_errors()
        sync_server.execute("INSERT INTO t VALUES ('remote', 0)")
        await bounded(conn.execute("INSERT INTO t VALUES ('local', 0)"))  # this code's own transaction
        with pytest.raises(turso.OperationalError, match="(?i)transaction"):
            await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
        await bounded(conn.commit())
        assert await bounded(conn.pull()) is True
        assert await local_keys(conn) == ["local", "remote"]
        assert errors == []


# --- a cancelled sync returns at once: a push still finishes once on the sync lane, a pull ends its request -------


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_cancelled_push_returns_at_once_and_its_rows_reach_the_server_exactly_once(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, how: str, local_speed: LocalSpeed
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with await open_replica(replica_path, proxy.url) as conn:
        errors = record_loop_errors()
        await insert_and_commit(conn, "log", ["a", "b", "c"])
        # The remote applies the push at once; only its answer is late: a push done twice would double the rows.
        proxy.answer_delay = SLOW_SECONDS
        returned_after = await abandon(proxy, conn.push, how)
        assert returned_after < LOCAL_SECONDS, f"control came back {returned_after:.2f} s after the cancel"

        # Local SQL at once, while the push still finishes on the sync lane.
        _, took, beside = await local_speed.beside(conn.execute_fetchall("SELECT count(*) FROM log"), write=False)
        assert took < LOCAL_SECONDS + beside, f"a local read took {took:.2f} s ({beside:.2f} s beside it)"
        await insert_and_commit(conn, "log", ["d"])
        proxy.answer_delay = 0
        await bounded(conn.push())  # the next call works
        assert remote_keys(sync_server, "log") == ["a", "b", "c", "d"]
        assert (await bounded(conn.stats())).cdc_operations == 0
        await bounded(conn.push())
        assert remote_keys(sync_server, "log") == ["a", "b", "c", "d"]
        assert errors == []


@pytest.mark.parametrize("how", ["timeout", "cancel"])
async def test_cancelled_pull_returns_at_once_ends_its_request_and_the_next_pull_applies_the_changes_once(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, how: str, local_speed: LocalSpeed
) -> None:
    sync_server.execute(LOG_SCHEMA)
    async with await open_replica(replica_path, proxy.url) as conn:
        errors = record_loop_errors()
        sync_server.execute("INSERT INTO log VALUES ('remote', 1)")
        proxy.answer_delay = SLOW_SECONDS
        returned_after = await abandon(proxy, conn.pull, how)
        assert returned_after < LOCAL_SECONDS, f"control came back {returned_after:.2f} s after the cancel"
        _, took, beside = await local_speed.beside(conn.execute_fetchall("SELECT count(*) FROM log"), write=False)
        assert took < LOCAL_SECONDS + beside, f"a local read took {took:.2f} s ({beside:.2f} s beside it)"
        # A pull only reads: its request was cut, so its turn is free at once (stats() waits its turn).
        _, took, beside = await local_speed.beside(conn.stats(), write=False)
        assert took < LOCAL_SECONDS + beside, f"stats() took {took:.2f} s ({beside:.2f} s beside it)"
        assert await local_keys(conn, "log") == []

        proxy.answer_delay = 0
        # Nothing was applied: the next pull fetches the remote row again, and applies it once.
        assert await bounded(conn.pull()) is True
        assert await local_keys(conn, "log") == ["remote"]
        assert await bounded(conn.pull()) is False
        assert await local_keys(conn, "log") == ["remote"]
        assert errors == []


# --- engine operations wait their turn without spinning and without holding up SQL -------------------------------


async def test_stats_and_checkpoint_during_a_slow_pull_wait_their_turn_without_spinning_or_holding_up_sql(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, local_speed: LocalSpeed
) -> None:
    sync_server.execute(SCHEMA)
    async with await open_replica(replica_path, proxy.url) as conn:
        errors = record_loop_errors()
        sync_server.execute("INSERT INTO t VALUES ('remote', 0)")
        proxy.answer_delay = SLOW_SECONDS
        wall_started, cpu_started = time.monotonic(), time.process_time()
        pulling = await start_and_wait_for_the_remote(proxy, conn.pull())
        stats = asyncio.create_task(conn.stats())
        checkpoint = asyncio.create_task(conn.checkpoint())
        await asyncio.sleep(0.1)
        assert not stats.done() and not checkpoint.done(), "stats() or checkpoint() ran while the pull was on the wire"
        reads, writes = await local_sql_timings(conn, local_speed, "local")
        assert max(reads) < LOCAL_SECONDS, f"local reads took {reads} s more than beside it while stats() waited"
        assert max(writes) < LOCAL_SECONDS, f"local writes took {writes} s more than beside it while stats() waited"
        await asyncio.sleep(0.3)  # more waiting, to make a spinning thread show in the CPU time

        await bounded(asyncio.gather(pulling, stats, checkpoint))
        wall, cpu = time.monotonic() - wall_started, time.process_time() - cpu_started
        assert wall >= SLOW_SECONDS
        assert cpu < CPU_SHARE * wall, f"the process used {cpu:.2f} s of CPU in {wall:.2f} s: something spins"
        assert pulling.result() is True
        assert stats.result().last_pull_unix_time is not None
        assert "remote" in await local_keys(conn)
        assert errors == []


# --- partial sync: statements that fetch pages run beside a sync ------------------------------------------------

# A remote of about 600 KB, and a replica bootstrapped with its first 64 KiB: a full scan fetches the rest.
PARTIAL_ROWS = 600
PARTIAL_PREFIX_BYTES = 64 * 1024


@pytest.mark.parametrize("operation", ["pull", "push"])
async def test_partial_sync_queries_fetching_pages_during_a_sync_neither_deadlock_nor_spin(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, operation: str
) -> None:
    sync_server.execute("CREATE TABLE big(k TEXT PRIMARY KEY, b BLOB)")
    sync_server.execute(
        f"INSERT INTO big SELECT 'big-' || value, randomblob(1000) FROM generate_series(1, {PARTIAL_ROWS})"
    )
    sync_server.execute(SCHEMA)
    errors = record_loop_errors()
    options = PartialSyncOpts(PartialSyncPrefixBootstrap(length=PARTIAL_PREFIX_BYTES))
    conn = await bounded(connect_sync(replica_path, proxy.url, partial_sync_experimental=options))
    try:
        if operation == "pull":
            sync_server.execute("INSERT INTO t VALUES ('remote', 0)")
        else:
            await insert_and_commit(conn, "t", ["local"])
        proxy.answer_delay = 0.3
        wall_started, cpu_started = time.monotonic(), time.process_time()
        syncing = await start_and_wait_for_the_remote(proxy, conn.pull() if operation == "pull" else conn.push())
        scanned = await bounded(conn.execute_fetchall("SELECT count(*), sum(length(b)) FROM big"))
        await bounded(syncing)
        wall, cpu = time.monotonic() - wall_started, time.process_time() - cpu_started

        assert scanned == [(PARTIAL_ROWS, PARTIAL_ROWS * 1000)]
        assert cpu < CPU_SHARE * wall, f"the process used {cpu:.2f} s of CPU in {wall:.2f} s: something spins"
        proxy.answer_delay = 0
        await bounded(conn.push())
        assert remote_keys(sync_server) == (["remote"] if operation == "pull" else ["local"])
        assert await local_keys(conn) == remote_keys(sync_server)
        assert errors == []
    finally:
        await bounded(conn.close())
