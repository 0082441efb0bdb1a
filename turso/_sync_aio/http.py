"""The HTTP of the sync engine, performed on the connection's event loop by aiohttp: kept-alive connections shared by
every replica of the loop, a deadline on every phase of a request, abort() that cuts what is in flight, TLS and
proxies from the environment as urllib honours them, and redirects that never carry the token to another origin.

What aiohttp does here, and what this module adds on top (each for a reason):
- aiohttp pools the connections (one ClientSession and TCPConnector per event loop, reference-counted by the
  RemoteHttps that use it), drops an idle one after MAX_IDLE_REUSE_SECONDS (keepalive_timeout) and one whose server
  closed it (the loop sees the FIN), frames the answers with its C parser, and bounds connecting (sock_connect, and
  connect for the proxy's CONNECT and the TLS handshake) and each wait for the answer's next byte (sock_read).
- aiohttp has no deadline for sending a body: a server that stops reading would hold the request for ever. Bodies
  larger than SEND_SLICE_BYTES go in slices, and a request whose next slice could not be handed over for the
  request_timeout is cut (_Flight.watch_send).
- aiohttp closes the connection of a failed or cancelled request politely, and a polite close keeps the socket until
  the rest of the body is sent: for ever to a server that reads nothing. Ours are aborted (_Flight.drop_connection).
- aiohttp's redirects are off: ours follow 307 and 308 only for a POST, never leave https, and keep the token and the
  engine's credentials at the remote's origin.
- Proxies are chosen with urllib's own helpers (HTTP_PROXY, HTTPS_PROXY, NO_PROXY), not with aiohttp's trust_env:
  trust_env hands every request to a thread of the loop's default executor twice (the proxy lookup, and ~/.netrc),
  and a ~/.netrc entry for the remote's host makes aiohttp refuse our Authorization header (ValueError).
- aiohttp retries an idempotent request (GET) once when a reused connection drops it unanswered, and never a POST; a
  pull (POST /pull-updates, which only reads) gets that one retry from here.
What transport.py did that aiohttp does not let us keep (without reaching into its private parts):
- a server's `Keep-Alive: timeout=N` is not read: a connection is reused for up to MAX_IDLE_REUSE_SECONDS whatever N
  says. A server that closes it at N is seen closing (its FIN) and the next request connects again; only a request
  sent in the very moment the server closes fails (a push then fails, and is not sent twice).
- a POST whose sending failed half-way on a reused connection is not sent again on a new one: aiohttp does not say
  how much of it left, so the push fails instead (the engine pushes again in its next round).
"""

import asyncio
import base64
import contextvars
import functools
import math
import os
import re
import ssl
import sys
import traceback
import urllib.parse
import urllib.request
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

import aiohttp
from aiohttp.connector import Connection
from yarl import URL

from .arguments import seconds

__all__ = ["RemoteHttp", "TransportClosed", "TransportError"]

# The largest piece of an answer's body handed to on_chunk (the driver's own chunk size).
CHUNK_BYTES = 64 * 1024
# Redirects followed for one request; the next one is an error.
MAX_REDIRECTS = 5
# A redirect's body is read and dropped up to this size so that its connection can be reused; past it, the
# connection is closed instead.
DRAIN_BYTES = 64 * 1024
# An idle connection is not reused after this long, whatever the server says: a NAT or load balancer on the way may
# have forgotten the flow without a word (a reset, or silence until the deadline, on the next request). The
# connector's keepalive_timeout, read when a loop's session is made.
MAX_IDLE_REUSE_SECONDS = 15.0
# A token this long or longer is replaced by <token> wherever it shows up in an error message (say, in a Location).
MIN_SCRUBBED_TOKEN_CHARS = 8
# A body larger than this is handed to aiohttp in slices of this size, so that sending has a deadline (see above).
SEND_SLICE_BYTES = 64 * 1024
# How long closing the last RemoteHttp of a loop waits for the session's connections to close (a TLS connection is
# aborted, not shut down politely: a silent remote must not hold a replica's close()).
SESSION_CLOSE_SECONDS = 1.0

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# The statuses that RFC 9110 lets a client follow with the same method and body.
_METHOD_KEEPING_STATUSES = frozenset({307, 308})
# RFC 9110 section 9.2.2: a request with one of these methods may be sent again without changing its effect. aiohttp
# retries these itself (once, when a kept-alive connection drops them unanswered).
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# The sync protocol's POSTs that only read: a pull asks for the changes after a revision and changes nothing on the
# remote, so it may be sent again like an idempotent request.
_READ_ONLY_TARGETS = frozenset({"/pull-updates"})
# The engine's headers that go along when a redirect leads to another origin: those that describe the request. Every
# other one stays with the remote's origin, like the token: Authorization, and x-turso-encryption-key (the data key).
_CROSS_ORIGIN_HEADERS = frozenset({"accept", "accept-encoding", "content-type", "user-agent"})
# Headers aiohttp writes itself, for each hop and connection; the engine's copies of them are dropped.
_FRAMING_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})
# Headers aiohttp would add that the old transport never sent: the engine sets them where it means them.
_SKIPPED_AUTO_HEADERS = ("Accept", "Content-Type")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Turso's URL schemes for a remote database, spoken as HTTPS (as the driver's connect_sync does).
_SCHEME_ALIASES = {"libsql": "https", "turso": "https"}
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")
_REQUEST_TARGET = re.compile(r"[!-~]+")


