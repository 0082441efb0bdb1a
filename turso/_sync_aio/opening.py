"""Opening a replica for `turso.lib_sync_aio.connect_sync`: the checks first, then the driver's own open, then a
bootstrap with deadlines; and closing one when nobody is left to hear of an error."""

import os
from typing import Any, Callable, Optional, Union

from ..lib import Connection as BlockingConnection
from ..lib import Error
from ..lib_sync import ConnectionSync as BlockingConnectionSync
from ..lib_sync import (
    connect_sync as blocking_connect_sync,  # pyright: ignore[reportUnknownVariableType]  # (its cipher parameter)
)
from .engine import SyncEngine
from .errors import native_dbapi_error
from .open_replicas import ReplicaPathClaim
from .replica_files import check_arguments, check_replica_files, describe_remote, replica_files

# A remote URL as connect_sync takes it: a string, or a callable evaluated per request.
RemoteUrl = Optional[Union[str, Callable[[], Optional[str]]]]


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

    def __call__(self) -> BlockingConnectionSync:
        """The plain connector: the driver's own open, bootstrap included (its HTTP has no deadline)."""
        return blocking_connect_sync(self.path, self.remote_url, **self.options)

    def open(self, take_over: Callable[[BlockingConnectionSync, float], SyncEngine]) -> BlockingConnectionSync:
        """On the SQL worker: check, open, let `take_over` drive the engine, and bootstrap a fresh replica. On failure
        nothing is left: the claim is released, and the files this attempt created are removed."""
        check_arguments(self.path, self.remote_url)
        self.path_claim.acquire()
        try:
            check_replica_files(self.path)
            return self._open(take_over)
        except BaseException:
            self.path_claim.release()
            raise

    def _open(self, take_over: Callable[[BlockingConnectionSync, float], SyncEngine]) -> BlockingConnectionSync:
        existing = replica_files(self.path)
        options = self.options
        # A fresh replica opens locally and bootstraps as a pull, with deadlines; partial sync's native open needs the
        # driver's own bootstrap.
        bootstrap = bool(options["bootstrap_if_empty"]) and options["partial_sync_experimental"] is None
        bootstrap = bootstrap and not os.path.exists(self.path + "-info")
        blocking: Optional[BlockingConnectionSync] = None
        engine: Optional[SyncEngine] = None
        try:
            driver_options = dict(options, bootstrap_if_empty=False) if bootstrap else options
            blocking = blocking_connect_sync(self.path, self.remote_url, **driver_options)
            engine = take_over(blocking, (options["long_poll_timeout_ms"] or 0) / 1000)
            if bootstrap:
                engine.bootstrap()
            return blocking
        except BaseException as error:
            close_quietly(engine, blocking)
            for leftover in replica_files(self.path) - existing:
                try:
                    os.remove(leftover)
                except OSError:
                    pass
            dbapi_error = native_dbapi_error(error) or error
            if isinstance(dbapi_error, Error):
                message = f"cannot open sync replica {self.path!r} from {describe_remote(self.remote_url)}: {error}"
                raise type(dbapi_error)(message) from error
            raise


def close_quietly(engine: Optional[SyncEngine], blocking: Optional[BlockingConnection]) -> None:
    """Close an engine and its blocking connection, ignoring errors: for a failed open, or a connection that nobody is
    left to hear from (garbage collected, its event loop closed)."""
    try:
        if engine is not None:
            engine.close()
        if blocking is not None:
            blocking.close()
    except Exception:
        pass
