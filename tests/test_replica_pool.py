"""ReplicaPool: a database per tenant, replicas opened on demand, at most max_open, pushed before they close.

Against real `tursodb --sync-server`s on 127.0.0.1. Tenants whose remote must misbehave reach it through testkit's
DelayingProxy (`stall()` holds every request byte, `release()` lets them go on); the others reach the server directly.
Every tenant's replica is a replica of the same remote database, so rows carry the tenant in their key, and "nothing
lost, nothing doubled" is: each acknowledged key is on the server exactly once.
"""

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, Optional

import pytest

import turso
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import (
    AWAIT_SECONDS,
    bounded,
    local_keys,
    new_threads,
    remote_keys,
    turso_threads,
    wait_until,
)
from turso.lib_sync_aio import (
    POOL_CLOSE_MARGIN_SECONDS,
    ConnectionSync,
    PoolTimeout,
    ReplicaPool,
    ReplicaPoolStats,
    worker_pool_stats,
)

# A short deadline for the requests of a replica whose remote is held, so that its push fails quickly.
REQUEST_TIMEOUT = 0.5
# Scheduling slack for the time bounds below (the machine running the suite may be busy).
SLACK = 1.0


class Tenants:
    """The tenants of a test: their replica files under one folder, each reaching `server` directly unless it is
    routed through a proxy (`behind`)."""

    def __init__(self, folder: Path, server: SyncServer) -> None:
        self.folder = folder
        self.server = server
        self.behind: dict[str, DelayingProxy] = {}

    def path_for(self, tenant: str) -> str:
        return str(self.folder / f"{tenant}.db")

    def remote_url_for(self, tenant: str) -> str:
        proxy = self.behind.get(tenant)
        return proxy.url if proxy is not None else self.server.url

    def pool(self, **settings: Any) -> ReplicaPool:
        options: dict[str, Any] = {"max_open": 10, "idle_seconds": None, "sync_interval": None}
        options.update(settings)
        return ReplicaPool(path_for=self.path_for, remote_url_for=self.remote_url_for, **options)


@pytest.fixture
def tenants(tmp_path: Path, sync_server: SyncServer) -> Tenants:
    """Tenants of the test's sync server, whose database has the table t(k, v): no key, so that a row pushed twice
    shows twice."""
    sync_server.execute("CREATE TABLE t(k TEXT, v INTEGER)")
    folder = tmp_path / "tenants"
    folder.mkdir()
    return Tenants(folder, sync_server)


async def write(pool: ReplicaPool, tenant: str, *keys: str) -> None:
    """Commit one row per key in the tenant's replica, in one transaction() block."""
    async with pool.connection(tenant) as conn:
        async with conn.transaction():
            for key in keys:
                await conn.execute("INSERT INTO t VALUES (?, ?)", (key, 0))


async def stats_when(pool: ReplicaPool, condition: Callable[[ReplicaPoolStats], bool]) -> ReplicaPoolStats:
    """The pool's stats once `condition` holds of them (the test fails if it does not within the await bound)."""
    assert await wait_until(lambda: condition(pool.get_stats()), AWAIT_SECONDS), pool.get_stats()
    return pool.get_stats()


def status_healthy(pool: ReplicaPool, tenant: str) -> bool:
    """Whether the tenant's replica is open with a healthy background sync."""
    status = pool.sync_status(tenant)
    return status is not None and status.healthy


class Holder:
    """A task that holds a tenant's connection until `release()`."""

    def __init__(self, pool: ReplicaPool, tenant: str) -> None:
        self.held = asyncio.Event()
        self.done = asyncio.Event()
        self.connection: Optional[ConnectionSync] = None
        self.task = asyncio.create_task(self._hold(pool, tenant))

    async def _hold(self, pool: ReplicaPool, tenant: str) -> None:
        async with pool.connection(tenant) as conn:
            self.connection = conn
            self.held.set()
            await self.done.wait()

    async def __aenter__(self) -> "Holder":
        await bounded(self.held.wait())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()
        await bounded(self.task)

    def release(self) -> None:
        self.done.set()


