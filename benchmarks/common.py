"""What the benchmarks share: run settings, the implementations under test, the remote database, the interleaving."""

import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Awaitable, Callable, Mapping, Optional, Protocol, Sequence, TypeVar, Union, cast

import turso.lib_aio
import turso.lib_sync
import turso.lib_sync_aio
from testkit.sync_server import TURSODB, SyncServer
from testkit.tls import LoopbackCertificates

_T = TypeVar("_T")

CHECKOUT = Path(__file__).resolve().parent.parent
RESULTS_DIR = CHECKOUT / "benchmarks" / "results"
# The asyncio sync module that ships inside the pinned wheel; loaded from the installed file for comparison only.
PYTURSO_MODULE_FILE = CHECKOUT / ".driver" / "turso" / "lib_sync_aio.py"
PYTURSO_MODULE_NAME = "turso._pyturso_lib_sync_aio"

# Names of the implementations in tables, JSON and the chart.
OURS = "ours"
PYTURSO = "pyturso"
BLOCKING = "blocking"
THREADS = "threads"
JS = "js"
DESCRIPTIONS = {
    OURS: "turso.lib_sync_aio (this project)",
    PYTURSO: "lib_sync_aio.py shipped in pyturso 0.8.3, loaded from the installed wheel",
    "turso.aio": "turso.lib_aio.connect on a local file (the driver's async embedded API; queries reference only)",
    "aiosqlite": "aiosqlite (sqlite3 on a worker thread) on a local file (queries reference only)",
    BLOCKING: "turso.lib_sync (blocking driver, called directly)",
    THREADS: "turso.lib_sync from N plain threads at once (concurrency reference only)",
    JS: "@tursodatabase/sync (Turso's JavaScript sync binding, pinned in package.json) in Node, driven by "
    "benchmarks/js_local_sql_while_syncing.mjs (local SQL while syncing only)",
}


@dataclass(frozen=True)
class Settings:
    """How much work one run does; `FULL` for `make bench`, `SMOKE` for a quick check that everything still runs."""

    smoke: bool
    # Where results.json and chart.png go.
    results_dir: Path
    # Per-call overhead: rounds (implementations interleaved in each), and calls timed per round and operation.
    overhead_rounds: int
    stats_calls: int
    sync_calls: int
    # Local queries: rounds, and calls timed per round of the small query (and execute_fetchall), the 100-row SELECT
    # and the INSERT + commit.
    query_rounds: int
    query_calls: int
    select_calls: int
    insert_calls: int
    # Loop responsiveness: rounds, size of the remote database to bootstrap, bytes of new rows for the large pull.
    responsiveness_rounds: int
    bootstrap_bytes: int
    pull_bytes: int
    # Concurrency: rounds, numbers of replicas pulling at once, delay the proxy adds to every request.
    concurrency_rounds: int
    replica_counts: tuple[int, ...]
    proxy_delay: float
    # Footprint: numbers of open replicas to measure.
    footprint_counts: tuple[int, ...]
    # Local SQL while syncing: the delay the proxy adds to every request, rounds of (pull, push) per implementation,
    # how long the replica reads and writes with no sync in flight and after the timed-out pull on the stalled
    # remote, and after how long a statement counts as blocked (longer than a push, which makes two requests).
    local_sql_delay: float
    local_sql_rounds: int
    local_sql_window: float
    local_sql_bound: float
    # Pull and push of one row through a far link with TLS and on plain loopback (benchmarks/round_trips.py): rounds,
    # the far link's round-trip time, and the calls per round and implementation on loopback (one on the far link).
    round_trip_rounds: int
    wan_round_trip: float
    loopback_calls: int
    # A half-open link during background sync (benchmarks/half_open.py): the request_timeout values measured (None
    # leaves the default), replicas per value, the background interval, and how long the link swallows everything.
    half_open_timeouts: tuple[Optional[float], ...]
    half_open_replicas: int
    half_open_interval: float
    half_open_seconds: float


MB = 1024 * 1024

FULL = Settings(
    smoke=False,
    results_dir=RESULTS_DIR,
    overhead_rounds=15,
    stats_calls=300,
    sync_calls=15,
    query_rounds=15,
    query_calls=300,
    select_calls=100,
    insert_calls=30,
    responsiveness_rounds=7,
    bootstrap_bytes=20 * MB,
    pull_bytes=6 * MB,
    concurrency_rounds=7,
    replica_counts=(1, 2, 4, 8, 16, 32),
    proxy_delay=0.050,
    footprint_counts=(1, 32, 128),
    local_sql_delay=1.0,
    local_sql_rounds=3,
    local_sql_window=2.0,
    local_sql_bound=3.0,
    round_trip_rounds=25,
    wan_round_trip=0.050,
    loopback_calls=6,
    half_open_timeouts=(1.0, None),
    half_open_replicas=3,
    half_open_interval=0.2,
    half_open_seconds=3.0,
)

