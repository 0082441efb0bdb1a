"""close() lets go of the replica, and one replica file has at most one open connection per process, against a real
`tursodb --sync-server` on 127.0.0.1.

When close() returns, this process holds no file descriptor of the replica's files (read from /proc/self/fd) and
another process can open it. A second `connect_sync` on a file already open in this process is refused at once with
`turso.ProgrammingError` (two native databases on one file abort the process after some commits), and the file may be
opened again once the first connection has closed, also while its stuck sync request is still ending.
"""

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import turso
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer, free_port
from tests.helpers import AWAIT_SECONDS, StatementGate, hold_statement, open_replica
from turso.lib_sync_aio import ConnectionSync, connect_sync

# How long a child process may take to open the replica and read it, or to run its commits.
CHILD_SECONDS = 60.0
# The pull under wait_for that a stalled remote times out.
PULL_TIMEOUT_SECONDS = 0.5
# How long the first connection's statement is held while the second open waits: well within CLOSING_WAIT_SECONDS.
HOLD_SECONDS = 0.3
# What the refusal of a second open says.
ALREADY_OPEN = "is already open in this process"
SHARE_ADVICE = "share the open connection"

# Opens the replica with the blocking driver in a child process and prints its row count: the child fails with
# "File is locked by another process" while this process still holds the replica.
READ_IN_CHILD = textwrap.dedent(
    """
    import sys
    import turso.lib_sync
    conn = turso.lib_sync.connect_sync(sys.argv[1], sys.argv[2])
    print(conn.execute("SELECT count(*) FROM notes").fetchall()[0][0])
    conn.close()
    """
)


@pytest.fixture(autouse=True)
def reference_counting_only() -> Iterator[None]:
    """No garbage collection during these tests: the replica must be let go of by reference counting alone, at once,
    not whenever a collection happens to break a reference cycle that holds it."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def open_replica_files(path: str) -> list[str]:
    """The replica's files (the database, -wal, -changes, ...) that this process has a file descriptor of now."""
    descriptors = Path("/proc/self/fd")
    if not descriptors.is_dir():
        pytest.skip("needs /proc/self/fd (Linux) to see which files this process holds")
    prefix = os.path.realpath(path)
    held: list[str] = []
    for descriptor in descriptors.iterdir():
        try:
            target = os.readlink(descriptor)
        except OSError:
            continue  # closed between listing and reading
        if target == prefix or target.startswith(prefix + "-") or target.startswith(prefix + "."):
            held.append(target)
    return sorted(held)


def read_in_child(path: str, url: str) -> int:
    """The replica's row count as another process sees it, opening the replica itself; fails the test if it cannot."""
    child = subprocess.run(
        [sys.executable, "-c", READ_IN_CHILD, path, url], capture_output=True, text=True, timeout=CHILD_SECONDS
    )
    assert child.returncode == 0, f"another process could not open the replica: {child.stderr.strip()[-600:]}"
    return int(child.stdout.strip())


async def write_notes(conn: ConnectionSync, count: int) -> None:
    await asyncio.wait_for(conn.execute("CREATE TABLE IF NOT EXISTS notes(id INTEGER PRIMARY KEY, body TEXT)"), 10)
    for number in range(count):
        await asyncio.wait_for(conn.execute("INSERT INTO notes(body) VALUES (?)", (f"note {number}",)), AWAIT_SECONDS)
    await asyncio.wait_for(conn.commit(), AWAIT_SECONDS)


# --- close() releases the replica ----------------------------------------------------------------------------------


