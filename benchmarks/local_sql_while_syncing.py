"""Local SQL while syncing: how long a local read and a local write + commit take while the replica syncs.

Three implementations, each on its own sync server reached through its own `ProxyProcess` that delays every request
(1 s in the full run): ours, pyturso's module, and Turso's JavaScript sync binding (`@tursodatabase/sync`, pinned in
package.json and installed by `make setup`, driven by `benchmarks/js_local_sql_while_syncing.mjs`, which runs the
same scenarios and prints its samples as JSON). All three stay open and take turns scenario by scenario, in a
rotating order, so that none always meets the shared machine's busier moments.

On each replica a reader and a writer run side by side, each timing its statements one after the other with a
3 ms pause after each: the reader a one-row SELECT (`execute` + `fetchall`; in JS a prepared statement's `get`), the
writer an INSERT then `commit` (in JS an autocommitted `run`). They run:
- **idle**, with no sync operation in flight, for reference (what the machine gives a replica that does not sync);
- **during a pull**: rows were inserted on the remote just before, so the pull has something to apply;
- **during a push**: rows were inserted locally just before, so the push has something to send;
- **on a stalled remote**: the proxy holds every request (it accepts connections and never answers), a pull is
  abandoned after 0.5 s (`asyncio.wait_for` in Python, `Promise.race` in JS), then the replica reads and writes for a
  while. The proxy is then released, the abandoned pull ends, the next pull must return, and the replica's rows are
  counted against the remote's (nothing lost, nothing doubled).

A statement that has not ended after a bound (3 s in the full run) is counted as blocked and ends its reader's or
writer's sampling in that scenario (it would only queue more statements behind it); its latency is recorded as the
time waited, a lower bound. Errors are counted per scenario (a "database is locked" or "busy" would be one), and so
are failed pulls and pushes. Nothing here can hang: every wait is bounded, the Node process's too.
"""

import asyncio
import contextlib
import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Optional, Protocol, Sequence, Union, cast

from benchmarks.common import ASYNC_CONNECTS, CHECKOUT, JS, MB, OURS, PYTURSO, Settings, p99, rotated
from testkit.proxy import ProxyProcess
from testkit.sync_server import SyncServer

IMPLEMENTATIONS = [OURS, PYTURSO, JS]
IDLE = "idle"
PULL = "pull"
PUSH = "push"
STALLED = "stalled"
SCENARIOS = (IDLE, PULL, PUSH, STALLED)
# The scenarios the targets are about (idle is the reference).
SYNCING = (PULL, PUSH, STALLED)
READ = "read"
WRITE = "write"
KINDS = (READ, WRITE)
SCENARIO_LABELS = {
    IDLE: "idle, no sync in flight (reference)",
    PULL: "during a pull",
    PUSH: "during a push",
    STALLED: "after a timed-out pull, remote stalled",
}

JS_SCRIPT = CHECKOUT / "benchmarks" / "js_local_sql_while_syncing.mjs"
JS_PACKAGE = CHECKOUT / "node_modules" / "@tursodatabase" / "sync" / "package.json"

# The reader's and the writer's pause after each statement.
INTERVAL_SECONDS = 0.003
# The pull abandoned on the stalled remote.
STALL_TIMEOUT_SECONDS = 0.5
# Rows inserted on the remote before each pull (about 20 KiB), and locally before each push.
PULL_ROWS = 100
PUSH_ROWS = 100
KV_ROWS = 10
READ_SQL = "SELECT id, v FROM kv WHERE id = ?"
WRITE_SQL = "INSERT INTO local_writes(body) VALUES (?)"
COUNT_SQL = "SELECT count(*) FROM pulled"
PUSH_ROWS_SQL = "INSERT INTO local_writes(body) VALUES " + ", ".join(["(hex(randomblob(32)))"] * PUSH_ROWS)
# A sync operation, a close or the Node process that has not ended after this long is a failure of the run.
OPERATION_LIMIT_SECONDS = 30.0
JS_STEP_LIMIT_SECONDS = 60.0

Parameters = Union[Sequence[Any], Mapping[str, Any]]


