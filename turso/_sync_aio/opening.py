"""Opening a replica for `turso.lib_sync_aio.connect_sync`: the checks first, then the driver's own open on a thread of
the pool, then a bootstrap with deadlines driven from the event loop; and closing one when nobody is left to hear of
an error."""

import asyncio
import os
from typing import Any, Awaitable, Callable, Optional, Sequence, Union, cast

from ..lib import Connection as BlockingConnection
from ..lib import Error, ProgrammingError
from ..lib_sync import ConnectionSync as BlockingConnectionSync
from ..lib_sync import (
    connect_sync as blocking_connect_sync,  # pyright: ignore[reportUnknownVariableType]  # (its cipher parameter)
)
from .engine import RequestTimeout, SyncEngine, post
from .errors import native_dbapi_error
from .http import RemoteHttp
from .loop_turns import LoopTurns
from .open_replicas import ReplicaPathClaim
from .replica_files import check_arguments, check_replica_files, describe_remote, known_replica_files
from .replica_identity import (
    ReplicaIdentityError,
    ReplicaRecovery,
    copy_replica_files,
    highest_change_id,
    open_identity,
    read_info,
    recover_identity,
)
from .workers import run_blocking

# The client name (and User-Agent) of recover_replica's requests when none is given: the driver's default.
DEFAULT_CLIENT_NAME = "turso-sync-py"

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
                outcome = await run(lambda: self._open_locally(take_over))
                opened = cast(tuple[BlockingConnectionSync, SyncEngine, bool], outcome)
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
        self._existing = known_replica_files(self.path)
        check_replica_files(self.path)
        options = self.options
        # A fresh replica opens locally and bootstraps as a pull, with deadlines; partial sync's native open needs the
        # driver's own bootstrap.
        bootstrap = bool(options["bootstrap_if_empty"]) and options["partial_sync_experimental"] is None
        bootstrap = bootstrap and not os.path.exists(self.path + "-info")
        # Replica identity (issue 27), before the driver reads the files: refuses a copy whose original is still there,
        # foreign or damaged metadata, a replica refused before; gives a copy_replica() copy an identity of its own.
        identity = open_identity(self.path)
        driver_options = dict(options, bootstrap_if_empty=False) if bootstrap else options
        blocking = blocking_connect_sync(self.path, self.remote_url, **driver_options)
        try:
            engine = take_over(blocking, (options["long_poll_timeout_ms"] or 0) / 1000)
            # Replica identity, before a bootstrap: refuses lost metadata beside local changes; the engine's checks.
            engine.identity = identity.confirm(blocking, options["remote_encryption_key"])
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
            for leftover in known_replica_files(self.path) - self._existing:
                try:
                    os.remove(leftover)
                except OSError:
                    pass
        finally:
            self.path_claim.release()

    def _reported(self, error: BaseException) -> BaseException:
        # A database error says which replica and which remote; anything else stays as it is.
        dbapi_error = native_dbapi_error(error) or error
        if isinstance(dbapi_error, Error) and not isinstance(dbapi_error, ReplicaIdentityError):
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


async def copy_replica(source: str, destination: str) -> None:
    """copy_replica's work: claim `source` (no connection of this process may have it open), then on a thread of the
    pool open it with the driver (its file lock keeps other processes out while the files are copied), refuse it if
    it has changes not pushed yet, and copy its files to `destination`, marked to take an identity of their own at
    their first open."""
    check_arguments(source, None)
    check_arguments(destination, None)
    if not os.path.isfile(source) or not os.path.isfile(source + "-info"):
        raise ProgrammingError(f"cannot copy {source!r}: it is not a sync replica (no database and sync metadata)")
    if os.path.realpath(source) == os.path.realpath(destination):
        raise ValueError(f"cannot copy {source!r} onto itself")
    claim = ReplicaPathClaim(source)
    await claim.acquire()
    claim.begin_closing()  # an open of `source` meanwhile waits for the copy to end, instead of failing
    try:
        await run_blocking(lambda: _copy_replica_blocking(source, destination))
    finally:
        claim.release()


def _copy_replica_blocking(source: str, destination: str) -> None:
    blocking = blocking_connect_sync(source, None, bootstrap_if_empty=False)
    try:
        stats: Any = cast(Any, blocking).stats()  # the native stats object has no type information
        pending = int(stats.cdc_operations)
        if pending:
            raise ProgrammingError(
                f"cannot copy {source!r}: it has {pending} local change(s) not pushed yet. A copy leaves those to its "
                "source, which may never push them (say it was a build step's); push() them first"
            )
        copy_replica_files(source, destination, highest_change_id(blocking))
    finally:
        blocking.close()
        del blocking


async def recover_identity_of(
    path: str,
    remote_url: Optional[str],
    auth_token: Optional[Union[str, Callable[[], Optional[str]]]],
    client_name: Optional[str],
    encryption_key: Optional[str],
    request_timeout: float,
) -> ReplicaRecovery:
    """recover_replica's work before its push: the replica's claim, then on a thread of the pool the driver's open and
    `recover_identity`, whose requests go through aiohttp on this loop with `request_timeout`."""
    check_arguments(path, remote_url)
    claim = ReplicaPathClaim(path)
    await claim.acquire()
    claim.begin_closing()  # an open of `path` meanwhile waits for the recovery to end, instead of failing
    loop = asyncio.get_running_loop()
    http = RemoteHttp(client_name or DEFAULT_CLIENT_NAME, RequestTimeout(request_timeout))
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
        remote = url

        def open_replica() -> BlockingConnection:
            return blocking_connect_sync(
                path,
                remote,
                auth_token=auth_token,
                client_name=client_name,
                bootstrap_if_empty=False,
                remote_encryption_key=encryption_key,
            )

        def post_blocking(request_path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
            # On the pool's thread: the request on the loop, which never waits for a thread (no deadlock).
            token = auth_token() if callable(auth_token) else auth_token
            request = post(http, request_path, body, headers, base_url, token)
            return asyncio.run_coroutine_threadsafe(request, loop).result()

        return await run_blocking(lambda: recover_identity(path, open_replica, post_blocking, encryption_key))
    finally:
        await http.close()
        claim.release()


def _driver_url(url: str) -> str:
    # As the driver rewrites it: libsql:// and turso:// are https://.
    for scheme in ("libsql://", "turso://"):
        if url.startswith(scheme):
            return "https://" + url[len(scheme) :]
    return url
