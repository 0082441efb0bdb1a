"""The sync engine of one open replica, driven by us: its operations are coroutines on the connection's event loop,
its native steps jobs on the connection's worker, its HTTP requests aiohttp's (`RemoteHttp`), its files the driver's
functions. This is the one place that uses the driver's private names (the blocking connection's `_sync` and
`_http_ctx`, `turso.lib_sync`'s `_process_full_read_item` and `_process_full_write_item`, `turso.lib`'s
`_map_turso_exception`), called as they are; tests/test_driver_contract.py fails if the pinned driver renames them.

An operation is started and resumed by jobs on the connection's worker, one at a time and in order with its SQL; when
it needs IO, the job hands back the IO items the engine queued, and the loop performs them: HTTP on the loop, file IO
as another job. No thread ever waits for the network, except a statement that needs pages from the remote (partial
sync), whose worker waits for the loop to fetch them.
"""

import asyncio
import functools
import logging
from queue import SimpleQueue
from typing import Any, Awaitable, Callable, Optional, Sequence, TypeVar, cast

from .._turso import (  # the native extension has no type information
    PyTursoAsyncOperationResultKind,  # pyright: ignore[reportUnknownVariableType]
    PyTursoSyncIoItemRequestKind,  # pyright: ignore[reportUnknownVariableType]
)
from ..lib import Error, OperationalError, ProgrammingError
from ..lib import _map_turso_exception as map_driver_error  # pyright: ignore[reportPrivateUsage]
from ..lib_sync import ConnectionSync as BlockingConnectionSync
from ..lib_sync import (
    _process_full_read_item,  # pyright: ignore[reportPrivateUsage, reportUnknownVariableType]
    _process_full_write_item,  # pyright: ignore[reportPrivateUsage, reportUnknownVariableType]
)
from .errors import clear_frames
from .http import RemoteHttp, TransportClosed, TransportError
from .replica_identity import PIPELINE_PATH, ReplicaGuard
from .workers import Job

_T = TypeVar("_T")

# Bytes of an answer handed to the engine before the operation is resumed to take them (the driver's chunk size).
RESUME_EVERY_BYTES = 64 * 1024
# The waits between attempts of a page request that failed (partial sync): doubling from the first to the last.
PAGE_RETRY_FIRST_SECONDS = 0.1
PAGE_RETRY_MAX_SECONDS = 2.0
# How long an operation that is not finished, and queued no IO, waits before it is resumed again.
IDLE_RESUME_SECONDS = 0.001

logger = logging.getLogger("turso.lib_sync_aio")

# The native enums and the driver's file IO functions, typed as what they are to us.
_request_kinds = cast(Any, PyTursoSyncIoItemRequestKind)
_result_kinds = cast(Any, PyTursoAsyncOperationResultKind)
_full_read: Callable[[Any, Any], None] = _process_full_read_item  # pyright: ignore[reportUnknownVariableType]
_full_write: Callable[[Any, Any], None] = _process_full_write_item  # pyright: ignore[reportUnknownVariableType]

# What one resume job hands back: the payload once the operation finished (in a 1-tuple, since it may be None), the
# operation's requests, and the page reads the engine's callbacks queued.
_Resumed = tuple[Optional[tuple[Any]], list[Any], list[Any]]


