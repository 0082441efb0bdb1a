"""A database per tenant: N replicas in one process, each in background sync, against S local sync servers.

N replicas, each its own file, spread over S = 8 `tursodb --sync-server` processes (tenant t on server t % S, every
replica of a server a replica of its one database), all in one process per implementation, each syncing every 5 s
(push, then pull):
- **ours**: `connect_sync` and `conn.sync_in_background(interval=5)`;
- **pyturso's module** (`turso._pyturso_lib_sync_aio`): a task per replica: a round at once, then one every
  interval x a factor drawn from [0.8, 1.2] (the spread of our background sync), each round `push()` then `pull()`;
- **Turso's JS binding** (`@tursodatabase/sync` in one Node process, `benchmarks/js_tenants.mjs`): the same loop.

Two loads: **idle** at N = 100, 500, 1,000 (no writes), and **active** at N = 500, where a writer starts 50 writes a
second on random tenants (an open loop: it does not wait for one write to start the next), each write an INSERT in
a transaction (ours: `async with conn.transaction()`; pyturso's module: `execute` + `commit` under a lock per tenant;
JS: `db.transactionAsync`). Each implementation runs in a child process of its own (benchmarks/tenant_workload.py
has the protocol), one after another, the order rotating per configuration, each against 8 fresh servers.

In each child: one replica is opened, synced and closed first (loading native code; not measured), then a 10 ms
ticker starts on the event loop (in Node a 10 ms setInterval), then:
1. **open**: N replicas, at most 50 opens in flight (as the issue's measurement did), each starting its background
   sync as soon as it is open; the time to open all N, and the ticker's lateness meanwhile;
2. a warm-up of one interval, then the **steady window** (20 s idle, 25 s active): ticker lateness p50/p99/max,
   process CPU time (parent-side, /proc) per replica-hour, and on the active load each write's time;
3. active: the parent waits until every write the child saw acknowledged is on its server (a bounded wait,
   `SELECT id FROM notes` on every server through POST /v2/pipeline), and counts the missing ones;
4. **close**: every background sync stopped and every replica closed at once; the time it takes.
5. ours only, at N = 1,000: N fresh replicas opened **all at once** (`asyncio.gather` of N `connect_sync`, no
   background sync), the time and the ticker's lateness meanwhile, then closed.

The parent samples the child: OS threads (entries of /proc/PID/task, so native threads count; the largest count seen
by a poll every 0.5 s and at every mark), RSS before opening and after (per replica: the difference / N), CPU time at
the window's ends. Every wait is bounded: a child that takes longer than its phase's bound is killed and its standard
error shown. The parent raises its soft RLIMIT_NOFILE (inherited by the children) to hold 1,000 replicas' files.

`python -m benchmarks.tenants [--smoke] [--output FILE]` runs this benchmark alone and prints its table.
"""

import argparse
import asyncio
import contextlib
import datetime
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import turso.lib_sync_aio
from benchmarks.common import (
    CHECKOUT,
    JS,
    OURS,
    PYTURSO,
    AsyncReplica,
    Machine,
    ModuleRecord,
    connect_pyturso,
    describe_module,
    load_average,
    machine,
    rotated,
)
from benchmarks.tenant_workload import (
    INSERT_SQL,
    ChildFailed,
    ChildOutcome,
    ChildRun,
    Pacer,
    ParentLink,
    ProcessSample,
    Summary,
    TenantServers,
    Ticker,
    bounded,
    open_all,
    raise_open_files_limit,
    row_id,
    uniform_tenants,
)
from turso.background_sync_aio import BackgroundSync

IMPLEMENTATIONS = [OURS, PYTURSO, JS]
IDLE = "idle"
ACTIVE = "active"
JS_SCRIPT = CHECKOUT / "benchmarks" / "js_tenants.mjs"
# Open files the children may need: 1,000 replicas x (database, WAL, sync metadata, sockets), with room.
OPEN_FILES_WANTED = 16384
# The relative spread of the rounds' waits in the loops of pyturso's module and of JS (ours: its own, the same).
ROUND_JITTER = 0.2
# Bounds of the child's phases: opening (per replica, plus a floor), closing, the warm-up replica.
OPEN_SECONDS_PER_REPLICA = 0.25
OPEN_SECONDS_FLOOR = 60.0
CLOSE_SECONDS_PER_REPLICA = 0.06
CLOSE_SECONDS_FLOOR = 30.0
WARM_UP_BOUND_SECONDS = 60.0
# How long a write may still run after the window before it counts as unfinished.
WRITE_DRAIN_SECONDS = 30.0


