"""Damaged replica files fail clearly and fast, and nothing is overwritten, against a real `tursodb --sync-server`.

Each open of a damaged replica runs in a child process with a deadline: before these checks, a replica cut short by a
page or more made the native open spin on a core for good, holding the interpreter lock (no asyncio timeout fires).
A refused replica keeps every file as it was, byte for byte; healthy replicas, including one whose file is shorter
than its header says while its write-ahead log holds the rest, open as before.
"""

import asyncio
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.sync_server import SyncServer
from tests.helpers import AWAIT_SECONDS
from turso._sync_aio.replica_files import WAL_FRAME_HEADER_BYTES, WAL_HEADER_BYTES
from turso.lib_sync_aio import connect_sync

# How long a child may take to open the replica; a spinning open is killed then, and the test fails.
CHILD_SECONDS = 30.0
# The local rows of the seed replica: never pushed, so that a replica bootstrapped over them would lose them.
LOCAL_ROWS = 10
# Rows of about 3 KB, so that the seed spans some hundred pages.
ROW_BYTES = 3000
PAGE_BYTES = 4096

# Opens the replica given in argv with connect_sync and prints what happened, as JSON.
OPEN_IN_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from turso.lib_sync_aio import connect_sync

    async def main(path, url):
        started = time.monotonic()
        try:
            async with connect_sync(path, url) as conn:
                rows = await conn.execute_fetchall("SELECT count(*) FROM notes")
            outcome = {"rows": rows[0][0]}
        except Exception as error:
            outcome = {"error": type(error).__name__, "message": str(error)}
        outcome["seconds"] = time.monotonic() - started
        print(json.dumps(outcome))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def open_in_child(path: Path, url: str) -> dict[str, Any]:
    """What opening the replica at `path` gives in another process: {"rows": N} or {"error": ..., "message": ...}."""
    try:
        child = subprocess.run(
            [sys.executable, "-c", OPEN_IN_CHILD, str(path), url],
            capture_output=True,
            text=True,
            timeout=CHILD_SECONDS,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"opening {path} did not end within {CHILD_SECONDS:g} s: the open spins instead of failing")
    assert child.returncode == 0, child.stderr[-2000:]
    outcome: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return outcome


def fingerprint(path: Path) -> dict[str, str]:
    """Every file of the replica (PATH and PATH-*), by name, with a digest of its bytes."""
    return {
        entry.name: hashlib.sha256(entry.read_bytes()).hexdigest()
        for entry in sorted(path.parent.iterdir())
        if entry.name == path.name or entry.name.startswith(path.name + "-")
    }


async def make_replica(path: Path, server: SyncServer, *, checkpoint: bool) -> None:
    """A closed replica of `server` with LOCAL_ROWS unpushed rows: its WAL checkpointed into the file, or holding the
    last commits (written after a checkpoint, so that the file also has pages of its own)."""
    async with connect_sync(str(path), server.url) as conn:
        for _ in range(LOCAL_ROWS - 2):
            await conn.execute("INSERT INTO notes(body) VALUES (randomblob(?))", (ROW_BYTES * 10,))
        await conn.commit()
        await asyncio.wait_for(conn.checkpoint(), AWAIT_SECONDS)
        for _ in range(2):
            await conn.execute("INSERT INTO notes(body) VALUES (randomblob(?))", (ROW_BYTES,))
        await conn.commit()
        if checkpoint:
            await asyncio.wait_for(conn.checkpoint(), AWAIT_SECONDS)


@pytest.fixture(params=["checkpointed", "with WAL frames"])
async def seed(request: pytest.FixtureRequest, sync_server: SyncServer, tmp_path: Path) -> Path:
    """A closed replica with local rows (see make_replica), in a folder of its own."""
    sync_server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB)")
    folder = tmp_path / "seed"
    folder.mkdir()
    path = folder / "replica.db"
    await make_replica(path, sync_server, checkpoint=request.param == "checkpointed")
    return path


