"""The sync engine's HTTP on the event loop (turso/_sync_aio/http.py, aiohttp) against loopback servers that misbehave
as real networks do, and against the real `tursodb --sync-server`: reuse, deadlines, abort, TLS, proxies, redirects,
what errors say, and the session that the replicas of one event loop share."""

import asyncio
import gc
import json
import shutil
import subprocess
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TypeVar

import pytest

from testkit.http_servers import (
    Answer,
    ForwardProxy,
    FullBacklogListener,
    HttpServer,
    RecordedRequest,
    SilentServer,
)
from testkit.sockets import held_connections
from testkit.sync_server import SyncServer, free_port
from testkit.tls import LoopbackCertificates
from turso._sync_aio import http as http_module
from turso._sync_aio.http import CHUNK_BYTES, RemoteHttp, TransportClosed, TransportError

# How soon after abort() the request in flight must have failed.
ABORT_SECONDS = 0.2
# Upper bound for one request of a test (each request has its own deadline well below it).
REQUEST_SECONDS = 10.0
TOKEN = "secret-token-4242"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
PIPELINE_BODY = json.dumps({"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]}).encode()

Closeable = TypeVar("Closeable", HttpServer, ForwardProxy, SilentServer, FullBacklogListener)


@dataclass
class Remote:
    """A RemoteHttp with the remote URL and token that the engine would pass to each of its requests."""

    http: RemoteHttp
    base_url: Optional[str]
    token: Optional[str] = None


MakeRemote = Callable[..., Remote]


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proxy variables of the machine running the tests do not apply to loopback tests; each test sets its own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as servers:
        yield servers


@pytest.fixture
async def make_remote(stack: ExitStack) -> AsyncIterator[MakeRemote]:
    """A RemoteHttp for `base_url` with a fixed token, user agent and timeout; closed after the test (before the
    servers of `stack`)."""
    made: list[RemoteHttp] = []

    def make(
        base_url: Optional[str], *, token: Optional[str] = None, timeout: float = 2.0, user_agent: str = "test-agent"
    ) -> Remote:
        http = RemoteHttp(user_agent, lambda: timeout)
        made.append(http)
        return Remote(http, base_url, token)

    yield make
    for http in made:
        await asyncio.wait_for(http.close(), REQUEST_SECONDS)


def started(stack: ExitStack, server: Closeable) -> Closeable:
    stack.callback(server.close)
    return server


async def call(
    remote: Remote,
    method: str = "POST",
    path: str = "/v2/pipeline",
    body: Optional[bytes] = b"{}",
    headers: tuple[tuple[str, str], ...] = (),
    *,
    url: Optional[str] = None,
    extra_wait: float = 0.0,
) -> tuple[int, bytes, list[bytes]]:
    """One request: its status, its whole body, and the pieces on_chunk got."""
    statuses: list[int] = []
    chunks: list[bytes] = []

    async def on_chunk(chunk: bytes) -> None:
        chunks.append(chunk)

    await asyncio.wait_for(
        remote.http.request(
            method,
            path,
            body,
            list(headers),
            base_url=remote.base_url,
            token=remote.token,
            url=url,
            extra_wait=extra_wait,
            on_status=statuses.append,
            on_chunk=on_chunk,
        ),
        REQUEST_SECONDS,
    )
    assert len(statuses) == 1, statuses
    return statuses[0], b"".join(chunks), chunks


async def failure(remote: Remote, **options: Any) -> TransportError:
    """The TransportError that one request raises (the test fails if it succeeds)."""
    with pytest.raises(TransportError) as raised:
        await call(remote, **options)
    return raised.value


async def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def in_flight(remote: Remote, **options: Any) -> "asyncio.Task[tuple[int, bytes, list[bytes]]]":
    """A request running in a task of its own, to abort or cancel it from the test."""
    return asyncio.ensure_future(call(remote, **options))


async def abort_and_check(remote: Remote, running: "asyncio.Task[Any]") -> None:
    """abort() makes the request in flight raise TransportClosed within ABORT_SECONDS."""
    await asyncio.sleep(0.1)  # let it settle in the phase under test
    assert not running.done(), f"the request ended before abort(): {running}"
    aborted_at = time.monotonic()
    remote.http.abort()
    await asyncio.wait({running}, timeout=REQUEST_SECONDS)
    ended_at = time.monotonic()
    assert running.done(), "the request did not end"
    assert isinstance(running.exception(), TransportClosed), repr(running.exception())
    assert ended_at - aborted_at < ABORT_SECONDS


# --- connection reuse ----------------------------------------------------------------------------------------------


async def test_keep_alive_server_gets_every_request_on_one_connection(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer())
    remote = make_remote(server.url)
    for number in range(20):
        assert (await call(remote, body=f"{number}".encode()))[:2] == (200, b"ok")
    assert remote.http.connections_opened == 1
    assert remote.http.requests_sent == 20
    assert server.connections == 1
    assert [request.body for request in server.requests] == [f"{number}".encode() for number in range(20)]


async def test_connection_close_answer_means_a_new_connection_next_time(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(close=True)))
    remote = make_remote(server.url)
    for _ in range(3):
        assert (await call(remote))[:2] == (200, b"ok")
    assert remote.http.connections_opened == 3
    assert server.connections == 3


async def test_idle_connection_closed_by_the_server_is_replaced_and_the_request_sent_once(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer())
    remote = make_remote(server.url)
    await call(remote, body=b"first push")
    server.close_idle()  # as a restarted server does
    await asyncio.sleep(0.05)  # the FIN reaches the client's socket, and the loop sees it
    assert (await call(remote, body=b"second push"))[:2] == (200, b"ok")
    assert [request.body for request in server.requests] == [b"first push", b"second push"]
    assert remote.http.connections_opened == 2


def drop_second_on_each_connection(request: RecordedRequest) -> Answer:
    return Answer(drop=request.index_on_connection == 2)


async def test_post_on_a_reused_connection_that_the_server_drops_unanswered_is_not_sent_again(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer(answer=drop_second_on_each_connection))
    remote = make_remote(server.url)
    await call(remote, body=b"push 1")
    error = await failure(remote, body=b"push 2")
    assert f"127.0.0.1:{server.port} closed the connection before answering" in str(error)
    assert not error.timed_out
    assert [request.body for request in server.requests] == [b"push 1", b"push 2"]


@pytest.mark.parametrize(("method", "path", "body"), [("GET", "/info", None), ("POST", "/pull-updates", b"pull")])
async def test_a_read_on_a_reused_connection_that_the_server_drops_unanswered_is_retried_once(
    stack: ExitStack, make_remote: MakeRemote, method: str, path: str, body: Optional[bytes]
) -> None:
    server = started(stack, HttpServer(answer=drop_second_on_each_connection))
    remote = make_remote(server.url)
    await call(remote, method=method, path=path, body=body)
    assert (await call(remote, method=method, path=path, body=body))[:2] == (200, b"ok")
    assert [(request.connection, request.index_on_connection) for request in server.requests] == [
        (1, 1),
        (1, 2),
        (2, 1),
    ]
    assert remote.http.connections_opened == 2


async def test_a_connection_idle_past_the_reuse_limit_is_replaced_though_the_server_keeps_it(
    stack: ExitStack, make_remote: MakeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A NAT on the way may forget a long-idle flow without a word: such a connection is not trusted with a push.
    # (The limit is read when the loop's session is made, at this test's first request.)
    monkeypatch.setattr(http_module, "MAX_IDLE_REUSE_SECONDS", 0.3)
    server = started(stack, HttpServer(answer=lambda request: Answer(headers=[("Keep-Alive", "timeout=60")])))
    remote = make_remote(server.url)
    await call(remote)
    await call(remote)
    assert remote.http.connections_opened == 1
    await asyncio.sleep(0.4)
    await call(remote)
    assert remote.http.connections_opened == 2
    assert server.connections == 2


async def test_two_requests_at_once_use_two_connections(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(delay=0.5 if request.body == b"slow" else 0)))
    remote = make_remote(server.url)
    slow = in_flight(remote, body=b"slow")
    await wait_until(lambda: len(server.requests) == 1)
    assert (await call(remote, body=b"fast"))[:2] == (200, b"ok")
    assert (await asyncio.wait_for(slow, REQUEST_SECONDS))[:2] == (200, b"ok")
    assert remote.http.connections_opened == 2
    for _ in range(3):
        await call(remote)
    assert remote.http.connections_opened == 2


# --- the session of a loop -----------------------------------------------------------------------------------------


async def test_the_replicas_of_one_loop_share_kept_alive_connections(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer())
    first, second = make_remote(server.url), make_remote(server.url)
    await call(first)
    await call(second)
    await call(first)
    assert server.connections == 1
    assert (first.http.connections_opened, second.http.connections_opened) == (1, 0)
    assert (first.http.requests_sent, second.http.requests_sent) == (2, 1)


async def test_closing_one_replica_leaves_the_session_to_the_others_and_the_last_closes_it(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer())
    first, second = make_remote(server.url), make_remote(server.url)
    await call(first)
    await call(second)
    await first.http.close()
    with pytest.raises(TransportClosed):
        await call(first)
    assert (await call(second))[:2] == (200, b"ok")
    assert server.connections == 1
    assert server.open_connections() == 1
    await second.http.close()
    await wait_until(lambda: server.open_connections() == 0)
    with pytest.raises(TransportClosed):
        await call(second)


def test_a_replica_whose_loop_closed_closes_without_an_error_or_an_unclosed_session(
    stack: ExitStack, caplog: pytest.LogCaptureFixture
) -> None:
    server = started(stack, HttpServer())
    # The first is closed later, the second never: it is dropped.
    replicas = [RemoteHttp("agent", lambda: 2.0), RemoteHttp("agent", lambda: 2.0)]

    async def use_both() -> None:
        for http in replicas:
            await call(Remote(http, server.url))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(use_both())  # the loop that made the session closes under both
        asyncio.run(asyncio.wait_for(replicas[0].close(), REQUEST_SECONDS))  # on another loop: no error
        replicas.clear()  # the last one lets go of the session when it is collected
        gc.collect()
    # (asyncio's own warnings about the sockets left open by a loop closed under them are not aiohttp's to give.)
    unclosed = [str(warning.message) for warning in caught if "Unclosed client session" in str(warning.message)]
    assert unclosed == []
    assert "Unclosed client session" not in caplog.text
    assert "Unclosed connector" not in caplog.text


async def test_a_replica_dropped_without_close_lets_the_last_one_close_the_session(stack: ExitStack) -> None:
    server = started(stack, HttpServer())
    remote = Remote(RemoteHttp("agent", lambda: 2.0), server.url)
    await call(remote)
    del remote
    gc.collect()
    await wait_until(lambda: server.open_connections() == 0)


# --- deadlines -----------------------------------------------------------------------------------------------------


async def test_connect_that_gets_no_answer_times_out(stack: ExitStack, make_remote: MakeRemote) -> None:
    listener = started(stack, FullBacklogListener())
    remote = make_remote(listener.url, timeout=0.5)
    began = time.monotonic()
    error = await failure(remote)
    assert time.monotonic() - began < 5.0
    assert error.timed_out
    assert str(error) == f"could not connect to 127.0.0.1:{listener.port} within 0.5 s (request_timeout)"


async def test_a_tls_handshake_that_gets_no_answer_times_out(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, SilentServer())
    error = await failure(make_remote(f"https://127.0.0.1:{server.port}", timeout=0.5))
    assert error.timed_out
    assert str(error) == f"could not connect to 127.0.0.1:{server.port} within 0.5 s (request_timeout)"


async def test_no_answer_within_the_timeout_fails_naming_host_and_timeout(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(hang=True)))
    remote = make_remote(server.url, timeout=0.5)
    error = await failure(remote)
    assert error.timed_out
    assert str(error) == f"no answer from 127.0.0.1:{server.port} within 0.5 s (request_timeout)"


