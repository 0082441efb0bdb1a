"""A notes service on a Turso sync replica: the README's FastAPI recipe, whole (docs/service.md explains each part).

One connection to the local replica is shared by every request; writes run in `conn.transaction()` blocks, so one
request's rollback never undoes another's commit. Background sync keeps the replica in sync with the remote (and
its WAL bounded); `/health` answers 503 while the sync is not healthy; every `turso.Error` becomes a 503. A report
that may be slow (`/notes/activity`) is bounded with `asyncio.timeout`: past it the query stops, the request answers
504, and the shared connection serves the next requests at once.

Run it (a local `tursodb --sync-server` is `make server`):

    TURSO_DATABASE_URL=http://127.0.0.1:8080 uvicorn --app-dir examples fastapi_app:app

Settings, from the environment:
- TURSO_DATABASE_URL: the remote (libsql://db-org.turso.io, https://..., or http://127.0.0.1:PORT); required.
- TURSO_AUTH_TOKEN: its auth token; none for a local server.
- NOTES_REPLICA: the local replica file (default notes.db).
- NOTES_SYNC_INTERVAL: seconds between background sync rounds (default 5).
- NOTES_REQUEST_TIMEOUT: seconds a sync request may wait for the remote (default: the library's, 30).
- NOTES_CHECKPOINT_WAL_BYTES: the WAL size past which background sync checkpoints (default 16 MiB; `none`: never).
- NOTES_QUERY_SECONDS: how long `/notes/activity` may run its query before it answers 504 (default 2).
"""

import asyncio
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Optional, cast

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import turso
import turso.aio.sync
from turso.background_sync_aio import CHECKPOINT_WAL_BYTES, BackgroundSync
from turso.lib_sync_aio import ConnectionSync

if sys.version_info >= (3, 11):
    from asyncio import timeout
else:  # Python 3.10: async-timeout, which aiohttp installs there, is the same context manager
    from async_timeout import timeout  # pyright: ignore[reportMissingImports, reportUnknownVariableType]

# How long POST /sync waits for its round before it answers 202 (the round goes on), and GET /stats for the counters
# (they wait for a sync in flight, in its turn) before it answers 503. uvicorn waits for requests in flight before
# it runs the lifespan's shutdown, so no handler may wait on the network unbounded: this bound, plus the lifespan's
# exit (under a second), is what a SIGTERM can take.
SYNC_WAIT_SECONDS = 0.5

SCHEMA = "CREATE TABLE IF NOT EXISTS notes(id TEXT PRIMARY KEY, body TEXT NOT NULL, updated REAL NOT NULL)"

# How many notes were last updated in each bucket of :bucket seconds from :since to :until, for the buckets with any.
# Its work grows with the number of buckets: a fine report over a long span takes long, hence the timeout around it.
ACTIVITY = """
WITH RECURSIVE buckets(start) AS (
    SELECT :since UNION ALL SELECT start + :bucket FROM buckets WHERE start + :bucket < :until
)
SELECT start, notes FROM (
    SELECT start, (SELECT count(*) FROM notes WHERE updated >= start AND updated < start + :bucket) AS notes
    FROM buckets
)
WHERE notes > 0
"""


@dataclass(frozen=True)
class Settings:
    """The service's settings, read from the environment once at start-up."""

    url: str
    token: Optional[str]
    replica: str
    sync_interval: float
    request_timeout: Optional[float]
    checkpoint_wal_bytes: Optional[int]
    query_seconds: float

    @classmethod
    def from_environment(cls) -> "Settings":
        """Read the settings; a missing TURSO_DATABASE_URL is a clear error at start-up."""
        url = os.environ.get("TURSO_DATABASE_URL")
        if not url:
            raise RuntimeError("set TURSO_DATABASE_URL to the remote database's URL (see examples/fastapi_app.py)")
        timeout = os.environ.get("NOTES_REQUEST_TIMEOUT")
        wal_bytes = os.environ.get("NOTES_CHECKPOINT_WAL_BYTES", str(CHECKPOINT_WAL_BYTES))
        return cls(
            url=url,
            token=os.environ.get("TURSO_AUTH_TOKEN") or None,
            replica=os.environ.get("NOTES_REPLICA", "notes.db"),
            sync_interval=float(os.environ.get("NOTES_SYNC_INTERVAL", "5")),
            request_timeout=float(timeout) if timeout else None,
            checkpoint_wal_bytes=None if wal_bytes == "none" else int(wal_bytes),
            query_seconds=float(os.environ.get("NOTES_QUERY_SECONDS", "2")),
        )


