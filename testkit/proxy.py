"""A loopback TCP proxy that plays a bad network in front of a server: slow, stalled, flaky, half-open or trickling.

`DelayingProxy` runs in the calling process, on an event loop in one thread of its own; tests use it. `ProxyProcess`
runs the same proxy in a child process (`python -m testkit.proxy TARGET_PORT ...`), so that forwarding bytes never
competes with a benchmark for the interpreter lock.

The verbs, one set for both:
- `delay` / `answer_delay`: each chunk of a request / an answer is forwarded that many seconds after it arrived, in
  order (pipelined, like a link with that one-way latency). `connect_delay` also charges a new connection that long
  before its first byte flows: the kernel answers a client's connect at once, a far remote would not. `wan(rtt)` sets
  all three for a link with that round-trip time.
- `stall()` / `release()`: connections are still accepted, but no request reaches the server until `release()` (on
  the connections already open too; a request the server has begun to read is let through whole, since tursodb stops
  answering everyone while one request is cut short); `held` counts the connections that have bytes waiting.
- `flaky`: the share of new connections that misbehave, chosen by `random.Random(seed)`, each in one of `flaky_modes`:
  `"refuse"` closes it at once (the server never sees the request); `"cut_answer"` forwards the request, reads the
  answer and closes the connection without it (the server acted; the client hears an error).
- `black_hole()`: a half-open link. New connections are accepted and never answered nor closed; with
  `open_connections=True` the ones already open freeze too. `release()` lets new connections through again; those
  swallowed stay silent until `cut()` or `close()`, as a dropped flow does.
- `trickle_bytes` / `trickle_interval`: answers reach the client that many bytes at a time, one piece per interval.
- `cut()`: close every open connection now, both ways.
- `hold_answers(containing)`: a request whose bytes contain `containing` reaches the server, and its answer is held
  (the server has acted; the client hears nothing) until `release()`; `answers_held` counts them. A test kills a
  client then, or lets its deadline expire, to play a crash or a timeout after the server applied a push.

Counters: `connections` (accepted), `held` (connections whose request waits for `release()` right now),
`answers_held` (answers held by `hold_answers` so far) and `misbehaved` (connections the flaky mode refused or cut).
Every wait is bounded: a connection on which nothing moves for `IDLE_SECONDS` is closed (held, frozen and swallowed ones
excepted: `release()`, `cut()` or `close()` end them), and `close()` joins the proxy's thread with a bound. The thread
is named `testkit-proxy` (tests count `turso...` threads).
"""

import argparse
import asyncio
import json
import random
from collections.abc import Callable, Coroutine
from typing import Any, Optional

from testkit._child import ChildServer, serve_commands
from testkit._loop_server import HOST, LoopServer

CHUNK_SIZE = 64 * 1024
# Upper bound for connecting to the server.
SOCKET_SECONDS = 10.0
# A connection on which no byte moved for this long is closed, so that a peer that went away costs nothing for long.
IDLE_SECONDS = 60.0
# How often a connection looks at whether it has idled out.
WATCH_SECONDS = 1.0
# A cut answer is read until the server closes, or until no byte came for this long (a server that keeps the
# connection open has then sent it all).
ANSWER_QUIET_SECONDS = 0.1
THREAD_NAME = "testkit-proxy"
# The ways a flaky proxy misbehaves on a connection (see the module docstring).
REFUSE = "refuse"
CUT_ANSWER = "cut_answer"
# The settings that may change while the proxy runs, by name (ProxyProcess sets them with `set NAME VALUE`).
SETTINGS = ("delay", "answer_delay", "connect_delay", "flaky", "trickle_bytes", "trickle_interval")


