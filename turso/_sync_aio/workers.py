"""The process's worker threads, and each connection's queue of jobs that they run.

Threads follow the work, not the connections. A connection puts `(future, function)` jobs on its own `JobQueue`
(the request's pattern: `queue.put_nowait((future, function))`); its `SerialWorker` runs them one at a time, in
order, on whichever thread of the `WorkerPool` is free while the queue has jobs. An idle connection holds no thread.
Threads start when work needs them, up to the pool's cap, and exit after `IDLE_SECONDS` without work, or at once
when no connection is open any more. A long statement occupies one thread; the others serve everyone else.
"""

import asyncio
import functools
import itertools
import logging
import os
import threading
import time
import weakref
from collections import deque
from queue import Empty, SimpleQueue
from typing import Any, Callable, Optional, Protocol, TypeVar, cast

from ..lib import Connection as BlockingConnection
from ..lib import Error, OperationalError, ProgrammingError
from ..worker import Worker
from .errors import clear_frames, job_error

_T = TypeVar("_T")

# A job: the future that awaits its outcome and the function to run. A job with a future is a statement's own job
# (skipped if its await was cancelled before its turn, interrupted if it is cancelled while it runs); a job without one
# always runs to its end (cursor creation, settings, and what `SerialWorker.run_to_end` queues).
Job = tuple[Optional["asyncio.Future[Any]"], Callable[[], Any]]

# The name of every thread of the pool (numbered); tests and tools find them by this prefix.
THREAD_NAME_PREFIX = "turso-worker"
# How long a thread of the pool waits for work before it exits (while connections are open; with none open, a thread
# exits as soon as it is idle).
IDLE_SECONDS = 2.0
# The default cap on the pool's threads: a thread per statement or native step running at once. A long statement
# holds one, so a few can run while the others serve everyone else; beyond a few per core, more threads would only
# queue for the interpreter lock (docs/design.md).
DEFAULT_MAX_THREADS = 16
# How long a thread that ran a connection's last queued job waits for its next one before it serves another
# connection, when that connection's calls come back to back (its next job came within BACK_TO_BACK_SECONDS of its
# queue running empty): each call then costs what it costs on a thread of its own (measured: 2.3x that, unpinned,
# without waiting). Calls apart (a sync operation's steps around a request, a thousand replicas' rounds) never wait:
# a thread waiting for nothing would cost a wake-up at each timeout.
LINGER_SECONDS = 0.002
BACK_TO_BACK_SECONDS = 0.0005
# Jobs a connection runs in one turn on a thread when other connections wait for a thread: then it goes to the back.
JOBS_PER_TURN = 32
# How often `WorkerPool.wait_exited` looks whether the exiting threads have ended.
EXIT_POLL_SECONDS = 0.005

logger = logging.getLogger("turso.lib_sync_aio")


class JobQueue(SimpleQueue[Job]):
    """A connection's queue of jobs: a SimpleQueue whose `put_nowait` also hands the connection to a thread of the
    pool when none serves it yet."""

    __slots__ = ("worker",)

    # Set by the SerialWorker made for this queue.
    worker: "SerialWorker"

    def put_nowait(self, item: Job) -> None:
        """Queue `item` behind the connection's other jobs; a thread of the pool runs it in turn."""
        _put(self, item)
        worker = self.worker
        if not worker.scheduled:
            worker.schedule()

    def put_from_finalizer(self, item: Job) -> None:
        """`put_nowait` for `__del__`, which the garbage collector may run anywhere, also while this thread holds a
        lock of the pool's or of `threading`'s: it takes no lock and starts no thread. The pool adopts the connection
        soon after (`WorkerPool.adopt_orphans`)."""
        super().put_nowait(item)
        worker = self.worker
        worker.pool.orphans.put_nowait(worker)
        try:
            worker._loop.call_soon_threadsafe(worker.pool.adopt_orphans)  # pyright: ignore[reportPrivateUsage]
        except RuntimeError:
            pass  # the loop has closed: a thread of the pool adopts it when it next looks for work


# SimpleQueue's own put_nowait, called without super(): JobQueue.put_nowait runs once per call of every connection.
_put: Callable[["SimpleQueue[Any]", Any], None] = SimpleQueue.put_nowait  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]


