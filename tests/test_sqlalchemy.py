"""SQLAlchemy asyncio on sync replicas (`sqlite+aioturso_sync://`) against a real `tursodb --sync-server`."""

import asyncio
import os
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Optional

import pytest
import sqlalchemy
from sqlalchemy import String, event, func, pool, select, text
from sqlalchemy.dialects import registry
from sqlalchemy.exc import ArgumentError, DBAPIError, InvalidRequestError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import turso
import turso.aio
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import RUNS_UNTIL_STOPPED, StatementGate, pool_thread_serves, turso_threads, wait_until
from turso.background_sync_aio import BackgroundSync
from turso.lib_sync_aio import ConnectionSync
from turso.sqlalchemy_sync_aio import (
    AioTursoSyncDialect,
    ReplicaPool,
    background_sync_of,
    get_sync_connection,
    replica_of,
)

# Bound for anything that talks to the server, generous for a loaded 2-core machine.
TIMEOUT = 60.0
# The slow link of the "sessions keep running" tests: the proxy holds every request this long.
SLOW_LINK_SECONDS = 1.0
# What a short session may take while a pull or push is in flight (local speed is about a millisecond).
LOCAL_SESSION_SECONDS = 0.5


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(200))


def replica_url(path: str, server: Optional[SyncServer], query: str = "") -> str:
    url = f"sqlite+aioturso_sync:///{path}"
    params = [f"remote_url={server.url}"] if server is not None else []
    if query:
        params.append(query)
    return url + ("?" + "&".join(params) if params else "")


