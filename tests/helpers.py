"""What the test modules share (this is not a test module): bounds, the thread count, polling, and small bounded steps
on a replica or the remote. Fixtures stay in conftest.py; the sync server and the proxy are in testkit/."""

import asyncio
import gc
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, ItemsView, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from testkit.sync_server import SyncServer
from turso import lib_aio
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
# A statement that runs until it is stopped: counting to a hundred million takes about a minute on the worker (tens of
# seconds on a fast machine). The tests that use it stop it within a second, and never rely on how long it would run.
RUNS_UNTIL_STOPPED = (
    "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000000) "
    "SELECT x FROM c)"
)

# What an event loop's exception handler receives.
LoopContext = dict[str, Any]


class StatementGate:
    """Holds a statement on the SQL worker until the test opens the gate: a statement whose rows are built by this
    gate's `row_factory` waits in it before its first row is returned; one bound with `parameters(...)` waits while its
    parameters are bound, before it runs (for a statement without rows, say an INSERT by `execute`).

    This is how a test makes "a statement that is still running" certain. A CPU-bound query (a recursive count) only
    makes it likely: a busy machine stretches it past any wait the test bounds. `entered` is set once a statement waits
    at the gate. Use it as a context manager, so that a failed test still lets the worker go; the worker waits at most
    AWAIT_SECONDS in any case.
    """

    def __init__(self) -> None:
        """A closed gate that no statement has reached yet."""
        self.entered = threading.Event()
        self._opened = threading.Event()

    def __enter__(self) -> "StatementGate":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.open()

    def row_factory(self, cursor: object, row: Sequence[Any]) -> tuple[Any, ...]:
        """On the worker: wait until the gate opens, then build the row as a plain tuple."""
        self.wait()
        return tuple(row)

    def parameters(self, values: Mapping[str, Any]) -> Mapping[str, Any]:
        """Named parameters `values` that make their statement wait at the gate while the worker binds them."""
        return _GatedParameters(self, values)

    def wait(self) -> None:
        """On the worker: say the statement is at the gate, and wait until the test opens it."""
        if threading.current_thread() is threading.main_thread():
            raise AssertionError("a StatementGate was reached on the test's own thread, not on the SQL worker")
        self.entered.set()
        if not self._opened.wait(AWAIT_SECONDS):
            raise TimeoutError(f"the test did not open its StatementGate within {AWAIT_SECONDS} s")

    def open(self) -> None:
        """Let every statement held at the gate, and any that reaches it later, go on."""
        self._opened.set()


class _GatedParameters(Mapping[str, Any]):
    """Named parameters whose `items()`, which the driver calls on the worker to bind them, waits at a StatementGate."""

    def __init__(self, gate: StatementGate, values: Mapping[str, Any]) -> None:
        self._gate = gate
        self._values = dict(values)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def items(self) -> ItemsView[str, Any]:
        self._gate.wait()
        return self._values.items()


async def hold_statement(conn: ConnectionSync, gate: StatementGate, sql: str = "SELECT 1") -> "asyncio.Task[list[Any]]":
    """Run `sql` (a statement that returns a row) on `conn` with `execute_fetchall`, and return once it waits at `gate`
    on the SQL worker; the task that awaits its rows ends once the gate opens. The statements called after this one get
    `conn`'s row_factory back as it was (None)."""
    conn.row_factory = gate.row_factory
    held = asyncio.ensure_future(conn.execute_fetchall(sql))
    if not await wait_until(gate.entered.is_set, AWAIT_SECONDS):
        held.cancel()
        raise AssertionError(f"the statement never reached the gate on the SQL worker: {held}")
    conn.row_factory = None
    return held


class LocalSpeed:
    """What a local statement takes on this machine at this moment: the same kind of read, or write and commit, on a
    plain local database of the driver's (`turso.lib_aio`, no sync at all), run beside the statement under test.

    A test that bounds a local statement ("a local write takes under half a second while the remote is stalled")
    checks it as "under half a second more than the same statement beside it". A busy machine, or a pause of the
    whole process, slows both alike; a statement that waits for the network, or for a lock a sync holds, slows alone.
    Made by the `local_speed` fixture (tests/conftest.py); its worker exits when the fixture closes it.
    """

    def __init__(self, reference: lib_aio.Connection) -> None:
        """The reference database, open, with its table made (use `LocalSpeed.open`)."""
        self._reference = reference
        self._writes = 0

    @classmethod
    async def open(cls, path: str) -> "LocalSpeed":
        """Open (create) the reference database at `path`."""
        reference = await bounded(lib_aio.connect(path))
        await bounded(reference.execute("CREATE TABLE IF NOT EXISTS reference(k TEXT, v INTEGER)"))
        await bounded(reference.commit())
        return cls(reference)

    async def close(self) -> None:
        """Close the reference database and stop its worker."""
        await bounded(self._reference.close())

    async def beside(self, work: Awaitable[_T], *, write: bool) -> tuple[_T, float, float]:
        """Run `work` and the reference read (or, with `write`, an INSERT and a commit) at the same time; returns
        what `work` returned, how long it took and how long the reference took, in seconds."""
        reference = self._write() if write else self._read()
        (result, took), (_, reference_took) = await bounded(asyncio.gather(_timed(work), _timed(reference)))
        return result, took, reference_took

    async def _read(self) -> None:
        cursor = await self._reference.execute("SELECT count(*) FROM reference")
        await cursor.fetchall()

    async def _write(self) -> None:
        self._writes += 1
        await self._reference.execute("INSERT INTO reference VALUES (?, ?)", (f"reference-{self._writes}", 0))
        await self._reference.commit()


async def _timed(work: Awaitable[_T]) -> tuple[_T, float]:
    started = time.monotonic()
    result = await work
    return result, time.monotonic() - started


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
    """Collect garbage, then say whether `caught` (from `warnings.catch_warnings(record=True)`) holds the
    ResourceWarning of an unclosed ConnectionSync. Poll it with wait_until: an unclosed connection is collected, and
    warns, only once its threads let go of it. Other ResourceWarnings do not count: a collection can also find what an
    earlier test left, which says nothing of this test's connection."""
    gc.collect()
    return any(
        issubclass(warning.category, ResourceWarning) and str(warning.message).startswith("ConnectionSync was never")
        for warning in caught
    )
