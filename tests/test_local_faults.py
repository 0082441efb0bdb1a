"""Bad days on the local side, against a real `tursodb --sync-server` on 127.0.0.1: a full disk, and a pull that runs
out of space while it applies.

The disk is a small tmpfs mounted for the test (tests/small_disk.py); the tests skip, saying why, where mounting is not
permitted. Every error a call raises is a `turso.Error`, and once space is freed the replica carries on: nothing lost,
nothing sent twice.
"""

import asyncio
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import turso
from tests.small_disk import NotMountable, SmallDisk
from tests.sync_server import SyncServer
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
