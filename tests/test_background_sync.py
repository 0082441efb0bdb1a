"""Background sync (`conn.sync_in_background`) and `conn.sync()` against a real `tursodb --sync-server` on 127.0.0.1.

Outages are real: the SyncServer is stopped and started again (it keeps its data file and its port). Slow rounds go
through the delaying proxy of testkit; token checks through a loopback proxy that accepts one token at a time.
Timings are asserted only with generous bounds (the machine running the suite may be busy).
"""

import asyncio
import dataclasses
import gc
import http.client
import http.server
import logging
import math
import statistics
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

import turso
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import (
    AWAIT_SECONDS,
    LocalSpeed,
    LoopContext,
    bounded,
    collect_until_stopped,
    open_replica,
    record_loop_errors,
    turso_threads,
    wait_until,
    wait_until_blocking,
)
from turso.background_sync_aio import BackgroundSync, BackgroundSyncStatus, Backoff
from turso.lib_sync_aio import LANE_CLOSE_SECONDS, ConnectionSync, connect_sync

LOGGER = "turso.background_sync_aio"
# The interval of most tests: short, so that tests stay fast, and long enough to tell rounds apart.
INTERVAL = 0.2
# How far a measured wait between two attempts may exceed its jittered bound: the attempt itself (a refused
# connection, a few ms) plus scheduling on a machine shared with other work. Generous on purpose.
LATE_SLACK_SECONDS = 0.35


# --- helpers -----------------------------------------------------------------------------------------------------


async def values(conn: ConnectionSync, sql: str = "SELECT body FROM notes ORDER BY body") -> list[object]:
    return [row[0] for row in await bounded(conn.execute_fetchall(sql))]


async def insert(conn: ConnectionSync, body: str) -> None:
    await bounded(conn.execute("INSERT INTO notes(body) VALUES (?)", (body,)))
    await bounded(conn.commit())


async def two_replicas(tmp_path: Path, url: str) -> tuple[ConnectionSync, ConnectionSync]:
    """Two replicas of one remote database with a table `notes(body)` (no unique key: a doubled push would show)."""
    first = await open_replica(str(tmp_path / "first.db"), url)
    await bounded(first.execute("CREATE TABLE IF NOT EXISTS notes(body TEXT)"))
    await bounded(first.commit())
    await bounded(first.push())
    second = await open_replica(str(tmp_path / "second.db"), url)
    return first, second


def remote_counts(server: SyncServer) -> dict[object, object]:
    """{body: how many rows have it} on the server."""
    return {row[0]: row[1] for row in server.execute("SELECT body, count(*) FROM notes GROUP BY body")}