SMOKE = Settings(
    smoke=True,
    results_dir=RESULTS_DIR / "smoke",
    overhead_rounds=1,
    stats_calls=20,
    sync_calls=2,
    query_rounds=1,
    query_calls=10,
    select_calls=5,
    insert_calls=3,
    responsiveness_rounds=1,
    bootstrap_bytes=1 * MB,
    pull_bytes=MB // 4,
    concurrency_rounds=1,
    replica_counts=(1, 2),
    proxy_delay=0.050,
    footprint_counts=(1, 2),
    local_sql_delay=0.1,
    local_sql_rounds=1,
    local_sql_window=0.2,
    local_sql_bound=0.5,
    round_trip_rounds=1,
    wan_round_trip=0.050,
    loopback_calls=1,
    half_open_timeouts=(0.5, 1.0),
    half_open_replicas=1,
    half_open_interval=0.2,
    half_open_seconds=0.5,
)


class AsyncReplica(Protocol):
    """The part of an asyncio sync connection the benchmarks use (ours and pyturso's module both have it)."""

    async def execute(self, sql: str, parameters: Union[Sequence[Any], Mapping[str, Any]] = ...) -> object: ...

    async def commit(self) -> None: ...

    async def pull(self) -> bool: ...

    async def push(self) -> None: ...

    async def stats(self) -> object: ...

    async def close(self) -> None: ...


# Opens an asyncio replica at a path from a remote URL: `await connect(path, url)`.
AsyncConnect = Callable[[str, str], Awaitable[AsyncReplica]]


def load_pyturso_module() -> ModuleType:
    """pyturso's own lib_sync_aio.py, loaded from the installed wheel's file as `turso._pyturso_lib_sync_aio`.

    Its relative imports (`from .lib_aio import ...`) resolve to the same driver modules ours uses.
    """
    loaded = sys.modules.get(PYTURSO_MODULE_NAME)
    if loaded is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(PYTURSO_MODULE_NAME, PYTURSO_MODULE_FILE)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {PYTURSO_MODULE_FILE}")
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "turso"
    sys.modules[PYTURSO_MODULE_NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PYTURSO_MODULE_NAME]
        raise
    if module.NonBlockingConnection is not turso.lib_aio.Connection:
        raise RuntimeError("pyturso's lib_sync_aio.py did not load on the same driver")
    return module


def connect_ours(path: str, url: str) -> Awaitable[AsyncReplica]:
    """Our module: `await turso.lib_sync_aio.connect_sync(path, url)`."""
    return turso.lib_sync_aio.connect_sync(path, url)


def connect_pyturso(path: str, url: str) -> Awaitable[AsyncReplica]:
    """pyturso's module: `await connect_sync(path, url)` (it must be called with the event loop running)."""
    connect = cast(Callable[[str, str], Awaitable[AsyncReplica]], load_pyturso_module().connect_sync)
    return connect(path, url)


ASYNC_CONNECTS: dict[str, AsyncConnect] = {OURS: connect_ours, PYTURSO: connect_pyturso}


def connect_blocking(path: str, url: str) -> turso.lib_sync.ConnectionSync:
    """The blocking driver, called directly."""
    return turso.lib_sync.connect_sync(path, url)  # pyright: ignore[reportUnknownMemberType]  # (cipher parameter)


