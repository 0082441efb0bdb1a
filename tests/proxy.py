"""A loopback TCP proxy in front of the sync server, for tests: slow, stalled or flaky remotes on 127.0.0.1.

The driver makes one HTTP connection per request (urllib sends `Connection: close`), so each accepted connection is
one request of a bootstrap, pull or push, and its answer. `DelayingProxy` can hold each request before forwarding it
(`delay`), hold each answer before handing it back (`answer_delay`), hold every request unanswered until `release()`
(`stall()`, a remote that accepts connections and never answers), and misbehave on a seeded fraction of connections
(`flaky`). Every socket has a timeout and `close()` joins every thread with a bound, so a stuck peer cannot hang the
test run. Its threads are named `test-proxy`, never `turso...` (the conftest guard counts those).
"""

import random
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Optional

# Upper bound for any socket operation and for joining a thread of the proxy.
SOCKET_SECONDS = 10.0
# How often a held request looks again at whether the proxy was released or closed.
POLL_SECONDS = 0.02
THREAD_NAME = "test-proxy"
# The ways a flaky proxy misbehaves on a connection (see DelayingProxy).
REFUSE = "refuse"
CUT_ANSWER = "cut_answer"


class DelayingProxy:
    """A TCP proxy on 127.0.0.1 in front of the sync server on `target_port`.

    - `delay`: seconds each request is held before it is forwarded (the server sees it that much later).
    - `answer_delay`: seconds each answer is held once the server has sent it (the server has already acted on the
      request when the client times out: a push is applied remotely before the client hears so).
    - `stalled`: start stalled (see `stall()`).
    - `flaky`: the fraction of connections that misbehave, chosen by a `random.Random(seed)`, each in one of the
      `flaky_modes`: `"refuse"` closes the connection at once (the server never sees the request); `"cut_answer"`
      forwards the request and closes the connection without the answer (the server acted on it; the client hears
      an error).

    `delay`, `answer_delay` and `flaky` may be changed while the proxy runs (say, once a replica is open).

    Counters: `requests` (connections accepted), `held` (requests held by a stall right now), `misbehaved`
    (connections the flaky mode refused or cut).
    """

    def __init__(
        self,
        target_port: int,
        delay: float = 0.0,
        *,
        answer_delay: float = 0.0,
        stalled: bool = False,
        flaky: float = 0.0,
        seed: int = 0,
        flaky_modes: tuple[str, ...] = (REFUSE,),
    ) -> None:
        if not flaky_modes or set(flaky_modes) - {REFUSE, CUT_ANSWER}:
            raise ValueError(f"flaky_modes must be some of {REFUSE!r} and {CUT_ANSWER!r}, not {flaky_modes!r}")
        self._target_port = target_port
        self.delay = delay
        self.answer_delay = answer_delay
        self.flaky = flaky
        self._random = random.Random(seed)
        self._flaky_modes = flaky_modes
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.requests = 0
        self.held = 0
        self.misbehaved = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        # Set while requests may pass; cleared by stall().
        self._open = threading.Event()
        if not stalled:
            self._open.set()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    # --- control -------------------------------------------------------------------------------------------------

    def stall(self) -> None:
        """From now on, accept connections and hold every request unanswered (the server never sees it)."""
        self._open.clear()

    def release(self) -> None:
        """Forward the held requests, and every later one, normally."""
        self._open.set()

    def close(self) -> None:
        """Stop accepting, cut every connection (held requests included) and join the threads, each with a bound."""
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

    def __enter__(self) -> "DelayingProxy":
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.close()

    # --- threads -------------------------------------------------------------------------------------------------

    def _spawn(self, target: Callable[..., None], *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=THREAD_NAME, daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()
        return thread

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closing.is_set():
                return False
            self._sockets.append(sock)
            return True

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(SOCKET_SECONDS)
            if not self._track(client):
                client.close()
                return
            with self._lock:
                self.requests += 1
                mode = ""
                if self.flaky > 0 and self._random.random() < self.flaky:
                    mode = self._random.choice(self._flaky_modes)
                    self.misbehaved += 1
            if mode == REFUSE:
                client.close()  # the server never sees this request
                continue
            self._spawn(self._relay, client, mode == CUT_ANSWER)

    def _wait_until_open(self) -> bool:
        """Hold while stalled; False if the proxy closes meanwhile."""
        if self._open.is_set():
            return not self._closing.is_set()
        with self._lock:
            self.held += 1
        try:
            while not self._open.wait(POLL_SECONDS):
                if self._closing.is_set():
                    return False
        finally:
            with self._lock:
                self.held -= 1
        return not self._closing.is_set()

    def _relay(self, client: socket.socket, cut_answer: bool) -> None:
        upstream: Optional[socket.socket] = None
        try:
            if not self._wait_until_open():
                return
            if self.delay and self._closing.wait(self.delay):
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port), timeout=SOCKET_SECONDS)
            if not self._track(upstream):
                return
            answer = threading.Thread(
                target=self._pump_answer, args=(upstream, client, cut_answer), name=THREAD_NAME, daemon=True
            )
            answer.start()
            self._pump(client, upstream)
            answer.join(SOCKET_SECONDS)
        except OSError:
            pass
        finally:
            client.close()
            if upstream is not None:
                upstream.close()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _pump_answer(self, upstream: socket.socket, client: socket.socket, cut_answer: bool) -> None:
        try:
            first = upstream.recv(65536)
            if cut_answer:
                # Read the whole answer, so that the server finished the request, then cut the client off.
                while upstream.recv(65536):
                    pass
                client.shutdown(socket.SHUT_RDWR)
                return
            if first and self.answer_delay and self._closing.wait(self.answer_delay):
                return
            chunk = first
            while chunk:
                client.sendall(chunk)
                chunk = upstream.recv(65536)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass
