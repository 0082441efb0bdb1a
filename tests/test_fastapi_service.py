"""The README's FastAPI recipe as a real service: examples/fastapi_app.py under uvicorn, in a subprocess.

The app syncs with a real `tursodb --sync-server` through tests/proxy.py's DelayingProxy. Twenty concurrent httpx
clients create, read, update and delete notes through four phases: normal, the remote stalled (it accepts and never
answers), the remote down (the server stopped), and back. Then, with the remote stalled again, SIGTERM: the process
must exit within 2 s without a traceback. After a restart with the link back, every note whose creation was
acknowledged (201) is on the server exactly once with its last acknowledged text, and none whose deletion was
acknowledged (204). `/health` must have answered 503 during the stall. The latency table per phase is printed
(`pytest -s`).
"""

import asyncio
import random
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.served_app import START_SECONDS, ServedApp, latency_table

CLIENTS = 20
# Background sync of the app: rounds every 0.3 s, a request may wait 1 s, so /health turns 503 after
# 2 * 0.3 + 1 = 1.6 s without a successful round.
SYNC_INTERVAL = 0.3
REQUEST_TIMEOUT = 1.0
HEALTH_WINDOW = 2 * SYNC_INTERVAL + REQUEST_TIMEOUT
# How long each phase of load lasts.
NORMAL_SECONDS = 2.5
STALLED_SECONDS = HEALTH_WINDOW + 1.5
DOWN_SECONDS = 2.5
# What the issue allows for SIGTERM under a stalled remote.
EXIT_SECONDS = 2.0
# How long the app's /notes/activity may run its query (NOTES_QUERY_SECONDS), and what the requests queued behind it on
# the shared connection may take beyond that once it has stopped.
QUERY_SECONDS = 0.5
AFTER_THE_STOP_SECONDS = 1.0
CLIENT_TIMEOUT = 10.0

NORMAL, STALLED, DOWN, BACK = "normal", "stalled", "down", "back"
PHASES = (NORMAL, STALLED, DOWN, BACK)


@dataclass
class Record:
    """What the clients saw: every request's latency and status per phase, and what the app acknowledged."""

    phase: str = NORMAL
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    # id -> last acknowledged body, for notes whose creation was acknowledged and whose deletion was not.
    notes: dict[str, str] = field(default_factory=dict[str, str])
    deleted: set[str] = field(default_factory=set[str])
    health: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    errors: list[str] = field(default_factory=list[str])

    def seen(self, started: float, status: int) -> None:
        self.latencies[self.phase].append(time.perf_counter() - started)
        self.statuses[self.phase][status] += 1


def notes_app(workdir: Path, remote_url: str, query_seconds: float = QUERY_SECONDS) -> ServedApp:
    """examples/fastapi_app.py under uvicorn, syncing with `remote_url`."""
    settings = {
        "TURSO_DATABASE_URL": remote_url,
        "NOTES_REPLICA": str(workdir / "notes.db"),
        "NOTES_SYNC_INTERVAL": str(SYNC_INTERVAL),
        "NOTES_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        "NOTES_QUERY_SECONDS": str(query_seconds),
    }
    return ServedApp("fastapi_app", workdir, settings)


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[tuple[SyncServer, DelayingProxy]]:
    with SyncServer(tmp_path / "remote.db", relay=True) as server, DelayingProxy(server.port) as proxy:
        yield server, proxy


