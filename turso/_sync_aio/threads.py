"""The two threads of a connection: the SQL worker and the sync lane, and the one owner that starts and stops them.

Each thread takes `(future, function)` jobs from its own queue and runs them in order (the driver's `Worker`, with a
run loop of ours: see `JobRunner`). The SQL worker runs every statement, and the local steps the lane hands it between
transactions (`SqlWorker.run_between_transactions`); the lane runs one sync operation at a time. `ConnectionThreads`
starts both, stops both, and bounds how long close() waits for them (docs/design.md has the why).
"""

import asyncio
import functools
import logging
import threading
import time
import traceback
import weakref
from queue import Empty, SimpleQueue
from typing import Any, Callable, Optional, cast

from ..lib import Error, OperationalError, ProgrammingError
from ..worker import STOP_RUNNING_SENTINEL, Worker
from .errors import job_error

# A job: the future that awaits its outcome (None when nobody awaits it) and the function to run.
Job = tuple[Optional["asyncio.Future[Any]"], Callable[[], Any]]

SQL_WORKER_NAME = "turso-async-worker"
SYNC_LANE_NAME = "turso-sync-lane"
# How often exited() looks whether the threads are still alive.
EXIT_POLL_SECONDS = 0.01

logger = logging.getLogger("turso.lib_sync_aio")


class JobRunner(Worker):
    """The driver's Worker thread with a run loop of ours: every job runs in order, also one whose caller was
    cancelled; an outcome nobody waits for is dropped; SystemExit fails its call instead of ending the thread; a job
    without a future does not wake the loop; nothing of a job is kept once it ran; and a closed loop stops the
    connection (`on_loop_closed`) instead of printing a traceback."""

    def __init__(
        self,
        name: str,
        jobs: "SimpleQueue[Job]",
        loop: asyncio.AbstractEventLoop,
        on_loop_closed: "weakref.WeakMethod[Callable[[], None]]",
    ) -> None:
        """A runner (not started) of `jobs`, handing outcomes to `loop`; `on_loop_closed` is held weakly so that an
        unclosed connection can still be collected while its threads idle."""
        # The driver's Worker types its queue for jobs that always have a future; ours may have none.
        driver_jobs = cast("SimpleQueue[Optional[tuple[asyncio.Future[Any], Callable[[], Any]]]]", jobs)
        super().__init__(driver_jobs, loop)  # pyright: ignore[reportUnknownMemberType]  # (the driver's bare Future)
        self.name = name
        self.jobs = jobs
        self.on_loop_closed = on_loop_closed
        # Where run() takes its next job; the SQL worker's looks out for a step waiting between transactions.
        self.next_job: Callable[[], Job] = jobs.get

    def run(self) -> None:
        """The thread: run jobs until one returns STOP_RUNNING_SENTINEL (the connection's last job)."""
        next_job = self.next_job
        # deliver(), inlined: this loop runs once per job, and a method call here is a measurable part of a job.
        call_soon_threadsafe = cast(Callable[..., object], self._loop.call_soon_threadsafe)
        settle: Callable[..., object]
        while True:
            future, function = next_job()
            try:
                outcome = function()
            except BaseException as error:
                traceback.clear_frames(error.__traceback__)
                outcome = error if isinstance(error, Error) else job_error(error)
                settle = set_exception_unless_done if future is not None else _report_unawaited_failure
            else:
                if outcome is STOP_RUNNING_SENTINEL:
                    return
                settle = set_result_unless_done
            del function
            if future is not None or settle is _report_unawaited_failure:
                try:
                    call_soon_threadsafe(settle, future, outcome)
                except RuntimeError as error:
                    self._undeliverable(error)
            del future, outcome

    def deliver(self, settle: Callable[..., object], future: "asyncio.Future[Any]", outcome: Any) -> None:
        """On the thread: run `settle(future, outcome)` on the loop, or stop the threads if the loop has closed."""
        try:
            self._loop.call_soon_threadsafe(settle, future, outcome)
        except RuntimeError as error:
            self._undeliverable(error)

    def _undeliverable(self, error: RuntimeError) -> None:
        # call_soon_threadsafe raised: if the loop has closed, nobody is left to hear of any result, so stop.
        if not self._loop.is_closed():
            raise error
        on_loop_closed = self.on_loop_closed()
        if on_loop_closed is not None:
            on_loop_closed()


