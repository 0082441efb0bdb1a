"""Background sync at scale: many replicas on one event loop, each in `sync_in_background(interval)`, for a while.

N replicas of one remote (the local `tursodb --sync-server`), all opened by one event loop, each with
`conn.sync_in_background(interval=1.0)`: a round (push, then pull) every second per replica, jittered. Two routes:
plain loopback HTTP to tursodb, and TLS through a keep-alive front end before it (`FrontEndProcess`, in a process of
its own, with a certificate from a test CA this process trusts through SSL_CERT_FILE), as a cloud remote is reached.
After a warm-up (the first rounds, which all start at once), for `duration` seconds:

- **loop lateness**: a heartbeat task sleeps 1 ms at a time and records how late each wake-up is;
- **CPU**: the process's CPU time (every thread: the loop, the replicas' SQL workers and sync lanes), per replica and
  per hour of running; also net of the heartbeat's own cost, measured alone before the replicas sync;
- **threads**: the process's OS threads while they sync, minus those before any replica was open, per replica;
- **connections** (TLS route): the client connections the front end accepted, and the requests it forwarded;
- **WAL**: each replica's `stats().main_wal_size` at the end of the window (background sync checkpoints a WAL past
  `checkpoint_wal_bytes`, 16 MiB by default, after a round), the largest and the median, and their sum;
- **propagation**: a writer commits a row on one replica every `write_every` seconds (a different replica each
  time); the time until each other replica has it. A checker looks at every replica's `status` every `poll`
  seconds; when a replica has finished a new round, it reads which rows the replica has, and a row seen for the first
  time counts as arrived when that round was seen to end. So the figure is late by at most `poll` (25 ms), never
  early. The checker's queries (one per replica round that has rows to look for) are in the CPU figure.

The target for propagation is 2 x interval + the server's own latency: a row waits up to one interval for its replica's
next push, then up to one interval for each other replica's next pull. The server's latency is the median time of one
round (push, then pull, with nothing to sync) on one replica while no other replica syncs.

`python -m benchmarks.background` runs both routes and writes a record of the run (the module measured, the machine,
the results) as JSON; `make bench-before` uses it to measure the module before our transport (benchmarks/before.py).
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, cast

import psutil

import turso.lib_sync_aio
from benchmarks.common import (
    Machine,
    ModuleRecord,
    TestCertificates,
    describe_module,
    load_average,
    machine,
    p99,
    trust_test_ca,
)
from benchmarks.responsiveness import Heartbeat
from testkit.front_end import FrontEndProcess
from testkit.sync_server import SyncServer
from turso.background_sync_aio import BackgroundSync


@dataclass(frozen=True)
class BackgroundSettings:
    """How big one run of this benchmark is."""

    replicas: int
    # sync_in_background's interval, seconds.
    interval: float
    # Seconds measured, after `warm_up` seconds of syncing that are not.
    duration: float
    warm_up: float
    # The writer commits one row every `write_every` seconds; the checker looks at the replicas every `poll` seconds.
    write_every: float
    poll: float
    # Seconds the heartbeat runs alone (its own CPU cost and lateness), and the rounds timed for the server's latency.
    baseline: float
    latency_rounds: int


BACKGROUND_FULL = BackgroundSettings(
    replicas=100, interval=1.0, duration=30.0, warm_up=3.0, write_every=2.0, poll=0.025, baseline=3.0,
    latency_rounds=15,
)
BACKGROUND_SMOKE = BackgroundSettings(
    replicas=5, interval=0.5, duration=3.0, warm_up=0.5, write_every=0.5, poll=0.025, baseline=0.5, latency_rounds=3,
)

# Targets (issue 14): heartbeat lateness p99 below this; at most this many threads per replica; propagation p99 below
# 2 x interval + the server's latency.
LATENESS_P99_LIMIT_MS = 5.0
THREADS_PER_REPLICA_LIMIT = 2.0
# Quantiles kept for the chart's distribution curves (results.json would hold 30,000 heartbeat samples otherwise).
QUANTILES = [index / 100 for index in range(100)] + [0.995, 0.999, 0.9995, 1.0]
# Every fraction of QUANTILES is a multiple of 1 / QUANTILE_STEPS.
QUANTILE_STEPS = 2000


# The routes to the remote, and their names on the command line.
PLAIN = "plain loopback"
TLS = "TLS front end"
ROUTES = (PLAIN, TLS)
ROUTE_ARGUMENTS = {"plain": PLAIN, "tls": TLS}


@dataclass
class BackgroundResult:
    """What one run measured (written to results.json)."""

    replicas: int
    interval_s: float
    duration_s: float
    # The writer's pace: one row every this many seconds.
    write_every_s: float
    # Heartbeat lateness while the replicas sync (and, as the floor, while the heartbeat runs alone).
    heartbeats: int
    lateness_p50_ms: float
    lateness_p99_ms: float
    lateness_max_ms: float
    idle_lateness_p99_ms: float
    idle_lateness_max_ms: float
    # (fraction, lateness ms) at QUANTILES, for the chart.
    lateness_quantiles_ms: list[tuple[float, float]]
    # Process CPU seconds per replica per hour of syncing: everything, and net of the heartbeat's own cost.
    cpu_s_per_replica_hour: float
    cpu_s_per_replica_hour_net: float
    # The process's CPU use while syncing, in cores (1.0 = one core busy), and the heartbeat's alone.
    cpu_cores: float
    heartbeat_cpu_cores: float
    # OS threads before any replica was open, and while they sync.
    threads_before: int
    threads_syncing: int
    threads_per_replica: float
    # Successful rounds per replica per second over the measured window; replicas that had a round fail (whole run).
    rounds_per_replica_s: float
    replicas_with_failures: int
    # The median time of one round (push, then pull, nothing to sync) on one replica while no other syncs.
    server_latency_ms: float
    propagation_limit_ms: float
    # Rows written, arrivals timed (row x other replica), arrivals that never came before the run ended.
    rows_written: int
    arrivals: int
    missing_arrivals: int
    propagation_p50_ms: float
    propagation_p99_ms: float
    propagation_max_ms: float
    propagation_quantiles_ms: list[tuple[float, float]]
    # Each replica's WAL (stats().main_wal_size) at the end of the window: the largest, the median, all together; and
    # the background syncs' checkpoint_wal_bytes.
    wal_bytes_max: int = 0
    wal_bytes_median: float = 0.0
    wal_bytes_total: int = 0
    checkpoint_wal_bytes: Optional[int] = None
    # PLAIN or TLS; on TLS, the client connections the front end accepted and the requests it forwarded during the
    # measured window.
    route: str = PLAIN
    front_end_connections: Optional[int] = None
    front_end_requests: Optional[int] = None


@dataclass
class BackgroundRecord:
    """One standalone run of this benchmark (`python -m benchmarks.background`): what was measured, where, and when."""

    module: ModuleRecord
    machine: Machine
    started: str
    # The load average (1, 5, 15 minutes) when the run started and when it ended.
    load_average_start: tuple[float, float, float]
    load_average_end: tuple[float, float, float]
    results: list[BackgroundResult]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "BackgroundRecord":
        """The record that `write()` wrote, read back."""
        return cls(
            module=ModuleRecord(**data["module"]),
            machine=Machine(**data["machine"]),
            started=data["started"],
            load_average_start=cast(tuple[float, float, float], tuple(data["load_average_start"])),
            load_average_end=cast(tuple[float, float, float], tuple(data["load_average_end"])),
            results=[_result_from_json(result) for result in data["results"]],
        )

    def write(self, path: Path) -> None:
        """Write the record to `path` as JSON."""
        path.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")


def _result_from_json(data: dict[str, Any]) -> BackgroundResult:
    result = BackgroundResult(**data)
    result.lateness_quantiles_ms = [(fraction, ms) for fraction, ms in data["lateness_quantiles_ms"]]
    result.propagation_quantiles_ms = [(fraction, ms) for fraction, ms in data["propagation_quantiles_ms"]]
    return result


class _Rows:
    """The writer's rows and when each reached each replica."""

    def __init__(self, replicas: int) -> None:
        # row id -> (replica that wrote it, when its commit returned)
        self.written: dict[str, tuple[int, float]] = {}
        # per replica, the row ids it has been seen to hold
        self.seen: list[set[str]] = [set() for _ in range(replicas)]
        self.propagation: list[float] = []

    def awaited_by(self, replica: int) -> bool:
        """Whether some row written elsewhere has not been seen on `replica` yet."""
        return any(origin != replica and row not in self.seen[replica] for row, (origin, _) in self.written.items())

    def arrived(self, replica: int, rows: list[str], when: float) -> None:
        for row in rows:
            if row in self.seen[replica] or row not in self.written:
                continue
            self.seen[replica].add(row)
            origin, committed = self.written[row]
            if origin != replica:
                self.propagation.append(when - committed)

    def missing(self) -> int:
        return sum(
            1 for row, (origin, _) in self.written.items() for replica, seen in enumerate(self.seen)
            if replica != origin and row not in seen
        )


