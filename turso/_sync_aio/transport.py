"""The HTTP client for the sync engine's HTTP items: kept-alive connections, a deadline on every phase of a request,
abort() from any thread, TLS and proxies from the environment as urllib honours them, and redirects that never carry
the token to another origin.

Standard library only: pyturso depends on typing-extensions alone, and this module is meant to ship inside it.
http.client frames the answers (Content-Length, chunked, until close); the sockets underneath are non-blocking and
every wait goes through poll (or select) together with a wake-up socket, so that a deadline or abort() ends any phase:
connecting, the proxy's CONNECT, the TLS handshake, sending, reading.
"""

import base64
import errno
import functools
import http.client
import io
import math
import os
import re
import select
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, cast

from typing_extensions import Buffer

from .arguments import seconds

__all__ = ["SyncTransport", "TransportClosed", "TransportError"]

# The largest piece of an answer's body handed to on_chunk (the driver's own chunk size).
CHUNK_BYTES = 64 * 1024
# Redirects followed for one request; the next one is an error.
MAX_REDIRECTS = 5
# Idle connections kept per transport: one replica talks to one remote, two covers a request on the SQL worker's
# thread (partial sync) next to the lane's.
MAX_IDLE_CONNECTIONS = 2
# A redirect's body is read and dropped up to this size so that its connection can be reused; past it, the
# connection is closed instead.
DRAIN_BYTES = 64 * 1024
# The most a proxy's answer to CONNECT may take before the tunnel starts.
MAX_TUNNEL_HEAD_BYTES = 64 * 1024
# A `Keep-Alive: timeout=N` connection is not reused in the last second of N: the server may close it just then.
KEEP_ALIVE_MARGIN_SECONDS = 1.0
# An idle connection is not reused after this long, whatever the server says: a NAT or load balancer on the way may
# have forgotten the flow without a word (a reset, or silence until the deadline, on the next request).
MAX_IDLE_REUSE_SECONDS = 15.0
# A token this long or longer is replaced by <token> wherever it shows up in an error message (say, in a Location).
MIN_SCRUBBED_TOKEN_CHARS = 8
# Bytes handed to one send() call.
SEND_SLICE_BYTES = 256 * 1024

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The statuses that RFC 9110 lets a client follow with the same method and body.
_METHOD_KEEPING_STATUSES = frozenset({307, 308})
# RFC 9110 section 9.2.2: a request with one of these methods may be sent again without changing its effect.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# The sync protocol's POSTs that only read: a pull asks for the changes after a revision and changes nothing on the
# remote, so it may be sent again like an idempotent request.
_READ_ONLY_TARGETS = frozenset({"/pull-updates"})
# Methods whose request carries a body, so that no body is still sent as Content-Length: 0 (as http.client does).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# The engine's headers that go along when a redirect leads to another origin: those that describe the request. Every
# other one stays with the remote's origin, like the token: Authorization, and x-turso-encryption-key (the data key).
_CROSS_ORIGIN_HEADERS = frozenset({"accept", "accept-encoding", "content-type", "user-agent"})
# Headers this module writes itself, for each hop and connection; the engine's copies of them are dropped.
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Turso's URL schemes for a remote database, spoken as HTTPS (as the driver's connect_sync does).
_SCHEME_ALIASES = {"libsql": "https", "turso": "https"}
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")
_REQUEST_TARGET = re.compile(r"[!-~]+")
_KEEP_ALIVE_TIMEOUT = re.compile(r"(?:^|[,\s])timeout\s*=\s*(\d+)", re.IGNORECASE)
# connect_ex's answers for a connection under way on a non-blocking socket (Windows has its own code).
_CONNECT_IN_PROGRESS = frozenset(
    {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, getattr(errno, "WSAEWOULDBLOCK", errno.EWOULDBLOCK)}
)
# poll() wants milliseconds as a C int.
_MAX_POLL_MILLISECONDS = 2**31 - 1

_READY, _EXPIRED, _WOKEN = "ready", "expired", "woken"


class TransportError(Exception):
    """A sync request failed. The message says what happened and names the remote's host:port, never the token nor
    a URL's user:password. `timed_out` is True when a deadline passed: connecting, sending, or waiting for bytes."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        # True when the request failed because a deadline passed (request_timeout, plus a long poll's extra wait).
        self.timed_out = timed_out


class TransportClosed(TransportError):
    """abort() was called (the request in flight is cut at once), or close(): no request is made any more."""


class _Expired(Exception):
    """A wait's deadline passed; the phase that waited turns it into a TransportError with its own message."""


class _ConnectionLost(Exception):
    """The connection closed or failed under a request before any deadline passed. `request_complete` says whether
    every byte of the request had been handed to the socket; whether a retry is safe depends on it."""

    def __init__(self, message: str, *, request_complete: bool) -> None:
        super().__init__(message)
        self.request_complete = request_complete