@pytest.fixture
async def engine(sync_server: SyncServer, replica_path: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh replica of the fixture's server, with the `notes` table created and pushed."""
    created = create_async_engine(replica_url(replica_path, sync_server))
    try:
        async with created.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await push(created)
        yield created
    finally:
        await created.dispose()


async def push(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await (await get_sync_connection(conn)).push()


async def pull(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return await (await get_sync_connection(conn)).pull()


async def local_bodies(engine: AsyncEngine) -> list[str]:
    async with AsyncSession(engine) as session:
        return list((await session.scalars(select(Note.body).order_by(Note.id))).all())


def test_the_dialect_is_found_by_its_url_name() -> None:
    loaded = registry.load("sqlite.aioturso_sync")
    assert loaded is AioTursoSyncDialect
    assert sqlalchemy.engine.make_url("sqlite+aioturso_sync:///app.db").get_dialect() is AioTursoSyncDialect


async def test_core_statements_run_on_the_replica_and_push_reaches_the_server(
    sync_server: SyncServer, engine: AsyncEngine
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO notes(body) VALUES (:body)"), [{"body": "one"}, {"body": "two"}])
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT body FROM notes ORDER BY id"))).scalars().all() == ["one", "two"]
        replica = await get_sync_connection(conn)
        assert isinstance(replica, ConnectionSync)
        assert sync_server.execute("SELECT body FROM notes") == []
        await replica.push()
        assert (await replica.stats()).cdc_operations == 0

    assert sync_server.execute("SELECT body FROM notes ORDER BY id") == [("one",), ("two",)]


async def test_orm_objects_round_trip_through_async_session(sync_server: SyncServer, engine: AsyncEngine) -> None:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        session.add_all([Note(body="alpha"), Note(body="beta")])
        await session.commit()
        replica = await get_sync_connection(session)
        await replica.push()

    async with sessions() as session:
        notes = (await session.scalars(select(Note).order_by(Note.id))).all()
        assert [(note.id, note.body) for note in notes] == [(1, "alpha"), (2, "beta")]
        notes[0].body = "alpha, edited"
        await session.commit()
        await (await get_sync_connection(session)).push()

    assert sync_server.execute("SELECT id, body FROM notes ORDER BY id") == [(1, "alpha, edited"), (2, "beta")]


async def test_two_engines_on_two_replicas_converge_through_push_and_pull(
    sync_server: SyncServer, engine: AsyncEngine, tmp_path: Path
) -> None:
    other = create_async_engine(replica_url(str(tmp_path / "other.db"), sync_server))
    try:
        assert await local_bodies(other) == []  # bootstraps the second replica before the first one writes
        async with AsyncSession(engine) as session:
            session.add(Note(body="from the first"))
            await session.commit()
        await push(engine)

        assert await pull(other) is True
        assert await local_bodies(other) == ["from the first"]

        async with AsyncSession(other) as session:
            session.add(Note(body="from the second"))
            await session.commit()
        await push(other)
        assert await pull(engine) is True

        assert await local_bodies(engine) == await local_bodies(other) == ["from the first", "from the second"]
        assert await pull(engine) is False
    finally:
        await other.dispose()


async def test_a_rolled_back_transaction_pushes_nothing(sync_server: SyncServer, engine: AsyncEngine) -> None:
    with pytest.raises(RuntimeError, match="changed my mind"):
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes(body) VALUES ('never')"))
            raise RuntimeError("changed my mind")

    async with engine.connect() as conn:
        replica = await get_sync_connection(conn)
        assert (await replica.stats()).cdc_operations == 0
        await replica.push()
    assert await local_bodies(engine) == []
    assert sync_server.execute("SELECT count(*) FROM notes") == [(0,)]


async def test_twenty_concurrent_sessions_share_the_one_connection_and_one_push_sends_all_rows(
    sync_server: SyncServer, engine: AsyncEngine
) -> None:
    sessions = async_sessionmaker(engine)
    opened: list[object] = []

    def count_new_connection(dbapi_connection: object, record: object) -> None:
        opened.append(dbapi_connection)

    event.listen(engine.sync_engine, "connect", count_new_connection)

    async def insert_and_commit(number: int) -> None:
        async with sessions() as session:
            await session.execute(select(func.count()).select_from(Note))  # holds the connection from here on
            await asyncio.sleep(0)  # let the other sessions queue up for it
            session.add(Note(body=f"note {number}"))
            await session.commit()

    await asyncio.wait_for(asyncio.gather(*(insert_and_commit(number) for number in range(20))), TIMEOUT)
    assert opened == []  # all 20 sessions took turns on the connection the engine already had
    assert isinstance(engine.pool, ReplicaPool)
    assert engine.pool.size() == 1 and engine.pool.checkedin() == 1

    await asyncio.wait_for(push(engine), TIMEOUT)

    assert sync_server.execute("SELECT count(*), count(DISTINCT body) FROM notes") == [(20, 20)]


async def test_a_session_waiting_for_the_connection_times_out_with_the_pools_error(
    sync_server: SyncServer, replica_path: str
) -> None:
    engine = create_async_engine(replica_url(replica_path, sync_server), pool_timeout=0.2)
    try:
        async with engine.connect() as holder:
            await holder.execute(text("SELECT 1"))
            with pytest.raises(PoolTimeoutError):
                async with engine.connect() as waiter:
                    await waiter.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


async def test_orm_objects_keep_their_values_after_a_pull_until_expire_all(
    sync_server: SyncServer, engine: AsyncEngine
) -> None:
    async with AsyncSession(engine) as session:
        session.add(Note(id=1, body="old"))
        await session.commit()
    await push(engine)

    async with AsyncSession(engine, expire_on_commit=False) as session:
        note = await session.get_one(Note, 1)
        sync_server.execute("UPDATE notes SET body = 'new' WHERE id = 1")
        assert await (await get_sync_connection(session)).pull() is True
        assert note.body == "old"  # the identity map is not refreshed by a pull
        assert (await session.get_one(Note, 1)).body == "old"  # nor is a get() of an object it holds
        assert (await session.scalars(select(Note.body))).one() == "new"  # while a column query sees the pulled row

        session.expire_all()
        assert (await session.get_one(Note, 1)).body == "new"


async def test_dispose_closes_the_replica_and_stops_its_worker(sync_server: SyncServer, replica_path: str) -> None:
    before = turso_threads()
    engine = create_async_engine(replica_url(replica_path, sync_server))
    async with engine.connect() as conn:
        replica = await get_sync_connection(conn)
        assert pool_thread_serves(before)
    await engine.dispose()

    assert turso_threads() - before == set()
    with pytest.raises(turso.ProgrammingError, match="closed"):
        await replica.stats()
    # The engine stays usable after dispose(): it opens the replica again on demand.
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    await engine.dispose()


async def test_an_existing_replica_reopens_without_remote_url(sync_server: SyncServer, engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        session.add(Note(body="kept"))
        await session.commit()
    await engine.dispose()
    database = engine.url.database
    assert database is not None

    reopened = create_async_engine(f"sqlite+aioturso_sync:///{database}")
    try:
        assert await local_bodies(reopened) == ["kept"]
        await push(reopened)  # through the remote saved in the replica
    finally:
        await reopened.dispose()
    assert sync_server.execute("SELECT body FROM notes") == [("kept",)]


async def test_connect_args_pass_an_auth_token_callable_and_url_options_reach_the_driver(
    sync_server: SyncServer, replica_path: str
) -> None:
    token_requests: list[int] = []

    def token() -> str:
        token_requests.append(1)
        return "ignored-by-the-local-server"

    url = replica_url(replica_path, sync_server, "client_name=sqlalchemy-test&isolation_level=IMMEDIATE")
    engine = create_async_engine(url, connect_args={"auth_token": token})
    try:
        async with engine.connect() as conn:
            replica = await get_sync_connection(conn)
            assert replica.isolation_level == "IMMEDIATE"
            await replica.pull()
        assert token_requests
    finally:
        await engine.dispose()


async def test_sync_url_is_accepted_in_place_of_remote_url(sync_server: SyncServer, replica_path: str) -> None:
    sync_server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body VARCHAR(200) NOT NULL)")
    sync_server.execute("INSERT INTO notes(body) VALUES ('from the server')")
    engine = create_async_engine(f"sqlite+aioturso_sync:///{replica_path}?sync_url={sync_server.url}")
    try:
        assert await local_bodies(engine) == ["from the server"]
    finally:
        await engine.dispose()


async def test_get_sync_connection_returns_the_same_replica_for_a_session_and_its_connection(
    engine: AsyncEngine,
) -> None:
    async with AsyncSession(engine) as session:
        from_session = await get_sync_connection(session)
        from_connection = await get_sync_connection(await session.connection())
        assert from_session is from_connection


async def test_get_sync_connection_rejects_what_is_not_an_async_connection_or_session(engine: AsyncEngine) -> None:
    with pytest.raises(TypeError, match="expects a sqlalchemy.ext.asyncio.AsyncConnection or AsyncSession, not str"):
        await get_sync_connection("sqlite+aioturso_sync:///app.db")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="not AsyncEngine"):
        await get_sync_connection(engine)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def test_get_sync_connection_rejects_a_connection_that_is_not_a_sync_replica(tmp_path: Path) -> None:
    # async_creator bypasses the URL: here it hands the pool a plain local turso.aio connection.
    local_path = str(tmp_path / "local.db")
    engine = create_async_engine(
        f"sqlite+aioturso_sync:///{local_path}", async_creator=lambda: turso.aio.connect(local_path)
    )
    try:
        async with engine.connect() as conn:
            with pytest.raises(
                TypeError, match=r"expects a connection of a sqlite\+aioturso_sync:// engine.*Connection"
            ):
                await get_sync_connection(conn)
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite+aioturso_sync://db-org.turso.io/app.db", "does not support host/port"),
        ("sqlite+aioturso_sync://localhost:8080/app.db", "does not support host/port"),
        ("sqlite+aioturso_sync://user:secret@/app.db", "does not support username/password"),
    ],
)
def test_a_url_with_a_host_port_or_user_is_refused_when_the_engine_is_created(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=rf"invalid sqlite\+aioturso_sync:// URL .*{message}") as raised:
        create_async_engine(url)
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize("url", ["sqlite+aioturso_sync://", "sqlite+aioturso_sync:///:memory:"])
def test_a_url_without_a_replica_path_is_refused(url: str) -> None:
    with pytest.raises(ArgumentError, match="needs the path of the local replica file"):
        create_async_engine(url)


async def test_a_new_replica_without_remote_url_is_refused_and_leaves_nothing(replica_path: str) -> None:
    before = turso_threads()
    engine = create_async_engine(f"sqlite+aioturso_sync:///{replica_path}")
    try:
        with pytest.raises(ArgumentError, match=r"does not exist yet, and no remote_url was given.*\?remote_url="):
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert os.listdir(os.path.dirname(replica_path)) == []
    assert turso_threads() - before == set()


async def test_an_unreachable_remote_fails_the_checkout_with_the_drivers_error(replica_path: str) -> None:
    unreachable = SyncServer()  # never started: its port refuses connections
    engine = create_async_engine(replica_url(replica_path, unreachable))
    try:
        with pytest.raises(DBAPIError, match="Connection refused"):
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert not os.path.exists(replica_path)


def test_an_unknown_query_parameter_is_warned_about_and_ignored(replica_path: str) -> None:
    with pytest.warns(UserWarning, match=r"Unrecognized query parameters ignored: \['colour'\]"):
        engine = create_async_engine(f"sqlite+aioturso_sync:///{replica_path}?remote_url=http://h:1&colour=blue")
    assert isinstance(engine.pool, ReplicaPool)


@pytest.mark.parametrize(
    "pool_options",
    [{"pool_size": 5}, {"max_overflow": 1}, {"pool_size": 0}, {"max_overflow": -1}],
)
def test_a_pool_size_that_could_open_a_second_connection_is_refused(
    replica_path: str, pool_options: dict[str, int]
) -> None:
    with pytest.raises(ArgumentError, match="keeps exactly one connection per replica file.*leave pool_size"):
        create_async_engine(replica_url(replica_path, None), **pool_options)
    assert not os.path.exists(replica_path)


@pytest.mark.parametrize("poolclass", [pool.NullPool, pool.AsyncAdaptedQueuePool])
def test_a_pool_class_that_could_open_a_second_connection_is_refused(
    replica_path: str, poolclass: Callable[..., Any]
) -> None:
    with pytest.raises(ArgumentError, match=f"{poolclass.__name__} may open several: leave poolclass out"):
        create_async_engine(replica_url(replica_path, None), poolclass=poolclass)
    assert not os.path.exists(replica_path)


@pytest.mark.parametrize(
    "pool_options",
    [
        {"pool_size": 1, "max_overflow": 0, "pool_pre_ping": True, "pool_recycle": 3600, "pool_timeout": 5},
        {"poolclass": pool.StaticPool},
    ],
)
async def test_pool_settings_that_keep_one_connection_are_accepted(
    sync_server: SyncServer, replica_path: str, pool_options: dict[str, Any]
) -> None:
    sync_server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body VARCHAR(200) NOT NULL)")
    engine = create_async_engine(replica_url(replica_path, sync_server), **pool_options)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(select(func.count()).select_from(Note))).scalar_one() == 0
    finally:
        await engine.dispose()


