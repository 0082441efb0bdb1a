"""Misuse that both checkers must reject (checked, never run).

Each line carries the precise ignore of each checker: `# type: ignore[code]` for mypy and
`# pyright: ignore[rule]` for pyright. mypy runs with warn_unused_ignores and pyright with
reportUnnecessaryTypeIgnoreComment (and enableTypeIgnoreComments off, so pyright reads only its own comments): a
line that stopped being exactly that error for either checker fails `make typecheck`.
"""

from typing import TYPE_CHECKING

from typing_extensions import assert_type

import turso.aio.sync
import turso.lib_aio
import turso.lib_sync
from turso.background_sync_aio import BackgroundSync, BackgroundSyncStatus
from turso.lib_sync_aio import ConnectionSync, ReplicaPool, SyncStats, connect_sync

if TYPE_CHECKING:
    from turso.lib_sync_aio import AsyncSyncOperations


def needs_operations(replica: "AsyncSyncOperations") -> None: ...


def wrong_arguments() -> None:
    # A path that is not a str, through both entry points.
    connect_sync(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    turso.aio.sync.connect(b"app.db")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # No path at all.
    connect_sync()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    # A misspelt option, through both entry points.
    connect_sync("app.db", auth_tokn="secret")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    turso.aio.sync.connect("app.db", auth_tokn="secret")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    # A keyword-only option (auth_token) passed by position.
    connect_sync("app.db", "http://127.0.0.1:8080", "secret")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    # Options of the wrong type.
    connect_sync("app.db", long_poll_timeout_ms="1s")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    connect_sync("app.db", remote_url=8080)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    connect_sync("app.db", bootstrap_if_empty=None)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def wrong_results(conn: ConnectionSync) -> None:
    # push() and checkpoint() return nothing.
    pushed: int = await conn.push()  # type: ignore[func-returns-value, assignment]  # pyright: ignore[reportAssignmentType]
    checkpointed: int = await conn.checkpoint()  # type: ignore[func-returns-value, assignment]  # pyright: ignore[reportAssignmentType]
    # pull() gives a bool, not a str.
    changed: str = await conn.pull()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    # assert_type is enforced by both checkers: pull() is not an int.
    assert_type(await conn.pull(), int)  # type: ignore[assert-type]  # pyright: ignore[reportAssertTypeFailure]
    # Forgetting `await`: a coroutine is not the result.
    fresh: int = conn.pull()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    conn.push()  # type: ignore[unused-coroutine]  # pyright: ignore[reportUnusedCoroutine]
    # The awaited connection is a ConnectionSync, not an int.
    opened: int = await connect_sync("app.db")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    async with turso.aio.sync.connect("app.db") as entered:
        entered_count: int = entered  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    # turso.aio.sync.ConnectionSync is the driver's *blocking* class, not what connect() gives.
    blocking: turso.aio.sync.ConnectionSync = await turso.aio.sync.connect("app.db")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    print(pushed, checkpointed, changed, fresh, opened, entered_count, blocking)


async def wrong_execute_fetchall(conn: ConnectionSync) -> None:
    # The SQL must be a str, and parameters a sequence or a mapping.
    await conn.execute_fetchall(b"SELECT 1")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await conn.execute_fetchall("SELECT ?", 1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # It gives the rows, not a cursor.
    cursor: turso.lib_aio.Cursor = await conn.execute_fetchall("SELECT 1")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    print(cursor)


async def wrong_stats(conn: ConnectionSync) -> None:
    stats = await conn.stats()
    # The stats fields are read-only.
    stats.cdc_operations = 0  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]
    # Optional fields must be checked for None.
    pulled_at: int = stats.last_pull_unix_time  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    revision: int = stats.revision  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    # No such field (a misspelt cdc_operations).
    print(stats.cdc_operation)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType, reportUnknownArgumentType]
    # Any object is not a SyncStats.
    made_up: SyncStats = object()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    print(pulled_at, revision, made_up)


async def wrong_methods(conn: ConnectionSync) -> None:
    # pull() takes no arguments.
    await conn.pull(True)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    # No such method (a misspelt sync).
    await conn.synchronize()  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    # sync() takes no arguments; sync_in_background's max_backoff is keyword-only and interval is a number.
    await conn.sync(True)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    conn.sync_in_background(1.0, 30.0)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    conn.sync_in_background("5")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # The inherited SQL API keeps its parameter types.
    await conn.execute(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    conn.isolation_level = 5  # type: ignore[assignment]  # pyright: ignore[reportAttributeAccessIssue]


def not_the_protocol(plain: turso.lib_aio.Connection, blocking: turso.lib_sync.ConnectionSync) -> None:
    # The plain async connection has no sync operations.
    needs_operations(plain)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # The blocking sync connection has them, but not awaitable.
    needs_operations(blocking)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


class PushOnly:
    async def push(self) -> None: ...

    async def pull(self) -> bool:
        return False


async def wrong_background_sync(conn: ConnectionSync, status: BackgroundSyncStatus) -> None:
    background = conn.sync_in_background(5.0)
    # The status is a frozen snapshot.
    status.rounds = 0  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]
    # sync_now() gives pull's bool, not the status.
    rounds: BackgroundSyncStatus = await background.sync_now()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    # stop() returns nothing.
    stopped: bool = await background.stop()  # type: ignore[func-returns-value, assignment]  # pyright: ignore[reportAssignmentType]
    # A target must have sync(); push() and pull() alone are not enough.
    BackgroundSync(PushOnly(), 1.0)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # checkpoint_wal_bytes is a number of bytes (or None), not a size written as text.
    conn.sync_in_background(5.0, checkpoint_wal_bytes="16MiB")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    print(rounds, stopped)


async def wrong_transaction(conn: ConnectionSync) -> None:
    # transaction is a method: the block is its call.
    async with conn.transaction:  # type: ignore[attr-defined]  # pyright: ignore[reportGeneralTypeIssues]
        pass
    # The block gives the Transaction, not the connection.
    async with conn.transaction() as block:
        entered: ConnectionSync = block  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
        print(entered)


async def wrong_pool(pool: ReplicaPool) -> None:
    # A tenant key is a str.
    pool.connection(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # The pool's settings are keyword-only, and path_for is a function of the tenant, not a template.
    ReplicaPool(str, str)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    ReplicaPool(path_for="/data/{tenant}.db", remote_url_for=lambda tenant: None)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # connection() gives an async context manager, not the connection itself.
    conn: ConnectionSync = pool.connection("acme")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    print(conn)
