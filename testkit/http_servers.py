"""Small threaded HTTP/1.1 servers on 127.0.0.1 for transport tests, and the listeners that misbehave below HTTP.

- `HttpServer`: records every request it receives (method, target, headers, body, which connection) and answers as
  its `answer` function says: any status and headers, keep-alive or `Connection: close`, Content-Length, chunked or
  until-close bodies, a delay before the head, a trickled body, a hang, or a close without answering. Optional TLS.
  `close_idle()` closes the kept-alive connections that wait for their next request, as a restart would.
- `ForwardProxy`: an HTTP proxy that forwards absolute-form requests and opens CONNECT tunnels, and counts both.
- `SilentServer`: accepts TCP connections and never sends a byte (a stalled TLS handshake, an unanswered request).
- `FullBacklogListener`: a listening port whose accept queue is full, so that a new connection's SYN is dropped and
  connecting hangs (Linux).

Every socket has a timeout, every wait ends when the server closes, and close() joins each thread with a bound. The
threads are named `test-...`, never `turso...` (the conftest guard counts those).
"""

import base64
import io
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Optional

from typing_extensions import Self

# Upper bound for any socket operation and for joining a thread.
SOCKET_SECONDS = 10.0
# How often the accept loops look whether the server is closing.
ACCEPT_POLL_SECONDS = 0.05
MAX_HEAD_BYTES = 64 * 1024


@dataclass
class RecordedRequest:
    """One request as a server received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    # Which accepted connection carried it (1 for the first), and its place on that connection (1 for the first).
    connection: int
    index_on_connection: int

    def header(self, name: str) -> Optional[str]:
        """The first value of header `name` (any case), None if the request has none."""
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)


@dataclass
class Answer:
    """How HttpServer answers one request. Defaults: 200 with body b"ok", Content-Length, kept alive."""

    status: int = 200
    body: bytes = b"ok"
    headers: list[tuple[str, str]] = field(default_factory=lambda: [])
    # Send `Connection: close` and close the connection after the answer.
    close: bool = False
    # Body framing: chunked, or no length at all (the body ends when the connection closes; implies close).
    chunked: bool = False
    until_close: bool = False
    # Seconds to wait before the head is sent.
    delay: float = 0.0
    # Seconds between the body's bytes, sent one at a time (the head goes at once).
    trickle: float = 0.0
    # Never answer: hold the connection until the server closes.
    hang: bool = False
    # Close the connection without answering (the request was read).
    drop: bool = False


def _default_answer(request: RecordedRequest) -> Answer:
    return Answer()


class _Servers:
    """What every server here shares: a listener on 127.0.0.1, threads it owns, sockets it tracks, a bounded close."""

    thread_name = "test-server"

    def __init__(self, *, backlog: int = 16) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=backlog)
        self._listener.settimeout(ACCEPT_POLL_SECONDS)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    def _start(self) -> None:
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=self.thread_name, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closing.is_set():
                return False
            self._sockets.add(sock)
            return True

    def _forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        sock.close()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(SOCKET_SECONDS)
            # Answers go out at once (no Nagle wait for the client's delayed ACK between head and body).
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not self._track(client):
                client.close()
                return
            self._accepted(client)

    def _accepted(self, client: socket.socket) -> None:
        raise NotImplementedError

    def open_connections(self) -> int:
        """How many accepted (or upstream) connections are open right now."""
        with self._lock:
            return len(self._sockets)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop accepting, cut every connection and join the threads, each with a bound."""
        with self._lock:
            self._closing.set()
            sockets, threads = list(self._sockets), list(self._threads)
        self._listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(SOCKET_SECONDS)
        for sock in sockets:
            sock.close()