class _Connection:
    """One client connection and, once its first request byte is due, its connection to the server.

    Each direction is a reader that queues chunks with the time they are due, and a sender that forwards them then.
    """

    def __init__(
        self, proxy: "DelayingProxy", reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut_answer: bool
    ) -> None:
        self._proxy = proxy
        self._client_reader = reader
        self._client_writer = writer
        self._cut_answer = cut_answer
        self._upstream_writer: Optional[asyncio.StreamWriter] = None
        self._loop = asyncio.get_running_loop()
        self._opened_at = self._loop.time()
        self._last_activity = self._opened_at
        self._tasks: set["asyncio.Task[None]"] = set()
        # Set by black_hole(open_connections=True): from then on nothing moves either way, and nothing closes.
        self.frozen = False
        # True while its request bytes wait for release().
        self.held = False
        # The request's bytes so far, for hold_answers (kept only while it is set).
        self._request_bytes = bytearray()
        # True from a request's first byte sent to the server until the server's first byte back: stall() does not
        # hold the rest of a request the server has begun to read. tursodb reads one request at a time: a request cut
        # short at the server would stop it answering anyone (every client's request then times out).
        self._mid_request = False

    async def run(self) -> None:
        """Relay both ways until each direction has ended, or nothing moved for IDLE_SECONDS."""
        requests: "asyncio.Queue[tuple[float, bytes]]" = asyncio.Queue()
        self._start(self._read(self._client_reader, requests, self._request_due))
        self._start(self._send_requests(requests))
        while True:
            await asyncio.wait(set(self._tasks), timeout=WATCH_SECONDS)
            if all(task.done() for task in self._tasks):
                return
            idle = self._loop.time() - self._last_activity
            if idle > IDLE_SECONDS and not self.frozen and not self.held:
                return

    def close(self) -> None:
        """Stop both directions and close both sockets."""
        for task in self._tasks:
            task.cancel()
        for writer in (self._client_writer, self._upstream_writer):
            if writer is not None:
                writer.close()

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        self._tasks.add(asyncio.ensure_future(work))

    def _request_due(self) -> float:
        # A new connection's first bytes also wait out connect_delay, counted from when it was accepted.
        return max(self._loop.time(), self._opened_at + self._proxy.connect_delay) + self._proxy.delay

    def _answer_due(self) -> float:
        return self._loop.time() + self._proxy.answer_delay

    async def _read(
        self,
        reader: asyncio.StreamReader,
        chunks: "asyncio.Queue[tuple[float, bytes]]",
        due: Callable[[], float],
    ) -> None:
        # b"" is the end of the stream; a reset connection ends it too.
        while True:
            try:
                chunk = await reader.read(CHUNK_SIZE)
            except OSError:
                chunk = b""
            self._last_activity = self._loop.time()
            chunks.put_nowait((due(), chunk))
            if not chunk:
                return

    async def _wait_until(self, due: float) -> None:
        wait = due - self._loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.frozen:
            await self._loop.create_future()  # never done: only cut() or close() end a frozen connection

    async def _send_requests(self, requests: "asyncio.Queue[tuple[float, bytes]]") -> None:
        while True:
            due, chunk = await requests.get()
            await self._wait_until(due)
            if not self._mid_request:
                await self._pass_stall()
            if self._upstream_writer is None:
                if not chunk:
                    return  # the client left before sending a byte: the server never hears of it
                if not await self._connect_upstream():
                    return
            writer = self._upstream_writer
            assert writer is not None
            if self._proxy.answer_hold is not None:
                self._request_bytes += chunk
            try:
                if not chunk:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                self._mid_request = True
                writer.write(chunk)
                await writer.drain()
            except OSError:
                return
            self._last_activity = self._loop.time()

    async def _pass_stall(self) -> None:
        flowing = self._proxy.flowing
        if flowing.is_set():
            return
        self.held = True
        self._proxy.held += 1
        try:
            await flowing.wait()
        finally:
            self.held = False
            self._proxy.held -= 1
        if self.frozen:
            await self._loop.create_future()

    async def _connect_upstream(self) -> bool:
        try:
            upstream_reader, self._upstream_writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self._proxy.target_port), SOCKET_SECONDS
            )
        except (OSError, asyncio.TimeoutError):
            self._client_writer.close()
            return False
        if self._cut_answer:
            self._start(self._cut_the_answer(upstream_reader))
        else:
            answers: "asyncio.Queue[tuple[float, bytes]]" = asyncio.Queue()
            self._start(self._read(upstream_reader, answers, self._answer_due))
            self._start(self._send_answers(answers))
        return True

    async def _send_answers(self, answers: "asyncio.Queue[tuple[float, bytes]]") -> None:
        writer = self._client_writer
        held = False
        while True:
            due, chunk = await answers.get()
            self._mid_request = False
            await self._wait_until(due)
            hold = self._proxy.answer_hold
            if not held and hold is not None and hold in self._request_bytes:
                held = True
                self.held = True
                self._proxy.answers_held += 1
                try:
                    await self._proxy.answers_flowing.wait()
                finally:
                    self.held = False
            try:
                if not chunk:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                await self._trickle(writer, chunk)
            except OSError:
                return
            self._last_activity = self._loop.time()

    async def _trickle(self, writer: asyncio.StreamWriter, chunk: bytes) -> None:
        size, interval = int(self._proxy.trickle_bytes), self._proxy.trickle_interval
        if size <= 0:
            writer.write(chunk)
            await writer.drain()
            return
        for start in range(0, len(chunk), size):
            if start:
                await asyncio.sleep(interval)
            writer.write(chunk[start : start + size])
            await writer.drain()
            self._last_activity = self._loop.time()

    async def _cut_the_answer(self, upstream_reader: asyncio.StreamReader) -> None:
        # Read the answer, so that the server has acted on the request, then close the client's connection without it.
        timeout: Optional[float] = None
        try:
            while await asyncio.wait_for(upstream_reader.read(CHUNK_SIZE), timeout):
                timeout = ANSWER_QUIET_SECONDS
                self._last_activity = self._loop.time()
        except (OSError, asyncio.TimeoutError):
            pass
        self._client_writer.close()