ENTRIES = "CREATE TABLE entries(id TEXT PRIMARY KEY, body TEXT NOT NULL)"


async def sessions_until(done: "asyncio.Future[Any]", engine: AsyncEngine, label: str) -> tuple[list[float], list[str]]:
    """Short sessions on `engine`, a write then a read, until `done`: how long each took, and the bodies committed."""
    durations: list[float] = []
    committed: list[str] = []
    number = 0
    while not done.done():
        body = f"{label} {number}"
        number += 1
        started = time.perf_counter()
        async with AsyncSession(engine) as session:
            row = {"id": str(uuid.uuid4()), "body": body}
            await session.execute(text("INSERT INTO entries VALUES (:id, :body)"), row)
            await session.commit()
        durations.append(time.perf_counter() - started)
        committed.append(body)
        started = time.perf_counter()
        async with AsyncSession(engine) as session:
            count = (await session.execute(text("SELECT count(*) FROM entries"))).scalar_one()
            assert count >= len(committed)
        durations.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    return durations, committed


async def test_sessions_keep_running_while_the_engines_replica_pulls_and_pushes_over_a_slow_link(
    sync_server: SyncServer, replica_path: str
) -> None:
    proxy = DelayingProxy(sync_server.port, 0.0)  # fast while the replica bootstraps, slow from the first pull on
    engine = create_async_engine(replica_url(replica_path, None, f"remote_url={proxy.url}"))
    try:
        replica = await replica_of(engine)
        async with engine.begin() as conn:
            await conn.execute(text(ENTRIES))
        await asyncio.wait_for(replica.push(), TIMEOUT)
        sync_server.execute("INSERT INTO entries VALUES ('remote-1', 'from the server')")
        proxy.delay = SLOW_LINK_SECONDS

        started = time.perf_counter()
        pulling = asyncio.ensure_future(replica.pull())
        durations, written_during_pull = await asyncio.wait_for(sessions_until(pulling, engine, "during pull"), TIMEOUT)
        assert await pulling is True
        assert time.perf_counter() - started >= SLOW_LINK_SECONDS * 0.9  # the pull did wait on the slow link
        assert len(durations) >= 4 and max(durations) < LOCAL_SESSION_SECONDS, durations

        async with engine.connect() as conn:
            local = set((await conn.execute(text("SELECT body FROM entries"))).scalars())
        assert local == {"from the server", *written_during_pull}

        started = time.perf_counter()
        pushing = asyncio.ensure_future(replica.push())  # everything committed so far is in this push
        durations, written_during_push = await asyncio.wait_for(sessions_until(pushing, engine, "during push"), TIMEOUT)
        await pushing
        assert time.perf_counter() - started >= SLOW_LINK_SECONDS * 0.9
        assert len(durations) >= 4 and max(durations) < LOCAL_SESSION_SECONDS, durations
        on_server = [str(body) for (body,) in sync_server.execute("SELECT body FROM entries")]
        assert len(on_server) == len(set(on_server))
        assert {"from the server", *written_during_pull} <= set(on_server)

        proxy.delay = 0.0
        await asyncio.wait_for(replica.push(), TIMEOUT)
        on_server = [str(body) for (body,) in sync_server.execute("SELECT body FROM entries")]
        assert sorted(on_server) == sorted(["from the server", *written_during_pull, *written_during_push])
    finally:
        await engine.dispose()
        proxy.close()


