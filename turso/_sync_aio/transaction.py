"""`async with conn.transaction():` on a connection that several tasks share, and the turns the blocks take.

`TransactionTurns` keeps the rules for one connection, `Transaction` is a block; docs/service.md ("The order,
exactly") states the rules. With no block open, a statement costs one flag check more.
"""

import asyncio
import contextvars
import enum
import itertools
import logging
from collections import deque
from dataclasses import dataclass
from queue import SimpleQueue
from types import TracebackType
from typing import Any, Callable, Optional

from ..lib import Connection as BlockingConnection
from ..lib import Error, ProgrammingError

# Where a rollback that failed while the block's own exception propagates is reported (the block's exception wins).
logger = logging.getLogger("turso.lib_sync_aio")

# A job for the connection's worker: the future that awaits its outcome (None when nobody awaits it) and the
# function to run.
Job = tuple[Optional["asyncio.Future[Any]"], Callable[[], Any]]

# Savepoint names are unique per process, so that a name never meets one of an enclosing block.
_savepoint_numbers = itertools.count(1)


class TransactionState(enum.Enum):
    """Where a `Transaction` is in its life; read it from `Transaction.state`."""

    # Made by conn.transaction(), not entered yet.
    NEW = "new"
    # Entered: its BEGIN (or SAVEPOINT) ran, and the block runs.
    ACTIVE = "active"
    # The block ended without an exception and its COMMIT (or RELEASE) ran.
    COMMITTED = "committed"
    # The block raised (or was cancelled) and its ROLLBACK (or ROLLBACK TO) ran.
    ROLLED_BACK = "rolled_back"
    # Its BEGIN, COMMIT or ROLLBACK failed, the connection closed, or the transaction was ended inside the block.
    FAILED = "failed"


@dataclass(frozen=True)
class TransactionHost:
    """What a `Transaction` reaches of its connection; `turso.lib_sync_aio.ConnectionSync.transaction()` makes one per
    block (not kept on the connection, so that the connection holds no reference to itself)."""

    # The connection's turns (one per connection).
    turns: "TransactionTurns"
    # The event loop the connection belongs to.
    loop: asyncio.AbstractEventLoop
    # Raises `turso.ProgrammingError` if the connection is not open, or is used from another event loop.
    check_usable: Callable[[], None]
    # Queues `step(blocking connection)` on the connection's worker now, past the turns; fails the future once it
    # cannot.
    queue: Callable[[Optional["asyncio.Future[Any]"], Callable[[BlockingConnection], Any]], None]
    # Tells the connection that `turns.busy` may have changed (its statements check that flag).
    turns_changed: Callable[[], None]


class _Waiter:
    """A call waiting for its context's turn: a statement (`future` settles when it may go), a job or an action
    (`action` runs when its turn comes), or a block waiting to begin (`opens`, with `future`)."""

    __slots__ = ("token", "future", "action", "opens")

    def __init__(
        self,
        token: Optional["Transaction"],
        future: Optional["asyncio.Future[None]"] = None,
        action: Optional[Callable[[], None]] = None,
        opens: Optional["Transaction"] = None,
    ) -> None:
        self.token, self.future, self.action, self.opens = token, future, action, opens


