"""Threads follow the work (issue 24): the process's worker pool runs every connection's jobs on a bounded handful of
threads, a long statement holds one thread and never the pool, an idle replica holds none, and once the last
connection has closed no thread of ours is left. Against a real `tursodb --sync-server`; statements are held with a
StatementGate (tests/helpers.py), never with a count that a busy machine stretches.
"""

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from testkit.sync_server import SyncServer
from tests.helpers import (
    AWAIT_SECONDS,
    POOL_THREAD_PREFIX,
    StatementGate,
    bounded,
    turso_threads,
    wait_until,
)
from turso.lib_sync_aio import ConnectionSync, connect_sync, set_max_worker_threads, worker_pool_stats

# Replicas that a tenant-like test opens at once in this process.
MANY_REPLICAS = 200
# The background sync interval of those replicas: short, so that every one syncs during the test.
MANY_INTERVAL = 1.0
# Threads of this process besides the pool's that the many-replicas test allows for: the sync servers' and the
# testkit's come and go around it (its baseline is taken with them running).
OTHER_THREADS_ALLOWED = 4
# A cap small enough that tests can hold every thread of the pool with gates.
SMALL_CAP = 3
# How long a connection must wait for a thread, while every thread is held, before the test counts it as waiting.
WAITING_SECONDS = 0.3
# A thread idle this long has exited (the pool's idle timeout is 2 s; a busy machine may delay the exit).
IDLE_EXIT_SECONDS = 6.0

TABLE = "CREATE TABLE notes(k TEXT, v INTEGER)"


def os_threads() -> int:
    """The threads of this process as the kernel counts them: native ones too."""
    return len(os.listdir("/proc/self/task"))


def pool_threads() -> set[str]:
    return {thread.name for thread in turso_threads() if thread.name.startswith(POOL_THREAD_PREFIX)}


@pytest.fixture
def small_pool() -> Iterator[int]:
    """The pool capped at SMALL_CAP threads for the test, then its cap as before."""
    before = worker_pool_stats().max_threads
    set_max_worker_threads(SMALL_CAP)
    try:
        yield SMALL_CAP
    finally:
        set_max_worker_threads(before)


async def open_replicas(server: SyncServer, folder: Path, count: int) -> list[ConnectionSync]:
    """`count` fresh replicas of the server's database, opened at once."""
    return list(
        await bounded(asyncio.gather(*(connect_sync(str(folder / f"r{n}.db"), server.url) for n in range(count))), 60)
    )


async def close_all(replicas: list[ConnectionSync]) -> None:
    await bounded(asyncio.gather(*(replica.close() for replica in replicas)), 60)


async def every_replica_has_the_row(replicas: list[ConnectionSync]) -> bool:
    """Wait until each replica holds the one row (its background sync pulled it); True then."""
    while True:
        counts = await asyncio.gather(*(replica.execute_fetchall("SELECT count(*) FROM notes") for replica in replicas))
        if all(count == [(1,)] for count in counts):
            return True
        await asyncio.sleep(0.25)


async def test_200_replicas_with_background_sync_run_on_a_bounded_handful_of_threads_and_leave_none(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute(TABLE)
    baseline_threads = turso_threads()
    baseline_os_threads = os_threads()
    ceiling = baseline_os_threads + worker_pool_stats().max_threads + OTHER_THREADS_ALLOWED
    most_seen = baseline_os_threads

    async def watch_threads() -> None:
        nonlocal most_seen
        while True:
            most_seen = max(most_seen, os_threads())
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch_threads())
    replicas = await open_replicas(sync_server, tmp_path, MANY_REPLICAS)
    try:
        backgrounds = [replica.sync_in_background(MANY_INTERVAL) for replica in replicas]
        await replicas[7].execute("INSERT INTO notes VALUES ('from-7', 7)")
        await replicas[7].commit()
        # Every replica syncs: the row written on one of them reaches every other one.
        assert await bounded(every_replica_has_the_row(replicas), 60)
        assert all(background.status.healthy for background in backgrounds)
    finally:
        await close_all(replicas)
        watcher.cancel()
    assert most_seen <= ceiling, f"{most_seen} threads at most, for {MANY_REPLICAS} replicas (ceiling {ceiling})"
    assert turso_threads() == baseline_threads, sorted(thread.name for thread in turso_threads() - baseline_threads)
    # A thread that has ended for Python (the pool waited for it) leaves /proc moments later, once its last steps in
    # the C library have run, which a busy machine can delay; a thread left behind never leaves.
    assert await wait_until(lambda: os_threads() <= baseline_os_threads), f"{os_threads()} > {baseline_os_threads}"
    assert sync_server.execute("SELECT k FROM notes") == [("from-7",)]


