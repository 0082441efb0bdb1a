"""A replica pool for a database per tenant (issue 25): the tenants benchmark's workload through
`turso.lib_sync_aio.ReplicaPool`.

1,000 tenants (keys "tenant-K"), each a replica file of its own over 8 local sync servers (tenant K on server K % 8),
reached through one `ReplicaPool(path_for=..., remote_url_for=..., max_open=200, sync_interval=5.0)` in a child process.
Requests come at 40 a second in an open loop (benchmarks/tenant_workload.py's `Pacer`), on tenants drawn with a Zipf-
like skew (a few hot tenants, a long tail), for 60 s; every other request is a write (an INSERT in `async with
conn.transaction()`), the others a read of the tenant's notes, each inside `async with pool.connection(tenant) as conn`.
Reported: request latency p50/p99 (including any open or eviction the request waited for), the pool's opens and
evictions per second (from its statistics, if they have `opens` and `evictions`; also its waits, timeouts and failed
pushes at close), loop lateness (10 ms ticker), OS threads (the most seen), RSS at the end, the pool's close time, and
the acknowledged writes found on the servers once the pool has closed (the pool pushes on close: the target is all).
"""

import asyncio
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, AsyncContextManager, Callable, Optional, Protocol, cast

import turso.lib_sync_aio
from benchmarks.tenant_workload import (
    INSERT_SQL,
    ChildFailed,
    ChildOutcome,
    ChildRun,
    Pacer,
    ParentLink,
    Summary,
    TenantServers,
    Ticker,
    bounded,
    raise_open_files_limit,
    row_id,
    skewed_tenants,
)

POOL = "pool"
READ_SQL = "SELECT count(*) FROM notes WHERE tenant = ?"
OPEN_FILES_WANTED = 16384
# Bounds: the whole request window plus its drain, and the pool's close.
DRAIN_SECONDS = 30.0
CLOSE_BOUND_SECONDS = 120.0


@dataclass(frozen=True)
class PoolSettings:
    """How big one run of the pool benchmark is."""

    tenants: int
    max_open: int
    servers: int
    interval: float
    rate: float
    duration: float
    # The Zipf-like exponent of the tenants' popularity.
    skew: float
    idle_seconds: float
    check_timeout: float


POOL_FULL = PoolSettings(tenants=1000, max_open=200, servers=8, interval=5.0, rate=40.0, duration=60.0, skew=1.1,
                         idle_seconds=300.0, check_timeout=30.0)
POOL_SMOKE = PoolSettings(tenants=20, max_open=5, servers=2, interval=0.5, rate=20.0, duration=2.0, skew=1.1,
                          idle_seconds=300.0, check_timeout=10.0)


@dataclass
class PoolResult:
    """What one run of the pool benchmark measured (written to results.json)."""

    tenants: int
    max_open: int
    servers: int
    interval_s: float
    rate: float
    duration_s: float
    skew: float
    # Every request (reads and writes) and the writes alone; requests that failed, or had not ended after the drain.
    requests: Summary
    writes: Summary
    errors: int
    error_messages: list[str]
    unfinished: int
    # From the pool's statistics at the end of the window, if it has `opens` and `evictions`; and the statistics as
    # text.
    opens_per_s: Optional[float]
    evictions_per_s: Optional[float]
    statistics: str
    lateness: Summary
    threads_max: int
    rss_mib: float
    close_s: float
    rows_acknowledged: int
    rows_found: int
    rows_missing: int
    rows_unacknowledged: int
    error: Optional[str] = None


class _Pool(Protocol):
    """The part of issue 25's ReplicaPool this benchmark uses."""

    def connection(self, tenant: str) -> AsyncContextManager[turso.lib_sync_aio.ConnectionSync]: ...

    async def __aenter__(self) -> "_Pool": ...

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> Optional[bool]: ...


def pool_class() -> Optional[Callable[..., _Pool]]:
    """turso.lib_sync_aio.ReplicaPool, or None while there is none."""
    found: object = getattr(turso.lib_sync_aio, "ReplicaPool", None)
    return cast(Callable[..., _Pool], found) if callable(found) else None


def _statistics(pool: _Pool) -> tuple[Optional[int], Optional[int], str]:
    """(opens, evictions, the statistics as text) from the pool's `get_stats()`."""
    found: object = getattr(pool, "get_stats", None)
    if callable(found):
        found = found()
    opens: object = getattr(found, "opens", None)
    evictions: object = getattr(found, "evictions", None)
    return (opens if isinstance(opens, int) else None, evictions if isinstance(evictions, int) else None,
            repr(found))


