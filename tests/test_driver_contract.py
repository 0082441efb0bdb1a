"""The driver's private names that turso.lib_sync_aio relies on (all reached in its _SyncEngine), checked against the
pinned driver, so that a release that renames or reshapes one fails here, with a message naming it, instead of as an
AttributeError deep in a sync operation.

Why they are needed at all: the driver's blocking `pull()` does the network wait and the apply in one call, which
would keep the SQL worker waiting on the network. The module drives the two steps itself, with the driver's own
`_run_op`, over the blocking connection's sync database (`_sync`) and HTTP context (`_http_ctx`).
"""

import inspect
from typing import Any

import pytest

import turso.lib_sync
from testkit.sync_server import SyncServer

# The sync database's operations the module starts, each driven to its end by _run_op.
ENGINE_OPERATIONS = ("wait_changes", "apply_changes", "push_changes", "checkpoint", "stats")


def _require(condition: object, what: str) -> None:
    if not condition:
        pytest.fail(
            f"the pinned driver no longer has {what}, which turso.lib_sync_aio's _SyncEngine relies on: "
            "adapt _SyncEngine to the new driver (see the README, 'How a connection works')"
        )


def test_run_op_drives_one_operation_over_a_sync_database_and_an_http_context() -> None:
    run_op: Any = getattr(turso.lib_sync, "_run_op", None)
    _require(callable(run_op), "turso.lib_sync._run_op")
    parameters = list(inspect.signature(run_op).parameters)
    _require(parameters == ["sync", "op", "ctx"], f"_run_op(sync, op, ctx) (it takes {parameters})")


def test_http_context_is_built_from_url_token_and_client_name_and_read_per_request() -> None:
    context_class: Any = getattr(turso.lib_sync, "_HttpContext", None)
    _require(isinstance(context_class, type), "turso.lib_sync._HttpContext")
    parameters = list(inspect.signature(context_class).parameters)
    _require(
        parameters == ["remote_url", "auth_token", "client_name"],
        f"_HttpContext(remote_url, auth_token, client_name) (it takes {parameters})",
    )
    for method in ("base_url", "token"):
        _require(callable(getattr(context_class, method, None)), f"_HttpContext.{method}()")


def test_a_blocking_sync_connection_exposes_its_sync_database_http_context_and_page_fetch_hook(
    sync_server: SyncServer, replica_path: str
) -> None:
    blocking = turso.lib_sync.connect_sync(replica_path, sync_server.url)  # pyright: ignore[reportUnknownMemberType]
    try:
        database: Any = getattr(blocking, "_sync", None)
        _require(database is not None, "ConnectionSync._sync (the native sync database)")
        for operation in ENGINE_OPERATIONS:
            _require(callable(getattr(database, operation, None)), f"the sync database's {operation}()")
        context: Any = getattr(blocking, "_http_ctx", None)
        _require(
            isinstance(context, getattr(turso.lib_sync, "_HttpContext")), "ConnectionSync._http_ctx (an _HttpContext)"
        )
        for field in ("remote_url", "auth_token", "client_name"):
            _require(hasattr(context, field), f"_HttpContext.{field}")
        _require(callable(getattr(blocking, "extra_io", None)), "ConnectionSync.extra_io (the page fetch hook)")
        # The module's own path through these names: a pull's two steps, as _SyncEngine takes them.
        sync_server.execute("CREATE TABLE t(x TEXT)")
        run_op: Any = getattr(turso.lib_sync, "_run_op")
        changes: Any = run_op(database, database.wait_changes(), context)
        _require(callable(getattr(changes, "empty", None)), "wait_changes' changes.empty()")
        assert changes.empty() is False
        run_op(database, database.apply_changes(changes), context)
        assert blocking.execute("SELECT name FROM sqlite_master WHERE name = 't'").fetchall() == [("t",)]
    finally:
        blocking.close()
