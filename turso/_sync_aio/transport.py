"""PLACEHOLDER until the transport helper's module lands: the same interface, a minimal http.client client."""

import http.client
import socket
import threading
import urllib.parse
from typing import Callable, Optional, Sequence


class TransportError(Exception):
    """A sync request failed."""

    timed_out: bool = False


class TransportClosed(TransportError):
    """abort() was called."""


class SyncTransport:
    """Placeholder."""

    def __init__(
        self,
        base_url: Callable[[], Optional[str]],
        token: Callable[[], Optional[str]],
        user_agent: str,
        timeout: Callable[[], float],
    ) -> None:
        self._base_url = base_url
        self._token = token
        self._user_agent = user_agent
        self._timeout = timeout
        self._aborted = False
        self._lock = threading.Lock()
        self._active: Optional[http.client.HTTPConnection] = None
        self.connections_opened = 0
        self.requests_sent = 0

    def request(  # noqa: C901  (placeholder)
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
        if self._aborted:
            raise TransportClosed("the connection was closed")
        base = self._base_url() or url or ""
        full = base.rstrip("/") + "/" + path.lstrip("/")
        parts = urllib.parse.urlsplit(full)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        timeout = self._timeout()
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(host, port, timeout=timeout)
        else:
            connection = http.client.HTTPConnection(host, port, timeout=timeout)
        with self._lock:
            self._active = connection
        try:
            all_headers = dict(headers)
            try:
                token = self._token()
            except Exception as error:
                raise TransportError(f"the auth token callable failed: {error!r}") from error
            if token is not None:
                all_headers.setdefault("Authorization", f"Bearer {token}")
            all_headers.setdefault("User-Agent", self._user_agent)
            self.connections_opened += 1
            self.requests_sent += 1
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            connection.request(method, target, body=body, headers=all_headers)
            if connection.sock is not None:
                connection.sock.settimeout(timeout + extra_wait)
            response = connection.getresponse()
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
            on_status(response.status)
            while True:
                chunk = response.read1(65536)
                if not chunk:
                    break
                on_chunk(chunk)
        except socket.timeout as error:
            failure = TransportError(f"no answer from {host}:{port} within {timeout:g} s (request_timeout)")
            failure.timed_out = True
            raise failure from error
        except OSError as error:
            if self._aborted:
                raise TransportClosed("the connection was closed") from error
            raise TransportError(f"network error: {error}") from error
        except http.client.HTTPException as error:
            if self._aborted:
                raise TransportClosed("the connection was closed") from error
            raise TransportError(f"network error: {error!r}") from error
        finally:
            with self._lock:
                self._active = None
            connection.close()

    def abort(self) -> None:
        self._aborted = True
        with self._lock:
            active = self._active
        if active is not None and active.sock is not None:
            try:
                active.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        pass