class TransactionTurns:
    """Which context's statements may run on one connection now, and who waits: the rules are in the module docstring.

    One per connection, made with it. It holds no reference to the connection, only to its queue of jobs (for the
    jobs it holds back), so that an unclosed connection can still be garbage collected.
    """

    def __init__(self, jobs: "SimpleQueue[Job]") -> None:
        """Turns for the connection whose worker takes `jobs`."""
        self._jobs = jobs
        # The innermost open block, whose context's statements run now; None when no block is open.
        self.innermost: Optional[Transaction] = None
        self._waiters: deque[_Waiter] = deque()
        # Statements let go by a block's end whose tasks have not resumed yet (they queue their job when they do): no
        # block may begin before they have, or their job would run inside it.
        self._passes: set[asyncio.Future[None]] = set()
        # Set while the waiters are being handed their turns (an action run then may end a block: hand on again).
        self._handing = False
        self._hand_again = False
        self._closed = False

    @property
    def busy(self) -> bool:
        """True while a block is open (or is about to be): statements must then ask for their turn."""
        return self.innermost is not None or bool(self._waiters) or bool(self._passes)

    def caller(self) -> Optional["Transaction"]:
        """The innermost open block of this connection that the running context entered (None: it entered none)."""
        entered = _ENTERED.get()
        while entered is not None and entered.turns is not self:
            entered = entered.enclosing
        return _open_block(entered)

    async def wait_turn(self) -> None:
        """For a statement: return once the running context may queue it (at once when it is its turn)."""
        token = self.caller()
        if token is self.innermost or self._closed:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(token, future=future))
        try:
            # Cancelled while waiting: the future is cancelled with the await, and handing on skips it.
            await future
        finally:
            # From here the caller queues its job without awaiting anything, before any block can begin.
            self._use_pass(future)

    def defer(self, job: Job) -> bool:
        """For a job queued without an await (cursor creation, a property setter): hold it back until the running
        context's turn and return True, or return False if it is that context's turn now (queue it yourself)."""
        token = self.caller()
        if token is self.innermost or self._closed:
            return False
        jobs = self._jobs
        self._waiters.append(_Waiter(token, action=lambda: jobs.put_nowait(job)))
        return True

    def refuse_in_block(self, operation: str) -> None:
        """Raise ProgrammingError if the running context is inside one of this connection's blocks."""
        block = self.caller()
        if block is not None:
            raise ProgrammingError(
                f"Cannot {operation}() inside a transaction() block: the block commits when it ends, and rolls back "
                f"if it raises (raise an exception to roll it back){_nesting(block)}"
            )

    async def begin_turn(self, block: "Transaction") -> None:
        """For a block being entered: make it the innermost, at once or once the blocks before it have ended."""
        parent = self.caller()
        if self._closed:
            raise ProgrammingError(_CLOSED_BEFORE_BEGIN)
        if parent is self.innermost and not self._passes:
            self._open(block, parent)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(parent, future=future, opens=block))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Handed the turn, then cancelled before it could begin: hand it on.
                self.end_turn(block)
            raise

    def when_turn(self, block: "Transaction", action: Callable[[], None]) -> None:
        """Run `action` (on the loop) once it is `block`'s context's turn: now if it is, else when the blocks that
        `block`'s context nested in it from other tasks have ended."""
        if block is self.innermost or self._closed:
            action()
            return
        self._waiters.append(_Waiter(block, action=action))

    def end_turn(self, block: "Transaction") -> None:
        """`block` has ended (its COMMIT or ROLLBACK is queued): its enclosing block, or nobody, has the turn now."""
        block.ended = True
        if self.innermost is block:
            self.innermost = block.parent
        self._hand_on()

    def close(self) -> None:
        """The connection is closing: let every waiter go (statements then raise that it is closed)."""
        self._closed = True
        self._passes.clear()
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if waiter.action is not None:
                waiter.action()
            elif waiter.future is not None and not waiter.future.done():
                if waiter.opens is not None:
                    waiter.future.set_exception(ProgrammingError(_CLOSED_BEFORE_BEGIN))
                else:
                    waiter.future.set_result(None)

    def _use_pass(self, future: "asyncio.Future[None]") -> None:
        # A statement let go by a block's end has resumed (or was cancelled): once none is left, blocks may begin.
        if future in self._passes:
            self._passes.discard(future)
            if not self._passes and self._waiters:
                self._hand_on()

    def _open(self, block: "Transaction", parent: Optional["Transaction"]) -> None:
        block.parent = parent
        self.innermost = block

    def _hand_on(self) -> None:
        # Let go the waiters whose turn it is now, in order, up to the first block waiting to begin.
        if self._handing:
            self._hand_again = True
            return
        self._handing = True
        try:
            self._hand_again = True
            while self._hand_again:
                self._hand_again = False
                self._hand_on_once()
        finally:
            self._handing = False

    def _hand_on_once(self) -> None:
        waiters = self._waiters
        kept: deque[_Waiter] = deque()
        while waiters:
            waiter = waiters.popleft()
            future = waiter.future
            if future is not None and future.done():
                continue  # cancelled while it waited
            if _open_block(waiter.token) is not self.innermost:
                kept.append(waiter)
                continue
            if waiter.opens is not None and future is not None:
                # Statements let go before (now or by an earlier end) resume before this block does: the loop wakes
                # tasks in the order their futures were settled. So their jobs are queued before its BEGIN.
                self._open(waiter.opens, _open_block(waiter.token))
                future.set_result(None)
                kept.extend(waiters)
                waiters.clear()
                break
            if waiter.action is not None:
                waiter.action()
            elif future is not None:
                future.set_result(None)
                self._passes.add(future)
        # Waiters added by an action above went into `waiters` and were seen; any added from now on go to `kept`.
        kept.extend(waiters)
        self._waiters = kept


