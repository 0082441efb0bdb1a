"""Misuse that both checkers must reject. Each line carries the precise ignore of each checker; with
warn_unused_ignores (mypy) and reportUnnecessaryTypeIgnoreComment (pyright), a line that stopped being an error
would fail the type gates."""

from turso.lib_sync_aio import ConnectionSync, connect_sync


async def misuse(conn: ConnectionSync) -> None:
    # A wrong argument type.
    connect_sync(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # A misspelt option.
    connect_sync("app.db", auth_tokn="secret")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    # A keyword-only option passed by position.
    connect_sync("app.db", "http://127.0.0.1:8080", "secret")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    # An option of the wrong type.
    connect_sync("app.db", long_poll_timeout_ms="1s")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # push() returns nothing.
    pushed: int = await conn.push()  # type: ignore[assignment, func-returns-value]  # pyright: ignore[reportAssignmentType]
    # pull() gives a bool, not a str.
    changed: str = await conn.pull()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    # The stats fields are read-only.
    (await conn.stats()).cdc_operations = 0  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]
    # A coroutine is not the result: forgetting `await`.
    fresh: bool = conn.pull()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    # No such method.
    await conn.sync()  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
    print(pushed, changed, fresh)
