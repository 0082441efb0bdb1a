"""A half-open link during background sync: how long after the network comes back the first round succeeds.

Replicas in `sync_in_background(interval)` reach one remote through `ProxyProcess` (the network) and a keep-alive
`FrontEndProcess` (the edge) before tursodb, so that each keeps a connection open between rounds. For each
`request_timeout` measured (1 s, and the default), a few replicas run. Once each has had two successful rounds, the
proxy becomes a black hole (`black_hole(open_connections=True)`): new connections are accepted and never answered,
and the open ones freeze, as when a NAT or a load balancer drops the flow without a reset. Each replica then commits
one row locally. After `half_open_seconds` the proxy lets new connections through again; the ones it swallowed stay
silent, as a dropped flow does.

Per replica: the time from that release until its first successful round ended (`status.last_success_unix_time`),
the failed rounds in a row it had counted by then, how long after the black hole began `status.healthy` was first
seen False, and whether its row reached the remote exactly once. The status is looked at every 10 ms; the recovery
time comes from the status's own clock, not from the look.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import turso.lib_sync_aio
from benchmarks.common import Settings
from testkit.front_end import FrontEndProcess
from testkit.proxy import ProxyProcess
from testkit.sync_server import SyncServer
from turso.background_sync_aio import BackgroundSync

# How often the status of every replica is looked at.
POLL_SECONDS = 0.01
# Bounds: for every replica's first two rounds, and, past the longest request_timeout, for every replica to recover.
WARM_UP_LIMIT_SECONDS = 20.0
RECOVERY_SLACK_SECONDS = 20.0


@dataclass
class HalfOpenResult:
    """What the replicas with one request_timeout did about the half-open link."""

    request_timeout_s: float
    # Whether that is the connection's default (the benchmark left it as it was).
    default_timeout: bool
    interval_s: float
    black_hole_s: float
    # Per replica: seconds from the release until its first successful round ended; None if none ended within
    # request_timeout + RECOVERY_SLACK_SECONDS.
    recovery_s: list[Optional[float]]
    # Per replica: the failed rounds in a row it had counted when it recovered (or at the end, if it did not).
    failed_rounds: list[int]
    # Per replica: seconds from the start of the black hole until status.healthy was first seen False; None if it
    # stayed True throughout.
    unhealthy_after_s: list[Optional[float]]
    # Rows committed while the link was a black hole (one per replica), and how many the remote holds exactly once.
    rows_written: int
    rows_once: int


class _Watched:
    """One replica, its background sync, and what was seen of it."""

    def __init__(self, replica: turso.lib_sync_aio.ConnectionSync, sync: BackgroundSync,
                 setting: Optional[float]) -> None:
        self.replica = replica
        self.sync = sync
        # The settings' request_timeout (None: the default), and the one the replica has.
        self.setting = setting
        self.timeout = replica.request_timeout
        self.recovery: Optional[float] = None
        self.failures = 0
        self.unhealthy_after: Optional[float] = None

    def look(self, black_hole_at: float, released_at: Optional[float]) -> None:
        """Note the status now: failures, health, and (once released) a first success after the release."""
        status = self.sync.status
        self.failures = max(self.failures, status.consecutive_failures)
        if not status.healthy and self.unhealthy_after is None:
            self.unhealthy_after = time.time() - black_hole_at
        success = status.last_success_unix_time
        if released_at is not None and self.recovery is None and success is not None and success > released_at:
            self.recovery = success - released_at


async def _warm_up(watched: list[_Watched]) -> None:
    """Wait until every replica has had two successful rounds (so each holds a kept-alive connection)."""
    deadline = time.monotonic() + WARM_UP_LIMIT_SECONDS
    while any(one.sync.status.rounds < 2 for one in watched):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replicas did not sync twice within {WARM_UP_LIMIT_SECONDS:g} s")
        await asyncio.sleep(POLL_SECONDS)


async def _outage(proxy: ProxyProcess, watched: list[_Watched], settings: Settings, limit: float) -> None:
    """Black-hole the link, commit a row on each replica, release the link, and watch until all recovered."""
    proxy.black_hole(open_connections=True)
    black_hole_at = time.time()
    for index, one in enumerate(watched):
        await one.replica.execute("INSERT INTO marks(id) VALUES (?)", (f"outage-{index}",))
        await one.replica.commit()
    while time.time() < black_hole_at + settings.half_open_seconds:
        for one in watched:
            one.look(black_hole_at, None)
        await asyncio.sleep(POLL_SECONDS)
    proxy.release()
    released_at = time.time()
    while any(one.recovery is None for one in watched) and time.time() < released_at + limit:
        for one in watched:
            one.look(black_hole_at, released_at)
        await asyncio.sleep(POLL_SECONDS)


async def measure_half_open(settings: Settings, workdir: Path) -> list[HalfOpenResult]:
    """Every request_timeout of the settings at once, on replicas of one remote behind one proxy (module docstring)."""
    watched: list[_Watched] = []
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(SyncServer(workdir / "remote.db"))
        front_end = stack.enter_context(FrontEndProcess(server.port))
        proxy = stack.enter_context(ProxyProcess(front_end.port))
        server.execute("CREATE TABLE marks(id TEXT NOT NULL)")
        try:
            for timeout in settings.half_open_timeouts:
                for _ in range(settings.half_open_replicas):
                    path = workdir / f"replica-{len(watched)}.db"
                    replica = await turso.lib_sync_aio.connect_sync(str(path), proxy.url)
                    if timeout is not None:
                        replica.request_timeout = timeout
                    watched.append(_Watched(replica, replica.sync_in_background(settings.half_open_interval),
                                            timeout))
            await _warm_up(watched)
            longest = max(one.timeout for one in watched)
            await _outage(proxy, watched, settings, longest + RECOVERY_SLACK_SECONDS)
            counts = {str(row[0]): row[1] for row in server.execute("SELECT id, count(*) FROM marks GROUP BY id")}
        finally:
            await asyncio.gather(*(one.sync.stop() for one in watched))
            await asyncio.gather(*(one.replica.close() for one in watched))
    results: list[HalfOpenResult] = []
    for timeout in settings.half_open_timeouts:
        group = [(index, one) for index, one in enumerate(watched) if one.setting == timeout]
        results.append(HalfOpenResult(
            request_timeout_s=group[0][1].timeout,
            default_timeout=timeout is None,
            interval_s=settings.half_open_interval,
            black_hole_s=settings.half_open_seconds,
            recovery_s=[None if one.recovery is None else round(one.recovery, 3) for _, one in group],
            failed_rounds=[one.failures for _, one in group],
            unhealthy_after_s=[None if one.unhealthy_after is None else round(one.unhealthy_after, 3)
                               for _, one in group],
            rows_written=len(group),
            rows_once=sum(1 for index, _ in group if counts.get(f"outage-{index}") == 1),
        ))
    return results
