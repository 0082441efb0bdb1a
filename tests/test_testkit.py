"""The test equipment itself (testkit/): the fault proxy's verbs and the keep-alive front end, in this process and as
child processes, against a real `tursodb --sync-server` on 127.0.0.1.

Requests go through `http.client` or raw sockets with timeouts, so a hang fails the test. Timings are asserted only
as lower bounds (a delay holds at least that long); the machine running the suite may be busy.
"""

import asyncio
import concurrent.futures
import http.client
import http.server
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import turso.aio.sync
from testkit._loop_server import HOST, LoopServer
from testkit.front_end import FrontEnd, FrontEndProcess
from testkit.proxy import CUT_ANSWER, REFUSE, DelayingProxy, ProxyProcess
from testkit.sockets import held_connections
from testkit.sync_server import SyncServer, free_port
from tests.helpers import bounded, remote_keys, wait_until_blocking

# Upper bound for any socket operation of a test; a request that should stay unanswered waits SILENT_SECONDS.
SOCKET_SECONDS = 10.0
SILENT_SECONDS = 0.5
# Slack for a delay measured on a busy machine: a delay of d seconds must take at least d * LOWER_BOUND.
LOWER_BOUND = 0.9
SCHEMA = "CREATE TABLE t(k TEXT)"


def pipeline(sql: str) -> bytes:
    """The body of a POST /v2/pipeline that runs `sql`."""
    return json.dumps({"requests": [{"type": "execute", "stmt": {"sql": sql}}]}).encode()


def raw_request(sql: str) -> bytes:
    """A whole HTTP request for `sql`, for a raw socket."""
    body = pipeline(sql)
    head = f"POST /v2/pipeline HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


# The connections http_to made in the running test, closed after it.
_made_connections: list[http.client.HTTPConnection] = []


@pytest.fixture(autouse=True)
def close_made_connections() -> Iterator[None]:
    yield
    while _made_connections:
        _made_connections.pop().close()


def http_to(url: str, timeout: float = SOCKET_SECONDS) -> http.client.HTTPConnection:
    """A keep-alive HTTP connection to a testkit server's `url` (opened by the first request; closed after the
    test)."""
    connection = http.client.HTTPConnection("127.0.0.1", port_of(url), timeout=timeout)
    _made_connections.append(connection)
    return connection


def execute(connection: http.client.HTTPConnection, sql: str) -> http.client.HTTPResponse:
    """Run `sql` through `connection` and return the answer, its body read (and kept in `answer.body`)."""
    connection.request("POST", "/v2/pipeline", pipeline(sql), {"Content-Type": "application/json"})
    answer = connection.getresponse()
    body = answer.read()
    assert answer.status == 200, f"{answer.status}: {body!r}"
    assert json.loads(body)["results"][0]["type"] == "ok", body
    return answer