@pytest.fixture
async def proxied(tenants: Tenants) -> AsyncIterator[Callable[..., DelayingProxy]]:
    """Route a tenant through a proxy of its own in front of the test's server: `proxied("acme")`."""
    proxies: list[DelayingProxy] = []

    def route(tenant: str, **settings: Any) -> DelayingProxy:
        proxy = DelayingProxy(tenants.server.port, **settings)
        proxies.append(proxy)
        tenants.behind[tenant] = proxy
        return proxy

    yield route
    for proxy in proxies:
        proxy.close()


# --- opened on demand, shared -----------------------------------------------------------------------------------------


async def test_tasks_asking_for_one_tenant_at_once_share_one_open_and_one_connection(tenants: Tenants) -> None:
    baseline = turso_threads()
    async with tenants.pool() as pool:
        seen: list[ConnectionSync] = []

        async def use() -> None:
            async with pool.connection("acme") as conn:
                seen.append(conn)
                await conn.execute_fetchall("SELECT 1")

        await bounded(asyncio.gather(*(use() for _ in range(20))))
        stats = pool.get_stats()
        assert (stats.opens, stats.open, stats.requests) == (1, 1, 20)
        assert len({id(conn) for conn in seen}) == 1
        assert 1 <= len(new_threads(baseline)) <= worker_pool_stats().max_threads
    assert pool.get_stats().open == 0


async def test_a_connection_is_shared_by_its_holders_and_writes_in_transaction_blocks_stay_their_own(
    tenants: Tenants,
) -> None:
    async with tenants.pool() as pool:

        async def write_or_roll_back(number: int) -> None:
            async with pool.connection("acme") as conn:
                try:
                    async with conn.transaction():
                        await conn.execute("INSERT INTO t VALUES (?, ?)", (f"acme-{number}", number))
                        if number % 2:
                            raise LookupError("roll this one back")
                except LookupError:
                    pass

        await bounded(asyncio.gather(*(write_or_roll_back(number) for number in range(10))))
        async with pool.connection("acme") as conn:
            assert await local_keys(conn) == [f"acme-{number}" for number in range(0, 10, 2)]


# --- a cap ------------------------------------------------------------------------------------------------------------


async def test_past_max_open_the_least_recently_used_idle_replica_closes_to_make_room(tenants: Tenants) -> None:
    async with tenants.pool(max_open=2) as pool:
        await write(pool, "a", "a-1")
        await write(pool, "b", "b-1")
        await write(pool, "a", "a-2")  # b is now the least recently used
        await bounded(write(pool, "c", "c-1"))
        stats = pool.get_stats()
        assert (stats.opens, stats.evictions, stats.open) == (3, 1, 2)
        await write(pool, "a", "a-3")
        assert pool.get_stats().opens == 3, "a was used more recently than b: it stayed open"
        await bounded(write(pool, "b", "b-2"))
        assert pool.get_stats().opens == 4, "b was closed to make room for c, and opened again"
        assert pool.get_stats().open <= 2


async def test_a_held_replica_is_never_closed_and_a_new_tenant_waits_until_one_is_given_back(
    tenants: Tenants,
) -> None:
    async with tenants.pool(max_open=1) as pool:
        async with Holder(pool, "a") as holder:
            waiter = asyncio.create_task(write(pool, "b", "b-1"))
            stats = await stats_when(pool, lambda stats: stats.waiting == 1)
            assert (stats.open, stats.held, stats.evictions) == (1, 1, 0)
            assert holder.connection is not None
            # The held connection works while another tenant waits for its slot.
            assert await bounded(holder.connection.execute_fetchall("SELECT 1")) == [(1,)]
            assert not waiter.done()
        await bounded(waiter)
        stats = pool.get_stats()
        assert (stats.evictions, stats.opens, stats.waiting, stats.waits) == (1, 2, 0, 2)  # each waited for its open


