"""What the test modules share (this is not a test module): bounds, the thread count, polling, and small bounded steps
on a replica or the remote. Fixtures stay in conftest.py; the sync server and the proxy are in testkit/."""

import asyncio
import gc
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from testkit.sync_server import SyncServer
from turso.lib_sync_aio import ConnectionSync, connect_sync

_T = TypeVar("_T")

# Which copy of the module this run tests: "checkout" (`make unit`: this checkout's turso/, on the dev venv's path) or
# "installed" (`make test-wheel`: the built wheel installed in a fresh venv, with a copy of tests/ outside the
# checkout; scripts/test_installed_wheel.py sets it).
UNDER_TEST = os.environ.get("TURSO_SYNC_AIO_UNDER_TEST", "checkout")
# The project's checkout: where this file is, or, for a copy of tests/, where it was copied from.
CHECKOUT = Path(os.environ.get("TURSO_SYNC_AIO_CHECKOUT", Path(__file__).resolve().parent.parent)).resolve()

# The name of every thread of the worker pool, which runs every connection's jobs (turso-worker-1, -2, ...).
POOL_THREAD_PREFIX = "turso-worker"
# How long a worker may take to exit once nothing holds it: the lifecycle promises "within a few seconds at most".
WORKER_EXIT_SECONDS = 5.0
# Upper bound for any single await in the tests; a hang fails the test instead of blocking the run.
AWAIT_SECONDS = 10.0
# About 0.5 s of work on the worker thread (a recursive query counting to a million); executescript runs it fully.
HEAVY_COUNT = (
    "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) "
    "SELECT x FROM c)"
)
HEAVY_COUNT_RESULT = 1_000_000
# A statement that runs until it is stopped: counting to a hundred million takes about a minute on the worker (tens of
# seconds on a fast machine). The tests that use it stop it within a second, and never rely on how long it would run.
RUNS_UNTIL_STOPPED = (
    "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000000) "
    "SELECT x FROM c)"
)

# What an event loop's exception handler receives.
LoopContext = dict[str, Any]


def turso_threads() -> set[threading.Thread]:
    """Our threads that are alive now: the worker pool's (turso-worker-N)."""
    return {thread for thread in threading.enumerate() if thread.name.startswith("turso")}


def pool_thread_serves(baseline: set[threading.Thread]) -> bool:
    """Whether a thread of the worker pool that was not in `baseline` is alive: one ran the connection's jobs just now,
    and stays a while once idle (so a later check that it is gone proves the connection let go of it)."""
    return any(thread.name.startswith(POOL_THREAD_PREFIX) for thread in new_threads(baseline))


def new_threads(baseline: set[threading.Thread]) -> set[threading.Thread]:
    """The turso threads alive now that were not in `baseline` (taken with turso_threads() before the test's work)."""
    return turso_threads() - baseline


def record_loop_errors() -> list[LoopContext]:
    """Record what the running loop would log (say an InvalidStateError raised in a callback) instead of logging it."""
    errors: list[LoopContext] = []

    def handler(loop: asyncio.AbstractEventLoop, context: LoopContext) -> None:
        errors.append(context)

    asyncio.get_running_loop().set_exception_handler(handler)
    return errors


async def wait_until(condition: Callable[[], bool], timeout: float = WORKER_EXIT_SECONDS) -> bool:
    """Poll `condition` on the loop for at most `timeout` seconds; returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def wait_until_blocking(condition: Callable[[], bool], timeout: float = WORKER_EXIT_SECONDS) -> bool:
    """`wait_until` for code outside a running loop."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def collect_until_stopped(baseline: set[threading.Thread], timeout: float = WORKER_EXIT_SECONDS) -> bool:
    """Collect garbage until no turso thread beyond `baseline` is left (False if some is left after `timeout`): an
    unclosed connection whose operation was still running on its lane when its loop went away is only collectable
    once that operation has ended."""

    def collected_and_stopped() -> bool:
        gc.collect()
        return not (turso_threads() - baseline)

    stopped = wait_until_blocking(collected_and_stopped, timeout)
    gc.collect()
    return stopped


class HeldWorker:
    """A fetch that holds its connection's worker until the test releases it: its row factory waits for `release` at
    the first row. Made by `hold_worker`; `fetch` is the task awaiting it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fetch: "asyncio.Task[list[Any]] | None" = None

    def row_factory(self, cursor: object, row: Any) -> tuple[object, ...]:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(AWAIT_SECONDS)
        return tuple(row)

    async def end(self) -> list[Any]:
        """Release the worker, and return what the fetch returned (bounded)."""
        self.release.set()
        assert self.fetch is not None
        return await bounded(self.fetch)


async def hold_worker(conn: ConnectionSync, sql: str = "SELECT 1") -> HeldWorker:
    """Hold `conn`'s worker in a fetch of `sql`, at its first row, until `end()`: statements called meanwhile wait in
    its queue."""
    held = HeldWorker()
    conn.row_factory = held.row_factory
    cursor = await bounded(conn.execute(sql))
    conn.row_factory = None
    held.fetch = asyncio.create_task(cursor.fetchall())
    assert await wait_until(held.entered.is_set), "the fetch never reached its row factory"
    return held


async def bounded(awaitable: Awaitable[_T], timeout: float = AWAIT_SECONDS) -> _T:
    """Await with a bound: a hang fails the test instead of blocking the run."""
    return await asyncio.wait_for(awaitable, timeout)


async def open_replica(path: str, url: str, **kwargs: Any) -> ConnectionSync:
    """Open (bootstrap if new) a replica at `path` of the remote at `url`, with a bound; kwargs go to connect_sync."""
    return await bounded(connect_sync(path, url, **kwargs))


async def rows(conn: ConnectionSync, sql: str) -> list[tuple[object, ...]]:
    """The rows `sql` returns on `conn`, as tuples, each step bounded."""
    cursor = await bounded(conn.execute(sql))
    return [tuple(row) for row in await bounded(cursor.fetchall())]


async def insert_and_commit(conn: ConnectionSync, table: str, keys: list[str]) -> float:
    """Insert one row per key into `table` (k, v) with v its position, and commit; returns how long that took."""
    started = time.monotonic()
    await bounded(conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(key, n) for n, key in enumerate(keys)]))
    await bounded(conn.commit())
    return time.monotonic() - started


async def local_keys(conn: ConnectionSync, table: str = "t") -> list[str]:
    """The keys (column k) of `table` in the replica, in order, read with a bound."""
    return [str(row[0]) for row in await bounded(conn.execute_fetchall(f"SELECT k FROM {table} ORDER BY k"))]


def remote_keys(server: SyncServer, table: str = "t") -> list[str]:
    """The keys (column k) of `table` on the remote, in order: what has reached the server, each row once."""
    return [str(row[0]) for row in server.execute(f"SELECT k FROM {table} ORDER BY k")]


def warned_once_collected(caught: list[warnings.WarningMessage]) -> bool:
    """Collect garbage, then say whether `caught` (from `warnings.catch_warnings(record=True)`) holds a ResourceWarning.
    Poll it with wait_until: an unclosed connection is collected, and warns, only once its threads let go of it."""
    gc.collect()
    return any(issubclass(warning.category, ResourceWarning) for warning in caught)