async def test_replica_of_opens_the_replica_before_any_session_and_is_the_pools_connection(
    sync_server: SyncServer, replica_path: str
) -> None:
    before = turso_threads()
    sync_server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body VARCHAR(200) NOT NULL)")
    engine = create_async_engine(replica_url(replica_path, sync_server))
    opened: list[object] = []

    def count_new_connection(dbapi_connection: object, record: object) -> None:
        opened.append(dbapi_connection)

    event.listen(engine.sync_engine, "connect", count_new_connection)
    try:
        replica = await asyncio.wait_for(replica_of(engine), TIMEOUT)
        assert isinstance(replica, ConnectionSync)
        assert len(opened) == 1 and turso_threads() - before
        assert await replica_of(engine) is replica
        async with AsyncSession(engine) as session:
            assert await get_sync_connection(session) is replica
            assert (await session.scalars(select(Note.body))).all() == []
        assert len(opened) == 1  # sessions use the connection replica_of opened
    finally:
        await engine.dispose()


async def test_replica_of_takes_nothing_from_the_pool_while_a_session_holds_its_connection(
    engine: AsyncEngine,
) -> None:
    async with AsyncSession(engine) as session:
        session.add(Note(body="held"))
        await session.flush()  # the session holds the pool's one connection, in a transaction
        replica = await asyncio.wait_for(replica_of(engine), 1.0)
        assert replica is await get_sync_connection(session)
        stats = await asyncio.wait_for(replica.stats(), 1.0)
        assert stats.cdc_operations >= 0
        await session.commit()
    assert isinstance(engine.pool, ReplicaPool)
    assert engine.pool.checkedin() == 1


