"""The sync transport (turso/_sync_aio/transport.py) against loopback servers that misbehave as real networks do, and
against the real `tursodb --sync-server`: reuse, deadlines, abort, TLS, proxies, redirects, and what errors say."""

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
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
from testkit.sync_server import SyncServer, free_port
from testkit.tls import LoopbackCertificates
from turso._sync_aio import transport as transport_module
from turso._sync_aio.transport import CHUNK_BYTES, SyncTransport, TransportClosed, TransportError

# How soon after abort() the request in flight must have failed.
ABORT_SECONDS = 0.2
# Upper bound for a test thread that runs a request (each request has its own deadline well below it).
JOIN_SECONDS = 10.0
TOKEN = "secret-token-4242"
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")
PIPELINE_BODY = json.dumps({"requests": [{"type": "execute", "stmt": {"sql": "SELECT 1"}}]}).encode()

Closeable = TypeVar("Closeable", HttpServer, ForwardProxy, SilentServer, FullBacklogListener)
MakeTransport = Callable[..., SyncTransport]


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
def make_transport(stack: ExitStack) -> MakeTransport:
    """SyncTransport for `base_url` with a fixed token, user agent and timeout; closed after the test."""

    def make(
        base_url: Optional[str], *, token: Optional[str] = None, timeout: float = 2.0, user_agent: str = "test-agent"
    ) -> SyncTransport:
        transport = SyncTransport(lambda: base_url, lambda: token, user_agent, lambda: timeout)
        stack.callback(transport.close)
        return transport

    return make


def started(stack: ExitStack, server: Closeable) -> Closeable:
    stack.callback(server.close)
    return server


def call(
    transport: SyncTransport,
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
    transport.request(
        method,
        path,
        body,
        list(headers),
        url=url,
        extra_wait=extra_wait,
        on_status=statuses.append,
        on_chunk=chunks.append,
    )
    assert len(statuses) == 1, statuses
    return statuses[0], b"".join(chunks), chunks


def failure(transport: SyncTransport, **options: Any) -> TransportError:
    """The TransportError that one request raises (the test fails if it succeeds)."""
    with pytest.raises(TransportError) as raised:
        call(transport, **options)
    return raised.value


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


class Background:
    """A request run on a test thread, to abort it from the test's thread."""

    def __init__(self, transport: SyncTransport, **options: Any) -> None:
        self.error: Optional[BaseException] = None
        self.ended_at = 0.0
        self._thread = threading.Thread(target=self._run, args=(transport, options), name="test-request", daemon=True)
        self._thread.start()

    def _run(self, transport: SyncTransport, options: dict[str, Any]) -> None:
        try:
            call(transport, **options)
        except BaseException as error:  # noqa: BLE001 - the test inspects it
            self.error = error
        self.ended_at = time.monotonic()

    def join(self) -> None:
        self._thread.join(JOIN_SECONDS)
        assert not self._thread.is_alive(), "the request did not end"


def abort_and_check(transport: SyncTransport, running: Background) -> None:
    """abort() makes the request in flight raise TransportClosed within ABORT_SECONDS."""
    time.sleep(0.1)  # let it settle in the phase under test
    assert running.ended_at == 0.0, f"the request ended before abort(): {running.error!r}"
    aborted_at = time.monotonic()
    transport.abort()
    running.join()
    assert isinstance(running.error, TransportClosed), repr(running.error)
    assert running.ended_at - aborted_at < ABORT_SECONDS


# --- connection reuse ----------------------------------------------------------------------------------------------


def test_keep_alive_server_gets_every_request_on_one_connection(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer())
    transport = make_transport(server.url)
    for number in range(20):
        assert call(transport, body=f"{number}".encode())[:2] == (200, b"ok")
    assert transport.connections_opened == 1
    assert transport.requests_sent == 20
    assert server.connections == 1
    assert [request.body for request in server.requests] == [f"{number}".encode() for number in range(20)]


def test_connection_close_answer_means_a_new_connection_next_time(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(close=True)))
    transport = make_transport(server.url)
    for _ in range(3):
        assert call(transport)[:2] == (200, b"ok")
    assert transport.connections_opened == 3
    assert server.connections == 3


