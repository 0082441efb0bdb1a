"""A long, realistic probe of the FastAPI example: concurrent clients while the remote is slowed, black-holed, down and
back, then SIGTERM while it is black-holed.

`python -m benchmarks.service_probe [--clients 20] [--phase-seconds 15]`: examples/fastapi_app.py under uvicorn (a
subprocess) syncs every second through a loopback proxy with a local `tursodb --sync-server`; a second replica pushes
a note straight to the server every 0.2 s, so that pulls apply changes. The clients create and read notes through the
phases; each phase's latencies, statuses and /health answers are recorded. At the end, SIGTERM while the proxy
black-holes the link: how long the app takes to exit. Then the app starts again, syncs, and every note it
acknowledged must be on the server exactly once. Prints one JSON object. Not in `make bench` (it takes minutes).
"""

import argparse
import asyncio
import collections
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

import turso
import turso.aio.sync
from benchmarks.service import start_app, wait_until_up
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer, free_port

# The phases, in order, and what the proxy does in each.
PHASES = ("normal", "slow", "black_hole", "down", "back")
# A slow remote: every chunk delayed this long, both ways (a round trip of twice that, and one more for a new
# connection).
SLOW_CHUNK_SECONDS = 0.2
# The app's deadline for every sync request, small so that the black hole is noticed within the probe.
REQUEST_TIMEOUT_SECONDS = 2.0
OTHER_PUSH_SECONDS = 0.2


class Record:
    """What the clients saw, per phase."""

    def __init__(self) -> None:
        self.phase = PHASES[0]
        self.latencies: dict[str, list[float]] = collections.defaultdict(list)
        self.statuses: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self.health: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        self.errors: list[str] = []
        self.acknowledged: list[str] = []


async def client_loop(client: httpx.AsyncClient, url: str, record: Record, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            started = time.perf_counter()
            response = await client.post(f"{url}/notes", json={"body": f"probe {uuid.uuid4()}"})
            record.latencies[record.phase].append(time.perf_counter() - started)
            record.statuses[record.phase][response.status_code] += 1
            if response.status_code == 201:
                note = response.json()["id"]
                record.acknowledged.append(note)
                started = time.perf_counter()
                read = await client.get(f"{url}/notes/{note}")
                record.latencies[record.phase].append(time.perf_counter() - started)
                record.statuses[record.phase][read.status_code] += 1
        except httpx.HTTPError as error:
            record.errors.append(f"{record.phase}: {type(error).__name__}: {error}")
        await asyncio.sleep(0.01)


async def health_loop(client: httpx.AsyncClient, url: str, record: Record, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            record.health[record.phase][(await client.get(f"{url}/health")).status_code] += 1
        except httpx.HTTPError as error:
            record.errors.append(f"{record.phase}: /health: {type(error).__name__}: {error}")
        await asyncio.sleep(0.5)


async def other_replica(path: str, url: str, stop: asyncio.Event) -> int:
    pushed = 0
    async with turso.aio.sync.connect(path, url) as other:
        while not stop.is_set():
            note = (str(uuid.uuid4()), time.time())
            await other.execute("INSERT INTO notes(id, body, updated) VALUES (?, 'from the other replica', ?)", note)
            await other.commit()
            try:
                await other.push()
                pushed += 1
            except turso.Error:
                pass  # the server is down: the next push sends it
            await asyncio.sleep(OTHER_PUSH_SECONDS)
    return pushed


def summary(record: Record) -> dict[str, object]:
    phases: dict[str, object] = {}
    for phase in PHASES:
        values = sorted(record.latencies[phase])
        if not values:
            continue
        phases[phase] = {
            "requests": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1),
            "statuses": dict(record.statuses[phase]),
            "health": dict(record.health[phase]),
        }
    return phases


async def probe(clients: int, phase_seconds: float, workdir: Path) -> dict[str, object]:
    server = SyncServer(workdir / "remote.db")
    server.start()
    proxy = DelayingProxy(server.port)
    record = Record()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    os.environ["NOTES_REQUEST_TIMEOUT"] = str(REQUEST_TIMEOUT_SECONDS)
    app = start_app(workdir, proxy.url, port, str(16 * 1024 * 1024))
    stop = asyncio.Event()
    try:
        async with httpx.AsyncClient(timeout=30.0) as client:
            await wait_until_up(client, url)
            others = asyncio.ensure_future(other_replica(str(workdir / "other.db"), server.url, stop))
            loops = [asyncio.ensure_future(client_loop(client, url, record, stop)) for _ in range(clients)]
            loops.append(asyncio.ensure_future(health_loop(client, url, record, stop)))
            for phase in PHASES:
                record.phase = phase
                proxy.release()
                proxy.delay = proxy.answer_delay = SLOW_CHUNK_SECONDS if phase == "slow" else 0.0
                if phase == "black_hole":
                    proxy.black_hole(open_connections=True)
                elif phase == "down":
                    server.stop()
                elif phase == "back":
                    server.start()
                await asyncio.sleep(phase_seconds)
            stop.set()
            await asyncio.gather(*loops)
            pushed_by_the_other = await others
            # SIGTERM while the remote is black-holed again.
            proxy.black_hole(open_connections=True)
            await asyncio.sleep(2.0)
            started = time.monotonic()
            app.send_signal(signal.SIGTERM)
            app.wait(30)
            exit_seconds = time.monotonic() - started
            proxy.release()
            # The app again, the link healthy: its replica pushes what it had not, and pulls.
            app = start_app(workdir, proxy.url, port, str(16 * 1024 * 1024))
            await wait_until_up(client, url)
            await client.post(f"{url}/sync")
            await asyncio.sleep(3.0)
            app.send_signal(signal.SIGTERM)
            app.wait(30)
        on_server = [str(row[0]) for row in server.execute("SELECT id FROM notes WHERE body LIKE 'probe %'")]
        counts = collections.Counter(on_server)
        acknowledged = set(record.acknowledged)
        return {
            "clients": clients,
            "phase_seconds": phase_seconds,
            "load_average": os.getloadavg(),
            "phases": summary(record),
            "client_errors": record.errors[:20],
            "acknowledged": len(acknowledged),
            "acknowledged_on_server_once": sum(1 for note in acknowledged if counts[note] == 1),
            "acknowledged_missing": sum(1 for note in acknowledged if counts[note] == 0),
            "on_server_twice_or_more": sum(1 for count in counts.values() if count > 1),
            "pushed_by_the_other_replica": pushed_by_the_other,
            "sigterm_exit_seconds_black_holed": round(exit_seconds, 3),
            "exit_code": app.returncode,
        }
    finally:
        stop.set()
        if app.poll() is None:
            app.kill()
            app.wait()
        proxy.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="A long probe of the FastAPI example under faults of the remote.")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--phase-seconds", type=float, default=15.0)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="turso-service-probe-") as workdir:
        result = asyncio.run(probe(arguments.clients, arguments.phase_seconds, Path(workdir)))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