class DelayingProxy(LoopServer):
    """A TCP proxy on 127.0.0.1 in front of a server on `target_port`, run in this process; see the module docstring.

    The settings (`delay`, `answer_delay`, `connect_delay`, `flaky`, `trickle_bytes`, `trickle_interval`) may be
    changed while it runs, say once a replica is open; each chunk reads them as it arrives. `url` is the proxied
    address; use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        target_port: int,
        delay: float = 0.0,
        *,
        answer_delay: float = 0.0,
        connect_delay: float = 0.0,
        stalled: bool = False,
        flaky: float = 0.0,
        seed: int = 0,
        flaky_modes: tuple[str, ...] = (REFUSE,),
    ) -> None:
        if not flaky_modes or set(flaky_modes) - {REFUSE, CUT_ANSWER}:
            raise ValueError(f"flaky_modes must be some of {REFUSE!r} and {CUT_ANSWER!r}, not {flaky_modes!r}")
        self.target_port = target_port
        self.delay = delay
        self.answer_delay = answer_delay
        self.connect_delay = connect_delay
        self.flaky = flaky
        self.trickle_bytes = 0
        self.trickle_interval = 0.0
        self.connections = 0
        self.held = 0
        self.answers_held = 0
        self.misbehaved = 0
        # What hold_answers() looks for in a request (None: no answer is held); cleared by release().
        self.answer_hold: Optional[bytes] = None
        self.answers_flowing = asyncio.Event()
        self.answers_flowing.set()
        # Set while request bytes may pass; cleared by stall(). Only the proxy's loop changes it.
        self.flowing = asyncio.Event()
        if not stalled:
            self.flowing.set()
        self._random = random.Random(seed)
        self._flaky_modes = flaky_modes
        self._black_hole = False
        self._relaying: set[_Connection] = set()
        super().__init__(THREAD_NAME)

    @property
    def requests(self) -> int:
        """Connections accepted: the tests' older name for `connections`, from when each connection was one request."""
        return self.connections

    def wan(self, round_trip: float) -> None:
        """Play a link of this round-trip time: half of it each way per chunk, and a whole one for a new connection."""
        self.delay = self.answer_delay = round_trip / 2
        self.connect_delay = round_trip

    def stall(self) -> None:
        """From now on, accept connections and hold every request byte (on open connections too) until `release()`."""
        self.on_loop(self._stall)

    def release(self) -> None:
        """End `stall()`, `black_hole()` and `hold_answers()`: held bytes go on to the server, held answers to their
        clients, and new connections are served again."""
        self.on_loop(self._release)

    def black_hole(self, open_connections: bool = False) -> None:
        """Swallow new connections (never answer, never close); with `open_connections`, freeze the open ones too."""
        self.on_loop(self._swallow, open_connections)

    def cut(self) -> None:
        """Close every open connection now (held and swallowed ones too); new connections are served as before."""
        self.on_loop(self.cut_connections)

    def hold_answers(self, containing: bytes) -> None:
        """From now on, forward each request whose bytes contain `containing` to the server, and hold its answer until
        `release()` (counted in `answers_held`)."""
        self.on_loop(self._hold_answers, containing)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay one client connection, or misbehave on it as the proxy is set to."""
        self.connections += 1
        if self._black_hole:
            await asyncio.get_running_loop().create_future()  # swallowed: only cut() or close() end it
        mode = ""
        if self.flaky > 0 and self._random.random() < self.flaky:
            mode = self._random.choice(self._flaky_modes)
            self.misbehaved += 1
        if mode == REFUSE:
            return  # closed at once: the server never sees this request
        connection = _Connection(self, reader, writer, cut_answer=mode == CUT_ANSWER)
        self._relaying.add(connection)
        try:
            await connection.run()
        finally:
            self._relaying.discard(connection)
            connection.close()

    async def _stall(self) -> None:
        self.flowing.clear()

    async def _release(self) -> None:
        self._black_hole = False
        self.flowing.set()
        self.answer_hold = None
        self.answers_flowing.set()

    async def _hold_answers(self, containing: bytes) -> None:
        self.answer_hold = containing
        self.answers_flowing.clear()

    async def _swallow(self, open_connections: bool) -> None:
        self._black_hole = True
        if open_connections:
            for connection in self._relaying:
                connection.frozen = True


class ProxyProcess(ChildServer):
    """`DelayingProxy` in a child process, for benchmarks; the same verbs, each in effect when its call returns.

    Start it with `with ProxyProcess(port, delay=0.05) as proxy:` (or `start()`/`stop()`); `url` is the proxied
    address. Settings change with `configure(delay=...)`, and `counters()` reads the counters.
    """

    def __init__(
        self,
        target_port: int,
        delay: float = 0.0,
        *,
        answer_delay: float = 0.0,
        round_trip: float = 0.0,
        max_seconds: float = 900.0,
    ) -> None:
        arguments = [str(target_port), "--delay", str(delay), "--answer-delay", str(answer_delay)]
        arguments += ["--round-trip", str(round_trip), "--max-seconds", str(max_seconds)]
        super().__init__("testkit.proxy", arguments)

    def stall(self) -> None:
        """See `DelayingProxy.stall`."""
        self.command("stall")

    def release(self) -> None:
        """See `DelayingProxy.release`."""
        self.command("release")

    def black_hole(self, open_connections: bool = False) -> None:
        """See `DelayingProxy.black_hole`."""
        self.command("black_hole open" if open_connections else "black_hole")

    def cut(self) -> None:
        """See `DelayingProxy.cut`."""
        self.command("cut")

    def configure(self, **settings: float) -> None:
        """Change settings of the running proxy by name (`delay`, `answer_delay`, ...: see SETTINGS)."""
        for name, value in settings.items():
            self.command(f"set {name} {value}")

    def counters(self) -> dict[str, int]:
        """The proxy's counters now: connections, held and misbehaved."""
        answer: dict[str, int] = json.loads(self.command("counters"))
        return answer