class SqlWorker(JobRunner):
    """The connection's SQL worker: every statement in call order, and the local steps of sync operations (applying
    pulled changes, checkpoints), which the lane hands over with `run_between_transactions`."""

    def __init__(
        self,
        jobs: "SimpleQueue[Job]",
        loop: asyncio.AbstractEventLoop,
        on_loop_closed: "weakref.WeakMethod[Callable[[], None]]",
    ) -> None:
        """The SQL worker (not started) of `jobs`."""
        super().__init__(SQL_WORKER_NAME, jobs, loop, on_loop_closed)
        self.next_job = self._next_job
        # The step waiting for the connection to be between transactions, if any.
        self._waiting: Optional[BetweenTransactions] = None
        # Serializes handing a step over with queueing the last job, so that no step is queued behind the last job
        # (where it would never run, and the lane would wait for it forever).
        self._stop_lock = threading.Lock()
        self._stopping = False

    def stop_with(self, last_job: Callable[[], object]) -> None:
        """Queue the worker's last job, unless one is queued already: it fails a step still waiting between
        transactions, runs `last_job` and ends the thread."""
        with self._stop_lock:
            if self._stopping:
                return
            self._stopping = True
            self.jobs.put_nowait((None, functools.partial(self._last_job, last_job)))

    def _last_job(self, last_job: Callable[[], object]) -> object:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.fail(ProgrammingError(f"Cannot {waiting.description}: the connection was closed"))
        last_job()
        return STOP_RUNNING_SENTINEL

    def run_between_transactions(
        self, step: Callable[[], Any], description: str, in_transaction: Callable[[], bool], wait_seconds: float
    ) -> Any:
        """On the sync lane: run `step` on this worker once `in_transaction()` is False, and return its outcome.

        Raises OperationalError if a transaction stays open for `wait_seconds`, ProgrammingError if the connection
        closes first.
        """
        handoff = BetweenTransactions(step, description, in_transaction, wait_seconds)
        with self._stop_lock:
            if self._stopping:
                raise ProgrammingError(f"Cannot {description}: the connection was closed")
            self.jobs.put_nowait((None, functools.partial(self._wait_for, handoff)))
        return handoff.outcome()

    def _next_job(self) -> Job:
        # The next job; while a step waits for the open transaction to end, it runs as soon as none is open (looked at
        # after every job), or gives up at its deadline.
        waiting = self._waiting
        if waiting is None:
            return self.jobs.get()
        if waiting.run_if_between_transactions():
            self._waiting = None
            return self.jobs.get()
        try:
            return self.jobs.get(True, waiting.seconds_left())
        except Empty:
            waiting.give_up()
            self._waiting = None
            return (None, _do_nothing)

    def _wait_for(self, handoff: "BetweenTransactions") -> None:
        # The handed-over step as a job: run it now, or keep it until the transaction ends.
        if not handoff.run_if_between_transactions():
            self._waiting = handoff



class SyncLane(JobRunner):
    """The connection's sync lane: one sync operation at a time (pull's network wait, push, stats; apply and
    checkpoint are handed to the SQL worker), so an operation's turn lasts until it has ended on its thread."""

    def __init__(
        self,
        jobs: "SimpleQueue[Job]",
        loop: asyncio.AbstractEventLoop,
        on_loop_closed: "weakref.WeakMethod[Callable[[], None]]",
    ) -> None:
        """The sync lane (not started) of `jobs`."""
        super().__init__(SYNC_LANE_NAME, jobs, loop, on_loop_closed)
        # The operation now running or last run, for close()'s warning.
        self.current = "nothing"