def fill_remote(server: SyncServer, table: str, total_bytes: int, row_bytes: int = 4000) -> int:
    """Insert random blobs into `table` on the remote until it holds about `total_bytes` more; return the rows added.

    Rows go in statements of about 1 MB (`randomblob` over `generate_series`, run by the remote itself).
    """
    server.execute(f"CREATE TABLE IF NOT EXISTS {table}(id INTEGER PRIMARY KEY, body BLOB)")
    rows_per_statement = max(1, MB // row_bytes)
    rows = max(1, total_bytes // row_bytes)
    added = 0
    while added < rows:
        count = min(rows_per_statement, rows - added)
        server.execute(f"INSERT INTO {table}(body) SELECT randomblob({row_bytes}) FROM generate_series(1, {count})")
        added += count
    return added


def remote_size(server: SyncServer) -> int:
    """Bytes in the remote database (pages in use, write-ahead log included)."""
    pages = server.execute("PRAGMA page_count")[0][0]
    page_size = server.execute("PRAGMA page_size")[0][0]
    assert isinstance(pages, int) and isinstance(page_size, int)
    return pages * page_size


def p99(values: Sequence[float]) -> float:
    """The 99th percentile of `values`: the 99th of statistics.quantiles' 100-quantiles, "inclusive" method (linear
    interpolation between the closest ranks, as numpy's default); a single value is its own percentile."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def rotated(items: list[_T], turn: int) -> list[_T]:
    """`items` starting at position `turn` (so that no implementation always runs first in a round)."""
    shift = turn % len(items)
    return items[shift:] + items[:shift]


# How many calls one implementation makes before the next takes its turn, within a round. The machine drifts between
# a fast and a slow state (another VM on the host, frequency, the other core's load) every few hundred milliseconds;
# in blocks this short, every implementation meets each state about as often, so a drift cannot decide a comparison.
INTERLEAVE_CALLS = 10


@dataclass
class PerCallResult:
    """Time per call of one operation on one implementation in one placement, over every call of every round."""

    implementation: str
    operation: str
    # Where the threads ran: "same core", "other core" or "not pinned" (per-call overhead), "one core" or
    # "not pinned" (local queries); the blocking driver has no worker.
    placement: str
    calls: int
    min_us: float
    median_us: float
    # The median of each round, in microseconds.
    round_medians_us: list[float]

    @classmethod
    def from_rounds(
        cls, implementation: str, operation: str, placement: str, per_round: list[list[float]]
    ) -> "PerCallResult":
        """Summarise the call durations of each round, in seconds."""
        every_call = [duration * 1e6 for durations in per_round for duration in durations]
        return cls(
            implementation=implementation,
            operation=operation,
            placement=placement,
            calls=len(every_call),
            min_us=round(min(every_call), 2),
            median_us=round(statistics.median(every_call), 2),
            round_medians_us=[round(statistics.median(durations) * 1e6, 2) for durations in per_round],
        )


# The name of each thread of our worker pool (turso/_sync_aio/workers.py) starts with this.
OUR_WORKER_THREAD_PREFIX = "turso-worker"
# Every CPU this process may use, as it started.
ALL_CPUS = frozenset(os.sched_getaffinity(0))


def pin_our_workers(cpus: Optional[set[int]]) -> None:
    """Put our worker threads on `cpus` (None: on every CPU), before a block of calls of a placement.

    A worker thread inherits the affinity of the thread that starts it, and pyturso's module and aiosqlite start one
    per connection: a connection opened under a placement keeps its thread there. Ours are the process's pool, shared
    by every connection, and started by whichever placement needed one first; left alone, a thread started under "one
    core" would go on serving the "not pinned" connections pinned (and the other way round)."""
    for thread in threading.enumerate():
        if thread.name.startswith(OUR_WORKER_THREAD_PREFIX) and thread.native_id is not None:
            try:
                os.sched_setaffinity(thread.native_id, ALL_CPUS if cpus is None else cpus)
            except ProcessLookupError:
                pass  # it exited meanwhile (idle): the next one starts from the loop's thread, pinned as it is


def blocks(calls: int, size: int = INTERLEAVE_CALLS) -> list[int]:
    """`calls` split into blocks of at most `size` calls, in the order to run them."""
    return [min(size, calls - start) for start in range(0, calls, size)]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return 0.0


def _pyturso_version() -> str:
    for distribution in importlib.metadata.distributions(path=[str(CHECKOUT / ".driver")]):
        if distribution.metadata["Name"] == "pyturso":
            return distribution.version
    return "unknown"


def _tursodb_version() -> str:
    package = TURSODB.parent / "package.json"
    try:
        for line in package.read_text(encoding="utf-8").splitlines():
            if '"version"' in line:
                return line.split(":", 1)[1].strip().strip('",')
    except OSError:
        pass
    return "unknown"


def filesystem_of(path: Path) -> str:
    """The type of the filesystem `path` is on (from /proc/mounts), e.g. "ext4" or "tmpfs"."""
    best, kind = "", "unknown"
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount_point = fields[1]
                inside = str(path.resolve()).startswith(mount_point.rstrip("/") + "/") or mount_point == "/"
                if inside and len(mount_point) > len(best):
                    best, kind = mount_point, fields[2]
    except OSError:
        pass
    return kind


# The files of the module measured, relative to the checkout that holds the imported turso package.
MODULE_FILES = ("turso/lib_sync_aio.py", "turso/background_sync_aio.py", "turso/sqlalchemy_sync_aio.py")
MODULE_PACKAGE = "turso/_sync_aio"


@dataclass(frozen=True)
class ModuleRecord:
    """Which module a run measured: a digest of its files and the commit of the checkout they came from."""

    # The checkout that holds the imported `turso` package.
    checkout: str
    # sha256 of every module file (MODULE_FILES and MODULE_PACKAGE's .py files) by path, and one over all of them
    # (each path and its digest, in path order).
    sha256: str
    files: dict[str, str]
    # `git rev-parse HEAD` of that checkout, and whether a module file differs from it (then the figures are not
    # those of any commit).
    commit: str
    modified: bool

    def describe(self) -> str:
        """One line for tables and charts: the digest, the commit, and whether the files were as committed."""
        state = "with uncommitted changes" if self.modified else "as committed"
        return f"module sha256 {self.sha256[:12]} ({len(self.files)} files) at commit {self.commit[:10]}, {state}"


def _git(checkout: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=checkout, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def describe_module() -> ModuleRecord:
    """The module this process imported (wherever `turso.lib_sync_aio` comes from): digests of its files, and the
    commit of their checkout."""
    checkout = Path(turso.lib_sync_aio.__file__).resolve().parent.parent
    paths = [*MODULE_FILES, *sorted(
        path.relative_to(checkout).as_posix() for path in (checkout / MODULE_PACKAGE).rglob("*.py")
    )]
    files = {path: hashlib.sha256((checkout / path).read_bytes()).hexdigest() for path in paths}
    overall = hashlib.sha256("".join(f"{path} {digest}\n" for path, digest in sorted(files.items())).encode())
    try:
        commit = _git(checkout, "rev-parse", "HEAD")
        modified = bool(_git(checkout, "status", "--porcelain", "--", *MODULE_FILES, MODULE_PACKAGE))
    except (OSError, subprocess.SubprocessError):
        commit, modified = "unknown (not a git checkout)", True
    return ModuleRecord(str(checkout), overall.hexdigest(), files, commit, modified)


def load_average() -> tuple[float, float, float]:
    """The machine's load average over 1, 5 and 15 minutes (what else was running shapes every figure)."""
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


@dataclass(frozen=True)
class TestCertificates:
    """The files of a throwaway CA (trusted through SSL_CERT_FILE) and of a loopback server certificate it signed."""

    ca_file: Path
    # The server's key and certificate chain in one PEM file, for `FrontEndProcess(port, str(server_pem))`.
    server_pem: Path


def trust_test_ca(folder: Path) -> TestCertificates:
    """Make a test CA and a server certificate for 127.0.0.1 in `folder`, and make this process trust that CA only
    (SSL_CERT_FILE). Call it before any TLS context is made: ours caches one per SSL_CERT_FILE, urllib makes one per
    request, and both read the variable then."""
    certificates = LoopbackCertificates()
    found = TestCertificates(
        certificates.write_ca(folder / "test-ca.pem"), certificates.write_server_pem(folder / "server.pem")
    )
    os.environ["SSL_CERT_FILE"] = str(found.ca_file)
    return found


def transport_connections_opened(replica: AsyncReplica) -> Optional[int]:
    """TCP connections our replica's sync transport has opened so far, or None for pyturso's module (or if our
    module no longer has the attribute).

    The one place the benchmarks reach a private name of ours: `ConnectionSync._engine.http.requests.connections_opened`
    (the engine's operations' HTTP client; partial sync's page reads have another, unused here).
    """
    if not isinstance(replica, turso.lib_sync_aio.ConnectionSync):
        return None
    engine: object = getattr(replica, "_engine", None)
    http: object = getattr(engine, "http", None)
    opened: object = getattr(getattr(http, "requests", None), "connections_opened", None)
    return opened if isinstance(opened, int) else None


@dataclass(frozen=True)
class Machine:
    """Where the benchmark ran."""

    cpu: str
    cores: int
    memory_gib: float
    system: str
    python: str
    pyturso: str
    tursodb: str

    def describe(self) -> str:
        return (
            f"{self.cpu}, {self.cores} cores, {self.memory_gib} GiB; {self.system}; Python {self.python}; "
            f"pyturso {self.pyturso}; tursodb {self.tursodb}"
        )


def machine() -> Machine:
    return Machine(
        cpu=_cpu_model(),
        cores=os.cpu_count() or 0,
        memory_gib=_memory_gib(),
        system=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        pyturso=_pyturso_version(),
        tursodb=_tursodb_version(),
    )
