"""Local queries: the round trip of a small query, a 100-row SELECT and an INSERT + commit, per call.

Four implementations, each on its own local database file holding the same 100-row table:
- **ours** and **pyturso's module**: sync replicas bootstrapped from a local sync server (a query never reaches the
  server: it reads the replica);
- **turso.aio** (`turso.lib_aio.connect`, the driver's async embedded API) on a plain local file, for reference;
- **aiosqlite** (the standard library's sqlite3 on a worker thread) on a plain local file, for reference.

Operations, each awaited from the event loop and timed call by call:
- `query`: `await (await conn.execute("SELECT ... WHERE id = ?")).fetchall()`, one row;
- `select100`: the same with all 100 rows;
- `insert_commit`: `await conn.execute("INSERT ...")` then `await conn.commit()`;
- `execute_fetchall`: `await conn.execute_fetchall(...)` of the one-row query (ours and aiosqlite have it).

Two placements: **one core** (the event loop and the worker thread on the same CPU, as under `taskset -c 0`) and
**not pinned** (the scheduler places both threads; the default for applications). A worker thread inherits the
affinity of the thread that starts it, so each placement has its own connections; our worker threads are the
process's pool, and are put on the placement's CPUs before every block of calls (`pin_our_workers`). Each round runs
every operation on every (implementation, placement), the order rotating every round; within a placement the
implementations take turns in blocks of 10 calls (each makes 10 calls, then the next its 10, until each has made the
round's calls), so that all of them meet the machine's slow and fast moments alike. The figures are the median over
every call.
"""

import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional, Protocol, Sequence, Union, cast

import aiosqlite

import turso.lib_aio
from benchmarks.common import (
    ASYNC_CONNECTS,
    OURS,
    PYTURSO,
    PerCallResult,
    Settings,
    blocks,
    pin_our_workers,
    rotated,
)
from benchmarks.overhead import NOT_PINNED
from testkit.sync_server import SyncServer

# The two references, next to OURS and PYTURSO.
TURSO_AIO = "turso.aio"
AIOSQLITE = "aiosqlite"
IMPLEMENTATIONS = [OURS, PYTURSO, TURSO_AIO, AIOSQLITE]

QUERY = "query"
SELECT_100 = "select100"
INSERT_COMMIT = "insert_commit"
EXECUTE_FETCHALL = "execute_fetchall"
OPERATIONS = (QUERY, SELECT_100, INSERT_COMMIT, EXECUTE_FETCHALL)
# Who offers execute_fetchall.
HAS_EXECUTE_FETCHALL = (OURS, AIOSQLITE)

ONE_CORE = "one core"

ROWS = 100
QUERY_SQL = "SELECT id, body FROM t WHERE id = ?"
SELECT_100_SQL = "SELECT id, body FROM t"
INSERT_SQL = "INSERT INTO w(body) VALUES (?)"

Parameters = Union[Sequence[Any], Mapping[str, Any]]


class AsyncCursor(Protocol):
    async def fetchall(self) -> Any: ...


class AsyncSqlConnection(Protocol):
    """The part of the async SQL API the query benchmark uses (all four implementations have it)."""

    async def execute(self, sql: str, parameters: Parameters = ...) -> Any: ...

    async def commit(self) -> None: ...

    async def close(self) -> None: ...


# What the local-query benchmark reports for one (implementation, operation, placement).
QueryResult = PerCallResult


def query_placements() -> dict[str, Optional[set[int]]]:
    """The placements to measure: name -> the CPUs the loop and its worker threads may use (None: unchanged)."""
    return {ONE_CORE: {min(os.sched_getaffinity(0))}, NOT_PINNED: None}


def _set_affinity(cpus: Optional[set[int]], original: set[int]) -> None:
    os.sched_setaffinity(0, original if cpus is None else cpus)


async def _open(name: str, placement: str, workdir: Path, server: SyncServer) -> AsyncSqlConnection:
    path = workdir / f"{name}-{placement}.db".replace(" ", "-")
    if name in ASYNC_CONNECTS:
        # The replica holds t and w from the remote; nothing here goes back to the server.
        return cast(AsyncSqlConnection, await ASYNC_CONNECTS[name](str(path), server.url))
    # Both have this API; their own annotations differ in details the benchmark does not use.
    if name == TURSO_AIO:
        conn = cast(AsyncSqlConnection, await turso.lib_aio.connect(str(path)))
    else:
        conn = cast(AsyncSqlConnection, await aiosqlite.connect(str(path)))
    await conn.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
    await conn.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, body TEXT)")
    for row in range(1, ROWS + 1):
        await conn.execute("INSERT INTO t(id, body) VALUES (?, ?)", (row, f"row {row}"))
    await conn.commit()
    return conn