@dataclass(frozen=True)
class TenantsSettings:
    """How big one run of the tenants benchmark is."""

    servers: int
    # Background sync: a round (push, then pull) every this many seconds per replica.
    interval: float
    # Replicas of the idle configurations, and of the active one.
    idle_counts: tuple[int, ...]
    active_count: int
    # The active load's writes per second.
    write_rate: float
    # Opens in flight at most while opening N (the measurement: 50).
    open_concurrency: int
    # The idle N at which ours also opens N fresh replicas all at once.
    all_at_once_counts: tuple[int, ...]
    # Seconds between the end of the open and the steady window, and the windows' lengths.
    warm_up: float
    idle_window: float
    active_window: float
    # How long the parent waits for acknowledged rows to reach the servers.
    check_timeout: float

    def __post_init__(self) -> None:
        counts = (self.servers, self.active_count, self.open_concurrency, *self.idle_counts)
        if min(counts) < 1:
            raise ValueError(f"servers, replica counts and open_concurrency must be at least 1: {self}")
        if min(self.interval, self.write_rate, self.idle_window, self.active_window, self.check_timeout) <= 0:
            raise ValueError(f"interval, write_rate, the windows and check_timeout must be positive: {self}")


TENANTS_FULL = TenantsSettings(
    servers=8, interval=5.0, idle_counts=(100, 500, 1000), active_count=500, write_rate=50.0, open_concurrency=50,
    all_at_once_counts=(1000,), warm_up=5.0, idle_window=20.0, active_window=25.0, check_timeout=30.0,
)
TENANTS_SMOKE = TenantsSettings(
    servers=2, interval=0.5, idle_counts=(10,), active_count=10, write_rate=20.0, open_concurrency=5,
    all_at_once_counts=(10,), warm_up=0.5, idle_window=1.5, active_window=1.5, check_timeout=10.0,
)

# Targets (issue 24), for ours: OS threads at any N; time to open 1,000 at most the JS binding's; 1,000 idle: loop
# lateness p99 and max, CPU per replica-hour; 500 active: loop lateness p99, local write p99; RSS per replica.
THREADS_LIMIT = 64
IDLE_LATENESS_P99_LIMIT_MS = 5.0
IDLE_LATENESS_MAX_LIMIT_MS = 50.0
IDLE_CPU_LIMIT_S = 1.2
ACTIVE_LATENESS_P99_LIMIT_MS = 50.0
ACTIVE_WRITE_P99_LIMIT_MS = 20.0
RSS_PER_REPLICA_LIMIT_MIB = 2.6


@dataclass
class TenantsResult:
    """One implementation in one configuration (written to results.json)."""

    implementation: str
    load: str
    replicas: int
    servers: int
    interval_s: float
    open_concurrency: int
    # Opening N, at most open_concurrency in flight: the time, and the ticker's lateness meanwhile.
    open_s: float
    open_lateness: Summary
    # OS threads: before opening, the most seen at any moment, at the end of the window, after closing.
    threads_before: int
    threads_max: int
    threads_window: int
    threads_after_close: int
    # RSS before opening and after, and (after - before) / N.
    rss_before_mib: float
    rss_opened_mib: float
    rss_per_replica_mib: float
    # The steady window: its length, the ticker's lateness, process CPU (every thread) per replica-hour and in cores,
    # successful rounds per replica (every replica's rounds over the window / N), replicas with a failed round (whole
    # run).
    window_s: float
    lateness: Summary
    cpu_s_per_replica_hour: float
    cpu_cores: float
    rounds_per_replica: float
    replicas_with_failures: int
    # The distinct errors of the latest failed round of each replica (at most 5).
    round_error_messages: list[str]
    # Active load: each acknowledged write's time; writes that failed, that had not ended WRITE_DRAIN_SECONDS after
    # the window; acknowledged rows found on the servers, missing when the wait ran out, rows found that were not
    # acknowledged, and the wait.
    writes: Summary
    write_errors: int
    write_error_messages: list[str]
    writes_unfinished: int
    rows_acknowledged: int
    rows_found: int
    rows_missing: int
    rows_unacknowledged: int
    rows_wait_s: float
    # Stopping every background sync and closing every replica, at once.
    close_s: float
    # Ours at some N: N fresh replicas opened all at once (no background sync): the time, the ticker's lateness
    # meanwhile, and the time to close them.
    all_at_once_open_s: Optional[float] = None
    all_at_once_lateness: Optional[Summary] = None
    all_at_once_close_s: Optional[float] = None
    all_at_once_threads_max: Optional[int] = None
    # Set when this child failed (then the figures above are zeros): what went wrong.
    error: Optional[str] = None