class TransportError(Exception):
    """A sync request failed. The message says what happened and names the remote's host:port, never the token nor
    a URL's user:password. `timed_out` is True when a deadline passed: connecting, sending, or waiting for bytes."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        # True when the request failed because a deadline passed (request_timeout, plus a long poll's extra wait).
        self.timed_out = timed_out


class TransportClosed(TransportError):
    """abort() was called (the request in flight is cut at once), or close(): no request is made any more."""


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
        """The Host header: the port left out when it is the scheme's default."""
        if self.port == _DEFAULT_PORTS[self.scheme]:
            return _bracketed(self.host)
        return self.where

    def text(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"

    @functools.cached_property
    def address(self) -> URL:
        """The URL for aiohttp, made once (a _Url is remembered by _parse_url): checked already, so not requoted."""
        return URL(self.text(), encoded=True)


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

    @functools.cached_property
    def address(self) -> URL:
        return URL(f"http://{self.where}", encoded=True)


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
    return _parse_proxy(url.scheme, proxy_url)


@functools.lru_cache(maxsize=16)
def _parse_proxy(scheme: str, proxy_url: str) -> _Proxy:
    # urllib takes a proxy without a scheme as http://.
    parts = urllib.parse.urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or port == -1:
        raise TransportError(
            f"unsupported proxy {_redacted(proxy_url)} for {scheme}:// (from the environment): use http://host:port"
        )
    authorization = None
    if parts.username and parts.password:
        credentials = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password)}"
        authorization = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
    return _Proxy(parts.hostname, port if port is not None else _DEFAULT_PORTS[parts.scheme], authorization)


_tls_contexts: dict[tuple[Optional[str], Optional[str]], ssl.SSLContext] = {}


def _tls_context() -> ssl.SSLContext:
    """ssl.create_default_context(), made once per SSL_CERT_FILE and SSL_CERT_DIR: loading the trust store costs
    about 16 ms of CPU, which urllib pays on every request. (aiohttp's pool keeps connections of different contexts
    apart, so a changed SSL_CERT_FILE gets new connections.)"""
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    context = _tls_contexts.get(key)
    if context is None:
        if len(_tls_contexts) >= 8:
            _tls_contexts.clear()
        context = ssl.create_default_context()
        context.set_alpn_protocols(["http/1.1"])
        _tls_contexts[key] = context
    return context


@functools.lru_cache(maxsize=32)
def _timeouts(timeout: float, extra_wait: float) -> aiohttp.ClientTimeout:
    """aiohttp's deadlines for one request: connecting (each address, and the whole of TCP, the proxy's CONNECT and
    TLS) within `timeout`; each wait for the answer's next byte within `timeout`, the first one `extra_wait` longer
    (RemoteHttp shortens the later ones once the head is in). No total: a slow answer whose bytes keep coming is not
    cut."""
    return aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout + extra_wait)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _os_message(error: Optional[OSError]) -> str:
    """An OSError as `[Errno N] what it means` (asyncio's own words add the address, already in our message)."""
    if error is None:
        return "unknown error"
    if error.errno is not None and error.errno > 0:
        return f"[Errno {error.errno}] {os.strerror(error.errno)}"
    return str(error)


def _only_reads(method: str, url: _Url) -> bool:
    """Whether sending the request again cannot change anything on the remote."""
    return method in _IDEMPOTENT_METHODS or url.target.partition("?")[0] in _READ_ONLY_TARGETS


