"""`async with conn.transaction():` on a connection that tasks share, against a real `tursodb --sync-server`.

The scenario of issue 19: request A inserts, awaits something, then rolls back, while request B inserts and commits
on the same connection. Without blocks taking turns, A's rollback discarded B's committed row. Each test asserts
what is in the replica (and on the server where a push is involved), and bounds every await.
"""

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import turso
from testkit.sync_server import SyncServer
from tests.helpers import AWAIT_SECONDS, bounded, open_replica
from turso.lib_sync_aio import ConnectionSync, Transaction, TransactionState, connect_sync


async def open_notes(replica_path: str, url: str) -> ConnectionSync:
    conn = await open_replica(replica_path, url)
    await bounded(conn.execute("CREATE TABLE IF NOT EXISTS notes(body TEXT)"))
    await bounded(conn.commit())
    return conn


@pytest.fixture
async def conn(sync_server: SyncServer, replica_path: str) -> AsyncIterator[ConnectionSync]:
    """The test's replica, open, with a table notes(body); closed with a bound after the test."""
    connection = await open_notes(replica_path, sync_server.url)
    try:
        yield connection
    finally:
        await bounded(connection.close())


async def bodies(conn: ConnectionSync) -> list[Any]:
    return [row[0] for row in await bounded(conn.execute_fetchall("SELECT body FROM notes ORDER BY rowid"))]


def turns_busy(conn: ConnectionSync) -> bool:
    """The flag every SQL call checks: True only while a transaction() block is open (or about to be)."""
    return bool(vars(conn)["_turns_busy"])


def state_of(block: Transaction) -> TransactionState:
    """The block's state, read afresh (type checkers keep what an earlier assert narrowed it to)."""
    return block.state


def as_dict(cursor: object, row: tuple[Any, ...]) -> dict[str, Any]:
    """A row_factory: the row as {"body": ...}."""
    return {"body": row[0]}


class Boom(Exception):
    """Raised in a block to roll it back."""


async def test_a_rollback_in_one_task_never_undoes_another_tasks_commit(
    sync_server: SyncServer, conn: ConnectionSync
) -> None:
    a_inserted = asyncio.Event()

    async def request_a() -> None:
        with pytest.raises(Boom):
            async with conn.transaction():
                await conn.execute("INSERT INTO notes VALUES ('a, rolled back')")
                a_inserted.set()
                await asyncio.sleep(0.1)  # an await in the middle of the request: B runs meanwhile
                raise Boom

    async def request_b_with_a_block() -> None:
        await a_inserted.wait()
        async with conn.transaction():
            await conn.execute("INSERT INTO notes VALUES ('b, block')")

    async def request_c_plain() -> None:
        await a_inserted.wait()
        await conn.execute("INSERT INTO notes VALUES ('c, plain commit')")
        await conn.commit()

    await bounded(asyncio.gather(request_a(), request_b_with_a_block(), request_c_plain()))
    assert await bodies(conn) == ["b, block", "c, plain commit"]
    await bounded(conn.push())
    assert sorted(str(row[0]) for row in sync_server.execute("SELECT body FROM notes")) == [
        "b, block",
        "c, plain commit",
    ]


async def test_statements_of_other_tasks_wait_for_the_open_block_and_then_run_in_the_order_they_came(
    conn: ConnectionSync
) -> None:
    order: list[str] = []
    inside = asyncio.Event()
    release = asyncio.Event()

    async def owner() -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO notes VALUES ('owner')")
            inside.set()
            await release.wait()
            order.append("owner ends its block")

    async def reader(name: str, after: float) -> None:
        await inside.wait()
        await asyncio.sleep(after)
        seen = await conn.execute_fetchall("SELECT count(*) FROM notes")
        order.append(f"{name} read {seen[0][0]}")

    async def writer() -> None:
        await inside.wait()
        await asyncio.sleep(0.01)
        async with conn.transaction():
            await conn.execute("INSERT INTO notes VALUES ('writer')")
            order.append("writer in its block")

    coroutines = (owner(), reader("first", 0), writer(), reader("last", 0.02))
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    await bounded(inside.wait())
    for _ in range(20):
        await asyncio.sleep(0.005)
    # Nothing of the others ran while the owner's block was open.
    assert order == []
    release.set()
    await bounded(asyncio.gather(*tasks))
    # The first reader came before the writer's block: it sees the owner's commit and not the writer's row; the
    # last reader came after the writer's block and waits for it.
    assert order == ["owner ends its block", "first read 1", "writer in its block", "last read 2"]