class SyncingConnection(Protocol):
    """What the benchmark uses of an asyncio sync connection (ours and pyturso's module both have it)."""

    async def execute(self, sql: str, parameters: Parameters = ...) -> Any: ...

    async def commit(self) -> None: ...

    async def pull(self) -> bool: ...

    async def push(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class LocalSqlResult:
    """Latency of one kind of local statement on one implementation in one scenario, over every round."""

    implementation: str
    # "idle", "pull", "push" or "stalled".
    scenario: str
    # "read" (a one-row SELECT) or "write" (an INSERT and its commit).
    kind: str
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    # Statements that failed (the messages, at most a few of each, are in `error_messages`).
    errors: int
    error_messages: list[str]
    # Statements that had not ended after `bound_s` (the sampling of that scenario stopped there).
    blocked: int
    bound_s: float
    # Every statement's latency (for the chart), in milliseconds.
    latencies_ms: list[float]


@dataclass
class SyncNotes:
    """What the sync operations themselves did on one implementation (to check that each scenario happened)."""

    implementation: str
    # What each measured pull returned (True: it applied the remote's new rows), and how long pulls and pushes took.
    pulled: list[object] = field(default_factory=list[object])
    pull_ms: list[float] = field(default_factory=list[float])
    push_ms: list[float] = field(default_factory=list[float])
    # Failures of pull() or push() themselves.
    sync_errors: list[str] = field(default_factory=list[str])
    # The abandoned pull on the stalled remote: whether it timed out, after how long control came back, and how its
    # awaitable ended once the proxy answered again ("cancelled": by the timeout, in Python).
    stalled_pull_timed_out: bool = False
    stalled_pull_returned_ms: float = 0.0
    stalled_pull_after_release: str = ""
    # The next pull after the release, and then the rows of the remote's table in the replica and on the remote
    # (equal: nothing lost, nothing doubled).
    next_pull: str = ""
    replica_rows: int = -1
    remote_rows: int = -1
    closed: str = ""
    # What the event loop's exception handler heard meanwhile (Python implementations).
    loop_errors: list[str] = field(default_factory=list[str])


@dataclass
class _Samples:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {READ: [], WRITE: []})
    errors: dict[str, list[str]] = field(default_factory=lambda: {READ: [], WRITE: []})
    blocked: dict[str, int] = field(default_factory=lambda: {READ: 0, WRITE: 0})