class LoopMailbox:
    """Hands the outcomes of jobs from the pool's threads to one event loop: `post` from any thread, and the loop runs
    what was posted in order. One self-pipe wake-up (call_soon_threadsafe) carries every outcome posted until the loop
    gets to them, instead of one per job: with many replicas, outcomes come in bursts, and each wake-up is a system
    call on the thread that posts and another on the loop."""

    __slots__ = ("loop", "_posted", "_wake_pending", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """The mailbox of `loop` (use `mailbox_of`)."""
        self.loop = loop
        self._posted: deque[tuple[Callable[..., object], Any, Any]] = deque()
        # True from a wake-up's call_soon_threadsafe until the loop starts to deliver: posts meanwhile need none of
        # their own. A post that sees it set was appended before the loop cleared it, so the delivery takes it.
        self._wake_pending = False

    def post(self, settle: Callable[..., object], future: Any, outcome: Any) -> None:
        """On any thread: run `settle(future, outcome)` on the loop soon. RuntimeError if the loop has closed."""
        loop = self.loop
        if loop.is_closed():
            raise RuntimeError("Event loop is closed")
        self._posted.append((settle, future, outcome))
        if not self._wake_pending:
            self._wake_pending = True
            loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        # On the loop: everything posted so far, in order (and what is posted while it runs).
        self._wake_pending = False
        posted = self._posted
        while posted:
            settle, future, outcome = posted.popleft()
            settle(future, outcome)


def mailbox_of(loop: asyncio.AbstractEventLoop) -> LoopMailbox:
    """The mailbox of `loop`, made on first use."""
    mailbox = _mailboxes.get(loop)
    if mailbox is None:
        mailbox = _mailboxes[loop] = LoopMailbox(loop)
    return mailbox


_mailboxes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopMailbox]" = weakref.WeakKeyDictionary()


