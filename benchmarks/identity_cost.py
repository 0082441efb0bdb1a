"""What the replica identity checks (issue 27, `turso/_sync_aio/replica_identity.py`) cost per open, push and pull.

`python -m benchmarks.identity_cost [--calls N]` (run it under `taskset -c 0` for steadier figures). Two replicas of one
small remote on a direct `tursodb --sync-server`, the same module: "checked" as it ships, "unchecked" with the checks
taken out (for an open, `open_identity` swapped for one that skips them; for push and pull, the engine's `identity` set
to None). The two take turns in blocks of 10 calls, so that both meet the machine's slow and fast moments alike; the
figures are the median and the 90th percentile of every call, and the requests each call sent (the transport's count).
On a busy machine the difference of two medians of a few milliseconds is noise-bound; so the processor time spent
inside the checks themselves is also summed per checked call (`in_checks_cpu_ms`: `time.thread_time()` around their
own code where it is called, on the thread that calls it: the sidecar and PATH-info reads and writes, the engine's JSON
read, the local queries at open; their requests excluded).

- open: `await connect_sync(path, url)` of an existing replica, closed again (not timed);
- push: one committed row (not timed), then `push()`;
- pull with local changes pending: a remote row and a local row (not timed), then `pull()`: the one case where the
  checks send a request of their own (the remote's mark, before the apply);
- pull with nothing pending: a remote row (not timed), then `pull()`.
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, cast

import turso._sync_aio.opening as opening_module
from testkit.sync_server import SyncServer
from turso._sync_aio.engine import SyncEngine
from turso._sync_aio.replica_identity import MEMORY_PATH, IdentityAtOpen
from turso.lib_sync_aio import ConnectionSync, connect_sync

# The opening module, whose `open_identity` the unchecked opens swap out (typed loosely for that).
OPENING: Any = opening_module
CHECKED = "checked"
UNCHECKED = "unchecked"
BLOCK = 10


@contextmanager
def identity_checks(enabled: bool, clock: Optional["CheckClock"] = None) -> Generator[None, None, None]:
    """Opens made meanwhile run the identity checks (timed on `clock`), or skip them (an in-memory replica's, which
    has none)."""
    original = OPENING.open_identity
    if not enabled:

        def unchecked(path: str) -> IdentityAtOpen:
            return IdentityAtOpen(MEMORY_PATH, None, None, False, False)

        OPENING.open_identity = unchecked
    elif clock is not None:

        def timed_open_identity(path: str) -> IdentityAtOpen:
            at_open = clock.wrap(original)(path)
            at_open.confirm = clock.wrap(at_open.confirm)
            return cast(IdentityAtOpen, at_open)

        OPENING.open_identity = timed_open_identity
    try:
        yield
    finally:
        OPENING.open_identity = original


def engine_of(conn: ConnectionSync) -> SyncEngine:
    engine = cast(Optional[SyncEngine], cast(Any, conn)._engine)
    assert engine is not None
    return engine


class Samples:
    """Seconds and requests per call, by variant, and the seconds spent inside the checks per checked call."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {CHECKED: [], UNCHECKED: []}
        self.requests: dict[str, list[int]] = {CHECKED: [], UNCHECKED: []}
        self.in_checks: list[float] = []

    def summary(self) -> dict[str, dict[str, float]]:
        figures: dict[str, dict[str, float]] = {}
        for variant, seconds in self.seconds.items():
            ordered = sorted(seconds)
            figures[variant] = {
                "median_ms": round(statistics.median(ordered) * 1000, 3),
                "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 3),
                "requests_per_call": round(statistics.mean(self.requests[variant]), 2),
                "calls": len(ordered),
            }
        figures["difference"] = {
            "median_ms": round(figures[CHECKED]["median_ms"] - figures[UNCHECKED]["median_ms"], 3),
            "requests_per_call": round(
                figures[CHECKED]["requests_per_call"] - figures[UNCHECKED]["requests_per_call"], 2
            ),
        }
        if self.in_checks:
            figures[CHECKED]["in_checks_cpu_ms"] = round(statistics.median(self.in_checks) * 1000, 3)
        return figures


