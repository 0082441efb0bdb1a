"""Background sync for asyncio sync replicas: a round (push, then pull) every `interval` seconds, backing off while
they fail, and checkpointing once the write-ahead log grows past `checkpoint_wal_bytes`.

    async with turso.aio.sync.connect("app.db", url, auth_token=token) as conn:
        async with conn.sync_in_background(interval=5.0) as background:
            ...                              # a round at once, then one every 5 s
            background.status.healthy        # what a health check answers
            changed = await background.sync_now()

It is one asyncio task on the connection's event loop, no thread. Failures go to `status` and to this module's logger
(one WARNING per streak, one INFO when it ends, DEBUG in between), never to the loop's exception handler. The waits
are `Backoff`'s; docs/background-sync.md has the rest.
"""

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Callable, Optional, Protocol

from ._sync_aio.arguments import optional_byte_count, seconds
from ._sync_aio.errors import clear_frames
from ._sync_aio.loop_turns import LoopTurns
from .lib import ProgrammingError

# Where background sync says that rounds fail (one WARNING per streak) and work again (one INFO); DEBUG per retry.
logger = logging.getLogger(__name__)

# How long stop() waits for a round in progress by default: short, so that stop() and then the connection's close()
# take under a second whatever the remote does (the round's operation is not lost; it ends in its turn).
STOP_TIMEOUT_SECONDS = 0.25
# The default of `checkpoint_wal_bytes`: a successful round checkpoints once the WAL holds more than this (16 MiB).
CHECKPOINT_WAL_BYTES = 16 * 1024 * 1024
# The random factor of every wait is drawn uniformly from [1 - JITTER, 1 + JITTER].
JITTER = 0.2
# How many rounds of the background syncs of one event loop run at once; the others wait for a turn, in order. A
# thousand replicas opened together then do not sync in step, and a saturated machine does not pile rounds up: a
# round waits on the network most of its time, so 32 at once keep a thousand replicas at a 5 s interval even over a
# link of 100 ms (docs/background-sync.md).
ROUNDS_AT_ONCE = 32
_round_turns = LoopTurns(ROUNDS_AT_ONCE)


class WalStats(Protocol):
    """The part of a replica's stats a background sync reads (`turso.lib_sync_aio.SyncStats` has it)."""

    @property
    def main_wal_size(self) -> int:
        """Bytes in the replica's write-ahead log."""
        ...


class SyncTarget(Protocol):
    """What a background sync drives (`turso.lib_sync_aio.ConnectionSync` is one): `sync()` is a round, `stats()` and
    `checkpoint()` bound the WAL, `request_timeout` sizes the health window."""

    async def sync(self) -> bool:
        """Push the replica's local changes, then pull the remote's; True if remote changes were applied."""
        ...

    async def stats(self) -> WalStats:
        """The replica's stats; a background sync reads `main_wal_size` after each successful round."""
        ...

    async def checkpoint(self) -> None:
        """Checkpoint the replica's WAL into its database file."""
        ...

    @property
    def request_timeout(self) -> float:
        """Seconds a sync request may wait for the remote before it fails (read for each status)."""
        ...


@dataclass(frozen=True)
class Backoff:
    """The wait before the next round, the one home of the policy: `min(interval * 2**failures, max_backoff)`, never
    below `interval`, times a factor drawn from [1 - jitter, 1 + jitter] so that a fleet does not retry in step."""

    interval: float  # seconds between rounds while they succeed
    max_backoff: float  # the longest base wait after failed rounds (before jitter)
    jitter: float = JITTER  # the relative spread of every wait: 0.2 is ±20%

    def base_delay(self, failures: int) -> float:
        """The wait after `failures` failed rounds in a row, before jitter."""
        try:
            grown = math.ldexp(self.interval, failures)  # interval * 2**failures, without building 2**failures
        except OverflowError:
            grown = math.inf
        return max(self.interval, min(grown, self.max_backoff))

    def delay(self, failures: int, uniform: Callable[[float, float], float] = random.uniform) -> float:
        """The jittered wait after `failures` failed rounds in a row; `uniform(a, b)` draws the factor."""
        return self.base_delay(failures) * uniform(1.0 - self.jitter, 1.0 + self.jitter)