class WorkerPool:
    """The threads that run every connection's jobs; one per process (`pool`). `max_threads` caps them."""

    def __init__(self, max_threads: int = DEFAULT_MAX_THREADS, idle_seconds: float = IDLE_SECONDS) -> None:
        """An empty pool: threads start as connections queue jobs."""
        self._lock = threading.Lock()
        self._max_threads = max_threads
        self._idle_seconds = idle_seconds
        # Threads that serve, or wait for, work; an idle one waits on its own condition (the most recently idle
        # first, so that the others reach their idle timeout and exit).
        self._threads: set[_PoolThread] = set()
        self._idle: list[_PoolThread] = []
        # Connections with jobs that wait for a thread (every thread busy, at the cap).
        self._waiting: deque[SerialWorker] = deque()
        # Threads started and maybe not ended yet (wait_exited looks at them).
        self._started: list[_PoolThread] = []
        # Connections that queued a job from a finalizer, without the locks that scheduling takes (a SimpleQueue is
        # safe there); see adopt_orphans.
        self.orphans: SimpleQueue[SerialWorker] = SimpleQueue()
        # Open connections, by event loop; with none open on a loop that still runs, idle threads exit at once (a
        # connection whose loop has closed under it cannot give threads work any more).
        self._users: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()
        self._numbers = itertools.count(1)

    @property
    def max_threads(self) -> int:
        """The most threads the pool runs at once."""
        return self._max_threads

    @max_threads.setter
    def max_threads(self, count: object) -> None:
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"max_threads must be an int, not {type(count).__name__}")
        if count < 1:
            raise ValueError(f"max_threads must be at least 1, not {count}")
        with self._lock:
            self._max_threads = count
            starting = self._start_for_waiting()
        for thread in starting:
            self._start(thread)

    @property
    def users(self) -> int:
        """Open connections (attached and not detached yet) on event loops that have not closed."""
        with self._lock:
            return self._live_users()

    def counts(self) -> tuple[int, int, int]:
        """(threads, idle threads, connections waiting for a thread), as of now."""
        with self._lock:
            return len(self._threads), len(self._idle), len(self._waiting)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """A connection of `loop` opens: threads may idle for `idle_seconds` while any connection is open."""
        with self._lock:
            self._users[loop] = self._users.get(loop, 0) + 1

    def detach(self, loop: asyncio.AbstractEventLoop) -> bool:
        """A connection of `loop` has closed (its last job has run); True if it was the last one open, whose idle
        threads are told to exit now."""
        with self._lock:
            left = self._users.get(loop, 0) - 1
            if left > 0:
                self._users[loop] = left
            else:
                self._users.pop(loop, None)
            if self._live_users():
                return False
            idle, self._idle = self._idle, []
            for thread in idle:
                thread.wake.notify()
            return True

    async def wait_exited(self, timeout: float) -> bool:
        """Whether every thread of the pool has ended within `timeout` seconds (after the last connection closed, so
        that no thread of ours outlives it); False if work keeps one busy, or a connection opened meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                self._started = [thread for thread in self._started if thread.is_alive()]
                if not self._started:
                    return True
                if self._live_users():
                    return False
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(EXIT_POLL_SECONDS)

    def adopt_orphans(self) -> None:
        """Schedule the connections that queued a job from a finalizer (on their loop soon after, or on a thread of the
        pool before it looks for work)."""
        while True:
            try:
                worker = self.orphans.get_nowait()
            except Empty:
                return
            if not worker.scheduled:
                worker.schedule()

    def submit(self, worker: "SerialWorker") -> None:
        """Give `worker` (which has jobs, and no thread) a thread: an idle one, a new one under the cap, or the next
        one to be free. Raises OperationalError if no thread can be started and none runs."""
        with self._lock:
            if self._idle:
                thread = self._idle.pop()
                thread.assigned = worker
                thread.wake.notify()
                return
            self._waiting.append(worker)
            starting = self._start_for_waiting()
        for thread in starting:
            self._start(thread)

    def requeue(self, worker: "SerialWorker") -> bool:
        """On a thread of the pool, after a turn of JOBS_PER_TURN jobs: put `worker` behind the connections waiting
        for a thread, and return True; False if none waits (the thread then goes on with it)."""
        with self._lock:
            if not self._waiting:
                return False
            self._waiting.append(worker)
            return True

    def next_worker(self, thread: "_PoolThread") -> Optional["SerialWorker"]:
        """On a thread of the pool that is free: the next connection to serve, waiting for one while idle; None when
        the thread should exit."""
        with self._lock:
            while True:
                if self._waiting:
                    return self._waiting.popleft()
                if not self._live_users():
                    break
                self._idle.append(thread)
                notified = thread.wake.wait(self._idle_seconds)
                worker, thread.assigned = thread.assigned, None
                if worker is not None:
                    return worker
                if thread in self._idle:
                    self._idle.remove(thread)
                if not notified:
                    break
            self._threads.discard(thread)
            return None

    def after_fork(self) -> None:
        """In a child process: the parent's threads are not there; start afresh."""
        self._lock = threading.Lock()
        self._threads.clear()
        self._idle.clear()
        self._waiting.clear()
        self._started.clear()
        self.orphans = SimpleQueue()
        self._users = weakref.WeakKeyDictionary()

    def _live_users(self) -> int:
        # Under the lock: open connections of loops that still run.
        return sum(count for loop, count in self._users.items() if not loop.is_closed())

    def _start_for_waiting(self) -> list["_PoolThread"]:
        # Under the lock: new threads (not started yet) for connections that wait, as far as the cap allows.
        starting: list[_PoolThread] = []
        while self._waiting and len(self._threads) < self._max_threads:
            name = f"{THREAD_NAME_PREFIX}-{next(self._numbers)}"
            thread = _PoolThread(self, self._waiting.popleft(), name, self._lock)
            self._threads.add(thread)
            starting.append(thread)
        return starting

    def _start(self, thread: "_PoolThread") -> None:
        try:
            thread.start()
        except BaseException as error:
            # The OS refused a thread: its connection waits for the next free one, if any runs.
            worker = thread.first
            with self._lock:
                self._threads.discard(thread)
                alone = not self._threads
                if worker is not None and not alone:
                    self._waiting.append(worker)
            if worker is not None and alone:
                worker.scheduled = False
                raise OperationalError(f"cannot start a worker thread: {error}") from error
            logger.warning("cannot start another worker thread (%s); the running ones serve every connection", error)
            return
        with self._lock:
            self._started.append(thread)