def _checked_headers(headers: Sequence[tuple[str, str]], token: Optional[str]) -> list[tuple[str, str]]:
    """The engine's headers, each checked (no header injection), without the framing ones aiohttp writes."""
    checked: list[tuple[str, str]] = []
    for name, value in headers:
        name, value = str(name), str(value)
        if not _HEADER_NAME.fullmatch(name):
            raise TransportError(f"the sync engine's header name {name!r} is not a valid HTTP header name")
        if _HEADER_VALUE_FORBIDDEN.search(value):
            raise TransportError(f"the sync engine's header {name} has a line break or NUL in its value")
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            raise TransportError(f"the sync engine's header {name} has characters outside Latin-1") from None
        if name.lower() not in _FRAMING_HEADERS:
            checked.append((name, value))
    if token is not None and (_HEADER_VALUE_FORBIDDEN.search(token) or not token.isascii()):
        raise TransportError("the auth token has a line break, a NUL or non-ASCII characters in it")
    return checked


def _request_headers(
    checked: list[tuple[str, str]], at_remote_origin: bool, token: Optional[str], user_agent: str
) -> list[tuple[str, str]]:
    """The headers of one hop: the engine's (only those that describe the request away from the remote's origin),
    the token at the remote's origin, and our User-Agent and Accept-Encoding unless the engine set its own."""
    headers: list[tuple[str, str]] = []
    given: set[str] = set()
    for name, value in checked:
        lowered = name.lower()
        if not at_remote_origin and lowered not in _CROSS_ORIGIN_HEADERS:
            continue  # the engine's credentials (Authorization, the encryption key) stay with the remote's origin
        given.add(lowered)
        headers.append((name, value))
    if token is not None and at_remote_origin and "authorization" not in given:
        headers.append(("Authorization", f"Bearer {token}"))
    if "user-agent" not in given:
        headers.append(("User-Agent", user_agent))
    # Without it a server may compress the answer, which the engine would take for its own bytes.
    if "accept-encoding" not in given:
        headers.append(("Accept-Encoding", "identity"))
    return headers


def _redirect(current: _Url, method: str, response: aiohttp.ClientResponse) -> Optional[_Url]:
    """Where a redirect answer sends the request next, None for any other answer; TransportError for a redirect
    that must not be followed."""
    if response.status not in _REDIRECT_STATUSES:
        return None
    location = response.headers.get("Location")
    if not location:
        return None
    target = urllib.parse.urljoin(current.text(), location.strip())
    next_hop = _parse_url(target)
    if current.scheme == "https" and next_hop.scheme != "https":
        raise TransportError(
            f"{current.where} answered {method} {current.target} with {response.status} {response.reason}, a "
            f"redirect to {_redacted(target)} that leaves TLS: not followed (the request would go in clear text)"
        )
    # urllib (and aiohttp) turn a POST answered with 301, 302 or 303 into a GET, which loses the sync request and
    # used to carry the token to whoever redirected; a sync request is refused instead.
    if method not in ("GET", "HEAD") and response.status not in _METHOD_KEEPING_STATUSES:
        raise TransportError(
            f"{current.where} answered {method} {current.target} with {response.status} {response.reason}, a "
            f"redirect to {_redacted(target)} that would turn the request into a GET: not followed"
        )
    return next_hop