async def test_a_block_begun_by_a_task_already_running_when_a_block_ends_waits_for_the_statements_let_go_first(
    conn: ConnectionSync
) -> None:
    inside = asyncio.Event()
    ending = asyncio.Event()
    outcome: list[str] = []

    async def owner() -> None:
        async with conn.transaction():
            inside.set()
            await asyncio.sleep(0.05)
            # Wakes the task below now, before the block's end lets the waiting statement go: it runs first.
            ending.set()

    async def waiting_writer() -> None:
        await inside.wait()
        await conn.execute("INSERT INTO notes VALUES ('plain, waited for the block')")
        await conn.commit()

    async def rolled_back_block() -> None:
        await ending.wait()
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO notes VALUES ('rolled back')")
                raise Boom
        except Boom:
            outcome.append("rolled back")
        except turso.ProgrammingError:
            # Its BEGIN came after the waiting writer's INSERT, whose transaction is still open.
            outcome.append("refused")

    await bounded(asyncio.gather(owner(), waiting_writer(), rolled_back_block()))
    # The block that began in between never held the waiting writer's row: its rollback could not undo it.
    assert await bodies(conn) == ["plain, waited for the block"]
    assert outcome in (["rolled back"], ["refused"])


async def test_blocks_of_several_tasks_take_turns_and_every_committed_row_reaches_the_server_once(
    sync_server: SyncServer, conn: ConnectionSync
) -> None:
    rolled_back: set[str] = set()
    pick = random.Random(19)

    async def request(number: int) -> None:
        body = f"note {number}"
        fails = pick.random() < 0.3
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO notes VALUES (?)", (body,))
                await asyncio.sleep(pick.random() * 0.005)
                await conn.execute("INSERT INTO notes VALUES (?)", (body + " twin",))
                if fails:
                    raise Boom
        except Boom:
            rolled_back.add(body)

    await bounded(asyncio.gather(*(request(number) for number in range(40))))
    committed = {f"note {number}" for number in range(40)} - rolled_back
    assert rolled_back and committed
    expected = sorted([*committed, *(body + " twin" for body in committed)])
    assert sorted(await bodies(conn)) == expected
    await bounded(conn.push())
    assert sorted(str(row[0]) for row in sync_server.execute("SELECT body FROM notes")) == expected


async def test_a_nested_block_is_a_savepoint_that_rolls_back_alone(conn: ConnectionSync) -> None:
    async with conn.transaction() as outer:
        assert outer.state is TransactionState.ACTIVE and outer.savepoint_name is None
        await conn.execute("INSERT INTO notes VALUES ('outer')")
        inner = conn.transaction()
        with pytest.raises(Boom):
            async with inner:
                assert inner.savepoint_name is not None and inner.is_savepoint
                await conn.execute("INSERT INTO notes VALUES ('inner, rolled back')")
                raise Boom
        assert inner.state is TransactionState.ROLLED_BACK
        async with conn.transaction() as kept:
            await conn.execute("INSERT INTO notes VALUES ('inner, kept')")
        assert kept.state is TransactionState.COMMITTED
        assert await bodies(conn) == ["outer", "inner, kept"]
    assert state_of(outer) is TransactionState.COMMITTED
    assert await bodies(conn) == ["outer", "inner, kept"]
    failed = conn.transaction()
    with pytest.raises(Boom):
        async with failed:
            async with conn.transaction():
                await conn.execute("INSERT INTO notes VALUES ('gone with its outer block')")
            raise Boom
    assert failed.state is TransactionState.ROLLED_BACK
    assert await bodies(conn) == ["outer", "inner, kept"]