def result_from_json(data: dict[str, Any]) -> TenantsResult:
    """A TenantsResult from its asdict() form."""
    fields = dict(data)
    fields.setdefault("round_error_messages", [])
    for name in ("open_lateness", "lateness", "writes"):
        fields[name] = Summary.from_json(data[name])
    if data.get("all_at_once_lateness") is not None:
        fields["all_at_once_lateness"] = Summary.from_json(data["all_at_once_lateness"])
    return TenantsResult(**fields)


@dataclass
class TenantsRecord:
    """One standalone run of this benchmark (`python -m benchmarks.tenants`)."""

    module: ModuleRecord
    machine: Machine
    started: str
    load_average_start: tuple[float, float, float]
    load_average_end: tuple[float, float, float]
    settings: dict[str, Any]
    results: list[TenantsResult]


# ---------------------------------------------------------------------------------------------------------------------
# The child (ours and pyturso's module).


class TenantReplica(Protocol):
    """One tenant's replica in a child: its background sync, its writes, its close."""

    def start_sync(self) -> None: ...

    async def write(self, tenant: int, note_id: str) -> None: ...

    async def sync_once(self) -> None: ...

    async def close(self) -> None: ...

    @property
    def rounds(self) -> int: ...

    @property
    def failed_rounds(self) -> int: ...

    @property
    def round_error(self) -> Optional[str]: ...


class _OursReplica:
    """Ours: `sync_in_background(interval)`; writes in `async with conn.transaction()`."""

    def __init__(self, conn: turso.lib_sync_aio.ConnectionSync, interval: float) -> None:
        self.conn = conn
        self.interval = interval
        self.sync: Optional[BackgroundSync] = None

    def start_sync(self) -> None:
        self.sync = self.conn.sync_in_background(self.interval)

    async def write(self, tenant: int, note_id: str) -> None:
        async with self.conn.transaction():
            await self.conn.execute(INSERT_SQL, (note_id, tenant, f"note {note_id}"))

    async def sync_once(self) -> None:
        await self.conn.push()
        await self.conn.pull()

    async def close(self) -> None:
        if self.sync is not None:
            await self.sync.stop()
        await self.conn.close()

    @property
    def rounds(self) -> int:
        return 0 if self.sync is None else self.sync.status.rounds

    @property
    def failed_rounds(self) -> int:
        if self.sync is None:
            return 0
        status = self.sync.status
        return int(status.last_error is not None or status.consecutive_failures > 0)

    @property
    def round_error(self) -> Optional[str]:
        error = None if self.sync is None else self.sync.status.last_error
        return None if error is None else f"{type(error).__name__}: {error}"


