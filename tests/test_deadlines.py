"""Every sync request has a deadline: `ConnectionSync.request_timeout`, its default and its checks."""

import math
from typing import Any, cast

import pytest

from testkit.sync_server import SyncServer
from turso.lib_sync_aio import REQUEST_TIMEOUT_SECONDS, connect_sync


async def test_request_timeout_defaults_to_thirty_seconds_and_can_be_set_at_any_time(
    sync_server: SyncServer, replica_path: str
) -> None:
    conn = connect_sync(replica_path, sync_server.url)
    assert conn.request_timeout == REQUEST_TIMEOUT_SECONDS == 30.0
    conn.request_timeout = 2
    assert conn.request_timeout == 2.0
    async with conn:
        conn.request_timeout = 0.25
        assert conn.request_timeout == 0.25


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan])
async def test_request_timeout_that_is_not_a_finite_positive_number_raises_value_error(
    sync_server: SyncServer, replica_path: str, value: float
) -> None:
    conn = connect_sync(replica_path, sync_server.url)
    with pytest.raises(ValueError, match="request_timeout must be a finite number of seconds greater than 0"):
        conn.request_timeout = value
    assert conn.request_timeout == REQUEST_TIMEOUT_SECONDS


@pytest.mark.parametrize("value", ["5", None, True])
async def test_request_timeout_that_is_not_a_number_raises_type_error(
    sync_server: SyncServer, replica_path: str, value: object
) -> None:
    conn = connect_sync(replica_path, sync_server.url)
    with pytest.raises(TypeError, match="request_timeout must be a number of seconds"):
        cast(Any, conn).request_timeout = value