async def _write(replicas: list[turso.lib_sync_aio.ConnectionSync], rows: _Rows, settings: BackgroundSettings,
                 until: float) -> None:
    number = 0
    while time.perf_counter() < until:
        # A step that is prime to 100 visits every replica before one writes twice.
        origin = (number * 37) % len(replicas)
        row = f"row-{number}"
        await replicas[origin].execute("INSERT INTO marks(id, origin) VALUES (?, ?)", (row, origin))
        await replicas[origin].commit()
        rows.written[row] = (origin, time.perf_counter())
        rows.seen[origin].add(row)
        number += 1
        await asyncio.sleep(settings.write_every)


async def _check(replicas: list[turso.lib_sync_aio.ConnectionSync], syncs: list[BackgroundSync], rows: _Rows,
                 settings: BackgroundSettings, until: float) -> None:
    seen_rounds = [sync.status.rounds for sync in syncs]
    reading: list[Optional["asyncio.Task[None]"]] = [None] * len(replicas)

    async def read(index: int, round_seen_at: float) -> None:
        found = await replicas[index].execute_fetchall("SELECT id FROM marks")
        rows.arrived(index, [str(row[0]) for row in found], round_seen_at)

    while time.perf_counter() < until:
        now = time.perf_counter()
        for index, sync in enumerate(syncs):
            done = sync.status.rounds
            if done == seen_rounds[index]:
                continue
            seen_rounds[index] = done
            task = reading[index]
            if (task is None or task.done()) and rows.awaited_by(index):
                reading[index] = asyncio.create_task(read(index, now))
        await asyncio.sleep(settings.poll)
    await asyncio.gather(*(task for task in reading if task is not None))


