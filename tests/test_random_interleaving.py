"""Seeded random interleavings of local SQL, pull, push, stats, checkpoint and cancelled awaits (issue 13, "Done when").

Two replicas of one remote database run at once through a flaky loopback proxy (testkit/proxy.py) that refuses some
connections and cuts the answer of others after the server acted on them (a push the server applied while the client
heard an error must not arrive twice when it is sent again). On each replica one task writes (short transactions
with TEXT/UUID keys, some of their awaits cancelled) while another syncs (pull, push, stats, checkpoint, some
cancelled by a tiny `wait_for` timeout or `Task.cancel`).
Whatever the order a seed produces: every row reaches the server exactly once, both replicas converge, nothing hangs,
the loop's exception handler hears nothing and no thread is left. A failing seed replays the same choices (the
threads' timing still varies).
"""

import asyncio
import functools
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Optional

import pytest

import turso
from testkit.proxy import CUT_ANSWER, REFUSE, DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import new_threads, record_loop_errors, turso_threads, wait_until
from turso.lib_sync_aio import ConnectionSync, connect_sync

SEEDS = [1, 2, 3, 4, 5]
# Upper bound for any single await, and for a whole run of a seed.
AWAIT_SECONDS = 10.0
RUN_SECONDS = 20.0
# Steps each task takes; the share of the proxy's connections that misbehave; the delay of every answer.
WRITER_STEPS = 40
SYNCER_STEPS = 45
FLAKY_SHARE = 0.25
ANSWER_DELAY_SECONDS = 0.02
REPLICAS = ("a", "b")
THREAD_EXIT_SECONDS = 5.0

SCHEMA = "CREATE TABLE t(k TEXT PRIMARY KEY, replica TEXT, n INTEGER)"


def is_network_failure(error: BaseException) -> bool:
    """A sync that failed because the proxy refused or cut its connection: expected; a lock or busy error is not."""
    message = str(error).lower()
    return isinstance(error, turso.Error) and not any(word in message for word in ("locked", "busy", "transaction"))


class Replica:
    """One replica's connection and what its tasks did: keys surely committed, keys maybe committed, failures seen."""

    def __init__(self, name: str, conn: ConnectionSync, rng: random.Random) -> None:
        self.name = name
        self.conn = conn
        self.rng = rng
        self.committed: list[str] = []
        # Keys whose INSERT or commit await was cancelled: the job still ran, so they are most likely committed.
        self.maybe: list[str] = []
        self.network_failures = 0
        self.unexpected: list[BaseException] = []

    def new_key(self) -> str:
        # A UUID drawn from the seeded generator: reproducible, and unique across replicas.
        return f"{self.name}-{uuid.UUID(int=self.rng.getrandbits(128))}"

    async def cancelled(self, make: Callable[[], Awaitable[object]]) -> bool:
        """Run `make()` and cancel it soon, by a tiny wait_for timeout or by Task.cancel; True if it was cancelled."""
        if self.rng.random() < 0.5:
            try:
                await asyncio.wait_for(make(), self.rng.uniform(0.0, 0.03))
            except asyncio.TimeoutError:
                return True
            return False

        async def run() -> object:
            return await make()

        task = asyncio.ensure_future(run())
        await asyncio.sleep(self.rng.uniform(0.0, 0.03))
        task.cancel()
        try:
            await asyncio.wait_for(task, AWAIT_SECONDS)
        except asyncio.CancelledError:
            return True
        return False

    async def guarded(self, make: Callable[[], Awaitable[object]], cancel: bool) -> None:
        """Await `make()` (bounded), or cancel it; sort any failure into network failures and unexpected ones."""
        try:
            if cancel:
                await self.cancelled(make)
            else:
                await asyncio.wait_for(make(), AWAIT_SECONDS)
        except asyncio.TimeoutError as error:
            self.unexpected.append(error)
        except Exception as error:
            if is_network_failure(error):
                self.network_failures += 1
            else:
                self.unexpected.append(error)

    async def write(self) -> None:
        """Short transactions of one to three rows, some with a pause inside, some of their awaits cancelled."""
        for step in range(WRITER_STEPS):
            keys = [self.new_key() for _ in range(self.rng.randint(1, 3))]
            cancel_at = self.rng.randrange(len(keys) + 4)  # which await to cancel, if any (most steps: none)
            try:
                for index, key in enumerate(keys):
                    insert = functools.partial(
                        self.conn.execute, "INSERT INTO t VALUES (?, ?, ?)", (key, self.name, step)
                    )
                    if index == cancel_at:
                        await self.cancelled(insert)
                    else:
                        await asyncio.wait_for(insert(), AWAIT_SECONDS)
                    if self.rng.random() < 0.2:
                        await asyncio.sleep(self.rng.uniform(0.0, 0.03))  # a transaction that stays open a while
                if cancel_at == len(keys):
                    self.maybe += keys
                    await self.cancelled(self.conn.commit)
                else:
                    await asyncio.wait_for(self.conn.commit(), AWAIT_SECONDS)
                    (self.maybe if cancel_at < len(keys) else self.committed).extend(keys)
            except Exception as error:
                self.unexpected.append(error)
                self.maybe += keys
            await asyncio.sleep(self.rng.uniform(0.0, 0.02))

    async def sync(self) -> None:
        """Pull, push, stats and checkpoint in a seeded order, about a quarter of them cancelled."""
        operations: list[Callable[[], Awaitable[object]]] = [
            self.conn.pull,
            self.conn.push,
            self.conn.stats,
            self.conn.checkpoint,
        ]
        for _ in range(SYNCER_STEPS):
            operation = self.rng.choice(operations)
            await self.guarded(operation, cancel=self.rng.random() < 0.25)
            await asyncio.sleep(self.rng.uniform(0.0, 0.02))

    async def keys(self) -> list[str]:
        rows = await asyncio.wait_for(self.conn.execute_fetchall("SELECT k FROM t ORDER BY k"), AWAIT_SECONDS)
        return [row[0] for row in rows]