def test_idle_connection_closed_by_the_server_is_replaced_and_the_request_sent_once(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer())
    transport = make_transport(server.url)
    call(transport, body=b"first push")
    server.close_idle()  # as a restarted server does
    time.sleep(0.05)  # the FIN reaches the client's socket
    assert call(transport, body=b"second push")[:2] == (200, b"ok")
    assert [request.body for request in server.requests] == [b"first push", b"second push"]
    assert transport.connections_opened == 2


def drop_second_on_each_connection(request: RecordedRequest) -> Answer:
    return Answer(drop=request.index_on_connection == 2)


def test_post_on_a_reused_connection_that_the_server_drops_unanswered_is_not_sent_again(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer(answer=drop_second_on_each_connection))
    transport = make_transport(server.url)
    call(transport, body=b"push 1")
    error = failure(transport, body=b"push 2")
    assert f"127.0.0.1:{server.port} closed the connection before answering" in str(error)
    assert not error.timed_out
    assert [request.body for request in server.requests] == [b"push 1", b"push 2"]


@pytest.mark.parametrize(("method", "path", "body"), [("GET", "/info", None), ("POST", "/pull-updates", b"pull")])
def test_a_read_on_a_reused_connection_that_the_server_drops_unanswered_is_retried_once(
    stack: ExitStack, make_transport: MakeTransport, method: str, path: str, body: Optional[bytes]
) -> None:
    server = started(stack, HttpServer(answer=drop_second_on_each_connection))
    transport = make_transport(server.url)
    call(transport, method=method, path=path, body=body)
    assert call(transport, method=method, path=path, body=body)[:2] == (200, b"ok")
    assert [(request.connection, request.index_on_connection) for request in server.requests] == [
        (1, 1),
        (1, 2),
        (2, 1),
    ]
    assert transport.connections_opened == 2


@pytest.mark.parametrize(("keep_alive", "connections"), [("timeout=30, max=100", 1), ("timeout=1", 3)])
def test_a_connection_is_not_reused_in_the_last_second_of_its_keep_alive_timeout(
    stack: ExitStack, make_transport: MakeTransport, keep_alive: str, connections: int
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(headers=[("Keep-Alive", keep_alive)])))
    transport = make_transport(server.url)
    for _ in range(3):
        call(transport)
    assert transport.connections_opened == connections


def test_a_connection_idle_past_the_reuse_limit_is_replaced_though_the_server_keeps_it(
    stack: ExitStack, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A NAT on the way may forget a long-idle flow without a word: such a connection is not trusted with a push.
    monkeypatch.setattr(transport_module, "MAX_IDLE_REUSE_SECONDS", 0.3)
    server = started(stack, HttpServer(answer=lambda request: Answer(headers=[("Keep-Alive", "timeout=60")])))
    transport = make_transport(server.url)
    call(transport)
    call(transport)
    assert transport.connections_opened == 1
    time.sleep(0.4)
    call(transport)
    assert transport.connections_opened == 2
    assert server.connections == 2


def test_requests_from_two_threads_at_once_use_two_connections(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(delay=0.5 if request.body == b"slow" else 0)))
    transport = make_transport(server.url)
    slow = Background(transport, body=b"slow")
    wait_until(lambda: len(server.requests) == 1)
    assert call(transport, body=b"fast")[:2] == (200, b"ok")
    slow.join()
    assert slow.error is None
    assert transport.connections_opened == 2
    for _ in range(3):
        call(transport)
    assert transport.connections_opened == 2


# --- deadlines -----------------------------------------------------------------------------------------------------


def test_connect_that_gets_no_answer_times_out(stack: ExitStack, make_transport: MakeTransport) -> None:
    listener = started(stack, FullBacklogListener())
    transport = make_transport(listener.url, timeout=0.5)
    began = time.monotonic()
    error = failure(transport)
    assert time.monotonic() - began < 5.0
    assert error.timed_out
    assert str(error) == f"could not connect to 127.0.0.1:{listener.port} within 0.5 s (request_timeout)"


