"""The sync engine of one open replica, driven by our own loop: its HTTP through our transport, its files through the
driver's functions. This is the one place that uses the driver's private names (the blocking connection's `_sync` and
`_http_ctx`, `turso.lib_sync`'s `_process_full_read_item` and `_process_full_write_item`, `turso.lib`'s
`_map_turso_exception`), called as they are; tests/test_driver_contract.py fails if the pinned driver renames them.

An operation is resumed until it finishes; whenever it needs IO, its thread takes the IO items from the engine's queue
and performs them. The lock is held only for native calls, never across a network wait (docs/design.md).
"""

import logging
import threading
import time
import traceback
from typing import Any, Callable, Optional, Sequence, cast

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
from .replica_identity import ReplicaGuard
from .transport import SyncTransport, TransportClosed, TransportError

# How long the thread driving an operation waits for another thread's IO item to complete before it looks again.
OPERATION_IO_WAIT_SECONDS = 0.05
# The waits between attempts of a page request that failed (partial sync): doubling from the first to the last.
PAGE_RETRY_FIRST_SECONDS = 0.1
PAGE_RETRY_MAX_SECONDS = 2.0

logger = logging.getLogger("turso.lib_sync_aio")

# The native enums and the driver's file IO functions, typed as what they are to us.
_request_kinds = cast(Any, PyTursoSyncIoItemRequestKind)
_result_kinds = cast(Any, PyTursoAsyncOperationResultKind)
_full_read: Callable[[Any, Any], None] = _process_full_read_item  # pyright: ignore[reportUnknownVariableType]
_full_write: Callable[[Any, Any], None] = _process_full_write_item  # pyright: ignore[reportUnknownVariableType]


