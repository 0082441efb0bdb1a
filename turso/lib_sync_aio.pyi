# Hand-written stub for turso/lib_sync_aio.py: the typed surface that mypy and pyright users see.
import enum
import logging
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Protocol, runtime_checkable, type_check_only

from typing_extensions import Self, TypeAlias

from turso._sync_aio.transaction import TransactionHost as _TransactionHost
from turso.background_sync_aio import BackgroundSync, BackgroundSyncStatus
from turso.lib import Connection as BlockingConnection
from turso.lib import Cursor as BlockingCursor
from turso.lib import DatabaseError, OperationalError
from turso.lib_aio import Connection as NonBlockingConnection
from turso.lib_aio import Cursor as NonBlockingCursor
from turso.lib_sync import ConnectionSync as BlockingConnectionSync
from turso.lib_sync import PartialSyncOpts

# turso.lib_sync.RemoteEncryptionCipher, an enum from the driver's native extension, which has no type information.
_RemoteEncryptionCipher: TypeAlias = Any

# How long applying pulled changes or a checkpoint waits for an open transaction on the connection to end.
TRANSACTION_WAIT_SECONDS: float
# How long close() waits for the sync operations called before it, before it fails the request in flight.
LANE_CLOSE_SECONDS: float
# How long the close() of the process's last open connection waits for the worker pool's idle threads to exit.
THREADS_EXIT_SECONDS: float
# How many replicas of one event loop apply pulled changes or checkpoint at once.
APPLIES_AT_ONCE: int
# The default of ConnectionSync.request_timeout, in seconds.
REQUEST_TIMEOUT_SECONDS: float
# The largest ConnectionSync.query_timeout, in seconds.
MAX_QUERY_TIMEOUT_SECONDS: float
# What a statement still queued when close() was cancelled raises (turso.ProgrammingError) instead of running.
CLOSED_BEFORE_ITS_TURN: str
# What ReplicaPool.close(timeout) may take beyond its timeout, whatever the remotes do.
POOL_CLOSE_MARGIN_SECONDS: float
# The module's logger: close() warns there when it leaves a request behind.
logger: logging.Logger

# A snapshot of the process's worker pool (worker_pool_stats()).
class WorkerPoolStats(NamedTuple):
    threads: int
    idle_threads: int
    waiting_connections: int
    max_threads: int

# Cap the threads of the process's worker pool (16 by default).
def set_max_worker_threads(count: int) -> None: ...
# The worker pool's threads, idle ones, connections waiting for a thread, and the cap.
def worker_pool_stats() -> WorkerPoolStats: ...

# What ConnectionSync.stats() reports; read-only fields of the driver's native stats object.
@runtime_checkable
class SyncStats(Protocol):
    @property
    def cdc_operations(self) -> int: ...
    @property
    def main_wal_size(self) -> int: ...
    @property
    def revert_wal_size(self) -> int: ...
    @property
    def last_pull_unix_time(self) -> int | None: ...
    @property
    def last_push_unix_time(self) -> int | None: ...
    @property
    def revision(self) -> str | None: ...
    @property
    def network_sent_bytes(self) -> int: ...
    @property
    def network_received_bytes(self) -> int: ...

# The async sync operations, for application code that should not depend on the concrete ConnectionSync.
# Stub-only (no runtime class): import it under `if TYPE_CHECKING:`.
@type_check_only
class AsyncSyncOperations(Protocol):
    async def pull(self) -> bool: ...
    async def push(self) -> None: ...
    async def checkpoint(self) -> None: ...
    async def stats(self) -> SyncStats: ...

