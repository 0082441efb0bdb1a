"""Pull and push of one row each, over a far link with TLS and on plain loopback: ours against pyturso's module.

Every replica has a remote of its own (a `tursodb --sync-server`), so that each pull fetches exactly the one row
inserted on its remote just before it, and each push sends exactly the one row committed locally just before it.
Three routes:
- **far, TLS** (`FAR`): replica → `ProxyProcess` playing a link of 50 ms round trip (`wan(0.05)`: every chunk waits
  half of it each way, and a new connection waits a whole one before its first byte, since a far server's SYN-ACK
  would) → `FrontEndProcess` with TLS (it keeps client connections open and opens one to tursodb per request, as a
  cloud edge does; its certificate is from a test CA that this process trusts through SSL_CERT_FILE) → tursodb.
- **the same chain with no added delay** (`NEAR`): the same replicas, the proxy set to 0 s for these calls. A call's
  median on FAR minus its median on NEAR, divided by the round-trip time, is the number of round trips it waits for
  one after the other (TCP connect, TLS handshake, each request).
- **plain loopback** (`LOOPBACK`): replica → tursodb directly, plain HTTP (tursodb closes every connection).

Each round goes through the routes and the operations in turn; within each, the implementations take turns call by
call (on loopback `loopback_calls` times), in an order that rotates every round. Per call: wall time, this process's
CPU time (every thread: the loop, the worker threads, urllib or our transport; not the proxy, front end or server,
which are other processes), the client connections the front end accepted, and, for ours, the TCP connections our
transport opened.
"""

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from benchmarks.common import (
    ASYNC_CONNECTS,
    OURS,
    PYTURSO,
    AsyncReplica,
    Settings,
    TestCertificates,
    rotated,
    transport_connections_opened,
)
from testkit.front_end import FrontEndProcess
from testkit.proxy import ProxyProcess
from testkit.sync_server import SyncServer

FAR = "far, TLS"
NEAR = "same chain, no added delay"
LOOPBACK = "plain loopback"
ROUTES = (FAR, NEAR, LOOPBACK)
PULL = "pull"
PUSH = "push"
OPERATIONS = (PULL, PUSH)
IMPLEMENTATIONS = [OURS, PYTURSO]


@dataclass
class RoundTripResult:
    """One implementation's pull or push on one route, over every call of every round."""

    route: str
    implementation: str
    operation: str
    calls: int
    median_ms: float
    min_ms: float
    max_ms: float
    # This process's CPU time per call (median), in ms.
    cpu_ms: float
    # Client connections the front end accepted, and TCP connections our transport opened, per 100 calls; None where
    # nothing counts them (loopback has no front end; pyturso's module has no counter).
    front_end_connections_per_100: Optional[float]
    transport_connections_per_100: Optional[float]
    # Pulls: every one returned True. Pushes: the remote ended with every pushed row exactly once.
    all_done: bool
    # Every call's wall time, in ms.
    durations_ms: list[float]


@dataclass
class _Calls:
    """What the calls of one (route, implementation, operation) measured so far."""

    durations: list[float] = field(default_factory=list[float])
    cpu: list[float] = field(default_factory=list[float])
    front_end_connections: int = 0
    transport_connections: Optional[int] = None
    all_done: bool = True


class _Remote:
    """One replica's own remote: a server, and on the far route the TLS front end and the delaying proxy before it."""

    def __init__(self, stack: contextlib.ExitStack, folder: Path, settings: Settings,
                 certificates: Optional[TestCertificates]) -> None:
        folder.mkdir()
        self.folder = folder
        self.server = stack.enter_context(SyncServer(folder / "remote.db"))
        self.server.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, body TEXT)")
        self.front_end: Optional[FrontEndProcess] = None
        self.proxy: Optional[ProxyProcess] = None
        self.url = self.server.url
        if certificates is not None:
            self.front_end = stack.enter_context(FrontEndProcess(self.server.port, str(certificates.server_pem)))
            self.proxy = stack.enter_context(ProxyProcess(self.front_end.port, round_trip=settings.wan_round_trip))
            self.url = f"https://127.0.0.1:{self.proxy.port}"
        self.pushed = 0

    def front_end_connections(self) -> int:
        """Client connections the front end has accepted so far (0 without one)."""
        return 0 if self.front_end is None else self.front_end.counters()["connections"]

    def set_round_trip(self, round_trip: float) -> None:
        """Play a link of this round-trip time from now on (the far route only)."""
        if self.proxy is not None:
            self.proxy.configure(delay=round_trip / 2, answer_delay=round_trip / 2, connect_delay=round_trip)

    def pushed_rows_once(self) -> bool:
        """Whether the remote holds each row this replica pushed exactly once."""
        rows = self.server.execute("SELECT body, count(*) FROM t WHERE body LIKE 'push %' GROUP BY body")
        return len(rows) == self.pushed and all(count == 1 for _, count in rows)


