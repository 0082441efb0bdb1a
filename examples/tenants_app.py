"""A notes service with a database per tenant: `/t/{tenant}/notes`, each tenant's notes in a replica of its own
database, from a `ReplicaPool` (docs/tenants.md explains each part).

The pool opens a tenant's replica on its first request and shares it with the requests that use it at the same time;
it keeps at most TENANTS_MAX_OPEN open, closes the least recently used idle one to make room, closes replicas idle for
TENANTS_IDLE_SECONDS, and pushes a replica's local changes before closing it. Writes run in `conn.transaction()`
blocks; every `turso.Error` becomes a 503, and so does a request that waited too long for a replica (`PoolTimeout`).

Run it (a local `tursodb --sync-server` is `make server`):

    TENANT_DATABASE_URL=http://127.0.0.1:8080 uvicorn --app-dir examples tenants_app:app

Settings, from the environment:
- TENANT_DATABASE_URL: each tenant's remote. A template with `{tenant}` (`libsql://{tenant}-myorg.turso.io`, a Turso
  database per tenant), or a comma-separated list of URLs over which tenants are spread by a hash of their name (local
  sync servers for development, where tenants share a database: rows carry their tenant); required.
- TURSO_AUTH_TOKEN: the token of the tenants' databases (a group token); none for local servers.
- TENANTS_DIR: the folder of the replica files, one per tenant (default `tenants`).
- TENANTS_MAX_OPEN (default 100), TENANTS_IDLE_SECONDS (300), TENANTS_SYNC_INTERVAL (5), TENANTS_WAIT_TIMEOUT (5):
  the pool's max_open, idle_seconds, sync_interval and wait_timeout.
- TENANTS_REQUEST_TIMEOUT: seconds a sync request may wait for a remote (default: the library's, 30).
- TENANTS_CLOSE_TIMEOUT: how long shutdown waits for the final pushes (default 2); it exits about a second after.
"""

import logging
import os
import time
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Optional, cast

from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import turso
from turso.lib_sync_aio import ConnectionSync, PoolTimeout, ReplicaPool

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS notes("
    "id TEXT PRIMARY KEY, tenant TEXT NOT NULL, body TEXT NOT NULL, updated REAL NOT NULL)"
)
# A tenant key becomes a file name: only these.
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
# What a client is told to wait before trying again when no replica was free in time.
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True)
class Settings:
    """The service's settings, read from the environment once at start-up."""

    remote: str
    token: Optional[str]
    folder: str
    max_open: int
    idle_seconds: float
    sync_interval: float
    wait_timeout: float
    request_timeout: Optional[float]
    close_timeout: float

    @classmethod
    def from_environment(cls) -> "Settings":
        """Read the settings; a missing TENANT_DATABASE_URL is a clear error at start-up."""
        remote = os.environ.get("TENANT_DATABASE_URL")
        if not remote:
            raise RuntimeError("set TENANT_DATABASE_URL to the tenants' remote (see examples/tenants_app.py)")
        timeout = os.environ.get("TENANTS_REQUEST_TIMEOUT")
        return cls(
            remote=remote,
            token=os.environ.get("TURSO_AUTH_TOKEN") or None,
            folder=os.environ.get("TENANTS_DIR", "tenants"),
            max_open=int(os.environ.get("TENANTS_MAX_OPEN", "100")),
            idle_seconds=float(os.environ.get("TENANTS_IDLE_SECONDS", "300")),
            sync_interval=float(os.environ.get("TENANTS_SYNC_INTERVAL", "5")),
            wait_timeout=float(os.environ.get("TENANTS_WAIT_TIMEOUT", "5")),
            request_timeout=float(timeout) if timeout else None,
            close_timeout=float(os.environ.get("TENANTS_CLOSE_TIMEOUT", "2")),
        )

    def remote_url_for(self, tenant: str) -> str:
        """The tenant's remote: the template filled in, or one of the listed URLs, always the same for a tenant."""
        if "{tenant}" in self.remote:
            return self.remote.replace("{tenant}", tenant)
        urls = [url.strip() for url in self.remote.split(",") if url.strip()]
        return urls[zlib.crc32(tenant.encode()) % len(urls)]

    def path_for(self, tenant: str) -> str:
        """The tenant's replica file (the tenant key was checked against TENANT_PATTERN)."""
        return os.path.join(self.folder, f"{tenant}.db")


def configure_logging() -> None:
    """Show the library's WARNINGs (a push that failed before a close, a failing background sync) and INFOs."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("turso").setLevel(logging.INFO)


async def create_schema(tenant: str, conn: ConnectionSync) -> None:
    """Run on each replica as it opens, before any request gets it: the table, if the tenant's database lacks it."""
    async with conn.transaction():
        await conn.execute(SCHEMA)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncGenerator[None, None]:
    """Make the pool; at shutdown close it: every replica pushes its changes, within TENANTS_CLOSE_TIMEOUT."""
    configure_logging()
    settings = Settings.from_environment()
    os.makedirs(settings.folder, exist_ok=True)
    token = settings.token
    pool = ReplicaPool(
        path_for=settings.path_for,
        remote_url_for=settings.remote_url_for,
        auth_token_for=lambda tenant: token,
        max_open=settings.max_open,
        idle_seconds=settings.idle_seconds,
        sync_interval=settings.sync_interval,
        wait_timeout=settings.wait_timeout,
        request_timeout=settings.request_timeout,
        configure=create_schema,
    )
    app.state.pool = pool
    try:
        yield
    finally:
        # The pool logs which tenants it could not push (their changes stay in the files: the next start pushes them).
        await pool.close(timeout=settings.close_timeout)