async def test_replica_of_after_dispose_raises_until_a_session_reopens_the_replica(engine: AsyncEngine) -> None:
    replica = await replica_of(engine)
    await engine.dispose()

    with pytest.raises(InvalidRequestError, match=r"was disposed, which closed its replica.*does not reopen"):
        await replica_of(engine)
    with pytest.raises(turso.ProgrammingError, match="closed"):
        await replica.pull()

    assert await local_bodies(engine) == []  # a session reopens the replica, as SQLAlchemy engines do
    reopened = await replica_of(engine)
    assert reopened is not replica
    assert (await reopened.stats()).cdc_operations == 0


async def test_replica_of_rejects_what_is_not_an_async_engine_of_the_dialect(engine: AsyncEngine) -> None:
    with pytest.raises(TypeError, match="expects a sqlalchemy.ext.asyncio.AsyncEngine, not Engine"):
        await replica_of(engine.sync_engine)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match="expects a sqlalchemy.ext.asyncio.AsyncEngine, not AsyncSession"):
        await background_sync_of(AsyncSession(engine))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


async def test_replica_of_rejects_an_engine_of_another_dialect(tmp_path: Path) -> None:
    # aiosqlite is in the benchmarks' requirements (every test venv has them), not in requirements.txt; pyturso's own
    # sqlite+aioturso:// does not load on SQLAlchemy 2.0.58 and later (its adapter has no has_stop).
    pytest.importorskip("aiosqlite")
    other = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'local.db'}")
    try:
        with pytest.raises(TypeError, match=r"expects an engine of sqlite\+aioturso_sync://, not of sqlite\+aiosqlite://"):
            await replica_of(other)
    finally:
        await other.dispose()


async def test_replica_of_rejects_an_engine_whose_pool_connection_is_not_a_sync_replica(tmp_path: Path) -> None:
    local_path = str(tmp_path / "local.db")
    engine = create_async_engine(
        f"sqlite+aioturso_sync:///{local_path}", async_creator=lambda: turso.aio.connect(local_path)
    )
    try:
        with pytest.raises(TypeError, match="pool connection is not a sync replica"):
            await replica_of(engine)
    finally:
        await engine.dispose()


# --- sync_interval: background sync of the engine's replica ---------------------------------------------------------

# The interval of the background sync tests, seconds.
SYNC_INTERVAL = 0.2


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float) -> float:
    """Await `check()` every 20 ms until it is true; how long that took (fails after `seconds`)."""
    started = time.perf_counter()
    while not await check():
        assert time.perf_counter() - started < seconds, f"not true within {seconds} s"
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


def between_rounds(background: BackgroundSync, rounds: int) -> bool:
    """Whether `background` has succeeded `rounds` rounds or more and none is running now."""
    status = background.status
    return status.rounds >= rounds and status.round_started_unix_time is None


def background_tasks() -> set["asyncio.Task[Any]"]:
    return {task for task in asyncio.all_tasks() if task.get_name() == "turso-background-sync" and not task.done()}