async def test_a_trickled_answer_whose_bytes_keep_coming_is_not_cut(stack: ExitStack, make_remote: MakeRemote) -> None:
    body = b"0123456789"
    server = started(stack, HttpServer(answer=lambda request: Answer(body=body, trickle=0.2)))
    remote = make_remote(server.url, timeout=1.0)
    began = time.monotonic()
    status, received, chunks = await call(remote)
    assert (status, received) == (200, body)
    assert time.monotonic() - began >= 1.8
    assert len(chunks) > 1  # streamed as it came, not held until the end


async def test_an_answer_that_stops_midway_times_out(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(body=b"ab", trickle=1.0)))
    remote = make_remote(server.url, timeout=0.5)
    error = await failure(remote)
    assert error.timed_out
    assert str(error) == f"the answer from 127.0.0.1:{server.port} stalled: no byte for 0.5 s (request_timeout)"


async def test_extra_wait_lengthens_only_the_wait_for_the_first_byte(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(delay=0.8)))
    remote = make_remote(server.url, timeout=0.5)
    assert (await call(remote, extra_wait=0.6))[:2] == (200, b"ok")
    error = await failure(remote, extra_wait=0.1)
    assert error.timed_out
    assert str(error) == (
        f"no answer from 127.0.0.1:{server.port} within 0.6 s (request_timeout 0.5 s + 0.1 s of long poll)"
    )

    def trickle(request: RecordedRequest) -> Answer:
        return Answer(body=b"ab", trickle=0.8)

    server.answer = trickle
    error = await failure(remote, extra_wait=5.0)
    assert "stalled: no byte for 0.5 s" in str(error)


