"""N replicas pulling at once from one event loop, through a proxy that adds latency, against N blocking pulls in turn.

All replicas are of one remote database and reach it through `ProxyProcess` (50 ms added to every request). Before each
measurement one row is inserted on the remote, so that every pull fetches and applies something new (each one is
checked to return True). The asyncio implementations pull with `asyncio.gather` over N replicas; the blocking driver
pulls its N replicas one after the other. As a reference for what the driver itself allows, the same blocking
replicas also pull from N plain threads at once. Implementations are interleaved, in a different order every round.
The process's CPU time per pull is recorded too: the driver spends it mostly in native code that holds the
interpreter lock, so it bounds how many pulls one process can overlap.
"""

import asyncio
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import turso.lib_sync
from benchmarks.common import (
    ASYNC_CONNECTS,
    BLOCKING,
    OURS,
    PYTURSO,
    THREADS,
    AsyncReplica,
    Settings,
    connect_blocking,
    rotated,
)
from testkit.proxy import ProxyProcess
from testkit.sync_server import SyncServer

IMPLEMENTATIONS = [OURS, PYTURSO, BLOCKING, THREADS]
# A reference thread's pull takes well under a second; the join gives up after this.
THREAD_JOIN_SECONDS = 60.0


@dataclass
class ConcurrencyResult:
    """Wall time for N replicas of one implementation to pull one new change each."""

    replicas: int
    implementation: str
    # Wall time of each round.
    wall_s: list[float]
    min_s: float
    median_s: float
    # CPU time of this process per pull (all its threads; median of the rounds), in milliseconds.
    cpu_ms_per_pull: float
    # Every pull of every round returned True (it fetched and applied the new row).
    all_pulled_new: bool


@dataclass
class Speedup:
    """How many times faster N replicas pulled at once than N blocking pulls in turn (ratio of median wall times)."""

    replicas: int
    implementation: str
    speedup: float


async def _pull_async(replicas: list[AsyncReplica]) -> list[bool]:
    return list(await asyncio.gather(*(replica.pull() for replica in replicas)))


def _pull_blocking(replicas: list[turso.lib_sync.ConnectionSync]) -> list[bool]:
    return [replica.pull() for replica in replicas]


def _pull_threads(replicas: list[turso.lib_sync.ConnectionSync]) -> list[bool]:
    pulled = [False] * len(replicas)

    def pull(index: int) -> None:
        pulled[index] = replicas[index].pull()

    threads = [
        threading.Thread(target=pull, args=(index,), name=f"bench-pull-{index}") for index in range(len(replicas))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_JOIN_SECONDS)
    return pulled


async def measure_concurrency(settings: Settings, workdir: Path) -> tuple[list[ConcurrencyResult], list[Speedup]]:
    """Time N concurrent pulls (asyncio) and N sequential pulls (blocking) for every N of the settings."""
    most = max(settings.replica_counts)
    walls: dict[tuple[int, str], list[float]] = {
        (count, name): [] for count in settings.replica_counts for name in IMPLEMENTATIONS
    }
    cpu_per_pull: dict[tuple[int, str], list[float]] = {key: [] for key in walls}
    all_new: dict[tuple[int, str], bool] = {key: True for key in walls}
    with SyncServer(workdir / "remote.db") as server, ProxyProcess(server.port, settings.proxy_delay) as proxy:
        server.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
        async_replicas: dict[str, list[AsyncReplica]] = {}
        blocking: list[turso.lib_sync.ConnectionSync] = []
        try:
            for name, connect in ASYNC_CONNECTS.items():
                opening = [connect(str(workdir / f"{name}-{index}.db"), proxy.url) for index in range(most)]
                async_replicas[name] = list(await asyncio.gather(*opening))
            for index in range(most):
                blocking.append(connect_blocking(str(workdir / f"{BLOCKING}-{index}.db"), proxy.url))
            for turn in range(settings.concurrency_rounds):
                for count in settings.replica_counts:
                    for name in rotated(IMPLEMENTATIONS, turn):
                        server.execute("INSERT INTO t(body) VALUES (?)", (f"round {turn}, {count} replicas, {name}",))
                        start, cpu_start = time.perf_counter(), time.process_time()
                        if name == BLOCKING:
                            pulled = _pull_blocking(blocking[:count])
                        elif name == THREADS:
                            pulled = _pull_threads(blocking[:count])
                        else:
                            pulled = await _pull_async(async_replicas[name][:count])
                        walls[count, name].append(time.perf_counter() - start)
                        cpu_per_pull[count, name].append((time.process_time() - cpu_start) / count)
                        all_new[count, name] = all_new[count, name] and all(pulled)
        finally:
            for replicas in async_replicas.values():
                await asyncio.gather(*(replica.close() for replica in replicas))
            for replica in blocking:
                replica.close()
    results = [
        ConcurrencyResult(
            replicas=count,
            implementation=name,
            wall_s=[round(value, 4) for value in walls[count, name]],
            min_s=round(min(walls[count, name]), 4),
            median_s=round(statistics.median(walls[count, name]), 4),
            cpu_ms_per_pull=round(statistics.median(cpu_per_pull[count, name]) * 1000, 2),
            all_pulled_new=all_new[count, name],
        )
        for count in settings.replica_counts
        for name in IMPLEMENTATIONS
    ]
    speedups = [
        Speedup(
            replicas=count,
            implementation=name,
            speedup=round(statistics.median(walls[count, BLOCKING]) / statistics.median(walls[count, name]), 2),
        )
        for count in settings.replica_counts
        for name in (OURS, PYTURSO, THREADS)
    ]
    return results, speedups