class SyncEngine:
    """The sync engine of `blocking`, driven from `loop`: operations are coroutines there, native steps are jobs on
    the connection's queue `jobs`, and HTTP has a deadline on every request (`request_timeout`, read at every
    request). `abort()` fails the request in flight and every later one.

    The connection runs one operation at a time (its sync turns): an operation's native steps wait for the engine's
    lock, which another operation holds between its steps, so two at once on one worker queue would deadlock.
    """

    def __init__(
        self,
        blocking: BlockingConnectionSync,
        loop: asyncio.AbstractEventLoop,
        jobs: "SimpleQueue[Job]",
        http: "EngineHttp | RequestTimeout",
        long_poll_seconds: float,
    ) -> None:
        """Take over `blocking`'s engine (on the connection's worker, while opening): its HTTP goes through `http` on
        `loop` (new for the connection, given its RequestTimeout; or the engine's before a reopen), its statements' IO
        (partial sync) through us."""
        self.database: Any = blocking._sync  # pyright: ignore[reportPrivateUsage, reportUnknownMemberType]
        self._http_context = blocking._http_ctx  # pyright: ignore[reportPrivateUsage]
        self._loop = loop
        self._jobs = jobs
        # Added to a pull's wait for the first byte of its answer: the remote may hold it that long (long poll).
        self.long_poll_seconds = long_poll_seconds
        if isinstance(http, RequestTimeout):
            http = EngineHttp(self._http_context.client_name, http)
        self.http = http
        # True while a statement waits for a page read (partial sync); close() does not wait for one.
        self.fetching_pages = False
        # The transport's error during the operation in flight, which the operation's own error then reports.
        self._request_failure: Optional[TransportError] = None
        # Replica identity (issue 27): the open sets the checks that keep a copied or restored replica from losing
        # writes (None for :memory:); push and pull call them, and _request shows them the engine's own requests.
        self.identity: Optional[ReplicaGuard] = None
        # The refusal of the operation in flight, which the operation then raises instead of the engine's error.
        self._identity_failure: Optional[Error] = None
        # Why the operation in flight was cut (`cut_operation`): its requests fail with this.
        self._cut: Optional[str] = None
        blocking.extra_io = self.fetch_pages_for_statement

    async def wait_changes(self) -> Any:
        """Pull's network part: the remote's changes since the last pull (not applied yet). Raises
        ReplicaIdentityError instead if applying them could drop local changes (a forked replica)."""
        identity = self.identity
        if identity is not None:
            await self._before_sync(identity)
        changes = await self._run(self._start_wait_changes, "pull", self.long_poll_seconds)
        if identity is not None and changes is not None and not changes.empty():
            # Replica identity: the apply drops local changes at or below the remote's mark for this client id.
            body = await self._on_worker(lambda: identity.apply_check_request(self.stats().cdc_operations))
            if body is not None:
                answer = await self.post(PIPELINE_PATH, body, identity.headers)
                await self._on_worker(lambda: identity.judge_mark_answer(answer))
        return changes

    async def push_changes(self) -> None:
        """Send the local changes to the remote. Raises ReplicaIdentityError, sending nothing, if the remote holds
        pushes under this replica's identity that it did not make (a forked replica)."""
        if self.identity is not None:
            await self._before_sync(self.identity)
        await self._run(self._start_push_changes, "push")

    async def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
        """POST `body` to `path` of the remote through the operations' HTTP (deadline, abort) and return the answer's
        body; turso.OperationalError if it fails or is not 2xx (ProgrammingError once closed)."""
        base_url, token = await self._credentials()
        return await post(self.http.requests, path, body, headers, base_url, token)

    async def _before_sync(self, identity: ReplicaGuard) -> None:
        # Before every push and pull: the refusal of a fork found before; a fresh identity's floor told to the remote.
        body = await self._on_worker(identity.sync_request)
        if body is not None:
            answer = await self.post(PIPELINE_PATH, body, identity.headers)
            await self._on_worker(lambda: identity.seed_answered(answer))

    def apply_changes(self, changes: Any) -> None:
        """On the connection's worker, between transactions: apply what wait_changes() returned."""
        self.run_here(lambda: self.database.apply_changes(changes), "apply pulled changes")

    def checkpoint(self) -> None:
        """On the connection's worker, between transactions: checkpoint the WAL."""
        self.run_here(self.database.checkpoint, "checkpoint")

    def stats(self) -> Any:
        """On the connection's worker: the engine's counters (local, no request)."""
        return self.run_here(self.database.stats, "read stats")

    def abort(self) -> None:
        """On the loop, from close(): the operation's request in flight fails at once, and no request starts after
        it."""
        self.http.requests.abort()

    def cut_operation(self, reason: str) -> None:
        """On the loop: the operation in flight (a pull whose caller gave up, say) fails now: its request in flight is
        cut, and it makes no other; it is then resumed to its failed end as usual. The next operation is not
        affected."""
        self._cut = reason
        self.http.requests.cut(reason)

    def fetch_pages_for_statement(self) -> None:
        """The blocking connection's `extra_io`, called on the worker when a statement waits for IO: perform the page
        reads that partial sync asks for (none otherwise)."""
        self.database.step_io_callbacks()
        pages = self._take_items()
        if pages:
            self._perform_here(pages, "read pages")

    def run_here(self, start: Callable[[], Any], description: str) -> Any:
        """On the connection's worker: run a local operation (apply, checkpoint, stats) to its end in this job. Its file
        IO runs here; an HTTP item, which a local operation should not queue, is performed on the loop while this
        worker waits."""
        self._request_failure = None
        try:
            operation = start()
            while True:
                payload, requests, pages = self._resume(operation, description)
                if payload is not None:
                    return payload[0]
                self._perform_here(requests + pages, description)
        finally:
            self._request_failure = None

    # --- an operation, driven from the loop ---------------------------------------------------------------------

    async def _run(self, start: Callable[[], Any], description: str, extra_wait: float = 0.0) -> Any:
        # Start the operation, then resume it until it finishes, performing the IO it asks for in between.
        self._request_failure = None
        self._cut = None
        try:
            operation = await self._on_worker(start)
            while True:
                payload, requests, pages = await self._on_worker(
                    functools.partial(self._resume, operation, description)
                )
                if payload is not None:
                    return payload[0]
                for item in requests:
                    await self._perform(item, operation, extra_wait)
                for item in pages:
                    await self._perform(item, None, 0.0)
                if not requests and not pages:
                    # Nothing to do for it yet (the engine waits for IO performed elsewhere): do not spin.
                    await asyncio.sleep(IDLE_RESUME_SECONDS)
        finally:
            self._request_failure = None
            self._identity_failure = None

    def _start_wait_changes(self) -> Any:
        return self.database.wait_changes()

    def _start_push_changes(self) -> Any:
        return self.database.push_changes()

    def _on_worker(self, function: Callable[[], _T]) -> "asyncio.Future[_T]":
        # A job on the connection's queue (the spec's pattern), in order with its SQL.
        future: asyncio.Future[_T] = self._loop.create_future()
        self._jobs.put_nowait((future, function))
        return future

    def _resume(self, operation: Any, description: str) -> _Resumed:
        # On the worker: step the callbacks of IO performed since the last resume (as the driver does after every
        # item), resume, and take what it queued. An operation's requests come from resume(), page reads from the
        # callbacks.
        database = self.database
        database.step_io_callbacks()
        pages = self._take_items()
        try:
            finished = operation.resume()
        except Exception as error:
            raise self._failure(error, description) from error
        if finished:
            return (_payload(operation.take_result()),), [], pages
        return None, self._take_items(), pages

    def _failure(self, error: Exception, description: str) -> Exception:
        # The operation's error as the caller should see it: a refusal of the identity checks, ours when our transport
        # failed it, else the driver's.
        identity_failure, self._identity_failure = self._identity_failure, None
        if identity_failure is not None:
            return identity_failure
        failure = self._request_failure
        if isinstance(failure, TransportClosed):
            return ProgrammingError(f"Cannot {description}: the connection was closed while it ran")
        if failure is not None:
            return OperationalError(f"{description} failed: {failure}")
        mapped = map_driver_error(error)
        return mapped if isinstance(mapped, Error) else OperationalError(f"{description} failed: {mapped}")

    def _take_items(self) -> list[Any]:
        # On the worker: every IO item queued now.
        items: list[Any] = []
        while (item := self.database.take_io_item()) is not None:
            items.append(item)
        return items

    async def _perform(self, item: Any, operation: Any, extra_wait: float) -> None:
        # One IO item: HTTP here on the loop, a file on the worker.
        try:
            request = item.request()
            if request.kind == _request_kinds.Http and request.http is not None:
                if operation is None:
                    await self._read_page(item, request.http, await self._credentials())
                else:
                    await self._request(item, request.http, operation, extra_wait)
            elif request.kind == _request_kinds.FullRead and request.full_read is not None:
                await self._on_worker(functools.partial(_full_read, item, request.full_read))
            elif request.kind == _request_kinds.FullWrite and request.full_write is not None:
                await self._on_worker(functools.partial(_full_write, item, request.full_write))
            else:
                item.poison("unknown io request kind")
        except Exception as error:
            item.poison(f"io processing error: {error}")
        except BaseException:
            item.poison("io processing cancelled")
            raise

    async def _request(self, item: Any, http: Any, operation: Any, extra_wait: float) -> None:
        # An operation's request, with a deadline: a failure fails the operation, which says why. The answer is handed
        # to the engine as it arrives, and the operation resumed to take it every RESUME_EVERY_BYTES, so that a large
        # answer is not held whole in memory.
        body = _body(http)
        identity = self.identity
        if identity is not None and identity.watches(str(http.method), str(http.path), body):
            await self._watched(identity, item, http, body, extra_wait)
            return
        unread = 0

        async def on_chunk(chunk: bytes) -> None:
            nonlocal unread
            item.push_buffer(chunk)
            unread += len(chunk)
            if unread >= RESUME_EVERY_BYTES:
                unread = 0
                await self._on_worker(operation.resume)

        try:
            base_url, token = await self._credentials()
            if self._cut is not None:
                raise TransportError(self._cut)
            await _send(self.http.requests, http, body, base_url, token, extra_wait, item.status, on_chunk)
        except TransportError as error:
            # Its frames refer back to this engine: a cycle that would keep the native sync database, and the
            # replica's files, alive after close() until a garbage collection.
            clear_frames(error)
            self._request_failure = error
            item.poison(str(error))
        else:
            item.done()

    async def _watched(
        self, identity: ReplicaGuard, item: Any, http: Any, body: Optional[bytes], extra_wait: float
    ) -> None:
        # Replica identity (issue 27): the guard sees the engine's request before it is sent (a push batch: it records
        # the mark the batch sets, on the worker since it writes a file), and judges the answer to the engine's query
        # of the remote's mark before the engine reads it. A refusal fails the operation with ReplicaIdentityError.
        status: list[int] = []
        chunks: list[bytes] = []

        async def keep(chunk: bytes) -> None:
            chunks.append(chunk)

        try:
            check = await self._on_worker(lambda: identity.watch(str(http.method), str(http.path), body))
            try:
                if self._cut is not None:
                    raise TransportError(self._cut)
                base_url, token = await self._credentials()
                await _send(self.http.requests, http, body, base_url, token, extra_wait, status.append, keep)
            except TransportError as error:
                clear_frames(error)  # as in _request
                self._request_failure = error
                item.poison(str(error))
                return
            answer = b"".join(chunks)
            if check is not None:
                await self._on_worker(lambda: check(status[-1] if status else 0, answer))
        except Error as refusal:
            clear_frames(refusal)
            self._identity_failure = refusal
            item.poison(str(refusal))
            return
        item.status(status[-1])
        item.push_buffer(answer)
        item.done()

    async def _read_page(self, item: Any, http: Any, credentials: tuple[Optional[str], Optional[str]]) -> None:
        # A page read for partial sync: it must not fail, because a statement whose page read failed retries it
        # forever on a core (and dropping that statement spins inside the native code, holding the interpreter lock).
        # So a failed attempt is retried, each with the deadline, until the remote answers; nothing of the answer is
        # handed to the engine before it is complete, so a cut answer is simply asked for again.
        delay = PAGE_RETRY_FIRST_SECONDS
        base_url, token = credentials
        while True:
            status: list[int] = []
            chunks: list[bytes] = []

            async def keep(chunk: bytes) -> None:
                chunks.append(chunk)

            try:
                await _send(self.http.pages, http, _body(http), base_url, token, 0.0, status.append, keep)
            except TransportClosed:
                raise
            except TransportError as error:
                clear_frames(error)  # as in _request
                logger.debug("partial sync: a page read failed (%s); retrying in %.2g s", error, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, PAGE_RETRY_MAX_SECONDS)
                continue
            item.status(status[-1])
            for chunk in chunks:
                item.push_buffer(chunk)
            item.done()
            return

    def _perform_here(self, items: list[Any], description: str) -> None:
        # On the worker: IO items of a local operation or of a statement; files here, HTTP on the loop while this
        # worker waits for it (the loop never waits for a worker, so this cannot deadlock).
        credentials: Optional[tuple[Optional[str], Optional[str]]] = None
        for item in items:
            try:
                request = item.request()
                if request.kind == _request_kinds.Http and request.http is not None:
                    if credentials is None:
                        credentials = self._read_credentials()
                    self.fetching_pages = True
                    try:
                        asyncio.run_coroutine_threadsafe(
                            self._read_page(item, request.http, credentials), self._loop
                        ).result()
                    finally:
                        self.fetching_pages = False
                elif request.kind == _request_kinds.FullRead and request.full_read is not None:
                    _full_read(item, request.full_read)
                elif request.kind == _request_kinds.FullWrite and request.full_write is not None:
                    _full_write(item, request.full_write)
                else:
                    item.poison("unknown io request kind")
            except Exception as error:
                item.poison(f"{description}: io processing error: {error}")
            self.database.step_io_callbacks()

    async def _credentials(self) -> tuple[Optional[str], Optional[str]]:
        # The remote URL and the token for the next request; a callable of the application's runs on the worker, since
        # it may block (say it fetches a fresh token).
        context = self._http_context
        if callable(context.remote_url) or callable(context.auth_token):
            return await self._on_worker(self._read_credentials)
        return context.remote_url, context.auth_token

    def _read_credentials(self) -> tuple[Optional[str], Optional[str]]:
        context = self._http_context
        try:
            base_url = context.base_url()
        except Exception as error:
            raise TransportError(f"the remote URL is not available: {type(error).__name__}: {error}") from error
        try:
            token = context.token()
        except Exception as error:
            # Its message is not repeated: it may hold the token.
            raise TransportError(f"the auth token callback failed ({type(error).__name__})") from None
        return base_url, token


