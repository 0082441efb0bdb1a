"""examples/tenants_app.py under uvicorn, in a subprocess: a database per tenant from a ReplicaPool.

Three real `tursodb --sync-server`s, each behind a DelayingProxy, hold the tenants' databases (tenants are spread over
them by a hash of their key, as the app does with a list of URLs). Twelve concurrent httpx clients create, read, edit
and delete notes of 24 tenants, more than the pool keeps open (max_open=6), so replicas are evicted and reopened all
along, through four phases: normal, one remote stalled (it accepts and never answers), that remote down (its server
stopped), and back. Then, with that remote stalled again and notes of its tenants not pushed yet, SIGTERM: the process
must exit within the pool's close timeout plus its margin, without a traceback. After a restart with every remote
back, every note whose creation was acknowledged (201) is on its tenant's server exactly once with its last
acknowledged text, and none whose deletion was acknowledged (204). The latency table per phase is printed (`pytest
-s`).
"""

import asyncio
import random
import signal
import time
import zlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.served_app import START_SECONDS, ServedApp, latency_table
from turso.lib_sync_aio import POOL_CLOSE_MARGIN_SECONDS

REMOTES = 3
TENANTS = [f"tenant-{number:02d}" for number in range(24)]
CLIENTS = 12
MAX_OPEN = 6
IDLE_SECONDS = 1.5
SYNC_INTERVAL = 0.3
REQUEST_TIMEOUT = 1.0
CLOSE_TIMEOUT = 1.0
# SIGTERM: uvicorn lets the requests in flight end (their local SQL), then the pool closes within its bound.
EXIT_SECONDS = CLOSE_TIMEOUT + POOL_CLOSE_MARGIN_SECONDS + 1.0
NORMAL_SECONDS = 2.5
STALLED_SECONDS = 3.0
DOWN_SECONDS = 2.5
BACK_SECONDS = 2.0
CLIENT_TIMEOUT = 10.0

NORMAL, STALLED, DOWN, BACK = "normal", "stalled", "down", "back"
PHASES = (NORMAL, STALLED, DOWN, BACK)


def remote_of(tenant: str) -> int:
    """Which of the remotes holds the tenant's database: the app's choice from its list of URLs."""
    return zlib.crc32(tenant.encode()) % REMOTES


