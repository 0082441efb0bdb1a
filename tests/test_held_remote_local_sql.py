"""Local SQL never waits for a silent remote (issue 17, item 4), in the loop of a FastAPI-style service.

A second replica pushes a row every 0.2 s straight to the server; ours syncs in the background every second through a
proxy, and runs INSERT + commit + SELECT count(*) in a loop, directly and through SQLAlchemy. Then the proxy holds
every request for a while (the remote accepts and never answers). No operation may take longer than half a second, and
every row reaches the server once the remote answers again.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import AWAIT_SECONDS, LocalSpeed, wait_until
from turso.lib_sync_aio import ConnectionSync, connect_sync
from turso.sqlalchemy_sync_aio import background_sync_of

# What the issue allows any single local operation, however the remote behaves: counted beyond what a plain local
# database's write and commit, run beside it, takes at that moment (LocalSpeed), so a busy machine does not count.
LOCAL_SECONDS = 0.5
# The phases of the loop: the remote answers, then holds every request, then answers again.
NORMAL_SECONDS = 1.0
HELD_SECONDS = 3.0
# The background sync's interval, and how often the other replica pushes a row.
SYNC_INTERVAL = 1.0
OTHER_PUSH_SECONDS = 0.2
LOG_SCHEMA = "CREATE TABLE log(k TEXT, source TEXT)"

Operation = Callable[[str], Awaitable[None]]


async def other_replica_pushing(path: str, url: str, stop: asyncio.Event, keys: list[str]) -> None:
    """The second replica: a row every OTHER_PUSH_SECONDS, pushed straight to the server."""
    async with await asyncio.wait_for(connect_sync(path, url), AWAIT_SECONDS) as other:
        while not stop.is_set():
            key = f"other-{uuid.uuid4()}"
            await other.execute("INSERT INTO log VALUES (?, 'other')", (key,))
            await other.commit()
            await asyncio.wait_for(other.push(), AWAIT_SECONDS)
            keys.append(key)
            await asyncio.sleep(OTHER_PUSH_SECONDS)


async def run_phases(
    proxy: DelayingProxy, operation: Operation, local_speed: LocalSpeed
) -> tuple[list[tuple[float, float]], list[str]]:
    """Run `operation` in a loop through the normal, held and normal-again phases, each beside a local write; its
    durations with the local write's, and its keys."""
    durations: list[tuple[float, float]] = []
    keys: list[str] = []
    for held, seconds in ((False, NORMAL_SECONDS), (True, HELD_SECONDS), (False, NORMAL_SECONDS)):
        if held:
            proxy.stall()
        else:
            proxy.release()
        phase_ends = time.monotonic() + seconds
        while time.monotonic() < phase_ends:
            key = f"local-{uuid.uuid4()}"
            _, took, beside = await local_speed.beside(operation(key), write=True)
            durations.append((took, beside))
            keys.append(key)
            await asyncio.sleep(0)
    proxy.release()
    return durations, keys


@pytest.fixture
async def other_replica(sync_server: SyncServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[str]]:
    sync_server.execute(LOG_SCHEMA)
    stop = asyncio.Event()
    keys: list[str] = []
    path = str(tmp_path_factory.mktemp("other") / "other.db")
    task = asyncio.ensure_future(other_replica_pushing(path, sync_server.url, stop, keys))
    yield keys
    stop.set()
    await asyncio.wait_for(task, AWAIT_SECONDS)


def remote_keys(server: SyncServer, source: str) -> list[str]:
    return sorted(str(row[0]) for row in server.execute("SELECT k FROM log WHERE source = ?", (source,)))


async def test_local_sql_in_a_service_loop_never_waits_for_a_held_remote(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, other_replica: list[str], local_speed: LocalSpeed
) -> None:
    async with await asyncio.wait_for(connect_sync(replica_path, proxy.url), AWAIT_SECONDS) as conn:
        async with conn.sync_in_background(SYNC_INTERVAL):

            async def insert_commit_count(key: str) -> None:
                await conn.execute("INSERT INTO log VALUES (?, 'local')", (key,))
                await conn.commit()
                await conn.execute_fetchall("SELECT count(*) FROM log")

            durations, keys = await run_phases(proxy, insert_commit_count, local_speed)
            await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
            await expect_converged(conn, sync_server, keys, other_replica)
    took, beside = max(durations, key=lambda timing: timing[0] - timing[1])
    assert took < LOCAL_SECONDS + beside, f"a local operation took {took:.2f} s ({beside:.2f} s beside it)"


async def test_sqlalchemy_sessions_in_a_service_loop_never_wait_for_a_held_remote(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, other_replica: list[str], local_speed: LocalSpeed
) -> None:
    url = f"sqlite+aioturso_sync:///{replica_path}?remote_url={proxy.url}&sync_interval={SYNC_INTERVAL}"
    engine = create_async_engine(url)
    try:

        async def insert_commit_count(key: str) -> None:
            async with engine.begin() as connection:
                await connection.execute(text("INSERT INTO log VALUES (:k, 'local')"), {"k": key})
            async with engine.connect() as connection:
                await connection.execute(text("SELECT count(*) FROM log"))

        durations, keys = await run_phases(proxy, insert_commit_count, local_speed)
        background = await background_sync_of(engine)
        assert background is not None
        await asyncio.wait_for(background.sync_now(), AWAIT_SECONDS)
        assert await wait_until(lambda: remote_keys(sync_server, "local") == sorted(keys), AWAIT_SECONDS)
    finally:
        await engine.dispose()
    took, beside = max(durations, key=lambda timing: timing[0] - timing[1])
    assert took < LOCAL_SECONDS + beside, f"a session took {took:.2f} s ({beside:.2f} s beside it)"


async def expect_converged(conn: ConnectionSync, server: SyncServer, keys: list[str], others: list[str]) -> None:
    # Every local row on the server once, and the other replica's rows pushed so far in the replica.
    assert remote_keys(server, "local") == sorted(keys)
    pushed_by_the_other = set(others)  # before the pull: the other replica goes on pushing meanwhile
    await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
    rows = await asyncio.wait_for(conn.execute_fetchall("SELECT k FROM log WHERE source = 'other'"), AWAIT_SECONDS)
    assert pushed_by_the_other <= {str(row[0]) for row in rows}


async def test_a_statements_io_hook_never_waits_for_a_request_in_flight(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    # Every sync connection has the driver's extra_io hook, called whenever a statement yields IO: it must return at
    # once while the sync lane waits on the remote (it once waited for a lock the lane held across its request).
    sync_server.execute(LOG_SCHEMA)
    async with await asyncio.wait_for(connect_sync(replica_path, proxy.url), AWAIT_SECONDS) as conn:
        proxy.stall()
        pull = asyncio.ensure_future(conn.pull())
        assert await wait_until(lambda: proxy.held >= 1, AWAIT_SECONDS)
        blocking = conn._conn  # pyright: ignore[reportPrivateUsage]
        assert blocking is not None and blocking.extra_io is not None
        hook = blocking.extra_io

        def time_the_hook() -> float:
            started = time.monotonic()
            hook()
            return time.monotonic() - started

        took = await asyncio.wait_for(conn._run(time_the_hook), AWAIT_SECONDS)  # pyright: ignore[reportPrivateUsage]
        assert took < 0.1, f"the statement IO hook waited {took:.2f} s for the request in flight"
        assert not pull.done()
        proxy.release()
        assert await asyncio.wait_for(pull, AWAIT_SECONDS) is False