class EngineHttp:
    """The HTTP of one connection's engine: `requests` for its operations, which close() cuts (`abort()`), and `pages`
    for partial sync's page reads, which must never fail (see `SyncEngine._read_page`)."""

    def __init__(self, user_agent: str, timeout: Callable[[], float]) -> None:
        """Both clients, with the User-Agent `user_agent` and a deadline of `timeout()` seconds."""
        self.requests = RemoteHttp(user_agent, timeout)
        self.pages = RemoteHttp(user_agent, timeout)

    @property
    def in_flight(self) -> bool:
        """Whether an operation's request is being sent or answered now."""
        return self.requests.in_flight

    def abort(self) -> None:
        """On the loop: the operations' requests in flight fail at once, and every later one (not the page reads)."""
        self.requests.abort()

    async def close(self, *, pages: bool = True) -> None:
        """Let go of the clients' share of the loop's session (of the page reads' client too, unless `pages` is
        False)."""
        await self.requests.close()
        if pages:
            await self.pages.close()


class RequestTimeout:
    """A connection's `request_timeout`, read by its HTTP at every request, and changed at any time. A holder that
    refers to nothing: a bound method of the connection or the engine would make a cycle that keeps the native
    database, and the replica's files, alive after close() until a garbage collection."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        """Hold `value` seconds."""
        self.value = value

    def __call__(self) -> float:
        """The seconds a request may wait to connect, or for the next byte of its answer."""
        return self.value


async def post(
    http: RemoteHttp,
    path: str,
    body: bytes,
    headers: Sequence[tuple[str, str]],
    base_url: Optional[str],
    token: Optional[str],
) -> bytes:
    """POST `body` to `path` of the remote through `http` and return the answer's body; turso.OperationalError if it
    fails or is not 2xx (ProgrammingError once `http` was aborted or closed)."""
    status: list[int] = []
    chunks: list[bytes] = []

    async def keep(chunk: bytes) -> None:
        chunks.append(chunk)

    try:
        await http.request(
            "POST", path, body, list(headers), base_url=base_url, token=token, on_status=status.append, on_chunk=keep
        )
    except TransportClosed:
        raise ProgrammingError("Cannot sync: the connection was closed while it ran") from None
    except TransportError as error:
        clear_frames(error)
        raise OperationalError(f"sync failed: {error}") from None
    answer = b"".join(chunks)
    if not status or not 200 <= status[-1] < 300:
        raise OperationalError(
            f"sync failed: the remote answered {status[-1] if status else 'nothing'} to POST {path}: "
            f"{answer[:200].decode('utf-8', 'replace')}"
        )
    return answer


def _body(item_http: Any) -> Optional[bytes]:
    return bytes(item_http.body) if item_http.body is not None else None


def _send(
    http: RemoteHttp,
    item_http: Any,
    body: Optional[bytes],
    base_url: Optional[str],
    token: Optional[str],
    extra_wait: float,
    on_status: Callable[[int], None],
    on_chunk: Callable[[bytes], Awaitable[None]],
) -> Awaitable[None]:
    # One HTTP item of the engine through `http`.
    return http.request(
        item_http.method,
        item_http.path,
        body,
        [(str(name), str(value)) for name, value in item_http.headers or ()],
        base_url=base_url,
        token=token,
        url=item_http.url,
        extra_wait=extra_wait,
        on_status=on_status,
        on_chunk=on_chunk,
    )


def _payload(result: Any) -> Any:
    # What a finished operation returns: a connection, changes, stats, or nothing.
    kind = result.kind
    if kind == _result_kinds.Connection:
        return result.connection
    if kind == _result_kinds.Changes:
        return result.changes
    if kind == _result_kinds.Stats:
        return result.stats
    return None
