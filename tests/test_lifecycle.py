"""Lifecycle of a ConnectionSync: opening, closing, failed opens, use after close, and where things run."""

import asyncio
import importlib.metadata
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Optional

import pytest

import turso
import turso.aio.sync
import turso.lib_sync
import turso.lib_sync_aio
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer, free_port
from tests.helpers import (
    AWAIT_SECONDS,
    CHECKOUT,
    UNDER_TEST,
    bounded,
    pool_thread_serves,
    turso_threads,
    wait_until,
)
from turso.lib_sync_aio import ConnectionSync, connect_sync

# The version label of `make wheel`'s builds (scripts/build_wheels.py).
WHEEL_VERSION = "0.8.3+syncaio.1"


def test_public_entry_resolves_to_our_module_from_the_copy_under_test() -> None:
    assert turso.aio.sync.connect is connect_sync
    module_file = Path(turso.lib_sync_aio.__file__).resolve()
    ours = CHECKOUT / "turso" / "lib_sync_aio.py"
    if UNDER_TEST == "installed":
        # The wheel as a user installs it: the module sits in site-packages, belongs to our pyturso build, is our
        # code (not the stock module), and nothing on the path leads back to the checkout.
        site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
        assert module_file == site_packages / "turso" / "lib_sync_aio.py"
        assert module_file.with_suffix(".pyi").is_file()
        assert (site_packages / "turso" / "py.typed").is_file()
        distribution = importlib.metadata.distribution("pyturso")
        assert distribution.version == WHEEL_VERSION
        assert module_file.read_bytes() == ours.read_bytes()
        assert module_file.with_suffix(".pyi").read_bytes() == ours.with_suffix(".pyi").read_bytes()
        if (CHECKOUT / "turso" / "sqlalchemy_sync_aio.py").is_file():
            # Our SQLAlchemy dialect ships with its entry point, next to the driver's own dialects.
            entry_points = distribution.entry_points.select(group="sqlalchemy.dialects")
            dialects = {entry.name: entry.value for entry in entry_points}
            assert dialects["sqlite.aioturso_sync"] == "turso.sqlalchemy_sync_aio:AioTursoSyncDialect"
            assert "sqlite.aioturso" in dialects
        assert CHECKOUT not in {Path(entry).resolve() for entry in sys.path}
    else:
        assert UNDER_TEST == "checkout", f"unknown TURSO_SYNC_AIO_UNDER_TEST={UNDER_TEST!r}"
        assert module_file == ours


async def test_await_opens_and_returns_the_sync_connection(sync_server: SyncServer, replica_path: str) -> None:
    baseline = turso_threads()
    conn = await connect_sync(replica_path, sync_server.url)
    try:
        assert isinstance(conn, ConnectionSync)
        assert pool_thread_serves(baseline)
        assert await conn.pull() is False
    finally:
        await conn.close()
    assert turso_threads() == baseline


async def test_connect_starts_no_thread_until_awaited(sync_server: SyncServer, replica_path: str) -> None:
    baseline = turso_threads()
    conn = connect_sync(replica_path, sync_server.url)
    assert turso_threads() == baseline
    assert not Path(replica_path).exists()
    await conn.close()
    with pytest.raises(turso.ProgrammingError, match="closed"):
        await conn


async def test_blocking_connection_is_created_on_the_worker_thread(
    sync_server: SyncServer, replica_path: str
) -> None:
    opened_on: list[threading.Thread] = []

    def connector() -> turso.lib_sync.ConnectionSync:
        opened_on.append(threading.current_thread())
        # The blocking driver's own signature has one parameter of unknown type (its native cipher enum).
        return turso.lib_sync.connect_sync(replica_path, sync_server.url)  # pyright: ignore[reportUnknownMemberType]

    async with ConnectionSync(connector) as conn:
        assert await conn.pull() is False
        worker = opened_on[0]
        assert worker is not threading.main_thread()
        assert worker in turso_threads()
    assert opened_on == [worker]
    assert not worker.is_alive()