async def test_two_engines_with_sync_interval_converge_without_explicit_pull_or_push(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute(ENTRIES)
    query = f"sync_interval={SYNC_INTERVAL}"
    first = create_async_engine(replica_url(str(tmp_path / "first.db"), sync_server, query))
    second = create_async_engine(replica_url(str(tmp_path / "second.db"), sync_server, query))
    try:
        for engine, body in ((first, "from the first"), (second, "from the second")):
            async with AsyncSession(engine) as session:
                await session.execute(text("INSERT INTO entries VALUES (:id, :body)"), {"id": body, "body": body})
                await session.commit()

        async def has_both(engine: AsyncEngine) -> bool:
            async with engine.connect() as conn:
                return bool((await conn.execute(text("SELECT count(*) FROM entries"))).scalar_one() == 2)

        # Within 3 intervals in the background sync's own tests; here with room for a loaded 2-core machine.
        await eventually(lambda: has_both(first), 5.0)
        await eventually(lambda: has_both(second), 5.0)
        assert sorted(str(body) for (body,) in sync_server.execute("SELECT body FROM entries")) == [
            "from the first",
            "from the second",
        ]
    finally:
        await first.dispose()
        await second.dispose()


async def test_background_sync_of_gives_its_status_and_syncs_now(sync_server: SyncServer, replica_path: str) -> None:
    sync_server.execute(ENTRIES)
    engine = create_async_engine(replica_url(replica_path, sync_server, "sync_interval=30"))
    try:
        background = await asyncio.wait_for(background_sync_of(engine), TIMEOUT)  # opens the replica: a round at once
        assert isinstance(background, BackgroundSync)
        assert background.interval == 30.0
        assert await background_sync_of(engine) is background
        # Until the first round has ended: its sync counts it in `rounds`, then it may still check the WAL's size (a
        # step more on the sync lane) before the next round is scheduled.
        await eventually(lambda: asyncio.sleep(0, between_rounds(background, 1)), 5.0)
        status = background.status
        assert status.running and status.consecutive_failures == 0 and status.last_error is None
        assert status.last_success_unix_time is not None and status.next_round_unix_time is not None
        assert status.next_round_unix_time > time.time() + 20  # the next round is an interval away

        sync_server.execute("INSERT INTO entries VALUES ('remote', 'from the server')")
        assert await asyncio.wait_for(background.sync_now(), TIMEOUT) is True  # no need to wait 30 s
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT body FROM entries"))).scalars().all() == ["from the server"]
        assert background.status.rounds >= 2
    finally:
        await engine.dispose()


async def test_dispose_stops_the_background_sync_and_leaves_no_thread_or_task(
    sync_server: SyncServer, replica_path: str
) -> None:
    before = turso_threads()
    engine = create_async_engine(replica_url(replica_path, sync_server, f"sync_interval={SYNC_INTERVAL}"))
    background = await background_sync_of(engine)
    assert background is not None
    await eventually(lambda: asyncio.sleep(0, background.status.rounds >= 2), 5.0)
    assert background_tasks()

    await asyncio.wait_for(engine.dispose(), TIMEOUT)

    assert not background.status.running
    assert background_tasks() == set()
    assert turso_threads() - before == set()
    rounds = background.status.rounds
    await asyncio.sleep(3 * SYNC_INTERVAL)
    assert background.status.rounds == rounds
    with pytest.raises(InvalidRequestError, match="was disposed"):
        await background_sync_of(engine)


async def test_dispose_while_a_session_holds_the_replica_still_stops_its_background_sync(
    sync_server: SyncServer, replica_path: str
) -> None:
    engine = create_async_engine(replica_url(replica_path, sync_server, f"sync_interval={SYNC_INTERVAL}"))
    background = await background_sync_of(engine)
    assert background is not None
    async with AsyncSession(engine) as session:
        await session.execute(text("SELECT 1"))  # holds the pool's connection: dispose() cannot close it
        await asyncio.wait_for(engine.dispose(), TIMEOUT)
        assert not background.status.running
        assert background_tasks() == set()
        assert (await session.execute(text("SELECT 2"))).scalar_one() == 2  # the session itself goes on
        with pytest.raises(InvalidRequestError, match="was disposed"):
            await replica_of(engine)
        replica = await get_sync_connection(session)
    # Returned to the disposed pool, which keeps it open until it is collected; close it as dispose() would have.
    await replica.close()


async def test_a_session_after_dispose_reopens_the_replica_with_a_new_background_sync(
    sync_server: SyncServer, replica_path: str
) -> None:
    engine = create_async_engine(replica_url(replica_path, sync_server, "sync_interval=30"))
    try:
        first = await background_sync_of(engine)
        await engine.dispose()
        async with engine.connect() as conn:  # SQLAlchemy reopens the pool on demand, and with it the background sync
            await conn.execute(text("SELECT 1"))
        second = await background_sync_of(engine)
        assert first is not None and second is not None and second is not first
        assert not first.status.running and second.status.running
    finally:
        await engine.dispose()


async def test_an_engine_without_sync_interval_has_no_background_sync(engine: AsyncEngine) -> None:
    assert await background_sync_of(engine) is None
    assert background_tasks() == set()


async def test_sessions_keep_running_while_a_background_round_waits_on_a_slow_link(
    sync_server: SyncServer, replica_path: str
) -> None:
    proxy = DelayingProxy(sync_server.port, 0.0)
    engine = create_async_engine(replica_url(replica_path, None, f"remote_url={proxy.url}&sync_interval=30"))
    try:
        background = await background_sync_of(engine)
        assert background is not None
        # The first round starts at once; sync_now() joins a round in progress, so let that one end before the
        # table exists, and the next round pushes it.
        await background.sync_now()
        async with engine.begin() as conn:
            await conn.execute(text(ENTRIES))
        await background.sync_now()
        sync_server.execute("INSERT INTO entries VALUES ('remote', 'from the server')")
        proxy.delay = SLOW_LINK_SECONDS

        syncing = asyncio.ensure_future(background.sync_now())  # a push and a pull, each over the slow link
        durations, written = await asyncio.wait_for(sessions_until(syncing, engine, "during a round"), TIMEOUT)
        assert await syncing is True
        assert len(durations) >= 4 and max(durations) < LOCAL_SESSION_SECONDS, durations
        proxy.delay = 0.0
        await background.sync_now()
        on_server = sorted(str(body) for (body,) in sync_server.execute("SELECT body FROM entries"))
        assert on_server == sorted(["from the server", *written])
    finally:
        await engine.dispose()
        proxy.close()


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "1s"])
def test_a_bad_sync_interval_is_refused_when_the_engine_is_created(replica_path: str, value: str) -> None:
    with pytest.raises(ArgumentError, match=rf"sync_interval must be one number of seconds greater than 0.*{value!r}"):
        create_async_engine(replica_url(replica_path, None, f"remote_url=http://h:1&sync_interval={value}"))
    assert not os.path.exists(replica_path)