class CheckClock:
    """Sums the processor time spent in a guard's calls (the ones the engine and the open make), on the thread that
    makes each (a worker of the pool, or the loop's); the requests are the engine's, made between them."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*arguments: Any) -> Any:
            started = time.thread_time()
            try:
                result = function(*arguments)
            finally:
                self.seconds += time.thread_time() - started
            return self.wrap(result) if callable(result) else result

        return timed_call


def clock_guard(conn: ConnectionSync, clock: CheckClock) -> None:
    """Time the calls of `conn`'s guard from now on."""
    engine = engine_of(conn)
    guard = engine.identity
    assert guard is not None
    # The guard's own steps (its requests are the engine's, on the loop, between them: not counted).
    for name in ("sync_request", "seed_answered", "apply_check_request", "judge_mark_answer", "watch"):
        setattr(guard, name, clock.wrap(getattr(guard, name)))
    # The pending count that before_apply is given is read for it alone (no one else asks the engine for stats here).
    engine.stats = clock.wrap(engine.stats)  # type: ignore[method-assign]


async def timed(call: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


async def measure_opens(paths: dict[str, str], url: str, calls: int) -> Samples:
    samples = Samples()
    for turn in range(calls // BLOCK):
        for variant in (CHECKED, UNCHECKED) if turn % 2 == 0 else (UNCHECKED, CHECKED):
            for _ in range(BLOCK):
                clock = CheckClock()
                with identity_checks(variant == CHECKED, clock):
                    started = time.perf_counter()
                    conn = await connect_sync(paths[variant], url)
                    samples.seconds[variant].append(time.perf_counter() - started)
                if variant == CHECKED:
                    samples.in_checks.append(clock.seconds)
                # Opening an existing replica sends nothing: its HTTP client is made by the open, so its count is all.
                samples.requests[variant].append(engine_of(conn).http.requests.requests_sent)
                await conn.close()
    return samples


async def measure_sync(
    conns: dict[str, ConnectionSync], server: SyncServer, calls: int, kind: str, clock: CheckClock
) -> Samples:
    samples = Samples()
    counter = 0
    for turn in range(calls // BLOCK):
        for variant in (CHECKED, UNCHECKED) if turn % 2 == 0 else (UNCHECKED, CHECKED):
            conn = conns[variant]
            transport = engine_of(conn).http.requests
            for _ in range(BLOCK):
                counter += 1
                if kind == "push":
                    await conn.execute("INSERT INTO t VALUES (?, ?)", (f"{variant}-{counter}", counter))
                    await conn.commit()
                    operation: Callable[[], Awaitable[object]] = conn.push
                else:
                    server.execute("INSERT INTO t VALUES (?, ?)", (f"remote-{counter}", counter))
                    if kind == "pull with local changes pending":
                        await conn.execute("INSERT INTO t VALUES (?, ?)", (f"{variant}-{counter}", counter))
                        await conn.commit()
                    operation = conn.pull
                sent, in_checks = transport.requests_sent, clock.seconds
                samples.seconds[variant].append(await timed(operation))
                samples.requests[variant].append(transport.requests_sent - sent)
                if variant == CHECKED:
                    samples.in_checks.append(clock.seconds - in_checks)
                if kind == "pull with local changes pending":
                    await conn.push()  # not timed: the next call starts with nothing pending again
    return samples


async def main(calls: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder, SyncServer(Path(folder) / "remote.db") as server:
        server.execute("CREATE TABLE t(k TEXT, v INTEGER)")
        paths = {variant: str(Path(folder) / f"{variant}.db") for variant in (CHECKED, UNCHECKED)}
        for variant, path in paths.items():
            with identity_checks(variant == CHECKED):
                async with connect_sync(path, server.url) as conn:
                    await conn.push()
        results: dict[str, Any] = {"open": (await measure_opens(paths, server.url, calls)).summary()}
        conns: dict[str, ConnectionSync] = {}
        try:
            for variant, path in paths.items():
                with identity_checks(variant == CHECKED):
                    conns[variant] = await connect_sync(path, server.url)
            clock = CheckClock()
            clock_guard(conns[CHECKED], clock)
            for kind in ("push", "pull with local changes pending", "pull with nothing pending"):
                results[kind] = (await measure_sync(conns, server, calls, kind, clock)).summary()
        finally:
            for conn in conns.values():
                await conn.close()
        return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="What the replica identity checks cost per open, push and pull.")
    parser.add_argument("--calls", type=int, default=200, help="calls per variant and operation (a multiple of 10)")
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(main(arguments.calls)), indent=2))