@dataclass
class Record:
    """What the clients saw: latencies and statuses per phase, and what the app acknowledged, per tenant."""

    phase: str = NORMAL
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, dict[int, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    # (tenant, id) -> last acknowledged body, for notes whose creation was acknowledged and deletion was not.
    notes: dict[tuple[str, str], str] = field(default_factory=dict[tuple[str, str], str])
    deleted: set[tuple[str, str]] = field(default_factory=set[tuple[str, str]])
    health: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    errors: list[str] = field(default_factory=list[str])

    def seen(self, started: float, status: int) -> None:
        self.latencies[self.phase].append(time.perf_counter() - started)
        self.statuses[self.phase][status] += 1


def tenants_app(workdir: Path, remote_urls: list[str]) -> ServedApp:
    """examples/tenants_app.py under uvicorn, its tenants spread over `remote_urls`."""
    settings = {
        "TENANT_DATABASE_URL": ",".join(remote_urls),
        "TENANTS_DIR": str(workdir / "tenants"),
        "TENANTS_MAX_OPEN": str(MAX_OPEN),
        "TENANTS_IDLE_SECONDS": str(IDLE_SECONDS),
        "TENANTS_SYNC_INTERVAL": str(SYNC_INTERVAL),
        "TENANTS_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
        "TENANTS_CLOSE_TIMEOUT": str(CLOSE_TIMEOUT),
    }
    return ServedApp("tenants_app", workdir, settings)


@pytest.fixture
def remotes(tmp_path: Path) -> Iterator[list[tuple[SyncServer, DelayingProxy]]]:
    servers = [SyncServer(tmp_path / f"remote-{number}.db", relay=True) for number in range(REMOTES)]
    proxies: list[DelayingProxy] = []
    try:
        for server in servers:
            server.start()
            proxies.append(DelayingProxy(server.port))
        yield list(zip(servers, proxies))
    finally:
        for proxy in proxies:
            proxy.close()
        for server in servers:
            server.stop()


@dataclass
class Client:
    """One client: requests on random tenants, a few of them hot; it edits and deletes notes it created."""

    http: httpx.AsyncClient
    url: str
    record: Record
    pick: random.Random
    mine: list[tuple[str, str]] = field(default_factory=list[tuple[str, str]])

    def tenant(self) -> str:
        # A skewed load: half of the requests go to four hot tenants, the rest to the long tail.
        return self.pick.choice(TENANTS[:4] if self.pick.random() < 0.5 else TENANTS)

    async def create(self, tenant: str) -> httpx.Response:
        body = f"note {self.pick.randrange(10**9)}"
        response = await self.http.post(f"{self.url}/t/{tenant}/notes", json={"body": body})
        if response.status_code == 201:
            key = (tenant, response.json()["id"])
            self.record.notes[key] = body
            self.mine.append(key)
        return response

    async def read(self) -> httpx.Response:
        tenant, note_id = self.pick.choice(self.mine)
        return await self.http.get(f"{self.url}/t/{tenant}/notes/{note_id}")

    async def list(self) -> httpx.Response:
        return await self.http.get(f"{self.url}/t/{self.tenant()}/notes", params={"limit": 20})

    async def edit(self) -> httpx.Response:
        (tenant, note_id), body = self.pick.choice(self.mine), f"edited {self.pick.randrange(10**9)}"
        response = await self.http.put(f"{self.url}/t/{tenant}/notes/{note_id}", json={"body": body})
        if response.status_code == 200:
            self.record.notes[(tenant, note_id)] = body
        return response

    async def delete(self) -> httpx.Response:
        tenant, note_id = key = self.mine.pop(self.pick.randrange(len(self.mine)))
        response = await self.http.delete(f"{self.url}/t/{tenant}/notes/{note_id}")
        if response.status_code == 204:
            self.record.notes.pop(key, None)
            self.record.deleted.add(key)
        return response

    async def tenant_health(self) -> httpx.Response:
        return await self.http.get(f"{self.url}/t/{self.tenant()}/health")

    async def health(self) -> httpx.Response:
        response = await self.http.get(f"{self.url}/health")
        self.record.health[self.record.phase].add(response.status_code)
        return response

    async def run(self, stop: asyncio.Event) -> None:
        weighted = [(self.read, 20), (self.list, 10), (self.edit, 10), (self.delete, 5)]
        weighted += [(self.tenant_health, 10), (self.health, 5)]
        requests, weights = [request for request, _ in weighted], [weight for _, weight in weighted]
        while not stop.is_set():
            started = time.perf_counter()
            try:
                if not self.mine or self.pick.random() < 0.4:
                    response = await self.create(self.tenant())
                else:
                    response = await self.pick.choices(requests, weights)[0]()
                self.record.seen(started, response.status_code)
            except httpx.HTTPError as error:
                self.record.errors.append(f"{self.record.phase}: {type(error).__name__}: {error}")
            await asyncio.sleep(self.pick.random() * 0.01)


async def run_phase(record: Record, phase: str, seconds: float) -> None:
    record.phase = phase
    await asyncio.sleep(seconds)


async def test_the_tenants_example_serves_every_tenant_through_a_remote_stalled_then_down_and_loses_no_note(
    remotes: list[tuple[SyncServer, DelayingProxy]], tmp_path: Path
) -> None:
    troubled_server, troubled_proxy = remotes[0]
    urls = [proxy.url for _, proxy in remotes]
    record = Record()
    app = tenants_app(tmp_path, urls)
    try:
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            await app.wait_healthy(client)
            # Every tenant once, so that each has its replica (a tenant's first open needs its remote).
            warm_up = Client(client, app.url, record, random.Random(-1))
            for tenant in TENANTS:
                assert (await warm_up.create(tenant)).status_code == 201, app.stderr()
            stop = asyncio.Event()
            clients = [
                asyncio.create_task(Client(client, app.url, record, random.Random(seed)).run(stop))
                for seed in range(CLIENTS)
            ]
            try:
                await run_phase(record, NORMAL, NORMAL_SECONDS)
                troubled_proxy.stall()
                await run_phase(record, STALLED, STALLED_SECONDS)
                troubled_server.stop()
                troubled_proxy.release()
                await run_phase(record, DOWN, DOWN_SECONDS)
                troubled_server.start()
                await run_phase(record, BACK, BACK_SECONDS)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*clients), CLIENT_TIMEOUT * 2)
            stats_before_sigterm = (await client.get(f"{app.url}/health")).json()

            # SIGTERM while the troubled remote stalls, with notes of its tenants not pushed yet.
            troubled_proxy.stall()
            troubled = [tenant for tenant in TENANTS if remote_of(tenant) == 0]
            for tenant in troubled[:3]:
                assert (await warm_up.create(tenant)).status_code == 201, app.stderr()
            exit_seconds = await asyncio.get_running_loop().run_in_executor(None, app.terminate)
        stderr = app.stderr()
        print(f"\n--- the app's stderr ---\n{stderr}--- end ---")
        title = f"{CLIENTS} clients, {len(TENANTS)} tenants, max_open {MAX_OPEN}"
        print(f"\n{latency_table(title, PHASES, record.latencies, record.statuses)}")
        print(f"pool before SIGTERM: {stats_before_sigterm}")
        print(f"SIGTERM under a stalled remote: exited in {exit_seconds:.2f} s")

        assert exit_seconds < EXIT_SECONDS, (exit_seconds, stderr)
        assert app.process.returncode in (0, -signal.SIGTERM), (app.process.returncode, stderr)
        assert "Traceback" not in stderr, stderr
        assert not record.errors, record.errors[:5]
        assert stats_before_sigterm["evictions"] > 0 and stats_before_sigterm["failed_opens"] == 0
        for phase in PHASES:
            # Local writes went on for every tenant in every phase; no 500, and 503 only from a tenant's /health.
            assert record.statuses[phase][201] > 0, (phase, dict(record.statuses[phase]))
            assert not {code for code in record.statuses[phase] if code >= 500} - {503}, dict(record.statuses[phase])
            assert record.health[phase] <= {200}, dict(record.health)

        # Restart with every remote back: each tenant's next open pushes what it has; every acknowledged note
        # reaches its tenant's server, once, with its last text.
        troubled_proxy.release()
        app = tenants_app(tmp_path, urls)
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            await app.wait_healthy(client)

            def on_servers() -> dict[tuple[str, str], tuple[str, int, int]]:
                found: dict[tuple[str, str], tuple[str, int, int]] = {}
                for number, (server, _) in enumerate(remotes):
                    for tenant, note_id, body, copies in server.execute(
                        "SELECT tenant, id, body, count(*) FROM notes GROUP BY tenant, id"
                    ):
                        found[(str(tenant), str(note_id))] = (str(body), int(str(copies)), number)
                return found

            deadline = time.monotonic() + START_SECONDS
            while True:
                for tenant in TENANTS:
                    assert (await client.get(f"{app.url}/t/{tenant}/notes")).status_code == 200, app.stderr()
                found = on_servers()
                if all(key in found and found[key][0] == body for key, body in record.notes.items()):
                    break
                assert time.monotonic() < deadline, f"{len(set(record.notes) - set(found))} notes missing"
                await asyncio.sleep(0.3)
        assert all(copies == 1 for _, copies, _ in found.values())
        assert all(number == remote_of(tenant) for (tenant, _), (_, _, number) in found.items())
        assert not record.deleted & set(found)
        assert app.terminate() < EXIT_SECONDS
        assert "Traceback" not in app.stderr(), app.stderr()
    finally:
        app.kill()