async def test_a_request_the_server_does_not_read_fails_when_sending_makes_no_progress(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, SilentServer())
    remote = make_remote(server.url, timeout=0.5)
    error = await failure(remote, body=bytes(64 * 1024 * 1024))
    assert error.timed_out
    assert str(error) == (
        f"could not send the request to 127.0.0.1:{server.port}: no progress for 0.5 s (request_timeout)"
    )


@pytest.mark.parametrize("cut", ["no_progress", "abort", "cancel"])
async def test_a_request_cut_while_sending_lets_go_of_its_socket_at_once(
    stack: ExitStack, make_remote: MakeRemote, cut: str
) -> None:
    # A server that never reads leaves the rest of the body in the socket's buffer. Closed politely, the socket would
    # stay open until that peer reads it (for ever here; until TCP gives up on a half-open link, a quarter of an hour).
    server = started(stack, SilentServer())
    remote = make_remote(server.url, timeout=0.5 if cut == "no_progress" else 30.0)
    running = in_flight(remote, body=bytes(64 * 1024 * 1024))
    await wait_until(lambda: server.connections == 1 and held_connections(remote_port=server.port) == 1)
    if cut == "abort":
        remote.http.abort()
    elif cut == "cancel":
        running.cancel()
    await asyncio.wait({running}, timeout=REQUEST_SECONDS)
    assert running.done()
    if cut == "cancel":
        assert running.cancelled()
    else:
        assert isinstance(running.exception(), TransportClosed if cut == "abort" else TransportError)
    await wait_until(lambda: held_connections(remote_port=server.port) == 0, seconds=1.0)