async def test_tasks_started_inside_a_block_run_inside_it(conn: ConnectionSync) -> None:
    with pytest.raises(Boom):
        async with conn.transaction():
            # gather and wait_for run their coroutines in new tasks, which copy the block's context.
            await bounded(
                asyncio.gather(*(conn.execute("INSERT INTO notes VALUES (?)", (f"child {n}",)) for n in range(3)))
            )
            await asyncio.wait_for(conn.execute("INSERT INTO notes VALUES ('through wait_for')"), AWAIT_SECONDS)
            assert len(await bodies(conn)) == 4
            raise Boom
    assert await bodies(conn) == []


async def test_a_block_cancelled_inside_rolls_back_and_the_waiters_go_on(conn: ConnectionSync) -> None:
    inside = asyncio.Event()
    blocks: list[Transaction] = []

    async def cancelled_request() -> None:
        async with conn.transaction() as block:
            blocks.append(block)
            await conn.execute("INSERT INTO notes VALUES ('cancelled')")
            inside.set()
            await asyncio.sleep(AWAIT_SECONDS)

    task = asyncio.create_task(cancelled_request())
    await bounded(inside.wait())
    waiting = asyncio.create_task(conn.execute_fetchall("SELECT count(*) FROM notes"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(task)
    assert blocks[0].state is TransactionState.ROLLED_BACK
    assert (await bounded(waiting)) == [(0,)]
    async with conn.transaction():
        await conn.execute("INSERT INTO notes VALUES ('after')")
    assert await bodies(conn) == ["after"]


async def test_a_task_cancelled_while_it_waits_for_its_turn_leaves_nothing_behind(conn: ConnectionSync) -> None:
    inside = asyncio.Event()
    release = asyncio.Event()

    async def owner() -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO notes VALUES ('owner')")
            inside.set()
            await release.wait()

    async def waiting_block() -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO notes VALUES ('never')")

    owning = asyncio.create_task(owner())
    await bounded(inside.wait())
    waiters = [
        asyncio.create_task(waiting_block()),
        asyncio.create_task(conn.execute("INSERT INTO notes VALUES ('never either')")),
    ]
    last = asyncio.create_task(conn.execute_fetchall("SELECT body FROM notes ORDER BY rowid"))
    await asyncio.sleep(0.01)
    for waiter in waiters:
        waiter.cancel()
    release.set()
    await bounded(owning)
    assert await bounded(last) == [("owner",)]
    for waiter in waiters:
        with pytest.raises(asyncio.CancelledError):
            await waiter
    assert await bodies(conn) == ["owner"]
    assert not turns_busy(conn)  # the common path is back to its one flag check


async def test_commit_or_rollback_inside_a_block_raises_and_the_block_goes_on(conn: ConnectionSync) -> None:
    async with conn.transaction() as block:
        await conn.execute("INSERT INTO notes VALUES ('kept')")
        with pytest.raises(turso.ProgrammingError, match=r"commit\(\) inside a transaction\(\) block"):
            await conn.commit()
        with pytest.raises(turso.ProgrammingError, match=r"rollback\(\) inside a transaction\(\) block"):
            await conn.rollback()
    assert block.state is TransactionState.COMMITTED
    assert await bodies(conn) == ["kept"]


async def test_entering_a_block_twice_or_leaving_it_twice_raises_a_clear_error(conn: ConnectionSync) -> None:
    block = conn.transaction()
    assert block.state is TransactionState.NEW
    async with block:
        with pytest.raises(turso.ProgrammingError, match="already entered"):
            await block.__aenter__()
    with pytest.raises(turso.ProgrammingError, match="already entered"):
        await block.__aenter__()
    with pytest.raises(turso.ProgrammingError, match="Cannot leave"):
        await block.__aexit__(None, None, None)
    async with conn.transaction():
        await conn.execute("INSERT INTO notes VALUES ('next block works')")
    assert await bodies(conn) == ["next block works"]


async def test_a_block_cannot_begin_inside_a_transaction_opened_by_a_plain_write_and_leaves_nothing_behind(
    conn: ConnectionSync
) -> None:
    await conn.execute("INSERT INTO notes VALUES ('plain, not committed yet')")
    block = conn.transaction()
    with pytest.raises(turso.ProgrammingError, match="opened outside any transaction"):
        async with block:
            pass
    assert block.state is TransactionState.FAILED
    assert not turns_busy(conn)
    await bounded(conn.commit())
    async with conn.transaction():
        await conn.execute("INSERT INTO notes VALUES ('block')")
    assert await bodies(conn) == ["plain, not committed yet", "block"]


async def test_a_transaction_ended_inside_its_block_is_reported_at_the_end_of_the_block(conn: ConnectionSync) -> None:
    block = conn.transaction()
    with pytest.raises(turso.ProgrammingError, match="ended inside its transaction"):
        async with block:
            await conn.execute("INSERT INTO notes VALUES ('committed by the statement')")
            await conn.execute("COMMIT")
    assert block.state is TransactionState.FAILED
    assert await bodies(conn) == ["committed by the statement"]


async def test_cursor_creation_and_settings_from_another_task_wait_for_the_block(conn: ConnectionSync) -> None:
    await conn.execute("INSERT INTO notes VALUES ('row')")
    await conn.commit()
    inside = asyncio.Event()
    changed = asyncio.Event()

    async def owner() -> list[Any]:
        async with conn.transaction():
            inside.set()
            await changed.wait()
            # The other task's row_factory is held back until this block has ended.
            return await conn.execute_fetchall("SELECT body FROM notes")

    async def other() -> list[Any]:
        await inside.wait()
        conn.row_factory = as_dict
        cursor = conn.cursor()
        changed.set()
        await cursor.execute("SELECT body FROM notes")
        return await cursor.fetchall()

    owned, others = await bounded(asyncio.gather(owner(), other()))
    assert owned == [("row",)]
    assert others == [{"body": "row"}]


async def test_pulled_changes_are_applied_between_blocks(sync_server: SyncServer, tmp_path: Path) -> None:
    writer = await open_notes(str(tmp_path / "writer.db"), sync_server.url)
    await bounded(writer.push())
    conn = await open_notes(str(tmp_path / "reader.db"), sync_server.url)
    try:
        await writer.execute("INSERT INTO notes VALUES ('from the other replica')")
        await writer.commit()
        await bounded(writer.push())
        release = asyncio.Event()
        inside = asyncio.Event()

        async def owner() -> list[Any]:
            async with conn.transaction():
                await conn.execute("INSERT INTO notes VALUES ('local')")
                inside.set()
                await release.wait()
                return await bodies(conn)

        owning = asyncio.create_task(owner())
        await bounded(inside.wait())
        pulling = asyncio.create_task(conn.pull())
        await asyncio.sleep(0.2)
        assert not pulling.done()  # the apply waits for the block to end
        release.set()
        assert await bounded(owning) == ["local"]
        assert await bounded(pulling) is True
        assert sorted(await bodies(conn)) == ["from the other replica", "local"]
    finally:
        await bounded(conn.close())
        await bounded(writer.close())


async def test_close_while_a_block_is_open_lets_every_waiter_raise_and_hangs_nothing(
    sync_server: SyncServer, replica_path: str
) -> None:
    conn = await open_notes(replica_path, sync_server.url)
    inside = asyncio.Event()

    async def owner() -> None:
        async with conn.transaction():
            await conn.execute("INSERT INTO notes VALUES ('lost with the close')")
            inside.set()
            await asyncio.sleep(0.1)
            await conn.execute("INSERT INTO notes VALUES ('after close')")

    owning = asyncio.create_task(owner())
    await bounded(inside.wait())
    waiters = [
        asyncio.create_task(conn.execute_fetchall("SELECT 1")),
        asyncio.create_task(conn.transaction().__aenter__()),
    ]
    await asyncio.sleep(0.01)
    await bounded(conn.close())
    for task in [owning, *waiters]:
        with pytest.raises(turso.ProgrammingError):
            await bounded(task)
    with pytest.raises(turso.ProgrammingError):
        conn.transaction()
    async with await bounded(connect_sync(replica_path, sync_server.url)) as again:
        assert await bodies(again) == []


async def test_transaction_on_an_unopened_connection_raises(replica_path: str, sync_server: SyncServer) -> None:
    conn = connect_sync(replica_path, sync_server.url)
    with pytest.raises(turso.ProgrammingError, match="not open"):
        conn.transaction()


class RandomRequests:
    """Requests on one shared connection, drawn from a seed: blocks of 1 to 3 inserts that may nest (savepoints, two
    levels deep), pause, or raise to roll back; and plain reads. It remembers each block and its rows."""

    def __init__(self, conn: ConnectionSync, seed: int) -> None:
        self.conn = conn
        self.pick = random.Random(seed)
        # Each block's Transaction, rows, and the block it is nested in (None: outermost).
        self.blocks: list[Transaction] = []
        self.rows_of: list[list[str]] = []
        self.parent_of: list[int | None] = []

    async def block(self, depth: int, parent: int | None) -> None:
        number = len(self.blocks)
        transaction = self.conn.transaction()
        self.blocks.append(transaction)
        self.rows_of.append([])
        self.parent_of.append(parent)
        async with transaction:
            for _ in range(self.pick.randrange(1, 4)):
                body = f"row {number}.{len(self.rows_of[number])}"
                await self.conn.execute("INSERT INTO notes VALUES (?)", (body,))
                self.rows_of[number].append(body)
                if self.pick.random() < 0.3:
                    await asyncio.sleep(self.pick.random() * 0.003)
                if depth < 2 and self.pick.random() < 0.3:
                    with contextlib.suppress(Boom):
                        await self.block(depth + 1, number)
            if self.pick.random() < 0.3:
                raise Boom

    async def reader(self) -> None:
        for _ in range(self.pick.randrange(1, 5)):
            await self.conn.execute_fetchall("SELECT count(*) FROM notes")
            await asyncio.sleep(self.pick.random() * 0.002)

    async def request(self) -> None:
        await asyncio.sleep(self.pick.random() * 0.01)
        with contextlib.suppress(Boom):
            await (self.block(0, None) if self.pick.random() < 0.7 else self.reader())

    def kept(self, number: int) -> bool:
        """Whether the block's rows must be in the replica: it and every block around it committed."""
        parent = self.parent_of[number]
        return self.blocks[number].state is TransactionState.COMMITTED and (parent is None or self.kept(parent))

    def expected_rows(self) -> list[str]:
        return sorted(body for number, rows in enumerate(self.rows_of) if self.kept(number) for body in rows)


@pytest.mark.parametrize("seed", range(4))
async def test_random_blocks_nesting_reads_and_cancellations_keep_exactly_the_committed_rows(
    sync_server: SyncServer, replica_path: str, seed: int
) -> None:
    conn = await open_notes(replica_path, sync_server.url)
    requests = RandomRequests(conn, seed)
    try:
        tasks = [asyncio.create_task(requests.request()) for _ in range(30)]
        for _ in range(6):
            await asyncio.sleep(requests.pick.random() * 0.01)
            requests.pick.choice(tasks).cancel()
        await bounded(asyncio.gather(*tasks, return_exceptions=True))
        # Every block ended one way or the other (the COMMIT or ROLLBACK of a cancelled block's end still ran).
        await bounded(conn.execute_fetchall("SELECT 1"))
        ended = (TransactionState.COMMITTED, TransactionState.ROLLED_BACK, TransactionState.FAILED)
        assert all(block.state in ended for block in requests.blocks), [block.state for block in requests.blocks]
        assert sorted(str(body) for body in await bodies(conn)) == requests.expected_rows()
        assert not turns_busy(conn)
    finally:
        await bounded(conn.close())
