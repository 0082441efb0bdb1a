"""A replica's link to its remote as users have it (issue 17): a kept-alive front end before `tursodb --sync-server`, as
a cloud edge sits, with TLS verified against a test CA (SSL_CERT_FILE), and a restart between two pushes.

`tursodb --sync-server` closes the connection after every answer; `testkit.front_end.FrontEnd` keeps the client's
connection open across requests, so these tests reach the transport's reuse of one connection, its check of an idle
connection the server closed, and its TLS.
"""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import turso
from testkit.front_end import FrontEnd
from testkit.sync_server import SyncServer
from testkit.tls import LoopbackCertificates
from tests.helpers import AWAIT_SECONDS, bounded, remote_keys, rows
from turso.lib_sync_aio import ConnectionSync, connect_sync

LOG_SCHEMA = "CREATE TABLE log(k TEXT, v INTEGER)"


@pytest.fixture
def certificates() -> LoopbackCertificates:
    return LoopbackCertificates()


@pytest.fixture
def trusted(certificates: LoopbackCertificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The test CA is the one this process trusts, as SSL_CERT_FILE makes it for urllib too."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.write_ca(tmp_path / "ca.pem")))


@pytest.fixture
def tls_front_end(sync_server: SyncServer, certificates: LoopbackCertificates) -> Iterator[FrontEnd]:
    with FrontEnd(sync_server.port, certificates.server_context()) as front_end:
        yield front_end


def transport_connections(conn: ConnectionSync) -> int:
    # What the replica's transport opened so far (a private counter, read here only).
    engine: Any = cast(Any, conn)._engine
    assert engine is not None
    opened: int = engine.http.requests.connections_opened
    return opened


async def insert(conn: ConnectionSync, *keys: str) -> None:
    await bounded(conn.executemany("INSERT INTO log VALUES (?, 0)", [(key,) for key in keys]))
    await bounded(conn.commit())


@pytest.mark.usefixtures("trusted")
async def test_a_replica_over_tls_bootstraps_pushes_and_pulls_on_one_kept_alive_connection(
    sync_server: SyncServer, tls_front_end: FrontEnd, replica_path: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    sync_server.execute("INSERT INTO log VALUES ('remote-1', 0)")
    assert tls_front_end.url.startswith("https://")
    async with await bounded(connect_sync(replica_path, tls_front_end.url)) as conn:
        assert await rows(conn, "SELECT k FROM log") == [("remote-1",)]
        for number in range(5):
            await insert(conn, f"local-{number}")
            await bounded(conn.push())
            sync_server.execute(f"INSERT INTO log VALUES ('remote-{number + 2}', 0)")
            assert await bounded(conn.pull()) is True
        # One TLS connection for the bootstrap and ten syncs.
        assert transport_connections(conn) == 1
        assert tls_front_end.connections == 1
    assert remote_keys(sync_server, "log") == sorted(
        [f"local-{number}" for number in range(5)] + [f"remote-{number}" for number in range(1, 7)]
    )


async def test_a_certificate_this_process_does_not_trust_fails_the_open_clearly(
    sync_server: SyncServer, tls_front_end: FrontEnd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another test CA is the trusted one: the front end's certificate is not signed by it.
    monkeypatch.setenv("SSL_CERT_FILE", str(LoopbackCertificates().write_ca(tmp_path / "other-ca.pem")))
    replicas = tmp_path / "replicas"
    replicas.mkdir()
    with pytest.raises(turso.OperationalError, match="certificate verification failed") as raised:
        await bounded(connect_sync(str(replicas / "replica.db"), tls_front_end.url))
    assert f"127.0.0.1:{tls_front_end.port}" in str(raised.value)
    assert list(replicas.iterdir()) == []


async def test_a_restart_between_two_pushes_neither_fails_the_second_nor_sends_a_row_twice(
    sync_server: SyncServer, replica_path: str
) -> None:
    sync_server.execute(LOG_SCHEMA)
    with FrontEnd(sync_server.port) as front_end:
        async with await bounded(connect_sync(replica_path, front_end.url)) as conn:
            await insert(conn, "before")
            await bounded(conn.push())
            assert transport_connections(conn) == 1
            # The remote restarts: the server goes down and comes back, and the edge closes the connection the
            # replica kept open, while the replica is idle.
            sync_server.stop()
            front_end.on_loop(front_end.cut_connections)
            sync_server.start()
            await insert(conn, "after")
            await asyncio.wait_for(conn.push(), AWAIT_SECONDS)
            assert transport_connections(conn) == 2
    assert remote_keys(sync_server, "log") == ["after", "before"]