@dataclass
class Client:
    """One client of the service: it creates notes and keeps the ids of its own, which it reads, edits and deletes."""

    http: httpx.AsyncClient
    url: str
    record: Record
    pick: random.Random
    mine: list[str] = field(default_factory=list[str])

    async def create(self) -> httpx.Response:
        body = f"note {self.pick.randrange(10**9)}"
        response = await self.http.post(f"{self.url}/notes", json={"body": body})
        if response.status_code == 201:
            note_id = response.json()["id"]
            self.record.notes[note_id] = body
            self.mine.append(note_id)
        return response

    async def read(self) -> httpx.Response:
        return await self.http.get(f"{self.url}/notes/{self.pick.choice(self.mine)}")

    async def list(self) -> httpx.Response:
        return await self.http.get(f"{self.url}/notes", params={"limit": 20})

    async def edit(self) -> httpx.Response:
        note_id, body = self.pick.choice(self.mine), f"edited {self.pick.randrange(10**9)}"
        response = await self.http.put(f"{self.url}/notes/{note_id}", json={"body": body})
        if response.status_code == 200:
            self.record.notes[note_id] = body
        return response

    async def delete(self) -> httpx.Response:
        note_id = self.mine.pop(self.pick.randrange(len(self.mine)))
        response = await self.http.delete(f"{self.url}/notes/{note_id}")
        if response.status_code == 204:
            self.record.notes.pop(note_id, None)
            self.record.deleted.add(note_id)
        return response

    async def health(self) -> httpx.Response:
        response = await self.http.get(f"{self.url}/health")
        self.record.health[self.record.phase].add(response.status_code)
        return response

    async def sync(self) -> httpx.Response:
        return await self.http.post(f"{self.url}/sync")

    async def run(self, stop: asyncio.Event) -> None:
        """Requests one after another until `stop`: mostly creations and reads, some edits, deletions, /health and
        /sync; each request's latency and status go to the record."""
        weighted = [
            (self.create, 35),
            (self.read, 20),
            (self.list, 10),
            (self.edit, 10),
            (self.delete, 5),
            (self.health, 17),
            (self.sync, 3),
        ]
        requests, weights = [request for request, _ in weighted], [weight for _, weight in weighted]
        while not stop.is_set():
            request = self.pick.choices(requests, weights)[0] if self.mine else self.create
            started = time.perf_counter()
            try:
                response = await request()
                self.record.seen(started, response.status_code)
            except httpx.HTTPError as error:
                self.record.errors.append(f"{self.record.phase}: {type(error).__name__}: {error}")
            await asyncio.sleep(self.pick.random() * 0.01)


async def probe_health(client: httpx.AsyncClient, url: str, record: Record, stop: asyncio.Event) -> None:
    """What a load balancer does: GET /health every 0.1 s, apart from the clients (whose requests may be slow)."""
    while not stop.is_set():
        try:
            response = await client.get(f"{url}/health")
            record.health[record.phase].add(response.status_code)
        except httpx.HTTPError as error:
            record.errors.append(f"{record.phase}: /health: {type(error).__name__}: {error}")
        await asyncio.sleep(0.1)


async def run_phase(record: Record, phase: str, seconds: float) -> None:
    record.phase = phase
    await asyncio.sleep(seconds)


