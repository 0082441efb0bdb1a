"""Work queued without an await (cursor creation, property setters): it runs in order, and a failure is reported."""

import asyncio

import turso
from testkit.sync_server import SyncServer
from tests.helpers import AWAIT_SECONDS, open_replica, record_loop_errors


class CursorFactoryError(Exception):
    pass


def failing_cursor_factory(connection: turso.Connection) -> turso.Cursor:
    raise CursorFactoryError("no cursor today")


async def test_a_failed_cursor_creation_reaches_the_loop_exception_handler_and_the_connection_stays_usable(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with await open_replica(replica_path, sync_server.url) as conn:
        errors = record_loop_errors()
        conn.cursor(factory=failing_cursor_factory)  # queued on the worker, not awaited

        # The next awaited call runs after it; its result comes back after the failure was handed to the loop.
        assert await asyncio.wait_for(conn.execute_fetchall("SELECT 1"), AWAIT_SECONDS) == [(1,)]
        await asyncio.sleep(0)
        assert [type(context.get("exception")) for context in errors] == [CursorFactoryError]
        assert "without an await" in errors[0]["message"]


async def test_settings_queued_without_an_await_apply_before_the_next_call(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with await open_replica(replica_path, sync_server.url) as conn:
        errors = record_loop_errors()
        conn.row_factory = turso.Row
        (row,) = await asyncio.wait_for(conn.execute_fetchall("SELECT 1 AS one"), AWAIT_SECONDS)
        assert row["one"] == 1
        conn.row_factory = None
        assert await asyncio.wait_for(conn.execute_fetchall("SELECT 1 AS one"), AWAIT_SECONDS) == [(1,)]
        assert errors == []