async def test_a_large_body_sent_slowly_but_steadily_is_not_cut(stack: ExitStack, make_remote: MakeRemote) -> None:
    # 8 MiB through a server that reads as fast as it can: the sending deadline is per slice, not for the whole body.
    server = started(stack, HttpServer())
    body = bytes(range(256)) * (32 * 1024)
    remote = make_remote(server.url, timeout=0.5)
    assert (await call(remote, body=body))[:2] == (200, b"ok")
    assert server.requests[0].header("Content-Length") == str(len(body))
    assert server.requests[0].header("Transfer-Encoding") is None
    assert server.requests[0].body == body


# --- abort and cancellation ----------------------------------------------------------------------------------------


async def test_abort_while_connecting(stack: ExitStack, make_remote: MakeRemote) -> None:
    listener = started(stack, FullBacklogListener())
    remote = make_remote(listener.url, timeout=30.0)
    await abort_and_check(remote, in_flight(remote))


async def test_abort_in_a_stalled_tls_handshake(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, SilentServer())
    remote = make_remote(f"https://127.0.0.1:{server.port}", timeout=30.0)
    running = in_flight(remote)
    await wait_until(lambda: server.connections == 1)
    await abort_and_check(remote, running)


async def test_abort_while_waiting_for_the_answer_then_every_request_fails_at_once(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(hang=True)))
    remote = make_remote(server.url, timeout=30.0)
    running = in_flight(remote)
    await wait_until(lambda: len(server.requests) == 1)
    await abort_and_check(remote, running)
    began = time.monotonic()
    with pytest.raises(TransportClosed):
        await call(remote)
    assert time.monotonic() - began < ABORT_SECONDS
    assert server.connections == 1
    assert remote.http.connections_opened == 1


async def test_abort_while_reading_a_trickled_body(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(body=b"x" * 100, trickle=0.05)))
    remote = make_remote(server.url, timeout=30.0)
    await abort_and_check(remote, in_flight(remote))


async def test_abort_while_sending(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, SilentServer())
    remote = make_remote(server.url, timeout=30.0)
    await abort_and_check(remote, in_flight(remote, body=bytes(64 * 1024 * 1024)))


async def test_abort_during_a_proxy_connect_that_gets_no_answer(
    stack: ExitStack, make_remote: MakeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent_proxy = started(stack, SilentServer())
    monkeypatch.setenv("HTTPS_PROXY", silent_proxy.url)
    remote = make_remote("https://127.0.0.1:9", timeout=30.0)
    running = in_flight(remote)
    await wait_until(lambda: silent_proxy.connections == 1)
    await abort_and_check(remote, running)


async def test_abort_while_the_engine_takes_a_piece_lets_it_finish_then_fails(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(body=b"x" * 100, trickle=0.05)))
    remote = make_remote(server.url, timeout=30.0)
    taking = asyncio.Event()
    release = asyncio.Event()
    taken: list[bytes] = []

    async def on_chunk(chunk: bytes) -> None:
        taking.set()
        await release.wait()  # the engine is busy with the piece (say, on a worker)
        taken.append(chunk)

    running = asyncio.ensure_future(
        remote.http.request(
            "POST", "/v2/pipeline", b"{}", [], base_url=remote.base_url, token=None, on_status=print, on_chunk=on_chunk
        )
    )
    await asyncio.wait_for(taking.wait(), REQUEST_SECONDS)
    remote.http.abort()
    await asyncio.sleep(0.05)
    assert not running.done()  # the piece in hand is not cancelled under the engine
    release.set()
    with pytest.raises(TransportClosed):
        await asyncio.wait_for(running, REQUEST_SECONDS)
    assert len(taken) == 1


async def test_abort_cuts_only_its_own_replicas_requests(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(delay=0.3)))
    cut, other = make_remote(server.url, timeout=5.0), make_remote(server.url, timeout=5.0)
    running_cut, running_other = in_flight(cut), in_flight(other)
    await wait_until(lambda: len(server.requests) == 2)
    cut.http.abort()
    assert (await asyncio.wait_for(running_other, REQUEST_SECONDS))[:2] == (200, b"ok")
    with pytest.raises(TransportClosed):
        await asyncio.wait_for(running_cut, REQUEST_SECONDS)
    assert (await call(other))[:2] == (200, b"ok")