class TokenCheckingProxy:
    """An HTTP proxy on 127.0.0.1 in front of the sync server that forwards only requests carrying
    `Authorization: Bearer <valid_token>` and answers 401 to any other, like a remote whose tokens expire.

    The local sync server ignores tokens, so this is what makes a stale token fail. `seen` lists the token of every
    request, in order.
    """

    def __init__(self, target_port: int, valid_token: str) -> None:
        self.valid_token = valid_token
        self.seen: list[Optional[str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                authorization = self.headers.get("Authorization")
                token = authorization.removeprefix("Bearer ") if authorization else None
                proxy.seen.append(token)
                if token != proxy.valid_token:
                    self._answer(401, b'{"error": "Unauthorized: token expired"}', "application/json")
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", target_port, timeout=AWAIT_SECONDS)
                try:
                    headers = {key: value for key, value in self.headers.items() if key.lower() not in {"host"}}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    response = upstream.getresponse()
                    self._answer(response.status, response.read(), response.getheader("Content-Type"))
                finally:
                    upstream.close()

            def _answer(self, status: int, body: bytes, content_type: Optional[str]) -> None:
                self.send_response(status)
                if content_type:
                    self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            do_GET = _forward
            do_POST = _forward

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="token-proxy"
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(AWAIT_SECONDS)


@pytest.fixture
def token_proxy(sync_server: SyncServer) -> Iterator[TokenCheckingProxy]:
    proxy = TokenCheckingProxy(sync_server.port, "token-0")
    try:
        yield proxy
    finally:
        proxy.close()


# --- the wait policy ---------------------------------------------------------------------------------------------


def test_backoff_doubles_per_failure_up_to_max_backoff_never_below_interval_with_twenty_percent_jitter() -> None:
    backoff = Backoff(interval=0.5, max_backoff=3.0)
    assert [backoff.base_delay(failures) for failures in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    # Huge failure counts do not overflow.
    assert backoff.base_delay(100_000) == 3.0
    # The jitter factor is drawn from [0.8, 1.2]: its ends give the bounds.
    assert backoff.delay(2, uniform=lambda low, high: low) == pytest.approx(1.6)
    assert backoff.delay(2, uniform=lambda low, high: high) == pytest.approx(2.4)
    drawn = [backoff.delay(1) for _ in range(2000)]
    assert 0.8 <= min(drawn) < 0.85 and 1.15 < max(drawn) <= 1.2
    # A max_backoff below the interval never makes rounds more frequent than the interval.
    assert Backoff(interval=10.0, max_backoff=1.0).base_delay(3) == 10.0


async def test_the_waits_between_rounds_are_jittered_so_replicas_started_together_do_not_sync_in_step(
    sync_server: SyncServer, replica_path: str
) -> None:
    # A round that succeeds records its end (last_success_unix_time) and, in the same step of the loop, when the
    # next round is due (next_round_unix_time): their difference is the wait the loop's timer was given, measured
    # without patching anything and without the machine's scheduling in it. With checkpoints off the round's end
    # awaits nothing more.
    interval = INTERVAL / 2
    waits: dict[float, float] = {}
    async with await open_replica(replica_path, sync_server.url) as conn:
        async with conn.sync_in_background(interval, checkpoint_wal_bytes=None) as background:

            def record_wait() -> bool:
                status = background.status
                if status.last_success_unix_time is not None and status.next_round_unix_time is not None:
                    waits[status.last_success_unix_time] = status.next_round_unix_time - status.last_success_unix_time
                return len(waits) >= 6

            assert await wait_until(record_wait, timeout=AWAIT_SECONDS), waits
            # Each wait timed a real round: the round after it ended past its due time.
            assert await wait_until(lambda: background.status.rounds >= 7, timeout=AWAIT_SECONDS)
    ends = sorted(waits)
    for end, later_end in zip(ends, ends[1:]):
        assert later_end >= end + waits[end], (end, waits[end], later_end)
    # Every wait is the interval times a factor in [0.8, 1.2] (a millisecond for the code between the two clocks),
    # and they are not all the interval: six uniform draws from a 40 ms range all fall within 1 ms of one another
    # less than once in 10**7 runs.
    drawn = sorted(waits.values())
    assert all(interval * 0.8 - 0.001 <= wait <= interval * 1.2 + 0.001 for wait in drawn), drawn
    assert drawn[-1] - drawn[0] > 0.001, f"every wait was {drawn[0]:.4f} s: background sync waits without jitter"


# --- sync() and convergence --------------------------------------------------------------------------------------


async def test_sync_pushes_local_changes_then_pulls_remote_ones(sync_server: SyncServer, tmp_path: Path) -> None:
    first, second = await two_replicas(tmp_path, sync_server.url)
    try:
        await insert(first, "from first")
        # Pushed, then pulled (the pull may report the replica's own pushed change as the remote's new revision).
        assert isinstance(await bounded(first.sync()), bool)
        assert remote_counts(sync_server) == {"from first": 1}
        assert await bounded(second.sync()) is True
        assert await values(second) == ["from first"]
    finally:
        await bounded(first.close())
        await bounded(second.close())


async def test_two_replicas_in_background_sync_converge_within_three_intervals_without_explicit_pull_or_push(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    first, second = await two_replicas(tmp_path, sync_server.url)
    async with first, second:
        # A row needs a round of the writer (its push) and then one of the reader (its pull), each at most an interval
        # away (plus jitter): three intervals, plus the work of the rounds themselves, which is not the schedule's
        # and which a busy machine stretches. That work is measured here, on this machine, now: the longest of a
        # round on each replica (stats and pull; a push round does one more request), counted three times.
        round_seconds = 0.0
        for replica in (first, second):
            began = time.monotonic()
            await bounded(replica.sync())
            round_seconds = max(round_seconds, time.monotonic() - began)
        allowed = 3 * INTERVAL + 3 * round_seconds
        async with first.sync_in_background(INTERVAL), second.sync_in_background(INTERVAL) as background:
            assert await wait_until(lambda: background.status.rounds >= 1)
            await insert(first, "hello")
            written = time.monotonic()
            assert await wait_until(lambda: background.status.rounds >= 1)
            while await values(second) != ["hello"]:
                late = f"the row did not reach the other replica in {allowed:.2f} s (a round takes {round_seconds:.2f})"
                assert time.monotonic() - written < allowed, late
                await asyncio.sleep(0.01)
            # And back the other way.
            await insert(second, "world")
            written = time.monotonic()
            while await values(first) != ["hello", "world"]:
                late = f"the row did not reach the other replica in {allowed:.2f} s (a round takes {round_seconds:.2f})"
                assert time.monotonic() - written < allowed, late
                await asyncio.sleep(0.01)
        assert remote_counts(sync_server) == {"hello": 1, "world": 1}


async def test_background_sync_adds_no_thread_a_replica_keeps_its_two(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    baseline = threading.enumerate()
    first, second = await two_replicas(tmp_path, sync_server.url)
    async with first, second:
        async with first.sync_in_background(INTERVAL / 4), second.sync_in_background(INTERVAL / 4) as background:
            assert await wait_until(lambda: background.status.rounds >= 3)
            added = [thread.name for thread in threading.enumerate() if thread not in baseline]
            # The SQL worker and the sync lane of each replica, nothing more (the rounds are tasks on the loop).
            assert len(added) <= 4, added
            assert all(name.startswith("turso") for name in added), added


async def test_status_reports_rounds_last_success_next_round_and_running(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with await open_replica(replica_path, sync_server.url) as conn:
        started = time.time()
        background = conn.sync_in_background(INTERVAL)
        status = background.status
        assert isinstance(status, BackgroundSyncStatus)
        assert (status.rounds, status.consecutive_failures, status.last_error, status.running) == (0, 0, None, True)
        assert status.last_success_unix_time is None
        # The first round is due at once.
        assert status.next_round_unix_time is not None and status.next_round_unix_time <= time.time()
        assert await wait_until(lambda: background.status.rounds >= 2)
        status = background.status
        assert status.consecutive_failures == 0 and status.running
        assert status.last_success_unix_time is not None and started <= status.last_success_unix_time <= time.time()
        if status.next_round_unix_time is not None:  # None only while a round runs
            assert status.next_round_unix_time - time.time() <= INTERVAL * 1.2
        with pytest.raises(dataclasses.FrozenInstanceError):
            status.rounds = 0  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]
        await bounded(background.stop())
        status = background.status
        assert not status.running and status.next_round_unix_time is None


# --- offline -----------------------------------------------------------------------------------------------------


async def test_offline_rounds_fail_back_off_by_the_formula_local_sql_goes_on_and_rows_land_once_after_return(
    sync_server: SyncServer, tmp_path: Path, local_speed: LocalSpeed
) -> None:
    max_backoff = 0.8
    policy = Backoff(INTERVAL, max_backoff)
    first, second = await two_replicas(tmp_path, sync_server.url)
    async with first, second:
        async with first.sync_in_background(INTERVAL, max_backoff=max_backoff) as background, \
                second.sync_in_background(INTERVAL, max_backoff=max_backoff):
            assert await wait_until(lambda: background.status.rounds >= 1)
            sync_server.stop()
            went_down = time.monotonic()

            # While the server is down: watch the failures (when each attempt ended) and keep writing locally.
            failures_seen: list[tuple[int, float]] = []
            local_seconds: list[float] = []
            written: list[str] = []

            async def watch() -> None:
                while True:
                    failures = background.status.consecutive_failures
                    if failures and (not failures_seen or failures_seen[-1][0] != failures):
                        failures_seen.append((failures, time.monotonic()))
                    await asyncio.sleep(0.002)

            watcher = asyncio.get_running_loop().create_task(watch())
            try:
                while time.monotonic() - went_down < 3.0:
                    body = f"offline {len(written)}"

                    async def write_and_count() -> list[object]:
                        await insert(first, body)
                        return await values(first, "SELECT count(*) FROM notes")

                    # How much longer than a plain local database's write beside it: a busy machine slows both.
                    count, took, beside = await local_speed.beside(write_and_count(), write=True)
                    assert count == [len(written) + 1]
                    local_seconds.append(took - beside)
                    written.append(body)
                    await asyncio.sleep(0.05)
            finally:
                watcher.cancel()
            status = background.status
            sync_server.start()

            # Rounds failed and were counted, one at a time.
            assert status.consecutive_failures >= 3, failures_seen
            assert [failures for failures, _ in failures_seen] == list(range(1, len(failures_seen) + 1))
            assert isinstance(status.last_error, turso.Error), repr(status.last_error)
            # The waits between attempts follow min(interval * 2**failures, max_backoff) with ±20% jitter: after
            # the k-th failure the next attempt comes base_delay(k) * [0.8, 1.2] later (plus the attempt itself).
            gaps = [
                (failures, later - earlier)
                for (failures, earlier), (_, later) in zip(failures_seen, failures_seen[1:])
            ]
            for failures, gap in gaps:
                base = policy.base_delay(failures)
                assert base * 0.8 - 0.05 <= gap <= base * 1.2 + LATE_SLACK_SECONDS, (failures, gap, base, gaps)
            assert [policy.base_delay(failures) for failures, _ in gaps][:3] == [0.4, 0.8, 0.8]
            # Local SQL kept working at local speed (each write and read well under a second more than the same on a
            # plain local database beside it; the median a few ms).
            assert len(local_seconds) >= 20 and max(local_seconds) < 1.0, local_seconds
            assert statistics.median(local_seconds) < 0.1, local_seconds

            # The server is back: the replicas converge, and every row is on the server exactly once.
            deadline = time.monotonic() + max_backoff * 1.2 + 5 * INTERVAL + 2.0
            while await values(second) != sorted(written):
                assert time.monotonic() < deadline, "the replicas did not converge after the server returned"
                await asyncio.sleep(0.02)
            # The round whose push reached the second replica may still be pulling: its success ends the streak.
            left = max(1.0, deadline - time.monotonic())
            assert await wait_until(lambda: background.status.consecutive_failures == 0, left)
        assert remote_counts(sync_server) == {body: 1 for body in written}


async def test_a_failure_streak_logs_one_warning_and_one_info_and_nothing_reaches_the_loop_or_debug_mode(
    sync_server: SyncServer, replica_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    # Debug mode's "slow callback" report is about timing, which a busy machine decides; what matters here is the
    # rest of what debug mode reports (exceptions never retrieved, coroutines never awaited, calls from a thread).
    loop.slow_callback_duration = 5.0
    loop_errors = record_loop_errors()
    caplog.set_level(logging.DEBUG)
    async with await open_replica(replica_path, sync_server.url) as conn:
        async with conn.sync_in_background(INTERVAL / 2, max_backoff=INTERVAL) as background:
            assert await wait_until(lambda: background.status.rounds >= 1)
            sync_server.stop()
            assert await wait_until(lambda: background.status.consecutive_failures >= 4)
            outage_error = background.status.last_error
            # sync_now() during the outage raises the round's error, which is neither logged again nor "never
            # retrieved".
            with pytest.raises(turso.Error):
                await bounded(background.sync_now())
            sync_server.start()
            assert await wait_until(lambda: background.status.consecutive_failures == 0)
            assert await bounded(background.sync_now()) in (True, False)
    # A future whose exception nobody retrieved would be reported when collected.
    gc.collect()
    await asyncio.sleep(0)

    ours = [record for record in caplog.records if record.name == LOGGER]
    warnings_logged = [record for record in ours if record.levelno == logging.WARNING]
    infos = [record for record in ours if record.levelno == logging.INFO]
    assert len(warnings_logged) == 1, [record.getMessage() for record in ours]
    assert str(outage_error) in warnings_logged[0].getMessage(), (warnings_logged[0].getMessage(), outage_error)
    assert len(infos) == 1 and "works again" in infos[0].getMessage(), [record.getMessage() for record in ours]
    assert all(record.levelno <= logging.WARNING for record in ours)
    # Each retry in between is at DEBUG only.
    assert sum(record.levelno == logging.DEBUG for record in ours) >= 3
    others = [record for record in caplog.records if record.name != LOGGER and record.levelno >= logging.WARNING]
    assert others == [], [(record.name, record.getMessage()) for record in others]
    assert loop_errors == [], loop_errors


# --- stopping ----------------------------------------------------------------------------------------------------


async def open_behind_a_slow_proxy(
    sync_server: SyncServer, replica_path: str, delay: float
) -> tuple[ConnectionSync, DelayingProxy]:
    """A replica with a table and one committed, unpushed row, whose every request goes through a proxy that holds
    it `delay` seconds. Made directly, then reopened through the proxy (reopening sends no request)."""
    async with await open_replica(replica_path, sync_server.url) as conn:
        await bounded(conn.execute("CREATE TABLE notes(body TEXT)"))
        await insert(conn, "written before the round")
    proxy = DelayingProxy(sync_server.port, delay)
    try:
        return await open_replica(replica_path, proxy.url), proxy
    except BaseException:
        proxy.close()
        raise


async def lands_exactly_once(sync_server: SyncServer, replica_path: str, baseline: set[threading.Thread]) -> None:
    """Once the closed connection's threads are gone (a sync lane left waiting on the remote exits when its request
    ends), the replica's row is on the server exactly once after one more sync: nothing lost, nothing doubled."""
    assert await wait_until(lambda: not (turso_threads() - baseline), AWAIT_SECONDS)
    async with await open_replica(replica_path, sync_server.url) as again:
        await bounded(again.sync())
    assert remote_counts(sync_server) == {"written before the round": 1}


async def test_stop_during_a_round_waits_for_it_and_its_push_lands_exactly_once(
    sync_server: SyncServer, replica_path: str
) -> None:
    conn, proxy = await open_behind_a_slow_proxy(sync_server, replica_path, 0.3)
    try:
        background = conn.sync_in_background(INTERVAL)
        assert await wait_until(lambda: proxy.requests > 0)  # the first round's push is held by the proxy
        began = time.monotonic()
        # A bound longer than the round (the default, 0.25 s, keeps shutdown under a second instead).
        await bounded(background.stop(timeout=5.0))
        took = time.monotonic() - began
        # The round finished (push and pull, each held by the proxy) before stop() returned, within its bound.
        assert background.status.rounds == 1 and background.status.consecutive_failures == 0
        assert 0.2 < took < 5.0 + 2.0, took
        assert not background.status.running and background.status.next_round_unix_time is None
        assert remote_counts(sync_server) == {"written before the round": 1}
        with pytest.raises(turso.ProgrammingError):
            await bounded(background.sync_now())
    finally:
        await bounded(conn.close())
        proxy.close()


async def test_close_during_a_round_stops_background_sync_within_close_s_bound_and_loses_or_doubles_nothing(
    sync_server: SyncServer, replica_path: str
) -> None:
    baseline = turso_threads()
    conn, proxy = await open_behind_a_slow_proxy(sync_server, replica_path, 1.0)
    try:
        background = conn.sync_in_background(INTERVAL)
        assert await wait_until(lambda: proxy.requests > 0)  # the first round's push is held by the proxy
        began = time.monotonic()
        await bounded(conn.close())
        took = time.monotonic() - began
        # close() gives the round the bound of any sync operation in flight (LANE_CLOSE_SECONDS), not stop()'s 5 s.
        assert took < 2 * LANE_CLOSE_SECONDS + 1.0, took
        assert not background.status.running and background.status.next_round_unix_time is None
        with pytest.raises(turso.ProgrammingError):
            await bounded(background.sync_now())
        await lands_exactly_once(sync_server, replica_path, baseline)
    finally:
        await bounded(conn.close())
        proxy.close()


async def test_stop_waits_at_most_its_timeout_and_the_abandoned_round_loses_or_doubles_nothing(
    sync_server: SyncServer, replica_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    baseline = turso_threads()
    proxy_delay = 1.0
    conn, proxy = await open_behind_a_slow_proxy(sync_server, replica_path, proxy_delay)
    try:
        background = conn.sync_in_background(INTERVAL)
        assert await wait_until(lambda: proxy.requests > 0)
        began = time.monotonic()
        await bounded(background.stop(timeout=0.1))
        took = time.monotonic() - began
        # stop() returned before the held push could have reached the server.
        assert took < proxy_delay * 0.9, took
        assert background.status.rounds == 0 and not background.status.running
        stopped_waiting = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
        assert len(stopped_waiting) == 1 and "stopped waiting" in stopped_waiting[0].getMessage()
        await bounded(conn.close())
        await lands_exactly_once(sync_server, replica_path, baseline)
    finally:
        await bounded(conn.close())
        proxy.close()


async def test_stop_is_idempotent_also_from_two_tasks_at_once_and_close_after_it_is_fine(
    sync_server: SyncServer, replica_path: str
) -> None:
    conn = await open_replica(replica_path, sync_server.url)
    background = conn.sync_in_background(INTERVAL)
    assert await wait_until(lambda: background.status.rounds >= 1)
    await bounded(asyncio.gather(background.stop(), background.stop()))
    await bounded(background.stop())
    rounds = background.status.rounds
    await asyncio.sleep(2 * INTERVAL)
    assert background.status.rounds == rounds and not background.status.running
    await bounded(conn.close())
    await bounded(background.stop())


async def test_cancelling_the_task_that_owns_the_block_stops_background_sync_and_the_connection_goes_on(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with await open_replica(replica_path, sync_server.url) as conn:
        started: list[BackgroundSync] = []

        async def owner() -> None:
            async with conn.sync_in_background(INTERVAL) as background:
                started.append(background)
                await asyncio.sleep(3600)

        task = asyncio.get_running_loop().create_task(owner())
        assert await wait_until(lambda: bool(started) and started[0].status.rounds >= 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(task)
        background = started[0]
        assert not background.status.running
        rounds = background.status.rounds
        await asyncio.sleep(2 * INTERVAL)
        assert background.status.rounds == rounds
        # The connection is untouched, and may sync in the background again.
        assert isinstance(await bounded(conn.sync()), bool)
        async with conn.sync_in_background(INTERVAL) as again:
            assert await wait_until(lambda: again.status.rounds >= 1)


@pytest.mark.parametrize("owner", ["async_with_in_a_task", "nobody"])
def test_asyncio_run_ending_with_background_sync_running_stops_it_without_a_report_or_a_thread_left(
    sync_server: SyncServer, replica_path: str, owner: str
) -> None:
    loop_errors: list[LoopContext] = []
    kept: list[BackgroundSync] = []

    async def own_it(entered: asyncio.Event) -> None:
        async with connect_sync(replica_path, sync_server.url) as conn, conn.sync_in_background(INTERVAL) as background:
            kept.append(background)
            entered.set()
            await asyncio.sleep(3600)  # until asyncio.run cancels this task on its way out

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, context: loop_errors.append(context))
        if owner == "nobody":
            # Neither the background sync nor the connection is ever stopped or closed.
            conn = await open_replica(replica_path, sync_server.url)
            kept.append(conn.sync_in_background(INTERVAL))
        else:
            entered = asyncio.Event()
            loop.create_task(own_it(entered))
            await bounded(entered.wait())
        assert await wait_until(lambda: kept[0].status.rounds >= 1)

    def run() -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            asyncio.run(main())
            background = kept.pop()
            assert not background.status.running and background.status.rounds >= 1
            # Unowned, the connection is only released now: it warns that it was never closed, as any does.
            del background
            assert collect_until_stopped(baseline), "the worker outlived its event loop"
        unexpected = [str(w.message) for w in caught if not issubclass(w.category, ResourceWarning)]
        assert unexpected == []
        if owner == "nobody":
            assert any(issubclass(w.category, ResourceWarning) for w in caught)

    # asyncio.run in a thread of its own, so that a background task that ignored cancellation fails the test
    # instead of hanging it.
    failures: list[BaseException] = []

    def run_and_record() -> None:
        try:
            run()
        except BaseException as error:
            failures.append(error)

    baseline = turso_threads()
    runner = threading.Thread(target=run_and_record, name="asyncio-run")
    runner.start()
    runner.join(AWAIT_SECONDS)
    assert not runner.is_alive(), "asyncio.run did not end: the background sync ignored its cancellation"
    if failures:
        raise failures[0]
    assert loop_errors == [], loop_errors
    assert wait_until_blocking(lambda: not (turso_threads() - baseline))


def test_event_loop_closed_without_shutdown_leaves_no_thread_and_nothing_but_asyncio_s_pending_task_report(
    sync_server: SyncServer, replica_path: str
) -> None:
    # The rough way out: loop.close() with the background sync and the connection still running (no asyncio.run to
    # cancel tasks first). Nothing can run on a closed loop; what is left must still go away.
    baseline = turso_threads()
    loop_errors: list[LoopContext] = []
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: loop_errors.append(context))

    async def start() -> BackgroundSync:
        conn = await open_replica(replica_path, sync_server.url)
        background = conn.sync_in_background(INTERVAL)
        assert await wait_until(lambda: background.status.rounds >= 1)
        return background

    try:
        background = loop.run_until_complete(start())
        assert background.status.running
    finally:
        loop.close()
    assert not background.status.running and background.status.next_round_unix_time is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del background
        # Its threads exit, and the unclosed connection, collected, warns as any does.
        assert collect_until_stopped(baseline), "the worker outlived its event loop"
    assert [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
    # The only report is asyncio's own, for the task that a closed loop can no longer run.
    messages = [str(context.get("message")) for context in loop_errors]
    assert all(message == "Task was destroyed but it is pending!" for message in messages), messages


async def test_a_stopped_background_sync_keeps_no_reference_to_its_connection_even_after_failed_rounds(
    sync_server: SyncServer, replica_path: str
) -> None:
    conn = await open_replica(replica_path, sync_server.url)
    background = conn.sync_in_background(INTERVAL / 4, max_backoff=INTERVAL / 4)
    assert await wait_until(lambda: background.status.rounds >= 1)
    sync_server.stop()
    assert await wait_until(lambda: background.status.consecutive_failures >= 2)
    await bounded(background.stop())
    assert isinstance(background.status.last_error, turso.Error)
    # Dropping the unclosed connection now collects it at once (no cycle through the background sync or the
    # error it keeps): it warns there and then, with the cycle collector off.
    gc.disable()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del conn
        assert [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]
    finally:
        gc.enable()


# --- sync_now ----------------------------------------------------------------------------------------------------


async def test_sync_now_runs_a_round_at_once_instead_of_waiting_for_the_interval(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    first, second = await two_replicas(tmp_path, sync_server.url)
    async with first, second:
        async with second.sync_in_background(3600.0) as background:
            assert await wait_until(lambda: background.status.rounds == 1)
            await insert(first, "now")
            await bounded(first.push())
            began = time.monotonic()
            assert await bounded(background.sync_now()) is True
            assert time.monotonic() - began < 5.0 and background.status.rounds == 2
            assert await values(second) == ["now"]
            status = background.status
            assert status.next_round_unix_time is not None
            assert status.next_round_unix_time - time.time() > 3600 * 0.8 - 5.0


async def test_sync_now_during_a_round_joins_it_instead_of_running_another(
    sync_server: SyncServer, replica_path: str
) -> None:
    conn, proxy = await open_behind_a_slow_proxy(sync_server, replica_path, 0.3)
    try:
        async with conn.sync_in_background(3600.0) as background:
            assert await wait_until(lambda: proxy.requests > 0)  # the first round is in progress
            results = await bounded(asyncio.gather(background.sync_now(), background.sync_now()))
            assert results[0] == results[1] and isinstance(results[0], bool)
            assert background.status.rounds == 1
            # A cancelled sync_now does not cancel its round.
            waiting = asyncio.get_running_loop().create_task(background.sync_now())
            assert await wait_until(lambda: background.status.next_round_unix_time is None)
            waiting.cancel()
            assert await wait_until(lambda: background.status.rounds == 2)
        assert remote_counts(sync_server) == {"written before the round": 1}
    finally:
        await bounded(conn.close())
        proxy.close()


# --- auth tokens -------------------------------------------------------------------------------------------------


async def test_auth_token_callable_is_called_per_request_and_a_refreshed_token_keeps_background_sync_working(
    token_proxy: TokenCheckingProxy, replica_path: str
) -> None:
    # The token the application holds; the proxy accepts only its own current one.
    held = [token_proxy.valid_token]
    returned: list[str] = []

    def current_token() -> str:
        returned.append(held[0])
        return held[0]

    async with await bounded(connect_sync(replica_path, token_proxy.url, auth_token=current_token)) as conn:
        async with conn.sync_in_background(INTERVAL, max_backoff=INTERVAL) as background:
            for generation in range(1, 4):
                # The token is refreshed: the remote takes only the new one, which the callable returns from the
                # next request on.
                rounds = background.status.rounds
                held[0] = token_proxy.valid_token = f"token-{generation}"
                assert await wait_until(lambda: background.status.rounds >= rounds + 2)
            # The token expires and is not refreshed yet: rounds fail (so the proxy does check)...
            token_proxy.valid_token = "token-4"
            assert await wait_until(lambda: background.status.consecutive_failures >= 2)
            assert background.status.running
            # ...and once the application refreshes it, the next round succeeds.
            held[0] = "token-4"
            assert await wait_until(lambda: background.status.consecutive_failures == 0)
    # One call per request, and every request carried what the callable returned at that moment.
    assert returned == token_proxy.seen
    assert {f"token-{generation}" for generation in range(5)} <= set(token_proxy.seen)


# --- misuse ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("parameter", ["interval", "max_backoff"])
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("5", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
async def test_a_bad_interval_or_max_backoff_raises_a_clear_error_and_starts_nothing(
    sync_server: SyncServer, replica_path: str, parameter: str, value: object, error: type[Exception]
) -> None:
    async with await open_replica(replica_path, sync_server.url) as conn:
        tasks_before = asyncio.all_tasks()
        arguments: dict[str, Any] = {"interval": INTERVAL, "max_backoff": 60.0, parameter: value}
        with pytest.raises(error, match=parameter):
            conn.sync_in_background(**arguments)
        assert asyncio.all_tasks() == tasks_before
        # Nothing was started, so this is not a second background sync.
        async with conn.sync_in_background(INTERVAL) as background:
            assert background.status.running


async def test_a_second_background_sync_on_one_connection_raises_programming_error_until_the_first_stops(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with await open_replica(replica_path, sync_server.url) as conn:
        first = conn.sync_in_background(INTERVAL)
        with pytest.raises(turso.ProgrammingError, match="already"):
            conn.sync_in_background(INTERVAL)
        assert first.status.running
        await bounded(first.stop())
        async with conn.sync_in_background(INTERVAL) as second:
            assert await wait_until(lambda: second.status.rounds >= 1)


async def test_background_sync_on_an_unopened_or_closed_connection_raises_programming_error(
    sync_server: SyncServer, replica_path: str
) -> None:
    unopened = connect_sync(replica_path, sync_server.url)
    with pytest.raises(turso.ProgrammingError, match="not open"):
        unopened.sync_in_background(INTERVAL)
    conn = await open_replica(replica_path, sync_server.url)
    await bounded(conn.close())
    with pytest.raises(turso.ProgrammingError, match="closed"):
        conn.sync_in_background(INTERVAL)
    with pytest.raises(turso.ProgrammingError, match="closed"):
        await bounded(conn.sync())