def _operation(conn: AsyncSqlConnection, operation: str) -> Callable[[int], Awaitable[object]]:
    async def query(call: int) -> object:
        cursor = await conn.execute(QUERY_SQL, (call % ROWS + 1,))
        return await cursor.fetchall()

    async def select_100(call: int) -> object:
        cursor = await conn.execute(SELECT_100_SQL)
        return await cursor.fetchall()

    async def insert_commit(call: int) -> object:
        await conn.execute(INSERT_SQL, (f"insert {call}",))
        await conn.commit()
        return None

    async def execute_fetchall(call: int) -> object:
        # Only ours and aiosqlite have it (HAS_EXECUTE_FETCHALL).
        fetchall_in_one: Callable[[str, Parameters], Awaitable[object]] = getattr(conn, "execute_fetchall")
        return await fetchall_in_one(QUERY_SQL, (call % ROWS + 1,))

    return {
        QUERY: query,
        SELECT_100: select_100,
        INSERT_COMMIT: insert_commit,
        EXECUTE_FETCHALL: execute_fetchall,
    }[operation]


async def _time(call: Callable[[int], Awaitable[object]], calls: int, first: int = 0) -> list[float]:
    # Calls are numbered from `first` on, so that the blocks of a round query different rows.
    durations: list[float] = []
    for number in range(first, first + calls):
        start = time.perf_counter()
        await call(number)
        durations.append(time.perf_counter() - start)
    return durations


async def _time_round(
    connections: dict[tuple[str, str], AsyncSqlConnection],
    measured: list[tuple[str, str]],
    where: dict[str, Optional[set[int]]],
    operation: str,
    calls: int,
) -> dict[tuple[str, str], list[float]]:
    """One round of one operation: every (implementation, placement) in `measured` makes `calls` calls.

    One placement after the other (the loop's affinity changes only between them, so that a not-pinned thread is not
    pushed around by it); within a placement, the implementations take turns in blocks.
    """
    original = os.sched_getaffinity(0)
    this_round: dict[tuple[str, str], list[float]] = {subject: [] for subject in measured}
    for placement in dict.fromkeys(placement for _, placement in measured):
        names = [name for name, where_measured in measured if where_measured == placement]
        _set_affinity(where[placement], original)
        try:
            for block in blocks(calls):
                for name in names:
                    pin_our_workers(where[placement])
                    call = _operation(connections[name, placement], operation)
                    this_round[name, placement] += await _time(call, block, len(this_round[name, placement]))
        finally:
            _set_affinity(None, original)
    return this_round


async def measure_queries(settings: Settings, workdir: Path) -> list[QueryResult]:
    """Time the query operations on the four implementations in both placements, interleaved round by round."""
    where = query_placements()
    original = os.sched_getaffinity(0)
    subjects = [(name, placement) for placement in where for name in IMPLEMENTATIONS]
    calls_by_operation = {
        QUERY: settings.query_calls,
        SELECT_100: settings.select_calls,
        INSERT_COMMIT: settings.insert_calls,
        EXECUTE_FETCHALL: settings.query_calls,
    }
    rounds: dict[tuple[str, str, str], list[list[float]]] = {}
    connections: dict[tuple[str, str], AsyncSqlConnection] = {}
    with SyncServer(workdir / "remote.db") as server:
        server.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
        server.execute("CREATE TABLE w(id INTEGER PRIMARY KEY, body TEXT)")
        server.execute(f"INSERT INTO t(id, body) SELECT value, 'row ' || value FROM generate_series(1, {ROWS})")
        try:
            for placement, cpus in where.items():
                _set_affinity(cpus, original)
                try:
                    for name in IMPLEMENTATIONS:
                        connections[name, placement] = await _open(name, placement, workdir, server)
                finally:
                    _set_affinity(None, original)
            # Turn -1 is a warm-up: the first calls of each kind pay for lazy set-up (statements, caches).
            for turn in range(-1, settings.query_rounds):
                for operation in OPERATIONS:
                    measured = [
                        (name, placement)
                        for name, placement in rotated(subjects, max(turn, 0))
                        if operation != EXECUTE_FETCHALL or name in HAS_EXECUTE_FETCHALL
                    ]
                    calls = calls_by_operation[operation] if turn >= 0 else 5
                    this_round = await _time_round(connections, measured, where, operation, calls)
                    if turn >= 0:
                        for (name, placement), durations in this_round.items():
                            rounds.setdefault((name, operation, placement), []).append(durations)
        finally:
            for conn in connections.values():
                await conn.close()
    return [
        PerCallResult.from_rounds(name, operation, placement, per_round)
        for (name, operation, placement), per_round in rounds.items()
    ]


def query_ratios(results: list[QueryResult]) -> dict[str, float]:
    """Ours over pyturso's module per "operation, placement", and "execute_fetchall vs query, placement" (ours)."""
    medians = {(result.implementation, result.operation, result.placement): result.median_us for result in results}
    ratios: dict[str, float] = {}
    for (name, operation, placement), value in medians.items():
        if name == OURS and operation != EXECUTE_FETCHALL:
            ratios[f"{operation}, {placement}"] = value / medians[PYTURSO, operation, placement]
    for (name, operation, placement), value in medians.items():
        if name == OURS and operation == EXECUTE_FETCHALL:
            ratios[f"{EXECUTE_FETCHALL} vs {QUERY}, {placement}"] = value / medians[OURS, QUERY, placement]
    return ratios
