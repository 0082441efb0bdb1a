"""`make demo`: two async replicas of one database, a write pushed from one and pulled into the other.

It syncs with the remote at TURSO_DATABASE_URL (and TURSO_AUTH_TOKEN, for Turso Cloud) and writes to a table named
turso_sync_aio_notes there. `make demo` sets it to a local `tursodb --sync-server` that scripts/dev_server.py
starts for the run, unless TURSO_DATABASE_URL is already set.
"""

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import turso.aio.sync
from turso.lib_sync_aio import ConnectionSync, SyncStats


def remote_database() -> tuple[str, str | None]:
    """The (url, auth token) to sync with: TURSO_DATABASE_URL and TURSO_AUTH_TOKEN (none for a local server)."""
    url = os.environ.get("TURSO_DATABASE_URL")
    if not url:
        sys.exit(
            "TURSO_DATABASE_URL is not set: run `make demo`, which starts a local sync server for the run, "
            "or start one with `make server` and set TURSO_DATABASE_URL to the URL it prints"
        )
    print(f"remote: {url}")
    return url, os.environ.get("TURSO_AUTH_TOKEN")


def describe(stats: SyncStats) -> str:
    return (
        f"pending changes={stats.cdc_operations} wal={stats.main_wal_size}B pulled revision={stats.revision} "
        f"sent={stats.network_sent_bytes}B received={stats.network_received_bytes}B"
    )


async def count_notes(conn: ConnectionSync) -> int:
    cursor = await conn.execute("SELECT count(*) FROM turso_sync_aio_notes")
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def run(url: str, token: str | None, workdir: Path) -> None:
    started = time.perf_counter()
    async with turso.aio.sync.connect(str(workdir / "alice.db"), url, auth_token=token) as alice:
        await alice.execute(
            # Text keys made on each replica cannot collide; rowid keys would (docs/api.md, "Keys that cannot collide").
            "CREATE TABLE IF NOT EXISTS turso_sync_aio_notes(id TEXT PRIMARY KEY, author TEXT, body TEXT, written REAL)"
        )
        await alice.commit()
        await alice.push()
        async with turso.aio.sync.connect(str(workdir / "bob.db"), url, auth_token=token) as bob:
            print(f"bob opened his replica with {await count_notes(bob)} notes")

            notes = [
                (str(uuid.uuid4()), "alice", f"note {n} written at {time.strftime('%H:%M:%S')}", time.time() + n * 1e-3)
                for n in range(3)
            ]
            await alice.executemany(
                "INSERT INTO turso_sync_aio_notes(id, author, body, written) VALUES (?, ?, ?, ?)", notes
            )
            await alice.commit()
            print(f"alice wrote {len(notes)} notes locally: {describe(await alice.stats())}")
            # sync(): push, then pull. The revision in the stats is the remote's as of the last pull (a push alone
            # leaves it where it was), so the pull after the push is what shows the revision alice's notes made.
            await alice.sync()
            print(f"alice pushed and pulled:      {describe(await alice.stats())}")

            changed = await bob.pull()
            print(f"bob pulled (new changes: {changed}); he now has {await count_notes(bob)} notes")
            cursor = await bob.execute("SELECT author, body FROM turso_sync_aio_notes ORDER BY written DESC LIMIT 3")
            for author, body in reversed(await cursor.fetchall()):
                print(f"  {author}: {body}")
            print(f"bob pulled again (new changes: {await bob.pull()})")
            await bob.checkpoint()
            print(f"bob after checkpoint:         {describe(await bob.stats())}")
    print(f"done in {time.perf_counter() - started:.2f}s; both replicas closed, their threads stopped")


def main() -> None:
    url, token = remote_database()
    with tempfile.TemporaryDirectory(prefix="turso-sync-aio-demo-") as workdir:
        try:
            asyncio.run(run(url, token, Path(workdir)))
        except KeyboardInterrupt:
            print("interrupted")


if __name__ == "__main__":
    main()
