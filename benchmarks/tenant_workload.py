"""The pieces of a database-per-tenant benchmark, shared by the tenants benchmark (benchmarks/tenants.py) and the
replica pool benchmark (benchmarks/tenant_pool.py).

A tenant is a number; its replica syncs with one of S local `tursodb --sync-server` processes (tenant % S), and its
rows go in one table, `notes`, whose ids name the implementation, the tenant and the request, so that the rows on the
servers can be compared with the writes a benchmark saw acknowledged.

Each implementation runs in a child process of its own (`python -m ...` or `node ...`), so that threads, memory and
CPU time are the process's alone. The child and the parent talk by JSON lines, the child's on its standard output,
each answered by one line "ok" on its standard input where it asks:

- `{"phase": NAME, "bound_s": SECONDS}`: the child starts a phase that ends within SECONDS (it enforces that bound
  itself; the parent gives up on a child whose next line takes longer than that and a margin, and kills it);
- `{"mark": NAME}`: the parent samples the child's OS threads (`/proc/PID/task`), resident memory and CPU time, then
  answers;
- `{"ask": "check", "ids": [...]}`: the parent waits (bounded) until the servers hold those rows, then answers;
- `{"result": {...}}`: the last line, the child's own measurements.

Parent side: `TenantServers`, `ChildRun`. Child side (Python): `ParentLink`, `Ticker`, `Pacer`, `uniform_tenants`,
`skewed_tenants`, `open_all`. `benchmarks/js_tenants.mjs` is the same child side in Node.
"""

import asyncio
import contextlib
import json
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Awaitable, Callable, Optional, Sequence, TypeVar

import psutil

from benchmarks.common import p99
from testkit.sync_server import SyncServer

_T = TypeVar("_T")

# The table every tenant's rows go in (created on each server before any replica opens, so that a bootstrap brings
# it), the statement a write runs, and how the servers are asked for the rows.
SCHEMA = "CREATE TABLE notes(id TEXT PRIMARY KEY, tenant INTEGER NOT NULL, body TEXT NOT NULL)"
INSERT_SQL = "INSERT INTO notes(id, tenant, body) VALUES (?, ?, ?)"
SELECT_IDS_SQL = "SELECT id FROM notes"
# The loop ticker's period: a task (in Node a setInterval) that wakes every 10 ms and records how late it was.
TICK_SECONDS = 0.010
# What the parent adds to a child's own bound on a phase before giving up on it (a child whose event loop is stuck
# cannot enforce its own bound).
PARENT_MARGIN_SECONDS = 30.0
# How often the parent counts the child's threads between marks (the largest count is reported).
THREAD_POLL_SECONDS = 0.5
# How often the parent asks the servers for the rows while it waits for them.
CHECK_POLL_SECONDS = 0.5
# The lines of the child's standard error kept for an error message.
STDERR_TAIL_LINES = 30


def row_id(implementation: str, tenant: int, number: int) -> str:
    """The id of the `number`-th write of a run, on `tenant`."""
    return f"{implementation}-{tenant}-{number}"


