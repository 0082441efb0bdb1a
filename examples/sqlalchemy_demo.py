"""`make demo-sqlalchemy`: SQLAlchemy's asyncio engine on two sync replicas of one database (`sqlite+aioturso_sync://`).

Two "services", each with its own replica and a FastAPI-style lifespan (engine created at start-up, disposed at
shutdown): alice handles 20 concurrent requests that each add a note in their own AsyncSession, then pushes; bob pulls
and lists them with the ORM.

It syncs with the remote at TURSO_DATABASE_URL (and TURSO_AUTH_TOKEN, for Turso Cloud) and writes to a table named
turso_sync_aio_sqlalchemy_demo there. `make demo-sqlalchemy` sets it to a local `tursodb --sync-server` that
scripts/dev_server.py starts for the run, unless TURSO_DATABASE_URL is already set.
"""

import asyncio
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from sqlalchemy import String, func, select
from sqlalchemy.dialects import registry
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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


def remote_database() -> tuple[str, str | None]:
    """The (url, auth token) to sync with: TURSO_DATABASE_URL and TURSO_AUTH_TOKEN (none for a local server)."""
    url = os.environ.get("TURSO_DATABASE_URL")
    if not url:
        sys.exit(
            "TURSO_DATABASE_URL is not set: run `make demo-sqlalchemy`, which starts a local sync server for the run, "
            "or start one with `make server` and set TURSO_DATABASE_URL to the URL it prints"
        )
    print(f"remote: {url}")
    return url, os.environ.get("TURSO_AUTH_TOKEN")


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
    url, token = remote_database()
    with tempfile.TemporaryDirectory(prefix="turso-sync-aio-sqlalchemy-demo-") as workdir:
        try:
            asyncio.run(run(url, token, Path(workdir)))
        except KeyboardInterrupt:
            print("interrupted")


if __name__ == "__main__":
    main()