def _read_head(reader: io.BufferedReader) -> Optional[list[bytes]]:
    """The lines of a request or answer head, None when the stream ended before one began."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = reader.readline(MAX_HEAD_BYTES + 1)
        if not line:
            return None if not lines else lines
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise ValueError("head too large")
        if line in (b"\r\n", b"\n"):
            return lines
        lines.append(line.rstrip(b"\r\n"))


def _parse_headers(lines: list[bytes]) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return headers


class HttpServer(_Servers):
    """A recording HTTP/1.1 server on 127.0.0.1 (TLS when `tls` is given), answering as `answer(request)` says.

    `requests` lists what it received, `connections` counts the connections it accepted. `answer` may be replaced
    while the server runs.
    """

    thread_name = "test-http-server"

    def __init__(
        self, *, tls: Optional[ssl.SSLContext] = None, answer: Callable[[RecordedRequest], Answer] = _default_answer
    ) -> None:
        super().__init__()
        self._tls = tls
        self.answer = answer
        self.url = f"{'https' if tls is not None else 'http'}://127.0.0.1:{self.port}"
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        # The connections being served, and those of them with a request read and its answer not yet going out (the
        # others wait for their next request: idle).
        self._serving: set[socket.socket] = set()
        self._busy: set[socket.socket] = set()
        self._start()

    def idle_connections(self) -> int:
        """How many connections wait for their next request right now."""
        with self._lock:
            return len(self._serving - self._busy)

    def close_idle(self) -> None:
        """Close every connection that waits for its next request, as a restarted server would, and return once
        they are closed (at most SOCKET_SECONDS). A connection counts as idle from the moment its answer goes out."""
        with self._lock:
            idle = self._serving - self._busy
        for sock in idle:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + SOCKET_SECONDS
        while time.monotonic() < deadline:
            with self._lock:
                if not idle & self._serving:
                    return
            time.sleep(0.005)

    def _accepted(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            serial = self.connections
        self._spawn(self._serve, client, serial)

    def _serve(self, client: socket.socket, serial: int) -> None:
        sock = client
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(client, server_side=True)
                self._track(sock)
            with self._lock:
                self._serving.add(sock)
            reader = sock.makefile("rb")
            index = 0
            while not self._closing.is_set():
                index += 1
                request = self._receive(sock, reader, serial, index)
                if request is None or not self._respond(sock, request):
                    return
        except (OSError, ValueError):
            pass  # the client went away, or sent what this server does not read: the connection ends
        finally:
            with self._lock:
                self._serving.discard(sock)
                self._busy.discard(sock)
            self._forget(client)
            if sock is not client:
                self._forget(sock)

    def _receive(
        self, sock: socket.socket, reader: io.BufferedReader, serial: int, index: int
    ) -> Optional[RecordedRequest]:
        lines = _read_head(reader)
        if not lines:
            return None
        with self._lock:
            self._busy.add(sock)
        method, target, _ = lines[0].decode("latin-1").split(" ", 2)
        headers = _parse_headers(lines[1:])
        request = RecordedRequest(method, target, headers, b"", serial, index)
        length = int(request.header("Content-Length") or "0")
        request.body = reader.read(length) if length else b""
        with self._lock:
            self.requests.append(request)
        return request

    def _respond(self, sock: socket.socket, request: RecordedRequest) -> bool:
        """Answer `request`; False when the connection is to end."""
        answer = self.answer(request)
        if answer.hang:
            self._closing.wait(SOCKET_SECONDS * 6)
            return False
        if answer.drop:
            return False
        if answer.delay and self._closing.wait(answer.delay):
            return False
        close = answer.close or answer.until_close or (request.header("Connection") or "").lower() == "close"
        head = [f"HTTP/1.1 {answer.status} Answer"]
        head += [f"{name}: {value}" for name, value in answer.headers]
        if answer.chunked:
            head.append("Transfer-Encoding: chunked")
        elif not answer.until_close:
            head.append(f"Content-Length: {len(answer.body)}")
        if close:
            head.append("Connection: close")
        encoded_head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if not close:
            with self._lock:
                self._busy.discard(sock)
        if answer.trickle or answer.chunked:
            sock.sendall(encoded_head)
            self._send_body(sock, answer)
        else:
            sock.sendall(encoded_head + answer.body)
        return not close

    def _send_body(self, sock: socket.socket, answer: Answer) -> None:
        pieces = [answer.body[i : i + 1] for i in range(len(answer.body))] if answer.trickle else [answer.body]
        for piece in pieces:
            if answer.trickle and self._closing.wait(answer.trickle):
                return
            if answer.chunked and piece:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            elif piece:
                sock.sendall(piece)
        if answer.chunked:
            sock.sendall(b"0\r\n\r\n")


class ForwardProxy(_Servers):
    """An HTTP forward proxy on 127.0.0.1. An absolute-form request is forwarded to its origin (one upstream
    connection per request, `Connection: close`); CONNECT opens a tunnel. With `credentials`, a request without the
    matching `Proxy-Authorization: Basic` gets 407.

    `requests` lists (method, target) as received; `tunnels` counts the tunnels opened; `authorizations` lists the
    Proxy-Authorization header of each request (None when absent).
    """

    thread_name = "test-forward-proxy"

    def __init__(self, *, credentials: Optional[str] = None) -> None:
        super().__init__()
        self._credentials = credentials
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[tuple[str, str]] = []
        self.authorizations: list[Optional[str]] = []
        self.tunnels = 0
        self._start()

    def _accepted(self, client: socket.socket) -> None:
        self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        try:
            reader = client.makefile("rb")
            lines = _read_head(reader)
            if not lines:
                return
            method, target, _ = lines[0].decode("latin-1").split(" ", 2)
            headers = _parse_headers(lines[1:])
            authorization = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)
            with self._lock:
                self.requests.append((method, target))
                self.authorizations.append(authorization)
            if self._credentials is not None and authorization != self._expected_authorization():
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
            if method == "CONNECT":
                upstream = self._tunnel(client, target)
            else:
                upstream = self._forward(client, reader, method, target, headers)
        except (OSError, ValueError):
            pass
        finally:
            self._forget(client)
            if upstream is not None:
                self._forget(upstream)

    def _expected_authorization(self) -> str:
        return "Basic " + base64.b64encode((self._credentials or "").encode()).decode("ascii")

    def _tunnel(self, client: socket.socket, target: str) -> Optional[socket.socket]:
        host, _, port = target.rpartition(":")
        upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=SOCKET_SECONDS)
        if not self._track(upstream):
            upstream.close()
            return None
        with self._lock:
            self.tunnels += 1
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._relay(client, upstream)
        return upstream

    def _forward(
        self,
        client: socket.socket,
        reader: io.BufferedReader,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
    ) -> Optional[socket.socket]:
        parts = urllib.parse.urlsplit(target)
        length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
        body = reader.read(length) if length else b""
        upstream = socket.create_connection((parts.hostname, parts.port or 80), timeout=SOCKET_SECONDS)
        if not self._track(upstream):
            upstream.close()
            return None
        dropped = {"proxy-authorization", "proxy-connection", "connection"}
        lines = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in headers if k.lower() not in dropped]
        lines.append("Connection: close")
        upstream.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        while chunk := upstream.recv(65536):
            client.sendall(chunk)
        return upstream

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        def pump(source: socket.socket, target: socket.socket) -> None:
            try:
                while chunk := source.recv(65536):
                    target.sendall(chunk)
                target.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        answer = threading.Thread(target=pump, args=(upstream, client), name=self.thread_name, daemon=True)
        answer.start()
        pump(client, upstream)
        answer.join(SOCKET_SECONDS)


class SilentServer(_Servers):
    """Accepts TCP connections on 127.0.0.1 and never sends a byte: a TLS handshake to it stalls, and so does a
    request's answer. `connections` counts the connections accepted."""

    thread_name = "test-silent-server"

    def __init__(self) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._start()

    def _accepted(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1


class FullBacklogListener:
    """A port on 127.0.0.1 that listens with an accept queue it has filled and never drains. Linux drops the SYN of
    any further connection, so connecting to `port` hangs until the client gives up (a black-holed remote)."""

    def __init__(self, *, fill_limit: int = 16) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._fillers: list[socket.socket] = []
        for _ in range(fill_limit):
            if not self._fill_one():
                return
        self.close()
        raise RuntimeError(f"the accept queue of port {self.port} never filled: connecting would not hang here")

    def _fill_one(self) -> bool:
        """Open one more connection; False when it did not complete (the queue is full: the SYN was dropped)."""
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        self._fillers.append(filler)
        filler.connect_ex(("127.0.0.1", self.port))
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            if filler.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                try:
                    filler.getpeername()
                    return True
                except OSError:
                    pass
            time.sleep(0.01)
        return False

    def close(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._listener.close()

    def __enter__(self) -> "FullBacklogListener":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()