async def test_async_with_on_an_awaited_connection_opens_once(sync_server: SyncServer, replica_path: str) -> None:
    baseline = turso_threads()
    async with await connect_sync(replica_path, sync_server.url) as conn:
        assert pool_thread_serves(baseline)
        await conn.push()
    assert turso_threads() == baseline


async def test_close_is_idempotent_and_the_worker_has_exited_when_it_returns(
    sync_server: SyncServer, replica_path: str
) -> None:
    baseline = turso_threads()
    conn = await connect_sync(replica_path, sync_server.url)
    await conn.close()
    assert turso_threads() == baseline  # no waiting: close() returns after the thread is gone
    await conn.close()
    assert turso_threads() == baseline


async def test_async_with_closes_when_the_body_raises(sync_server: SyncServer, replica_path: str) -> None:
    baseline = turso_threads()
    conn = connect_sync(replica_path, sync_server.url)
    with pytest.raises(RuntimeError, match="body failed"):
        async with conn:
            await conn.execute("CREATE TABLE t(x)")
            raise RuntimeError("body failed")
    assert turso_threads() == baseline
    with pytest.raises(turso.ProgrammingError):
        await conn.pull()


async def test_failed_connect_raises_the_driver_error_and_leaves_no_thread(replica_path: str) -> None:
    baseline = turso_threads()
    nobody_listens = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(turso.DatabaseError, match="Connection refused"):
        await connect_sync(replica_path, nobody_listens)
    assert turso_threads() == baseline
    with pytest.raises(turso.DatabaseError):
        async with connect_sync(replica_path, nobody_listens):
            pytest.fail("the body must not run when opening failed")
    assert turso_threads() == baseline


async def test_bad_url_raises_from_the_await_and_leaves_no_thread(replica_path: str) -> None:
    baseline = turso_threads()
    conn = connect_sync(replica_path, "ftp://127.0.0.1/db")
    with pytest.raises(turso.ProgrammingError, match="not a sync URL"):
        await conn
    assert turso_threads() == baseline


@pytest.mark.parametrize("operation", ["pull", "push", "checkpoint", "stats", "execute", "commit", "rollback"])
async def test_every_operation_after_close_raises_programming_error(
    sync_server: SyncServer, replica_path: str, operation: str
) -> None:
    conn = await connect_sync(replica_path, sync_server.url)
    await conn.close()
    calls = {
        "pull": conn.pull,
        "push": conn.push,
        "checkpoint": conn.checkpoint,
        "stats": conn.stats,
        "execute": lambda: conn.execute("SELECT 1"),
        "commit": conn.commit,
        "rollback": conn.rollback,
    }
    with pytest.raises(turso.ProgrammingError, match="closed"):
        await calls[operation]()


async def test_cursor_and_settings_after_close_raise_programming_error(
    sync_server: SyncServer, replica_path: str
) -> None:
    conn = await connect_sync(replica_path, sync_server.url)
    cursor = conn.cursor()
    await conn.close()
    with pytest.raises(turso.ProgrammingError):
        await cursor.execute("SELECT 1")
    with pytest.raises(turso.ProgrammingError):
        conn.cursor()
    with pytest.raises(turso.ProgrammingError):
        conn.isolation_level = None


async def test_operations_before_opening_raise_programming_error(replica_path: str) -> None:
    conn = connect_sync(replica_path, "http://127.0.0.1:1")
    with pytest.raises(turso.ProgrammingError, match="not open"):
        await conn.pull()
    with pytest.raises(turso.ProgrammingError, match="not open"):
        await conn.execute("SELECT 1")


async def test_close_called_twice_on_a_connection_never_opened_does_nothing(replica_path: str) -> None:
    conn = connect_sync(replica_path, "http://127.0.0.1:1")
    await conn.close()
    await conn.close()
    with pytest.raises(turso.ProgrammingError, match="closed"):
        await conn