async def test_waiting_longer_than_wait_timeout_raises_pool_timeout_and_leaves_nothing_behind(
    tenants: Tenants,
) -> None:
    async with tenants.pool(max_open=1, wait_timeout=0.3) as pool:
        async with Holder(pool, "a"):
            started = time.monotonic()
            with pytest.raises(PoolTimeout, match=r"'b' within 0.3 s: all max_open=1 replicas") as raised:
                await bounded(write(pool, "b", "b-1"))
            assert time.monotonic() - started < 0.3 + SLACK
            assert isinstance(raised.value, turso.OperationalError)
            stats = pool.get_stats()
            assert (stats.waiting, stats.open, stats.timeouts, stats.opens) == (0, 1, 1, 1)
            # A shorter bound for one call.
            with pytest.raises(PoolTimeout, match="within 0.05 s"):
                async with pool.connection("b", wait_timeout=0.05):
                    pass
        # Given back, "a" stays open: nobody waits for its slot any more.
        assert (pool.get_stats().open, pool.get_stats().evictions) == (1, 0)
        await bounded(write(pool, "b", "b-1"))


# --- nothing left behind when a replica closes ------------------------------------------------------------------------


async def test_an_evicted_replica_pushes_its_writes_before_it_closes(tenants: Tenants) -> None:
    async with tenants.pool(max_open=1) as pool:
        await write(pool, "a", "a-1", "a-2")
        await bounded(write(pool, "b", "b-1"))
        stats = pool.get_stats()
        assert (stats.evictions, stats.pushes_at_close, stats.failed_pushes_at_close) == (1, 1, 0)
        assert remote_keys(tenants.server) == ["a-1", "a-2"]


async def test_idle_replicas_close_after_idle_seconds_and_push_first(tenants: Tenants) -> None:
    baseline = turso_threads()
    async with tenants.pool(idle_seconds=0.3) as pool:
        await write(pool, "a", "a-1")
        await write(pool, "b", "b-1")
        stats = await stats_when(pool, lambda stats: stats.open == 0)
        assert (stats.idle_closes, stats.pushes_at_close) == (2, 2)
        assert remote_keys(tenants.server) == ["a-1", "b-1"]
        assert await wait_until(lambda: not new_threads(baseline))


async def test_an_eviction_while_the_remote_is_down_keeps_the_writes_and_they_reach_the_server_once_it_is_back(
    tenants: Tenants, proxied: Callable[..., DelayingProxy], caplog: pytest.LogCaptureFixture
) -> None:
    # The case: a replica with unpushed writes is evicted while its remote is down, first silent (stalled),
    # then cut, then refusing (stopped); then the remote is back. Nothing is lost, nothing is doubled.
    caplog.set_level(logging.WARNING, logger="turso.lib_sync_aio")
    proxy = proxied("a")
    async with tenants.pool(max_open=1, request_timeout=REQUEST_TIMEOUT) as pool:
        await write(pool, "a", "a-1", "a-2")
        proxy.stall()
        started = time.monotonic()
        await bounded(write(pool, "b", "b-1"))  # evicts "a": its push waits for the held remote, then fails
        assert time.monotonic() - started < REQUEST_TIMEOUT + SLACK
        assert pool.get_stats().failed_pushes_at_close == 1
        assert any(
            "'a'" in record.getMessage() and "without pushing" in record.getMessage() for record in caplog.records
        )

        # Reopened while the remote is still silent: local SQL at local speed, with the writes of before.
        async with pool.connection("a") as conn:
            assert await asyncio.wait_for(local_keys(conn), REQUEST_TIMEOUT) == ["a-1", "a-2"]
            async with conn.transaction():
                await asyncio.wait_for(conn.execute("INSERT INTO t VALUES ('a-3', 0)"), REQUEST_TIMEOUT)
        proxy.cut()
        tenants.server.stop()
        proxy.release()
        await bounded(write(pool, "b", "b-2"))  # evicts "a" again: the remote refuses now
        assert pool.get_stats().failed_pushes_at_close == 2

        tenants.server.start()
        # The next open of "a" pushes first (here: without background sync, a push of the pool's own).
        async with pool.connection("a"):
            pass
        assert await wait_until(lambda: remote_keys(tenants.server) == ["a-1", "a-2", "a-3", "b-1", "b-2"])
    assert pool.get_stats().failed_pushes_at_close == 2
    assert remote_keys(tenants.server) == ["a-1", "a-2", "a-3", "b-1", "b-2"]


