"""Application-style SQLAlchemy code on a sync replica, checked (never run) by mypy --strict and pyright strict.

A FastAPI-style service: one engine for the process, opened in a lifespan, sessions per request, and the replica's
sync operations through `replica_of` (beside the sessions), `get_sync_connection` (inside one) and, with the URL's
`sync_interval`, `background_sync_of`. An `assert_type` that stops holding fails `make typecheck`.
"""

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Optional

from sqlalchemy import Connection, String, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from typing_extensions import assert_type

from turso.background_sync_aio import BackgroundSync, BackgroundSyncStatus
from turso.lib_sync_aio import ConnectionSync, SyncStats
from turso.sqlalchemy_sync_aio import background_sync_of, get_sync_connection, replica_of


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


@asynccontextmanager
async def lifespan() -> AsyncGenerator[async_sessionmaker[AsyncSession], None]:
    engine = create_async_engine("sqlite+aioturso_sync:///app.db?remote_url=http://127.0.0.1:8080")
    assert_type(engine, AsyncEngine)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            replica = await get_sync_connection(conn)
            assert_type(replica, ConnectionSync)
            assert_type(await replica.pull(), bool)
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()


async def add_note(sessions: async_sessionmaker[AsyncSession], body: str) -> int:
    async with sessions() as session:
        note = Note(body=body)
        session.add(note)
        await session.commit()
        replica = await get_sync_connection(session)
        assert_type(replica, ConnectionSync)
        assert_type(await replica.push(), None)
        assert_type(await replica.checkpoint(), None)
        stats = await replica.stats()
        assert_type(stats, SyncStats)
        return note.id


async def refresh_and_list(sessions: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessions() as session:
        if await (await get_sync_connection(session)).pull():
            session.expire_all()  # pulled rows do not refresh objects the session already holds
        bodies = (await session.scalars(select(Note.body).order_by(Note.id))).all()
        return list(bodies)


async def sync_beside_the_sessions(engine: AsyncEngine) -> bool:
    # The engine's replica without a checkout: sessions keep running while this waits on the network.
    replica = await replica_of(engine)
    assert_type(replica, ConnectionSync)
    assert_type(await replica.push(), None)
    return await replica.pull()


@asynccontextmanager
async def lifespan_with_background_sync() -> AsyncGenerator[AsyncEngine, None]:
    # sync_interval keeps the replica in background sync while the engine has it open; dispose() stops it.
    engine = create_async_engine("sqlite+aioturso_sync:///app.db?remote_url=http://127.0.0.1:8080&sync_interval=5")
    try:
        background = await background_sync_of(engine)
        assert_type(background, Optional[BackgroundSync])
        if background is not None:
            status = background.status
            assert_type(status, BackgroundSyncStatus)
            assert_type(status.rounds, int)
            assert_type(status.consecutive_failures, int)
            assert_type(status.last_error, Optional[Exception])
            assert_type(status.last_success_unix_time, Optional[float])
            assert_type(status.next_round_unix_time, Optional[float])
            assert_type(status.running, bool)
            assert_type(await background.sync_now(), bool)
        yield engine
    finally:
        await engine.dispose()


async def misuse(engine: AsyncEngine, blocking: Connection, session: AsyncSession) -> None:
    # replica_of takes the AsyncEngine, not a session or the blocking engine behind it.
    await replica_of(session)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await replica_of(engine.sync_engine)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # background_sync_of may give None (no sync_interval in the URL): its status needs a check first.
    background = await background_sync_of(engine)
    background.status  # type: ignore[union-attr]  # pyright: ignore[reportOptionalMemberAccess]
    # The engine itself, or a blocking SQLAlchemy connection, is not what get_sync_connection takes.
    await get_sync_connection(engine)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    await get_sync_connection(blocking)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # The replica's operations are coroutines: a missing await is not a bool.
    async with engine.connect() as conn:
        replica = await get_sync_connection(conn)
        changed: bool = replica.pull()  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
        assert_type(changed, bool)