def answer_command(proxy: DelayingProxy, line: str) -> str:
    """Apply one command line of ProxyProcess to `proxy` and return the answer line (raise ValueError if unknown)."""
    verb, *words = line.split()
    if verb == "set" and len(words) == 2 and words[0] in SETTINGS:
        setattr(proxy, words[0], float(words[1]))
    elif verb == "stall" and not words:
        proxy.stall()
    elif verb == "release" and not words:
        proxy.release()
    elif verb == "black_hole" and words in ([], ["open"]):
        proxy.black_hole(open_connections=bool(words))
    elif verb == "cut" and not words:
        proxy.cut()
    elif verb == "counters" and not words:
        return json.dumps({"connections": proxy.connections, "held": proxy.held, "misbehaved": proxy.misbehaved})
    else:
        raise ValueError(f"unknown command {line!r}")
    return "ok"


def main() -> None:
    """`python -m testkit.proxy TARGET_PORT [--delay S] [--answer-delay S] [--round-trip S] [--max-seconds S]`."""
    parser = argparse.ArgumentParser(description="A loopback TCP proxy that plays a bad network (testkit/proxy.py).")
    parser.add_argument("target_port", type=int, help="port of the server on 127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds added to each request chunk")
    parser.add_argument("--answer-delay", type=float, default=0.0, help="seconds added to each answer chunk")
    parser.add_argument("--round-trip", type=float, default=0.0, help="play a link of this round-trip time (wan)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop by itself after this long")
    arguments = parser.parse_args()
    with DelayingProxy(arguments.target_port, arguments.delay, answer_delay=arguments.answer_delay) as proxy:
        if arguments.round_trip:
            proxy.wan(arguments.round_trip)
        serve_commands(proxy.port, lambda line: answer_command(proxy, line), arguments.max_seconds)


if __name__ == "__main__":
    main()
