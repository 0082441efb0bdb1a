"""Opening a replica for `turso.lib_sync_aio.connect_sync`: the checks first, then the driver's own open, then a
bootstrap with deadlines; closing one when nobody is left to hear of an error; and the blocking parts of
`copy_replica` and `recover_replica`, which open a closed replica with the driver alone."""

import os
from typing import Any, Callable, Optional, Sequence, Union, cast

from ..lib import Connection as BlockingConnection
from ..lib import Error, ProgrammingError
from ..lib_sync import ConnectionSync as BlockingConnectionSync
from ..lib_sync import (
    connect_sync as blocking_connect_sync,  # pyright: ignore[reportUnknownVariableType]  # (its cipher parameter)
)
from .engine import SyncEngine, post_through
from .errors import native_dbapi_error
from .open_replicas import ReplicaPathClaim
from .replica_files import check_arguments, check_replica_files, describe_remote, replica_files
from .replica_identity import (
    ReplicaIdentityError,
    ReplicaRecovery,
    copy_replica_files,
    highest_change_id,
    open_identity,
    read_info,
    recover_identity,
)
from .transport import SyncTransport

# The client name (and User-Agent) of recover_replica's requests when none is given: the driver's default.
DEFAULT_CLIENT_NAME = "turso-sync-py"

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
        # Replica identity (issue 27), before the driver reads the files: refuses a copy whose original is still there,
        # foreign or damaged metadata, a replica refused before; gives a copy_replica() copy an identity of its own.
        identity = open_identity(self.path)
        blocking: Optional[BlockingConnectionSync] = None
        engine: Optional[SyncEngine] = None
        try:
            driver_options = dict(options, bootstrap_if_empty=False) if bootstrap else options
            blocking = blocking_connect_sync(self.path, self.remote_url, **driver_options)
            engine = take_over(blocking, (options["long_poll_timeout_ms"] or 0) / 1000)
            # Replica identity, before a bootstrap: refuses lost metadata beside local changes; the engine's checks.
            engine.identity = identity.confirm(blocking, options["remote_encryption_key"])
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
            if isinstance(dbapi_error, Error) and not isinstance(dbapi_error, ReplicaIdentityError):
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


def copy_replica_blocking(source: str, destination: str) -> None:
    """copy_replica's work, on a thread of its own: open `source` with the driver (its file lock keeps other processes
    out while the files are copied), refuse it if it has changes not pushed yet, and copy its files to `destination`,
    marked to take an identity of their own at their first open."""
    check_arguments(source, None)
    check_arguments(destination, None)
    if not os.path.isfile(source) or not os.path.isfile(source + "-info"):
        raise ProgrammingError(f"cannot copy {source!r}: it is not a sync replica (no database and sync metadata)")
    if os.path.realpath(source) == os.path.realpath(destination):
        raise ValueError(f"cannot copy {source!r} onto itself")
    claim = ReplicaPathClaim(source)
    claim.acquire()
    try:
        blocking = blocking_connect_sync(source, None, bootstrap_if_empty=False)
        try:
            stats: Any = cast(Any, blocking).stats()  # the native stats object has no type information
            pending = int(stats.cdc_operations)
            if pending:
                raise ProgrammingError(
                    f"cannot copy {source!r}: it has {pending} local change(s) not pushed yet. A copy leaves those to "
                    "its source, which may never push them (say it was a build step's); push() them first"
                )
            copy_replica_files(source, destination, highest_change_id(blocking))
        finally:
            blocking.close()
            del blocking
    finally:
        claim.release()


def recover_replica_blocking(
    path: str,
    remote_url: Optional[str],
    auth_token: Optional[Union[str, Callable[[], Optional[str]]]],
    client_name: Optional[str],
    encryption_key: Optional[str],
    request_timeout: float,
) -> ReplicaRecovery:
    """recover_replica's work before its push, on a thread of its own: the replica's claim, the driver's open, and the
    remote's requests through a transport with `request_timeout` (see replica_identity.recover_identity)."""
    check_arguments(path, remote_url)
    claim = ReplicaPathClaim(path)
    claim.acquire()
    try:
        url = remote_url
        if url is None:
            try:
                info = read_info(path)
            except ReplicaIdentityError:
                info = None
            url = info.remote_url if info is not None else None
        if url is None:
            raise ProgrammingError(
                f"cannot recover {path!r}: its sync metadata does not say which remote it syncs with; pass remote_url"
            )
        base_url = _driver_url(url)
        name = client_name or DEFAULT_CLIENT_NAME
        transport = SyncTransport(lambda: base_url, lambda: _token(auth_token), name, lambda: request_timeout)

        def open_replica() -> BlockingConnection:
            return blocking_connect_sync(
                path,
                url,
                auth_token=auth_token,
                client_name=client_name,
                bootstrap_if_empty=False,
                remote_encryption_key=encryption_key,
            )

        def post(request_path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
            return post_through(transport, request_path, body, headers)

        try:
            return recover_identity(path, open_replica, post, encryption_key)
        finally:
            transport.close()
    finally:
        claim.release()


def _driver_url(url: str) -> str:
    # As the driver rewrites it: libsql:// and turso:// are https://.
    for scheme in ("libsql://", "turso://"):
        if url.startswith(scheme):
            return "https://" + url[len(scheme) :]
    return url


def _token(auth_token: Optional[Union[str, Callable[[], Optional[str]]]]) -> Optional[str]:
    return auth_token() if callable(auth_token) else auth_token