async def test_the_fastapi_example_serves_through_a_stall_and_an_outage_and_exits_on_sigterm_within_two_seconds(
    remote: tuple[SyncServer, DelayingProxy], tmp_path: Path
) -> None:
    server, proxy = remote
    record = Record()
    app = notes_app(tmp_path, proxy.url)
    try:
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            await app.wait_healthy(client)
            stop = asyncio.Event()
            clients = [
                asyncio.create_task(Client(client, app.url, record, random.Random(seed)).run(stop))
                for seed in range(CLIENTS)
            ]
            clients.append(asyncio.create_task(probe_health(client, app.url, record, stop)))
            try:
                await run_phase(record, NORMAL, NORMAL_SECONDS)
                proxy.stall()
                await run_phase(record, STALLED, STALLED_SECONDS)
                # The server goes first: the requests the stall held then meet a refused connection, not a server
                # stopping while it serves them.
                server.stop()
                proxy.release()
                await run_phase(record, DOWN, DOWN_SECONDS)
                server.start()
                record.phase = BACK
                # Background sync backs off while the remote is down; a round asked for now runs at once.
                deadline = time.monotonic() + START_SECONDS
                while (await client.post(f"{app.url}/sync")).status_code != 200:
                    assert time.monotonic() < deadline, app.stderr()
                    await asyncio.sleep(0.1)
                await app.wait_healthy(client)
                await asyncio.sleep(0.5)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*clients), CLIENT_TIMEOUT * 2)

            # SIGTERM while the remote stalls, with notes not pushed yet, and a /sync and a /stats handler waiting for
            # the round in flight. They start as soon as the round is held, so that its request (REQUEST_TIMEOUT)
            # outlasts their SYNC_WAIT_SECONDS.
            proxy.stall()
            held = time.monotonic() + START_SECONDS
            while proxy.held == 0:
                assert time.monotonic() < held, "no background round reached the stalled remote"
                await asyncio.sleep(0.02)
            waiting_sync = asyncio.create_task(client.post(f"{app.url}/sync"))
            waiting_stats = asyncio.create_task(client.get(f"{app.url}/stats"))
            for number in range(5):
                body = f"written during the last stall {number}"
                response = await client.post(f"{app.url}/notes", json={"body": body})
                assert response.status_code == 201, response.text
                record.notes[response.json()["id"]] = body
            await asyncio.sleep(0.1)
            exit_seconds = await asyncio.get_running_loop().run_in_executor(None, app.terminate)
            sync_answer = await asyncio.wait_for(asyncio.gather(waiting_sync, return_exceptions=True), CLIENT_TIMEOUT)
            stats_answer = await asyncio.wait_for(waiting_stats, CLIENT_TIMEOUT)
        stderr = app.stderr()
        print(f"\n--- the app's stderr ---\n{stderr}--- end ---")
        print(f"\n{latency_table(f'{CLIENTS} clients', PHASES, record.latencies, record.statuses)}")
        print(f"SIGTERM under a stalled remote: exited in {exit_seconds:.2f} s")
        print(f"/sync in flight at SIGTERM answered: {sync_answer[0]!r}")

        assert exit_seconds < EXIT_SECONDS, (exit_seconds, stderr)
        assert stats_answer.status_code == 503, stats_answer.text
        # uvicorn ends by raising the signal it got again, after its shutdown: the process ends by SIGTERM.
        assert app.process.returncode in (0, -signal.SIGTERM), (app.process.returncode, stderr)
        assert "Traceback" not in stderr, stderr
        assert 503 in record.health[STALLED], dict(record.health)
        assert record.health[NORMAL] == {200}, dict(record.health)
        # Local writes went on throughout: creations were acknowledged in every phase, and nothing failed.
        for phase in PHASES[:3]:
            assert record.statuses[phase][201] > 0, (phase, dict(record.statuses[phase]))
        assert not record.errors, record.errors[:5]
        for phase in PHASES:
            # No 500; 503 only from /health (and /sync while the remote is away).
            assert not {code for code in record.statuses[phase] if code >= 500} - {503}, dict(record.statuses[phase])

        # Restart with the link back: everything acknowledged reaches the server, once, with its last text.
        proxy.release()
        app = notes_app(tmp_path, proxy.url)
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            await app.wait_healthy(client)
            deadline = time.monotonic() + START_SECONDS
            while (await client.post(f"{app.url}/sync")).json().get("done") is not True:
                assert time.monotonic() < deadline, app.stderr()
        rows = server.execute("SELECT id, body, count(*) FROM notes GROUP BY id")
        on_server = {str(row[0]): str(row[1]) for row in rows}
        assert all(row[2] == 1 for row in rows)
        missing = set(record.notes) - set(on_server)
        assert not missing, f"{len(missing)} acknowledged notes are not on the server"
        assert {note_id: on_server[note_id] for note_id in record.notes} == record.notes
        assert not record.deleted & set(on_server)
        assert app.terminate() < EXIT_SECONDS
        assert "Traceback" not in app.stderr(), app.stderr()
    finally:
        app.kill()


async def test_a_slow_report_answers_504_at_its_timeout_and_the_shared_connection_serves_the_other_requests_at_once(
    remote: tuple[SyncServer, DelayingProxy], tmp_path: Path
) -> None:
    _, proxy = remote
    app = notes_app(tmp_path, proxy.url)
    activity = f"{app.url}/notes/activity"
    try:
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            await app.wait_healthy(client)
            created = await client.post(f"{app.url}/notes", json={"body": "counted"})
            assert created.status_code == 201, created.text
            note_id = created.json()["id"]
            # Hours over the last day: a quick report.
            report = await client.get(activity, params={"since": time.time() - 86400, "bucket_seconds": 3600})
            assert report.status_code == 200, report.text
            assert sum(bucket["notes"] for bucket in report.json()) == 1

            # Milliseconds since 1970: about 1.8e12 buckets, a query that would run for weeks. A read and a write come
            # in while it runs: the shared connection runs them once the query has stopped, at its timeout.
            started = time.monotonic()
            slow = asyncio.create_task(client.get(activity, params={"since": 0, "bucket_seconds": 0.001}))
            await asyncio.sleep(0.1)
            meanwhile = await asyncio.gather(
                client.get(f"{app.url}/notes/{note_id}"),
                client.post(f"{app.url}/notes", json={"body": "written meanwhile"}),
            )
            answered = await asyncio.wait_for(slow, CLIENT_TIMEOUT)
            assert answered.status_code == 504, answered.text
            assert [response.status_code for response in meanwhile] == [200, 201]
            assert time.monotonic() - started < QUERY_SECONDS + AFTER_THE_STOP_SECONDS
            listed = await client.get(f"{app.url}/notes")
            assert sorted(note["body"] for note in listed.json()) == ["counted", "written meanwhile"]
        assert app.terminate() < EXIT_SECONDS
        assert "Traceback" not in app.stderr(), app.stderr()
    finally:
        app.kill()