async def test_a_cancelled_request_is_cancelled_and_the_replica_goes_on(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(hang=request.body == b"hang")))
    remote = make_remote(server.url, timeout=30.0)
    running = in_flight(remote, body=b"hang")
    await wait_until(lambda: len(server.requests) == 1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(running, REQUEST_SECONDS)
    assert (await call(remote))[:2] == (200, b"ok")


async def test_a_request_cut_by_a_stalled_send_leaves_its_callers_deadline_working(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    # The cut cancels the request's task and takes that cancellation back: an asyncio.wait_for around the request
    # still fires at its own time afterwards.
    server = started(stack, SilentServer())
    remote = make_remote(server.url, timeout=0.3)

    async def request_then_wait() -> None:
        with pytest.raises(TransportError, match="no progress"):
            await call(remote, body=bytes(64 * 1024 * 1024))
        await asyncio.sleep(REQUEST_SECONDS)

    began = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(request_then_wait(), 1.5)
    assert time.monotonic() - began < 3.0


async def test_close_of_the_last_replica_drops_idle_connections_and_later_requests_fail(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer())
    remote = make_remote(server.url)
    await call(remote)
    await remote.http.close()
    await wait_until(lambda: server.open_connections() == 0)
    with pytest.raises(TransportClosed):
        await call(remote)


# --- errors that say what happened ---------------------------------------------------------------------------------


async def test_refused_connection_says_so(make_remote: MakeRemote) -> None:
    port = free_port()
    error = await failure(make_remote(f"http://127.0.0.1:{port}"))
    assert str(error) == f"cannot connect to 127.0.0.1:{port}: [Errno 111] Connection refused"
    assert not error.timed_out


async def test_unknown_host_says_it_cannot_be_resolved(make_remote: MakeRemote) -> None:
    error = await failure(make_remote("http://no-such-host.invalid:8080", timeout=5.0))
    assert "no-such-host.invalid" in str(error)
    assert str(error).startswith("cannot resolve no-such-host.invalid: ") or error.timed_out


async def test_non_2xx_answers_are_passed_on_with_their_body(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(status=500, body=b"engine error text")))
    assert (await call(make_remote(server.url)))[:2] == (500, b"engine error text")


async def test_a_body_shorter_than_its_content_length_is_an_error(stack: ExitStack, make_remote: MakeRemote) -> None:
    def short(request: RecordedRequest) -> Answer:
        return Answer(body=b"abc", headers=[("Content-Length", "10")], until_close=True)

    server = started(stack, HttpServer(answer=short))
    error = await failure(make_remote(server.url))
    assert "ended 7 bytes before its Content-Length" in str(error)


async def test_engine_header_with_a_line_break_is_refused(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer())
    error = await failure(make_remote(server.url), headers=(("X-Evil", "a\r\nInjected: yes"),))
    assert "line break" in str(error)
    assert server.requests == []


async def test_what_a_callback_raises_passes_through_and_the_connection_is_not_reused(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(body=bytes(300_000))))
    remote = make_remote(server.url)

    async def refuse(chunk: bytes) -> None:
        raise KeyError("the engine's own error")

    with pytest.raises(KeyError, match="the engine's own error"):
        await remote.http.request(
            "POST", "/v2/pipeline", b"{}", [], base_url=server.url, token=None, on_status=print, on_chunk=refuse
        )
    assert (await call(remote))[:2] == (200, bytes(300_000))
    assert remote.http.connections_opened == 2


# --- bodies --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-close"])
async def test_a_large_body_streams_in_pieces_of_at_most_64_kib(
    stack: ExitStack, make_remote: MakeRemote, framing: str
) -> None:
    body = bytes(range(256)) * 1000

    def large(request: RecordedRequest) -> Answer:
        return Answer(body=body, chunked=framing == "chunked", until_close=framing == "until-close")

    server = started(stack, HttpServer(answer=large))
    status, received, chunks = await call(make_remote(server.url))
    assert (status, received) == (200, body)
    assert max(len(chunk) for chunk in chunks) <= CHUNK_BYTES


# --- headers -------------------------------------------------------------------------------------------------------


async def test_token_user_agent_and_framing_headers(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer())
    remote = make_remote(server.url, token=TOKEN, user_agent="my-client-name")
    await call(remote, body=b"12345", headers=(("Content-Type", "application/json"),))
    request = server.requests[0]
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert request.header("User-Agent") == "my-client-name"
    assert request.header("Content-Type") == "application/json"
    assert request.header("Content-Length") == "5"
    assert request.header("Host") == f"127.0.0.1:{server.port}"
    assert request.header("Accept-Encoding") == "identity"