@dataclass(frozen=True)
class Service:
    """What the requests share: the replica's one connection, its background sync, and the bound on slow queries."""

    replica: ConnectionSync
    background: BackgroundSync
    query_seconds: float


def configure_logging() -> None:
    """Show the library's WARNINGs (a failing background sync, a request left behind at close) and INFOs (sync works
    again). pyturso gives the `turso` logger a NullHandler, so nothing is printed unless the application says so."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("turso").setLevel(logging.INFO)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
    """Open the replica and start background sync; at shutdown stop both, in under a second whatever the remote does."""
    configure_logging()
    settings = Settings.from_environment()
    async with turso.aio.sync.connect(settings.replica, settings.url, auth_token=settings.token) as replica:
        if settings.request_timeout is not None:
            replica.request_timeout = settings.request_timeout
        async with replica.transaction():
            await replica.execute(SCHEMA)
        async with replica.sync_in_background(
            settings.sync_interval, checkpoint_wal_bytes=settings.checkpoint_wal_bytes
        ) as background:
            app.state.service = Service(replica, background, settings.query_seconds)
            yield


app = FastAPI(title="notes on a Turso sync replica", lifespan=lifespan)


def service(request: Request) -> Service:
    """The shared replica and background sync, for a route (a FastAPI dependency)."""
    return cast(Service, request.app.state.service)


Shared = Annotated[Service, Depends(service)]


@app.exception_handler(turso.Error)
async def database_unavailable(request: Request, error: turso.Error) -> JSONResponse:
    """Any error of the database or of a sync: the service cannot do it now (503), and says why."""
    return JSONResponse(status_code=503, content={"detail": f"{type(error).__name__}: {error}"})


class NoteIn(BaseModel):
    """A note's text, as a client sends it."""

    body: str


class Note(BaseModel):
    """A note as the service returns it."""

    id: str
    body: str
    updated: float


def as_note(row: Any) -> Note:
    return Note(id=row[0], body=row[1], updated=row[2])


@app.post("/notes", status_code=201)
async def create_note(note: NoteIn, shared: Shared) -> Note:
    """Write a note; once this answers 201 the note is committed in the replica, and background sync pushes it."""
    created = Note(id=str(uuid.uuid4()), body=note.body, updated=time.time())
    async with shared.replica.transaction():
        await shared.replica.execute(
            "INSERT INTO notes(id, body, updated) VALUES (?, ?, ?)", (created.id, created.body, created.updated)
        )
    return created


@app.get("/notes")
async def list_notes(shared: Shared, limit: int = 100) -> list[Note]:
    """The most recently updated notes (a read: no transaction needed)."""
    rows = await shared.replica.execute_fetchall(
        "SELECT id, body, updated FROM notes ORDER BY updated DESC LIMIT ?", (limit,)
    )
    return [as_note(row) for row in rows]


class Bucket(BaseModel):
    """How many notes were last updated in the bucket of time that begins at `start` (Unix time)."""

    start: float
    notes: int