def test_sync_interval_is_the_dialects_own_parameter_and_not_warned_about(replica_path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = create_async_engine(replica_url(replica_path, None, "remote_url=http://h:1&sync_interval=2.5"))
    assert isinstance(engine.pool, ReplicaPool)


# --- request_timeout: the replica's deadline for every sync request -----------------------------------------------


async def test_request_timeout_in_the_url_is_the_replicas_deadline_from_the_bootstrap_on(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute("CREATE TABLE notes(id TEXT PRIMARY KEY, body TEXT)")
    proxy = DelayingProxy(sync_server.port)
    engine = create_async_engine(replica_url(replica_path, None, f"remote_url={proxy.url}&request_timeout=0.5"))
    try:
        proxy.stall()
        started = time.monotonic()
        with pytest.raises(DBAPIError, match=r"within 0\.5 s \(request_timeout\)"):
            async with engine.connect() as connection:
                await asyncio.wait_for(connection.execute(text("SELECT 1")), 10)
        assert time.monotonic() - started < 2.0
        proxy.release()
        replica = await asyncio.wait_for(replica_of(engine), 10)
        assert replica.request_timeout == 0.5
    finally:
        proxy.release()
        await engine.dispose()
        proxy.close()


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "1s"])
def test_a_bad_request_timeout_is_refused_when_the_engine_is_created(replica_path: str, value: str) -> None:
    with pytest.raises(
        ArgumentError, match=rf"request_timeout must be one number of seconds greater than 0.*{value!r}"
    ):
        create_async_engine(replica_url(replica_path, None, f"remote_url=http://h:1&request_timeout={value}"))
    assert not os.path.exists(replica_path)


def test_request_timeout_is_the_dialects_own_parameter_and_not_warned_about(replica_path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = create_async_engine(replica_url(replica_path, None, "remote_url=http://h:1&request_timeout=2.5"))
    assert isinstance(engine.pool, ReplicaPool)


# --- query_timeout, and a cancelled statement that stops (issue 26) ---------------------------------------------------


async def test_query_timeout_in_the_url_stops_a_long_statement_and_the_connection_goes_on(
    sync_server: SyncServer, replica_path: str
) -> None:
    engine = create_async_engine(replica_url(replica_path, sync_server, "query_timeout=0.3"))
    try:
        async with engine.connect() as connection:
            started = time.monotonic()
            with pytest.raises(DBAPIError, match="interrupted"):
                await asyncio.wait_for(connection.execute(text(RUNS_UNTIL_STOPPED)), TIMEOUT)
            assert time.monotonic() - started < 2.0
            assert (await connection.execute(text("SELECT 42"))).scalar() == 42
        replica = await asyncio.wait_for(replica_of(engine), TIMEOUT)
        assert replica.query_timeout == 0.3
    finally:
        await engine.dispose()


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "1s", "1e12"])
def test_a_bad_query_timeout_is_refused_when_the_engine_is_created(replica_path: str, value: str) -> None:
    with pytest.raises(ArgumentError, match=rf"query_timeout must be .*{value!r}"):
        create_async_engine(replica_url(replica_path, None, f"remote_url=http://h:1&query_timeout={value}"))
    assert not os.path.exists(replica_path)