def timed(action: Callable[[], object]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Threads for requests that a test holds while it checks something else (each result awaited with a bound)."""
    with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="test-client") as executor:
        yield executor


@pytest.fixture
def front_end(sync_server: SyncServer) -> Iterator[FrontEnd]:
    with FrontEnd(sync_server.port) as front_end:
        yield front_end


@pytest.fixture
def proxy_before_front_end(front_end: FrontEnd) -> Iterator[DelayingProxy]:
    """A proxy in front of the front end: a connection through it carries many requests, as a kept-alive one does."""
    with DelayingProxy(front_end.port) as proxy:
        yield proxy


# --- the sync server ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["nothing", "half a head", "a head and half a body"])
def test_a_client_that_has_not_sent_its_whole_request_does_not_stop_the_server_for_others(
    sync_server: SyncServer, sent: str
) -> None:
    # tursodb alone serves one connection at a time, and waits for the whole request of the one it took; the relay in
    # front of it (what the tests' server fixture starts) takes requests concurrently, as Turso's servers do.
    sync_server.execute(SCHEMA)
    whole = raw_request("INSERT INTO t VALUES ('answered')")
    partial = {"nothing": b"", "half a head": whole[:20], "a head and half a body": whole[: len(whole) - 5]}[sent]
    with socket.create_connection(("127.0.0.1", sync_server.port), timeout=SOCKET_SECONDS) as waiting:
        waiting.sendall(partial)
        time.sleep(0.1)  # the relay has taken the waiting connection
        with socket.create_connection(("127.0.0.1", sync_server.port), timeout=SOCKET_SECONDS) as other:
            other.sendall(whole)
            assert other.recv(64).startswith(b"HTTP/1.1 200")
        assert remote_keys(sync_server) == ["answered"]
        waiting.sendall(whole[len(partial) :])
        assert waiting.recv(64).startswith(b"HTTP/1.1 200")
    assert remote_keys(sync_server) == ["answered", "answered"]


class _AnswersAndLeaves(LoopServer):
    """Writes a large answer to each connection and returns at once, whether or not its client reads it."""

    def __init__(self) -> None:
        self.left = threading.Event()
        super().__init__("test-answers-and-leaves")

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(bytes(8 * 1024 * 1024))
        self.left.set()


def test_a_testkit_server_closes_a_connection_whose_client_reads_nothing() -> None:
    # Closed politely, such a connection would wait for its client to read the rest of the answer: past close(), with
    # its socket open until a garbage collection (which, on Python 3.13.0, then failed in asyncio's Server._wakeup).
    with _AnswersAndLeaves() as server:
        with socket.create_connection((HOST, server.port), timeout=SOCKET_SECONDS):
            assert server.left.wait(SOCKET_SECONDS)
            assert held_connections(local_port=server.port) == 1
            server.close()
            assert held_connections(local_port=server.port) == 0


# --- the proxy ---------------------------------------------------------------------------------------------------


def test_the_proxy_forwards_requests_and_counts_connections(sync_server: SyncServer, proxy: DelayingProxy) -> None:
    sync_server.execute(SCHEMA)
    for key in ("a", "b"):
        connection = http_to(proxy.url)
        execute(connection, f"INSERT INTO t VALUES ('{key}')")
        connection.close()
    assert remote_keys(sync_server) == ["a", "b"]
    assert (proxy.connections, proxy.requests, proxy.held, proxy.misbehaved) == (2, 2, 0, 0)


def test_delay_and_answer_delay_each_hold_a_request_that_long(sync_server: SyncServer, proxy: DelayingProxy) -> None:
    proxy.delay = 0.3
    assert timed(lambda: execute(http_to(proxy.url), "SELECT 1")) >= 0.3 * LOWER_BOUND
    proxy.delay, proxy.answer_delay = 0.0, 0.3
    assert timed(lambda: execute(http_to(proxy.url), "SELECT 1")) >= 0.3 * LOWER_BOUND


def test_stall_holds_a_request_from_the_server_until_release(
    sync_server: SyncServer, proxy: DelayingProxy, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    sync_server.execute(SCHEMA)
    proxy.stall()
    inserting = pool.submit(execute, http_to(proxy.url), "INSERT INTO t VALUES ('held')")
    assert wait_until_blocking(lambda: proxy.held == 1), "the request never reached the stalled proxy"
    time.sleep(SILENT_SECONDS)
    assert remote_keys(sync_server) == [] and not inserting.done()
    proxy.release()
    inserting.result(SOCKET_SECONDS)
    assert remote_keys(sync_server) == ["held"]
    assert proxy.held == 0


def test_stall_also_holds_a_connection_already_open(
    sync_server: SyncServer,
    front_end: FrontEnd,
    proxy_before_front_end: DelayingProxy,
    pool: concurrent.futures.ThreadPoolExecutor,
) -> None:
    proxy = proxy_before_front_end
    sync_server.execute(SCHEMA)
    connection = http_to(proxy.url)
    execute(connection, "INSERT INTO t VALUES ('before')")
    proxy.stall()
    inserting = pool.submit(execute, connection, "INSERT INTO t VALUES ('held')")
    assert wait_until_blocking(lambda: proxy.held == 1), "the second request never reached the stalled proxy"
    assert remote_keys(sync_server) == ["before"]
    proxy.release()
    inserting.result(SOCKET_SECONDS)
    assert remote_keys(sync_server) == ["before", "held"]
    assert (proxy.connections, front_end.connections, front_end.requests) == (1, 1, 2)


def test_black_hole_swallows_new_connections_and_only_cut_ends_them(
    sync_server: SyncServer, proxy: DelayingProxy
) -> None:
    sync_server.execute(SCHEMA)
    proxy.black_hole()
    swallowed = socket.create_connection(("127.0.0.1", proxy.port), timeout=SILENT_SECONDS)
    with swallowed:
        swallowed.sendall(raw_request("INSERT INTO t VALUES ('swallowed')"))
        with pytest.raises(socket.timeout):
            swallowed.recv(1)  # neither answered nor closed
        proxy.release()
        connection = http_to(proxy.url)
        execute(connection, "INSERT INTO t VALUES ('after')")  # new connections pass again
        with pytest.raises(socket.timeout):
            swallowed.recv(1)  # the swallowed one stays silent, as a dropped flow does
        assert remote_keys(sync_server) == ["after"]
        proxy.cut()
        swallowed.settimeout(SOCKET_SECONDS)
        try:
            assert swallowed.recv(1) == b""
        except ConnectionResetError:
            pass  # closed either way
    assert proxy.connections == 2


def test_black_hole_of_open_connections_freezes_a_kept_alive_connection(
    sync_server: SyncServer, proxy_before_front_end: DelayingProxy
) -> None:
    proxy = proxy_before_front_end
    sync_server.execute(SCHEMA)
    connection = http_to(proxy.url, timeout=SILENT_SECONDS)
    execute(connection, "INSERT INTO t VALUES ('before')")
    proxy.black_hole(open_connections=True)
    with pytest.raises(socket.timeout):
        execute(connection, "INSERT INTO t VALUES ('frozen')")
    proxy.release()
    frozen = connection.sock
    assert frozen is not None
    with pytest.raises(socket.timeout):
        frozen.recv(1)  # still silent: release() lets only new connections through
    execute(http_to(proxy.url), "INSERT INTO t VALUES ('new connection')")
    assert remote_keys(sync_server) == ["before", "new connection"]


def test_trickle_sends_an_answer_a_few_bytes_at_a_time(sync_server: SyncServer, proxy: DelayingProxy) -> None:
    proxy.trickle_bytes, proxy.trickle_interval = 100, 0.05
    pieces: list[bytes] = []
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=SOCKET_SECONDS) as client:
        client.sendall(raw_request("SELECT 1"))
        while piece := client.recv(65536):
            pieces.append(piece)
    took = time.monotonic() - started
    answer = b"".join(pieces)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"}")
    assert len(pieces[0]) <= 100
    assert took >= (len(answer) // 100) * 0.05 * LOWER_BOUND, f"{len(answer)} bytes in {took:.2f} s"


# "refuse" closes the connection before the server sees the request; "cut_answer" lets the server act, then closes
# the connection without its answer.
@pytest.mark.parametrize("mode, on_the_server", [(REFUSE, []), (CUT_ANSWER, ["written"])])
def test_a_flaky_connection_fails_the_request_before_or_after_the_server_acted(
    sync_server: SyncServer, mode: str, on_the_server: list[str]
) -> None:
    sync_server.execute(SCHEMA)
    with DelayingProxy(sync_server.port, flaky=1.0, flaky_modes=(mode,)) as proxy:
        with pytest.raises(ConnectionError):
            execute(http_to(proxy.url), "INSERT INTO t VALUES ('written')")
        assert proxy.misbehaved == 1
    assert remote_keys(sync_server) == on_the_server


def test_hold_answers_lets_the_request_act_and_holds_its_answer_until_release(sync_server: SyncServer) -> None:
    sync_server.execute(SCHEMA)
    with DelayingProxy(sync_server.port) as proxy:
        proxy.hold_answers(b"'held'")
        execute(http_to(proxy.url), "INSERT INTO t VALUES ('passed')")  # not matched: answered at once
        held: concurrent.futures.Future[int] = concurrent.futures.Future()

        def insert_held() -> None:
            try:
                held.set_result(execute(http_to(proxy.url), "INSERT INTO t VALUES ('held')").status)
            except BaseException as error:
                held.set_exception(error)

        threading.Thread(target=insert_held, name="testkit-client").start()
        assert wait_until_blocking(lambda: proxy.answers_held == 1)
        assert remote_keys(sync_server) == ["held", "passed"]  # the server acted
        assert not held.done()
        proxy.release()
        assert held.result(timeout=SOCKET_SECONDS) == 200  # and execute() found it "ok"


def test_flaky_picks_the_same_connections_for_the_same_seed(sync_server: SyncServer) -> None:
    def misbehaving(seed: int) -> list[bool]:
        picked: list[bool] = []
        with DelayingProxy(sync_server.port, flaky=0.5, seed=seed) as proxy:
            for _ in range(12):
                before = proxy.misbehaved
                try:
                    execute(http_to(proxy.url), "SELECT 1")
                except ConnectionError:
                    pass
                picked.append(proxy.misbehaved > before)
        return picked

    first = misbehaving(seed=7)
    assert first == misbehaving(seed=7)
    assert any(first) and not all(first)


def test_wan_charges_a_new_connection_a_round_trip_and_every_request_one(
    sync_server: SyncServer, proxy_before_front_end: DelayingProxy
) -> None:
    proxy = proxy_before_front_end
    proxy.wan(0.2)
    assert (proxy.delay, proxy.answer_delay, proxy.connect_delay) == (0.1, 0.1, 0.2)
    connection = http_to(proxy.url)
    # Connecting, then the request there and the answer back: two round trips; the next request on it, one.
    assert timed(lambda: execute(connection, "SELECT 1")) >= 0.4 * LOWER_BOUND
    assert timed(lambda: execute(connection, "SELECT 1")) >= 0.2 * LOWER_BOUND
    assert proxy.connections == 1


def test_cut_closes_every_open_connection_held_ones_too(
    sync_server: SyncServer, proxy: DelayingProxy, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    proxy.stall()
    held = pool.submit(execute, http_to(proxy.url), "SELECT 1")
    assert wait_until_blocking(lambda: proxy.held == 1)
    proxy.cut()
    with pytest.raises(ConnectionError):
        held.result(SOCKET_SECONDS)
    assert proxy.held == 0
    proxy.release()
    execute(http_to(proxy.url), "SELECT 1")


def test_close_ends_the_proxy_thread_and_its_port(sync_server: SyncServer) -> None:
    before = {thread for thread in threading.enumerate() if thread.name == "testkit-proxy"}
    proxy = DelayingProxy(sync_server.port)
    proxy.stall()
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=SOCKET_SECONDS)
    client.sendall(raw_request("SELECT 1"))
    assert wait_until_blocking(lambda: proxy.held == 1)
    proxy.close()
    proxy.close()  # twice is fine
    with client:
        assert client.recv(1) == b""  # the held connection was closed
    assert {thread for thread in threading.enumerate() if thread.name == "testkit-proxy"} == before
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=SOCKET_SECONDS).close()
    with pytest.raises(RuntimeError, match="closed"):
        proxy.stall()


def test_bad_flaky_modes_are_refused() -> None:
    with pytest.raises(ValueError, match="flaky_modes"):
        DelayingProxy(free_port(), flaky_modes=("sometimes",))


def test_the_proxy_process_takes_the_same_verbs(
    sync_server: SyncServer, pool: concurrent.futures.ThreadPoolExecutor
) -> None:
    sync_server.execute(SCHEMA)
    with ProxyProcess(sync_server.port) as proxy:
        execute(http_to(proxy.url), "INSERT INTO t VALUES ('a')")
        proxy.stall()
        inserting = pool.submit(execute, http_to(proxy.url), "INSERT INTO t VALUES ('b')")
        # (The first request's connection may be held too: its end of stream, if the proxy reads it after the stall.)
        assert wait_until_blocking(lambda: proxy.counters()["held"] >= 1, SOCKET_SECONDS)
        assert remote_keys(sync_server) == ["a"]
        proxy.release()
        inserting.result(SOCKET_SECONDS)
        proxy.configure(delay=0.3)
        assert timed(lambda: execute(http_to(proxy.url), "SELECT 1")) >= 0.3 * LOWER_BOUND
        assert proxy.counters() == {"connections": 3, "held": 0, "misbehaved": 0}
        with pytest.raises(RuntimeError, match="unknown command"):
            proxy.configure(nonsense=1.0)
    assert remote_keys(sync_server) == ["a", "b"]


# --- the front end -----------------------------------------------------------------------------------------------


async def test_a_replica_opens_pushes_and_pulls_through_the_front_end(
    sync_server: SyncServer, front_end: FrontEnd, tmp_path: Path
) -> None:
    big = "x" * 300_000  # an answer of several chunks on the way back
    async with await bounded(turso.aio.sync.connect(str(tmp_path / "writer.db"), front_end.url)) as writer:
        await bounded(writer.execute("CREATE TABLE notes(body TEXT)"))
        await bounded(writer.execute("INSERT INTO notes VALUES (?)", (big,)))
        await bounded(writer.commit())
        await bounded(writer.push())
    assert sync_server.execute("SELECT length(body) FROM notes") == [(len(big),)]
    sync_server.execute("INSERT INTO notes VALUES ('from the server')")
    async with await bounded(turso.aio.sync.connect(str(tmp_path / "reader.db"), front_end.url)) as reader:
        sync_server.execute("INSERT INTO notes VALUES ('after the bootstrap')")
        assert await bounded(reader.pull()) is True
        rows = await bounded(reader.execute_fetchall("SELECT length(body) FROM notes ORDER BY rowid"))
    assert [tuple(row) for row in rows] == [(len(big),), (15,), (19,)]
    assert front_end.connections >= 1 and front_end.requests >= front_end.connections


def test_two_requests_reuse_one_client_connection(sync_server: SyncServer, front_end: FrontEnd) -> None:
    sync_server.execute(SCHEMA)
    connection = http_to(front_end.url)
    for key in ("a", "b"):
        answer = execute(connection, f"INSERT INTO t VALUES ('{key}')")
        assert answer.getheader("Connection") is None  # the server's `close` stays behind the front end
    assert remote_keys(sync_server) == ["a", "b"]
    assert (front_end.connections, front_end.requests) == (1, 2)


def test_a_client_that_asks_for_close_gets_its_connection_closed(front_end: FrontEnd) -> None:
    with socket.create_connection(("127.0.0.1", front_end.port), timeout=SOCKET_SECONDS) as client:
        client.sendall(raw_request("SELECT 1"))
        answer = b""
        while piece := client.recv(65536):
            answer += piece
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\nConnection: close\r\n" in answer
    assert front_end.requests == 1


def test_a_refused_upstream_is_answered_502_on_a_connection_that_stays_open() -> None:
    # A port held bound but not listening refuses connections, and cannot become the front end's own port.
    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))
        with FrontEnd(refusing.getsockname()[1]) as front_end:
            connection = http_to(front_end.url)
            for _ in range(2):
                connection.request("POST", "/v2/pipeline", pipeline("SELECT 1"))
                answer = connection.getresponse()
                assert answer.status == 502 and b"did not accept" in answer.read()
            assert (front_end.connections, front_end.requests) == (1, 0)


class _EchoEndingByClosing(http.server.BaseHTTPRequestHandler):
    """Answers a GET with a long text, a chunked POST with its body decoded; neither answer has a Content-Length, so
    each ends when the server closes (HTTP/1.0 style)."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(LONG_TEXT)

    def do_POST(self) -> None:
        body = b""
        while size := int(self.rfile.readline().split(b";")[0], 16):
            body += self.rfile.read(size)
            self.rfile.readline()
        self.rfile.readline()  # the blank line after the last chunk
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


LONG_TEXT = b"ended by closing " * 5000


@pytest.fixture
def echo_server() -> Iterator[int]:
    """The port of a loopback HTTP server whose answers end by closing (see _EchoEndingByClosing)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _EchoEndingByClosing)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="echo-server")
    serving.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        serving.join(SOCKET_SECONDS)


def test_an_answer_ended_by_closing_goes_on_as_chunks_on_a_connection_that_stays_open(echo_server: int) -> None:
    with FrontEnd(echo_server) as front_end:
        connection = http_to(front_end.url)
        for _ in range(2):
            connection.request("GET", "/")
            answer = connection.getresponse()
            assert answer.getheader("Transfer-Encoding") == "chunked"
            assert answer.read() == LONG_TEXT
        assert (front_end.connections, front_end.requests) == (1, 2)


def test_a_chunked_request_reaches_the_server_whole(echo_server: int) -> None:
    with FrontEnd(echo_server) as front_end:
        connection = http_to(front_end.url)
        pieces = [b"first piece, ", b"second piece, ", b"x" * 100_000]
        connection.request("POST", "/", iter(pieces), encode_chunked=True)
        assert connection.getresponse().read() == b"".join(pieces)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=SOCKET_SECONDS,
    )
    return cert, key


def test_a_tls_front_end_keeps_the_client_connection_open(
    sync_server: SyncServer, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    with FrontEnd(sync_server.port, server_context) as front_end:
        assert front_end.url.startswith("https://")
        client_context = ssl.create_default_context(cafile=str(cert))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", front_end.port, timeout=SOCKET_SECONDS, context=client_context
        )
        try:
            execute(connection, "SELECT 1")
            execute(connection, "SELECT 2")
        finally:
            connection.close()
        assert (front_end.connections, front_end.requests) == (1, 2)


def test_the_front_end_process_forwards_and_counts(sync_server: SyncServer, certificate: tuple[Path, Path]) -> None:
    with FrontEndProcess(sync_server.port) as front_end:
        connection = http_to(front_end.url)
        execute(connection, "SELECT 1")
        execute(connection, "SELECT 2")
        assert front_end.counters() == {"connections": 1, "requests": 2}
    cert, key = certificate
    with FrontEndProcess(sync_server.port, str(cert), str(key)) as front_end:
        assert front_end.url.startswith("https://")
        connection = http.client.HTTPSConnection(
            "127.0.0.1", front_end.port, timeout=SOCKET_SECONDS, context=ssl.create_default_context(cafile=str(cert))
        )
        _made_connections.append(connection)
        execute(connection, "SELECT 1")
        assert front_end.counters() == {"connections": 1, "requests": 1}