def wal_frames(path: Path) -> int:
    """How many whole frames the replica's write-ahead log holds."""
    wal = Path(str(path) + "-wal")
    if not wal.exists():
        return 0
    return max(0, (wal.stat().st_size - WAL_HEADER_BYTES) // (WAL_FRAME_HEADER_BYTES + PAGE_BYTES))


def refused_changing_nothing(
    seed: Path, url: str, damage: Callable[[Path], None], error: str = "DatabaseError"
) -> str:
    """Damage the seed replica, open it in a child: the open fails with `error` (DatabaseError or a subclass) naming
    the file, and every file of the replica is as the damage left it. Returns the error message."""
    damage(seed)
    before = fingerprint(seed)
    outcome = open_in_child(seed, url)
    assert outcome.get("error") == error, outcome
    message = str(outcome["message"])
    assert repr(str(seed)) in message  # which file
    assert fingerprint(seed) == before  # nothing spun on, bootstrapped over or removed
    return message


def cut_by(byte_count: int) -> Callable[[Path], None]:
    def cut(path: Path) -> None:
        os.truncate(path, path.stat().st_size - byte_count)

    return cut


def cut_to(byte_count: int) -> Callable[[Path], None]:
    def cut(path: Path) -> None:
        os.truncate(path, byte_count)

    return cut


def empty_metadata(path: Path) -> None:
    os.truncate(str(path) + "-info", 0)


# --- refused before the driver sees them, and left as they were ---------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        # Before: the open spun on a core for good (a page or more missing) or said "database is locked".
        (cut_to(PAGE_BYTES), "the database file is 4096 bytes, but its header says"),
        (cut_by(10 * PAGE_BYTES), "but its header says"),
        # Before: the open went on, and reading the last page failed later ("short read on page N").
        (cut_by(100), "but its header says"),
        # Before: a new, empty database was bootstrapped over it ("no such table" afterwards).
        (cut_to(0), "the database file is empty (0 bytes), but the sync metadata"),
        # Before: the remote's database was bootstrapped over the local one, and the local rows were gone.
        (empty_metadata, "is empty (0 bytes); opening it would bootstrap"),
    ],
    ids=["cut to one page", "cut by ten pages", "cut inside the last page", "empty file", "empty metadata"],
)
def test_a_damaged_replica_is_refused_with_database_error_and_nothing_is_changed(
    seed: Path, sync_server: SyncServer, damage: Callable[[Path], None], expected: str
) -> None:
    message = refused_changing_nothing(seed, sync_server.url, damage)
    assert expected in message
    assert "Nothing was changed" in message and "remove" in message  # and what to do


# --- healthy replicas open as before -------------------------------------------------------------------------------


def test_a_healthy_replica_opens_with_its_local_rows(seed: Path, sync_server: SyncServer) -> None:
    assert open_in_child(seed, sync_server.url).get("rows") == LOCAL_ROWS


def write_page_one_from_the_wal(path: Path) -> None:
    """Write the log's last copy of page 1 over the file's: the state a checkpoint leaves when it stops right after
    page 1, which carries the new, larger page count, while the log still holds every page."""
    wal = Path(str(path) + "-wal").read_bytes()
    frame_bytes = WAL_FRAME_HEADER_BYTES + PAGE_BYTES
    page_one = None
    for offset in range(WAL_HEADER_BYTES, len(wal) - frame_bytes + 1, frame_bytes):
        if struct.unpack_from(">I", wal, offset)[0] == 1:
            page_one = wal[offset + WAL_FRAME_HEADER_BYTES : offset + frame_bytes]
    assert page_one is not None, "the log holds no page 1"
    with open(path, "r+b") as database:
        database.write(page_one)


def test_a_file_shorter_than_its_header_whose_log_holds_the_rest_opens(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body BLOB)")
    path = tmp_path / "replica.db"
    asyncio.run(make_replica(path, sync_server, checkpoint=False))
    assert wal_frames(path) > 0
    file_pages = path.stat().st_size // PAGE_BYTES
    write_page_one_from_the_wal(path)
    (header_pages,) = struct.unpack_from(">I", path.read_bytes(), 28)
    assert header_pages > file_pages, "the log's page 1 should count pages the file does not have yet"
    assert open_in_child(path, sync_server.url).get("rows") == LOCAL_ROWS


# --- damage the driver already reports clearly stays so -------------------------------------------------------------


def garbage_bytes(path: Path) -> None:
    with open(path, "r+b") as database:
        database.write(b"not a database! " * 64)


def garbage_metadata(path: Path) -> None:
    Path(str(path) + "-info").write_bytes(b"{not json")


def cut_metadata(path: Path) -> None:
    os.truncate(str(path) + "-info", 10)


def deleted_file(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (garbage_bytes, "file is not a database"),
        (deleted_file, "main DB file doesn't exists, but metadata is"),
        (cut_to(50), "short read on page 1"),
    ],
    ids=["garbage bytes", "deleted file", "header cut short"],
)
def test_damage_the_driver_reports_clearly_still_fails_clearly_and_changes_nothing(
    seed: Path, sync_server: SyncServer, damage: Callable[[Path], None], expected: str
) -> None:
    assert expected in refused_changing_nothing(seed, sync_server.url, damage)


@pytest.mark.parametrize("damage", [garbage_metadata, cut_metadata], ids=["garbage metadata", "cut metadata"])
def test_damaged_metadata_is_refused_saying_how_to_recover_and_changes_nothing(
    seed: Path, sync_server: SyncServer, damage: Callable[[Path], None]
) -> None:
    # The driver's own words were "deserialization error" and "EOF while parsing", with no way out but a backup.
    message = refused_changing_nothing(seed, sync_server.url, damage, error="ReplicaIdentityError")
    assert "is damaged" in message and "recover_replica" in message


def test_a_refused_replica_restored_from_its_copy_opens_with_its_rows(seed: Path, sync_server: SyncServer) -> None:
    # The advice "restore it from a backup" works: the refusal changed nothing that the copy does not bring back.
    backup = seed.parent.parent / "backup"
    shutil.copytree(seed.parent, backup)
    cut_to(0)(seed)
    assert open_in_child(seed, sync_server.url).get("error") == "DatabaseError"
    shutil.copy(backup / seed.name, seed)
    assert open_in_child(seed, sync_server.url).get("rows") == LOCAL_ROWS