@dataclass(frozen=True)
class _Url:
    """An http(s) URL split into what a request needs; it never holds a user name or password."""

    scheme: str
    host: str
    port: int
    # The request target in origin form: path, and query if any.
    target: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def where(self) -> str:
        """host:port, as messages name the remote."""
        return f"{_bracketed(self.host)}:{self.port}"

    @property
    def authority(self) -> str:
        """The Host header: the port left out when it is the scheme's default, as http.client writes it."""
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return _bracketed(self.host)
        return self.where

    def text(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


@dataclass(frozen=True)
class _Proxy:
    """A proxy from HTTP_PROXY or HTTPS_PROXY: always reached over plain TCP, as urllib reaches it."""

    host: str
    port: int
    # The Proxy-Authorization value from the proxy URL's user:password, if it has both.
    authorization: Optional[str]

    @property
    def where(self) -> str:
        return f"{_bracketed(self.host)}:{self.port}"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _join_url(base: str, path: str) -> str:
    """The engine's path under the remote URL, with exactly one slash between them (the driver's rule)."""
    if not base:
        return path
    return base.removesuffix("/") + "/" + path.removeprefix("/")


def _redacted(url: str) -> str:
    """`url` as a message may show it: without user:password."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<an unparsable URL>"
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


@functools.lru_cache(maxsize=64)
def _parse_url(url: str) -> _Url:
    """`url` split for a request (remembered: the same few URLs come back on every request); TransportError if it
    is not an http(s) URL that a request can go to."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise TransportError(f"invalid URL {_redacted(url)}: {error}") from None
    scheme = _SCHEME_ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in _DEFAULT_PORTS:
        raise TransportError(
            f"unsupported URL {_redacted(url)}: use http:// or https:// (libsql:// and turso:// mean https://)"
        )
    if parts.username is not None or parts.password is not None:
        raise TransportError(f"the URL {_redacted(url)} holds a user name or password: pass the token as auth_token")
    if not parts.hostname:
        raise TransportError(f"the URL {_redacted(url)} names no host")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if not _REQUEST_TARGET.fullmatch(target):
        raise TransportError(f"the URL {_redacted(url)} has spaces, control or non-ASCII characters in its path")
    return _Url(scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[scheme], target)


# The variables that decide urllib's proxies for http and https (REQUEST_METHOD: a CGI script ignores HTTP_PROXY).
_PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "REQUEST_METHOD")
# urllib.request.getproxies() for the last values of _PROXY_VARIABLES: it decodes the whole environment, about as
# much CPU as the rest of a kept-alive request, so it is asked again only when one of those variables changed.
_proxies_cache: tuple[tuple[Optional[str], ...], dict[str, str]] = ((), {})


def _environment_proxies() -> dict[str, str]:
    global _proxies_cache
    key = tuple(os.environ.get(name) for name in _PROXY_VARIABLES)
    cached_key, proxies = _proxies_cache
    if cached_key != key:
        proxies = urllib.request.getproxies()
        _proxies_cache = (key, proxies)
    return proxies


def _proxy_for(url: _Url) -> Optional[_Proxy]:
    """The proxy the environment names for `url`, as urllib's ProxyHandler picks it (NO_PROXY included)."""
    proxy_url = _environment_proxies().get(url.scheme)
    if not proxy_url or urllib.request.proxy_bypass(url.authority):
        return None
    # urllib takes a proxy without a scheme as http://.
    parts = urllib.parse.urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or port == -1:
        raise TransportError(
            f"unsupported proxy {_redacted(proxy_url)} for {url.scheme}:// (from the environment): "
            "use http://host:port"
        )
    authorization = None
    if parts.username and parts.password:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password)}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return _Proxy(parts.hostname, port if port is not None else _DEFAULT_PORTS[parts.scheme], authorization)


_tls_contexts: dict[tuple[Optional[str], Optional[str]], ssl.SSLContext] = {}
_tls_contexts_lock = threading.Lock()


def _tls_context() -> ssl.SSLContext:
    """ssl.create_default_context(), made once per SSL_CERT_FILE and SSL_CERT_DIR: loading the trust store costs
    about 16 ms of CPU, which urllib pays on every request."""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    with _tls_contexts_lock:
        context = _tls_contexts.get(key)
        if context is None:
            if len(_tls_contexts) >= 8:
                _tls_contexts.clear()
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            _tls_contexts[key] = context
        return context


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _wait_ready(sock: socket.socket, wake: Optional[socket.socket], for_write: bool, seconds: float) -> str:
    """Wait until `sock` can be read (or written), `wake` is readable, or `seconds` pass; say which came first."""
    if hasattr(select, "poll"):
        poller = select.poll()
        if wake is not None:
            poller.register(wake, select.POLLIN)
        poller.register(sock, select.POLLOUT if for_write else select.POLLIN)
        milliseconds = min(_MAX_POLL_MILLISECONDS, max(0, math.ceil(seconds * 1000)))
        events = poller.poll(milliseconds)
        if not events:
            return _EXPIRED
        if wake is not None and any(fd == wake.fileno() for fd, _ in events):
            return _WOKEN
        return _READY
    # Windows: select() has no descriptor limit there, and reports a failed connect as exceptional.
    readers = [wake] if wake is not None else []
    readable, writable, failed = select.select(
        readers if for_write else [*readers, sock], [sock] if for_write else [], [sock], max(0.0, seconds)
    )
    if wake is not None and wake in readable:
        return _WOKEN
    return _READY if readable or writable or failed else _EXPIRED