def _failure(
    error: BaseException, hop: _Url, proxy: Optional[_Proxy], where: str, timeout: float, extra_wait: float
) -> TransportError:
    """What aiohttp raised before an answer's head was in, as a TransportError that says what happened in our words
    (aiohttp's messages name the whole URL and their own classes)."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        message = f"could not connect to {where} within {_seconds(timeout)} (request_timeout)"
        return TransportError(message, timed_out=True)
    if isinstance(error, aiohttp.ServerTimeoutError):
        if extra_wait:
            message = (
                f"no answer from {where} within {_seconds(timeout + extra_wait)} "
                f"(request_timeout {_seconds(timeout)} + {_seconds(extra_wait)} of long poll)"
            )
        else:
            message = f"no answer from {where} within {_seconds(timeout)} (request_timeout)"
        return TransportError(message, timed_out=True)
    if isinstance(error, aiohttp.ClientConnectorError):
        return _connect_failure(error, hop, proxy, where)
    if isinstance(error, aiohttp.ClientHttpProxyError):
        proxy_where = proxy.where if proxy is not None else "on the way"
        return TransportError(
            f"the proxy {proxy_where} refused the tunnel to {hop.where}: {error.status} {error.message}"
        )
    if isinstance(error, aiohttp.ServerDisconnectedError):
        return TransportError(f"{where} closed the connection before answering")
    if isinstance(error, aiohttp.ClientOSError):
        return TransportError(f"the connection to {where} failed: {_os_message(error)}")
    if isinstance(error, aiohttp.ClientResponseError):
        return TransportError(f"a malformed answer from {where}: {error.message}")
    return TransportError(f"the request to {where} failed: {type(error).__name__}: {error}")


def _connect_failure(
    error: aiohttp.ClientConnectorError, hop: _Url, proxy: Optional[_Proxy], where: str
) -> TransportError:
    if isinstance(error, aiohttp.ClientConnectorCertificateError):
        certificate_error = error.certificate_error
        reason = getattr(certificate_error, "verify_message", None) or str(certificate_error)
        return TransportError(f"certificate verification failed for {hop.where}: {reason}")
    if isinstance(error, aiohttp.ClientSSLError):
        return TransportError(f"the TLS handshake with {where} failed: {error.os_error}")
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return TransportError(f"cannot resolve {error.host}: {_os_message(error.os_error)}")
    return TransportError(f"cannot connect to {where}: {_os_message(error.os_error)}")


def _cancel_taken_back(task: "asyncio.Task[object]") -> bool:
    """Take back the one cancel() a _Flight made of `task`; False if another cancellation of the task is still due
    (its caller's), which must then go on. (Python 3.10 counts no cancellations: there, ours is taken for the only.)"""
    if sys.version_info >= (3, 11):
        return task.uncancel() == 0
    return True


class _Flight:
    """One request() in flight: the task that awaits it, and why it was cut (abort(), or sending stalled).

    A cut cancels the task, unless it is in one of the caller's callbacks: that one is let finish (it hands a piece of
    the answer to the engine), and the cut is raised when it returns."""

    __slots__ = ("_watch", "cancelled", "cut", "ended", "in_callback", "task", "transport", "where")

    def __init__(self, task: "asyncio.Task[object]") -> None:
        self.task = task
        # How messages name the far end of the current hop.
        self.where = "the remote"
        self.cut: Optional[TransportError] = None
        # True when the cut cancelled the task (to be taken back).
        self.cancelled = False
        self.in_callback = False
        # Set when request() returns: aiohttp may still be sending the body then (an answer that came early), and
        # nothing may cut the task any more, which has gone on to its caller's next work.
        self.ended = False
        self._watch: Optional[asyncio.TimerHandle] = None
        # The connection the current hop is sent on, from when aiohttp sends it until its answer is read and the
        # connection goes back to the pool (None otherwise: it may then be another request's).
        self.transport: Optional[asyncio.Transport] = None

    def drop_connection(self) -> None:
        """Abort the connection of a request that failed or was cut. aiohttp closes it politely, and a polite close
        keeps the socket open until the rest of the body in its buffer is sent: for ever, to a peer that reads
        nothing (until TCP gives up, on a half-open link)."""
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()

    def cut_with(self, error: TransportError) -> None:
        if self.cut is not None or self.ended:
            return
        self.cut = error
        self.drop_connection()
        if not self.in_callback:
            self.cancelled = True
            self.task.cancel()

    def watch_send(self, timeout: float) -> None:
        """(Re)start the deadline for the next slice of the body to be handed over: `timeout` seconds from now."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self.ended:
            return
        self._watch = self.task.get_loop().call_later(timeout, self._send_stalled, timeout)

    def stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _send_stalled(self, timeout: float) -> None:
        self._watch = None
        message = f"could not send the request to {self.where}: no progress for {_seconds(timeout)} (request_timeout)"
        self.cut_with(TransportError(message, timed_out=True))


class _Slices:
    """A large body for aiohttp, in slices of SEND_SLICE_BYTES: aiohttp asks for the next one once the last one is
    handed over (below its write buffer's limit), which is the progress that restarts the sending deadline."""

    def __init__(self, body: bytes, flight: _Flight, timeout: float) -> None:
        self._view = memoryview(body)
        self._offset = 0
        self._flight = flight
        self._timeout = timeout

    def __aiter__(self) -> "_Slices":
        return self

    async def __anext__(self) -> bytes:
        if self._offset >= len(self._view):
            self._flight.stop_watch()
            raise StopAsyncIteration
        self._flight.watch_send(self._timeout)
        start, self._offset = self._offset, self._offset + SEND_SLICE_BYTES
        return self._view[start : self._offset].tobytes()


# The flight of the request that aiohttp sends in this task (read by _FlightRequest).
_sending_flight: "contextvars.ContextVar[Optional[_Flight]]" = contextvars.ContextVar("_sending_flight", default=None)


class _FlightRequest(aiohttp.ClientRequest):
    """aiohttp's request, which tells the flight it is sent for which connection it goes out on."""

    async def send(self, conn: Connection) -> aiohttp.ClientResponse:
        flight = _sending_flight.get()
        if flight is not None:
            flight.transport = conn.transport
        return await super().send(conn)


class _Attempt:
    """What aiohttp's trace tells of one session.request call (its trace_request_ctx), counted into its RemoteHttp."""

    __slots__ = ("owner", "reused")

    def __init__(self, owner: "RemoteHttp") -> None:
        self.owner = owner
        # Whether the connection of the latest try was a kept-alive one from the pool.
        self.reused = False


async def _on_connection_create_end(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceConnectionCreateEndParams
) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.reused = False
        attempt.owner.connections_opened += 1


async def _on_connection_reuse(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceConnectionReuseconnParams
) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.reused = True


async def _on_request_headers_sent(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    attempt = context.trace_request_ctx
    if isinstance(attempt, _Attempt):
        attempt.owner.requests_sent += 1


def _trace_config() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(_on_connection_create_end)
    trace.on_connection_reuseconn.append(_on_connection_reuse)
    trace.on_request_headers_sent.append(_on_request_headers_sent)
    return trace


class _SharedSession:
    """The aiohttp session of one event loop, shared by the RemoteHttps that use it (`users`): made on first use,
    closed when the last of them lets go."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        # limit=0: as many connections as requests in flight (a replica has at most two at once); the pool keeps
        # the idle ones per origin.
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=MAX_IDLE_REUSE_SECONDS)
        self.session = aiohttp.ClientSession(
            connector=connector,
            # No cookies: a server's Set-Cookie would otherwise go along with every replica's requests to that host.
            cookie_jar=aiohttp.DummyCookieJar(),
            # The engine gets the body's bytes as they came (it asked for identity).
            auto_decompress=False,
            skip_auto_headers=_SKIPPED_AUTO_HEADERS,
            trust_env=False,
            trace_configs=[_trace_config()],
            request_class=_FlightRequest,
        )


# The shared session of each event loop that has one.
_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SharedSession]" = weakref.WeakKeyDictionary()


def _close_now(session: aiohttp.ClientSession) -> None:
    """Close a session's connections now, in this call: on its loop, or once that loop has closed (from any thread;
    aiohttp then only marks its connector closed). Nobody waits for the sockets to be closed."""
    connector = session.connector
    if connector is not None and not connector.closed:
        _close_connections_now(connector)


def _close_connections_now(connector: aiohttp.BaseConnector) -> "Optional[asyncio.Future[object]]":
    """On the connector's loop: close every connection of `connector` now, in this call; returns aiohttp's task that
    waits for their sockets to be closed (None if there were none).

    TCPConnector.close() is a coroutine, which closes nothing until a task runs it: a loop that closes first (a test's,
    a service's at exit) would leave the session to be reported as unclosed when collected. Its base class's close()
    does the closing at once; what it returns is awaited here as far as its first step, which only hands over that
    task. The connector's resolver is aiohttp's threaded one, which holds nothing to close."""
    steps = aiohttp.BaseConnector.close(connector, abort_ssl=True).__await__()
    try:
        waiting: "asyncio.Future[object]" = next(steps)
    except StopIteration:
        return None
    finally:
        steps.close()
    return waiting


async def _close_session(session: aiohttp.ClientSession) -> None:
    """Close a session on its own loop, waiting at most SESSION_CLOSE_SECONDS for its connections to close."""
    connector = session.connector
    if connector is None or connector.closed:
        return
    waiting = _close_connections_now(connector)
    if waiting is not None:
        await asyncio.wait((waiting,), timeout=SESSION_CLOSE_SECONDS)


def _drop_share(shared: _SharedSession) -> bool:
    """One RemoteHttp lets go of `shared`; True if it was the last, and the session is to be closed."""
    shared.users -= 1
    if shared.users > 0:
        return False
    if _sessions.get(shared.loop) is shared:
        del _sessions[shared.loop]
    return True


def _let_go(shared: _SharedSession) -> None:
    """A RemoteHttp was dropped without close(): its share of `shared` ends. This runs from the garbage collector, on
    any thread, so the share is let go on the loop itself; at once if the loop has closed."""
    if not shared.loop.is_closed():
        try:
            shared.loop.call_soon_threadsafe(_let_go_on_the_loop, shared)
            return
        except RuntimeError:  # the loop closed meanwhile
            pass
    if _drop_share(shared):
        _close_now(shared.session)


def _let_go_on_the_loop(shared: _SharedSession) -> None:
    if _drop_share(shared):
        _close_now(shared.session)


def _close_on_its_loop(shared: _SharedSession) -> None:
    """Close `shared`'s session on its own loop, from outside it; at once if that loop has closed."""
    if not shared.loop.is_closed():
        try:
            shared.loop.call_soon_threadsafe(_close_now, shared.session)
            return
        except RuntimeError:  # the loop closed meanwhile
            pass
    _close_now(shared.session)


def _forget_history(error: BaseException) -> None:
    # Clear the frames of the exceptions `error` was raised from, then drop them: our message already says what failed.
    seen: set[int] = set()
    chained: Optional[BaseException] = error
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        if chained is not error:
            traceback.clear_frames(chained.__traceback__)
        chained = chained.__cause__ or chained.__context__
    error.__cause__ = None
    error.__context__ = None


class RemoteHttp:
    """HTTP of one replica's sync engine, on the event loop of the connection (aiohttp). `request` sends one HTTP
    item and streams its answer; `abort()` cuts every request in flight and refuses later ones; `close()` lets go of
    this replica's share of the loop's session. Only ever used on one event loop.

    - `user_agent`: the User-Agent header, unless the engine sets one (the connection's client_name).
    - `timeout`: the connection's request_timeout in seconds, read at every request.
    """

    def __init__(self, user_agent: str, timeout: Callable[[], float]) -> None:
        if _HEADER_VALUE_FORBIDDEN.search(user_agent) or not user_agent.isascii():
            raise ValueError(f"user_agent must be ASCII without line breaks, not {user_agent!r}")
        self._user_agent = user_agent
        self._timeout = timeout
        # TCP connections this replica's requests opened, and requests written to a connection (redirect hops and
        # retries included); for tests and benchmarks, from aiohttp's trace.
        self.connections_opened = 0
        self.requests_sent = 0
        self._flights: set[_Flight] = set()
        self._aborted = False
        self._closed = False
        # This replica's share of its loop's session, taken at the first request.
        self._shared: Optional[_SharedSession] = None
        self._unshare: Optional["weakref.finalize[[_SharedSession], RemoteHttp]"] = None

    # --- public ----------------------------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Sequence[tuple[str, str]],
        *,
        base_url: Optional[str],
        token: Optional[str],
        url: Optional[str] = None,
        extra_wait: float = 0.0,
        on_status: Callable[[int], None],
        on_chunk: Callable[[bytes], Awaitable[None]],
    ) -> None:
        """Send one request to `base_url` (or, if None, the item's `url`) joined with `path`, follow its redirects by
        our policy, then call `on_status` once with the final status and await `on_chunk` with each piece of its body
        (at most 64 KiB) as it arrives. Non-2xx statuses are passed on, not raised. The token goes to the origin of
        `base_url` only. `extra_wait` lengthens the wait for the first byte (a pull's long poll). Raises
        TransportError (TransportClosed after abort() or close()); what the callbacks raise passes through."""
        if self._aborted or self._closed:
            raise TransportClosed("the sync connection is closing: no request is made any more")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("RemoteHttp.request must be awaited in a task of the connection's event loop")
        flight = _Flight(task)
        self._flights.add(flight)
        sending = _sending_flight.set(flight)
        error: Optional[BaseException] = None
        try:
            await self._request(
                flight, method, path, body, headers, base_url, token, url, extra_wait, on_status, on_chunk
            )
        except BaseException as raised:  # noqa: BLE001 - sorted out below, once the flight has ended
            error = raised
            flight.drop_connection()
        finally:
            _sending_flight.reset(sending)
            flight.ended = True
            flight.stop_watch()
            self._flights.discard(flight)
        outcome = self._outcome(flight, error, token)
        if outcome is None:
            return
        try:
            raise outcome
        finally:
            # The exception's traceback holds this frame: no cycle through these locals.
            error = outcome = None

    @property
    def in_flight(self) -> bool:
        """Whether a request is being sent or answered now."""
        return bool(self._flights)

    def abort(self) -> None:
        """On the loop: every request in flight fails at once with TransportClosed (its work is cancelled, its
        connection closed), and every later request raises TransportClosed without connecting."""
        self._aborted = True
        for flight in list(self._flights):
            flight.cut_with(TransportClosed(f"the request to {flight.where} was cut: the sync connection is closing"))

    def cut(self, message: str) -> None:
        """On the loop: every request in flight fails at once with TransportError(`message`) (its work is cancelled, its
        connection closed); later requests are made as usual (abort() refuses those too)."""
        for flight in list(self._flights):
            flight.cut_with(TransportError(message))

    async def close(self) -> None:
        """No more requests: later ones raise TransportClosed. Lets go of this replica's share of the loop's session;
        the last RemoteHttp of the loop closes it (and its kept-alive connections). A request in flight is not cut
        (abort() does that). Never raises, even when the loop of the session has closed meanwhile."""
        self._closed = True
        shared, self._shared = self._shared, None
        if shared is None:
            return
        if self._unshare is not None:
            self._unshare.detach()
        if not _drop_share(shared):
            return
        if shared.loop.is_closed():
            _close_now(shared.session)
        elif shared.loop is asyncio.get_running_loop():
            await _close_session(shared.session)
        else:
            _close_on_its_loop(shared)

    # --- one request -----------------------------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        """The session of the running loop, this replica's share of it taken at its first request."""
        loop = asyncio.get_running_loop()
        shared = self._shared
        if shared is not None:
            if shared.loop is not loop:
                raise RuntimeError("a RemoteHttp is used on one event loop only")
            return shared.session
        shared = _sessions.get(loop)
        if shared is None:
            shared = _SharedSession(loop)
            _sessions[loop] = shared
        shared.users += 1
        self._shared = shared
        self._unshare = weakref.finalize(self, _let_go, shared)
        return shared.session

    def _outcome(
        self, flight: _Flight, error: Optional[BaseException], token: Optional[str]
    ) -> Optional[BaseException]:
        """What request() raises, given what its work raised (`error`): the cut (abort(), a stalled send) for the
        cancellation it caused, our cancellation taken back from the task; the caller's own cancellation as it is;
        a TransportError as _as_reported words it; anything else (a callback's) as it is."""
        if flight.cut is not None:
            if flight.cancelled and not _cancel_taken_back(flight.task):
                return error if isinstance(error, asyncio.CancelledError) else asyncio.CancelledError()
            if error is None or isinstance(error, (asyncio.CancelledError, TransportError)):
                error = flight.cut
        if isinstance(error, TransportError):
            return self._as_reported(error, token)
        return error

    def _as_reported(self, error: TransportError, token: Optional[str]) -> TransportError:
        """The error as request() raises it: TransportClosed once aborted, and never a message with the token; and
        without aiohttp's exception as its context, whose frames (and so the engine's callbacks on the stack below
        them) it would keep alive in a reference cycle until a garbage collection: the replica's files with them."""
        _forget_history(error)
        message = str(error)
        # Shorter strings than this would be found in the message's own words; real tokens are far longer.
        if token and len(token) >= MIN_SCRUBBED_TOKEN_CHARS and token in message:
            message = message.replace(token, "<token>")
        if self._aborted and not isinstance(error, TransportClosed):
            return TransportClosed(f"{message}; the sync connection is closing", timed_out=error.timed_out)
        if message != str(error):
            return type(error)(message, timed_out=error.timed_out)
        return error

    async def _request(
        self,
        flight: _Flight,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Sequence[tuple[str, str]],
        base_url: Optional[str],
        token: Optional[str],
        url: Optional[str],
        extra_wait: float,
        on_status: Callable[[int], None],
        on_chunk: Callable[[bytes], Awaitable[None]],
    ) -> None:
        timeout = seconds("request_timeout", self._timeout())
        if not (math.isfinite(extra_wait) and extra_wait >= 0):
            raise ValueError(f"extra_wait must be a finite number of seconds >= 0, not {extra_wait!r}")
        if not _HEADER_NAME.fullmatch(method):
            raise ValueError(f"invalid HTTP method {method!r}")
        base = base_url or url
        if not base:
            raise TransportError("no remote URL: the replica has none and the sync engine named none")
        trusted_origin = _parse_url(base).origin
        current = _parse_url(_join_url(base, path))
        checked = _checked_headers(headers, token)
        session = self._session()
        for _ in range(MAX_REDIRECTS + 1):
            hop_headers = _request_headers(checked, current.origin == trusted_origin, token, self._user_agent)
            response = await self._send(session, flight, current, method, body, hop_headers, timeout, extra_wait)
            try:
                next_hop = _redirect(current, method, response)
                if next_hop is None:
                    on_status(response.status)
                    await self._stream_body(flight, response, timeout, extra_wait, on_chunk)
                else:
                    await self._drain(flight, response, timeout)
            except BaseException:
                response.close()
                raise
            # Read to its end, the answer leaves its connection to the pool (unless the server closes it).
            flight.transport = None
            response.release()
            if next_hop is None:
                return
            # Followed redirects keep the method and body: a GET stays a GET, and a POST is followed only on 307
            # and 308, which keep both by definition (_redirect refuses the others).
            current = next_hop
        raise TransportError(f"too many redirects: more than {MAX_REDIRECTS}, the last one to {current.text()}")

    async def _send(
        self,
        session: aiohttp.ClientSession,
        flight: _Flight,
        hop: _Url,
        method: str,
        body: Optional[bytes],
        headers: list[tuple[str, str]],
        timeout: float,
        extra_wait: float,
    ) -> aiohttp.ClientResponse:
        """Send the request to `hop` and read its answer's head.

        A kept-alive connection can fail under a request because the server closed it while it sat idle: a restart,
        or the server's idle timeout racing our send. aiohttp drops a connection whose close (FIN) the loop has seen;
        the race remains. aiohttp then sends an idempotent request (the bootstrap's GET /info and GET /export/N)
        once more on a new connection, never a POST. A pull only reads, so it gets that one retry here. A push is
        not retried, even on a clean close: a server that read it, applied it and died before answering looks the
        same on the wire as an idle timeout, and the engine's push batch is not conditional (sent twice, it inserts
        the rows twice). That push fails instead, and the engine's next push first asks the server for its last
        change id, so nothing is doubled. RFC 9112 section 9.3.1 forbids the automatic retry for this reason.
        """
        proxy = _proxy_for(hop)
        where = hop.where if proxy is None else f"{hop.where} (through the proxy {proxy.where})"
        flight.where = where
        may_retry = method not in _IDEMPOTENT_METHODS and _only_reads(method, hop)
        proxy_headers = None
        if proxy is not None and proxy.authorization is not None:
            # aiohttp sends proxy_headers with the CONNECT of a tunnel (https) only; a request that an http proxy
            # forwards carries the proxy's credentials itself.
            if hop.scheme == "https":
                proxy_headers = {"Proxy-Authorization": proxy.authorization}
            else:
                headers = [*headers, ("Proxy-Authorization", proxy.authorization)]
        while True:
            attempt = _Attempt(self)
            data: object = body
            if body is not None and len(body) > SEND_SLICE_BYTES:
                data = _Slices(body, flight, timeout)
                headers = [*headers, ("Content-Length", str(len(body)))]
            try:
                return await session.request(
                    method,
                    hop.address,
                    data=data,
                    headers=headers,
                    allow_redirects=False,
                    proxy=None if proxy is None else proxy.address,
                    proxy_headers=proxy_headers,
                    ssl=_tls_context() if hop.scheme == "https" else True,
                    timeout=_timeouts(timeout, extra_wait),
                    trace_request_ctx=attempt,
                )
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                if (
                    may_retry
                    and attempt.reused
                    and isinstance(error, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError))
                    and not isinstance(error, aiohttp.ClientConnectorError)
                ):
                    may_retry = False
                    continue
                raise _failure(error, hop, proxy, where, timeout, extra_wait) from None
            finally:
                flight.stop_watch()

    async def _stream_body(
        self,
        flight: _Flight,
        response: aiohttp.ClientResponse,
        timeout: float,
        extra_wait: float,
        on_chunk: Callable[[bytes], Awaitable[None]],
    ) -> None:
        """Hand the answer's body to `on_chunk` piece by piece as it arrives."""
        if extra_wait:
            # The head is in: the wait for each next byte is the request_timeout again, the long poll's extra wait
            # having been for the first one only.
            connection = response.connection
            protocol = connection.protocol if connection is not None else None
            if protocol is not None:
                protocol.read_timeout = timeout
                if not response.content.is_eof():
                    protocol.start_timeout()
        received = 0
        while True:
            chunk = await self._read(flight, response, timeout, received)
            if not chunk:
                return
            received += len(chunk)
            flight.in_callback = True
            try:
                await on_chunk(chunk)
            finally:
                flight.in_callback = False
            if flight.cut is not None:  # abort() while the engine took the piece
                raise flight.cut

    async def _drain(self, flight: _Flight, response: aiohttp.ClientResponse, timeout: float) -> None:
        """Read a redirect's body and drop it, up to DRAIN_BYTES: then its connection can be reused (past that,
        release() closes it)."""
        received = 0
        while received <= DRAIN_BYTES:
            chunk = await self._read(flight, response, timeout, received)
            if not chunk:
                return
            received += len(chunk)

    @staticmethod
    async def _read(flight: _Flight, response: aiohttp.ClientResponse, timeout: float, received: int) -> bytes:
        """The next piece of the answer's body (b"" at its end), at most CHUNK_BYTES."""
        try:
            return await response.content.read(CHUNK_BYTES)
        except aiohttp.ServerTimeoutError:
            raise TransportError(
                f"the answer from {flight.where} stalled: no byte for {_seconds(timeout)} (request_timeout)",
                timed_out=True,
            ) from None
        except aiohttp.ClientPayloadError:
            length = response.content_length
            if length is not None and received < length:
                message = f"the answer from {flight.where} ended {length - received} bytes before its Content-Length"
            else:
                message = f"the answer from {flight.where} ended before its body was complete"
            raise TransportError(message) from None
        except aiohttp.ClientError as error:
            raise TransportError(f"the connection to {flight.where} failed: {type(error).__name__}: {error}") from None