@dataclass(frozen=True)
class BackgroundSyncStatus:
    """A snapshot of a background sync's health, from `BackgroundSync.status`; for a health check read `healthy`."""

    # Rounds (push, then pull) that succeeded since the background sync started.
    rounds: int
    # Rounds that failed since the last success; 0 while rounds succeed. It drives the backoff.
    consecutive_failures: int
    # The error of the latest failed round, kept after later successes; None if no round has failed.
    last_error: Optional[Exception]
    # When the latest round succeeded, in Unix seconds (time.time()); None before the first success.
    last_success_unix_time: Optional[float]
    # When the next round is due, in Unix seconds; None while a round runs and once stopped.
    next_round_unix_time: Optional[float]
    # True until the background sync is stopped (stop(), leaving its `async with`, closing the connection, or the
    # event loop shutting down); it then runs no more rounds.
    running: bool
    # True while running and the last successful round (before the first: the start) is at most
    # `2 * interval + request_timeout` seconds old; what a health check answers.
    healthy: bool
    # When the round in progress (push, pull, and its checkpoint if one is due) started, in Unix seconds; None
    # between rounds and once stopped. A round that has run much longer than `request_timeout` is stuck.
    round_started_unix_time: Optional[float]


class BackgroundSync:
    """Keeps `target` in sync: a round at once, then one every `interval` seconds, backing off (`Backoff`) up to
    `max_backoff` while rounds fail, and checkpointing after a round once the WAL exceeds `checkpoint_wal_bytes` (None:
    never). Usually made by `ConnectionSync.sync_in_background`; `stop()`, leaving `async with` or closing the
    connection stops it."""

    def __init__(
        self,
        target: SyncTarget,
        interval: float,
        *,
        max_backoff: float = 60.0,
        checkpoint_wal_bytes: Optional[int] = CHECKPOINT_WAL_BYTES,
    ) -> None:
        """Check the arguments, then start at once on the running event loop (raises RuntimeError if none runs)."""
        self._backoff = Backoff(seconds("interval", interval), seconds("max_backoff", max_backoff))
        self._checkpoint_wal_bytes = optional_byte_count("checkpoint_wal_bytes", checkpoint_wal_bytes)
        self._loop = asyncio.get_running_loop()
        # Held while running; released when it stops, so that a stopped background sync keeps no connection alive.
        self._target: Optional[SyncTarget] = target
        self._rounds = 0
        self._failures = 0
        self._last_error: Optional[Exception] = None
        self._last_success_unix_time: Optional[float] = None
        # The health window counts from here (time.monotonic()): the start, then each successful round's end.
        self._fresh_since = time.monotonic()
        self._round_started_unix_time: Optional[float] = None
        # Checkpoints that failed in a row (one WARNING per streak).
        self._checkpoint_failures = 0
        self._next_round_unix_time: Optional[float] = time.time()
        # When the current failure streak began (loop time), for the log line that ends it.
        self._streak_started = 0.0
        self._stop_requested = False
        # The future of the round in progress, or of the next one when sync_now() asked for it; None otherwise.
        self._round: Optional[asyncio.Future[bool]] = None
        # Settled to end the wait between rounds early (sync_now(), stop()); None outside that wait.
        self._wakeup: Optional[asyncio.Future[None]] = None
        self._task = self._loop.create_task(self._run(), name="turso-background-sync")

    @property
    def interval(self) -> float:
        """Seconds between rounds while they succeed."""
        return self._backoff.interval

    @property
    def max_backoff(self) -> float:
        """The longest wait (before jitter) between rounds while they fail."""
        return self._backoff.max_backoff

    @property
    def checkpoint_wal_bytes(self) -> Optional[int]:
        """The WAL size past which a successful round checkpoints; None if rounds never checkpoint."""
        return self._checkpoint_wal_bytes

    @property
    def status(self) -> BackgroundSyncStatus:
        """A snapshot: rounds, failures, the last error, the last success, the next round, whether it is healthy."""
        running = self._is_running()
        target = self._target
        healthy = (
            running
            and target is not None
            and time.monotonic() - self._fresh_since <= 2 * self._backoff.interval + target.request_timeout
        )
        return BackgroundSyncStatus(
            rounds=self._rounds,
            consecutive_failures=self._failures,
            last_error=self._last_error,
            last_success_unix_time=self._last_success_unix_time,
            next_round_unix_time=self._next_round_unix_time if running else None,
            running=running,
            healthy=healthy,
            round_started_unix_time=self._round_started_unix_time if running else None,
        )

    async def sync_now(self) -> bool:
        """Run a round now, or join the one in progress, and return what its pull returned; raises that round's error,
        or `turso.ProgrammingError` once stopped. Cancelling the await does not cancel the round."""
        if not self._is_running():
            raise ProgrammingError("Background sync is stopped; start a new one with conn.sync_in_background()")
        if asyncio.get_running_loop() is not self._loop:
            raise ProgrammingError("BackgroundSync can only be used from the event loop that started it")
        round_future = self._round
        if round_future is None:
            round_future = self._round = self._loop.create_future()
            self._wake()
        return await asyncio.shield(round_future)

    async def stop(self, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Stop it: no round starts after this; a round in progress gets `timeout` seconds, then stop() warns and stops
        waiting (its operation still ends in its turn, nothing lost). Safe to call more than once."""
        self._stop_requested = True
        self._wake()
        task = self._task
        if task.done() or self._loop.is_closed():
            # (A task cancelled before it ever ran never reached _run's cleanup.)
            self._target = None
            return
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                logger.warning(
                    "Background sync stopped waiting for its round after %.3g s; the round's push or pull in "
                    "progress still ends in its turn",
                    timeout,
                )
                task.cancel()
                # Prompt: the round only awaits the connection's futures, which cancel at once.
                await asyncio.wait({task})
        except asyncio.CancelledError:
            # Our caller was cancelled (say its task is shutting down): do not leave the background task behind.
            task.cancel()
            raise

    async def __aenter__(self) -> "BackgroundSync":
        """`async with conn.sync_in_background(interval) as background:`; it is already running."""
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]] = None,
        exc_value: Optional[BaseException] = None,
        traceback: Optional[TracebackType] = None,
    ) -> None:
        """Stop the background sync when the block ends, also when it raised or its task was cancelled."""
        await self.stop()

    def _is_running(self) -> bool:
        return not (self._stop_requested or self._task.done() or self._loop.is_closed())

    def _wake(self) -> None:
        # End the wait between rounds now (the loop then checks whether to stop or to run a round).
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _run(self) -> None:
        # The background task: rounds and waits until stopped. It only ever ends normally or cancelled, so asyncio
        # has nothing to report about it.
        try:
            while not self._stop_requested:
                error = await self._one_round()
                if self._stop_requested:
                    break
                delay = self._backoff.delay(self._failures)
                if error is not None:
                    self._log_failure(error, delay)
                await self._wait(delay)
        finally:
            self._target = None
            self._next_round_unix_time = None
            self._round_started_unix_time = None
            round_future = self._round
            self._round = None
            if round_future is not None:
                _fail_quietly(round_future, ProgrammingError("Background sync stopped before this round ran"))

    async def _one_round(self) -> Optional[Exception]:
        # One push-then-pull, in its turn among the loop's background syncs; returns its error, if it failed (it never
        # raises one, only CancelledError).
        round_future = self._round
        if round_future is None:
            round_future = self._round = self._loop.create_future()
        self._next_round_unix_time = None
        async with _round_turns():
            return await self._one_round_in_turn(round_future)

    async def _one_round_in_turn(self, round_future: "asyncio.Future[bool]") -> Optional[Exception]:
        self._round_started_unix_time = time.time()
        target = self._target
        try:
            if target is None:
                raise ProgrammingError("Background sync is stopped")
            changed = await target.sync()
        except Exception as error:
            self._round_failed(error)
            _fail_quietly(round_future, error)
            return error
        except asyncio.CancelledError:
            _fail_quietly(round_future, ProgrammingError("Background sync stopped before this round finished"))
            raise
        else:
            self._round_succeeded()
            try:
                await self._checkpoint_if_due(target)
            finally:
                # The round's sync succeeded: its callers get its result once the round has ended, also when stop()
                # cut its checkpoint short.
                if not round_future.done():
                    round_future.set_result(changed)
            return None
        finally:
            # A failed round's traceback keeps this frame (in last_error): it must not keep the connection too.
            target = None
            self._round_started_unix_time = None
            if self._round is round_future:
                self._round = None

    async def _checkpoint_if_due(self, target: SyncTarget) -> None:
        # After a successful round: checkpoint if the WAL outgrew checkpoint_wal_bytes. A failure (say a transaction
        # stayed open for TRANSACTION_WAIT_SECONDS) is logged, and the next round tries again; it is no failed round.
        limit = self._checkpoint_wal_bytes
        if limit is None or self._stop_requested:
            return
        try:
            wal_size = (await target.stats()).main_wal_size
            if wal_size <= limit:
                return
            await target.checkpoint()
        except Exception as error:
            self._checkpoint_failures += 1
            clear_frames(error)
            if self._checkpoint_failures == 1:
                logger.warning(
                    "Background sync could not checkpoint the WAL: %s: %s; the next round tries again",
                    type(error).__name__,
                    error,
                )
            return
        if self._checkpoint_failures:
            logger.info("Background sync checkpoints again after %d failed attempts", self._checkpoint_failures)
        self._checkpoint_failures = 0

    async def _wait(self, seconds: float) -> None:
        self._next_round_unix_time = time.time() + seconds
        wakeup = self._wakeup = self._loop.create_future()
        timer = self._loop.call_later(seconds, _settle, wakeup)
        try:
            await wakeup
        finally:
            timer.cancel()
            self._wakeup = None

    def _round_failed(self, error: Exception) -> None:
        self._failures += 1
        # Kept in the status: drop the locals of the frames it passed through (they hold the connection).
        clear_frames(error)
        self._last_error = error
        if self._failures == 1:
            self._streak_started = self._loop.time()

    def _log_failure(self, error: Exception, delay: float) -> None:
        # One WARNING when a streak of failures begins; its retries only at DEBUG.
        if self._failures == 1:
            logger.warning(
                "Background sync failed: %s: %s; retrying in %.2f s, then backing off up to %.3g s (±%d%%) "
                "until a round succeeds",
                type(error).__name__,
                error,
                delay,
                self._backoff.max_backoff,
                round(self._backoff.jitter * 100),
            )
        else:
            logger.debug(
                "Background sync failed again (%d rounds in a row): %s; retrying in %.2f s",
                self._failures,
                error,
                delay,
            )

    def _round_succeeded(self) -> None:
        if self._failures:
            logger.info(
                "Background sync works again after %d failed rounds over %.1f s",
                self._failures,
                self._loop.time() - self._streak_started,
            )
        self._failures = 0
        self._rounds += 1
        self._last_success_unix_time = time.time()
        self._fresh_since = time.monotonic()


def _settle(future: "asyncio.Future[None]") -> None:
    if not future.done():
        future.set_result(None)


# Settle a round's future with an error that nobody may await: asyncio logs an exception nobody retrieved, so mark it
# retrieved at once (a sync_now() caller awaiting it still gets it).
def _fail_quietly(future: "asyncio.Future[bool]", error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()