class ConnectionThreads:
    """The SQL worker and the sync lane of one connection: the one owner that starts and stops them.

    `start()` runs the open job first; `close()` stops both in order, waits with a bound, and warns about what it
    leaves; `stop()` stops both without waiting (a cancelled open, garbage collection, a closed event loop).
    """

    def __init__(
        self,
        jobs: "SimpleQueue[Job]",
        lane_jobs: "SimpleQueue[Job]",
        loop: asyncio.AbstractEventLoop,
        on_loop_closed: "weakref.WeakMethod[Callable[[], None]]",
        close_seconds: float,
    ) -> None:
        """The threads (not started) of `jobs` and `lane_jobs`; close() gives the lane `close_seconds` at a time."""
        self.sql = SqlWorker(jobs, loop, on_loop_closed)
        self.lane = SyncLane(lane_jobs, loop, on_loop_closed)
        self.close_seconds = close_seconds
        # Settled by each thread's last job, when anyone listens; the lane's settled at once if it never started.
        self._sql_ended: asyncio.Future[None] = loop.create_future()
        self._lane_ended: asyncio.Future[None] = loop.create_future()
        self._lane_stopping = False
        # False until the SQL worker started: then there is nothing to stop.
        self._started = False

    def start(self, open_job: Job) -> None:
        """Queue `open_job` and start both threads. If the lane cannot start, the SQL worker runs and must be stopped
        (`stop()`); the error is raised either way."""
        self.sql.jobs.put_nowait(open_job)
        self.sql.start()
        self._started = True
        try:
            self.lane.start()
        except BaseException:
            self._lane_stopping = True
            self._lane_ended.set_result(None)
            raise

    async def close(
        self,
        last_sql_job: Callable[[], Optional[Exception]],
        abort_requests: Callable[[], None],
        waits_on_remote: Callable[[], bool],
    ) -> None:
        """Stop both threads and return once they have exited, raising what `last_sql_job` (closing the replica)
        returned. Safe to call more than once, also from several tasks.

        The lane's last job goes behind the sync operations already called, which get `close_seconds`; then
        `abort_requests()` fails the request still in flight. The SQL worker runs the SQL queued before, for as long as
        it takes, then `last_sql_job`. Only a statement for which `waits_on_remote()` is True is left behind (partial
        sync's page reads, which cannot fail), with a warning: its thread exits once the remote answers. If the caller
        is cancelled meanwhile, the request in flight fails at once and both threads still stop (as with `stop()`).
        """
        if not self._started:
            return
        try:
            self._stop_lane(self._lane_ended)
            if not await _ended(self._lane_ended, self.close_seconds):
                logger.warning(
                    "close() stopped waiting for the remote after %g s: %s failed, and the sync operations queued "
                    "after it were refused",
                    self.close_seconds,
                    self.lane.current,
                )
            abort_requests()
            self.sql.stop_with(self._end_sql_worker_job(last_sql_job, self._sql_ended))
            while not await _ended(self._sql_ended, self.close_seconds):
                if waits_on_remote():
                    logger.warning(
                        "close() returned while a statement waits for pages from the remote (partial sync); the SQL "
                        "worker closes the replica and exits once they arrive"
                    )
                    return
            # The lane has no request left to wait for: it ends as soon as a local step it handed over has ended.
            if not await _ended(self._lane_ended, self.close_seconds):
                logger.warning("close() returned while the sync lane still runs %s", self.lane.current)
            elif self.lane.ident is not None:
                self.lane.join()
            # Each thread settles its future as its very last step, so the joins return at once.
            self.sql.join()
            self._sql_ended.result()
        except BaseException:
            abort_requests()
            self.stop(last_sql_job, quietly=False)
            raise

    async def exited(self, timeout: float) -> bool:
        """Whether both threads have exited within `timeout` seconds, seen from any event loop (close() after the loop
        that opened the connection has closed: the threads' futures belong to that loop)."""
        deadline = time.monotonic() + timeout
        while self.sql.is_alive() or self.lane.is_alive():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(EXIT_POLL_SECONDS)
        return True

    def stop(self, last_sql_job: Callable[[], Optional[Exception]], *, quietly: bool) -> None:
        """Stop both threads without waiting: the lane after the sync operations already called, the SQL worker after
        its queued SQL and `last_sql_job`. `quietly`: nothing is handed to the event loop (it may be closed, or the
        connection being collected); otherwise a later close() waits for the threads as usual."""
        if not self._started:
            return
        self._stop_lane(None if quietly else self._lane_ended)
        ended = None if quietly else self._sql_ended
        self.sql.stop_with(self._end_sql_worker_job(last_sql_job, ended))

    def _end_sql_worker_job(
        self, last_sql_job: Callable[[], Optional[Exception]], ended: Optional["asyncio.Future[None]"]
    ) -> Callable[[], None]:
        return functools.partial(_end_sql_worker, self.sql, self.lane, self.close_seconds, last_sql_job, ended)

    def _stop_lane(self, ended: Optional["asyncio.Future[None]"]) -> None:
        if not self._lane_stopping:
            self._lane_stopping = True
            self.lane.jobs.put_nowait((None, functools.partial(_end_lane, self.lane, ended)))


async def _ended(future: "asyncio.Future[None]", timeout: float) -> bool:
    # Whether `future` is done within `timeout` seconds.
    if not future.done():
        await asyncio.wait([future], timeout=timeout)
    return future.done()


