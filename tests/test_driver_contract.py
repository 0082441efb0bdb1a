"""The driver's private names that turso.lib_sync_aio relies on (all reached in turso/_sync_aio/engine.py), checked
against the pinned driver, so that a release that renames or reshapes one fails here, with a message naming it,
instead of as an AttributeError deep in a sync operation.

Why they are needed at all: the driver's blocking `pull()` does the network wait and the apply in one call, and its
HTTP has no deadline. The engine drives each operation itself over the blocking connection's sync database (`_sync`),
with the URL, token and client name of its HTTP context (`_http_ctx`), performing HTTP through our transport and file
IO through the driver's own `_process_full_read_item` and `_process_full_write_item`.
"""

import asyncio
import inspect
import weakref
from typing import Any

import pytest

import turso.lib
import turso.lib_sync
from testkit.sync_server import SyncServer
from turso._sync_aio.engine import RequestTimeout, SyncEngine
from turso._sync_aio.workers import JobQueue, SerialWorker, pool

# The sync database's operations the engine starts and resumes to their end.
ENGINE_OPERATIONS = ("wait_changes", "apply_changes", "push_changes", "checkpoint", "stats")
# What the engine does with the sync database's IO queue and its items.
QUEUE_METHODS = ("take_io_item", "step_io_callbacks")
ITEM_METHODS = ("request", "status", "push_buffer", "done", "poison")


def _require(condition: object, what: str) -> None:
    if not condition:
        pytest.fail(
            f"the pinned driver no longer has {what}, which turso/_sync_aio/engine.py relies on: adapt the engine to "
            "the new driver (see docs/design.md)"
        )


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_file_items_are_performed_by_the_drivers_own_functions() -> None:
    for name in ("_process_full_read_item", "_process_full_write_item"):
        function: Any = getattr(turso.lib_sync, name, None)
        _require(callable(function), f"turso.lib_sync.{name}")
        _require(_parameters(function) == ["io_item", "req_kind"], f"{name}(io_item, req_kind)")


def test_native_errors_are_mapped_by_the_drivers_own_function() -> None:
    mapping: Any = getattr(turso.lib, "_map_turso_exception", None)
    _require(callable(mapping), "turso.lib._map_turso_exception")
    _require(_parameters(mapping) == ["exc"], "_map_turso_exception(exc)")


async def test_a_blocking_sync_connection_exposes_its_sync_database_http_context_and_statement_io_hook(
    sync_server: SyncServer, replica_path: str
) -> None:
    blocking = turso.lib_sync.connect_sync(replica_path, sync_server.url)  # pyright: ignore[reportUnknownMemberType]
    try:
        database: Any = getattr(blocking, "_sync", None)
        _require(database is not None, "ConnectionSync._sync (the native sync database)")
        for operation in ENGINE_OPERATIONS + QUEUE_METHODS:
            _require(callable(getattr(database, operation, None)), f"the sync database's {operation}()")
        context: Any = getattr(blocking, "_http_ctx", None)
        _require(context is not None, "ConnectionSync._http_ctx (its HTTP context)")
        for method in ("base_url", "token"):
            _require(callable(getattr(context, method, None)), f"_http_ctx.{method}()")
        _require(isinstance(getattr(context, "client_name", None), str), "_http_ctx.client_name")
        _require(callable(getattr(blocking, "extra_io", None)), "ConnectionSync.extra_io (the statement IO hook)")
        # The engine's own path through these names: a pull's two steps, its native steps on a worker of the pool
        # and its request through our HTTP on the loop.
        sync_server.execute("CREATE TABLE t(x TEXT)")
        loop = asyncio.get_running_loop()
        jobs = JobQueue()
        SerialWorker(jobs, loop, weakref.WeakMethod(blocking.close), pool)
        pool.attach(loop)
        engine = SyncEngine(blocking, loop, jobs, RequestTimeout(10.0), long_poll_seconds=0.0)
        try:
            changes: Any = await engine.wait_changes()
            _require(callable(getattr(changes, "empty", None)), "wait_changes' changes.empty()")
            assert changes.empty() is False
            applied: asyncio.Future[None] = loop.create_future()
            jobs.put_nowait((applied, lambda: engine.apply_changes(changes)))
            await asyncio.wait_for(applied, 10)
            assert blocking.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall() == [("t",)]
            assert engine.http.requests.requests_sent >= 1
        finally:
            await engine.http.close()
            pool.detach(loop)
            await pool.wait_exited(5.0)
    finally:
        blocking.close()


def test_io_items_have_the_request_and_completion_methods_the_engine_calls() -> None:
    native: Any = getattr(turso.lib_sync, "PyTursoSyncIoItem", None)
    _require(isinstance(native, type), "turso.lib_sync.PyTursoSyncIoItem (from the native extension)")
    for method in ITEM_METHODS:
        _require(callable(getattr(native, method, None)), f"PyTursoSyncIoItem.{method}()")
    kinds: Any = getattr(turso.lib_sync, "PyTursoSyncIoItemRequestKind", None)
    for kind in ("Http", "FullRead", "FullWrite"):
        _require(hasattr(kinds, kind), f"PyTursoSyncIoItemRequestKind.{kind}")