@dataclass
class Summary:
    """Percentiles of a list of durations, in milliseconds (0 when there was none)."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> "Summary":
        """Summarise durations given in seconds."""
        if not seconds:
            return cls(0, 0.0, 0.0, 0.0)
        return cls(
            count=len(seconds),
            p50_ms=round(statistics.median(seconds) * 1e3, 3),
            p99_ms=round(p99(seconds) * 1e3, 3),
            max_ms=round(max(seconds) * 1e3, 3),
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Summary":
        return cls(int(data["count"]), float(data["p50_ms"]), float(data["p99_ms"]), float(data["max_ms"]))


# ---------------------------------------------------------------------------------------------------------------------
# The parent's side.


@dataclass
class CheckOutcome:
    """Whether the rows a child saw acknowledged reached the servers (the parent's answer to a "check")."""

    acknowledged: int
    # Acknowledged rows found on the servers, and not found when the wait ran out.
    found: int
    missing: int
    # Rows of this run on the servers that the child did not see acknowledged (a write that failed or never ended,
    # yet committed).
    unacknowledged: int
    # How long the parent waited until every acknowledged row was there (or until it gave up).
    waited_s: float


class TenantServers:
    """S `tursodb --sync-server` processes on loopback, each with the `notes` table; tenant t syncs with t % S.

    Use it as a context manager. The remote databases are in memory: the servers' own disk writes would only add
    noise to what the measured process does on a 2-core machine.
    """

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"at least one server is needed, not {count}")
        self._count = count
        self._stack = contextlib.ExitStack()
        self.servers: list[SyncServer] = []

    def __enter__(self) -> "TenantServers":
        try:
            for _ in range(self._count):
                server = self._stack.enter_context(SyncServer())
                server.execute(SCHEMA)
                self.servers.append(server)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self._stack.close()

    @property
    def urls(self) -> list[str]:
        """Each server's URL, in order: tenant t's is `urls[t % len(urls)]`."""
        return [server.url for server in self.servers]

    def ids(self) -> set[str]:
        """Every row id on every server."""
        return {str(row[0]) for server in self.servers for row in server.execute(SELECT_IDS_SQL)}

    def wait_for(self, ids: Sequence[str], prefix: str, timeout: float) -> CheckOutcome:
        """Wait up to `timeout` seconds until every id in `ids` is on the servers; rows whose id starts with `prefix`
        and that are not in `ids` count as unacknowledged."""
        wanted = set(ids)
        start = time.perf_counter()
        while True:
            present = {found for found in self.ids() if found.startswith(prefix)}
            waited = time.perf_counter() - start
            if wanted <= present or waited >= timeout:
                return CheckOutcome(
                    acknowledged=len(wanted),
                    found=len(wanted & present),
                    missing=len(wanted - present),
                    unacknowledged=len(present - wanted),
                    waited_s=round(waited, 2),
                )
            time.sleep(CHECK_POLL_SECONDS)


@dataclass
class ProcessSample:
    """The child process at one moment: OS threads (entries of /proc/PID/task), resident memory, CPU time (user and
    system, every thread)."""

    threads: int
    rss_mib: float
    cpu_s: float
    # time.perf_counter() of the parent when sampled.
    at: float


def sample_process(process: psutil.Process) -> ProcessSample:
    """Threads, RSS and CPU time of `process` now."""
    threads = len(os.listdir(f"/proc/{process.pid}/task"))
    times = process.cpu_times()
    return ProcessSample(
        threads=threads,
        rss_mib=round(process.memory_info().rss / 1024 / 1024, 2),
        cpu_s=times.user + times.system,
        at=time.perf_counter(),
    )


@dataclass
class ChildOutcome:
    """What the parent saw of one child: its samples at each mark, the largest thread count seen, the checks, and the
    child's own result."""

    marks: dict[str, ProcessSample] = field(default_factory=dict[str, ProcessSample])
    threads_max: int = 0
    checks: list[CheckOutcome] = field(default_factory=list[CheckOutcome])
    result: dict[str, Any] = field(default_factory=dict[str, Any])


class ChildFailed(RuntimeError):
    """A child of a tenants benchmark failed, exited early, or took longer than its bound (it was killed)."""