async def _child(config: dict[str, Any]) -> dict[str, Any]:
    settings = PoolSettings(**config["settings"])
    urls: list[str] = config["urls"]
    folder = Path(config["folder"])
    make_pool = pool_class()
    if make_pool is None:
        raise RuntimeError("turso.lib_sync_aio has no ReplicaPool")
    link = ParentLink()
    await link.connect()
    ticker = Ticker()
    ticker.start()
    choose = skewed_tenants(settings.tenants, seed=0, exponent=settings.skew)
    writes: list[float] = []
    acknowledged: list[str] = []

    def number_of(tenant: str) -> int:
        return int(tenant.rsplit("-", 1)[1])

    def path_for(tenant: str) -> str:
        return str(folder / f"{tenant}.db")

    def remote_url_for(tenant: str) -> str:
        return urls[number_of(tenant) % len(urls)]

    pool = make_pool(
        path_for=path_for,
        remote_url_for=remote_url_for,
        max_open=settings.max_open,
        idle_seconds=settings.idle_seconds,
        sync_interval=settings.interval,
    )

    async def request(number: int) -> None:
        tenant = choose()
        key = f"tenant-{tenant}"
        start = time.perf_counter()
        async with pool.connection(key) as conn:
            if number % 2 == 0:
                note_id = row_id(POOL, tenant, number)
                async with conn.transaction():
                    await conn.execute(INSERT_SQL, (note_id, tenant, f"note {note_id}"))
                acknowledged.append(note_id)
                writes.append(time.perf_counter() - start)
            else:
                await conn.execute_fetchall(READ_SQL, (tenant,))

    await link.mark("before")
    link.phase("window", settings.duration + DRAIN_SECONDS + CLOSE_BOUND_SECONDS)
    async with pool:
        start = time.perf_counter()
        pacer = Pacer(settings.rate, request)
        await pacer.run(settings.duration)
        end = time.perf_counter()
        await link.mark("window_end")
        outcome = await pacer.finish(DRAIN_SECONDS)
        opens, evictions, statistics = _statistics(pool)
        closing = time.perf_counter()
    close_s = time.perf_counter() - closing
    link.phase("check", 120.0)
    await link.check(acknowledged)
    await ticker.stop()
    wall = end - start
    return {
        "requests": asdict(Summary.of(outcome.latencies)),
        "writes": asdict(Summary.of(writes)),
        "errors": len(outcome.errors),
        "error_messages": sorted(set(outcome.errors))[:5],
        "unfinished": outcome.unfinished,
        "opens_per_s": None if opens is None else round(opens / wall, 2),
        "evictions_per_s": None if evictions is None else round(evictions / wall, 2),
        "statistics": statistics,
        "lateness": asdict(ticker.between(start, end)),
        "close_s": round(close_s, 3),
    }


async def _bounded_child(config: dict[str, Any]) -> dict[str, Any]:
    settings = PoolSettings(**config["settings"])
    return await bounded(_child(config), settings.duration + DRAIN_SECONDS + CLOSE_BOUND_SECONDS + 60,
                         "the pool benchmark")


def child_main(config_json: str) -> None:
    """The child's entry: run the pool's workload, print the result line."""
    result = asyncio.run(_bounded_child(json.loads(config_json)))
    ParentLink().result(result)


async def measure_pool(smoke: bool, workdir: Path, settings: Optional[PoolSettings] = None) -> Optional[PoolResult]:
    """The pool's workload in a child process against fresh servers; None while there is no ReplicaPool."""
    if pool_class() is None:
        return None
    if settings is None:
        settings = POOL_SMOKE if smoke else POOL_FULL
    raise_open_files_limit(OPEN_FILES_WANTED)
    (workdir / "files").mkdir(parents=True)
    with TenantServers(settings.servers) as servers:
        config = {"settings": asdict(settings), "urls": servers.urls, "folder": str(workdir / "files")}
        command = [sys.executable, "-m", "benchmarks.tenant_pool", json.dumps(config)]
        run = ChildRun("tenant pool", command, servers, f"{POOL}-", settings.check_timeout, workdir / "stderr.txt")
        try:
            outcome = await run.run()
        except ChildFailed as error:
            if smoke:
                raise
            return _result(settings, {}, None, str(error).splitlines()[0])
    return _result(settings, outcome.result, outcome, None)


def _result(settings: PoolSettings, found: dict[str, Any], outcome: Optional[ChildOutcome], error: Optional[str]
            ) -> PoolResult:
    nothing = Summary.of([])
    check = outcome.checks[0] if outcome is not None and outcome.checks else None
    end = outcome.marks.get("window_end") if outcome is not None else None
    return PoolResult(
        tenants=settings.tenants, max_open=settings.max_open, servers=settings.servers,
        interval_s=settings.interval, rate=settings.rate, duration_s=settings.duration, skew=settings.skew,
        requests=Summary.from_json(found["requests"]) if found else nothing,
        writes=Summary.from_json(found["writes"]) if found else nothing,
        errors=int(found.get("errors", 0)),
        error_messages=[str(message) for message in found.get("error_messages", [])],
        unfinished=int(found.get("unfinished", 0)),
        opens_per_s=found.get("opens_per_s"),
        evictions_per_s=found.get("evictions_per_s"),
        statistics=str(found.get("statistics", "")),
        lateness=Summary.from_json(found["lateness"]) if found else nothing,
        threads_max=outcome.threads_max if outcome is not None else 0,
        rss_mib=end.rss_mib if end is not None else 0.0,
        close_s=float(found.get("close_s", 0.0)),
        rows_acknowledged=check.acknowledged if check else 0,
        rows_found=check.found if check else 0,
        rows_missing=check.missing if check else 0,
        rows_unacknowledged=check.unacknowledged if check else 0,
        error=error,
    )


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        child_main(sys.argv[1])
