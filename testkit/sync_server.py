"""A real `tursodb --sync-server` on 127.0.0.1 for tests, benchmarks and scripts, with remote SQL for assertions."""

import asyncio
import base64
import json
import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Optional, Union

from testkit._loop_server import HOST, LoopServer

# The sync server binary installed by `make setup` (npm package @tursodatabase/cli-linux-x64-gnu).
TURSODB = Path(
    os.environ.get(
        "TURSODB_BIN",
        Path(__file__).resolve().parent.parent / "node_modules/@tursodatabase/cli-linux-x64-gnu/tursodb",
    )
)

# A value in a remote row, decoded from the pipeline protocol's typed JSON.
Value = Union[int, float, str, bytes, None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _decode(cell: dict[str, str]) -> Value:
    kind, value = cell["type"], cell.get("value")
    if kind == "null" or value is None:
        return None
    if kind == "integer":
        return int(value)
    if kind == "float":
        return float(value)
    if kind == "blob":
        return base64.b64decode(cell.get("base64", value))
    return value


# The thread of a server's RequestRelay (not one of ours: tests count the threads whose name starts with "turso").
RELAY_THREAD_NAME = "sync-server-relay"


class RequestRelay(LoopServer):
    """Takes each request on `port` whole, then hands it to tursodb on `target_port` and streams its answer back.

    tursodb serves one connection at a time: it accepts one, reads its request, answers, and only then accepts the
    next. A client that has connected but not yet sent its whole request stops it for everyone. A test's assertion is
    such a client's neighbour: `SyncServer.execute` blocks the event loop of an async test, and a connection that loop's
    background sync has just opened cannot send its request until the loop runs again, so both wait until execute's
    own timeout. Turso's servers accept concurrently; in front of tursodb this relay does, so only whole requests reach
    it. Every request of our clients, and of the testkit's, carries a Content-Length.
    """

    def __init__(self, listener: socket.socket, target_port: int) -> None:
        """Relay what comes to `listener` (a bound socket, which the relay closes) to tursodb on `target_port`."""
        self.target_port = target_port
        super().__init__(RELAY_THREAD_NAME, listener=listener)

    async def serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return  # cut, or a head too long for a request of ours: tursodb never sees it
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        try:
            body = await reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # cut before its body ended: tursodb never sees it
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self.target_port)
        except OSError:
            return  # tursodb is gone: the client sees its connection end without an answer
        try:
            upstream_writer.write(head + body)
            while chunk := await upstream_reader.read(64 * 1024):
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            upstream_writer.transport.abort()


class SyncServer:
    """One `tursodb --sync-server` process on loopback; `stop()` and `start()` keep the port and the data file.

    `port` defaults to a free one; `data_file` to `:memory:` (the remote database is then lost on `stop()`).
    `relay=True` puts a RequestRelay in front of tursodb on `port`, so that the server accepts connections concurrently
    as Turso's do; tests use it, benchmarks talk to tursodb itself.
    """

    def __init__(self, data_file: Optional[Path] = None, port: Optional[int] = None, relay: bool = False) -> None:
        if not TURSODB.is_file():
            raise RuntimeError(f"{TURSODB} is missing; run `make setup`")
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"port must be between 1 and 65535, not {port}")
        # With a relay, its port is held from here on (bound, refusing connections until start()): a port only looked
        # up as free could be taken by another process first.
        self._relay_listener = _bound(port if port is not None else 0) if relay else None
        if self._relay_listener is not None:
            self.port: int = self._relay_listener.getsockname()[1]
        else:
            self.port = port if port is not None else free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # ":memory:" loses the remote database on stop; a file keeps it across restarts.
        self.data_file = str(data_file) if data_file is not None else ":memory:"
        self._tursodb_port = free_port() if relay else self.port
        self._relay_wanted = relay
        self._relay: Optional[RequestRelay] = None
        self._process: Optional[subprocess.Popen[bytes]] = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until it accepts connections."""
        self._process = subprocess.Popen(
            [str(TURSODB), self.data_file, "--sync-server", f"127.0.0.1:{self._tursodb_port}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"tursodb exited with {self._process.returncode} on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self._tursodb_port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tursodb did not listen on port {self.port} within {timeout}s") from None
                time.sleep(0.02)
        if self._relay_wanted:
            listener, self._relay_listener = self._relay_listener, None
            try:
                self._relay = RequestRelay(listener if listener is not None else _bound(self.port), self._tursodb_port)
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop the server (the port then refuses connections)."""
        if self._relay is not None:
            self._relay.close()
            self._relay = None
        if self._relay_listener is not None:  # never started: let go of the port
            self._relay_listener.close()
            self._relay_listener = None
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def execute(self, sql: str, args: tuple[Value, ...] = ()) -> list[tuple[Value, ...]]:
        """Run one statement on the remote database through POST /v2/pipeline and return its rows."""
        stmt: dict[str, object] = {"sql": sql}
        if args:
            stmt["args"] = [_encode(arg) for arg in args]
        body = json.dumps({"requests": [{"type": "execute", "stmt": stmt}]}).encode()
        # Straight to tursodb, not through the relay: a request of its own is whole when it connects.
        url = f"http://127.0.0.1:{self._tursodb_port}/v2/pipeline"
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        result = answer["results"][0]
        if result["type"] != "ok":
            raise RuntimeError(f"remote SQL failed: {sql!r}: {result}")
        rows = result["response"]["result"]["rows"]
        return [tuple(_decode(cell) for cell in row) for row in rows]

    def __enter__(self) -> "SyncServer":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.stop()


def _bound(port: int) -> socket.socket:
    """A TCP socket bound to `port` (0: a free one) on 127.0.0.1, not listening yet: connections to it are refused."""
    listener = socket.socket()
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
    except BaseException:
        listener.close()
        raise
    return listener


def _encode(value: Value) -> dict[str, str]:
    if value is None:
        return {"type": "null"}
    if isinstance(value, bool) or isinstance(value, int):
        return {"type": "integer", "value": str(int(value))}
    if isinstance(value, float):
        return {"type": "float", "value": repr(value)}
    if isinstance(value, bytes):
        return {"type": "blob", "base64": base64.b64encode(value).decode()}
    return {"type": "text", "value": value}