@pytest.mark.parametrize("when", ["at once", "while a pull waits on a stalled remote", "while background sync stops"])
async def test_a_cancelled_close_still_ends_its_work_and_keeps_the_replica_until_it_has(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str, when: str
) -> None:
    baseline = turso_threads()
    conn = await bounded(connect_sync(replica_path, proxy.url))
    await bounded(conn.execute("CREATE TABLE t(k TEXT)"))
    await bounded(conn.execute("INSERT INTO t VALUES ('kept')"))
    await bounded(conn.commit())
    pulling: "Optional[asyncio.Future[bool]]" = None
    if when == "while background sync stops":
        proxy.stall()
        conn.sync_in_background(0.05)
        assert await wait_until(lambda: proxy.held >= 1), "no round reached the stalled remote"
    elif when != "at once":
        proxy.stall()
        pulling = asyncio.ensure_future(conn.pull())
        assert await wait_until(lambda: proxy.held >= 1), "the pull never reached the stalled remote"
    closing = asyncio.ensure_future(conn.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    try:
        # The replica is not opened twice meanwhile: the new open waits until the old connection has let go of it,
        # which its last job does, after its sync operation has ended.
        again = await bounded(connect_sync(replica_path, proxy.url))
        assert pool_thread_serves(baseline)
        assert await bounded(again.execute_fetchall("SELECT k FROM t")) == [("kept",)]
        await bounded(again.close())
    finally:
        proxy.release()
    if pulling is not None:
        with pytest.raises(turso.ProgrammingError, match="closed"):
            await bounded(pulling)
    assert turso_threads() == baseline
    await bounded(conn.close())  # after a cancelled close, close() is still safe to call


async def test_a_cancelled_close_lets_go_of_the_replica_only_once_the_lane_has_ended(
    sync_server: SyncServer, replica_path: str
) -> None:
    # The lane is held 0.3 s by an auth_token callable that blocks (aborting the request cannot end that early).
    baseline = turso_threads()
    armed = threading.Event()
    token_called = threading.Event()

    def slow_token() -> str:
        if armed.is_set() and not token_called.is_set():
            token_called.set()
            threading.Event().wait(0.3)
        return "token"

    conn = await bounded(connect_sync(replica_path, sync_server.url, auth_token=slow_token))
    armed.set()
    pulling = asyncio.ensure_future(conn.pull())
    assert await wait_until(token_called.is_set), "the pull never asked for its token"
    closing = asyncio.ensure_future(conn.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    async with connect_sync(replica_path, sync_server.url) as again:
        assert await bounded(again.execute_fetchall("SELECT 1")) == [(1,)]
    await bounded(asyncio.gather(pulling, return_exceptions=True))
    assert await wait_until(lambda: turso_threads() == baseline)


def open_on_its_own_loop(path: str, url: str) -> "tuple[ConnectionSync, asyncio.AbstractEventLoop, threading.Thread]":
    """A connection opened on an event loop that runs on a thread of its own, left running."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-other-loop", daemon=True)
    thread.start()
    opened = asyncio.run_coroutine_threadsafe(connect_sync(path, url).__aenter__(), loop)
    return opened.result(AWAIT_SECONDS), loop, thread


async def test_close_from_another_event_loop_raises_and_the_connection_stays_usable(
    sync_server: SyncServer, replica_path: str
) -> None:
    baseline = turso_threads()
    conn, loop, thread = open_on_its_own_loop(replica_path, sync_server.url)
    try:
        with pytest.raises(turso.ProgrammingError, match="event loop that opened it"):
            await bounded(conn.close())
        on_its_loop = asyncio.run_coroutine_threadsafe(conn.execute_fetchall("SELECT 1"), loop)
        assert on_its_loop.result(AWAIT_SECONDS) == [(1,)]
    finally:
        asyncio.run_coroutine_threadsafe(conn.close(), loop).result(AWAIT_SECONDS)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(AWAIT_SECONDS)
        loop.close()
    assert turso_threads() == baseline


async def test_close_after_the_loop_that_opened_it_has_closed_returns_with_no_thread_left(
    sync_server: SyncServer, replica_path: str
) -> None:
    baseline = turso_threads()
    conn, loop, thread = open_on_its_own_loop(replica_path, sync_server.url)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(AWAIT_SECONDS)
    loop.close()
    await bounded(conn.close())
    assert turso_threads() == baseline
    # The replica's path is free again.
    async with connect_sync(replica_path, sync_server.url) as again:
        assert await bounded(again.execute_fetchall("SELECT 1")) == [(1,)]