def test_no_answer_within_the_timeout_fails_naming_host_and_timeout(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(hang=True)))
    transport = make_transport(server.url, timeout=0.5)
    error = failure(transport)
    assert error.timed_out
    assert str(error) == f"no answer from 127.0.0.1:{server.port} within 0.5 s (request_timeout)"


def test_a_trickled_answer_whose_bytes_keep_coming_is_not_cut(stack: ExitStack, make_transport: MakeTransport) -> None:
    body = b"0123456789"
    server = started(stack, HttpServer(answer=lambda request: Answer(body=body, trickle=0.2)))
    transport = make_transport(server.url, timeout=1.0)
    began = time.monotonic()
    status, received, chunks = call(transport)
    assert (status, received) == (200, body)
    assert time.monotonic() - began >= 1.8
    assert len(chunks) > 1  # streamed as it came, not held until the end


def test_an_answer_that_stops_midway_times_out(stack: ExitStack, make_transport: MakeTransport) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(body=b"ab", trickle=1.0)))
    transport = make_transport(server.url, timeout=0.5)
    error = failure(transport)
    assert error.timed_out
    assert str(error) == f"the answer from 127.0.0.1:{server.port} stalled: no byte for 0.5 s (request_timeout)"


def test_extra_wait_lengthens_only_the_wait_for_the_first_byte(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(delay=0.8)))
    transport = make_transport(server.url, timeout=0.5)
    assert call(transport, extra_wait=0.6)[:2] == (200, b"ok")
    error = failure(transport, extra_wait=0.1)
    assert error.timed_out
    assert str(error) == (
        f"no answer from 127.0.0.1:{server.port} within 0.6 s (request_timeout 0.5 s + 0.1 s of long poll)"
    )

    def trickle(request: RecordedRequest) -> Answer:
        return Answer(body=b"ab", trickle=0.8)

    server.answer = trickle
    error = failure(transport, extra_wait=5.0)
    assert "stalled: no byte for 0.5 s" in str(error)


def test_a_request_the_server_does_not_read_fails_when_sending_makes_no_progress(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, SilentServer())
    transport = make_transport(server.url, timeout=0.5)
    error = failure(transport, body=bytes(64 * 1024 * 1024))
    assert error.timed_out
    assert str(error) == (
        f"could not send the request to 127.0.0.1:{server.port}: no progress for 0.5 s (request_timeout)"
    )


# --- abort ---------------------------------------------------------------------------------------------------------


def test_abort_while_connecting(stack: ExitStack, make_transport: MakeTransport) -> None:
    listener = started(stack, FullBacklogListener())
    transport = make_transport(listener.url, timeout=30.0)
    abort_and_check(transport, Background(transport))


def test_abort_in_a_stalled_tls_handshake(stack: ExitStack, make_transport: MakeTransport) -> None:
    server = started(stack, SilentServer())
    transport = make_transport(f"https://127.0.0.1:{server.port}", timeout=30.0)
    running = Background(transport)
    wait_until(lambda: server.connections == 1)
    abort_and_check(transport, running)


def test_abort_while_waiting_for_the_answer_then_every_request_fails_at_once(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(hang=True)))
    transport = make_transport(server.url, timeout=30.0)
    running = Background(transport)
    wait_until(lambda: len(server.requests) == 1)
    abort_and_check(transport, running)
    began = time.monotonic()
    with pytest.raises(TransportClosed):
        call(transport)
    assert time.monotonic() - began < ABORT_SECONDS
    assert server.connections == 1
    assert transport.connections_opened == 1


def test_abort_while_reading_a_trickled_body(stack: ExitStack, make_transport: MakeTransport) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(body=b"x" * 100, trickle=0.05)))
    transport = make_transport(server.url, timeout=30.0)
    abort_and_check(transport, Background(transport))