async def test_a_long_statement_holds_one_thread_while_the_other_replicas_keep_running(
    sync_server: SyncServer, tmp_path: Path, small_pool: int
) -> None:
    sync_server.execute(TABLE)
    replicas = await open_replicas(sync_server, tmp_path, 12)
    held_replicas, others = replicas[: small_pool - 1], replicas[small_pool - 1 :]
    gates = [StatementGate() for _ in held_replicas]
    try:
        held: list[asyncio.Future[list[Any]]] = []
        for gate, replica in zip(gates, held_replicas):
            replica.row_factory = gate.row_factory
            held.append(asyncio.ensure_future(replica.execute_fetchall("SELECT 1")))
        assert await wait_until(lambda: all(gate.entered.is_set() for gate in gates))
        # Every thread of the pool but one is held; the other replicas still write and read, on that one.
        for number, replica in enumerate(others):
            async with replica.transaction():
                await bounded(replica.execute("INSERT INTO notes VALUES (?, ?)", (f"other-{number}", number)))
            assert await bounded(replica.execute_fetchall("SELECT count(*) FROM notes")) == [(1,)]
        assert not any(statement.done() for statement in held)
        assert len(pool_threads()) <= small_pool
        for gate in gates:
            gate.open()
        assert await bounded(asyncio.gather(*held)) == [[(1,)]] * len(held)
    finally:
        for gate in gates:
            gate.open()
        await close_all(replicas)
    assert not pool_threads()


async def test_a_connection_waits_for_a_thread_while_every_thread_is_held_and_runs_once_one_is_free(
    sync_server: SyncServer, tmp_path: Path, small_pool: int
) -> None:
    replicas = await open_replicas(sync_server, tmp_path, small_pool + 1)
    gates = [StatementGate() for _ in range(small_pool)]
    try:
        held: list[asyncio.Future[list[Any]]] = []
        for gate, replica in zip(gates, replicas):
            replica.row_factory = gate.row_factory
            held.append(asyncio.ensure_future(replica.execute_fetchall("SELECT 1")))
        assert await wait_until(lambda: all(gate.entered.is_set() for gate in gates))
        waiting = asyncio.ensure_future(replicas[-1].execute_fetchall("SELECT 2"))
        done, _ = await asyncio.wait([waiting], timeout=WAITING_SECONDS)
        assert not done, "a statement ran although every thread of the pool was held"
        assert worker_pool_stats().waiting_connections == 1
        gates[0].open()
        assert await bounded(waiting) == [(2,)]
        assert await bounded(held[0]) == [(1,)]
    finally:
        for gate in gates:
            gate.open()
        await close_all(replicas)


async def test_an_idle_replica_holds_no_thread_and_its_next_call_gets_one(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with connect_sync(replica_path, sync_server.url) as conn:
        assert await bounded(conn.execute_fetchall("SELECT 1")) == [(1,)]
        assert pool_threads(), "no thread of the pool ran the statement"
        assert await wait_until(lambda: not pool_threads(), IDLE_EXIT_SECONDS), "an idle replica kept a thread"
        assert await bounded(conn.execute_fetchall("SELECT 2")) == [(2,)]


@pytest.mark.parametrize(("count", "error"), [(0, ValueError), (-1, ValueError), ("4", TypeError), (True, TypeError)])
def test_a_worker_cap_that_is_not_a_whole_number_of_at_least_one_is_refused_and_changes_nothing(
    count: object, error: type[Exception]
) -> None:
    before = worker_pool_stats().max_threads
    with pytest.raises(error, match="max_threads"):
        set_max_worker_threads(cast(int, count))
    assert worker_pool_stats().max_threads == before


async def test_raising_the_cap_starts_threads_for_connections_that_wait(
    sync_server: SyncServer, tmp_path: Path, small_pool: int
) -> None:
    replicas = await open_replicas(sync_server, tmp_path, small_pool + 1)
    gates = [StatementGate() for _ in range(small_pool)]
    try:
        held: list[asyncio.Future[list[Any]]] = []
        for gate, replica in zip(gates, replicas):
            replica.row_factory = gate.row_factory
            held.append(asyncio.ensure_future(replica.execute_fetchall("SELECT 1")))
        assert await wait_until(lambda: all(gate.entered.is_set() for gate in gates))
        waiting = asyncio.ensure_future(replicas[-1].execute_fetchall("SELECT 2"))
        assert await wait_until(lambda: worker_pool_stats().waiting_connections == 1)
        set_max_worker_threads(small_pool + 1)
        assert await asyncio.wait_for(waiting, AWAIT_SECONDS) == [(2,)]
        for gate in gates:
            gate.open()
        await bounded(asyncio.gather(*held))
    finally:
        for gate in gates:
            gate.open()
        await close_all(replicas)
