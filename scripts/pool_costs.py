"""What a tenant's replica costs in a ReplicaPool, for docs/tenants.md: the figures its "Sizing max_open" table quotes.

Usage: python scripts/pool_costs.py [--replicas N]

Against a local `tursodb --sync-server` (started here), with a small database (one table, 100 rows):
- the steps of a replica's life, each timed on its own, N times, median and max: a fresh replica's bootstrap, the
  reopen of an existing one, `stats()`, a push of one row, a push with nothing to push, `close()`;
- N replicas open at once in a ReplicaPool: the RSS and the threads they add.
It prints the load average first: on a busy machine every time grows, the RSS does not.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

# Run as a file (python scripts/pool_costs.py): the checkout's packages come from the folder above.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.sync_server import SyncServer  # noqa: E402
from turso.lib_sync_aio import ConnectionSync, ReplicaPool, connect_sync  # noqa: E402

_T = TypeVar("_T")


def rss_megabytes() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def timed(samples: list[float], step: Callable[[], Awaitable[_T]]) -> _T:
    started = time.perf_counter()
    outcome = await step()
    samples.append(time.perf_counter() - started)
    return outcome


async def replica_steps(server: SyncServer, folder: str, count: int) -> dict[str, list[float]]:
    steps: dict[str, list[float]] = {
        name: [] for name in ("bootstrap", "reopen", "stats", "push one row", "push nothing", "close")
    }
    for number in range(count):
        fresh: ConnectionSync = await timed(
            steps["bootstrap"], lambda: connect_sync(f"{folder}/r{number}.db", server.url)
        )
        await fresh.close()
    for number in range(count):
        conn = await timed(steps["reopen"], lambda: connect_sync(f"{folder}/r{number}.db", server.url))
        await timed(steps["stats"], conn.stats)
        async with conn.transaction():
            await conn.execute("INSERT INTO t VALUES (?, ?)", (f"r{number}", number))
        await timed(steps["push one row"], conn.push)
        await timed(steps["push nothing"], conn.push)
        await timed(steps["close"], conn.close)
    return steps


async def open_replicas(server: SyncServer, folder: str, count: int) -> tuple[float, int]:
    async with ReplicaPool(
        path_for=lambda tenant: f"{folder}/{tenant}.db",
        remote_url_for=lambda tenant: server.url,
        max_open=count + 1,
        sync_interval=None,
    ) as pool:

        async def use(tenant: str) -> None:
            async with pool.connection(tenant) as conn:
                await conn.execute_fetchall("SELECT count(*) FROM t")

        await use("first")  # the driver's one-time costs, before the baseline
        rss, threads = rss_megabytes(), threading.active_count()
        await asyncio.gather(*(use(f"tenant-{number}") for number in range(count)))
        return rss_megabytes() - rss, threading.active_count() - threads


async def main(count: int) -> None:
    print(f"load average: {' '.join(f'{load:.2f}' for load in os.getloadavg())} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as folder, SyncServer() as server:
        server.execute("CREATE TABLE t(k TEXT, v INTEGER)")
        for number in range(100):
            server.execute("INSERT INTO t VALUES (?, ?)", (f"row-{number}", number))
        for name, samples in (await replica_steps(server, folder, count)).items():
            print(f"{name:13s} median {statistics.median(samples) * 1000:7.1f} ms   max {max(samples) * 1000:7.1f} ms")
        rss, threads = await open_replicas(server, folder, count)
        print(f"{count} replicas open at once: +{rss:.0f} MB RSS ({rss / count:.2f} MB each), +{threads} threads")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="What a tenant's replica costs in a ReplicaPool (docs/tenants.md).")
    parser.add_argument("--replicas", type=int, default=20, help="how many replicas each measurement uses")
    asyncio.run(main(parser.parse_args().replicas))