class Transaction:
    """One `async with conn.transaction():` block: BEGIN on entry; COMMIT at the end, or ROLLBACK if the block raises
    (also when it is cancelled). Nested in a block of the same context, it is a SAVEPOINT instead.

    Made by `ConnectionSync.transaction()`; enter it once. While it is open, other tasks' statements on the
    connection wait for it to end (see `turso._sync_aio.transaction` for the exact order). Inside it, `commit()` and
    `rollback()` raise `turso.ProgrammingError`: leave the block to commit, raise to roll back. The block's end
    raises what COMMIT raised (the transaction is then rolled back); a ROLLBACK that fails while the block's own
    exception propagates is logged, and the block's exception goes on.
    """

    __slots__ = (
        "_host",
        "turns",
        "state",
        "savepoint_name",
        "parent",
        "enclosing",
        "ended",
        "_entered",
        "_began",
        "_context_token",
    )

    def __init__(self, host: TransactionHost) -> None:
        """A block on `host`'s connection, not entered yet; prefer `conn.transaction()` to calling this."""
        self._host = host
        # The connection's turns.
        self.turns: TransactionTurns = host.turns
        # Where the block is in its life.
        self.state = TransactionState.NEW
        # The SAVEPOINT's name for a nested block, None for an outermost one (set on entry).
        self.savepoint_name: Optional[str] = None
        # The block of this connection it is nested in (None: outermost), set when it takes its turn.
        self.parent: Optional[Transaction] = None
        # What the entering context had entered before (a block of any connection), to find its own blocks.
        self.enclosing: Optional[Transaction] = None
        # True once it no longer has the turn (its end is queued, or it failed to begin).
        self.ended = False
        self._entered = False
        # Set on the worker once its BEGIN (or SAVEPOINT) ran.
        self._began = False
        self._context_token: Optional[contextvars.Token[Optional[Transaction]]] = None

    async def __aenter__(self) -> "Transaction":
        """Take the turn (waiting for other tasks' blocks to end), then BEGIN (or SAVEPOINT); returns this block."""
        if self._entered:
            raise ProgrammingError(
                f"This transaction() block was already entered (it is {self.state.value}); call conn.transaction() "
                "again for a new one"
            )
        self._entered = True
        host = self._host
        try:
            host.check_usable()
        except BaseException:
            self.state = TransactionState.FAILED
            raise
        try:
            await self.turns.begin_turn(self)
        except BaseException:
            self.state = TransactionState.FAILED
            host.turns_changed()
            raise
        host.turns_changed()
        if self.parent is not None:
            self.savepoint_name = f"turso_sync_aio_{next(_savepoint_numbers)}"
        began: asyncio.Future[None] = host.loop.create_future()
        host.queue(began, self._begin_step)
        try:
            await began
        except BaseException:
            self.state = TransactionState.FAILED
            if not began.done() or began.cancelled():
                # Cancelled while the BEGIN was queued: it still runs, so undo it right after (in the same queue).
                host.queue(None, self._undo_begin_step)
            self._end_turn()
            raise
        self.state = TransactionState.ACTIVE
        self.enclosing = _ENTERED.get()
        self._context_token = _ENTERED.set(self)
        return self

    async def __aexit__(
        self,
        exc_type: Optional[type[BaseException]] = None,
        exc_value: Optional[BaseException] = None,
        traceback: Optional[TracebackType] = None,
    ) -> None:
        """COMMIT (or RELEASE) if the block ended normally, ROLLBACK (or ROLLBACK TO) if it raised; hand the turn on.

        Cancelling this await does not stop the COMMIT or ROLLBACK: it is queued already and still runs.
        """
        if self.state is not TransactionState.ACTIVE or self.ended:
            raise ProgrammingError(f"Cannot leave a transaction() block that is {self.state.value}")
        self._leave_context()
        host = self._host
        commit = exc_type is None
        outcome: asyncio.Future[None] = host.loop.create_future()
        outcome.add_done_callback(self._record_outcome_of(commit))
        step = self._commit_step if commit else self._rollback_step

        def queue_end() -> None:
            host.queue(outcome, step)
            self._end_turn()

        self.turns.when_turn(self, queue_end)
        try:
            await asyncio.shield(outcome)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if commit:
                raise
            logger.warning("transaction() block: the rollback failed (%s); the block's exception goes on", error)

    @property
    def is_savepoint(self) -> bool:
        """True for a block nested in another block of the same context (a SAVEPOINT)."""
        return self.savepoint_name is not None

    def __repr__(self) -> str:
        kind = f"savepoint {self.savepoint_name}" if self.savepoint_name is not None else "transaction"
        return f"<turso.lib_sync_aio.Transaction {kind} ({self.state.value}) at {id(self):#x}>"

    # --- on the loop --------------------------------------------------------------------------------------------

    def _end_turn(self) -> None:
        self.turns.end_turn(self)
        self._host.turns_changed()

    def _leave_context(self) -> None:
        # The entering context stops being inside the block (its statements then wait like anyone's, if a turn is
        # still someone else's). A block left from another context than it was entered in resets what it can.
        token, self._context_token = self._context_token, None
        if token is None:
            return
        try:
            _ENTERED.reset(token)
        except ValueError:
            _ENTERED.set(self.enclosing)

    def _record_outcome_of(self, commit: bool) -> Callable[["asyncio.Future[None]"], None]:
        def record(outcome: "asyncio.Future[None]") -> None:
            if outcome.cancelled() or outcome.exception() is not None:
                self.state = TransactionState.FAILED
            else:
                self.state = TransactionState.COMMITTED if commit else TransactionState.ROLLED_BACK

        return record

    # --- on the connection's worker -------------------------------------------------------------------------------

    def _begin_step(self, blocking: BlockingConnection) -> None:
        name = self.savepoint_name
        if name is not None:
            _execute(blocking, f"SAVEPOINT {name}")
        else:
            if blocking.in_transaction:
                raise ProgrammingError(_ALREADY_IN_TRANSACTION if blocking.autocommit is not False else _AUTOCOMMIT_OFF)
            level = blocking.isolation_level
            _execute(blocking, f"BEGIN {level}" if level and level.upper() in _BEGIN_LEVELS else "BEGIN")
        self._began = True

    def _undo_begin_step(self, blocking: BlockingConnection) -> None:
        if not self._began:
            return
        name = self.savepoint_name
        if name is not None:
            _execute(blocking, f"ROLLBACK TO {name}")
            _execute(blocking, f"RELEASE {name}")
        elif blocking.in_transaction:
            _execute(blocking, "ROLLBACK")

    def _commit_step(self, blocking: BlockingConnection) -> None:
        name = self.savepoint_name
        if name is not None:
            try:
                _execute(blocking, f"RELEASE {name}")
            except Error as error:
                raise ProgrammingError(_ended_inside(f"savepoint {name}")) from error
            return
        if not blocking.in_transaction:
            raise ProgrammingError(_ended_inside("transaction"))
        try:
            _execute(blocking, "COMMIT")
        except BaseException:
            # Leave the connection out of the transaction for whoever goes next.
            if blocking.in_transaction:
                try:
                    _execute(blocking, "ROLLBACK")
                except Error:
                    pass
            raise

    def _rollback_step(self, blocking: BlockingConnection) -> None:
        name = self.savepoint_name
        if name is not None:
            try:
                _execute(blocking, f"ROLLBACK TO {name}")
                _execute(blocking, f"RELEASE {name}")
            except Error as error:
                raise ProgrammingError(_ended_inside(f"savepoint {name}")) from error
            return
        if not blocking.in_transaction:
            raise ProgrammingError(_ended_inside("transaction"))
        _execute(blocking, "ROLLBACK")


