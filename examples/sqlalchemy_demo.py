"""`make demo-sqlalchemy`: SQLAlchemy's asyncio engine on two sync replicas of one database (`sqlite+aioturso_sync://`).

Two "services", each with its own replica and a FastAPI-style lifespan (engine created at start-up, disposed at
shutdown): alice handles 20 concurrent requests that each add a note in their own AsyncSession, then pushes; bob pulls
and lists them with the ORM.

By default it starts a local `tursodb --sync-server` on 127.0.0.1 (stopped at the end, also on Ctrl-C). With
TURSO_DATABASE_URL (and TURSO_AUTH_TOKEN) set, it uses that remote instead and writes to a table named
turso_sync_aio_sqlalchemy_demo there.
"""

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncGenerator, Generator
from pathlib import Path

from sqlalchemy import String, func, select
from sqlalchemy.dialects import registry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.sync_server import SyncServer
from turso.sqlalchemy_sync_aio import get_sync_connection

# Needed only where the dialect is not installed with its entry point (this checkout, or a vendored file); a pyturso
# wheel built by `make wheel` registers sqlite+aioturso_sync:// by itself.
registry.register("sqlite.aioturso_sync", "turso.sqlalchemy_sync_aio", "AioTursoSyncDialect")


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "turso_sync_aio_sqlalchemy_demo"

    id: Mapped[int] = mapped_column(primary_key=True)
    author: Mapped[str] = mapped_column(String(50))
    body: Mapped[str] = mapped_column(String(200))


@contextlib.contextmanager
def remote_database(workdir: Path) -> Generator[tuple[str, str | None], None, None]:
    """The (url, auth token) to sync with: Turso Cloud if configured, else a local sync server for the demo's run."""
    url = os.environ.get("TURSO_DATABASE_URL")
    if url:
        print(f"remote: {url} (from TURSO_DATABASE_URL)")
        yield url, os.environ.get("TURSO_AUTH_TOKEN")
        return
    with SyncServer(workdir / "remote.db") as server:
        print(f"remote: local tursodb --sync-server at {server.url}")
        yield server.url, None
    print("remote: local sync server stopped")


@contextlib.asynccontextmanager
async def lifespan(
    replica: Path, url: str, token: str | None
) -> AsyncGenerator[async_sessionmaker[AsyncSession], None]:
    """What a FastAPI lifespan does: one engine per replica for the whole process, disposed at shutdown."""
    # The token goes through connect_args rather than the URL, so that it never shows in logs of the URL.
    engine = create_async_engine(
        f"sqlite+aioturso_sync:///{replica}?remote_url={url}", connect_args={"auth_token": token}
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with engine.connect() as conn:
            await (await get_sync_connection(conn)).push()  # publish the table
        yield async_sessionmaker(engine, expire_on_commit=False)
    finally:
        await engine.dispose()  # closes the replica and stops its worker thread


async def add_note(sessions: async_sessionmaker[AsyncSession], number: int) -> None:
    """One request: its own session; it waits its turn for the replica's single connection."""
    async with sessions() as session:
        session.add(Note(author="alice", body=f"note {number} written at {time.strftime('%H:%M:%S')}"))
        await session.commit()


async def count_notes(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(Note))).scalar_one()


async def run(url: str, token: str | None, workdir: Path) -> None:
    started = time.perf_counter()
    async with lifespan(workdir / "alice.db", url, token) as alice:
        async with lifespan(workdir / "bob.db", url, token) as bob:
            async with bob() as bob_session:
                print(f"bob opened his replica with {await count_notes(bob_session)} notes")

                requests_started = time.perf_counter()
                await asyncio.gather(*(add_note(alice, number) for number in range(20)))
                elapsed_ms = (time.perf_counter() - requests_started) * 1000
                print(f"alice handled 20 concurrent requests, one note each, in {elapsed_ms:.0f} ms")
                async with alice() as alice_session:
                    replica = await get_sync_connection(alice_session)
                    print(f"alice has {(await replica.stats()).cdc_operations} local changes to push")
                    await replica.push()
                    print(f"alice pushed; pending now: {(await replica.stats()).cdc_operations}")

                changed = await (await get_sync_connection(bob_session)).pull()
                # Objects the session loaded before the pull keep their old values: expire them (or use a new session).
                bob_session.expire_all()
                print(f"bob pulled (new changes: {changed}); he now has {await count_notes(bob_session)} notes")
                latest = await bob_session.scalars(select(Note).order_by(Note.id.desc()).limit(3))
                for note in reversed(latest.all()):
                    print(f"  {note.author}: {note.body}")
    print(f"done in {time.perf_counter() - started:.2f}s; both engines disposed, their worker threads stopped")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="turso-sync-aio-sqlalchemy-demo-") as workdir:
        with remote_database(Path(workdir)) as (url, token):
            try:
                asyncio.run(run(url, token, Path(workdir)))
            except KeyboardInterrupt:
                print("interrupted")


if __name__ == "__main__":
    main()