async def test_headers_the_engine_sets_win(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer())
    remote = make_remote(server.url, token=TOKEN)
    await call(remote, headers=(("Authorization", "Bearer engine"), ("User-Agent", "engine-agent")))
    request = server.requests[0]
    assert [value for name, value in request.headers if name.lower() == "authorization"] == ["Bearer engine"]
    assert request.header("User-Agent") == "engine-agent"


async def test_no_token_no_authorization(stack: ExitStack, make_remote: MakeRemote) -> None:
    server = started(stack, HttpServer())
    await call(make_remote(server.url, token=None))
    assert server.requests[0].header("Authorization") is None


async def test_no_cookie_a_server_sets_goes_back_to_it(stack: ExitStack, make_remote: MakeRemote) -> None:
    # The loop's session is shared by every replica: a cookie jar would hand one tenant's cookies to another.
    server = started(stack, HttpServer(answer=lambda request: Answer(headers=[("Set-Cookie", "tenant=a; Path=/")])))
    await call(make_remote(server.url))
    await call(make_remote(server.url))
    assert [request.header("Cookie") for request in server.requests] == [None, None]


async def test_each_request_goes_to_its_base_url_with_its_token(stack: ExitStack, make_remote: MakeRemote) -> None:
    first, second = started(stack, HttpServer()), started(stack, HttpServer())
    remote = make_remote(first.url, token="one")
    await call(remote)
    remote.base_url, remote.token = second.url, "two"
    await call(remote)
    assert [request.header("Authorization") for request in first.requests + second.requests] == [
        "Bearer one",
        "Bearer two",
    ]


async def test_the_items_url_is_used_when_the_replica_has_no_remote_url(
    stack: ExitStack, make_remote: MakeRemote
) -> None:
    server = started(stack, HttpServer())
    await call(make_remote(None), path="/pull-updates", url=f"{server.url}/")
    assert server.requests[0].target == "/pull-updates"


async def test_the_token_appears_in_no_error_message(stack: ExitStack, make_remote: MakeRemote) -> None:
    hanging = started(stack, HttpServer(answer=lambda request: Answer(hang=True)))
    leaking = started(
        stack, HttpServer(answer=lambda request: Answer(status=302, headers=[("Location", f"/login?t={TOKEN}")]))
    )
    errors = [
        await failure(make_remote(f"http://127.0.0.1:{free_port()}", token=TOKEN)),
        await failure(make_remote(hanging.url, token=TOKEN, timeout=0.3)),
        await failure(make_remote(leaking.url, token=TOKEN)),
        await failure(make_remote(f"http://user:{TOKEN}@127.0.0.1:1", token=TOKEN)),
    ]
    for error in errors:
        assert TOKEN not in str(error) and TOKEN not in repr(error), str(error)
    assert "/login?t=<token>" in str(errors[2])


# --- redirects -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [307, 308])
async def test_307_and_308_are_followed_with_method_and_body(
    stack: ExitStack, make_remote: MakeRemote, status: int
) -> None:
    def moved(request: RecordedRequest) -> Answer:
        if request.target == "/v2/pipeline":
            return Answer(status=status, headers=[("Location", "/elsewhere/pipeline")], body=b"moved")
        return Answer(body=b"arrived")

    server = started(stack, HttpServer(answer=moved))
    remote = make_remote(server.url, token=TOKEN)
    assert (await call(remote, body=b"the push"))[:2] == (200, b"arrived")
    assert [(r.method, r.target, r.body) for r in server.requests] == [
        ("POST", "/v2/pipeline", b"the push"),
        ("POST", "/elsewhere/pipeline", b"the push"),
    ]
    # same origin: the token goes along, on the same kept-alive connection
    assert server.requests[1].header("Authorization") == f"Bearer {TOKEN}"
    assert remote.http.connections_opened == 1


async def test_a_redirected_large_body_is_sent_whole_again(stack: ExitStack, make_remote: MakeRemote) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: sent in slices, anew for the second hop

    def moved(request: RecordedRequest) -> Answer:
        if request.target == "/v2/pipeline":
            return Answer(status=307, headers=[("Location", "/elsewhere")])
        return Answer(body=b"arrived")

    server = started(stack, HttpServer(answer=moved))
    assert (await call(make_remote(server.url), body=body))[:2] == (200, b"arrived")
    assert [request.body == body for request in server.requests] == [True, True]


