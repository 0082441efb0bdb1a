"""Per-call overhead of `stats()`, `pull()` with nothing new and `push()` with nothing to push.

One replica per implementation and placement, all of the same small remote database on a direct (not delayed) sync
server. Each round times `calls` calls of each operation on each implementation, one by one, the implementations in a
different order every round and, within a placement, taking turns in blocks of 10 calls (so that all of them meet
the machine's slow and fast moments alike); the figures are the minimum and the median over every call of every
round. The asyncio implementations are awaited from the event loop; the blocking driver is called directly on it.

Where the worker thread runs matters more than anything the wrappers do: handing a call to a thread on another core
and back costs about twice as much as on the same core on a small VM. Left to the scheduler, that placement changes
from run to run and swamps the difference between the implementations. So each asyncio implementation is measured in
two fixed placements (with `os.sched_setaffinity`; a worker thread inherits the affinity of the thread that starts
it, and our pool's threads are put there before every block of calls): its worker on the event loop's core, and on
another core. The blocking driver has no worker and is measured with
the loop on the same core. A third placement, "not pinned", leaves both threads to the scheduler, as an application
does: the figure users get, noisier.
"""

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Awaitable, Callable, Generator, Optional

import turso.lib_sync
from benchmarks.common import (
    ASYNC_CONNECTS,
    BLOCKING,
    OURS,
    PYTURSO,
    AsyncReplica,
    PerCallResult,
    Settings,
    blocks,
    connect_blocking,
    pin_our_workers,
    rotated,
)
from testkit.sync_server import SyncServer

OPERATIONS = ("stats", "pull", "push")
IMPLEMENTATIONS = [OURS, PYTURSO, BLOCKING]
SAME_CORE = "same core"
OTHER_CORE = "other core"
# Neither the loop nor the worker pinned: where the scheduler puts them, as in an application.
NOT_PINNED = "not pinned"


# What the per-call overhead benchmark reports for one (implementation, operation, placement).
OverheadResult = PerCallResult


def placements() -> dict[str, tuple[Optional[int], Optional[int]]]:
    """The placements to measure: name -> (the loop's CPU, the worker's CPU); None leaves the thread unpinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {SAME_CORE: (cpus[0], cpus[0]), NOT_PINNED: (None, None)}
    return {SAME_CORE: (cpus[0], cpus[0]), OTHER_CORE: (cpus[0], cpus[1]), NOT_PINNED: (None, None)}


@contextmanager
def pinned(cpu: Optional[int]) -> Generator[None, None, None]:
    """Run the calling thread (and the threads it starts meanwhile) on `cpu` only (None: leave it as it is)."""
    original = os.sched_getaffinity(0)
    if cpu is None:
        yield
        return
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, original)


def _async_call(replica: AsyncReplica, operation: str) -> Callable[[], Awaitable[object]]:
    if operation == "stats":
        return replica.stats
    if operation == "pull":
        return replica.pull
    return replica.push


def _blocking_call(replica: turso.lib_sync.ConnectionSync, operation: str) -> Callable[[], object]:
    if operation == "stats":
        return replica.stats  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]  # native stats
    if operation == "pull":
        return replica.pull
    return replica.push


async def _time_async(call: Callable[[], Awaitable[object]], calls: int) -> list[float]:
    durations: list[float] = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        durations.append(time.perf_counter() - start)
    return durations


def _time_blocking(call: Callable[[], object], calls: int) -> list[float]:
    durations: list[float] = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        durations.append(time.perf_counter() - start)
    return durations


async def _time_block(
    subject: "AsyncReplica | turso.lib_sync.ConnectionSync", operation: str, calls: int
) -> list[float]:
    # The blocking driver is called directly on the loop's thread; the others are awaited.
    if isinstance(subject, turso.lib_sync.ConnectionSync):
        return _time_blocking(_blocking_call(subject, operation), calls)
    return await _time_async(_async_call(subject, operation), calls)


async def _time_round(
    order: list[tuple[str, str]],
    replicas: dict[tuple[str, str], AsyncReplica],
    blocking: turso.lib_sync.ConnectionSync,
    operation: str,
    calls: int,
) -> dict[tuple[str, str], list[float]]:
    """One round of one operation: each (implementation, placement) of `order` makes `calls` calls.

    One placement after the other; within a placement, the implementations take turns in blocks.
    """
    where = placements()
    this_round: dict[tuple[str, str], list[float]] = {subject: [] for subject in order}
    for placement in dict.fromkeys(placement for _, placement in order):
        loop_cpu, worker_cpu = where[placement]
        with pinned(loop_cpu):
            for block in blocks(calls):
                for name in [name for name, measured in order if measured == placement]:
                    pin_our_workers(None if worker_cpu is None else {worker_cpu})
                    subject = replicas.get((name, placement), blocking)
                    this_round[name, placement] += await _time_block(subject, operation, block)
    return this_round


async def measure_overhead(settings: Settings, workdir: Path) -> list[OverheadResult]:
    """Time the three operations on the three implementations, interleaved, `settings.overhead_rounds` times."""
    where = placements()
    # What is measured: (implementation, placement), the blocking driver in the same-core placement only.
    subjects = [(name, placement) for placement in where for name in IMPLEMENTATIONS if name != BLOCKING]
    subjects.append((BLOCKING, SAME_CORE))
    calls_by_operation = {"stats": settings.stats_calls, "pull": settings.sync_calls, "push": settings.sync_calls}
    rounds: dict[tuple[str, str, str], list[list[float]]] = {
        (name, placement, operation): [] for name, placement in subjects for operation in OPERATIONS
    }
    with SyncServer(workdir / "remote.db") as server:
        server.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
        server.execute("INSERT INTO t(body) SELECT 'row ' || value FROM generate_series(1, 100)")
        replicas: dict[tuple[str, str], AsyncReplica] = {}
        blocking = connect_blocking(str(workdir / "blocking.db"), server.url)
        try:
            for placement, (_, worker_cpu) in where.items():
                with pinned(worker_cpu):
                    for name, connect in ASYNC_CONNECTS.items():
                        path = str(workdir / f"{name}-{placement.replace(' ', '-')}.db")
                        replicas[name, placement] = await connect(path, server.url)
            # Turn -1 is a warm-up: the first calls of each kind pay for lazy set-up (connections, caches).
            for turn in range(-1, settings.overhead_rounds):
                for operation in OPERATIONS:
                    calls = calls_by_operation[operation] if turn >= 0 else 3
                    order = rotated(subjects, max(turn, 0))
                    this_round = await _time_round(order, replicas, blocking, operation, calls)
                    if turn >= 0:
                        for (name, placement), durations in this_round.items():
                            rounds[name, placement, operation].append(durations)
        finally:
            for replica in replicas.values():
                await replica.close()
            blocking.close()
    return _summarise(rounds, subjects)


def _summarise(
    rounds: dict[tuple[str, str, str], list[list[float]]], subjects: list[tuple[str, str]]
) -> list[OverheadResult]:
    return [
        PerCallResult.from_rounds(name, operation, placement, rounds[name, placement, operation])
        for operation in OPERATIONS
        for name, placement in subjects
    ]


def ours_over_pyturso(results: list[OverheadResult]) -> dict[str, float]:
    """Our median time per call divided by pyturso's module's, per "operation, placement" (1.0 = the same)."""
    medians = {(result.implementation, result.operation, result.placement): result.median_us for result in results}
    return {
        f"{operation}, {placement}": medians[OURS, operation, placement] / medians[PYTURSO, operation, placement]
        for (name, operation, placement) in medians
        if name == OURS
    }