async def finish_within(awaitable: Awaitable[object], seconds: float) -> Optional[str]:
    """Await `awaitable` for at most `seconds`, without waiting for it to unwind if it hangs; None if it finished."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        return f"still running after {seconds} s"
    task.result()
    return None


async def settle(replicas: list[Replica]) -> None:
    """Push, then pull, every replica twice on a now reliable link (some syncs failed on the flaky one)."""
    for _ in range(2):
        for replica in replicas:
            await asyncio.wait_for(replica.conn.push(), AWAIT_SECONDS)
        for replica in replicas:
            await asyncio.wait_for(replica.conn.pull(), AWAIT_SECONDS)


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_interleaving_loses_no_row_doubles_none_and_converges(
    sync_server: SyncServer, tmp_path: Path, seed: int
) -> None:
    sync_server.execute(SCHEMA)
    errors = record_loop_errors()
    baseline = turso_threads()
    rng = random.Random(seed)
    replicas: list[Replica] = []
    # Flaky once the replicas are open; its own generator, seeded too (seeds 1-5 misbehave within the first 7 requests).
    flaky_proxy = DelayingProxy(sync_server.port, seed=seed, flaky_modes=(REFUSE, CUT_ANSWER))
    try:
        for name in REPLICAS:
            conn = await asyncio.wait_for(connect_sync(str(tmp_path / f"{name}.db"), flaky_proxy.url), AWAIT_SECONDS)
            replicas.append(Replica(name, conn, random.Random(rng.getrandbits(64))))
        flaky_proxy.answer_delay = ANSWER_DELAY_SECONDS
        flaky_proxy.flaky = FLAKY_SHARE

        started = time.monotonic()
        tasks = [task for replica in replicas for task in (replica.write(), replica.sync())]
        hung = await finish_within(asyncio.gather(*tasks), RUN_SECONDS)
        assert hung is None, f"seed {seed}: the interleaving hung ({hung})"
        run_seconds = time.monotonic() - started

        flaky_proxy.flaky = 0
        flaky_proxy.answer_delay = 0
        hung = await finish_within(settle(replicas), 2 * AWAIT_SECONDS)
        assert hung is None, f"seed {seed}: settling hung ({hung})"

        unexpected = [(replica.name, repr(error)) for replica in replicas for error in replica.unexpected]
        assert unexpected == [], f"seed {seed}: unexpected failures: {unexpected}"
        on_server = [str(row[0]) for row in sync_server.execute("SELECT k FROM t ORDER BY k")]
        assert len(on_server) == len(set(on_server)), f"seed {seed}: a row reached the server twice"
        committed = {key for replica in replicas for key in replica.committed}
        maybe = {key for replica in replicas for key in replica.maybe}
        missing = sorted(committed - set(on_server))
        assert missing == [], f"seed {seed}: committed rows missing on the server: {missing}"
        unknown = sorted(set(on_server) - committed - maybe)
        assert unknown == [], f"seed {seed}: rows on the server that no task wrote: {unknown}"
        for replica in replicas:
            assert await replica.keys() == on_server, f"seed {seed}: replica {replica.name} did not converge"
        assert flaky_proxy.misbehaved > 0, f"seed {seed}: the proxy never misbehaved: the test proved less"
        assert run_seconds < RUN_SECONDS
    finally:
        flaky_proxy.flaky = 0
        for replica in replicas:
            await asyncio.wait_for(replica.conn.close(), AWAIT_SECONDS)
        flaky_proxy.close()
    assert await wait_until(lambda: not new_threads(baseline), THREAD_EXIT_SECONDS), (
        f"threads left: {sorted(thread.name for thread in new_threads(baseline))}"
    )
    assert errors == [], f"seed {seed}: the loop's exception handler heard {errors}"