async def _call(replica: AsyncReplica, remote: _Remote, operation: str, calls: _Calls) -> None:
    """Prepare one new row for `operation`, then time the call and count the connections it opened."""
    if operation == PULL:
        remote.server.execute("INSERT INTO t(body) VALUES (?)", (f"pull {len(calls.durations)}",))
    else:
        remote.pushed += 1
        await replica.execute("INSERT INTO t(body) VALUES (?)", (f"push {remote.pushed}",))
        await replica.commit()
    front_end_before = remote.front_end_connections()
    transport_before = transport_connections_opened(replica)
    cpu_start, start = time.process_time(), time.perf_counter()
    if operation == PULL:
        calls.all_done = await replica.pull() and calls.all_done
    else:
        await replica.push()
    calls.durations.append(time.perf_counter() - start)
    calls.cpu.append(time.process_time() - cpu_start)
    calls.front_end_connections += remote.front_end_connections() - front_end_before
    transport_after = transport_connections_opened(replica)
    if transport_before is not None and transport_after is not None:
        calls.transport_connections = (calls.transport_connections or 0) + transport_after - transport_before


async def measure_round_trips(
    settings: Settings, workdir: Path, certificates: TestCertificates
) -> list[RoundTripResult]:
    """Time pull and push of one row on every route for both implementations, interleaved (module docstring)."""
    measured = {(route, name, operation): _Calls() for route in ROUTES for name in IMPLEMENTATIONS
                for operation in OPERATIONS}
    with contextlib.ExitStack() as stack:
        remotes: dict[tuple[str, str], _Remote] = {}
        replicas: dict[tuple[str, str], AsyncReplica] = {}
        try:
            for name, connect in ASYNC_CONNECTS.items():
                for link, tls in ((FAR, certificates), (LOOPBACK, None)):
                    folder = workdir / f"{name}-{'far' if link == FAR else 'loopback'}"
                    remote = remotes[link, name] = _Remote(stack, folder, settings, tls)
                    replicas[link, name] = await connect(str(folder / "replica.db"), remote.url)
            # The first calls pay for lazy set-up (ours also opens the connection it then keeps).
            for key, replica in replicas.items():
                await _call(replica, remotes[key], PULL, _Calls())
                await _call(replica, remotes[key], PUSH, _Calls())
            for turn in range(settings.round_trip_rounds):
                for route in ROUTES:
                    await _one_route(settings, route, turn, remotes, replicas, measured)
        finally:
            for replica in replicas.values():
                await replica.close()
        for (route, name, operation), calls in measured.items():
            if operation == PUSH:
                calls.all_done = remotes[_link(route), name].pushed_rows_once()
    return [_summary(route, name, operation, calls) for (route, name, operation), calls in measured.items()]


def _link(route: str) -> str:
    """The replicas and remotes a route uses: NEAR is FAR's chain with no added delay."""
    return LOOPBACK if route == LOOPBACK else FAR


async def _one_route(
    settings: Settings,
    route: str,
    turn: int,
    remotes: dict[tuple[str, str], _Remote],
    replicas: dict[tuple[str, str], AsyncReplica],
    measured: dict[tuple[str, str, str], _Calls],
) -> None:
    """One round's calls on one route: each operation in turn, the implementations taking turns call by call."""
    link = _link(route)
    for name in IMPLEMENTATIONS:
        remotes[link, name].set_round_trip(settings.wan_round_trip if route == FAR else 0.0)
    for operation in OPERATIONS:
        for _ in range(settings.loopback_calls if route == LOOPBACK else 1):
            for name in rotated(IMPLEMENTATIONS, turn):
                await _call(replicas[link, name], remotes[link, name], operation, measured[route, name, operation])


def _summary(route: str, name: str, operation: str, calls: _Calls) -> RoundTripResult:
    count = len(calls.durations)
    per_100 = 100 / count
    return RoundTripResult(
        route=route,
        implementation=name,
        operation=operation,
        calls=count,
        median_ms=round(statistics.median(calls.durations) * 1e3, 3),
        min_ms=round(min(calls.durations) * 1e3, 3),
        max_ms=round(max(calls.durations) * 1e3, 3),
        cpu_ms=round(statistics.median(calls.cpu) * 1e3, 3),
        front_end_connections_per_100=None if route == LOOPBACK else round(calls.front_end_connections * per_100, 1),
        transport_connections_per_100=(
            None if calls.transport_connections is None else round(calls.transport_connections * per_100, 1)
        ),
        all_done=calls.all_done,
        durations_ms=[round(value * 1e3, 3) for value in calls.durations],
    )


def round_trip_of(results: list[RoundTripResult], route: str, implementation: str, operation: str) -> RoundTripResult:
    """The result of one (route, implementation, operation)."""
    for result in results:
        if (result.route, result.implementation, result.operation) == (route, implementation, operation):
            return result
    raise KeyError((route, implementation, operation))


def ours_over_pyturso(results: list[RoundTripResult]) -> dict[str, float]:
    """Our median time per call divided by pyturso's module's, per "route, operation" (FAR and LOOPBACK)."""
    return {
        f"{route}, {operation}": round_trip_of(results, route, OURS, operation).median_ms
        / round_trip_of(results, route, PYTURSO, operation).median_ms
        for route in (FAR, LOOPBACK)
        for operation in OPERATIONS
    }


def round_trips_per_call(results: list[RoundTripResult], round_trip: float) -> dict[str, float]:
    """Round trips one call waits for in turn, per "implementation, operation": (FAR median - NEAR median) / RTT."""
    return {
        f"{name}, {operation}": (round_trip_of(results, FAR, name, operation).median_ms
                                 - round_trip_of(results, NEAR, name, operation).median_ms) / (round_trip * 1e3)
        for name in IMPLEMENTATIONS
        for operation in OPERATIONS
    }