class SyncEngine:
    """The sync engine of `blocking`, whose HTTP goes through a `SyncTransport` with a deadline on every request.

    Operations take turns (the sync lane runs one at a time, and hands apply and checkpoint to the SQL worker while it
    waits); `request_timeout` is read at every request; `abort()` fails the request in flight and every later one.
    """

    def __init__(self, blocking: BlockingConnectionSync, request_timeout: float, long_poll_seconds: float) -> None:
        """Take over `blocking`'s engine: its HTTP goes through our transports, its statements' IO through us."""
        self.database: Any = blocking._sync  # pyright: ignore[reportPrivateUsage, reportUnknownMemberType]
        http = blocking._http_ctx  # pyright: ignore[reportPrivateUsage]
        # Seconds a request may wait to connect or for the next byte of its answer (the `request_timeout` property).
        # The transports read it through this holder, which refers to nothing: a bound method of the engine would make
        # a cycle that keeps the native database, and the replica's files, alive after close() until a collection.
        self._request_timeout = _Setting(request_timeout)
        # Added to a pull's wait for the first byte of its answer: the remote may hold it that long (long poll).
        self.long_poll_seconds = long_poll_seconds
        timeout = self._request_timeout
        # The operations' requests; abort() fails them.
        self.transport = SyncTransport(http.base_url, http.token, http.client_name, timeout)
        # Partial sync's page reads, kept apart because they must never fail (see _fetch_pages): abort() spares them.
        self.page_transport = SyncTransport(http.base_url, http.token, http.client_name, timeout)
        # True while a page read is being performed; close() does not wait for one that the remote never answers.
        self.fetching_pages = False
        # Held for the native calls that touch the engine's IO queue, never across a network wait.
        self._io_lock = threading.Lock()
        # Notified whenever an IO item completes; `_in_flight` counts the items being performed, on any thread.
        self._progress = threading.Condition()
        self._in_flight = 0
        # The transport's error during the operation in flight, which the operation's own error then reports.
        self._request_failure: Optional[TransportError] = None
        # Replica identity (issue 27): the open sets the checks that keep a copied or restored replica from losing
        # writes (None for :memory:); push and pull call them, and _request shows them the engine's own requests.
        self.identity: Optional[ReplicaGuard] = None
        # The refusal of the operation in flight, which the operation then raises instead of the engine's error.
        self._identity_failure: Optional[Error] = None
        blocking.extra_io = self.fetch_pages_for_statement

    @property
    def request_timeout(self) -> float:
        """Seconds a request may wait to connect, or for the next byte of its answer; read at every request."""
        return self._request_timeout.value

    @request_timeout.setter
    def request_timeout(self, seconds: float) -> None:
        self._request_timeout.value = seconds

    def wait_changes(self) -> Any:
        """On the lane: pull's network part; the remote's changes since the last pull (not applied yet). Raises
        ReplicaIdentityError instead if applying them could drop local changes (a forked replica)."""
        identity = self.identity
        if identity is not None:
            identity.before_sync(self.post)  # replica identity: refused, or a fresh identity's floor to send
        changes = self._run(self.database.wait_changes, "pull", self.long_poll_seconds)
        if identity is not None and changes is not None and not changes.empty():
            # Replica identity: the apply drops local changes at or below the remote's mark for this client id.
            identity.before_apply(self.stats().cdc_operations, self.post)
        return changes

    def apply_changes(self, changes: Any) -> None:
        """On the SQL worker, between transactions: apply what wait_changes() returned."""
        self._run(lambda: self.database.apply_changes(changes), "apply pulled changes")

    def push_changes(self) -> None:
        """On the lane: send the local changes to the remote. Raises ReplicaIdentityError, sending nothing, if the
        remote holds pushes under this replica's identity that it did not make (a forked replica)."""
        identity = self.identity
        if identity is not None:
            identity.before_sync(self.post)  # replica identity: refused, or a fresh identity's floor to send
        self._run(self.database.push_changes, "push")

    def post(self, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
        """On the lane: POST `body` to `path` of the remote through the operations' transport (deadline, abort) and
        return the answer's body; turso.OperationalError if it fails or is not 2xx (ProgrammingError once closed)."""
        return post_through(self.transport, path, body, headers)

    def checkpoint(self) -> None:
        """On the SQL worker, between transactions: checkpoint the WAL."""
        self._run(self.database.checkpoint, "checkpoint")

    def stats(self) -> Any:
        """On the lane: the engine's counters (local, no request)."""
        return self._run(self.database.stats, "read stats")

    def bootstrap(self) -> None:
        """On the SQL worker, while opening: fill a fresh replica from the remote, as a pull with deadlines."""
        changes = self._run(self.database.wait_changes, "bootstrap", self.long_poll_seconds)
        if changes is not None and not changes.empty():
            self._run(lambda: self.database.apply_changes(changes), "bootstrap")

    def abort(self) -> None:
        """From close(): the operation's request in flight fails at once, and no request starts after it."""
        self.transport.abort()

    def close(self) -> None:
        """At the SQL worker's last job: let go of the transports' idle connections. A page read still running on
        the lane keeps its transport, which a closed one would fail at every retry, forever (see _read_page)."""
        self.transport.close()
        if not self.fetching_pages:
            self.page_transport.close()

    def fetch_pages_for_statement(self) -> None:
        """The blocking connection's `extra_io`, called when a statement waits for IO: perform the page reads that
        partial sync asks for (none otherwise). Never waits for an operation's request in flight."""
        self._fetch_pages()

    def _run(self, start: Callable[[], Any], description: str, extra_wait: float = 0.0) -> Any:
        # Resume the operation until it finishes, performing the requests it asks for in between. Its requests are
        # what resume() queues; what the engine's callbacks queue are page reads (partial sync).
        self._request_failure = None
        try:
            with self._io_lock:
                operation = start()
            while True:
                with self._io_lock:
                    try:
                        finished = operation.resume()
                    except Exception as error:
                        raise self._failure(error, description) from error
                    if finished:
                        return _payload(operation.take_result())
                    requests = self._take_items()
                if requests:
                    for item in requests:
                        self._perform(item, operation, extra_wait)
                        self._fetch_pages()
                elif not self._fetch_pages() and self._in_flight:
                    # Another thread performs an item this operation waits for: wait for it instead of spinning.
                    with self._progress:
                        if self._in_flight:
                            self._progress.wait(OPERATION_IO_WAIT_SECONDS)
        finally:
            self._request_failure = None
            self._identity_failure = None

    def _failure(self, error: Exception, description: str) -> Exception:
        # The operation's error as the caller should see it: ours when our transport failed it, else the driver's.
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
        # Under _io_lock: every IO item queued now.
        items: list[Any] = []
        while (item := self.database.take_io_item()) is not None:
            items.append(item)
        return items

    def _fetch_pages(self) -> bool:
        # Step the engine's callbacks (as the driver does after every item) and perform the page reads they queue;
        # True if there were any. Page reads come only from the callbacks, an operation's requests only from resume().
        with self._io_lock:
            self.database.step_io_callbacks()
            pages = self._take_items()
        for item in pages:
            self.fetching_pages = True
            try:
                self._perform(item, None, 0.0)
            finally:
                self.fetching_pages = False
        return bool(pages)

    def _perform(self, item: Any, operation: Any, extra_wait: float) -> None:
        with self._progress:
            self._in_flight += 1
        try:
            request = item.request()
            if request.kind == _request_kinds.Http and request.http is not None:
                if operation is None:
                    self._read_page(item, request.http)
                else:
                    self._request(item, request.http, operation, extra_wait)
            elif request.kind == _request_kinds.FullRead and request.full_read is not None:
                _full_read(item, request.full_read)
            elif request.kind == _request_kinds.FullWrite and request.full_write is not None:
                _full_write(item, request.full_write)
            else:
                item.poison("unknown io request kind")
        except Exception as error:
            item.poison(f"io processing error: {error}")
        finally:
            with self._progress:
                self._in_flight -= 1
                self._progress.notify_all()

    def _request(self, item: Any, http: Any, operation: Any, extra_wait: float) -> None:
        # An operation's request, with a deadline: a failure fails the operation, which says why.
        body = _body(http)
        if self.identity is not None and self._watched(item, http, body, extra_wait):
            return

        def on_chunk(chunk: bytes) -> None:
            item.push_buffer(chunk)
            # Let the operation take the chunk now, so a large answer is not held whole in memory.
            with self._io_lock:
                operation.resume()

        try:
            _send(self.transport, http, body, extra_wait, item.status, on_chunk)
        except TransportError as error:
            # Its frames (the transport's, and this one's `on_chunk`) refer back to this engine: a cycle that would
            # keep the native sync database, and the replica's files, alive after close() until a garbage collection.
            traceback.clear_frames(error.__traceback__)
            self._request_failure = error
            item.poison(str(error))
        else:
            item.done()

    def _watched(self, item: Any, http: Any, body: Optional[bytes], extra_wait: float) -> bool:
        # Replica identity (issue 27): the guard sees the engine's request before it is sent (a push batch: it records
        # the mark the batch sets), and judges the answer to the engine's query of the remote's mark before the engine
        # reads it. True if the request was handled here; a refusal fails the operation with ReplicaIdentityError.
        assert self.identity is not None
        try:
            check = self.identity.watch(str(http.method), str(http.path), body)
            if check is None:
                return False
            status: list[int] = []
            chunks: list[bytes] = []
            try:
                _send(self.transport, http, body, extra_wait, status.append, chunks.append)
            except TransportError as error:
                traceback.clear_frames(error.__traceback__)  # as in _request
                self._request_failure = error
                item.poison(str(error))
                return True
            answer = b"".join(chunks)
            check(status[-1] if status else 0, answer)
        except Error as refusal:
            traceback.clear_frames(refusal.__traceback__)
            self._identity_failure = refusal
            item.poison(str(refusal))
            return True
        item.status(status[-1])
        item.push_buffer(answer)
        item.done()
        return True

    def _read_page(self, item: Any, http: Any) -> None:
        # A page read for partial sync: it must not fail, because a statement whose page read failed retries it
        # forever on a core (and dropping that statement spins inside the native code, holding the interpreter lock).
        # So a failed attempt is retried, each with the deadline, until the remote answers; nothing of the answer is
        # handed to the engine before it is complete, so a cut answer is simply asked for again.
        delay = PAGE_RETRY_FIRST_SECONDS
        while True:
            status: list[int] = []
            chunks: list[bytes] = []
            try:
                _send(self.page_transport, http, _body(http), 0.0, status.append, chunks.append)
            except TransportError as error:
                traceback.clear_frames(error.__traceback__)  # as in _request
                logger.debug("partial sync: a page read failed (%s); retrying in %.2g s", error, delay)
                time.sleep(delay)
                delay = min(2 * delay, PAGE_RETRY_MAX_SECONDS)
                continue
            item.status(status[-1])
            for chunk in chunks:
                item.push_buffer(chunk)
            item.done()
            return


class _Setting:
    """A value that is read at every use, and may be changed in between."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def post_through(transport: SyncTransport, path: str, body: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """POST `body` to `path` of the remote through `transport` and return the answer's body; turso.OperationalError if
    it fails or is not 2xx (ProgrammingError once the transport was aborted or closed)."""
    status: list[int] = []
    chunks: list[bytes] = []
    try:
        transport.request("POST", path, body, list(headers), on_status=status.append, on_chunk=chunks.append)
    except TransportClosed:
        raise ProgrammingError("Cannot sync: the connection was closed while it ran") from None
    except TransportError as error:
        traceback.clear_frames(error.__traceback__)
        raise OperationalError(f"sync failed: {error}") from None
    answer = b"".join(chunks)
    if not status or not 200 <= status[-1] < 300:
        raise OperationalError(
            f"sync failed: the remote answered {status[-1] if status else 'nothing'} to POST {path}: "
            f"{answer[:200].decode('utf-8', 'replace')}"
        )
    return answer


def _body(http: Any) -> Optional[bytes]:
    return bytes(http.body) if http.body is not None else None


def _send(
    transport: SyncTransport,
    http: Any,
    body: Optional[bytes],
    extra_wait: float,
    on_status: Callable[[int], None],
    on_chunk: Callable[[bytes], None],
) -> None:
    # One HTTP item of the engine through `transport`.
    transport.request(
        http.method,
        http.path,
        body,
        [(str(name), str(value)) for name, value in http.headers or ()],
        url=http.url,
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