class ChildRun:
    """Runs one child (`command`) and serves its side of the protocol (module docstring) until its result.

    `check_prefix` is the prefix of the ids of this child's rows; `check_timeout` bounds each "check".
    """

    def __init__(
        self,
        label: str,
        command: list[str],
        servers: TenantServers,
        check_prefix: str,
        check_timeout: float,
        stderr_path: Path,
        start_bound: float = 60.0,
    ) -> None:
        self.label = label
        self.command = command
        self.servers = servers
        self.check_prefix = check_prefix
        self.check_timeout = check_timeout
        self.stderr_path = stderr_path
        self.start_bound = start_bound
        self.outcome = ChildOutcome()

    async def run(self) -> ChildOutcome:
        """Start the child, serve it, and return what it measured; ChildFailed (with the tail of its standard error)
        if it fails or takes longer than it said."""
        with open(self.stderr_path, "wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                limit=16 * 1024 * 1024,
            )
            poller = asyncio.create_task(self._poll_threads(psutil.Process(process.pid)))
            try:
                await self._serve(process, psutil.Process(process.pid))
                await asyncio.wait_for(process.wait(), PARENT_MARGIN_SECONDS)
            except (asyncio.TimeoutError, ChildFailed, OSError, ValueError, psutil.Error) as error:
                raise ChildFailed(self._explain(error, process.returncode)) from error
            finally:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        if process.returncode != 0:
            raise ChildFailed(self._explain(None, process.returncode))
        return self.outcome

    async def _serve(self, process: "asyncio.subprocess.Process", watched: psutil.Process) -> None:
        assert process.stdout is not None and process.stdin is not None
        bound = self.start_bound
        phase = "start"
        while True:
            try:
                line = await asyncio.wait_for(process.stdout.readline(), bound + PARENT_MARGIN_SECONDS)
            except asyncio.TimeoutError:
                raise ChildFailed(f"phase {phase!r} did not end within {bound:g} s (+{PARENT_MARGIN_SECONDS:g} s)")
            if not line:
                raise ChildFailed(f"exited during phase {phase!r} without a result")
            message: dict[str, Any] = json.loads(line)
            if "result" in message:
                self.outcome.result = message["result"]
                return
            if "phase" in message:
                phase, bound = str(message["phase"]), float(message["bound_s"])
                continue
            if "mark" in message:
                sample = sample_process(watched)
                self.outcome.marks[str(message["mark"])] = sample
                self.outcome.threads_max = max(self.outcome.threads_max, sample.threads)
            elif message.get("ask") == "check":
                ids = [str(found) for found in message["ids"]]
                self.outcome.checks.append(
                    await asyncio.to_thread(self.servers.wait_for, ids, self.check_prefix, self.check_timeout)
                )
            else:
                raise ChildFailed(f"unexpected line {line!r}")
            process.stdin.write(b"ok\n")
            await process.stdin.drain()

    async def _poll_threads(self, watched: psutil.Process) -> None:
        while True:
            with contextlib.suppress(OSError):
                threads = len(os.listdir(f"/proc/{watched.pid}/task"))
                self.outcome.threads_max = max(self.outcome.threads_max, threads)
            await asyncio.sleep(THREAD_POLL_SECONDS)

    def _explain(self, error: Optional[BaseException], returncode: Optional[int]) -> str:
        try:
            lines = self.stderr_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            lines = []
        tail = "\n".join(lines[-STDERR_TAIL_LINES:])
        what = f"{type(error).__name__}: {error}" if error is not None else f"exit status {returncode}"
        return f"{self.label}: {what}; its standard error ends with:\n{tail}"


def raise_open_files_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's soft limit of open files towards `wanted` (at most the hard limit), so that children,
    which inherit it, can hold every replica's files and sockets; returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


# ---------------------------------------------------------------------------------------------------------------------
# The child's side (Python).


class ParentLink:
    """The child's side of the protocol: JSON lines out on standard output, answers in on standard input (read on
    the event loop, so that waiting for one never holds the loop)."""

    def __init__(self, output: IO[str] = sys.stdout) -> None:
        self._output = output
        self._reader: Optional[asyncio.StreamReader] = None

    async def connect(self) -> None:
        """Start reading standard input on the running loop."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        self._reader = reader

    def _send(self, message: dict[str, Any]) -> None:
        self._output.write(json.dumps(message) + "\n")
        self._output.flush()

    async def _answer(self) -> None:
        assert self._reader is not None, "connect() first"
        answer = await asyncio.wait_for(self._reader.readline(), PARENT_MARGIN_SECONDS * 4)
        if answer.strip() != b"ok":
            raise RuntimeError(f"the parent answered {answer!r}")

    def phase(self, name: str, bound: float) -> None:
        """Say that phase `name` starts and ends within `bound` seconds."""
        self._send({"phase": name, "bound_s": bound})

    async def mark(self, name: str) -> None:
        """Have the parent sample this process now (threads, RSS, CPU time) as `name`."""
        self._send({"mark": name})
        await self._answer()

    async def check(self, ids: Sequence[str]) -> None:
        """Have the parent wait (bounded) until the servers hold the rows `ids`."""
        self._send({"ask": "check", "ids": list(ids)})
        await self._answer()

    def result(self, result: dict[str, Any]) -> None:
        """The child's last line: what it measured."""
        self._send({"result": result})