def test_abort_while_sending(stack: ExitStack, make_transport: MakeTransport) -> None:
    server = started(stack, SilentServer())
    transport = make_transport(server.url, timeout=30.0)
    abort_and_check(transport, Background(transport, body=bytes(64 * 1024 * 1024)))


def test_abort_during_a_proxy_connect_that_gets_no_answer(
    stack: ExitStack, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent_proxy = started(stack, SilentServer())
    monkeypatch.setenv("HTTPS_PROXY", silent_proxy.url)
    transport = make_transport("https://127.0.0.1:9", timeout=30.0)
    running = Background(transport)
    wait_until(lambda: silent_proxy.connections == 1)
    abort_and_check(transport, running)


def test_close_drops_idle_connections_and_later_requests_fail(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer())
    transport = make_transport(server.url)
    call(transport)
    transport.close()
    wait_until(lambda: server.open_connections() == 0)
    with pytest.raises(TransportClosed):
        call(transport)


# --- errors that say what happened ---------------------------------------------------------------------------------


def test_refused_connection_says_so(make_transport: MakeTransport) -> None:
    port = free_port()
    error = failure(make_transport(f"http://127.0.0.1:{port}"))
    assert str(error) == f"cannot connect to 127.0.0.1:{port}: [Errno 111] Connection refused"
    assert not error.timed_out


def test_unknown_host_says_it_cannot_be_resolved(make_transport: MakeTransport) -> None:
    error = failure(make_transport("http://no-such-host.invalid:8080", timeout=5.0))
    assert "no-such-host.invalid" in str(error)
    assert str(error).startswith("cannot resolve no-such-host.invalid: ") or error.timed_out


def test_non_2xx_answers_are_passed_on_with_their_body(stack: ExitStack, make_transport: MakeTransport) -> None:
    server = started(stack, HttpServer(answer=lambda request: Answer(status=500, body=b"engine error text")))
    assert call(make_transport(server.url))[:2] == (500, b"engine error text")


def test_a_body_shorter_than_its_content_length_is_an_error(stack: ExitStack, make_transport: MakeTransport) -> None:
    def short(request: RecordedRequest) -> Answer:
        return Answer(body=b"abc", headers=[("Content-Length", "10")], until_close=True)

    server = started(stack, HttpServer(answer=short))
    error = failure(make_transport(server.url))
    assert "ended 7 bytes before its Content-Length" in str(error)


def test_engine_header_with_a_line_break_is_refused(stack: ExitStack, make_transport: MakeTransport) -> None:
    server = started(stack, HttpServer())
    error = failure(make_transport(server.url), headers=(("X-Evil", "a\r\nInjected: yes"),))
    assert "line break" in str(error)
    assert server.requests == []


# --- bodies --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-close"])
def test_a_large_body_streams_in_pieces_of_at_most_64_kib(
    stack: ExitStack, make_transport: MakeTransport, framing: str
) -> None:
    body = bytes(range(256)) * 1000

    def large(request: RecordedRequest) -> Answer:
        return Answer(body=body, chunked=framing == "chunked", until_close=framing == "until-close")

    server = started(stack, HttpServer(answer=large))
    status, received, chunks = call(make_transport(server.url))
    assert (status, received) == (200, body)
    assert max(len(chunk) for chunk in chunks) <= CHUNK_BYTES


# --- headers -------------------------------------------------------------------------------------------------------


def test_token_user_agent_and_framing_headers(stack: ExitStack, make_transport: MakeTransport) -> None:
    server = started(stack, HttpServer())
    transport = make_transport(server.url, token=TOKEN, user_agent="my-client-name")
    call(transport, body=b"12345", headers=(("Content-Type", "application/json"),))
    request = server.requests[0]
    assert request.header("Authorization") == f"Bearer {TOKEN}"
    assert request.header("User-Agent") == "my-client-name"
    assert request.header("Content-Type") == "application/json"
    assert request.header("Content-Length") == "5"
    assert request.header("Host") == f"127.0.0.1:{server.port}"
    assert request.header("Accept-Encoding") == "identity"


def test_headers_the_engine_sets_win(stack: ExitStack, make_transport: MakeTransport) -> None:
    server = started(stack, HttpServer())
    transport = make_transport(server.url, token=TOKEN)
    call(transport, headers=(("Authorization", "Bearer engine"), ("User-Agent", "engine-agent")))
    request = server.requests[0]
    assert [value for name, value in request.headers if name.lower() == "authorization"] == ["Bearer engine"]
    assert request.header("User-Agent") == "engine-agent"


def test_no_token_no_authorization(stack: ExitStack, make_transport: MakeTransport) -> None:
    server = started(stack, HttpServer())
    call(make_transport(server.url, token=None))
    assert server.requests[0].header("Authorization") is None


def test_token_and_remote_url_are_read_per_request(stack: ExitStack) -> None:
    first, second = started(stack, HttpServer()), started(stack, HttpServer())
    settings = {"url": first.url, "token": "one"}
    transport = SyncTransport(lambda: settings["url"], lambda: settings["token"], "agent", lambda: 2.0)
    stack.callback(transport.close)
    call(transport)
    settings.update(url=second.url, token="two")
    call(transport)
    assert [request.header("Authorization") for request in first.requests + second.requests] == [
        "Bearer one",
        "Bearer two",
    ]


def test_the_items_url_is_used_when_the_replica_has_no_remote_url(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    server = started(stack, HttpServer())
    call(make_transport(None), path="/pull-updates", url=f"{server.url}/")
    assert server.requests[0].target == "/pull-updates"


def test_the_token_appears_in_no_error_message(stack: ExitStack, make_transport: MakeTransport) -> None:
    hanging = started(stack, HttpServer(answer=lambda request: Answer(hang=True)))
    leaking = started(
        stack, HttpServer(answer=lambda request: Answer(status=302, headers=[("Location", f"/login?t={TOKEN}")]))
    )
    errors = [
        failure(make_transport(f"http://127.0.0.1:{free_port()}", token=TOKEN)),
        failure(make_transport(hanging.url, token=TOKEN, timeout=0.3)),
        failure(make_transport(leaking.url, token=TOKEN)),
        failure(make_transport(f"http://user:{TOKEN}@127.0.0.1:1", token=TOKEN)),
    ]
    for error in errors:
        assert TOKEN not in str(error) and TOKEN not in repr(error), str(error)
    assert "/login?t=<token>" in str(errors[2])


# --- redirects -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [307, 308])
def test_307_and_308_are_followed_with_method_and_body(
    stack: ExitStack, make_transport: MakeTransport, status: int
) -> None:
    def moved(request: RecordedRequest) -> Answer:
        if request.target == "/v2/pipeline":
            return Answer(status=status, headers=[("Location", "/elsewhere/pipeline")], body=b"moved")
        return Answer(body=b"arrived")

    server = started(stack, HttpServer(answer=moved))
    transport = make_transport(server.url, token=TOKEN)
    assert call(transport, body=b"the push")[:2] == (200, b"arrived")
    assert [(r.method, r.target, r.body) for r in server.requests] == [
        ("POST", "/v2/pipeline", b"the push"),
        ("POST", "/elsewhere/pipeline", b"the push"),
    ]
    # same origin: the token goes along, on the same kept-alive connection
    assert server.requests[1].header("Authorization") == f"Bearer {TOKEN}"
    assert transport.connections_opened == 1


def test_a_redirect_to_another_origin_carries_no_authorization(
    stack: ExitStack, make_transport: MakeTransport
) -> None:
    other = started(stack, HttpServer())
    remote = started(
        stack, HttpServer(answer=lambda request: Answer(status=307, headers=[("Location", f"{other.url}/x")]))
    )
    engine_headers = (("x-turso-encryption-key", "the data key"), ("Content-Type", "application/json"))
    call(make_transport(remote.url, token=TOKEN), body=b"push", headers=engine_headers)
    call(make_transport(remote.url), body=b"push", headers=(("Authorization", "Basic engine-set"),))
    assert remote.requests[0].header("Authorization") == f"Bearer {TOKEN}"
    assert remote.requests[0].header("x-turso-encryption-key") == "the data key"
    assert [(r.body, r.header("Authorization")) for r in other.requests] == [(b"push", None), (b"push", None)]
    # The encryption key is a credential too; what describes the body goes along.
    assert other.requests[0].header("x-turso-encryption-key") is None
    assert other.requests[0].header("Content-Type") == "application/json"


def test_a_redirect_from_https_to_http_is_an_error(
    stack: ExitStack,
    make_transport: MakeTransport,
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
    error = failure(make_transport(remote.url, token=TOKEN), headers=(("x-turso-encryption-key", "the data key"),))
    assert "leaves TLS" in str(error) and location in str(error)
    assert plain.requests == []


@pytest.mark.parametrize("status", [301, 302, 303])
def test_301_302_303_to_a_post_is_an_error_naming_the_location(
    stack: ExitStack, make_transport: MakeTransport, status: int
) -> None:
    other = started(stack, HttpServer())
    location = f"{other.url}/v2/pipeline"
    remote = started(stack, HttpServer(answer=lambda request: Answer(status=status, headers=[("Location", location)])))
    error = failure(make_transport(remote.url, token=TOKEN))
    assert location in str(error)
    assert f"with {status}" in str(error)
    assert other.requests == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_get_follows_redirects_as_a_get(stack: ExitStack, make_transport: MakeTransport, status: int) -> None:
    other = started(stack, HttpServer(answer=lambda request: Answer(body=b"export")))
    remote = started(
        stack, HttpServer(answer=lambda request: Answer(status=status, headers=[("Location", f"{other.url}/e/1")]))
    )
    assert call(make_transport(remote.url, token=TOKEN), method="GET", path="/export/1", body=None)[:2] == (
        200,
        b"export",
    )
    assert [(r.method, r.target, r.header("Authorization")) for r in other.requests] == [("GET", "/e/1", None)]


def test_more_than_five_redirects_is_an_error(stack: ExitStack, make_transport: MakeTransport) -> None:
    def again(request: RecordedRequest) -> Answer:
        return Answer(status=307, headers=[("Location", f"/hop{request.index_on_connection}")])

    server = started(stack, HttpServer(answer=again))
    error = failure(make_transport(server.url))
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


def test_tls_with_a_ca_from_ssl_cert_file(
    stack: ExitStack,
    make_transport: MakeTransport,
    trusted_certificates: LoopbackCertificates,
) -> None:
    server = started(stack, HttpServer(tls=trusted_certificates.server_context()))
    for host in ("127.0.0.1", "localhost"):
        transport = make_transport(f"https://{host}:{server.port}", token=TOKEN)
        for _ in range(5):
            assert call(transport)[:2] == (200, b"ok")
        assert transport.connections_opened == 1
    assert server.requests[0].header("Authorization") == f"Bearer {TOKEN}"


def test_libsql_and_turso_urls_speak_https(
    stack: ExitStack,
    make_transport: MakeTransport,
    trusted_certificates: LoopbackCertificates,
) -> None:
    server = started(stack, HttpServer(tls=trusted_certificates.server_context()))
    for scheme in ("libsql", "turso"):
        assert call(make_transport(f"{scheme}://127.0.0.1:{server.port}"))[:2] == (200, b"ok")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to hash a CA folder")
def test_tls_with_a_ca_folder_from_ssl_cert_dir(
    stack: ExitStack,
    make_transport: MakeTransport,
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
    assert call(make_transport(f"https://127.0.0.1:{server.port}"))[:2] == (200, b"ok")


def test_an_untrusted_certificate_fails_clearly(
    stack: ExitStack,
    make_transport: MakeTransport,
    certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(LoopbackCertificates().write_ca(tmp_path / "other-ca.pem")))
    server = started(stack, HttpServer(tls=certificates.server_context()))
    error = failure(make_transport(f"https://127.0.0.1:{server.port}", token=TOKEN))
    assert str(error).startswith(f"certificate verification failed for 127.0.0.1:{server.port}: ")
    assert server.requests == []


# --- proxies -------------------------------------------------------------------------------------------------------


def test_http_remote_through_the_proxy_of_http_proxy(
    stack: ExitStack, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = started(stack, HttpServer())
    proxy = started(stack, ForwardProxy(credentials="user:p@ss"))
    monkeypatch.setenv("HTTP_PROXY", f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    assert call(make_transport(server.url, token=TOKEN), body=b"via proxy")[:2] == (200, b"ok")
    assert proxy.requests == [("POST", f"{server.url}/v2/pipeline")]
    assert proxy.authorizations[0] is not None and proxy.authorizations[0].startswith("Basic ")
    assert [(r.target, r.body, r.header("Authorization")) for r in server.requests] == [
        ("/v2/pipeline", b"via proxy", f"Bearer {TOKEN}")
    ]


def test_https_remote_through_a_connect_tunnel_of_https_proxy(
    stack: ExitStack,
    make_transport: MakeTransport,
    trusted_certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = started(stack, HttpServer(tls=trusted_certificates.server_context()))
    proxy = started(stack, ForwardProxy())
    monkeypatch.setenv("https_proxy", proxy.url)
    transport = make_transport(f"https://127.0.0.1:{server.port}")
    for _ in range(3):
        assert call(transport)[:2] == (200, b"ok")
    assert proxy.requests == [("CONNECT", f"127.0.0.1:{server.port}")]
    assert proxy.tunnels == 1
    assert transport.connections_opened == 1
    assert len(server.requests) == 3


def test_connect_tunnel_with_proxy_credentials(
    stack: ExitStack,
    make_transport: MakeTransport,
    trusted_certificates: LoopbackCertificates,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = started(stack, HttpServer(tls=trusted_certificates.server_context()))
    proxy = started(stack, ForwardProxy(credentials="tunnel user:pw"))
    monkeypatch.setenv("HTTPS_PROXY", f"http://tunnel%20user:pw@127.0.0.1:{proxy.port}")
    assert call(make_transport(f"https://127.0.0.1:{server.port}", token=TOKEN))[:2] == (200, b"ok")
    assert proxy.tunnels == 1
    # the token travels inside the tunnel only
    assert server.requests[0].header("Authorization") == f"Bearer {TOKEN}"


def test_proxy_refusing_the_tunnel_is_an_error(
    stack: ExitStack, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = started(stack, ForwardProxy(credentials="user:secret"))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    error = failure(make_transport("https://127.0.0.1:9"))
    assert str(error).startswith(f"the proxy 127.0.0.1:{proxy.port} refused the tunnel to 127.0.0.1:9: ")
    assert "407" in str(error)


def test_no_proxy_bypasses_the_proxy(
    stack: ExitStack, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = started(stack, HttpServer())
    proxy = started(stack, ForwardProxy())
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert call(make_transport(server.url))[:2] == (200, b"ok")
    assert proxy.requests == []
    assert len(server.requests) == 1


def test_connect_timeout_through_a_proxy_names_both(
    stack: ExitStack, make_transport: MakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent_proxy = started(stack, SilentServer())
    monkeypatch.setenv("HTTPS_PROXY", silent_proxy.url)
    error = failure(make_transport("https://127.0.0.1:9", timeout=0.3))
    assert error.timed_out
    assert str(error) == (
        f"could not connect to 127.0.0.1:9 (through the proxy 127.0.0.1:{silent_proxy.port}) within 0.3 s "
        "(request_timeout)"
    )


# --- the real sync server ------------------------------------------------------------------------------------------


def test_a_pipeline_request_to_the_real_sync_server(sync_server: SyncServer, make_transport: MakeTransport) -> None:
    transport = make_transport(sync_server.url)
    for _ in range(2):
        status, body, _ = call(transport, body=PIPELINE_BODY, headers=(("Content-Type", "application/json"),))
        assert status == 200
        rows = json.loads(body)["results"][0]["response"]["result"]["rows"]
        assert rows == [[{"type": "integer", "value": "1"}]]
    # tursodb answers every request with `Connection: close`
    assert transport.connections_opened == 2