class _PoolThread(threading.Thread):
    """A thread of the pool: it serves one connection's jobs at a time, then the next connection's."""

    def __init__(self, pool: WorkerPool, first: "SerialWorker", name: str, lock: threading.Lock) -> None:
        super().__init__(name=name, daemon=True)
        self.pool = pool
        # The connection this thread starts with.
        self.first: Optional[SerialWorker] = first
        # The connection handed to this thread while it idled; under the pool's lock, which `wake` shares.
        self.assigned: Optional[SerialWorker] = None
        self.wake = threading.Condition(lock)

    def run(self) -> None:
        worker, self.first = self.first, None
        pool = self.pool
        while worker is not None:
            if worker.serve() and not pool.requeue(worker):
                continue  # its turn ended with jobs left, and no other connection waits: go on with it
            pool.adopt_orphans()
            worker = pool.next_worker(self)


class SerialWorker(Worker):
    """A connection's worker: the driver's `Worker` (a queue of `(future, function)` jobs run in order, outcomes
    handed to the loop), run not as a thread of its own but by a thread of the pool whenever its queue has jobs.

    A job with a future is a statement's own job (an SQL call's): when its turn comes it is skipped if its future is
    done already (its await was cancelled, or a cancelled close() failed it: `fail_statements`), and while it runs it
    is `running`, the one statement `interrupt()` may stop. A job without a future always runs to its end: cursor
    creation, settings, and what `run_to_end` queues (transaction steps, the native steps of sync operations, the last
    job), whose futures it settles itself. An outcome nobody waits for is dropped; SystemExit fails its call instead
    of ending the thread; a job without a future does not wake the loop; nothing of a job is kept once it ran; a closed
    loop stops the connection (`on_loop_closed`) instead of printing a traceback. Between jobs it runs a step that
    waits for the connection to be between transactions (`run_between_transactions`).
    """

    def __init__(
        self,
        jobs: "SimpleQueue[Job]",
        loop: asyncio.AbstractEventLoop,
        on_loop_closed: "Optional[weakref.WeakMethod[Callable[[], None]]]",
        pool: WorkerPool,
    ) -> None:
        """The worker of `jobs`, handing outcomes to `loop`; `on_loop_closed` is held weakly so that an unclosed
        connection can still be collected while it idles (None: nothing to stop)."""
        # The driver's Worker types its queue for jobs that always have a future; ours may have none.
        driver_jobs = cast("SimpleQueue[Optional[tuple[asyncio.Future[Any], Callable[[], Any]]]]", jobs)
        super().__init__(driver_jobs, loop)  # pyright: ignore[reportUnknownMemberType]  # (the driver's bare Future)
        if not isinstance(jobs, JobQueue):
            raise TypeError("a SerialWorker serves a JobQueue, whose put_nowait hands it to the pool")
        self.jobs = jobs
        self.on_loop_closed = on_loop_closed
        self.pool = pool
        self.mailbox = mailbox_of(loop)
        # True from the moment the queue has jobs until a thread of the pool has found it empty. Set under
        # `_schedule_lock`; read without it on the fast path (the GIL orders it with the queue's own operations).
        self.scheduled = False
        self._schedule_lock = threading.Lock()
        # When the queue last ran empty (time.monotonic()), and whether calls come back to back (see LINGER_SECONDS).
        self._emptied_at = 0.0
        self._lingers = False
        # The step waiting for the connection to be between transactions, if any.
        self._waiting: Optional[BetweenTransactions] = None
        # The future of the statement running now; None between statements and during jobs without a future. Written
        # on the worker, read by interrupt() on the loop (see there for how the two never miss each other).
        self.running: Optional[asyncio.Future[Any]] = None
        # Set by interrupt() while it decides and interrupts (`_interrupting`, under `_interrupt_lock`), and once it
        # interrupted the statement running (`_interrupted`, cleared by the worker when it has cleaned up after it).
        self._interrupt_lock = threading.Lock()
        self._interrupting = False
        self._interrupted = False
        # Once set (by a cancelled close()), every statement still queued fails with this error instead of running.
        self.failing: Optional[Error] = None
        # Cursors whose statement a fetch left part-read (rows fetched, not its end): the driver keeps such a statement
        # in progress, and an interrupt of the connection ends it too (see `end_part_read`). Kept by the cursors'
        # fetches, on the worker.
        self.part_read: weakref.WeakSet[PartRead] = weakref.WeakSet()
        jobs.worker = self

    def schedule(self) -> None:
        """After a job was queued: hand this worker to a thread of the pool unless one serves it already."""
        with self._schedule_lock:
            if self.scheduled:
                return
            self.scheduled = True
        self._lingers = time.monotonic() - self._emptied_at < BACK_TO_BACK_SECONDS
        self.pool.submit(self)

    def serve(self) -> bool:  # noqa: C901 - one loop, inlined on purpose (see below)
        """On a thread of the pool: run jobs until the queue is empty (False), or for one turn of JOBS_PER_TURN jobs
        while it still has some (True; it stays scheduled)."""
        jobs = self.jobs
        # deliver(), inlined: this loop runs once per job, and a method call here is a measurable part of a job.
        post = self.mailbox.post
        settle: Callable[..., object]
        for _ in range(JOBS_PER_TURN):
            try:
                # A caller awaiting one call after another queues its next job moments after the last outcome: the
                # thread waits a little for it, as a thread of its own would, instead of going back to the pool.
                future, function = jobs.get(True, LINGER_SECONDS) if self._lingers else jobs.get_nowait()
            except Empty:
                self._lingers = False
                if not self._idle_if_empty():
                    continue
                return False
            if future is not None:
                # A statement: `running` before its future is looked at, so that interrupt() cannot miss it.
                self.running = future
                if future.done() or self.failing is not None:
                    self._skip(future)
                    del future, function
                    continue
            try:
                outcome = function()
            except BaseException as error:
                clear_frames(error)
                outcome = error if isinstance(error, Error) else job_error(error)
                settle = set_exception_unless_done if future is not None else _report_unawaited_failure
            else:
                settle = set_result_unless_done
            del function
            if future is not None:
                self.running = None
                if self._interrupting or self._interrupted:
                    self._after_interrupt()
            if future is not None or settle is _report_unawaited_failure:
                try:
                    post(settle, future, outcome)
                except RuntimeError as error:
                    self._undeliverable(error)
            del future, outcome
            waiting = self._waiting
            if waiting is not None and waiting.run_if_between_transactions():
                self._waiting = None
        return True

    def interrupt(self, blocking: Optional[BlockingConnection], statement: Optional["asyncio.Future[Any]"]) -> bool:
        """On the loop: interrupt the statement running now on `blocking` (the driver's `interrupt()`) if it is
        `statement`'s job, or any statement's if `statement` is None; True if it did. Never a job without a future, and
        never a statement that started after this call (the next one waits until this call has returned).

        How the two threads never miss each other: the worker marks a statement `running` before it looks whether the
        statement's future is done, and clears the mark once it returned; then, if `_interrupting` or `_interrupted` is
        set, it takes `_interrupt_lock` (held here for the whole decision) before it goes on. Under the interpreter
        lock these steps are seen in order by both threads, so either this call sees the mark cleared and interrupts
        nothing, or the worker sees the flags and waits for this call, then cleans up after the interrupt
        (`end_part_read`) before its next job. A statement cancelled just as it was about to start counts as running:
        it is interrupted, or skipped, never both run and missed."""
        with self._interrupt_lock:
            self._interrupting = True
            try:
                running = self.running
                if blocking is None or running is None or (statement is not None and running is not statement):
                    return False
                try:
                    blocking.interrupt()
                except Error:
                    return False  # a connection that cannot be used any more: its statement fails by itself
                self._interrupted = True
                return True
            finally:
                self._interrupting = False

    def fail_statements(self, error: Error) -> None:
        """On the loop, from a cancelled close(): every statement still queued fails with `error` instead of running;
        the jobs without a future still run, in order."""
        self.failing = error

    def run_to_end(self, future: "asyncio.Future[Any]", function: Callable[[], Any]) -> None:
        """On the loop: queue `function` as a job that runs whatever happens to its caller (its await cancelled, a
        cancelled close()) and that nothing interrupts: a transaction step, a native step of a sync operation, the
        last job. `future` gets its outcome, if it is still waited for."""
        self.jobs.put_nowait((None, functools.partial(self._run_to_end, future, function)))

    def end_part_read(self) -> None:
        """On the worker, after an interrupt: end every statement that a fetch left part-read. The driver's interrupt
        stops every statement in progress on the connection, and goes on stopping new ones until none is left in
        progress (as sqlite3's does): a part-read cursor would otherwise make the next statements fail too."""
        for cursor in list(self.part_read):
            cursor.end_interrupted()
        self.part_read.clear()

    def deliver(self, settle: Callable[..., object], future: "asyncio.Future[Any]", outcome: Any) -> None:
        """On a thread of the pool: run `settle(future, outcome)` on the loop, or stop the connection if the loop has
        closed."""
        try:
            self.mailbox.post(settle, future, outcome)
        except RuntimeError as error:
            self._undeliverable(error)

    def run_between_transactions(
        self, step: Callable[[], Any], description: str, in_transaction: Callable[[], bool], wait_seconds: float
    ) -> "asyncio.Future[Any]":
        """On the loop: run `step` once `in_transaction()` is False (checked after every job), and settle the returned
        future with its outcome; OperationalError if a transaction stays open for `wait_seconds`."""
        outcome: asyncio.Future[Any] = self._loop.create_future()
        handoff = BetweenTransactions(step, description, in_transaction, wait_seconds, outcome, self)
        self.jobs.put_nowait((None, lambda: self._hold(handoff)))
        self._arm_deadline(handoff)
        return outcome

    def fail_waiting(self) -> None:
        """In the connection's last job: fail a step still waiting between transactions."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.settle(None, ProgrammingError(f"Cannot {waiting.description}: the connection was closed"))

    def _arm_deadline(self, handoff: "BetweenTransactions") -> None:
        # On the loop: at the step's deadline, a job lets the worker look again (and give up if a transaction is
        # still open). A timer that fired early (the loop's clock resolution) arms another one.
        if handoff.step is None:
            return
        expire: Job = (None, lambda: self._expire(handoff))
        timer = self._loop.call_later(handoff.seconds_left(), self.jobs.put_nowait, expire)
        handoff.outcome.add_done_callback(lambda _: timer.cancel())

    def _expire(self, handoff: "BetweenTransactions") -> None:
        if handoff is not self._waiting:
            return
        if handoff.run_if_between_transactions():
            self._waiting = None
        else:
            self.deliver(_call, cast(Any, self._arm_deadline), handoff)

    def _skip(self, future: "asyncio.Future[Any]") -> None:
        # A statement whose await was cancelled before its turn (or that a cancelled close() fails): it does not run.
        self.running = None
        failing = self.failing
        if failing is not None and not future.done():
            self.deliver(set_exception_unless_done, future, failing)
        if self._interrupting or self._interrupted:
            self._after_interrupt()

    def _after_interrupt(self) -> None:
        # A statement ended while interrupt() may have interrupted it: wait for interrupt() to be done, and clean up
        # after the interrupt, if there was one, before the next job.
        with self._interrupt_lock:
            interrupted, self._interrupted = self._interrupted, False
        if interrupted:
            self.end_part_read()

    def _run_to_end(self, future: "asyncio.Future[Any]", function: Callable[[], Any]) -> None:
        settle: Callable[..., object]
        try:
            outcome = function()
        except BaseException as error:
            clear_frames(error)
            outcome = error if isinstance(error, Error) else job_error(error)
            settle = set_exception_unless_done
        else:
            settle = set_result_unless_done
        # This frame outlives the call when the error's traceback holds a frame called from here (as its f_back), and
        # keeps its variables: not the job, which holds the engine and so the replica's files (as serve() does).
        del function
        self.deliver(settle, future, outcome)
        del future, outcome

    def _hold(self, handoff: "BetweenTransactions") -> None:
        # The handed-over step as a job: run it now, or keep it until the transaction ends.
        if not handoff.run_if_between_transactions():
            previous, self._waiting = self._waiting, handoff
            if previous is not None:
                previous.settle(None, ProgrammingError(f"Cannot {previous.description}: another step took its place"))

    def _idle_if_empty(self) -> bool:
        # The queue looked empty: stop being scheduled, unless a job came in meanwhile (False: serve on). The flag is
        # cleared before the second look, so a job queued after that look finds it cleared and schedules us again.
        self._emptied_at = time.monotonic()
        self.scheduled = False
        if self.jobs.empty():
            return True
        with self._schedule_lock:
            if self.scheduled:
                return True  # queued just now, and handed to the pool again by its put_nowait
            self.scheduled = True
        return False

    def _undeliverable(self, error: RuntimeError) -> None:
        # Posting raised: if the loop has closed, nobody is left to hear of any result, so stop.
        if not self._loop.is_closed():
            raise error
        on_loop_closed = self.on_loop_closed() if self.on_loop_closed is not None else None
        if on_loop_closed is not None:
            on_loop_closed()


class PartRead(Protocol):
    """A cursor whose statement a fetch left part-read (`SerialWorker.part_read`)."""

    def end_interrupted(self) -> None:
        """On the worker, after an interrupt of its connection: end the statement (it raises on its next use)."""
        ...


class RunToEndQueue(SimpleQueue[Job]):
    """What a connection's `SyncEngine` queues its native steps on: `put_nowait((future, function))` hands the job to
    the connection's worker with `SerialWorker.run_to_end`, so that a step of a sync operation runs to its end whatever
    happens to the await (neither skipped nor interrupted). It holds no job itself, and nothing reads it."""

    __slots__ = ("worker",)

    # The connection's worker; set right after this queue is made.
    worker: SerialWorker

    def put_nowait(self, item: Job) -> None:
        """Queue `item` on the connection's worker, as a job that runs to its end."""
        future, function = item
        if future is None:
            self.worker.jobs.put_nowait(item)
        else:
            self.worker.run_to_end(future, function)