# --- bounded shutdown -------------------------------------------------------------------------------------------------


async def test_pool_close_is_bounded_with_a_silent_remote_leaves_no_thread_and_says_what_it_left_unpushed(
    tenants: Tenants, proxied: Callable[..., DelayingProxy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="turso.lib_sync_aio")
    baseline = turso_threads()
    silent = [f"silent-{number}" for number in range(3)]
    proxies = [proxied(tenant) for tenant in silent]
    # A long request_timeout: only close()'s own bound can end the pushes in time.
    pool = tenants.pool(request_timeout=30.0, sync_interval=0.2)
    async with pool:
        for tenant in [*silent, "fine"]:
            await write(pool, tenant, f"{tenant}-1")
        for proxy in proxies:
            proxy.stall()
        for tenant in [*silent, "fine"]:
            await write(pool, tenant, f"{tenant}-2")
        started = time.monotonic()
        left = await bounded(pool.close(timeout=0.5))
        took = time.monotonic() - started
    assert took < 0.5 + POOL_CLOSE_MARGIN_SECONDS + SLACK, took
    assert left == frozenset(silent)
    assert pool.get_stats().open == 0
    assert not new_threads(baseline)
    assert any("unpushed" in record.getMessage() and "silent-0" in record.getMessage() for record in caplog.records)
    assert {"fine-1", "fine-2"} <= set(remote_keys(tenants.server))
    # Closing again returns the same report; the pool takes no more requests.
    assert await bounded(pool.close()) == left
    with pytest.raises(turso.ProgrammingError, match="closed"):
        async with pool.connection("fine"):
            pass

    # The remote back: a new pool's opens push what the first one left, once.
    for proxy in proxies:
        proxy.release()
    async with tenants.pool(sync_interval=0.2) as pool:
        for tenant in silent:
            async with pool.connection(tenant):
                pass
        expected = sorted(f"{tenant}-{number}" for tenant in [*silent, "fine"] for number in (1, 2))
        assert await wait_until(lambda: remote_keys(tenants.server) == expected, AWAIT_SECONDS)


async def test_pool_close_waits_for_held_replicas_until_its_timeout_then_closes_them(
    tenants: Tenants, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="turso.lib_sync_aio")
    baseline = turso_threads()
    pool = tenants.pool()
    async with pool:
        given_back = Holder(pool, "given-back")
        kept = Holder(pool, "kept")
        await bounded(given_back.held.wait())
        await bounded(kept.held.wait())
        async with pool.connection("given-back") as conn:
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES ('given-back-1', 0)")
        closing = asyncio.create_task(pool.close(timeout=0.5))
        await asyncio.sleep(0.1)
        given_back.release()
        started = time.monotonic()
        left = await bounded(closing)
        assert time.monotonic() - started < 0.5 + POOL_CLOSE_MARGIN_SECONDS + SLACK
    assert left == frozenset({"kept"})
    assert remote_keys(tenants.server) == ["given-back-1"]
    assert any("still held" in record.getMessage() and "'kept'" in record.getMessage() for record in caplog.records)
    assert kept.connection is not None
    with pytest.raises(turso.ProgrammingError):
        await bounded(kept.connection.execute("SELECT 1"))
    kept.release()
    await bounded(asyncio.gather(given_back.task, kept.task))
    assert not new_threads(baseline)


# --- one tenant's trouble stays its own -------------------------------------------------------------------------------


async def test_a_failed_open_raises_to_every_caller_waiting_for_it_and_the_next_request_tries_again(
    tenants: Tenants,
) -> None:
    baseline = turso_threads()
    tenants.server.stop()
    async with tenants.pool() as pool:
        results = await bounded(
            asyncio.gather(*(write(pool, "new", f"new-{number}") for number in range(5)), return_exceptions=True)
        )
        assert all(isinstance(result, turso.OperationalError) for result in results), results
        assert len({id(result) for result in results}) == 1, "the five callers shared one open"
        stats = pool.get_stats()
        assert (stats.failed_opens, stats.opens, stats.open) == (1, 0, 0)
        assert not new_threads(baseline)
        assert not os.path.exists(tenants.path_for("new"))
        tenants.server.start()
        await bounded(write(pool, "new", "new-1"))
        assert (pool.get_stats().failed_opens, pool.get_stats().opens) == (1, 1)


async def test_a_tenant_whose_remote_is_silent_keeps_local_sql_the_others_sync_and_health_tells_them_apart(
    tenants: Tenants, proxied: Callable[..., DelayingProxy]
) -> None:
    proxy = proxied("stuck")
    async with tenants.pool(sync_interval=0.2, request_timeout=REQUEST_TIMEOUT) as pool:
        await write(pool, "stuck", "stuck-0")
        await write(pool, "fine", "fine-0")
        proxy.stall()
        for number in range(1, 20):
            # Local writes of the stuck tenant never wait for its remote.
            await asyncio.wait_for(write(pool, "stuck", f"stuck-{number}"), REQUEST_TIMEOUT)
            await asyncio.wait_for(write(pool, "fine", f"fine-{number}"), REQUEST_TIMEOUT)
        fine = {f"fine-{number}" for number in range(20)}
        assert await wait_until(lambda: fine <= set(remote_keys(tenants.server)))
        # What a /health reads: each open tenant's background sync status.
        assert await wait_until(lambda: not status_healthy(pool, "stuck"))
        statuses = pool.sync_statuses()
        assert set(statuses) == {"fine", "stuck"}
        assert statuses["fine"].healthy and statuses["fine"].rounds >= 1
        assert statuses["stuck"].consecutive_failures >= 1 or statuses["stuck"].round_started_unix_time is not None
        assert pool.sync_status("never-opened") is None
        proxy.release()
        stuck = {f"stuck-{number}" for number in range(20)}
        assert await wait_until(lambda: stuck <= set(remote_keys(tenants.server)), AWAIT_SECONDS)
    assert pool.sync_statuses() == {}


async def test_a_request_for_a_replica_still_pushing_before_its_close_takes_it_back(
    tenants: Tenants, proxied: Callable[..., DelayingProxy]
) -> None:
    proxy = proxied("a")
    async with tenants.pool(idle_seconds=0.2, sync_interval=5.0, request_timeout=5.0) as pool:
        await write(pool, "a", "a-1")
        async with pool.connection("a") as first:
            pass
        proxy.stall()
        await write(pool, "a", "a-2")
        # Idle: it closes, and its push waits for the held remote.
        await stats_when(pool, lambda stats: stats.closing == 1)
        started = time.monotonic()
        async with pool.connection("a") as conn:
            assert time.monotonic() - started < REQUEST_TIMEOUT
            assert conn is first
            assert await bounded(local_keys(conn)) == ["a-1", "a-2"]
        stats = pool.get_stats()
        assert (stats.reclaimed, stats.opens, stats.closing, stats.failed_pushes_at_close) == (1, 1, 0, 0)
        status = pool.sync_status("a")
        assert status is not None and status.running
        proxy.release()
        assert await wait_until(lambda: remote_keys(tenants.server) == ["a-1", "a-2"], AWAIT_SECONDS)


# --- opens never stall the loop ---------------------------------------------------------------------------------------


async def test_a_burst_of_tenants_opens_at_most_max_concurrent_opens_at_once_and_every_request_is_served(
    tenants: Tenants,
) -> None:
    async with tenants.pool(max_open=60, max_concurrent_opens=4, wait_timeout=AWAIT_SECONDS * 3) as pool:
        most_opening = 0
        lateness: list[float] = []
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal most_opening
            loop = asyncio.get_running_loop()
            while not done.is_set():
                most_opening = max(most_opening, pool.get_stats().opening)
                before = loop.time()
                await asyncio.sleep(0.005)
                lateness.append(loop.time() - before - 0.005)

        watcher = asyncio.create_task(watch())
        await asyncio.wait_for(
            asyncio.gather(*(write(pool, f"t{number}", f"t{number}-1") for number in range(60))), AWAIT_SECONDS * 3
        )
        done.set()
        await watcher
        stats = pool.get_stats()
        assert (stats.opens, stats.open, stats.failed_opens) == (60, 60, 0)
        assert most_opening == 4
        lateness.sort()
        print(
            f"\nloop lateness during 60 opens, 4 at a time: p50 {lateness[len(lateness) // 2] * 1000:.1f} ms, "
            f"max {lateness[-1] * 1000:.1f} ms"
        )


# --- cancellation -----------------------------------------------------------------------------------------------------


async def test_a_request_cancelled_while_waiting_for_a_slot_leaves_nothing_behind(tenants: Tenants) -> None:
    async with tenants.pool(max_open=1) as pool:
        async with Holder(pool, "a"):
            waiter = asyncio.create_task(write(pool, "b", "b-1"))
            await stats_when(pool, lambda stats: stats.waiting == 1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await bounded(waiter)
            assert pool.get_stats().waiting == 0
        # Nobody wants "b" any more: "a" stays open, "b" never opens.
        await asyncio.sleep(0.1)
        stats = pool.get_stats()
        assert (stats.open, stats.opens, stats.evictions) == (1, 1, 0)
        assert not os.path.exists(tenants.path_for("b"))


async def test_a_request_cancelled_while_its_open_runs_lets_the_open_finish_into_an_idle_replica(
    tenants: Tenants, proxied: Callable[..., DelayingProxy]
) -> None:
    baseline = turso_threads()
    proxy = proxied("fresh")
    proxy.stall()  # its bootstrap waits for the remote
    async with tenants.pool(request_timeout=5.0) as pool:
        waiter = asyncio.create_task(write(pool, "fresh", "fresh-1"))
        await stats_when(pool, lambda stats: stats.opening == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(waiter)
        assert pool.get_stats().waiting == 0
        proxy.release()
        stats = await stats_when(pool, lambda stats: stats.opens == 1)
        assert (stats.idle, stats.held, stats.open) == (1, 0, 1)
        await bounded(write(pool, "fresh", "fresh-1"))
        assert pool.get_stats().opens == 1
    assert not new_threads(baseline)


async def test_a_pool_closed_while_replicas_open_and_requests_wait_fails_them_and_leaves_no_thread(
    tenants: Tenants, proxied: Callable[..., DelayingProxy]
) -> None:
    baseline = turso_threads()
    proxied("fresh").stall()
    pool = tenants.pool(max_open=1, request_timeout=30.0)
    async with pool:
        opening = asyncio.create_task(write(pool, "fresh", "fresh-1"))
        await stats_when(pool, lambda stats: stats.opening == 1)
        waiting = asyncio.create_task(write(pool, "other", "other-1"))
        await stats_when(pool, lambda stats: stats.waiting == 2)
        started = time.monotonic()
    assert time.monotonic() - started < POOL_CLOSE_MARGIN_SECONDS + SLACK
    for request in (opening, waiting):
        with pytest.raises(turso.ProgrammingError, match="closed"):
            await bounded(request)
    assert pool.get_stats().open == 0
    assert not new_threads(baseline)


# --- statistics and health --------------------------------------------------------------------------------------------


async def test_without_sync_interval_replicas_have_no_background_sync(tenants: Tenants) -> None:
    async with tenants.pool(sync_interval=None) as pool:
        await write(pool, "a", "a-1")
        assert pool.sync_status("a") is None
        assert pool.sync_statuses() == {}


async def test_configure_runs_on_each_new_replica_before_any_task_gets_it_and_a_failure_fails_the_open(
    tenants: Tenants,
) -> None:
    baseline = turso_threads()
    configured: list[str] = []

    async def configure(tenant: str, conn: ConnectionSync) -> None:
        if tenant == "broken":
            raise turso.OperationalError("cannot configure this tenant")
        async with conn.transaction():
            await conn.execute("CREATE TABLE IF NOT EXISTS notes(body TEXT)")
        configured.append(tenant)

    async with tenants.pool(configure=configure, max_open=1) as pool:
        async with pool.connection("a") as conn:
            assert await conn.execute_fetchall("SELECT count(*) FROM notes") == [(0,)]
        async with pool.connection("b"):
            pass
        with pytest.raises(turso.OperationalError, match="cannot configure"):
            async with pool.connection("broken"):
                pass
        assert configured == ["a", "b"]
        assert pool.get_stats().failed_opens == 1
    assert not new_threads(baseline)


# --- bad input --------------------------------------------------------------------------------------------------------


async def test_bad_settings_raise_type_or_value_errors(tenants: Tenants) -> None:
    def pool(**settings: Any) -> ReplicaPool:
        return tenants.pool(**settings)

    with pytest.raises(ValueError, match="max_open must be at least 1"):
        pool(max_open=0)
    with pytest.raises(TypeError, match="max_open must be an int"):
        pool(max_open=2.5)
    with pytest.raises(TypeError, match="max_open must be an int"):
        pool(max_open=True)
    with pytest.raises(ValueError, match="max_concurrent_opens must be at least 1"):
        pool(max_concurrent_opens=0)
    with pytest.raises(ValueError, match="idle_seconds must be a finite number"):
        pool(idle_seconds=-1.0)
    with pytest.raises(ValueError, match="sync_interval must be a finite number"):
        pool(sync_interval=float("nan"))
    with pytest.raises(TypeError, match="sync_interval must be a number"):
        pool(sync_interval="5")
    with pytest.raises(ValueError, match="wait_timeout"):
        pool(wait_timeout=0)
    with pytest.raises(ValueError, match="request_timeout"):
        pool(request_timeout=float("inf"))
    with pytest.raises(TypeError, match="path_for must be a function"):
        ReplicaPool(path_for="/data/{tenant}.db", remote_url_for=tenants.remote_url_for)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def test_bad_tenant_keys_and_paths_raise_clear_errors_and_leave_nothing_behind(
    tenants: Tenants, tmp_path: Path
) -> None:
    baseline = turso_threads()
    linked = tmp_path / "linked"
    linked.symlink_to(tenants.folder)

    def path_for(tenant: str) -> Any:
        if tenant == "number":
            return 42
        if tenant == "alias":
            return str(linked / "acme.db")  # the same file as acme's, through a symbolic link
        return tenants.path_for(tenant)

    async with ReplicaPool(path_for=path_for, remote_url_for=tenants.remote_url_for, sync_interval=None) as pool:
        with pytest.raises(TypeError, match="tenant key must be a str, not int"):
            pool.connection(7)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        with pytest.raises(TypeError, match=r"path_for\('number'\) must return a str"):
            async with pool.connection("number"):
                pass
        await write(pool, "acme", "acme-1")
        with pytest.raises(ValueError, match="tenants 'acme' and 'alias' the same replica file"):
            async with pool.connection("alias"):
                pass
        stats = pool.get_stats()
        assert (stats.open, stats.opens, stats.waiting) == (1, 1, 0)
        # Also once acme's replica has closed: the file stays acme's.
        await bounded(pool.close())
    async with ReplicaPool(path_for=path_for, remote_url_for=tenants.remote_url_for, max_open=1) as pool:
        await write(pool, "acme", "acme-2")
        await write(pool, "other", "other-1")
        with pytest.raises(ValueError, match="same replica file"):
            async with pool.connection("alias"):
                pass
    assert not new_threads(baseline)


async def test_a_pool_belongs_to_the_event_loop_that_first_used_it(tenants: Tenants) -> None:
    pool = tenants.pool()
    async with pool:
        await write(pool, "a", "a-1")

        def elsewhere() -> None:
            async def use() -> None:
                async with pool.connection("a"):
                    pass

            asyncio.run(use())

        with pytest.raises(turso.ProgrammingError, match="event loop"):
            await asyncio.get_running_loop().run_in_executor(None, elsewhere)