async def test_a_redirect_to_another_origin_carries_no_authorization(stack: ExitStack, make_remote: MakeRemote) -> None:
    other = started(stack, HttpServer())
    remote = started(
        stack, HttpServer(answer=lambda request: Answer(status=307, headers=[("Location", f"{other.url}/x")]))
    )
    engine_headers = (("x-turso-encryption-key", "the data key"), ("Content-Type", "application/json"))
    await call(make_remote(remote.url, token=TOKEN), body=b"push", headers=engine_headers)
    await call(make_remote(remote.url), body=b"push", headers=(("Authorization", "Basic engine-set"),))
    assert remote.requests[0].header("Authorization") == f"Bearer {TOKEN}"
    assert remote.requests[0].header("x-turso-encryption-key") == "the data key"
    assert [(r.body, r.header("Authorization")) for r in other.requests] == [(b"push", None), (b"push", None)]
    # The encryption key is a credential too; what describes the body goes along.
    assert other.requests[0].header("x-turso-encryption-key") is None
    assert other.requests[0].header("Content-Type") == "application/json"


async def test_a_redirect_from_https_to_http_is_an_error(
    stack: ExitStack,
    make_remote: MakeRemote,
    trusted_certificates: LoopbackCertificates,
) -> None:
    plain = started(stack, HttpServer())
    location = f"{plain.url}/v2/pipeline"
    remote = started(
        stack,
        HttpServer(
            tls=trusted_certificates.server_context(),
            answer=lambda request: Answer(status=307, headers=[("Location", location)]),
        ),
    )
    error = await failure(make_remote(remote.url, token=TOKEN), headers=(("x-turso-encryption-key", "the data key"),))
    assert "leaves TLS" in str(error) and location in str(error)
    assert plain.requests == []


@pytest.mark.parametrize("status", [301, 302, 303])
async def test_301_302_303_to_a_post_is_an_error_naming_the_location(
    stack: ExitStack, make_remote: MakeRemote, status: int
) -> None:
    other = started(stack, HttpServer())
    location = f"{other.url}/v2/pipeline"
    remote = started(stack, HttpServer(answer=lambda request: Answer(status=status, headers=[("Location", location)])))
    error = await failure(make_remote(remote.url, token=TOKEN))
    assert location in str(error)
    assert f"with {status}" in str(error)
    assert other.requests == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_get_follows_redirects_as_a_get(stack: ExitStack, make_remote: MakeRemote, status: int) -> None:
    other = started(stack, HttpServer(answer=lambda request: Answer(body=b"export")))
    remote = started(
        stack, HttpServer(answer=lambda request: Answer(status=status, headers=[("Location", f"{other.url}/e/1")]))
    )
    answer = await call(make_remote(remote.url, token=TOKEN), method="GET", path="/export/1", body=None)
    assert answer[:2] == (200, b"export")
    assert [(r.method, r.target, r.header("Authorization")) for r in other.requests] == [("GET", "/e/1", None)]


async def test_more_than_five_redirects_is_an_error(stack: ExitStack, make_remote: MakeRemote) -> None:
    def again(request: RecordedRequest) -> Answer:
        return Answer(status=307, headers=[("Location", f"/hop{request.index_on_connection}")])

    server = started(stack, HttpServer(answer=again))
    error = await failure(make_remote(server.url))
    assert "too many redirects" in str(error)
    assert len(server.requests) == 6


# --- TLS -----------------------------------------------------------------------------------------------------------


@pytest.fixture
def certificates() -> LoopbackCertificates:
    return LoopbackCertificates()


