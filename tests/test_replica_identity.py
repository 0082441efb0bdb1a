"""A copied or restored replica never loses a write silently (issue 27), against a real `tursodb --sync-server`.

Each test plays what a user does to a replica's files with ordinary tools (cp, a restore, kill -9) and asserts one of
two outcomes: every acknowledged row is on the server exactly once, or `ReplicaIdentityError` was raised and the rows
are still in the replica (and `recover_replica` then gets each of them to the server once). The table has no primary
key, so a change pushed twice shows as a doubled row.
"""

import asyncio
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, cast

import pytest

import turso
from testkit.proxy import DelayingProxy
from testkit.sync_server import SyncServer
from tests.helpers import AWAIT_SECONDS, bounded, local_keys, open_replica, remote_keys, wait_until, wait_until_blocking
from turso._sync_aio.engine import SyncEngine
from turso._sync_aio.replica_identity import SIDECAR_SUFFIX
from turso.lib_sync_aio import (
    ConnectionSync,
    ReplicaIdentityError,
    ReplicaRecovery,
    connect_sync,
    copy_replica,
    recover_replica,
)

TABLE = "CREATE TABLE t(k TEXT, v INTEGER)"
# What the engine's push batch holds, and its query of the remote's mark does not: the proxy holds that answer.
PUSH_BATCH = b"BEGIN IMMEDIATE"


# --- what users do to files --------------------------------------------------------------------------------------


def files_of(path: Path) -> list[Path]:
    """The replica's files: the database and every PATH-* beside it (the engine's and the identity sidecar)."""
    return sorted(
        entry for entry in path.parent.iterdir() if entry.name == path.name or entry.name.startswith(path.name + "-")
    )


def copy_files(source: Path, destination: Path) -> None:
    """`cp a.db* b...`: every file of the replica, renamed for `destination`."""
    for entry in files_of(source):
        shutil.copyfile(entry, destination.parent / (destination.name + entry.name[len(source.name) :]))


def restore_over(backup: Path, live: Path) -> None:
    """A restore over the old files: each backed-up file's bytes written into the live file (same inode), and live files
    that the backup lacks removed (as `rsync --inplace --delete` does)."""
    backed_up = {entry.name for entry in files_of(backup)}
    for entry in files_of(live):
        if entry.name not in backed_up:
            entry.unlink()
    for name in backed_up:
        with open(backup.parent / name, "rb") as source, open(
            live.parent / name, "r+b" if (live.parent / name).exists() else "wb"
        ) as target:
            target.truncate(0)
            shutil.copyfileobj(source, target)


def restore_as_new_files(backup: Path, live: Path) -> None:
    """A restore as new files: the live files moved away, the backup's copied in their place (new inodes: the old files
    are kept until the test ends, so that a file system cannot hand their inode numbers straight back)."""
    replaced = live.parent / f"replaced-{uuid.uuid4().hex}"
    replaced.mkdir()
    for entry in files_of(live):
        entry.rename(replaced / entry.name)
    copy_files(backup, live)


def fingerprint(path: Path) -> dict[str, str]:
    """Every file of the replica, by name, with a digest of its bytes."""
    return {entry.name: hashlib.sha256(entry.read_bytes()).hexdigest() for entry in files_of(path)}


def client_id(path: Path) -> str:
    """The client id in the replica's PATH-info."""
    info: dict[str, object] = json.loads(Path(str(path) + "-info").read_bytes())
    return str(info["client_unique_id"])


# --- steps on a replica ------------------------------------------------------------------------------------------


async def commit(conn: ConnectionSync, key: str) -> None:
    await bounded(conn.execute("INSERT INTO t VALUES (?, 0)", (key,)))
    await bounded(conn.commit())


async def make_replica(path: Path, server: SyncServer, pushed: Sequence[str], pending: Sequence[str] = ()) -> None:
    """Bootstrap a replica at `path`, push the keys `pushed`, commit the keys `pending` without pushing, and close."""
    async with await open_replica(str(path), server.url) as conn:
        for key in pushed:
            await commit(conn, key)
        await bounded(conn.push())
        for key in pending:
            await commit(conn, key)