def _quantiles(values: list[float]) -> list[tuple[float, float]]:
    """(fraction, value in ms) at each of QUANTILES, from statistics.quantiles' QUANTILE_STEPS-quantiles (plus the
    least and the largest value for fractions 0 and 1)."""
    if len(values) < 2:
        return [(fraction, round(value * 1e3, 3)) for fraction in QUANTILES for value in values]
    points = [min(values), *statistics.quantiles(values, n=QUANTILE_STEPS, method="inclusive"), max(values)]
    return [(fraction, round(points[round(fraction * QUANTILE_STEPS)] * 1e3, 3)) for fraction in QUANTILES]


async def _server_latency(replica: turso.lib_sync_aio.ConnectionSync, rounds: int) -> float:
    durations: list[float] = []
    for _ in range(rounds):
        start = time.perf_counter()
        await replica.push()
        await replica.pull()
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def _front_end_counters(front_end: Optional[FrontEndProcess]) -> dict[str, int]:
    return {"connections": 0, "requests": 0} if front_end is None else front_end.counters()


async def measure_background(
    smoke: bool,
    workdir: Path,
    settings: Optional[BackgroundSettings] = None,
    certificates: Optional[TestCertificates] = None,
) -> BackgroundResult:
    """N replicas in background sync on this event loop: lateness, CPU, threads and propagation (module docstring).

    With `certificates` (the test CA must be trusted already: `trust_test_ca`), the replicas reach the remote through
    a TLS front end. `settings` replaces BACKGROUND_FULL or BACKGROUND_SMOKE (for experiments: other sizes,
    intervals).
    """
    if settings is None:
        settings = BACKGROUND_SMOKE if smoke else BACKGROUND_FULL
    process = psutil.Process()
    threads_before = process.num_threads()
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(SyncServer(workdir / "remote.db"))
        front_end: Optional[FrontEndProcess] = None
        url = server.url
        if certificates is not None:
            front_end = stack.enter_context(FrontEndProcess(server.port, str(certificates.server_pem)))
            url = front_end.url
        server.execute("CREATE TABLE marks(id TEXT PRIMARY KEY, origin INTEGER NOT NULL)")
        folder = workdir / "replicas"
        folder.mkdir()
        replicas = list(await asyncio.gather(*(
            turso.lib_sync_aio.connect_sync(str(folder / f"replica-{index}.db"), url)
            for index in range(settings.replicas)
        )))
        syncs: list[BackgroundSync] = []
        try:
            server_latency = await _server_latency(replicas[0], settings.latency_rounds)

            # The heartbeat alone: its own CPU cost and lateness, the floor of what follows.
            heartbeat = Heartbeat()
            await heartbeat.start()
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            await asyncio.sleep(settings.baseline)
            heartbeat_cores = (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
            idle = [lateness for end, lateness in heartbeat.beats if end > wall_start]

            syncs = [replica.sync_in_background(settings.interval) for replica in replicas]
            await asyncio.sleep(settings.warm_up)

            rows = _Rows(settings.replicas)
            rounds_start = sum(sync.status.rounds for sync in syncs)
            counters_start = _front_end_counters(front_end)
            cpu_start, wall_start = time.process_time(), time.perf_counter()
            until = wall_start + settings.duration
            writer = asyncio.create_task(_write(replicas, rows, settings, until))
            # The checker goes on after the window, until the last row had time to reach every replica (two rounds).
            drain = 2 * settings.interval * 1.2 + 1.0
            checker = asyncio.create_task(_check(replicas, syncs, rows, settings, until + drain))
            await asyncio.sleep(settings.duration / 2)
            threads_syncing = process.num_threads()
            await writer
            cpu_seconds = time.process_time() - cpu_start
            wall = time.perf_counter() - wall_start
            counters_end = _front_end_counters(front_end)
            rounds = sum(sync.status.rounds for sync in syncs) - rounds_start
            syncing = [lateness for end, lateness in heartbeat.beats if wall_start < end <= wall_start + wall]
            wal_sizes = [stats.main_wal_size for stats in await asyncio.gather(*(r.stats() for r in replicas))]
            await checker
            await heartbeat.stop()
            replicas_with_failures = sum(
                1 for sync in syncs if sync.status.last_error is not None or sync.status.consecutive_failures
            )
        finally:
            await asyncio.gather(*(sync.stop() for sync in syncs))
            await asyncio.gather(*(replica.close() for replica in replicas))

    count = settings.replicas
    hour = 3600.0 / wall
    return BackgroundResult(
        replicas=count,
        interval_s=settings.interval,
        duration_s=round(wall, 2),
        write_every_s=settings.write_every,
        heartbeats=len(syncing),
        lateness_p50_ms=round(statistics.median(syncing) * 1e3, 3),
        lateness_p99_ms=round(p99(syncing) * 1e3, 3),
        lateness_max_ms=round(max(syncing) * 1e3, 3),
        idle_lateness_p99_ms=round(p99(idle) * 1e3, 3),
        idle_lateness_max_ms=round(max(idle) * 1e3, 3),
        lateness_quantiles_ms=_quantiles(syncing),
        cpu_s_per_replica_hour=round(cpu_seconds / count * hour, 2),
        cpu_s_per_replica_hour_net=round((cpu_seconds - heartbeat_cores * wall) / count * hour, 2),
        cpu_cores=round(cpu_seconds / wall, 3),
        heartbeat_cpu_cores=round(heartbeat_cores, 3),
        threads_before=threads_before,
        threads_syncing=threads_syncing,
        threads_per_replica=round((threads_syncing - threads_before) / count, 2),
        rounds_per_replica_s=round(rounds / count / wall, 3),
        replicas_with_failures=replicas_with_failures,
        server_latency_ms=round(server_latency * 1e3, 2),
        propagation_limit_ms=round((2 * settings.interval + server_latency) * 1e3, 1),
        rows_written=len(rows.written),
        arrivals=len(rows.propagation),
        missing_arrivals=rows.missing(),
        propagation_p50_ms=round(statistics.median(rows.propagation) * 1e3, 1) if rows.propagation else 0.0,
        propagation_p99_ms=round(p99(rows.propagation) * 1e3, 1) if rows.propagation else 0.0,
        propagation_max_ms=round(max(rows.propagation) * 1e3, 1) if rows.propagation else 0.0,
        propagation_quantiles_ms=_quantiles(rows.propagation),
        wal_bytes_max=max(wal_sizes),
        wal_bytes_median=statistics.median([float(size) for size in wal_sizes]),
        wal_bytes_total=sum(wal_sizes),
        # getattr: the module before our transport (benchmarks/before.py) has no checkpoint_wal_bytes yet.
        checkpoint_wal_bytes=cast(Optional[int], getattr(syncs[0], "checkpoint_wal_bytes", None)) if syncs else None,
        route=PLAIN if front_end is None else TLS,
        front_end_connections=(
            None if front_end is None else counters_end["connections"] - counters_start["connections"]
        ),
        front_end_requests=None if front_end is None else counters_end["requests"] - counters_start["requests"],
    )


async def measure_routes(
    smoke: bool, workdir: Path, certificates: TestCertificates, routes: tuple[str, ...] = ROUTES
) -> list[BackgroundResult]:
    """The benchmark on each of `routes` in turn (PLAIN, TLS), each in a folder of its own under `workdir`."""
    results: list[BackgroundResult] = []
    for route in routes:
        folder = workdir / route.replace(" ", "-")
        folder.mkdir()
        results.append(await measure_background(smoke, folder, certificates=certificates if route == TLS else None))
    return results


def main() -> None:
    """`python -m benchmarks.background [--smoke] [--route plain|tls]... [--output FILE]`: the routes asked for (both
    by default), in turn; the record as JSON, to FILE or standard output."""
    parser = argparse.ArgumentParser(description="Background sync of many replicas on one event loop.")
    parser.add_argument("--smoke", action="store_true", help="5 replicas at interval 0.5 s for 3 s, not 100 for 30 s")
    parser.add_argument("--route", action="append", choices=sorted(ROUTE_ARGUMENTS), help="a route (default: both)")
    parser.add_argument("--output", type=Path, default=None, help="write the record here (default: standard output)")
    arguments = parser.parse_args()
    smoke: bool = arguments.smoke
    output: Optional[Path] = arguments.output
    chosen: Optional[list[str]] = arguments.route
    routes = ROUTES if chosen is None else tuple(ROUTE_ARGUMENTS[name] for name in chosen)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="turso-sync-aio-background-") as workdir:
        certificates = trust_test_ca(Path(workdir))
        results = asyncio.run(measure_routes(smoke, Path(workdir), certificates, routes))
    record = BackgroundRecord(describe_module(), machine(), started, load_start, load_average(), results)
    if output is None:
        json.dump(asdict(record), sys.stdout, indent=1)
        print()
    else:
        record.write(output)


if __name__ == "__main__":
    main()