class Ticker:
    """A task that sleeps TICK_SECONDS at a time and records how late each wake-up is (the loop's lateness)."""

    def __init__(self, period: float = TICK_SECONDS) -> None:
        self.period = period
        # (when the wake-up happened, how late it was), in perf_counter seconds.
        self.beats: list[tuple[float, float]] = []
        self._task: Optional["asyncio.Task[None]"] = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(self.period)
            end = time.perf_counter()
            self.beats.append((end, end - start - self.period))

    async def stop(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def between(self, start: float, end: float) -> Summary:
        """The lateness of the wake-ups between `start` and `end` (perf_counter seconds)."""
        return Summary.of([lateness for when, lateness in self.beats if start < when <= end])


async def bounded(awaitable: Awaitable[_T], seconds: float, what: str) -> _T:
    """`awaitable`, or a RuntimeError that says what took longer than `seconds`."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise RuntimeError(f"{what} took longer than {seconds:g} s") from None


async def open_all(count: int, open_one: Callable[[int], Awaitable[_T]], at_once: Optional[int]) -> list[_T]:
    """`open_one(tenant)` for tenants 0..count-1, at most `at_once` in flight (None: every one at once), in order."""
    if at_once is None:
        return list(await asyncio.gather(*(open_one(tenant) for tenant in range(count))))
    limit = asyncio.Semaphore(at_once)

    async def one(tenant: int) -> _T:
        async with limit:
            return await open_one(tenant)

    return list(await asyncio.gather(*(one(tenant) for tenant in range(count))))


@dataclass
class PacedOutcome:
    """What a `Pacer` saw: the time each request that succeeded took, the errors, and the requests still running when
    it stopped waiting."""

    latencies: list[float]
    errors: list[str]
    unfinished: int


class Pacer:
    """Starts `request(number)` at `number / rate` seconds, number = 0, 1, ..., each in a task of its own that does not
    wait for the previous ones (an open loop: a slow request does not slow the pace, as in a service whose clients do
    not wait for each other).

    A request's time runs from its own start to its end, so it includes any wait for its tenant (a lock, an open),
    not the loop's lateness in starting it (the ticker measures that)."""

    def __init__(self, rate: float, request: Callable[[int], Awaitable[None]]) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self.rate = rate
        self.request = request
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._tasks: list["asyncio.Task[None]"] = []

    async def _timed(self, number: int) -> None:
        start = time.perf_counter()
        try:
            await self.request(number)
        except Exception as error:  # noqa: BLE001  # counted, not raised: the run's other figures still hold
            self.errors.append(f"{type(error).__name__}: {error}")
            return
        self.latencies.append(time.perf_counter() - start)

    async def run(self, duration: float) -> None:
        """Start requests at the pace for `duration` seconds; returns once the last one has started."""
        start = time.perf_counter()
        number = 0
        while number / self.rate < duration:
            await asyncio.sleep(max(0.0, start + number / self.rate - time.perf_counter()))
            self._tasks.append(asyncio.ensure_future(self._timed(number)))
            number += 1

    async def finish(self, drain: float) -> PacedOutcome:
        """Wait up to `drain` seconds for the requests still running (those left then are cancelled)."""
        unfinished = 0
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=drain)
            unfinished = len(pending)
            for task in pending:
                task.cancel()
        return PacedOutcome(list(self.latencies), list(self.errors), unfinished)


def uniform_tenants(count: int, seed: int) -> Callable[[], int]:
    """Tenants drawn uniformly from 0..count-1 (seeded, so that runs draw alike)."""
    chooser = random.Random(seed)
    return lambda: chooser.randrange(count)


def skewed_tenants(count: int, seed: int, exponent: float = 1.1) -> Callable[[], int]:
    """Tenants drawn with a Zipf-like skew: tenant k with weight 1 / (k + 1) ** exponent, so that a few hot tenants
    take most requests and the rest form a long tail (seeded)."""
    chooser = random.Random(seed)
    weights = [1.0 / (rank + 1) ** exponent for rank in range(count)]
    total = 0.0
    cumulative: list[float] = []
    for weight in weights:
        total += weight
        cumulative.append(total)
    tenants = list(range(count))
    return lambda: chooser.choices(tenants, cum_weights=cumulative)[0]