class _Connection:
    """One TCP or TLS connection to an origin (maybe through a proxy), used by one request at a time."""

    def __init__(self, url: _Url, wake: socket.socket) -> None:
        self.origin = url.origin
        # How messages name the far end; set to name the proxy too when one is used.
        self.where = url.where
        self.sock: Optional[socket.socket] = None
        self.tls = False
        # Set when requests go in absolute form to this HTTP proxy (an http:// remote through a proxy).
        self.forward_proxy: Optional[_Proxy] = None
        # The monotonic time after which the server may close it while idle (from `Keep-Alive: timeout=N`).
        self.reuse_until = math.inf
        self._wake = wake

    def attached(self) -> socket.socket:
        if self.sock is None:
            raise TransportError(f"no connection to {self.where}")
        return self.sock

    def wait(self, for_write: bool, deadline: float) -> None:
        """Wait until the socket is ready; _Expired at `deadline`, TransportClosed when abort() wakes us."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Expired()
        state = _wait_ready(self.attached(), self._wake, for_write, remaining)
        if state == _WOKEN:
            raise TransportClosed(f"the request to {self.where} was cut: the sync connection is closing")
        if state == _EXPIRED:
            raise _Expired()

    def send_all(self, data: bytes, stall_seconds: float, deadline: float = math.inf) -> None:
        """Send every byte; _Expired when no byte could be sent for `stall_seconds`, or at `deadline`."""
        sock = self.attached()
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            try:
                sent += sock.send(view[sent : sent + SEND_SLICE_BYTES])
                continue
            except ssl.SSLWantReadError:
                for_write = False
            except (BlockingIOError, ssl.SSLWantWriteError):
                for_write = True
            except OSError as error:
                raise _ConnectionLost(f"sending to {self.where} failed: {error}", request_complete=False) from error
            self.wait(for_write, min(deadline, time.monotonic() + stall_seconds))

    def receive_into(self, buffer: Buffer, deadline: float) -> int:
        """Read what has arrived into `buffer` (0 at the end of the stream), waiting for it until `deadline`."""
        sock = self.attached()
        for_write = False
        while True:
            # Decrypted bytes that TLS holds already are not seen by poll.
            if for_write or not (self.tls and cast(ssl.SSLSocket, sock).pending()):
                self.wait(for_write, deadline)
            try:
                return sock.recv_into(buffer)
            except ssl.SSLWantWriteError:
                for_write = True
            except (BlockingIOError, ssl.SSLWantReadError):
                for_write = False
            except OSError as error:
                message = f"the connection to {self.where} failed: {error}"
                raise _ConnectionLost(message, request_complete=True) from error

    def dropped(self) -> bool:
        """True when an idle connection has something to read: the server closed it (EOF, reset) or sent bytes
        nobody asked for. Either way it cannot carry another request (urllib3's is_connection_dropped)."""
        sock = self.sock
        if sock is None:
            return True
        if self.tls and cast(ssl.SSLSocket, sock).pending():
            return True
        try:
            return _wait_ready(sock, None, False, 0.0) != _EXPIRED
        except (OSError, ValueError):
            return True

    def shut(self) -> None:
        """Shut the socket down from another thread, without touching TLS state that the request's thread uses."""
        if self.sock is not None:
            try:
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


class _AnswerStream(io.RawIOBase):
    """The raw bytes of one answer, for http.client.HTTPResponse. The first read waits up to `first_wait` (the
    request_timeout plus a long poll's extra wait), each later one up to `later_wait`; `started` says whether any
    byte arrived, after which a request is never retried."""

    def __init__(self, connection: _Connection, first_wait: float, later_wait: float, extra_wait: float) -> None:
        super().__init__()
        self.connection = connection
        self.started = False
        self._first_wait = first_wait
        self._later_wait = later_wait
        self._extra_wait = extra_wait

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        wait = self._later_wait if self.started else self._first_wait
        try:
            count = self.connection.receive_into(buffer, time.monotonic() + wait)
        except _Expired:
            raise TransportError(self._expired_message(), timed_out=True) from None
        if count:
            self.started = True
        return count

    def _expired_message(self) -> str:
        where, timeout = self.connection.where, _seconds(self._later_wait)
        if self.started:
            return f"the answer from {where} stalled: no byte for {timeout} (request_timeout)"
        if self._extra_wait:
            return (
                f"no answer from {where} within {_seconds(self._first_wait)} "
                f"(request_timeout {timeout} + {_seconds(self._extra_wait)} of long poll)"
            )
        return f"no answer from {where} within {timeout} (request_timeout)"


class _AnswerSocket:
    """What http.client.HTTPResponse takes of a socket: makefile("rb"), here over an _AnswerStream."""

    def __init__(self, stream: _AnswerStream) -> None:
        self._stream = stream

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self._stream, CHUNK_BYTES)


