"""Opening a replica for `turso.lib_sync_aio.connect_sync`: the checks first, then the driver's own open on a thread of
the pool, then a bootstrap with deadlines driven from the event loop; and closing one when nobody is left to hear of
an error."""

import asyncio
import os
from typing import Any, Awaitable, Callable, Optional, Union

from ..lib import Connection as BlockingConnection
from ..lib import Error
from ..lib_sync import ConnectionSync as BlockingConnectionSync
from ..lib_sync import (
    connect_sync as blocking_connect_sync,  # pyright: ignore[reportUnknownVariableType]  # (its cipher parameter)
)
from .engine import SyncEngine
from .errors import native_dbapi_error
from .loop_turns import LoopTurns
from .open_replicas import ReplicaPathClaim
from .replica_files import check_arguments, check_replica_files, describe_remote, replica_files

# A remote URL as connect_sync takes it: a string, or a callable evaluated per request.
RemoteUrl = Optional[Union[str, Callable[[], Optional[str]]]]

# How many replicas of one event loop run the native steps of their open at once (one per core): each holds a thread
# of the pool, and the interpreter lock for part of it, so a thousand opens at once would take every thread from the
# connections already open, and starve the loop of the lock.
OPENS_AT_ONCE = max(2, os.cpu_count() or 1)
_opening_turns = LoopTurns(OPENS_AT_ONCE)


class ReplicaOpener:
    """connect_sync's connector: claims the replica's file, checks its files, opens it with the driver's
    `connect_sync`, hands its engine over, and bootstraps a fresh replica through our transport."""

    def __init__(self, path: str, remote_url: RemoteUrl, options: dict[str, Any]) -> None:
        """An opener of `path`; `options` are the driver's connect_sync keyword arguments."""
        self.path = path
        self.remote_url = remote_url
        self.options = options
        # Held from the open until the connection has closed the replica.
        self.path_claim = ReplicaPathClaim(path)
        # The files of the replica before this open: what a failed open created is removed.
        self._existing: set[str] = set()

    def __call__(self) -> BlockingConnectionSync:
        """The plain connector: the driver's own open, bootstrap included (its HTTP has no deadline)."""
        return blocking_connect_sync(self.path, self.remote_url, **self.options)

    async def open(
        self,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        take_over: Callable[[BlockingConnectionSync, float], SyncEngine],
    ) -> tuple[BlockingConnectionSync, SyncEngine]:
        """On the event loop: check, claim the path, open on the connection's worker (`run` queues a job there), let
        `take_over` drive the engine, and bootstrap a fresh replica. On failure nothing is left: the claim is released,
        and the files this attempt created are removed."""
        check_arguments(self.path, self.remote_url)
        await self.path_claim.acquire()
        opened: Optional[tuple[BlockingConnectionSync, SyncEngine, bool]] = None
        try:
            async with _opening_turns():
                opened = await run(lambda: self._open_locally(take_over))
            blocking, engine, bootstrap = opened
            if bootstrap:
                await self._bootstrap(engine, run)
            return blocking, engine
        except BaseException as error:
            await asyncio.shield(run(lambda: self._undo(opened)))
            reported = self._reported(error)
            if reported is error:
                raise
            raise reported from error

    def reopen(self, take_over: Callable[[BlockingConnectionSync, float], SyncEngine]) -> BlockingConnectionSync:
        """On the worker, with the path claimed: open the replica again (it exists: no bootstrap)."""
        blocking, _, _ = self._open_locally(take_over)
        return blocking

    def _open_locally(
        self, take_over: Callable[[BlockingConnectionSync, float], SyncEngine]
    ) -> tuple[BlockingConnectionSync, SyncEngine, bool]:
        # On the worker: the driver's own open, made local for a fresh replica (bootstrapped by us after), then our
        # engine in charge. Returns the connection, its engine, and whether to bootstrap.
        self._existing = replica_files(self.path)
        check_replica_files(self.path)
        options = self.options
        # A fresh replica opens locally and bootstraps as a pull, with deadlines; partial sync's native open needs the
        # driver's own bootstrap.
        bootstrap = bool(options["bootstrap_if_empty"]) and options["partial_sync_experimental"] is None
        bootstrap = bootstrap and not os.path.exists(self.path + "-info")
        driver_options = dict(options, bootstrap_if_empty=False) if bootstrap else options
        blocking = blocking_connect_sync(self.path, self.remote_url, **driver_options)
        try:
            engine = take_over(blocking, (options["long_poll_timeout_ms"] or 0) / 1000)
        except BaseException:
            close_quietly(None, blocking)
            raise
        return blocking, engine, bootstrap

    async def _bootstrap(self, engine: SyncEngine, run: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
        # Fill a fresh replica from the remote, as a pull with deadlines (nothing else runs on it yet).
        changes = await engine.wait_changes()
        if changes is not None and not changes.empty():
            async with _opening_turns():
                await run(lambda: engine.apply_changes(changes))

    def _undo(self, opened: Optional[tuple[BlockingConnectionSync, SyncEngine, bool]]) -> None:
        # On the worker, after a failed open: close what was opened, remove the files this attempt created, and let
        # the path go.
        try:
            if opened is not None:
                close_quietly(opened[1], opened[0])
            for leftover in replica_files(self.path) - self._existing:
                try:
                    os.remove(leftover)
                except OSError:
                    pass
        finally:
            self.path_claim.release()

    def _reported(self, error: BaseException) -> BaseException:
        # A database error says which replica and which remote; anything else stays as it is.
        dbapi_error = native_dbapi_error(error) or error
        if isinstance(dbapi_error, Error):
            message = f"cannot open sync replica {self.path!r} from {describe_remote(self.remote_url)}: {error}"
            return type(dbapi_error)(message)
        return error


def close_quietly(engine: Optional[SyncEngine], blocking: Optional[BlockingConnection]) -> None:
    """Close an engine's blocking connection, ignoring errors: for a failed open, or a connection that nobody is left
    to hear from (garbage collected, its event loop closed). The engine's HTTP is let go on the loop."""
    del engine
    try:
        if blocking is not None:
            blocking.close()
    except Exception:
        pass