class BetweenTransactions:
    """A step of a sync operation (apply pulled changes, checkpoint) that runs on the connection's worker only while no
    transaction is open: inside one it fails with "Database is busy". It is settled exactly once: it runs, gives up
    after `wait_seconds`, or fails at close."""

    __slots__ = ("step", "description", "in_transaction", "wait_seconds", "deadline", "outcome", "worker")

    def __init__(
        self,
        step: Callable[[], Any],
        description: str,
        in_transaction: Callable[[], bool],
        wait_seconds: float,
        outcome: "asyncio.Future[Any]",
        worker: SerialWorker,
    ) -> None:
        """A step not run yet; `description` says what it does, in error messages."""
        self.step: Optional[Callable[[], Any]] = step
        self.description = description
        self.in_transaction = in_transaction
        self.wait_seconds = wait_seconds
        # When the worker stops waiting for the open transaction to end (time.monotonic()).
        self.deadline = time.monotonic() + wait_seconds
        self.outcome = outcome
        self.worker = worker

    def run_if_between_transactions(self) -> bool:
        """On the worker: run the step if no transaction is open, or give up if the deadline passed; True once it is
        settled, False while it must wait."""
        if self.step is None:
            return True
        try:
            if self.in_transaction():
                if time.monotonic() < self.deadline:
                    return False
                self.settle(
                    None,
                    OperationalError(
                        f"could not {self.description}: a transaction stayed open on this connection for "
                        f"{self.wait_seconds:g} s; commit or roll back before syncing (nothing was lost: the next "
                        "pull, or checkpoint, does it)"
                    ),
                )
                return True
        except BaseException as error:
            self.settle(None, error)
            return True
        step, self.step = self.step, None  # dropped at once: it holds the pulled changes
        try:
            result = step()
        except BaseException as error:
            clear_frames(error)
            self.settle(None, error if isinstance(error, Error) else job_error(error))
        else:
            self.settle(result, None)
        return True

    def seconds_left(self) -> float:
        """How long the worker may still wait for the transaction to end."""
        return max(0.0, self.deadline - time.monotonic())

    def settle(self, result: Any, error: Optional[BaseException]) -> None:
        """Hand the outcome to the loop (once)."""
        self.step = None
        if error is None:
            self.worker.deliver(set_result_unless_done, self.outcome, result)
        else:
            self.worker.deliver(set_exception_unless_done, self.outcome, error)


def _call(function: Callable[[Any], None], argument: Any) -> None:
    # On the loop, through deliver(): a call made for a thread of the pool.
    function(argument)


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


async def run_blocking(function: Callable[[], _T]) -> _T:
    """Run `function` on a thread of the pool, for blocking work of the running loop that belongs to no connection
    (copy_replica, recover_replica). Cancelling the await does not stop it."""
    loop = asyncio.get_running_loop()
    jobs = JobQueue()
    SerialWorker(jobs, loop, None, pool)
    pool.attach(loop)
    future: asyncio.Future[_T] = loop.create_future()
    future.add_done_callback(lambda _: pool.detach(loop))
    jobs.put_nowait((future, function))
    return await asyncio.shield(future)


# The process's pool: every connection's jobs run on its threads.
pool = WorkerPool()
os.register_at_fork(after_in_child=pool.after_fork)