@dataclass
class _Exchange:
    """A request sent and its answer's head read, on a connection the request owns until it is released."""

    connection: _Connection
    stream: _AnswerStream
    response: http.client.HTTPResponse


def _close_sockets(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()


class SyncTransport:
    """The HTTP client of one replica's sync engine. `request` sends one HTTP item and streams its answer; it reuses
    a kept-alive connection per origin, bounds every phase by `timeout()` and raises TransportError. `abort()`, from
    any thread, cuts the request in flight and every later one; `close()` drops the idle connections for good.

    - `base_url`: the remote URL, read per request (None: use the URL the engine put in the item).
    - `token`: the bearer token, read per request; sent only to the origin of the remote URL.
    - `user_agent`: the User-Agent header, unless the engine sets one.
    - `timeout`: the request_timeout in seconds, read per request.
    """

    def __init__(
        self,
        base_url: Callable[[], Optional[str]],
        token: Callable[[], Optional[str]],
        user_agent: str,
        timeout: Callable[[], float],
    ) -> None:
        if _HEADER_VALUE_FORBIDDEN.search(user_agent) or not user_agent.isascii():
            raise ValueError(f"user_agent must be ASCII without line breaks, not {user_agent!r}")
        self._base_url = base_url
        self._token = token
        self._user_agent = user_agent
        self._timeout = timeout
        # TCP connections opened, and requests written to a connection (redirect hops and retries included).
        self.connections_opened = 0
        self.requests_sent = 0
        self._lock = threading.Lock()
        # Notified by abort() and by a finished name lookup.
        self._changed = threading.Condition(self._lock)
        self._idle: list[_Connection] = []
        self._active: set[_Connection] = set()
        self._in_flight = 0
        self._aborted = False
        self._closed = False
        # abort() writes a byte here, which wakes every wait of every request at once (connect, TLS, send, read).
        self._wake, self._wake_sender = socket.socketpair()
        self._wake.setblocking(False)
        self._wake_sender.setblocking(False)
        self._release_wake = weakref.finalize(self, _close_sockets, self._wake, self._wake_sender)

    # --- public ----------------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Sequence[tuple[str, str]],
        *,
        url: Optional[str] = None,
        extra_wait: float = 0.0,
        on_status: Callable[[int], None],
        on_chunk: Callable[[bytes], None],
    ) -> None:
        """Send one request to the remote URL joined with `path`, follow its redirects, then call `on_status` once
        with the final status and `on_chunk` with each piece of its body (at most 64 KiB) as it arrives. Non-2xx
        statuses are passed on, not raised. `extra_wait` lengthens the wait for the first byte (a long poll).
        Raises TransportError (TransportClosed after abort() or close()); what the callbacks raise passes through."""
        self._enter()
        token: Optional[str] = None
        try:
            token = self._read_token()
            self._request(method, path, body, headers, url, extra_wait, token, on_status, on_chunk)
        except TransportError as error:
            raise self._as_reported(error, token) from error.__cause__
        finally:
            self._leave()

    def abort(self) -> None:
        """From any thread: the request in flight fails at once with TransportClosed (its socket is shut, whatever
        phase it is in), and every later request raises TransportClosed without connecting."""
        with self._lock:
            self._aborted = True
            for connection in self._active:
                connection.shut()
            idle, self._idle = self._idle, []
            try:
                self._wake_sender.send(b"\0")
            except OSError:
                pass  # the byte of an earlier abort() is still unread, or close() released the wake-up socket
            self._changed.notify_all()
        for connection in idle:
            connection.close()

    def close(self) -> None:
        """Drop the idle connections, for good: later requests raise TransportClosed. A request in flight is not
        cut (abort() does that); its connection is closed when it ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            if self._in_flight == 0:
                self._release_wake()
        for connection in idle:
            connection.close()

    # --- one request -----------------------------------------------------------------------------------------------

    def _enter(self) -> None:
        with self._lock:
            if self._aborted or self._closed:
                raise TransportClosed("the sync connection is closing: no request is made any more")
            self._in_flight += 1

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1
            if self._closed and self._in_flight == 0:
                self._release_wake()

    def _read_token(self) -> Optional[str]:
        try:
            return self._token()
        except Exception as error:
            # Its message is not repeated: it may hold the token.
            raise TransportError(f"the auth token callback failed ({type(error).__name__})") from None

    def _as_reported(self, error: TransportError, token: Optional[str]) -> TransportError:
        """The error as request() raises it: TransportClosed once aborted, and never a message with the token."""
        message = str(error)
        # Shorter strings than this would be found in the message's own words; real tokens are far longer.
        if token and len(token) >= MIN_SCRUBBED_TOKEN_CHARS and token in message:
            message = message.replace(token, "<token>")
        if self._aborted and not isinstance(error, TransportClosed):
            return TransportClosed(f"{message}; the sync connection is closing", timed_out=error.timed_out)
        if message != str(error):
            return type(error)(message, timed_out=error.timed_out)
        return error

    def _request(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Sequence[tuple[str, str]],
        url: Optional[str],
        extra_wait: float,
        token: Optional[str],
        on_status: Callable[[int], None],
        on_chunk: Callable[[bytes], None],
    ) -> None:
        timeout = seconds("request_timeout", self._timeout())
        if not (math.isfinite(extra_wait) and extra_wait >= 0):
            raise ValueError(f"extra_wait must be a finite number of seconds >= 0, not {extra_wait!r}")
        if not _HEADER_NAME.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        base = self._remote_url(url)
        trusted_origin = _parse_url(base).origin
        current = _parse_url(_join_url(base, path))
        checked = _checked_headers(headers, token)
        for _ in range(MAX_REDIRECTS + 1):
            at_remote_origin = current.origin == trusted_origin
            exchange = self._exchange(current, method, body, checked, at_remote_origin, token, timeout, extra_wait)
            try:
                next_hop = self._redirect(current, method, exchange.response)
                if next_hop is None:
                    on_status(exchange.response.status)
                    self._stream_body(exchange, on_chunk)
                    self._release(exchange, keep=True)
                    return
                self._release(exchange, keep=self._drain(exchange))
            except BaseException:
                self._release(exchange, keep=False)
                raise
            # Followed redirects keep the method and body: a GET stays a GET, and a POST is followed only on 307
            # and 308, which keep both by definition (_redirect refuses the others).
            current = next_hop
        raise TransportError(f"too many redirects: more than {MAX_REDIRECTS}, the last one to {current.text()}")

    def _remote_url(self, url: Optional[str]) -> str:
        try:
            base = self._base_url()
        except Exception as error:
            raise TransportError(f"the remote URL is not available: {type(error).__name__}: {error}") from error
        base = base or url
        if not base:
            raise TransportError("no remote URL: the replica has none and the sync engine named none")
        return base

    def _redirect(self, current: _Url, method: str, response: http.client.HTTPResponse) -> Optional[_Url]:
        """Where a redirect answer sends the request next, None for any other answer; TransportError for a redirect
        that must not be followed."""
        if response.status not in _REDIRECT_STATUSES:
            return None
        location = response.getheader("Location")
        if not location:
            return None
        target = urllib.parse.urljoin(current.text(), location.strip())
        next_hop = _parse_url(target)
        if current.scheme == "https" and next_hop.scheme != "https":
            raise TransportError(
                f"{current.where} answered {method} {current.target} with {response.status} {response.reason}, a "
                f"redirect to {_redacted(target)} that leaves TLS: not followed (the request would go in clear text)"
            )
        # urllib turns a POST answered with 301, 302 or 303 into a GET, which loses the sync request and used to
        # carry the token to whoever redirected; a sync request is refused instead.
        if method not in ("GET", "HEAD") and response.status not in _METHOD_KEEPING_STATUSES:
            raise TransportError(
                f"{current.where} answered {method} {current.target} with {response.status} {response.reason}, a "
                f"redirect to {_redacted(target)} that would turn the request into a GET: not followed"
            )
        return next_hop

    # --- connections -----------------------------------------------------------------------------------------------

    def _exchange(
        self,
        url: _Url,
        method: str,
        body: Optional[bytes],
        headers: list[tuple[str, str]],
        at_remote_origin: bool,
        token: Optional[str],
        timeout: float,
        extra_wait: float,
    ) -> _Exchange:
        """Send the request and read its answer's head: on an idle connection if one is alive, else on a new one.

        A kept-alive connection can fail under a request because the server closed it while it sat idle: a restart,
        or the server's idle timeout racing our send. dropped() catches a close whose FIN has arrived; the race
        remains. The request then goes once more on a new connection, once, only while no byte of an answer has
        arrived (_ConnectionLost is raised only then), and only when that cannot apply it twice:
        - the request was not completely handed to the socket, so the server cannot have read all of it (an HTTP
          server acts on a complete request only); or
        - it only reads: an idempotent method (the bootstrap's GET /info and GET /export/N), or a pull.
        A POST sent whole is not retried, even on a clean EOF: a server that read it, applied it and died before
        answering looks the same on the wire as an idle timeout, and the engine's push batch is not conditional
        (BEGIN, the rows, an upsert of turso_sync_last_change_id, COMMIT: sent twice, it inserts the rows twice).
        That push fails instead, and the engine's next push first asks the server for its last change id, so
        nothing is doubled. RFC 9112 section 9.3.1 forbids the automatic retry for this reason.
        """
        connection, reused = self._connection_for(url, timeout)
        while True:
            try:
                return self._send_and_begin(
                    connection, url, method, body, headers, at_remote_origin, token, timeout, extra_wait
                )
            except _ConnectionLost as lost:
                self._retire(connection)
                if not (reused and (not lost.request_complete or _only_reads(method, url))):
                    raise TransportError(str(lost)) from lost.__cause__
            except BaseException:
                self._retire(connection)
                raise
            connection, reused = self._open(url, timeout), False

    def _connection_for(self, url: _Url, timeout: float) -> tuple[_Connection, bool]:
        """An idle connection to the origin that the server has not closed, else a new one; and whether it is reused."""
        now = time.monotonic()
        while True:
            connection = self._take_idle(url.origin)
            if connection is None:
                return self._open(url, timeout), False
            if now < connection.reuse_until and not connection.dropped():
                return connection, True
            self._retire(connection)

    def _take_idle(self, origin: tuple[str, str, int]) -> Optional[_Connection]:
        with self._lock:
            if self._aborted:
                raise TransportClosed("the sync connection is closing: no request is made any more")
            for index in range(len(self._idle) - 1, -1, -1):
                if self._idle[index].origin == origin:
                    connection = self._idle.pop(index)
                    self._active.add(connection)
                    return connection
        return None

    def _track(self, connection: _Connection) -> None:
        with self._lock:
            if self._aborted:
                raise TransportClosed("the sync connection is closing: no request is made any more")
            self._active.add(connection)

    def _attach(self, connection: _Connection, sock: Optional[socket.socket], *, tls: bool = False) -> None:
        """Give the connection its (next) socket. Sockets are replaced and closed under the lock, so that abort()
        never shuts a descriptor number that was closed and given to another socket meanwhile."""
        with self._lock:
            previous, connection.sock, connection.tls = connection.sock, sock, tls
            if previous is not None and previous is not sock:
                previous.close()

    def _retire(self, connection: _Connection) -> None:
        """The connection is done with, and not kept."""
        with self._lock:
            self._active.discard(connection)
        connection.close()

    def _release(self, exchange: _Exchange, *, keep: bool) -> None:
        """The request is done with the connection: keep it idle if its answer was read whole (`keep`) and the server
        keeps it alive, else close it. The oldest idle connection goes when more than MAX_IDLE_CONNECTIONS would
        be kept."""
        response, connection = exchange.response, exchange.connection
        keep = keep and not response.will_close
        if keep:
            idle_seconds = MAX_IDLE_REUSE_SECONDS
            keep_alive = _KEEP_ALIVE_TIMEOUT.search(response.getheader("Keep-Alive") or "")
            if keep_alive is not None:
                idle_seconds = min(idle_seconds, int(keep_alive.group(1)) - KEEP_ALIVE_MARGIN_SECONDS)
            connection.reuse_until = time.monotonic() + idle_seconds
        response.close()
        closing: Optional[_Connection] = connection
        with self._lock:
            self._active.discard(connection)
            if keep and not (self._aborted or self._closed):
                self._idle.append(connection)
                closing = self._idle.pop(0) if len(self._idle) > MAX_IDLE_CONNECTIONS else None
        if closing is not None:
            closing.close()

    def _open(self, url: _Url, timeout: float) -> _Connection:
        """A new connection to `url`'s origin: TCP (to the proxy, if the environment names one for it), the proxy's
        CONNECT tunnel for https, the TLS handshake; all of it within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        connection = _Connection(url, self._wake)
        self._track(connection)
        try:
            proxy = _proxy_for(url)
            if proxy is None:
                self._connect(connection, url.host, url.port, deadline)
            else:
                connection.where = f"{url.where} (through the proxy {proxy.where})"
                self._connect(connection, proxy.host, proxy.port, deadline)
                if url.scheme == "http":
                    connection.forward_proxy = proxy
                else:
                    self._tunnel(connection, url, proxy, timeout, deadline)
            if url.scheme == "https":
                self._handshake(connection, url, deadline)
            return connection
        except _Expired:
            self._retire(connection)
            raise TransportError(
                f"could not connect to {connection.where} within {_seconds(timeout)} (request_timeout)",
                timed_out=True,
            ) from None
        except _ConnectionLost as lost:
            self._retire(connection)
            raise TransportError(str(lost)) from lost.__cause__
        except BaseException:
            self._retire(connection)
            raise

    def _connect(self, connection: _Connection, host: str, port: int, deadline: float) -> None:
        """TCP to the first of `host`'s addresses that accepts, connecting without blocking so that the deadline and
        abort() can end it (a blocking connect cannot be interrupted from another thread)."""
        failure: Optional[OSError] = None
        for family, kind, protocol, address in self._resolve(host, port, deadline):
            try:
                sock = socket.socket(family, kind, protocol)
            except OSError as error:
                failure = error
                continue
            self._attach(connection, sock)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                code = sock.connect_ex(address)
                if code in _CONNECT_IN_PROGRESS:
                    connection.wait(True, deadline)
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
            except OSError as error:
                failure = error
                self._attach(connection, None)
                continue
            with self._lock:
                self.connections_opened += 1
            return
        raise TransportError(f"cannot connect to {connection.where}: {failure}")

    def _resolve(self, host: str, port: int, deadline: float) -> list[tuple[int, int, int, tuple[Any, ...]]]:
        """The addresses to try for host:port. An IP address needs no lookup; a name is looked up on a helper
        thread, since getaddrinfo blocks for as long as the system's resolver likes."""
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
            return [(info[0], info[1], info[2], info[4]) for info in found]
        except socket.gaierror:
            pass
        outcome: list[object] = []

        def look_up() -> None:
            result: object
            try:
                found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
                result = [(info[0], info[1], info[2], info[4]) for info in found]
            except OSError as error:
                result = error
            with self._changed:
                outcome.append(result)
                self._changed.notify_all()

        # A lookup that outlives its request (deadline, abort) ends when the resolver answers, and is dropped.
        threading.Thread(target=look_up, name="turso-sync-resolve", daemon=True).start()
        with self._changed:
            while not outcome:
                if self._aborted:
                    raise TransportClosed(f"the lookup of {host} was cut: the sync connection is closing")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _Expired()
                self._changed.wait(remaining)
        result = outcome[0]
        if isinstance(result, OSError):
            raise TransportError(f"cannot resolve {host}: {result}")
        return cast(list[tuple[int, int, int, tuple[Any, ...]]], result)

    def _tunnel(self, connection: _Connection, url: _Url, proxy: _Proxy, timeout: float, deadline: float) -> None:
        """Ask the proxy for a tunnel to `url`'s host:port (HTTP CONNECT), as urllib does for an https remote."""
        lines = [f"CONNECT {url.where} HTTP/1.1", f"Host: {url.where}"]
        if proxy.authorization is not None:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        connection.send_all(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), timeout, deadline)
        head = bytearray()
        buffer = bytearray(4096)
        while b"\r\n\r\n" not in head:
            if len(head) > MAX_TUNNEL_HEAD_BYTES:
                raise TransportError(f"the proxy {proxy.where} sent no end to its answer to CONNECT {url.where}")
            count = connection.receive_into(buffer, deadline)
            if not count:
                raise TransportError(f"the proxy {proxy.where} closed the connection during CONNECT {url.where}")
            head += buffer[:count]
        status_line = bytes(head.split(b"\r\n", 1)[0]).decode("latin-1")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not re.fullmatch(r"2\d\d", parts[1]):
            raise TransportError(f"the proxy {proxy.where} refused the tunnel to {url.where}: {status_line[:200]!r}")
        if not head.endswith(b"\r\n\r\n") or head.count(b"\r\n\r\n") > 1:
            raise TransportError(f"the proxy {proxy.where} sent bytes after its answer to CONNECT {url.where}")

    def _handshake(self, connection: _Connection, url: _Url, deadline: float) -> None:
        """TLS with the default context (system trust store, or SSL_CERT_FILE / SSL_CERT_DIR), host name checked."""
        sock = _tls_context().wrap_socket(
            connection.attached(), server_hostname=url.host, do_handshake_on_connect=False
        )
        self._attach(connection, sock, tls=True)
        while True:
            try:
                sock.do_handshake()
                return
            except ssl.SSLWantReadError:
                connection.wait(False, deadline)
            except ssl.SSLWantWriteError:
                connection.wait(True, deadline)
            except ssl.SSLCertVerificationError as error:
                raise TransportError(
                    f"certificate verification failed for {url.where}: {error.verify_message}"
                ) from None
            except OSError as error:
                raise TransportError(f"the TLS handshake with {connection.where} failed: {error}") from None

    # --- one exchange ----------------------------------------------------------------------------------------------

    def _send_and_begin(
        self,
        connection: _Connection,
        url: _Url,
        method: str,
        body: Optional[bytes],
        headers: list[tuple[str, str]],
        at_remote_origin: bool,
        token: Optional[str],
        timeout: float,
        extra_wait: float,
    ) -> _Exchange:
        head = self._request_head(connection, url, method, body, headers, at_remote_origin, token)
        with self._lock:
            self.requests_sent += 1
        try:
            if body is not None and len(body) > SEND_SLICE_BYTES:
                connection.send_all(head, timeout)
                connection.send_all(body, timeout)
            else:
                connection.send_all(head + body if body else head, timeout)
        except _Expired:
            raise TransportError(
                f"could not send the request to {connection.where}: no progress for {_seconds(timeout)} "
                "(request_timeout)",
                timed_out=True,
            ) from None
        stream = _AnswerStream(connection, timeout + extra_wait, timeout, extra_wait)
        # HTTPResponse wants a socket only for its makefile("rb").
        response = http.client.HTTPResponse(cast(socket.socket, _AnswerSocket(stream)), method=method)
        try:
            self._begin(connection, stream, response)
        except BaseException:
            response.close()
            raise
        return _Exchange(connection, stream, response)

    @staticmethod
    def _begin(connection: _Connection, stream: _AnswerStream, response: http.client.HTTPResponse) -> None:
        """Read the answer's status line and headers; _ConnectionLost when the connection ended before any byte."""
        try:
            response.begin()
        except http.client.RemoteDisconnected:
            if stream.started:
                raise TransportError(f"{connection.where} closed the connection in its answer's head") from None
            raise _ConnectionLost(
                f"{connection.where} closed the connection before answering", request_complete=True
            ) from None
        except _ConnectionLost as lost:
            if stream.started:
                raise TransportError(str(lost)) from lost.__cause__
            raise
        except http.client.HTTPException as error:
            raise TransportError(f"a malformed answer from {connection.where}: {error!r}") from None

    def _request_head(
        self,
        connection: _Connection,
        url: _Url,
        method: str,
        body: Optional[bytes],
        headers: list[tuple[str, str]],
        at_remote_origin: bool,
        token: Optional[str],
    ) -> bytes:
        proxy = connection.forward_proxy
        # Through an HTTP proxy the request names the whole URL (absolute form); else only path and query.
        lines = [f"{method} {url.text() if proxy is not None else url.target} HTTP/1.1", f"Host: {url.authority}"]
        given: set[str] = set()
        for name, value in headers:
            lowered = name.lower()
            if not at_remote_origin and lowered not in _CROSS_ORIGIN_HEADERS:
                continue  # the engine's credentials (Authorization, the encryption key) stay with the remote's origin
            given.add(lowered)
            lines.append(f"{name}: {value}")
        if token is not None and at_remote_origin and "authorization" not in given:
            lines.append(f"Authorization: Bearer {token}")
        if "user-agent" not in given:
            lines.append(f"User-Agent: {self._user_agent}")
        # Without it a server may compress the answer, which the engine would take for its own bytes.
        if "accept-encoding" not in given:
            lines.append("Accept-Encoding: identity")
        if body is not None or method in _BODY_METHODS:
            lines.append(f"Content-Length: {len(body) if body is not None else 0}")
        if proxy is not None and proxy.authorization is not None:
            lines.append(f"Proxy-Authorization: {proxy.authorization}")
        try:
            return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise TransportError("a header of the request has characters outside Latin-1") from None

    def _read_body(self, exchange: _Exchange, on_chunk: Callable[[bytes], None], limit: float = math.inf) -> bool:
        """Hand the answer's body to `on_chunk` piece by piece as it arrives; False if `limit` bytes came first."""
        response, where = exchange.response, exchange.connection.where
        received = 0
        try:
            while received <= limit:
                chunk = response.read1(CHUNK_BYTES)
                if not chunk:
                    break
                received += len(chunk)
                on_chunk(chunk)
            else:
                return False
        except _ConnectionLost as lost:
            raise TransportError(str(lost)) from lost.__cause__
        except http.client.IncompleteRead:
            raise TransportError(f"the answer from {where} ended before its body was complete") from None
        except http.client.HTTPException as error:
            raise TransportError(f"a malformed answer from {where}: {error!r}") from None
        # http.client's read1 takes an early end of a Content-Length body for its end.
        if response.length:
            raise TransportError(f"the answer from {where} ended {response.length} bytes before its Content-Length")
        return True

    def _stream_body(self, exchange: _Exchange, on_chunk: Callable[[bytes], None]) -> None:
        self._read_body(exchange, on_chunk)

    def _drain(self, exchange: _Exchange) -> bool:
        """Read a redirect's body and drop it; True if it ended within DRAIN_BYTES, so the connection can be kept."""
        return self._read_body(exchange, _discard, DRAIN_BYTES)


def _discard(chunk: bytes) -> None:
    pass


def _only_reads(method: str, url: _Url) -> bool:
    """Whether sending the request again cannot change anything on the remote."""
    return method in _IDEMPOTENT_METHODS or url.target.partition("?")[0] in _READ_ONLY_TARGETS


def _checked_headers(headers: Sequence[tuple[str, str]], token: Optional[str]) -> list[tuple[str, str]]:
    """The engine's headers, each checked (no header injection), without the framing ones this module writes."""
    checked: list[tuple[str, str]] = []
    for name, value in headers:
        name, value = str(name), str(value)
        if not _HEADER_NAME.fullmatch(name):
            raise TransportError(f"the sync engine's header name {name!r} is not a valid HTTP header name")
        if _HEADER_VALUE_FORBIDDEN.search(value):
            raise TransportError(f"the sync engine's header {name} has a line break or NUL in its value")
        if name.lower() not in _FRAMING_HEADERS:
            checked.append((name, value))
    if token is not None and (_HEADER_VALUE_FORBIDDEN.search(token) or not token.isascii()):
        raise TransportError("the auth token has a line break, a NUL or non-ASCII characters in it")
    return checked