@pytest.fixture
def without_garbage_collection() -> Iterator[None]:
    """No garbage collection during the test: close() itself must let go of the replica, not a collection that happens
    to run (an error's traceback in a reference cycle can hold the engine until one does)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.usefixtures("without_garbage_collection")
async def test_after_close_this_process_holds_no_file_of_the_replica_and_another_process_opens_it(
    sync_server: SyncServer, replica_path: str
) -> None:
    conn = await open_replica(replica_path, sync_server.url)
    await write_notes(conn, 3)
    await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
    assert open_replica_files(replica_path), "an open replica should hold its files"
    await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    # Before: the database, its -wal and -changes stayed open until `conn` was garbage collected, and another process
    # failed with "Failed locking file ... File is locked by another process". `conn` is still referenced here.
    assert open_replica_files(replica_path) == []
    assert read_in_child(replica_path, sync_server.url) == 3


@pytest.mark.usefixtures("without_garbage_collection")
async def test_leaving_async_with_after_failed_calls_releases_the_replica(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with connect_sync(replica_path, sync_server.url) as conn:
        await write_notes(conn, 2)
        with pytest.raises(turso.Error, match="no such table"):
            await asyncio.wait_for(conn.execute_fetchall("INSERT INTO no_such_table VALUES (1)"), AWAIT_SECONDS)
        sync_server.stop()
        try:
            with pytest.raises(turso.Error, match="refused"):
                await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
        finally:
            sync_server.start()
    assert open_replica_files(replica_path) == []
    assert read_in_child(replica_path, sync_server.url) == 2


async def test_a_cursor_kept_after_close_holds_the_replica_until_it_is_dropped(
    sync_server: SyncServer, replica_path: str
) -> None:
    # The documented limit: a cursor refers to the driver's blocking connection, and so to the native database.
    async with connect_sync(replica_path, sync_server.url) as conn:
        await write_notes(conn, 1)
        cursor = await asyncio.wait_for(conn.execute("SELECT count(*) FROM notes"), AWAIT_SECONDS)
        assert await asyncio.wait_for(cursor.fetchall(), AWAIT_SECONDS) == [(1,)]
    assert open_replica_files(replica_path) != []
    del cursor  # no garbage collection needed: reference counting frees it
    assert open_replica_files(replica_path) == []
    assert read_in_child(replica_path, sync_server.url) == 1


async def test_close_releases_the_replica_once_a_request_stuck_at_close_ends(
    sync_server: SyncServer, proxy: DelayingProxy, replica_path: str
) -> None:
    conn = await open_replica(replica_path, proxy.url)
    await write_notes(conn, 1)
    proxy.stall()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(conn.pull(), PULL_TIMEOUT_SECONDS)
        await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    finally:
        proxy.release()
    # The stuck request holds the sync engine until it ends; then nothing of the replica is left open.
    deadline = asyncio.get_running_loop().time() + AWAIT_SECONDS
    while open_replica_files(replica_path) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
    assert open_replica_files(replica_path) == []


# --- one open connection per replica file -------------------------------------------------------------------------


async def test_a_second_open_of_an_open_replica_is_refused_at_once_and_the_first_one_goes_on(
    sync_server: SyncServer, replica_path: str
) -> None:
    async with connect_sync(replica_path, sync_server.url) as first:
        await write_notes(first, 1)
        second = connect_sync(replica_path, sync_server.url)
        with pytest.raises(turso.ProgrammingError) as refused:
            await asyncio.wait_for(second, AWAIT_SECONDS)
        # Before: the second open succeeded, and after 47 to 200 commits the process died with SIGABRT
        # ("frame_watermark must be >= than current WAL backfill amount").
        assert ALREADY_OPEN in str(refused.value)
        assert repr(replica_path) in str(refused.value)
        assert SHARE_ADVICE in str(refused.value)
        with pytest.raises(turso.ProgrammingError, match="closed connection"):
            await second.execute("SELECT 1")
        await write_notes(first, 1)
        await asyncio.wait_for(first.push(), AWAIT_SECONDS)
    assert sync_server.execute("SELECT count(*) FROM notes") == [(2,)]


async def test_a_symlink_or_a_relative_path_to_an_open_replica_is_the_same_replica(
    sync_server: SyncServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "replicas"
    directory.mkdir()
    linked = tmp_path / "linked"
    linked.symlink_to(directory, target_is_directory=True)
    monkeypatch.chdir(directory)
    async with connect_sync(str(directory / "app.db"), sync_server.url):
        for other_name in (str(linked / "app.db"), "app.db", "./sub/../app.db"):
            (directory / "sub").mkdir(exist_ok=True)
            with pytest.raises(turso.ProgrammingError, match=ALREADY_OPEN):
                await asyncio.wait_for(connect_sync(other_name, sync_server.url), AWAIT_SECONDS)
        # Another file of the same directory is another replica.
        async with connect_sync("other.db", sync_server.url) as other:
            assert await asyncio.wait_for(other.execute_fetchall("SELECT 1"), AWAIT_SECONDS) == [(1,)]


async def test_a_path_with_a_nul_character_is_refused_with_value_error(sync_server: SyncServer) -> None:
    with pytest.raises(ValueError, match="NUL character"):
        await asyncio.wait_for(connect_sync("app\0.db", sync_server.url), AWAIT_SECONDS)


async def test_in_memory_replicas_are_each_their_own_and_never_refused(sync_server: SyncServer) -> None:
    sync_server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    async with connect_sync(":memory:", sync_server.url) as first, connect_sync(":memory:", sync_server.url) as second:
        await asyncio.wait_for(first.execute("INSERT INTO notes(body) VALUES ('first')"), AWAIT_SECONDS)
        await asyncio.wait_for(first.commit(), AWAIT_SECONDS)
        await asyncio.wait_for(first.push(), AWAIT_SECONDS)
        assert await asyncio.wait_for(second.pull(), AWAIT_SECONDS) is True
        rows = await asyncio.wait_for(second.execute_fetchall("SELECT body FROM notes"), AWAIT_SECONDS)
        assert rows == [("first",)]


async def test_a_closed_replica_may_be_opened_again_at_once(sync_server: SyncServer, replica_path: str) -> None:
    for round_number in range(3):
        async with connect_sync(replica_path, sync_server.url) as conn:
            await write_notes(conn, 1)
            await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        assert sync_server.execute("SELECT count(*) FROM notes") == [(round_number + 1,)]


async def test_an_open_of_a_file_whose_connection_is_closing_waits_for_it_instead_of_refusing(
    sync_server: SyncServer, replica_path: str
) -> None:
    first = await open_replica(replica_path, sync_server.url)
    await write_notes(first, 1)
    with StatementGate() as gate:
        # A statement the test holds on the first connection's SQL worker: close() lets it finish first.
        counting = await hold_statement(first, gate, "SELECT count(*) FROM notes")
        closing = asyncio.ensure_future(first.close())
        await asyncio.sleep(0)  # close() has begun
        opening = asyncio.ensure_future(connect_sync(replica_path, sync_server.url))
        # Not refused: the open waits for the first connection's release, which waits for the held statement.
        done, _ = await asyncio.wait({opening, closing}, timeout=HOLD_SECONDS)
        assert not done, f"the open or the close ended while the first connection's statement was held: {done}"
        gate.open()
        async with await asyncio.wait_for(opening, AWAIT_SECONDS) as second:
            rows = await asyncio.wait_for(second.execute_fetchall("SELECT count(*) FROM notes"), AWAIT_SECONDS)
            assert rows == [(1,)]
    assert await asyncio.wait_for(counting, AWAIT_SECONDS) == [(1,)]
    await asyncio.wait_for(closing, AWAIT_SECONDS)


async def test_a_failed_open_does_not_keep_the_path(replica_path: str, sync_server: SyncServer) -> None:
    with pytest.raises(turso.Error, match="refused"):
        await asyncio.wait_for(connect_sync(replica_path, f"http://127.0.0.1:{free_port()}"), AWAIT_SECONDS)
    async with connect_sync(replica_path, sync_server.url) as conn:
        assert await asyncio.wait_for(conn.execute_fetchall("SELECT 1"), AWAIT_SECONDS) == [(1,)]


# Opens one replica, tries a second open of it, then commits 300 times on the first: the second open's ProgrammingError
# and every commit must go through without the native abort that two connections on one file met.
TWO_OPENS_IN_CHILD = textwrap.dedent(
    """
    import asyncio
    import sys
    import turso
    from turso.lib_sync_aio import connect_sync

    async def main(path, url):
        async with connect_sync(path, url) as first:
            try:
                await connect_sync(path, url)
            except turso.ProgrammingError as refused:
                print("refused:", refused)
            else:
                raise SystemExit("the second open was not refused")
            await first.execute("CREATE TABLE hammer(x INTEGER)")
            for number in range(300):
                await first.execute("INSERT INTO hammer VALUES (?)", (number,))
                await first.commit()
            print("committed:", (await first.execute_fetchall("SELECT count(*) FROM hammer"))[0][0])

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_two_opens_of_one_replica_in_one_process_never_crash_it(sync_server: SyncServer, replica_path: str) -> None:
    # In a child process with a deadline: before, this is where the process died with SIGABRT.
    child = subprocess.run(
        [sys.executable, "-c", TWO_OPENS_IN_CHILD, replica_path, sync_server.url],
        capture_output=True,
        text=True,
        timeout=CHILD_SECONDS,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert ALREADY_OPEN in child.stdout
    assert "committed: 300" in child.stdout
