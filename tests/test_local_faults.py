"""Bad days on the local side, against a real `tursodb --sync-server` on 127.0.0.1: a full disk, and a pull that runs
out of space while it applies.

The disk is a small tmpfs mounted for the test (tests/small_disk.py); the tests skip, saying why, where mounting is not
permitted. Every error a call raises is a `turso.Error`, and once space is freed the replica carries on: nothing lost,
nothing sent twice.
"""

import asyncio
import importlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

import turso
from testkit.sync_server import SyncServer
from tests.small_disk import NotMountable, SmallDisk
from turso._sync_aio.errors import DBAPI_CLASS_OF_NATIVE, NATIVE_MODULE, native_dbapi_error
from turso.lib_sync_aio import connect_sync

# Upper bound for any single await in these tests.
AWAIT_SECONDS = 30.0
# The driver's native extension, which ships no type information.
NATIVE: Any = importlib.import_module("turso._turso")
# The tmpfs for the full-disk tests: room for a replica and a few MB of changes.
DISK_BYTES = 32 * 1024 * 1024
# What a row of the filling loop adds to the WAL, and at most how many rows it writes before the disk must be full.
ROW_BYTES = 20_000
MAX_ROWS = 500


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A tmpfs of DISK_BYTES of the test's own, unmounted when it ends; skips the test where mounting is refused."""
    disk = SmallDisk(tmp_path / "disk", DISK_BYTES)
    try:
        disk.mount()
    except NotMountable as reason:
        pytest.skip(f"these tests fill a small tmpfs, and this process cannot mount one: {reason}")
    try:
        yield disk
    finally:
        disk.unmount()


# --- every error is a turso.Error --------------------------------------------------------------------------------


def test_every_native_exception_class_of_the_driver_is_recognised_by_its_module() -> None:
    # The recognition of the native classes that the driver lets through rests on this.
    members: list[object] = [getattr(NATIVE, name) for name in dir(NATIVE)]
    exported = [value for value in members if isinstance(value, type) and issubclass(value, BaseException)]
    assert {native.__name__ for native in exported} <= set(DBAPI_CLASS_OF_NATIVE)
    for native in exported:
        assert native.__module__ == NATIVE_MODULE, native
        mapped = native_dbapi_error(native("what the engine said"))
        assert isinstance(mapped, DBAPI_CLASS_OF_NATIVE[native.__name__]), native
        assert str(mapped) == "what the engine said"
        assert type(mapped.__cause__) is native


def test_a_readonly_error_is_an_operational_error_and_errors_of_the_python_side_keep_their_class() -> None:
    readonly = native_dbapi_error(NATIVE.Readonly("attempt to write a readonly database"))
    assert isinstance(readonly, turso.OperationalError)
    # A TypeError for a bad parameter stays one, and a DB-API error is not wrapped again.
    assert native_dbapi_error(TypeError("bad parameter")) is None
    assert native_dbapi_error(turso.OperationalError("already mapped")) is None


async def test_a_write_on_a_full_disk_raises_operational_error_reads_go_on_and_every_row_reaches_the_server_once(
    sync_server: SyncServer, small_disk: SmallDisk
) -> None:
    path = str(small_disk.path / "replica.db")
    async with connect_sync(path, sync_server.url) as conn:
        await conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB)")
        await conn.commit()
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        small_disk.fill(leaving=512 * 1024)
        committed = 0
        with pytest.raises(turso.Error) as raised:
            for _ in range(MAX_ROWS):
                await conn.execute("INSERT INTO notes(body) VALUES (randomblob(?))", (ROW_BYTES,))
                await conn.commit()
                committed += 1
        # Before: the native turso.IoError("pwritev: StorageFull"), which `except turso.Error` does not catch.
        assert isinstance(raised.value, turso.OperationalError)
        assert "StorageFull" in str(raised.value)
        assert type(raised.value.__cause__).__name__ == "IoError"
        assert committed > 0
        # Reads go on, and see every committed row.
        assert await conn.execute_fetchall("SELECT count(*) FROM notes") == [(committed,)]
        # So do sync calls: whatever they raise on a full disk is a turso.Error.
        for sync_call in (conn.push, conn.pull, conn.checkpoint):
            try:
                await asyncio.wait_for(sync_call(), AWAIT_SECONDS)
            except turso.Error:
                pass

        small_disk.free()
        await conn.execute("INSERT INTO notes(body) VALUES ('after the disk was freed')")
        await conn.commit()
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
        assert await conn.execute_fetchall("SELECT count(*) FROM notes") == [(committed + 1,)]
    # Every committed row once, the one of the failed commit never.
    assert sync_server.execute("SELECT count(*), count(DISTINCT id) FROM notes") == [(committed + 1, committed + 1)]


# --- a pull that runs out of space while it applies ------------------------------------------------------------------