@app.get("/notes/activity")
async def note_activity(
    shared: Shared, since: float, bucket_seconds: Annotated[float, Query(gt=0)] = 3600.0
) -> list[Bucket]:
    """How many notes were last updated in each bucket of `bucket_seconds` since `since` (Unix time), for the buckets
    with any. A fine report over a long span is a slow query: past `query_seconds` it stops (cancelling the await
    interrupts it), the answer is 504, and the shared connection serves the other requests at once."""
    parameters = {"since": since, "bucket": bucket_seconds, "until": time.time()}
    try:
        async with timeout(shared.query_seconds):
            rows = await shared.replica.execute_fetchall(ACTIVITY, parameters)
    except asyncio.TimeoutError:
        raise HTTPException(
            status_code=504, detail=f"the report took over {shared.query_seconds:g} s: ask for larger buckets"
        ) from None
    return [Bucket(start=row[0], notes=row[1]) for row in rows]


@app.get("/notes/{note_id}")
async def read_note(note_id: str, shared: Shared) -> Note:
    """One note, or 404."""
    rows = await shared.replica.execute_fetchall("SELECT id, body, updated FROM notes WHERE id = ?", (note_id,))
    if not rows:
        raise HTTPException(status_code=404, detail="no such note")
    return as_note(rows[0])


@app.put("/notes/{note_id}")
async def update_note(note_id: str, note: NoteIn, shared: Shared) -> Note:
    """Change a note's text, or 404; the read and the write are one transaction."""
    updated = time.time()
    async with shared.replica.transaction():
        cursor = await shared.replica.execute(
            "UPDATE notes SET body = ?, updated = ? WHERE id = ?", (note.body, updated, note_id)
        )
        if cursor.rowcount == 0:
            raise HTTPException(status_code=404, detail="no such note")  # the block rolls back
    return Note(id=note_id, body=note.body, updated=updated)


@app.delete("/notes/{note_id}", status_code=204)
async def delete_note(note_id: str, shared: Shared) -> Response:
    """Delete a note, or 404."""
    async with shared.replica.transaction():
        cursor = await shared.replica.execute("DELETE FROM notes WHERE id = ?", (note_id,))
        if cursor.rowcount == 0:
            raise HTTPException(status_code=404, detail="no such note")
    return Response(status_code=204)


@app.get("/health")
async def health(shared: Shared) -> JSONResponse:
    """200 while background sync is healthy (its last success is recent enough), else 503, with the details."""
    status = shared.background.status
    body = {
        "healthy": status.healthy,
        "rounds": status.rounds,
        "consecutive_failures": status.consecutive_failures,
        "last_success_unix_time": status.last_success_unix_time,
        "round_started_unix_time": status.round_started_unix_time,
        "last_error": repr(status.last_error) if status.last_error is not None else None,
    }
    return JSONResponse(status_code=200 if status.healthy else 503, content=body)


@app.get("/stats")
async def replica_stats(shared: Shared, response: Response) -> dict[str, object]:
    """The replica's sync counters, for monitoring: pending changes, WAL size, last pull and push, network bytes; 503
    while a sync in flight holds them past SYNC_WAIT_SECONDS."""
    try:
        stats = await asyncio.wait_for(shared.replica.stats(), SYNC_WAIT_SECONDS)
    except asyncio.TimeoutError:
        response.status_code = 503
        return {"error": "the replica's counters wait for a sync in flight; try again"}
    return {
        "pending_changes": stats.cdc_operations,
        "wal_bytes": stats.main_wal_size,
        "last_pull_unix_time": stats.last_pull_unix_time,
        "last_push_unix_time": stats.last_push_unix_time,
        "pulled_revision": stats.revision,
        "network_sent_bytes": stats.network_sent_bytes,
        "network_received_bytes": stats.network_received_bytes,
    }


@app.post("/sync")
async def sync_now(shared: Shared, response: Response) -> dict[str, object]:
    """A sync round now: 200 with whether remote changes came in, 202 if it is still running after
    SYNC_WAIT_SECONDS (it goes on), 503 if it failed."""
    try:
        # sync_now() is shielded: the timeout stops this wait, not the round.
        changed = await asyncio.wait_for(shared.background.sync_now(), SYNC_WAIT_SECONDS)
    except asyncio.TimeoutError:
        response.status_code = 202
        return {"done": False}
    return {"done": True, "changed": changed}
