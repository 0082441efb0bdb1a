"""Fixtures: a real sync server per test, a replica path, and a guard that fails any test leaving a worker behind."""

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.dialects import registry

from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import UNDER_TEST, WORKER_EXIT_SECONDS, LocalSpeed, turso_threads

# In the checkout the dialect is not installed with an entry point: register it the way SQLAlchemy documents, for every
# test module. Against the installed wheel (`make test-wheel`) nothing is registered, so the URL must resolve through
# the wheel's `sqlalchemy.dialects` entry point.
if UNDER_TEST == "checkout":
    registry.register("sqlite.aioturso_sync", "turso.sqlalchemy_sync_aio", "AioTursoSyncDialect")


@pytest.fixture
def sync_server(tmp_path: Path) -> Iterator[SyncServer]:
    """A fresh `tursodb --sync-server` on a free loopback port, its data in a file so that it survives a restart."""
    with SyncServer(tmp_path / "remote.db", relay=True) as server:
        yield server


@pytest.fixture
def proxy(sync_server: SyncServer) -> Iterator[DelayingProxy]:
    """The sync server behind a loopback proxy that forwards at once; tests slow it down or stall it as they need."""
    with DelayingProxy(sync_server.port) as proxy:
        yield proxy


@pytest.fixture
def replica_path(tmp_path: Path) -> str:
    """Where a test's local replica lives (the file does not exist yet)."""
    return str(tmp_path / "replica.db")


@pytest.fixture
async def local_speed(tmp_path: Path) -> AsyncIterator[LocalSpeed]:
    """A plain local database beside the test's replica, to time local statements against (tests/helpers.py)."""
    speed = await LocalSpeed.open(str(tmp_path / "local-speed.db"))
    try:
        yield speed
    finally:
        await speed.close()


@pytest.fixture(autouse=True)
def no_worker_left_behind() -> Iterator[None]:
    """Fail the test if it leaves a turso worker thread running that was not there before it."""
    before = turso_threads()
    yield
    deadline = time.monotonic() + WORKER_EXIT_SECONDS
    while (leaked := turso_threads() - before) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not leaked, f"worker threads left running after the test: {sorted(t.name for t in leaked)}"