def js_version() -> str:
    """The installed version of @tursodatabase/sync ("missing" before `make setup`)."""
    try:
        version = json.loads(JS_PACKAGE.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return "missing"
    return str(version)


class _Sampler:
    """A reader and a writer on one connection, recording each statement's latency, within a bound."""

    def __init__(self, conn: SyncingConnection, bound: float) -> None:
        self.conn = conn
        self.bound = bound
        self.writes = 0
        # Statements still running after the bound; awaited (bounded) before the connection closes.
        self.pending: list["asyncio.Task[float]"] = []

    async def _read(self) -> float:
        start = time.perf_counter()
        cursor = await self.conn.execute(READ_SQL, (1 + self.writes % KV_ROWS,))
        await cursor.fetchall()
        return time.perf_counter() - start

    async def _write(self) -> float:
        start = time.perf_counter()
        self.writes += 1
        await self.conn.execute(WRITE_SQL, (f"python {self.writes}",))
        await self.conn.commit()
        return time.perf_counter() - start

    async def _timed(self, kind: str, samples: _Samples) -> bool:
        """Run one statement; False when it has not ended within the bound (it keeps running)."""
        task = asyncio.ensure_future(self._read() if kind == READ else self._write())
        start = time.perf_counter()
        done, _ = await asyncio.wait({task}, timeout=self.bound)
        if not done:
            samples.blocked[kind] += 1
            samples.latencies[kind].append(time.perf_counter() - start)
            self.pending.append(task)
            return False
        error = task.exception()
        if error is not None:
            samples.errors[kind].append(f"{type(error).__name__}: {error}")
            return True
        samples.latencies[kind].append(task.result())
        return True

    async def _repeat(self, kind: str, done: Callable[[], bool], samples: _Samples) -> None:
        while not done():
            if not await self._timed(kind, samples):
                return
            await asyncio.sleep(INTERVAL_SECONDS)

    async def sample(self, done: Callable[[], bool], samples: _Samples) -> None:
        """A reader and a writer side by side until `done()` (each stops early at a blocked statement)."""
        await asyncio.gather(*(self._repeat(kind, done, samples) for kind in KINDS))

    async def during(self, operation: Callable[[], Awaitable[Any]], samples: _Samples) -> tuple[Any, float]:
        """Sample while `operation` runs; its result (or its error, as a string) and how long it took in ms."""
        started = time.perf_counter()
        task = asyncio.ensure_future(operation())
        await self.sample(task.done, samples)
        # A statement that outlived its bound ends before the next scenario: a write left between its INSERT and its
        # commit would otherwise be an open transaction under the next sync operation.
        await self.drain()
        try:
            outcome: Any = await asyncio.wait_for(asyncio.shield(task), OPERATION_LIMIT_SECONDS)
        except Exception as error:  # noqa: BLE001  # reported, not raised: the scenario's other figures still hold
            outcome = f"error: {type(error).__name__}: {error}"
        return outcome, (time.perf_counter() - started) * 1000

    async def drain(self) -> None:
        """Wait (bounded) for the statements that outlived their bound."""
        if self.pending:
            await asyncio.wait(self.pending, timeout=OPERATION_LIMIT_SECONDS)
            for task in self.pending:
                if task.done() and not task.cancelled():
                    task.exception()
            self.pending = [task for task in self.pending if not task.done()]


def _prepare_remote(server: SyncServer) -> None:
    server.execute("CREATE TABLE kv(id INTEGER PRIMARY KEY, v TEXT)")
    server.execute(f"INSERT INTO kv(id, v) SELECT value, 'value ' || value FROM generate_series(1, {KV_ROWS})")
    server.execute("CREATE TABLE pulled(id INTEGER PRIMARY KEY, body BLOB)")
    server.execute("CREATE TABLE local_writes(id INTEGER PRIMARY KEY, body TEXT)")


def _count_remote(server: SyncServer) -> int:
    count = server.execute(COUNT_SQL)[0][0]
    assert isinstance(count, int)
    return count


def _remote_rows(server: SyncServer) -> None:
    server.execute(f"INSERT INTO pulled(body) SELECT randomblob(200) FROM generate_series(1, {PULL_ROWS})")


def _steps(settings: Settings) -> list[str]:
    """The scenarios each replica runs, in order: idle, then a pull and a push per round, then the stalled remote."""
    return [IDLE] + [PULL, PUSH] * settings.local_sql_rounds + [STALLED]


class _PythonReplica:
    """Ours or pyturso's module: one replica of its own remote, through its own proxy, and what it measured."""

    def __init__(self, name: str, settings: Settings, server: SyncServer, proxy: ProxyProcess) -> None:
        self.name = name
        self.settings = settings
        self.server = server
        self.proxy = proxy
        self.samples = {scenario: _Samples() for scenario in SCENARIOS}
        self.notes = SyncNotes(name)
        self.conn: Optional[SyncingConnection] = None
        self.sampler: Optional[_Sampler] = None

    async def open(self, folder: Path) -> None:
        """Open (bootstrap through the proxy) and warm up: the first statements of each kind pay for lazy set-up."""
        self.conn = cast(SyncingConnection, await ASYNC_CONNECTS[self.name](str(folder / "replica.db"), self.proxy.url))
        sampler = self.sampler = _Sampler(self.conn, self.settings.local_sql_bound)
        await sampler.sample(lambda: sampler.writes >= 5, _Samples())

    async def step(self, scenario: str) -> None:
        """Run one scenario."""
        assert self.conn is not None and self.sampler is not None
        conn, sampler, notes = self.conn, self.sampler, self.notes
        if scenario == IDLE:
            end = time.perf_counter() + self.settings.local_sql_window
            await sampler.sample(lambda: time.perf_counter() >= end, self.samples[IDLE])
        elif scenario == PULL:
            _remote_rows(self.server)
            pulled, pull_ms = await sampler.during(conn.pull, self.samples[PULL])
            notes.pulled.append(pulled)
            notes.pull_ms.append(round(pull_ms, 1))
            if isinstance(pulled, str):
                notes.sync_errors.append(f"pull: {pulled}")
        elif scenario == PUSH:
            await conn.execute(PUSH_ROWS_SQL)
            await conn.commit()
            pushed, push_ms = await sampler.during(conn.push, self.samples[PUSH])
            notes.push_ms.append(round(push_ms, 1))
            if pushed is not None:
                notes.sync_errors.append(f"push: {pushed}")
        else:
            await self._stalled(conn, sampler)

    async def _stalled(self, conn: SyncingConnection, sampler: _Sampler) -> None:
        notes = self.notes
        _remote_rows(self.server)
        self.proxy.stall()
        start = time.perf_counter()
        # The call a user makes, `asyncio.wait_for(conn.pull(), 0.5)`, with the pull in a task kept here to see how
        # it ends (wait_for cancels it at the timeout, as it would the bare coroutine).
        pull = asyncio.ensure_future(conn.pull())
        try:
            await asyncio.wait_for(pull, STALL_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            notes.stalled_pull_timed_out = True
        notes.stalled_pull_returned_ms = round((time.perf_counter() - start) * 1000, 1)
        window_end = time.perf_counter() + self.settings.local_sql_window
        await sampler.sample(lambda: time.perf_counter() >= window_end, self.samples[STALLED])
        self.proxy.release()
        await sampler.drain()
        done, _ = await asyncio.wait({pull}, timeout=OPERATION_LIMIT_SECONDS)
        if not done:
            notes.stalled_pull_after_release = "still running"
        elif pull.cancelled():
            notes.stalled_pull_after_release = "cancelled"
        elif pull.exception() is not None:
            notes.stalled_pull_after_release = f"error: {pull.exception()}"
        else:
            notes.stalled_pull_after_release = str(pull.result())
        try:
            notes.next_pull = str(await asyncio.wait_for(conn.pull(), OPERATION_LIMIT_SECONDS))
        except Exception as error:  # noqa: BLE001  # reported, not raised
            notes.next_pull = f"error: {type(error).__name__}: {error}"
        cursor = await conn.execute(COUNT_SQL)
        notes.replica_rows = int((await cursor.fetchall())[0][0])
        notes.remote_rows = _count_remote(self.server)

    async def close(self) -> None:
        """Close (bounded), after the statements that outlived their bound."""
        if self.sampler is not None:
            await self.sampler.drain()
        if self.conn is None:
            return
        try:
            await asyncio.wait_for(self.conn.close(), OPERATION_LIMIT_SECONDS)
            self.notes.closed = "closed"
        except asyncio.TimeoutError:
            self.notes.closed = "close did not end"


class _JsReplica:
    """Turso's JS sync binding in a Node process that runs the same scenarios; it asks for its turn before each one
    (answered when its turn comes), and for rows on the remote or a stalled proxy within one (answered at once)."""

    def __init__(self, settings: Settings, server: SyncServer, proxy: ProxyProcess) -> None:
        self.name = JS
        self.settings = settings
        self.server = server
        self.proxy = proxy
        self.process: Optional["asyncio.subprocess.Process"] = None
        self.samples: dict[str, _Samples] = {}
        self.notes = SyncNotes(JS)
        # The scenario the script waits to run (its last ask for a turn).
        self.asked: Optional[str] = None

    async def open(self, folder: Path) -> None:
        """Start the script; it opens its replica, warms up and asks for its first turn."""
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH (make setup installs the JS binding with npm, which needs it)")
        if not JS_PACKAGE.is_file():
            raise RuntimeError(f"{JS_PACKAGE.parent} is missing; run `make setup`")
        config = {
            "path": str(folder / "replica.db"),
            "url": self.proxy.url,
            "steps": _steps(self.settings),
            "interval_ms": INTERVAL_SECONDS * 1000,
            "blocked_s": self.settings.local_sql_bound,
            "window_s": self.settings.local_sql_window,
            "stall_timeout_s": STALL_TIMEOUT_SECONDS,
            "operation_limit_s": OPERATION_LIMIT_SECONDS,
            "kv_rows": KV_ROWS,
            "read_sql": READ_SQL,
            "write_sql": WRITE_SQL,
            "count_sql": COUNT_SQL,
            "push_rows_sql": PUSH_ROWS_SQL,
        }
        self.process = await asyncio.create_subprocess_exec(
            node, str(JS_SCRIPT), json.dumps(config), cwd=CHECKOUT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            # The result line holds every latency measured.
            limit=64 * MB,
        )
        await asyncio.wait_for(self._until_turn_asked(), JS_STEP_LIMIT_SECONDS)

    async def step(self, scenario: str) -> None:
        """Give the script its turn for `scenario` and wait until it asks for the next one (or prints its result)."""
        if self.asked != scenario:
            raise RuntimeError(f"the JS benchmark is at {self.asked!r}, not {scenario!r}")
        await self._answer()
        await asyncio.wait_for(self._until_turn_asked(), JS_STEP_LIMIT_SECONDS)

    async def _answer(self) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(b"ok\n")
        await self.process.stdin.drain()

    async def _until_turn_asked(self) -> None:
        """Answer the script's asks until it asks for a turn (or prints its result, which is then kept)."""
        assert self.process is not None and self.process.stdout is not None
        actions: dict[str, Callable[[], None]] = {
            "remote_rows": lambda: _remote_rows(self.server),
            "hold": self.proxy.stall,
            "release": self.proxy.release,
        }
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if "result" in message:
                self._keep(message["result"])
                return
            ask = message.get("ask")
            if ask == "turn":
                self.asked = str(message.get("step"))
                return
            if ask not in actions:
                raise RuntimeError(f"the JS benchmark asked for {ask!r}")
            actions[ask]()
            await self._answer()
        raise RuntimeError(f"the JS benchmark ended without a result (exit status {await self.process.wait()})")

    def _keep(self, result: dict[str, Any]) -> None:
        for scenario in SCENARIOS:
            found = result["scenarios"][scenario]
            kept = _Samples()
            for kind in KINDS:
                kept.latencies[kind] = [value / 1000 for value in found[f"{kind}_ms"]]
                kept.errors[kind] = [error for error in found["errors"] if error.startswith(f"{kind}:")]
                kept.blocked[kind] = found[f"{kind}_blocked"]
            self.samples[scenario] = kept
        found_notes = result["notes"]
        self.notes = SyncNotes(
            JS,
            pulled=list(found_notes["pulled"]),
            pull_ms=[round(value, 1) for value in found_notes["pull_ms"]],
            push_ms=[round(value, 1) for value in found_notes["push_ms"]],
            sync_errors=[str(error) for error in found_notes["sync_errors"]],
            stalled_pull_timed_out=bool(found_notes["stalled_pull_timed_out"]),
            stalled_pull_returned_ms=round(found_notes["stalled_pull_returned_ms"], 1),
            stalled_pull_after_release=str(found_notes["stalled_pull_after_release"]),
            next_pull=str(found_notes["next_pull"]),
            replica_rows=int(found_notes["replica_rows"]),
            remote_rows=_count_remote(self.server),
            closed=str(found_notes["closed"]),
        )

    async def close(self) -> None:
        """Wait (bounded) for the script to exit; kill it if it does not."""
        process = self.process
        if process is None:
            return
        if not self.samples and process.stdin is not None:
            # The run stopped early: the script waits for an answer; end of input makes it exit at once.
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), JS_STEP_LIMIT_SECONDS)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