# Where a transaction() block is in its life (Transaction.state).
class TransactionState(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"

# One `async with conn.transaction():` block (BEGIN, then COMMIT, or ROLLBACK if it raises; a SAVEPOINT when nested).
class Transaction:
    state: TransactionState
    savepoint_name: str | None
    def __init__(self, host: _TransactionHost) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None: ...
    @property
    def is_savepoint(self) -> bool: ...

# A replica whose sync identity cannot be trusted (copied, restored from an older copy, metadata lost or damaged): the
# open, push or pull is refused, the local rows stay; recover_replica() gives it an identity of its own.
class ReplicaIdentityError(DatabaseError):
    path: str
    reason: str
    def __init__(self, message: str, *, path: str = "", reason: str = "") -> None: ...

# What recover_replica() did: the old and new client ids, and the change id up to which nothing was pushed again.
@dataclass(frozen=True)
class ReplicaRecovery:
    previous_client_id: str
    client_id: str
    floor: int

class ConnectionSync(NonBlockingConnection):
    def __init__(self, connector: Callable[[], BlockingConnectionSync]) -> None: ...
    async def close(self) -> None: ...
    def __await__(self) -> Generator[Any, None, ConnectionSync]: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None: ...
    async def pull(self) -> bool: ...
    async def push(self) -> None: ...
    async def checkpoint(self) -> None: ...
    async def stats(self) -> SyncStats: ...
    async def execute_fetchall(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()) -> list[Any]: ...
    def cursor(self, factory: Callable[[BlockingConnection], BlockingCursor] | None = None) -> NonBlockingCursor: ...
    # Stop the statement running now (its await raises turso.OperationalError); a no-op with none running.
    async def interrupt(self) -> None: ...
    def transaction(self) -> Transaction: ...
    async def commit(self) -> None: ...
    async def rollback(self) -> None: ...
    async def sync(self) -> bool: ...
    def sync_in_background(
        self, interval: float, *, max_backoff: float = 60.0, checkpoint_wal_bytes: int | None = ...
    ) -> BackgroundSync: ...
    @property
    def request_timeout(self) -> float: ...
    @request_timeout.setter
    def request_timeout(self, value: float) -> None: ...
    # Seconds a statement may run before it stops with turso.OperationalError; None (the default): no limit.
    @property
    def query_timeout(self) -> float | None: ...
    @query_timeout.setter
    def query_timeout(self, value: float | None) -> None: ...
    def __del__(self) -> None: ...

def connect_sync(
    path: str,
    remote_url: str | Callable[[], str | None] | None = None,
    *,
    auth_token: str | Callable[[], str | None] | None = None,
    client_name: str | None = None,
    long_poll_timeout_ms: int | None = None,
    bootstrap_if_empty: bool = True,
    partial_sync_experimental: PartialSyncOpts | None = None,
    experimental_features: str | None = None,
    isolation_level: str | None = "DEFERRED",
    remote_encryption_key: str | None = None,
    remote_encryption_cipher: _RemoteEncryptionCipher | None = None,
    push_operations_threshold: int | None = None,
    pull_bytes_threshold: int | None = None,
    logical_mvcc_pull: bool | None = None,
) -> ConnectionSync: ...

# ReplicaPool.connection() waited its wait_timeout without getting a replica.
class PoolTimeout(OperationalError): ...

# A snapshot of a ReplicaPool (get_stats()): gauges now, counters since the pool was made.
@dataclass(frozen=True)
class ReplicaPoolStats:
    max_open: int
    open: int
    opening: int
    closing: int
    held: int
    idle: int
    waiting: int
    requests: int
    waits: int
    wait_seconds: float
    timeouts: int
    opens: int
    failed_opens: int
    evictions: int
    idle_closes: int
    reclaimed: int
    pushes_at_close: int
    failed_pushes_at_close: int

# Replicas of many tenants, opened on demand, at most max_open at once, pushed before they close.
class ReplicaPool:
    def __init__(
        self,
        *,
        path_for: Callable[[str], str],
        remote_url_for: Callable[[str], str | None],
        auth_token_for: Callable[[str], str | Callable[[], str | None] | None] | None = None,
        max_open: int = 100,
        idle_seconds: float | None = 300.0,
        sync_interval: float | None = 5.0,
        wait_timeout: float = 30.0,
        request_timeout: float | None = None,
        max_concurrent_opens: int = 8,
        configure: Callable[[str, ConnectionSync], Awaitable[None]] | None = None,
    ) -> None: ...
    @property
    def max_open(self) -> int: ...
    def connection(
        self, tenant: str, *, wait_timeout: float | None = None
    ) -> AbstractAsyncContextManager[ConnectionSync]: ...
    def get_stats(self) -> ReplicaPoolStats: ...
    def sync_status(self, tenant: str) -> BackgroundSyncStatus | None: ...
    def sync_statuses(self) -> dict[str, BackgroundSyncStatus]: ...
    async def close(self, timeout: float = 5.0) -> frozenset[str]: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None: ...

async def copy_replica(source: str, destination: str) -> None: ...
async def recover_replica(
    path: str,
    remote_url: str | None = None,
    *,
    auth_token: str | Callable[[], str | None] | None = None,
    client_name: str | None = None,
    remote_encryption_key: str | None = None,
) -> ReplicaRecovery: ...