async def rounds(server: SyncServer, replicas: dict[str, ConnectionSync], count: int = 3) -> list[str]:
    """`count` rounds in which each replica commits a row of its own (named after it), pushes and pulls; the keys."""
    acknowledged: list[str] = []
    for round_number in range(1, count + 1):
        for name, conn in replicas.items():
            key = f"{name}{round_number}"
            await commit(conn, key)
            await bounded(conn.push())
            acknowledged.append(key)
            await bounded(conn.pull())
    return acknowledged


async def recovered(path: Path, server: SyncServer) -> ReplicaRecovery:
    return await bounded(recover_replica(str(path), server.url))


# --- case 1: a copy on another path, both used -------------------------------------------------------------------


async def test_a_copy_beside_its_original_is_refused_and_both_sync_once_it_is_recovered(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute(TABLE)
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    # p0 is committed and not pushed when the files are copied: it belongs to the original, which pushes it.
    await make_replica(a, sync_server, pushed=["a0"], pending=["p0"])
    copy_files(a, b)
    copied = fingerprint(b)

    async with await open_replica(str(a), sync_server.url) as conn_a:
        with pytest.raises(ReplicaIdentityError, match="is a copy of the replica") as refused:
            await open_replica(str(b), sync_server.url)
        assert refused.value.reason == "copied" and refused.value.path == str(b)
        assert "recover_replica" in str(refused.value) and isinstance(refused.value, turso.DatabaseError)
        assert fingerprint(b) == copied  # nothing was changed, the rows are in it

        recovery = await recovered(b, sync_server)
        assert recovery.previous_client_id == client_id(a) != recovery.client_id == client_id(b)
        async with await open_replica(str(b), sync_server.url) as conn_b:
            acknowledged = await rounds(sync_server, {"a": conn_a, "b": conn_b})
            await bounded(conn_a.pull())
            everything = sorted(["a0", "p0", *acknowledged])
            assert remote_keys(sync_server) == everything
            assert await local_keys(conn_a) == everything
            assert await local_keys(conn_b) == everything


async def test_a_copy_made_without_its_sidecar_is_refused_at_its_first_push_after_the_original_pushed(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute(TABLE)
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    await make_replica(a, sync_server, pushed=["a0"])
    copy_files(a, b)
    Path(str(b) + SIDECAR_SUFFIX).unlink()  # copied by a tool that only knows the engine's files

    async with await open_replica(str(a), sync_server.url) as conn_a, await open_replica(
        str(b), sync_server.url
    ) as conn_b:
        await commit(conn_a, "a1")
        await bounded(conn_a.push())
        await commit(conn_b, "b1")
        with pytest.raises(ReplicaIdentityError, match="diverged") as refused:
            await bounded(conn_b.push())
        assert refused.value.reason == "diverged"
        assert await local_keys(conn_b) == ["a0", "b1"]
        with pytest.raises(ReplicaIdentityError):
            await bounded(conn_b.pull())  # refused too: the apply would drop b1
        assert await local_keys(conn_b) == ["a0", "b1"]

    with pytest.raises(ReplicaIdentityError, match="stays refused"):
        await open_replica(str(b), sync_server.url)
    await recovered(b, sync_server)
    assert remote_keys(sync_server) == ["a0", "a1", "b1"]


# --- case 2: a restore from an older copy ------------------------------------------------------------------------


async def restored_replica(
    server: SyncServer, tmp_path: Path, *, same_inodes: bool, keep_current_sidecar: bool = False
) -> Path:
    """The issue's steps: push a0, commit a1, close, back up; push a1, push a2, close; restore the backup (all of it,
    or all but PATH-identity)."""
    live, backup = tmp_path / "live" / "a.db", tmp_path / "backup" / "a.db"
    live.parent.mkdir()
    backup.parent.mkdir()
    await make_replica(live, server, pushed=["a0"], pending=["a1"])
    copy_files(live, backup)
    async with await open_replica(str(live), server.url) as conn:
        await bounded(conn.push())
        await commit(conn, "a2")
        await bounded(conn.push())
    if keep_current_sidecar:
        Path(str(backup) + SIDECAR_SUFFIX).write_bytes(Path(str(live) + SIDECAR_SUFFIX).read_bytes())
    inode = live.stat().st_ino
    if same_inodes:
        restore_over(backup, live)
        assert live.stat().st_ino == inode
    else:
        restore_as_new_files(backup, live)
        assert live.stat().st_ino != inode
    return live


@pytest.mark.parametrize("same_inodes", [True, False], ids=["over-the-old-files", "as-new-files"])
@pytest.mark.parametrize("first", ["push", "pull"])
async def test_a_restored_replica_is_refused_before_its_sync_drops_a_row_and_recovers_each_row_once(
    sync_server: SyncServer, tmp_path: Path, same_inodes: bool, first: str
) -> None:
    sync_server.execute(TABLE)
    live = await restored_replica(sync_server, tmp_path, same_inodes=same_inodes)

    async with await open_replica(str(live), sync_server.url) as conn:
        await commit(conn, "a3")
        with pytest.raises(ReplicaIdentityError, match="diverged"):
            await bounded(conn.push() if first == "push" else conn.pull())
        assert await local_keys(conn) == ["a0", "a1", "a3"]  # a3 stays; a2 was never in the backup
        await commit(conn, "a4")  # local SQL goes on
        with pytest.raises(ReplicaIdentityError):
            await bounded(conn.push())
        assert await local_keys(conn) == ["a0", "a1", "a3", "a4"]
    assert remote_keys(sync_server) == ["a0", "a1", "a2"]

    recovery = await recovered(live, sync_server)
    assert remote_keys(sync_server) == ["a0", "a1", "a2", "a3", "a4"]  # a1 not again
    async with await open_replica(str(live), sync_server.url) as conn:
        await commit(conn, "a5")
        await bounded(conn.push())
        await bounded(conn.pull())
        assert await local_keys(conn) == ["a0", "a1", "a2", "a3", "a4", "a5"]
    assert remote_keys(sync_server) == ["a0", "a1", "a2", "a3", "a4", "a5"]
    assert recovery.client_id == client_id(live)


@pytest.mark.parametrize("same_inodes", [True, False], ids=["over-the-old-files", "as-new-files"])
async def test_a_backup_restored_with_nothing_pushed_since_syncs_on(
    sync_server: SyncServer, tmp_path: Path, same_inodes: bool
) -> None:
    # Disaster recovery from an up-to-date backup is no fork: the remote holds nothing the backup did not push.
    sync_server.execute(TABLE)
    live, backup = tmp_path / "live" / "a.db", tmp_path / "backup" / "a.db"
    live.parent.mkdir()
    backup.parent.mkdir()
    await make_replica(live, sync_server, pushed=["a0"], pending=["a1"])
    copy_files(live, backup)
    async with await open_replica(str(live), sync_server.url) as conn:
        await commit(conn, "lost")  # never pushed: lost with the disk
    (restore_over if same_inodes else restore_as_new_files)(backup, live)

    async with await open_replica(str(live), sync_server.url) as conn:
        await commit(conn, "a2")
        await bounded(conn.push())
        await bounded(conn.pull())
        assert await local_keys(conn) == ["a0", "a1", "a2"]
    assert remote_keys(sync_server) == ["a0", "a1", "a2"]


# --- case 4: the sync metadata deleted or damaged ----------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "garbage", "cut short", "another replica's"])
async def test_lost_or_damaged_metadata_beside_local_changes_is_refused_and_recovered_without_doubling(
    sync_server: SyncServer, tmp_path: Path, damage: str
) -> None:
    sync_server.execute(TABLE)
    path, other = tmp_path / "a.db", tmp_path / "other.db"
    await make_replica(path, sync_server, pushed=["a0"], pending=["a1"])
    info = Path(str(path) + "-info")
    if damage == "deleted":
        info.unlink()
    elif damage == "garbage":
        info.write_bytes(b"\x00garbage\xff")
    elif damage == "cut short":
        info.write_bytes(info.read_bytes()[:40])
    else:
        await make_replica(other, sync_server, pushed=[])
        shutil.copyfile(str(other) + "-info", info)
    before = fingerprint(path)

    with pytest.raises(ReplicaIdentityError, match="sync metadata") as refused:
        await open_replica(str(path), sync_server.url)
    assert refused.value.reason.startswith("metadata_")
    assert fingerprint(path) == before  # nothing changed, nothing left behind

    await recovered(path, sync_server)
    assert remote_keys(sync_server) == ["a0", "a1"]
    async with await open_replica(str(path), sync_server.url) as conn:
        await bounded(conn.pull())
        assert await local_keys(conn) == ["a0", "a1"]
        await commit(conn, "a2")
        await bounded(conn.push())
    assert remote_keys(sync_server) == ["a0", "a1", "a2"]


async def test_deleted_metadata_without_local_changes_bootstraps_again(sync_server: SyncServer, tmp_path: Path) -> None:
    sync_server.execute(TABLE)
    path = tmp_path / "a.db"
    await make_replica(path, sync_server, pushed=["a0"])
    async with await open_replica(str(path), sync_server.url) as conn:
        await bounded(conn.pull())  # the pushed change leaves the change log
    Path(str(path) + "-info").unlink()

    async with await open_replica(str(path), sync_server.url) as conn:
        await commit(conn, "a1")
        await bounded(conn.push())
        assert await local_keys(conn) == ["a0", "a1"]
    assert remote_keys(sync_server) == ["a0", "a1"]


# --- the false alarms: a push that the remote applied, unrecorded ------------------------------------------------

# Opens the replica through the proxy, commits, says so, and pushes (the proxy holds the answer; the parent kills it).
PUSH_IN_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from turso.lib_sync_aio import connect_sync

    async def main(path, url):
        async with connect_sync(path, url) as conn:
            await conn.execute("INSERT INTO t VALUES ('k1', 0)")
            await conn.commit()
            print("pushing", flush=True)
            await conn.push()
        print("pushed", flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_a_replica_killed_after_the_remote_applied_its_push_reopens_without_refusal_or_doubling(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute(TABLE)
    path = tmp_path / "a.db"
    await make_replica(path, sync_server, pushed=["k0"])
    with DelayingProxy(sync_server.port) as proxy:
        proxy.hold_answers(PUSH_BATCH)
        child = subprocess.Popen(
            [sys.executable, "-c", PUSH_IN_CHILD, str(path), proxy.url], stdout=subprocess.PIPE, text=True
        )
        try:
            assert wait_until_blocking(
                lambda: proxy.answers_held == 1, AWAIT_SECONDS
            ), "the push never reached the server"
            assert remote_keys(sync_server) == ["k0", "k1"]  # applied, and the child has not heard of it
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=AWAIT_SECONDS) == -signal.SIGKILL
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            assert child.stdout is not None
            child.stdout.close()

    async with await open_replica(str(path), sync_server.url) as conn:
        assert (await conn.stats()).cdc_operations == 1  # the engine never recorded that k1 was pushed
        await bounded(conn.push())
        await commit(conn, "k2")
        await bounded(conn.push())
        await bounded(conn.pull())
        assert await local_keys(conn) == ["k0", "k1", "k2"]
    assert remote_keys(sync_server) == ["k0", "k1", "k2"]


async def test_a_push_that_timed_out_after_the_remote_applied_it_is_no_false_alarm(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute(TABLE)
    path = tmp_path / "a.db"
    await make_replica(path, sync_server, pushed=["k0"])
    with DelayingProxy(sync_server.port) as proxy:
        async with await open_replica(str(path), proxy.url) as conn:
            await commit(conn, "k1")
            conn.request_timeout = 0.5
            proxy.hold_answers(PUSH_BATCH)
            with pytest.raises(turso.OperationalError, match="no answer from"):
                await bounded(conn.push())
            assert remote_keys(sync_server) == ["k0", "k1"]
            proxy.release()
            conn.request_timeout = AWAIT_SECONDS
            await bounded(conn.pull())  # k1 pending: the pull asks the remote first, and finds its own push
            await commit(conn, "k2")
            await bounded(conn.push())
            assert await local_keys(conn) == ["k0", "k1", "k2"]
    assert remote_keys(sync_server) == ["k0", "k1", "k2"]


async def test_a_moved_or_renamed_replica_opens_and_syncs(sync_server: SyncServer, tmp_path: Path) -> None:
    sync_server.execute(TABLE)
    path, moved = tmp_path / "a.db", tmp_path / "elsewhere" / "renamed.db"
    moved.parent.mkdir()
    await make_replica(path, sync_server, pushed=["a0"], pending=["a1"])
    for entry in files_of(path):
        entry.rename(moved.parent / (moved.name + entry.name[len(path.name) :]))

    async with await open_replica(str(moved), sync_server.url) as conn:
        await commit(conn, "a2")
        await bounded(conn.push())
    assert remote_keys(sync_server) == ["a0", "a1", "a2"]


async def test_a_replica_from_before_the_sidecar_is_adopted(sync_server: SyncServer, tmp_path: Path) -> None:
    sync_server.execute(TABLE)
    path = tmp_path / "a.db"
    await make_replica(path, sync_server, pushed=["a0"], pending=["a1"])
    sidecar = Path(str(path) + SIDECAR_SUFFIX)
    sidecar.unlink()

    async with await open_replica(str(path), sync_server.url) as conn:
        await bounded(conn.pull())
        await bounded(conn.push())
        assert sidecar.exists()
    assert remote_keys(sync_server) == ["a0", "a1"]


# --- the safe copy -----------------------------------------------------------------------------------------------


async def test_copy_replica_gives_every_copy_of_its_files_an_identity_of_its_own(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute(TABLE)
    source, image = tmp_path / "source.db", tmp_path / "image" / "app.db"
    image.parent.mkdir()
    await make_replica(source, sync_server, pushed=["s0"])
    await bounded(copy_replica(str(source), str(image)))
    # The image started twice: two plain copies of its files, as a container runtime makes them.
    started = [tmp_path / f"container{n}" / "app.db" for n in (1, 2)]
    for copy in started:
        copy.parent.mkdir()
        copy_files(image, copy)

    async with (
        await open_replica(str(source), sync_server.url) as conn_source,
        await open_replica(str(started[0]), sync_server.url) as conn_one,
        await open_replica(str(started[1]), sync_server.url) as conn_two,
    ):
        identities = {client_id(source), client_id(started[0]), client_id(started[1])}
        assert len(identities) == 3
        acknowledged = await rounds(sync_server, {"s": conn_source, "c": conn_one, "d": conn_two})
        everything = sorted(["s0", *acknowledged])
        assert remote_keys(sync_server) == everything
        for conn in (conn_source, conn_one, conn_two):
            await bounded(conn.pull())
            assert await local_keys(conn) == everything


async def test_copy_replica_refuses_pending_changes_an_open_source_and_an_existing_destination(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute(TABLE)
    source, destination = tmp_path / "source.db", tmp_path / "copy.db"
    await make_replica(source, sync_server, pushed=["s0"], pending=["s1"])
    with pytest.raises(turso.ProgrammingError, match="not pushed yet"):
        await bounded(copy_replica(str(source), str(destination)))
    async with await open_replica(str(source), sync_server.url) as conn:
        with pytest.raises(turso.ProgrammingError, match="already open"):
            await bounded(copy_replica(str(source), str(destination)))
        await bounded(conn.push())
    destination.write_bytes(b"")
    with pytest.raises(ValueError, match="is there already"):
        await bounded(copy_replica(str(source), str(destination)))
    assert [entry.name for entry in files_of(destination)] == ["copy.db"]
    with pytest.raises(turso.ProgrammingError, match="not a sync replica"):
        await bounded(copy_replica(str(tmp_path / "missing.db"), str(tmp_path / "other.db")))
    with pytest.raises(turso.ProgrammingError, match="no replica database there"):
        await bounded(recover_replica(str(tmp_path / "missing.db"), sync_server.url))
    assert not (tmp_path / "other.db").exists() and not list(tmp_path.glob("missing.db*"))


# --- the engine's statements, as this module reads them ----------------------------------------------------------


async def test_every_push_is_checked_with_the_engines_own_query_and_no_request_of_ours(
    sync_server: SyncServer, replica_path: str
) -> None:
    # If a new engine changed the statements it sends, pushes would go unchecked: this fails then.
    sync_server.execute(TABLE)
    async with connect_sync(replica_path, sync_server.url) as conn:
        engine = cast(Optional[SyncEngine], cast(Any, conn)._engine)
        assert engine is not None and engine.identity is not None
        record = engine.identity.record
        sent = engine.http.requests.requests_sent
        marks: list[tuple[int, int]] = []
        for key in ("a", "b"):
            await commit(conn, key)
            await bounded(conn.push())
            [(generation, change)] = sync_server.execute(
                "SELECT pull_gen, change_id FROM turso_sync_last_change_id WHERE client_id = ?",
                (client_id(Path(replica_path)),),
            )
            marks.append((int(cast(int, generation)), int(cast(int, change))))
        assert engine.identity.remote_checks == 2
        assert engine.http.requests.requests_sent - sent == 4  # the engine's own two per push
        # The second push's check found the first push's mark; its own is recorded, unconfirmed until the next check.
        assert record.remote_mark == marks[0] and record.unconfirmed == [marks[1]]


async def test_a_cancelled_recovery_still_finishes_giving_the_replica_its_identity(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    sync_server.execute(TABLE)
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    await make_replica(a, sync_server, pushed=["a0"])
    copy_files(a, b)
    task = asyncio.ensure_future(recover_replica(str(b), sync_server.url))
    await asyncio.sleep(0)  # the recovery has started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # It goes on without its caller: the copy gets an identity of its own.
    assert await wait_until(lambda: client_id(b) != client_id(a))
    async with await open_replica(str(b), sync_server.url) as conn:
        await commit(conn, "b1")
        await bounded(conn.push())
    assert remote_keys(sync_server) == ["a0", "b1"]


async def test_a_database_restored_without_its_sidecar_is_refused_at_its_open(
    sync_server: SyncServer, tmp_path: Path
) -> None:
    # The database and PATH-info put back from a backup, the current PATH-identity left: the sidecar says more was
    # pushed than the database's change log holds, and the remote's mark would pass for this file's own.
    sync_server.execute(TABLE)
    live = await restored_replica(sync_server, tmp_path, same_inodes=True, keep_current_sidecar=True)
    before = fingerprint(live)
    with pytest.raises(ReplicaIdentityError, match="older than") as refused:
        await open_replica(str(live), sync_server.url)
    assert refused.value.reason == "diverged"
    assert {name: digest for name, digest in fingerprint(live).items() if not name.endswith(SIDECAR_SUFFIX)} == {
        name: digest for name, digest in before.items() if not name.endswith(SIDECAR_SUFFIX)
    }
    await recovered(live, sync_server)
    assert remote_keys(sync_server) == ["a0", "a1", "a2"]  # a1 once, though the restored file still had it pending
    async with await open_replica(str(live), sync_server.url) as conn:
        await commit(conn, "a3")
        await bounded(conn.push())
        await bounded(conn.pull())
        assert await local_keys(conn) == ["a0", "a1", "a2", "a3"]
    assert remote_keys(sync_server) == ["a0", "a1", "a2", "a3"]
