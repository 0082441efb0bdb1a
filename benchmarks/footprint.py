"""What open replicas cost: OS threads and resident memory (RSS) of the process, for 1, 32 and 128 open replicas.

Measured in a fresh interpreter (`python -m benchmarks.footprint URL FOLDER COUNTS`), so that nothing else the
benchmark did is in its memory. It opens and closes one replica first (loading the driver's native code), takes the
baseline, then opens replicas of our module until each count is reached and measures after each step. It prints
its measurements as JSON.
"""

import argparse
import asyncio
import gc
import json
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

import turso.lib_sync_aio
from testkit.sync_server import SyncServer

# Opening 128 replicas of a small database takes a few seconds; the child is stopped if it takes far longer.
CHILD_TIMEOUT_SECONDS = 180.0


DESCRIPTION = "Measure threads and RSS of open replicas (the child process of the footprint benchmark)."


@dataclass
class FootprintRow:
    """The process with `replicas` open replicas of our module."""

    replicas: int
    threads: int
    rss_mib: float
    # Compared with the same process before any replica was open.
    threads_added: int
    rss_added_mib: float
    rss_per_replica_mib: float


def _measure(process: psutil.Process) -> tuple[int, float]:
    gc.collect()
    return process.num_threads(), process.memory_info().rss / 1024 / 1024


async def _child(url: str, folder: Path, counts: list[int]) -> list[FootprintRow]:
    process = psutil.Process()
    warm_up = await turso.lib_sync_aio.connect_sync(str(folder / "warm-up.db"), url)
    await warm_up.stats()
    await warm_up.close()
    await asyncio.sleep(0.2)
    base_threads, base_rss = _measure(process)
    rows: list[FootprintRow] = []
    replicas: list[turso.lib_sync_aio.ConnectionSync] = []
    try:
        for count in sorted(counts):
            opening = [
                turso.lib_sync_aio.connect_sync(str(folder / f"replica-{index}.db"), url)
                for index in range(len(replicas), count)
            ]
            replicas.extend(await asyncio.gather(*opening))
            await asyncio.sleep(0.2)
            threads, rss = _measure(process)
            rows.append(
                FootprintRow(
                    replicas=count,
                    threads=threads,
                    rss_mib=round(rss, 2),
                    threads_added=threads - base_threads,
                    rss_added_mib=round(rss - base_rss, 2),
                    rss_per_replica_mib=round((rss - base_rss) / count, 3),
                )
            )
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))
    return rows


def measure_footprint(counts: tuple[int, ...], workdir: Path) -> list[FootprintRow]:
    """Threads and RSS with each number of open replicas, measured in a child interpreter."""
    with SyncServer(workdir / "remote.db") as server:
        server.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
        server.execute("INSERT INTO t(body) SELECT 'row ' || value FROM generate_series(1, 100)")
        folder = workdir / "replicas"
        folder.mkdir()
        command = [
            sys.executable,
            "-m",
            "benchmarks.footprint",
            server.url,
            str(folder),
            ",".join(str(count) for count in counts),
        ]
        child = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS, check=False)
    if child.returncode != 0:
        raise RuntimeError(f"the footprint child failed ({child.returncode}):\n{child.stderr}")
    return [
        FootprintRow(
            replicas=int(row["replicas"]),
            threads=int(row["threads"]),
            rss_mib=float(row["rss_mib"]),
            threads_added=int(row["threads_added"]),
            rss_added_mib=float(row["rss_added_mib"]),
            rss_per_replica_mib=float(row["rss_per_replica_mib"]),
        )
        for row in json.loads(child.stdout)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("url", help="the sync server")
    parser.add_argument("folder", help="an empty folder for the replicas")
    parser.add_argument("counts", help="numbers of open replicas to measure, comma-separated")
    arguments = parser.parse_args()
    url: str = arguments.url
    folder = Path(arguments.folder)
    counts = [int(count) for count in str(arguments.counts).split(",")]
    rows = asyncio.run(_child(url, folder, counts))
    print(json.dumps([asdict(row) for row in rows]))


if __name__ == "__main__":
    main()