# The remote change each pull brings: BLOBS rows of BLOB_BYTES (2 MB).
BLOBS = 8
BLOB_BYTES = 250_000
# tmpfs hands out space in pages of this size: margins closer than that are the same margin.
DISK_PAGE = 4096
# How far below the smallest margin a pull succeeds at the dense sweep goes: the failures after the remote pages are
# written (finalizing the WAL session, recording the high-water mark, writing PATH-info) all sit there.
LATE_FAILURES_BYTES = 96 * 1024
# What a connection that could not reopen its wedged replica says on every call.
CLOSE_AND_REOPEN = "Close the connection and open the replica again"


class PullOnFullDisk:
    """What one pull onto a nearly full disk did, and what the replica did once the space was freed."""

    def __init__(self, margin: int) -> None:
        self.margin = margin
        # The first pull's error (a turso.Error), or None if it returned True.
        self.error: Optional[turso.Error] = None
        # How many of the remote rows a read saw right after that pull (before the space was freed).
        self.visible = -1
        # After the space was freed: the next pull's result, the rows in the replica, and the local rows' bodies
        # (with how often each is there) in the replica and on the server after a push.
        self.pulled_again: Optional[bool] = None
        self.rows = -1
        self.local: list[tuple[object, ...]] = []
        self.remote: list[tuple[object, ...]] = []

    def __repr__(self) -> str:
        return f"<margin {self.margin}: {self.error!r}, {self.visible} visible, then {self.pulled_again}, {self.rows}>"


async def pull_onto_full_disk(
    base: Path, margin: int, *, local_changes: bool, keep_cursor: bool = False
) -> PullOnFullDisk:
    """A fresh remote and replica on a tmpfs of their own; the remote gains BLOBS rows, the disk is filled until
    `margin` bytes are left, the replica pulls; then the space is freed, a local row is written, the replica pulls and
    pushes again. `local_changes`: the replica has a pushed and an unpushed row before the pull (its first local
    change makes the sync engine record changes, which changes how an apply fails). `keep_cursor`: a cursor of the
    connection stays referenced throughout."""
    outcome = PullOnFullDisk(margin)
    base.mkdir(parents=True)
    with SyncServer(base / "remote.db", relay=True) as server, SmallDisk(base / "disk", DISK_BYTES) as disk:
        server.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, body BLOB)")
        server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        conn = await asyncio.wait_for(connect_sync(str(disk.path / "replica.db"), server.url), AWAIT_SECONDS)
        try:
            if local_changes:
                await conn.execute("INSERT INTO notes(body) VALUES ('pushed')")
                await conn.commit()
                await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
                await conn.execute("INSERT INTO notes(body) VALUES ('not pushed')")
                await conn.commit()
            for _ in range(BLOBS):
                server.execute("INSERT INTO blobs(body) VALUES (randomblob(?))", (BLOB_BYTES,))
            kept = await conn.execute("SELECT 1") if keep_cursor else None
            disk.fill(leaving=margin)
            try:
                assert await asyncio.wait_for(conn.pull(), AWAIT_SECONDS) is True
            except turso.Error as error:
                outcome.error = error
            if outcome.error is not None and CLOSE_AND_REOPEN in str(outcome.error):
                return outcome  # the caller checks this connection's every call
            outcome.visible = (await conn.execute_fetchall("SELECT count(*) FROM blobs"))[0][0]
            disk.free()
            await conn.execute("INSERT INTO notes(body) VALUES ('after')")
            await conn.commit()
            outcome.pulled_again = await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
            outcome.rows = (await conn.execute_fetchall("SELECT count(*) FROM blobs"))[0][0]
            await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
            await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
            count_bodies = "SELECT body, count(*) FROM notes GROUP BY body ORDER BY body"
            outcome.local = [tuple(row) for row in await conn.execute_fetchall(count_bodies)]
            outcome.remote = [tuple(row) for row in server.execute(count_bodies)]
            del kept
        finally:
            await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
    return outcome


# The smallest margin at which a pull succeeds, by whether the replica has local changes: the same in every test of a
# run (the sizes are fixed), so it is found once.
_THRESHOLDS: dict[bool, int] = {}


async def smallest_margin_that_pulls(base: Path, *, local_changes: bool) -> int:
    """The smallest free space (in tmpfs pages) at which the pull succeeds, by bisection: the failures that matter
    most (after the pages were written) sit just below it."""
    if local_changes in _THRESHOLDS:
        return _THRESHOLDS[local_changes]
    low, high = 0, 4 * BLOBS * BLOB_BYTES // DISK_PAGE  # in pages: fails at `low`, succeeds at `high`
    attempt = 0
    while high - low > 1:
        middle = (low + high) // 2
        attempt += 1
        tried = await pull_onto_full_disk(base / f"bisect-{attempt}", middle * DISK_PAGE, local_changes=local_changes)
        if tried.error is None:
            high = middle
        else:
            low = middle
    _THRESHOLDS[local_changes] = high * DISK_PAGE
    return high * DISK_PAGE