app = FastAPI(title="notes with a database per tenant", lifespan=lifespan)

Tenant = Annotated[str, Path(pattern=TENANT_PATTERN, description="lowercase letters, digits, - and _")]


async def tenant_connection(tenant: Tenant, request: Request) -> AsyncIterator[ConnectionSync]:
    """The tenant's connection for the request (a FastAPI dependency), held while the route runs."""
    pool = cast(ReplicaPool, request.app.state.pool)
    async with pool.connection(tenant) as conn:
        yield conn


# scope="function": given back as soon as the route returns, not after the response has been sent.
Replica = Annotated[ConnectionSync, Depends(tenant_connection, scope="function")]


@app.exception_handler(PoolTimeout)
async def no_replica_in_time(request: Request, error: PoolTimeout) -> JSONResponse:
    """Every replica was busy for the whole wait: try again shortly (503 with Retry-After)."""
    return JSONResponse(
        status_code=503, content={"detail": str(error)}, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


@app.exception_handler(turso.Error)
async def database_unavailable(request: Request, error: turso.Error) -> JSONResponse:
    """Any error of the database or of a sync (a tenant's first open while its remote is down, say): 503."""
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


@app.post("/t/{tenant}/notes", status_code=201)
async def create_note(tenant: Tenant, note: NoteIn, conn: Replica) -> Note:
    """Write a note; once this answers 201 it is committed in the tenant's replica, and is pushed by background sync
    or, at the latest, before the replica closes (or by its next open, if the remote was down then)."""
    created = Note(id=str(uuid.uuid4()), body=note.body, updated=time.time())
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO notes(id, tenant, body, updated) VALUES (?, ?, ?, ?)",
            (created.id, tenant, created.body, created.updated),
        )
    return created


@app.get("/t/{tenant}/notes")
async def list_notes(tenant: Tenant, conn: Replica, limit: int = 100) -> list[Note]:
    """The tenant's most recently updated notes."""
    rows = await conn.execute_fetchall(
        "SELECT id, body, updated FROM notes WHERE tenant = ? ORDER BY updated DESC LIMIT ?", (tenant, limit)
    )
    return [as_note(row) for row in rows]


@app.get("/t/{tenant}/notes/{note_id}")
async def read_note(tenant: Tenant, note_id: str, conn: Replica) -> Note:
    """One note, or 404."""
    rows = await conn.execute_fetchall(
        "SELECT id, body, updated FROM notes WHERE tenant = ? AND id = ?", (tenant, note_id)
    )
    if not rows:
        raise HTTPException(status_code=404, detail="no such note")
    return as_note(rows[0])


@app.put("/t/{tenant}/notes/{note_id}")
async def update_note(tenant: Tenant, note_id: str, note: NoteIn, conn: Replica) -> Note:
    """Change a note's text, or 404."""
    updated = time.time()
    async with conn.transaction():
        cursor = await conn.execute(
            "UPDATE notes SET body = ?, updated = ? WHERE tenant = ? AND id = ?", (note.body, updated, tenant, note_id)
        )
        if cursor.rowcount == 0:
            raise HTTPException(status_code=404, detail="no such note")  # the block rolls back
    return Note(id=note_id, body=note.body, updated=updated)


@app.delete("/t/{tenant}/notes/{note_id}", status_code=204)
async def delete_note(tenant: Tenant, note_id: str, conn: Replica) -> Response:
    """Delete a note, or 404."""
    async with conn.transaction():
        cursor = await conn.execute("DELETE FROM notes WHERE tenant = ? AND id = ?", (tenant, note_id))
        if cursor.rowcount == 0:
            raise HTTPException(status_code=404, detail="no such note")
    return Response(status_code=204)


@app.get("/t/{tenant}/health")
async def tenant_health(tenant: Tenant, request: Request) -> JSONResponse:
    """The tenant's background sync: 200 while healthy or while its replica is closed, 503 while its sync fails."""
    pool = cast(ReplicaPool, request.app.state.pool)
    status = pool.sync_status(tenant)
    if status is None:
        return JSONResponse(status_code=200, content={"open": False})
    body = {
        "open": True,
        "healthy": status.healthy,
        "rounds": status.rounds,
        "consecutive_failures": status.consecutive_failures,
        "last_success_unix_time": status.last_success_unix_time,
        "last_error": repr(status.last_error) if status.last_error is not None else None,
    }
    return JSONResponse(status_code=200 if status.healthy else 503, content=body)


@app.get("/health")
async def health(request: Request) -> dict[str, object]:
    """The pool's gauges and counters, and the tenants whose sync fails. One tenant's remote being down does not make
    the service unhealthy (a load balancer would take every tenant away), so this answers 200."""
    pool = cast(ReplicaPool, request.app.state.pool)
    stats = pool.get_stats()
    failing = sorted(tenant for tenant, status in pool.sync_statuses().items() if not status.healthy)
    return {
        "open": stats.open,
        "held": stats.held,
        "idle": stats.idle,
        "waiting": stats.waiting,
        "opens": stats.opens,
        "failed_opens": stats.failed_opens,
        "evictions": stats.evictions,
        "idle_closes": stats.idle_closes,
        "failed_pushes_at_close": stats.failed_pushes_at_close,
        "timeouts": stats.timeouts,
        "tenants_failing_sync": failing,
    }