def test_query_timeout_is_the_dialects_own_parameter_and_not_warned_about(replica_path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine = create_async_engine(replica_url(replica_path, None, "remote_url=http://h:1&query_timeout=2.5"))
    assert isinstance(engine.pool, ReplicaPool)


async def test_a_cancelled_execute_stops_its_statement_and_the_pool_serves_the_next_connection_within_a_second(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute(NOTES)
    engine = create_async_engine(replica_url(replica_path, sync_server))
    try:
        async with engine.connect() as connection:
            await connection.execute(text("INSERT INTO notes(body) VALUES ('before')"))
            await connection.commit()
        async with engine.connect() as connection:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(connection.execute(text(RUNS_UNTIL_STOPPED)), 0.3)
        stopped_at = time.monotonic()
        # The cancel interrupted the statement; the pool terminated the connection it gave up on (interrupt, close) and
        # opens the replica again for the next one.
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT body FROM notes"))).scalars().all() == ["before"]
        assert time.monotonic() - stopped_at < 1.0
    finally:
        await asyncio.wait_for(engine.dispose(), TIMEOUT)


# --- a cancelled statement never leads to a second open of the replica (issue 18) ----------------------------------

# How long the cancelled statement stays held on the SQL worker after its cancel, while its connection is closed.
HOLD_SECONDS = 0.3
NOTES = "CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)"


async def cancelled_then_next(engine: AsyncEngine) -> list[tuple[object, ...]]:
    """A statement cancelled while it runs in one connection (which invalidates it), then a write and a read in the
    next one; returns the bodies in the replica."""
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO notes(body) VALUES ('rolled back with the invalidated connection')"))
        with StatementGate() as gate:
            # The statement waits on the SQL worker until the gate opens, HOLD_SECONDS after the cancel: SQLAlchemy
            # invalidates the connection and closes it (which waits for the statement) while it still runs.
            (await get_sync_connection(conn)).row_factory = gate.row_factory
            selecting = asyncio.ensure_future(conn.execute(text("SELECT 1")))
            assert await wait_until(gate.entered.is_set), "the statement never reached the SQL worker"
            asyncio.get_running_loop().call_later(HOLD_SECONDS, gate.open)
            selecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(selecting, TIMEOUT)
    async with engine.connect() as conn:
        await conn.execute(text("INSERT INTO notes(body) VALUES ('next')"))
        await conn.commit()
        return [tuple(row) for row in (await conn.execute(text("SELECT body FROM notes ORDER BY id"))).all()]


async def test_a_statement_cancelled_by_wait_for_then_the_next_connection_opens_the_replica(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute(NOTES)
    engine = create_async_engine(replica_url(replica_path, sync_server))
    try:
        # The pool closes the invalidated connection before it opens the next one: neither "database is busy" nor
        # "already open in this process".
        for round_number in range(1, 4):
            assert await asyncio.wait_for(cancelled_then_next(engine), TIMEOUT) == [("next",)] * round_number
    finally:
        await asyncio.wait_for(engine.dispose(), TIMEOUT)


async def test_a_cancelled_statement_while_a_background_round_is_stuck_then_the_next_connection_opens_the_replica(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute(NOTES)
    proxy = DelayingProxy(sync_server.port)
    engine = create_async_engine(f"sqlite+aioturso_sync:///{replica_path}?remote_url={proxy.url}&sync_interval=0.1")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        proxy.stall()
        deadline = time.monotonic() + TIMEOUT
        while proxy.held == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert proxy.held >= 1, "background sync never reached the stalled remote"
        # The invalidated connection's close() returns while its round is stuck on the remote, and lets go of the
        # replica's path then: the pool's next open is not refused.
        assert await asyncio.wait_for(cancelled_then_next(engine), TIMEOUT) == [("next",)]
    finally:
        proxy.release()
        await asyncio.wait_for(engine.dispose(), TIMEOUT)
        proxy.close()