def check_recovered(outcome: PullOnFullDisk, *, local_changes: bool) -> None:
    """The promises of a pull onto a full disk, whatever the margin."""
    if outcome.error is None:
        # A pull that reports success applied everything (also when only recording it failed).
        assert outcome.visible == BLOBS, outcome
    else:
        # A pull that reports failure applied nothing, and left the connection able to read at once.
        assert outcome.visible == 0, outcome
        assert outcome.pulled_again is True, outcome  # the next pull applies the changes
    assert outcome.rows == BLOBS, outcome
    expected_local = [("after", 1), ("not pushed", 1), ("pushed", 1)] if local_changes else [("after", 1)]
    assert outcome.local == expected_local, outcome  # every local row kept, once
    assert outcome.remote == expected_local, outcome  # and on the server once


@pytest.mark.parametrize("local_changes", [False, True], ids=["no local change yet", "with local changes"])
async def test_a_pull_that_runs_out_of_space_while_applying_leaves_the_connection_usable_at_every_margin(
    small_disk: SmallDisk, tmp_path: Path, local_changes: bool
) -> None:
    small_disk.unmount()  # each attempt mounts a disk of its own; the fixture only checks that mounting works
    threshold = await smallest_margin_that_pulls(tmp_path / "bisect", local_changes=local_changes)
    margins = sorted(
        {0, threshold // 2, threshold + LATE_FAILURES_BYTES}
        | set(range(max(0, threshold - LATE_FAILURES_BYTES), threshold + DISK_PAGE, DISK_PAGE))
    )
    outcomes = [
        await pull_onto_full_disk(tmp_path / f"margin-{margin}", margin, local_changes=local_changes)
        for margin in margins
    ]
    for outcome in outcomes:
        check_recovered(outcome, local_changes=local_changes)
    messages = [str(outcome.error) for outcome in outcomes if outcome.error is not None]
    assert messages and any(outcome.error is None for outcome in outcomes), outcomes
    if not local_changes:
        # Before: the pull failed with "failed to finalize raw WAL session after remote apply: ... no storage space"
        # and every statement after it with "database is locked", until the connection was collected.
        assert any("reopened the replica" in message for message in messages), (
            f"no margin wedged the connection (the driver may have changed): {outcomes}"
        )


async def test_a_wedged_replica_that_cannot_be_reopened_in_place_says_on_every_call_to_close_and_reopen(
    small_disk: SmallDisk, tmp_path: Path
) -> None:
    small_disk.unmount()
    threshold = await smallest_margin_that_pulls(tmp_path / "bisect", local_changes=False)
    for margin in range(threshold - LATE_FAILURES_BYTES, threshold, DISK_PAGE):
        tried = await pull_onto_full_disk(tmp_path / f"find-{margin}", margin, local_changes=False)
        if "reopened the replica" in str(tried.error):
            break
    else:
        pytest.fail("no margin wedged the connection (the driver may have changed)")
    base = tmp_path / "kept-cursor"
    base.mkdir()
    with SyncServer(base / "remote.db", relay=True) as server, SmallDisk(base / "disk", DISK_BYTES) as disk:
        server.execute("CREATE TABLE blobs(id INTEGER PRIMARY KEY, body BLOB)")
        server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
        path = str(disk.path / "replica.db")
        conn = await asyncio.wait_for(connect_sync(path, server.url), AWAIT_SECONDS)
        try:
            for _ in range(BLOBS):
                server.execute("INSERT INTO blobs(body) VALUES (randomblob(?))", (BLOB_BYTES,))
            kept = await conn.execute("SELECT 1")  # holds the old connection: reopening in place is not safe
            disk.fill(leaving=margin)
            with pytest.raises(turso.OperationalError, match=CLOSE_AND_REOPEN):
                await asyncio.wait_for(conn.pull(), AWAIT_SECONDS)
            disk.free()
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: conn.execute("SELECT count(*) FROM blobs"),
                lambda: conn.execute_fetchall("SELECT 1"),
                conn.commit,
                conn.pull,
                conn.push,
                conn.stats,
            ]
            for call in calls:
                with pytest.raises(turso.OperationalError, match=CLOSE_AND_REOPEN):
                    await asyncio.wait_for(call(), AWAIT_SECONDS)
        finally:
            await asyncio.wait_for(conn.close(), AWAIT_SECONDS)
        del kept
        # Closed and opened again, the replica pulls what the wedged pull could not apply.
        async with connect_sync(path, server.url) as reopened:
            assert await asyncio.wait_for(reopened.pull(), AWAIT_SECONDS) is True
            assert await reopened.execute_fetchall("SELECT count(*) FROM blobs") == [(BLOBS,)]