def _end_lane(lane: SyncLane, ended: Optional["asyncio.Future[None]"]) -> object:
    # The lane's last job: tell close() (if it listens) that the lane has ended, then end it.
    if ended is not None:
        lane.deliver(set_result_unless_done, ended, None)
    return STOP_RUNNING_SENTINEL


def _end_sql_worker(
    worker: SqlWorker,
    lane: SyncLane,
    lane_seconds: float,
    last_job: Callable[[], Optional[Exception]],
    ended: Optional["asyncio.Future[None]"],
) -> None:
    # The SQL worker's last job: close the replica, then tell close() (if it listens) how that went. The lane's
    # request has been failed by now; the replica is closed, and its path let go, once the lane has ended too (a
    # stop without waiting, say a cancelled close(), queues both last jobs at once). A lane still running after
    # `lane_seconds` is one that cannot be interrupted (partial sync's page reads, a blocking auth_token callable).
    if lane.ident is not None:
        lane.join(lane_seconds)
    error = last_job()
    if ended is None:
        return
    if error is None:
        worker.deliver(set_result_unless_done, ended, None)
    else:
        worker.deliver(set_exception_unless_done, ended, error)


class BetweenTransactions:
    """A step that the lane hands to the SQL worker (apply pulled changes, checkpoint) to run only while no
    transaction is open: inside one it fails with "Database is busy". The lane waits in `outcome()`; the worker
    settles it exactly once: it runs it, gives up after `wait_seconds`, or fails it at close."""

    __slots__ = ("step", "description", "in_transaction", "wait_seconds", "deadline", "done", "result", "error")

    def __init__(
        self, step: Callable[[], Any], description: str, in_transaction: Callable[[], bool], wait_seconds: float
    ) -> None:
        """A step not handed over yet; `description` says what it does, in error messages."""
        self.step: Optional[Callable[[], Any]] = step
        self.description = description
        self.in_transaction = in_transaction
        self.wait_seconds = wait_seconds
        # When the worker stops waiting for the open transaction to end (time.monotonic()).
        self.deadline = time.monotonic() + wait_seconds
        # Set once the outcome is known.
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def run_if_between_transactions(self) -> bool:
        """On the worker: run the step if no transaction is open, or give up if the deadline passed; True once it is
        settled, False while it must wait."""
        if self.done.is_set():
            return True
        try:
            if self.in_transaction():
                if time.monotonic() < self.deadline:
                    return False
                self.give_up()
                return True
        except BaseException as error:
            self.fail(error)
            return True
        self._run_step()
        return True

    def seconds_left(self) -> float:
        """How long the worker may still wait for the transaction to end."""
        return max(0.0, self.deadline - time.monotonic())

    def give_up(self) -> None:
        """Settle with the error that says the transaction stayed open; the step did not run."""
        self.fail(
            OperationalError(
                f"could not {self.description}: a transaction stayed open on this connection for "
                f"{self.wait_seconds:g} s; commit or roll back before syncing (nothing was lost: the next pull, or "
                "checkpoint, does it)"
            )
        )

    def fail(self, error: BaseException) -> None:
        """Settle with `error` (raised by outcome() on the lane)."""
        self.step = None
        self.error = error
        self.done.set()

    def outcome(self) -> Any:
        """On the lane: wait until the worker settled this step, then return its result or raise its error."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result

    def _run_step(self) -> None:
        step, self.step = self.step, None  # dropped at once: it holds the pulled changes
        try:
            if step is not None:
                self.result = step()
        except BaseException as error:
            self.error = error
        finally:
            del step
            self.done.set()


def _do_nothing() -> None:
    pass


def set_result_unless_done(future: "asyncio.Future[Any]", result: Any) -> None:
    """On the loop: hand `result` to the caller's future, unless the caller stopped waiting (it was cancelled)."""
    if not future.done():
        future.set_result(result)


def set_exception_unless_done(future: "asyncio.Future[Any]", error: BaseException) -> None:
    """On the loop: hand `error` to the caller's future, unless the caller stopped waiting (it was cancelled)."""
    if not future.done():
        future.set_exception(error)


def _report_unawaited_failure(future: None, error: BaseException) -> None:
    # On the loop: a job nobody awaits (cursor creation, a property setter) failed; say so as asyncio does for an
    # exception nobody retrieved.
    asyncio.get_running_loop().call_exception_handler(
        {"message": "a ConnectionSync operation queued without an await failed", "exception": error}
    )
