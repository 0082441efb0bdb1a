"""The FastAPI example under a steady load for minutes: how large the replica's WAL grows, with and without
background sync's checkpoints.

`python -m benchmarks.service [--minutes 10] [--checkpoint-wal-bytes none|BYTES] [--writes-per-second 20]`:
examples/fastapi_app.py under uvicorn (a subprocess), syncing every second with a local `tursodb --sync-server`;
`--clients` httpx clients create notes (and read them back) at `--writes-per-second` in all; every 5 s the app's
`/stats` gives the WAL size (`stats().main_wal_size`) and the `-wal` file's size on disk is read. Prints one JSON
object: the samples' maximum, median and last values, the notes written, the request latencies. Not in `make bench`
(it takes minutes); the numbers go in the notes of the issue that asked for them.
"""

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import httpx

from testkit.sync_server import SyncServer, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SAMPLE_SECONDS = 5.0


def start_app(workdir: Path, remote_url: str, port: int, checkpoint_wal_bytes: str) -> "subprocess.Popen[bytes]":
    """examples/fastapi_app.py under uvicorn on 127.0.0.1:`port`, its replica in `workdir`."""
    env = dict(
        os.environ,
        TURSO_DATABASE_URL=remote_url,
        NOTES_REPLICA=str(workdir / "notes.db"),
        NOTES_SYNC_INTERVAL="1",
        NOTES_CHECKPOINT_WAL_BYTES=checkpoint_wal_bytes,
    )
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "fastapi_app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


async def wait_until_up(client: httpx.AsyncClient, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if (await client.get(f"{url}/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the app at {url} was not healthy within {timeout} s")
        await asyncio.sleep(0.1)


async def writer(
    client: httpx.AsyncClient,
    url: str,
    period: float,
    offset: float,
    until: float,
    latencies: list[float],
    written: list[int],
) -> None:
    """Create a note every `period` seconds from `offset` on (and read it back) until `until` (time.monotonic())."""
    next_write = time.monotonic() + offset
    while next_write < until:
        await asyncio.sleep(max(0.0, next_write - time.monotonic()))
        next_write += period
        started = time.perf_counter()
        response = await client.post(f"{url}/notes", json={"body": "x" * 200})
        latencies.append(time.perf_counter() - started)
        if response.status_code == 201:
            written[0] += 1
            started = time.perf_counter()
            await client.get(f"{url}/notes/{response.json()['id']}")
            latencies.append(time.perf_counter() - started)


async def sampler(
    client: httpx.AsyncClient, url: str, wal_file: Path, until: float, samples: list[tuple[float, int, int]]
) -> None:
    """(seconds since start, stats().main_wal_size, -wal file bytes) every SAMPLE_SECONDS until `until`."""
    started = time.monotonic()
    while time.monotonic() < until:
        await asyncio.sleep(SAMPLE_SECONDS)
        stats = (await client.get(f"{url}/stats")).json()
        on_disk = wal_file.stat().st_size if wal_file.exists() else 0
        samples.append((time.monotonic() - started, int(stats["wal_bytes"]), on_disk))


async def measure(
    remote_url: str, workdir: Path, minutes: float, checkpoint_wal_bytes: str, clients: int, writes_per_second: float
) -> dict[str, object]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = start_app(workdir, remote_url, port, checkpoint_wal_bytes)
    latencies: list[float] = []
    written = [0]
    samples: list[tuple[float, int, int]] = []
    try:
        async with httpx.AsyncClient(timeout=30.0) as client:
            await wait_until_up(client, url)
            until = time.monotonic() + minutes * 60
            period = clients / writes_per_second
            await asyncio.gather(
                sampler(client, url, workdir / "notes.db-wal", until, samples),
                # Staggered, so that the clients' writes are spread over each period instead of coming in bursts.
                *(
                    writer(client, url, period, period * number / clients, until, latencies, written)
                    for number in range(clients)
                ),
            )
            health = (await client.get(f"{url}/health")).json()
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(30)
    latencies.sort()
    wal = [sample[1] for sample in samples]
    on_disk = [sample[2] for sample in samples]
    return {
        "checkpoint_wal_bytes": checkpoint_wal_bytes,
        "minutes": minutes,
        "notes_written": written[0],
        "wal_bytes": {"max": max(wal), "median": statistics.median(wal), "last": wal[-1]},
        "wal_file_bytes": {"max": max(on_disk), "median": statistics.median(on_disk), "last": on_disk[-1]},
        "latency_ms": {
            "p50": statistics.median(latencies) * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000,
            "max": latencies[-1] * 1000,
        },
        "rounds": health["rounds"],
        "failed_rounds_at_end": health["consecutive_failures"],
        "samples": samples,
    }


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="The FastAPI example under a steady load: how large its WAL grows.")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--checkpoint-wal-bytes", default=str(16 * 1024 * 1024), help="bytes, or none")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--writes-per-second", type=float, default=20.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="turso-service-bench-") as directory:
        workdir = Path(directory)
        with SyncServer(workdir / "remote.db") as server:
            result = asyncio.run(
                measure(
                    server.url,
                    workdir,
                    args.minutes,
                    args.checkpoint_wal_bytes,
                    args.clients,
                    args.writes_per_second,
                )
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