@pytest.fixture
def trusted_certificates(
    certificates: LoopbackCertificates, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> LoopbackCertificates:
    """Loopback certificates whose CA the transport trusts (through SSL_CERT_FILE, as urllib reads it)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.write_ca(tmp_path / "ca.pem")))
    return certificates


async def test_tls_with_a_ca_from_ssl_cert_file(
    stack: ExitStack,
    make_remote: MakeRemote,
    trusted_certificates: LoopbackCertificates,
) -> None:
    server = started(stack, HttpServer(tls=trusted_certificates.server_context()))
    for host in ("127.0.0.1", "localhost"):
        remote = make_remote(f"https://{host}:{server.port}", token=TOKEN)
        for _ in range(5):
            assert (await call(remote))[:2] == (200, b"ok")
        assert remote.http.connections_opened == 1
    assert server.requests[0].header("Authorization") == f"Bearer {TOKEN}"


async def test_libsql_and_turso_urls_speak_https(
    stack: ExitStack,
    make_remote: MakeRemote,
    trusted_certificates: LoopbackCertificates,
) -> None:
    server = started(stack, HttpServer(tls=trusted_certificates.server_context()))
    for scheme in ("libsql", "turso"):
        assert (await call(make_remote(f"{scheme}://127.0.0.1:{server.port}")))[:2] == (200, b"ok")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to hash a CA folder")
async def test_tls_with_a_ca_folder_from_ssl_cert_dir(
    stack: ExitStack,
    make_remote: MakeRemote,
    certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "certs"
    folder.mkdir()
    certificates.write_ca(folder / "test-ca.pem")
    subprocess.run(["openssl", "rehash", str(folder)], check=True, timeout=30, capture_output=True)
    monkeypatch.setenv("SSL_CERT_DIR", str(folder))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-file.pem"))
    server = started(stack, HttpServer(tls=certificates.server_context()))
    assert (await call(make_remote(f"https://127.0.0.1:{server.port}")))[:2] == (200, b"ok")


async def test_an_untrusted_certificate_fails_clearly(
    stack: ExitStack,
    make_remote: MakeRemote,
    certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(LoopbackCertificates().write_ca(tmp_path / "other-ca.pem")))
    server = started(stack, HttpServer(tls=certificates.server_context()))
    error = await failure(make_remote(f"https://127.0.0.1:{server.port}", token=TOKEN))
    assert str(error).startswith(f"certificate verification failed for 127.0.0.1:{server.port}: ")
    assert server.requests == []


# --- proxies -------------------------------------------------------------------------------------------------------


async def test_http_remote_through_the_proxy_of_http_proxy(
    stack: ExitStack, make_remote: MakeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = started(stack, HttpServer())
    proxy = started(stack, ForwardProxy(credentials="user:p@ss"))
    monkeypatch.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    assert (await call(make_remote(server.url, token=TOKEN), body=b"via proxy"))[:2] == (200, b"ok")
    assert proxy.requests == [("POST", f"{server.url}/v2/pipeline")]
    assert proxy.authorizations[0] is not None and proxy.authorizations[0].startswith("Basic ")
    assert [(r.target, r.body, r.header("Authorization")) for r in server.requests] == [
        ("/v2/pipeline", b"via proxy", f"Bearer {TOKEN}")
    ]


async def test_https_remote_through_a_connect_tunnel_of_https_proxy(
    stack: ExitStack,
    make_remote: MakeRemote,
    trusted_certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = started(stack, HttpServer(tls=trusted_certificates.server_context()))
    proxy = started(stack, ForwardProxy())
    monkeypatch.setenv("https_proxy", proxy.url)
    remote = make_remote(f"https://127.0.0.1:{server.port}")
    for _ in range(3):
        assert (await call(remote))[:2] == (200, b"ok")
    assert proxy.requests == [("CONNECT", f"127.0.0.1:{server.port}")]
    assert proxy.tunnels == 1
    assert remote.http.connections_opened == 1
    assert len(server.requests) == 3


async def test_connect_tunnel_with_proxy_credentials(
    stack: ExitStack,
    make_remote: MakeRemote,
    trusted_certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = started(stack, HttpServer(tls=trusted_certificates.server_context()))
    proxy = started(stack, ForwardProxy(credentials="tunnel user:pw"))
    monkeypatch.setenv("HTTPS_PROXY", f"http://tunnel%20user:pw@127.0.0.1:{proxy.port}")
    assert (await call(make_remote(f"https://127.0.0.1:{server.port}", token=TOKEN)))[:2] == (200, b"ok")
    assert proxy.tunnels == 1
    # the token travels inside the tunnel only
    assert server.requests[0].header("Authorization") == f"Bearer {TOKEN}"


async def test_proxy_refusing_the_tunnel_is_an_error(
    stack: ExitStack, make_remote: MakeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = started(stack, ForwardProxy(credentials="user:secret"))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    error = await failure(make_remote("https://127.0.0.1:9"))
    assert str(error).startswith(f"the proxy 127.0.0.1:{proxy.port} refused the tunnel to 127.0.0.1:9: ")
    assert "407" in str(error)


async def test_no_proxy_bypasses_the_proxy(
    stack: ExitStack, make_remote: MakeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = started(stack, HttpServer())
    proxy = started(stack, ForwardProxy())
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert (await call(make_remote(server.url)))[:2] == (200, b"ok")
    assert proxy.requests == []
    assert len(server.requests) == 1


async def test_connect_timeout_through_a_proxy_names_both(
    stack: ExitStack, make_remote: MakeRemote, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent_proxy = started(stack, SilentServer())
    monkeypatch.setenv("HTTPS_PROXY", silent_proxy.url)
    error = await failure(make_remote("https://127.0.0.1:9", timeout=0.3))
    assert error.timed_out
    assert str(error) == (
        f"could not connect to 127.0.0.1:9 (through the proxy 127.0.0.1:{silent_proxy.port}) within 0.3 s "
        "(request_timeout)"
    )


# --- the real sync server ------------------------------------------------------------------------------------------


async def test_a_pipeline_request_to_the_real_sync_server(sync_server: SyncServer, make_remote: MakeRemote) -> None:
    remote = make_remote(sync_server.url)
    for _ in range(2):
        status, body, _ = await call(remote, body=PIPELINE_BODY, headers=(("Content-Type", "application/json"),))
        assert status == 200
        rows = json.loads(body)["results"][0]["response"]["result"]["rows"]
        assert rows == [[{"type": "integer", "value": "1"}]]
    # tursodb answers every request with `Connection: close`
    assert remote.http.connections_opened == 2