def _summaries(name: str, samples: dict[str, _Samples], bound: float) -> list[LocalSqlResult]:
    results: list[LocalSqlResult] = []
    for scenario in SCENARIOS:
        for kind in KINDS:
            latencies = [value * 1000 for value in samples[scenario].latencies[kind]]
            errors = samples[scenario].errors[kind]
            results.append(
                LocalSqlResult(
                    implementation=name,
                    scenario=scenario,
                    kind=kind,
                    count=len(latencies),
                    p50_ms=round(statistics.median(latencies), 3) if latencies else 0.0,
                    p99_ms=round(p99(latencies), 3) if latencies else 0.0,
                    max_ms=round(max(latencies), 3) if latencies else 0.0,
                    errors=len(errors),
                    error_messages=sorted(set(errors))[:5],
                    blocked=samples[scenario].blocked[kind],
                    bound_s=bound,
                    latencies_ms=[round(value, 3) for value in latencies],
                )
            )
    return results


async def measure_local_sql(settings: Settings, workdir: Path) -> tuple[list[LocalSqlResult], list[SyncNotes]]:
    """All implementations open at once, each on its own sync server behind its own delaying proxy; they take turns
    scenario by scenario, in a different order for each (so that none always meets the machine's busier moments)."""
    with contextlib.ExitStack() as stack:
        replicas: list[Union[_PythonReplica, _JsReplica]] = []
        for name in IMPLEMENTATIONS:
            folder = workdir / name
            folder.mkdir()
            server = stack.enter_context(SyncServer(folder / "remote.db"))
            _prepare_remote(server)
            proxy = stack.enter_context(ProxyProcess(server.port, settings.local_sql_delay))
            replicas.append(
                _JsReplica(settings, server, proxy) if name == JS else _PythonReplica(name, settings, server, proxy)
            )
        loop = asyncio.get_running_loop()
        previous_handler = loop.get_exception_handler()
        # Who is taking its turn: what the loop's exception handler hears is put down to it.
        current: list[Union[_PythonReplica, _JsReplica]] = [replicas[0]]
        loop.set_exception_handler(
            lambda _, context: current[0].notes.loop_errors.append(
                f"{context.get('message')}: {context.get('exception')!r}"
            )
        )
        try:
            for replica in replicas:
                current[0] = replica
                await replica.open(workdir / replica.name)
            for turn, scenario in enumerate(_steps(settings)):
                for replica in rotated(replicas, turn):
                    current[0] = replica
                    await replica.step(scenario)
        finally:
            for replica in replicas:
                current[0] = replica
                await replica.close()
            loop.set_exception_handler(previous_handler)
    results: list[LocalSqlResult] = []
    for replica in replicas:
        if not replica.samples:
            raise RuntimeError(f"{replica.name}: the local-SQL benchmark ended without a result")
        results += _summaries(replica.name, replica.samples, settings.local_sql_bound)
    return results, [replica.notes for replica in replicas]