class _LoopReplica:
    """pyturso's module: a task per replica, a round (push, then pull) at once and then every interval x
    [1 - ROUND_JITTER, 1 + ROUND_JITTER]; writes `execute` + `commit` under a lock of its own (the module has no
    transaction blocks, and two tasks' writes must not share one)."""

    def __init__(self, conn: AsyncReplica, interval: float, chooser: random.Random) -> None:
        self.conn = conn
        self.interval = interval
        self.chooser = chooser
        self.lock = asyncio.Lock()
        self._rounds = 0
        self._failed_rounds = 0
        self._round_error: Optional[str] = None
        self._stopping = asyncio.Event()
        self._task: Optional["asyncio.Task[None]"] = None

    def start_sync(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.conn.push()
                await self.conn.pull()
                self._rounds += 1
            except Exception as error:  # noqa: BLE001  # counted: a failed round is tried again, as a background sync does
                self._failed_rounds += 1
                self._round_error = f"{type(error).__name__}: {error}"
            delay = self.interval * self.chooser.uniform(1 - ROUND_JITTER, 1 + ROUND_JITTER)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def write(self, tenant: int, note_id: str) -> None:
        async with self.lock:
            await self.conn.execute(INSERT_SQL, (note_id, tenant, f"note {note_id}"))
            await self.conn.commit()

    async def sync_once(self) -> None:
        await self.conn.push()
        await self.conn.pull()

    async def close(self) -> None:
        # Not cancelled: the round in flight ends first (a cancelled future would only be resolved by the worker).
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self.conn.close()

    @property
    def rounds(self) -> int:
        return self._rounds

    @property
    def failed_rounds(self) -> int:
        return int(self._failed_rounds > 0)

    @property
    def round_error(self) -> Optional[str]:
        return self._round_error


@dataclass
class _ChildConfig:
    """What a child is asked to do (passed as JSON on its command line)."""

    implementation: str
    load: str
    replicas: int
    urls: list[str]
    folder: str
    interval: float
    open_concurrency: int
    all_at_once: bool
    warm_up: float
    window: float
    write_rate: float
    seed: int


async def _open_replica(config: _ChildConfig, path: Path, url: str, chooser: random.Random) -> TenantReplica:
    if config.implementation == OURS:
        return _OursReplica(await turso.lib_sync_aio.connect_sync(str(path), url), config.interval)
    return _LoopReplica(await connect_pyturso(str(path), url), config.interval, chooser)


def _open_bound(count: int) -> float:
    return OPEN_SECONDS_FLOOR + OPEN_SECONDS_PER_REPLICA * count


def _close_bound(count: int) -> float:
    return CLOSE_SECONDS_FLOOR + CLOSE_SECONDS_PER_REPLICA * count


async def _close_all(replicas: list[TenantReplica]) -> float:
    start = time.perf_counter()
    await bounded(asyncio.gather(*(replica.close() for replica in replicas)), _close_bound(len(replicas)),
                  f"closing {len(replicas)} replicas")
    return time.perf_counter() - start


async def _warm_up(config: _ChildConfig, link: ParentLink, chooser: random.Random) -> None:
    link.phase("warm-up replica", WARM_UP_BOUND_SECONDS)
    warm_up = await _open_replica(config, Path(config.folder) / "warm-up.db", config.urls[0], chooser)
    await warm_up.write(0, "warm-up")
    await warm_up.sync_once()
    await _close_all([warm_up])


async def _all_at_once(config: _ChildConfig, link: ParentLink, ticker: Ticker, chooser: random.Random
                       ) -> dict[str, Any]:
    """N fresh replicas opened at once (no background sync), then closed."""
    folder = Path(config.folder) / "all-at-once"
    folder.mkdir()
    count = config.replicas
    link.phase("open all at once", _open_bound(count))
    start = time.perf_counter()
    replicas = await bounded(
        open_all(count, lambda tenant: _open_replica(
            config, folder / f"tenant-{tenant}.db", config.urls[tenant % len(config.urls)], chooser), None),
        _open_bound(count), f"opening {count} replicas at once")
    opened = time.perf_counter()
    await link.mark("all_at_once_opened")
    link.phase("close all at once", _close_bound(count))
    close_s = await _close_all(replicas)
    return {
        "open_s": round(opened - start, 3),
        "lateness": asdict(ticker.between(start, opened)),
        "close_s": round(close_s, 3),
    }


async def _window(config: _ChildConfig, link: ParentLink, replicas: list[TenantReplica]) -> dict[str, Any]:
    """The steady window: idle, or the writer's open loop; then (active) the check of the acknowledged rows."""
    acknowledged: list[str] = []
    choose = uniform_tenants(config.replicas, config.seed)

    async def write(number: int) -> None:
        tenant = choose()
        note_id = row_id(config.implementation, tenant, number)
        await replicas[tenant].write(tenant, note_id)
        acknowledged.append(note_id)

    link.phase("window", config.window + WRITE_DRAIN_SECONDS + 10)
    await link.mark("window_start")
    start = time.perf_counter()
    rounds_start = sum(replica.rounds for replica in replicas)
    pacer: Optional[Pacer] = None
    if config.load == ACTIVE:
        pacer = Pacer(config.write_rate, write)
        await pacer.run(config.window)
    else:
        await asyncio.sleep(config.window)
    end = time.perf_counter()
    rounds = sum(replica.rounds for replica in replicas) - rounds_start
    await link.mark("window_end")
    outcome = await pacer.finish(WRITE_DRAIN_SECONDS) if pacer is not None else None
    if config.load == ACTIVE:
        link.phase("check", 120.0)
        await link.check(acknowledged)
    return {
        "start": start,
        "end": end,
        "rounds_per_replica": round(rounds / config.replicas, 3),
        "writes": asdict(Summary.of(outcome.latencies if outcome else [])),
        "write_errors": len(outcome.errors) if outcome else 0,
        "write_error_messages": sorted(set(outcome.errors))[:5] if outcome else [],
        "writes_unfinished": outcome.unfinished if outcome else 0,
    }


async def _child(config: _ChildConfig) -> dict[str, Any]:
    link = ParentLink()
    await link.connect()
    chooser = random.Random(config.seed)
    await _warm_up(config, link, chooser)
    ticker = Ticker()
    ticker.start()
    await asyncio.sleep(0.2)
    await link.mark("before")

    count = config.replicas
    folder = Path(config.folder) / "replicas"
    folder.mkdir()

    async def open_syncing(tenant: int) -> TenantReplica:
        replica = await _open_replica(config, folder / f"tenant-{tenant}.db", config.urls[tenant % len(config.urls)],
                                      chooser)
        replica.start_sync()
        return replica

    link.phase("open", _open_bound(count))
    start = time.perf_counter()
    replicas = await bounded(open_all(count, open_syncing, config.open_concurrency), _open_bound(count),
                             f"opening {count} replicas, {config.open_concurrency} at a time")
    opened = time.perf_counter()
    await link.mark("opened")
    link.phase("warm-up", config.warm_up + 10)
    await asyncio.sleep(config.warm_up)
    window = await _window(config, link, replicas)
    failures = sum(replica.failed_rounds for replica in replicas)
    round_errors = sorted({error for error in (replica.round_error for replica in replicas) if error is not None})
    link.phase("close", _close_bound(count))
    close_s = await _close_all(replicas)
    await asyncio.sleep(0.5)
    await link.mark("closed")
    at_once = await _all_at_once(config, link, ticker, chooser) if config.all_at_once else None
    await ticker.stop()
    return {
        "open_s": round(opened - start, 3),
        "open_lateness": asdict(ticker.between(start, opened)),
        "window_s": round(window["end"] - window["start"], 3),
        "lateness": asdict(ticker.between(window["start"], window["end"])),
        "rounds_per_replica": window["rounds_per_replica"],
        "replicas_with_failures": failures,
        "round_error_messages": round_errors[:5],
        "writes": window["writes"],
        "write_errors": window["write_errors"],
        "write_error_messages": window["write_error_messages"],
        "writes_unfinished": window["writes_unfinished"],
        "close_s": round(close_s, 3),
        "all_at_once": at_once,
    }


def child_main(config_json: str) -> None:
    """The child's entry: run the configuration, print the result line."""
    config = _ChildConfig(**json.loads(config_json))
    link = ParentLink()
    result = asyncio.run(_child(config))
    link.result(result)


# ---------------------------------------------------------------------------------------------------------------------
# The parent.


def _command(config: _ChildConfig) -> list[str]:
    if config.implementation == JS:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH (make setup installs the JS binding with npm, which needs it)")
        return [node, str(JS_SCRIPT), json.dumps(asdict(config))]
    return [sys.executable, "-m", "benchmarks.tenants", "--child", json.dumps(asdict(config))]


def _sample(outcome: ChildOutcome, mark: str) -> ProcessSample:
    sample = outcome.marks.get(mark)
    if sample is None:
        raise ChildFailed(f"the child never marked {mark!r}")
    return sample


def _summarize(config: _ChildConfig, servers: int, outcome: ChildOutcome) -> TenantsResult:
    found: dict[str, Any] = outcome.result
    before, opened = _sample(outcome, "before"), _sample(outcome, "opened")
    window_start, window_end = _sample(outcome, "window_start"), _sample(outcome, "window_end")
    cpu = window_end.cpu_s - window_start.cpu_s
    wall = window_end.at - window_start.at
    check = outcome.checks[0] if outcome.checks else None
    at_once: Optional[dict[str, Any]] = found.get("all_at_once")
    return TenantsResult(
        implementation=config.implementation,
        load=config.load,
        replicas=config.replicas,
        servers=servers,
        interval_s=config.interval,
        open_concurrency=config.open_concurrency,
        open_s=float(found["open_s"]),
        open_lateness=Summary.from_json(found["open_lateness"]),
        threads_before=before.threads,
        threads_max=outcome.threads_max,
        threads_window=window_end.threads,
        threads_after_close=_sample(outcome, "closed").threads,
        rss_before_mib=before.rss_mib,
        rss_opened_mib=opened.rss_mib,
        rss_per_replica_mib=round((opened.rss_mib - before.rss_mib) / config.replicas, 3),
        window_s=round(wall, 2),
        lateness=Summary.from_json(found["lateness"]),
        cpu_s_per_replica_hour=round(cpu / config.replicas / wall * 3600, 3),
        cpu_cores=round(cpu / wall, 3),
        rounds_per_replica=float(found["rounds_per_replica"]),
        replicas_with_failures=int(found["replicas_with_failures"]),
        round_error_messages=[str(message) for message in found.get("round_error_messages", [])],
        writes=Summary.from_json(found["writes"]),
        write_errors=int(found["write_errors"]),
        write_error_messages=[str(message) for message in found["write_error_messages"]],
        writes_unfinished=int(found["writes_unfinished"]),
        rows_acknowledged=check.acknowledged if check else 0,
        rows_found=check.found if check else 0,
        rows_missing=check.missing if check else 0,
        rows_unacknowledged=check.unacknowledged if check else 0,
        rows_wait_s=check.waited_s if check else 0.0,
        close_s=float(found["close_s"]),
        all_at_once_open_s=None if at_once is None else float(at_once["open_s"]),
        all_at_once_lateness=None if at_once is None else Summary.from_json(at_once["lateness"]),
        all_at_once_close_s=None if at_once is None else float(at_once["close_s"]),
        all_at_once_threads_max=None if at_once is None else _sample(outcome, "all_at_once_opened").threads,
    )


def _failed(config: _ChildConfig, servers: int, error: str) -> TenantsResult:
    nothing = Summary.of([])
    return TenantsResult(
        implementation=config.implementation, load=config.load, replicas=config.replicas, servers=servers,
        interval_s=config.interval, open_concurrency=config.open_concurrency, open_s=0.0, open_lateness=nothing,
        threads_before=0, threads_max=0, threads_window=0, threads_after_close=0, rss_before_mib=0.0,
        rss_opened_mib=0.0, rss_per_replica_mib=0.0, window_s=0.0, lateness=nothing, cpu_s_per_replica_hour=0.0,
        cpu_cores=0.0, rounds_per_replica=0.0, replicas_with_failures=0, round_error_messages=[], writes=nothing,
        write_errors=0, write_error_messages=[], writes_unfinished=0, rows_acknowledged=0, rows_found=0, rows_missing=0,
        rows_unacknowledged=0, rows_wait_s=0.0, close_s=0.0, error=error,
    )


def _headline(message: str) -> str:
    """A failed child's message in one line: what happened, and the last line of its standard error (the error)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) < 2:
        return lines[0] if lines else message
    return f"{lines[0].removesuffix('; its standard error ends with:')}: {lines[-1]}"


def configurations(settings: TenantsSettings) -> list[tuple[str, int]]:
    """(load, N) of every configuration, in the order run."""
    return [(IDLE, count) for count in settings.idle_counts] + [(ACTIVE, settings.active_count)]


async def _run_one(settings: TenantsSettings, config: _ChildConfig, folder: Path, smoke: bool) -> TenantsResult:
    label = f"tenants {config.load} N={config.replicas} {config.implementation}"
    with TenantServers(settings.servers) as servers:
        config.urls = servers.urls
        run = ChildRun(label, _command(config), servers, f"{config.implementation}-", settings.check_timeout,
                       folder / "stderr.txt")
        try:
            outcome = await run.run()
            return _summarize(config, settings.servers, outcome)
        except ChildFailed as error:
            if smoke:
                raise
            print(f"{error}", file=sys.stderr, flush=True)
            return _failed(config, settings.servers, _headline(str(error)))
        finally:
            # The replicas' files: up to 1,000 per child, not needed once measured.
            shutil.rmtree(folder / "files", ignore_errors=True)


async def measure_tenants(smoke: bool, workdir: Path, settings: Optional[TenantsSettings] = None,
                          implementations: Sequence[str] = IMPLEMENTATIONS, progress: bool = True
                          ) -> list[TenantsResult]:
    """Every configuration, each implementation in its own child against fresh servers, the order rotating."""
    if settings is None:
        settings = TENANTS_SMOKE if smoke else TENANTS_FULL
    raise_open_files_limit(OPEN_FILES_WANTED)
    results: list[TenantsResult] = []
    for turn, (load, count) in enumerate(configurations(settings)):
        for implementation in rotated(list(implementations), turn):
            folder = workdir / f"{load}-{count}-{implementation}"
            (folder / "files").mkdir(parents=True)
            config = _ChildConfig(
                implementation=implementation, load=load, replicas=count, urls=[], folder=str(folder / "files"),
                interval=settings.interval, open_concurrency=settings.open_concurrency,
                all_at_once=implementation == OURS and load == IDLE and count in settings.all_at_once_counts,
                warm_up=settings.warm_up, window=settings.active_window if load == ACTIVE else settings.idle_window,
                write_rate=settings.write_rate if load == ACTIVE else 0.0, seed=turn,
            )
            started = time.perf_counter()
            result = await _run_one(settings, config, folder, smoke)
            results.append(result)
            if progress:
                print(f"  tenants {load} N={count} {implementation}: {time.perf_counter() - started:.0f} s"
                      + (f" (failed: {result.error})" if result.error else ""), file=sys.stderr, flush=True)
    return results


def settings_record(settings: TenantsSettings) -> dict[str, Any]:
    """The settings as results.json records them."""
    return asdict(settings)


def main(argv: "list[str] | None" = None) -> None:
    """`python -m benchmarks.tenants [--smoke] [--output FILE]`: the tenants benchmark alone; its record as JSON to
    FILE (or standard output), its table on standard error. `--child CONFIG` is a child's entry (internal)."""
    parser = argparse.ArgumentParser(description="N replicas in background sync in one process, three implementations.")
    parser.add_argument("--smoke", action="store_true", help="a tiny run (N = 10, a few seconds per child)")
    parser.add_argument("--output", type=Path, default=None, help="write the record here (default: standard output)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the replicas go (default: temp)")
    parser.add_argument("--implementation", action="append", choices=IMPLEMENTATIONS,
                        help="run only this implementation (repeatable; default: all three)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    child: Optional[str] = arguments.child
    if child is not None:
        child_main(child)
        return
    smoke: bool = arguments.smoke
    output: Optional[Path] = arguments.output
    parent: Optional[Path] = arguments.workdir
    chosen: Optional[list[str]] = arguments.implementation
    settings = TENANTS_SMOKE if smoke else TENANTS_FULL
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="turso-sync-aio-tenants-", dir=parent) as workdir:
        results = asyncio.run(measure_tenants(smoke, Path(workdir), settings, chosen or IMPLEMENTATIONS))
    record = TenantsRecord(describe_module(), machine(), started, load_start, load_average(),
                           settings_record(settings), results)
    text = json.dumps(asdict(record), indent=1) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