# The blocks the running context has entered: the innermost, which links to the ones before it (`enclosing`).
_ENTERED: contextvars.ContextVar[Optional[Transaction]] = contextvars.ContextVar(
    "turso_sync_aio_transaction", default=None
)

# isolation_level values that name a BEGIN mode.
_BEGIN_LEVELS = ("DEFERRED", "IMMEDIATE", "EXCLUSIVE")

_CLOSED_BEFORE_BEGIN = "Cannot begin a transaction() block: the connection was closed"
_ALREADY_IN_TRANSACTION = (
    "Cannot begin a transaction() block: a transaction opened outside any transaction() block is still open on this "
    "connection (an INSERT, UPDATE or DELETE run with execute() and not committed yet, or an explicit BEGIN). "
    "Commit or roll it back first; on a connection that tasks share, make every write in a transaction() block"
)
_AUTOCOMMIT_OFF = (
    "Cannot begin a transaction() block with autocommit=False: that mode always keeps a transaction open. Use the "
    "default autocommit ('LEGACY') or True"
)


def _ended_inside(what: str) -> str:
    return (
        f"the {what} was ended inside its transaction() block (by a COMMIT, ROLLBACK or RELEASE statement, or by "
        "executescript(), which commits first); the block's end had nothing left to commit or roll back"
    )


def _nesting(block: Transaction) -> str:
    # A few words for error messages: the savepoint, if the block is one.
    return f" (savepoint {block.savepoint_name})" if block.savepoint_name is not None else ""


def _open_block(block: Optional[Transaction]) -> Optional[Transaction]:
    # A block that has ended stands for the nearest enclosing one still open (a task started inside a block may
    # outlive it).
    while block is not None and block.ended:
        block = block.parent
    return block


def _execute(blocking: BlockingConnection, sql: str) -> None:
    cursor = blocking.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()
