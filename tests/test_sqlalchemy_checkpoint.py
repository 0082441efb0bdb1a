"""`?checkpoint_wal_bytes=` on `sqlite+aioturso_sync://`: background sync's WAL limit, checked like `sync_interval`."""

import os
import warnings
from typing import Optional

import pytest
from sqlalchemy.dialects import registry
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import create_async_engine

from testkit.sync_server import SyncServer
from tests.helpers import UNDER_TEST
from turso.background_sync_aio import CHECKPOINT_WAL_BYTES
from turso.sqlalchemy_sync_aio import background_sync_of

if UNDER_TEST == "checkout":
    registry.register("sqlite.aioturso_sync", "turso.sqlalchemy_sync_aio", "AioTursoSyncDialect")


def replica_url(path: str, query: str) -> str:
    return f"sqlite+aioturso_sync:///{path}?{query}"


@pytest.mark.parametrize(
    ("query", "expected"),
    [("", CHECKPOINT_WAL_BYTES), ("&checkpoint_wal_bytes=65536", 65536), ("&checkpoint_wal_bytes=none", None)],
)
async def test_the_engines_background_sync_takes_checkpoint_wal_bytes_from_the_url(
    sync_server: SyncServer, replica_path: str, query: str, expected: Optional[int]
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the dialect's own parameter: pyturso's parser never sees it
        url = replica_url(replica_path, f"remote_url={sync_server.url}&sync_interval=0.2{query}")
        engine = create_async_engine(url)
    try:
        background = await background_sync_of(engine)
        assert background is not None and background.status.running
        assert background.checkpoint_wal_bytes == expected
    finally:
        await engine.dispose()


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "16MiB", "None"])
def test_a_bad_checkpoint_wal_bytes_is_refused_when_the_engine_is_created(replica_path: str, value: str) -> None:
    with pytest.raises(ArgumentError, match=rf"checkpoint_wal_bytes must be one whole number of bytes.*{value!r}"):
        create_async_engine(
            replica_url(replica_path, f"remote_url=http://h:1&sync_interval=1&checkpoint_wal_bytes={value}")
        )
    assert not os.path.exists(replica_path)


def test_checkpoint_wal_bytes_given_twice_is_refused(replica_path: str) -> None:
    with pytest.raises(ArgumentError, match="checkpoint_wal_bytes must be one whole number"):
        create_async_engine(
            replica_url(replica_path, "remote_url=http://h:1&sync_interval=1&checkpoint_wal_bytes=1&checkpoint_wal_bytes=2")
        )


def test_checkpoint_wal_bytes_without_sync_interval_is_refused(replica_path: str) -> None:
    with pytest.raises(ArgumentError, match="checkpoint_wal_bytes is a setting of the background sync"):
        create_async_engine(replica_url(replica_path, "remote_url=http://h:1&checkpoint_wal_bytes=1024"))
